"""The store backends the conformance suite runs against, each with the hooks the suite needs.

A :class:`StoreKind` makes fresh, empty stores of one backend and can damage
one on purpose (corrupt a row, stamp a newer schema) so the suite checks the
errors every backend must give. Backends that need a server (Redis,
PostgreSQL) get it from the session-scoped fixtures in ``tests/store_servers.py``.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Callable

from convo import MemoryStore, SQLiteStore


class StoreKind:
    """How to make, reopen and damage stores of one backend."""

    name = ""

    def make(self):
        """A new, empty store."""
        raise NotImplementedError

    def reopen(self, store):
        """A second store object on the same data (another process would open it like this)."""
        raise NotImplementedError

    def corrupt_message(self, store, conversation_id: str, seq: int) -> None:
        """Overwrite one stored message with bytes that are not JSON."""
        raise NotImplementedError

    def corrupt_usage(self, store, conversation_id: str) -> None:
        """Overwrite a conversation's own usage with JSON of the wrong shape."""
        raise NotImplementedError

    def stamp_schema(self, store, version: int) -> None:
        """Record a schema version, as a newer convo would."""
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class MemoryKind(StoreKind):
    name = "memory"

    def make(self):
        return MemoryStore()

    def reopen(self, store):
        return store  # one process, one dict: the same object is the only way to share it

    def corrupt_message(self, store, conversation_id, seq):
        store._entries[conversation_id].messages[seq] = "{not json"

    def corrupt_usage(self, store, conversation_id):
        store._entries[conversation_id].usage = '{"responses": "many"}'

    def stamp_schema(self, store, version):
        return None  # a MemoryStore has no layout to be newer than


class SQLiteKind(StoreKind):
    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def make(self):
        return SQLiteStore(self.folder / f"{uuid.uuid4().hex}.db")

    def reopen(self, store):
        return SQLiteStore(store.path)

    def _sql(self, store, statement: str, *args) -> None:
        with sqlite3.connect(store.path) as conn:
            conn.execute(statement, args)

    def corrupt_message(self, store, conversation_id, seq):
        self._sql(store, "UPDATE convo_messages SET data = '{not json' WHERE conversation_id = ? AND seq = ?",
                  conversation_id, seq)

    def corrupt_usage(self, store, conversation_id):
        self._sql(store, "UPDATE convo_conversations SET usage = '{\"responses\": \"many\"}' WHERE id = ?",
                  conversation_id)

    def stamp_schema(self, store, version):
        self._sql(store, "UPDATE convo_meta SET value = ? WHERE key = 'schema_version'", str(version))


#: Factories for the kinds the suite runs against: name -> (request -> StoreKind).
#: tests/store_servers.py adds "redis" and "postgres", which need servers.
KINDS: dict[str, Callable] = {
    "memory": lambda request: MemoryKind(),
    "sqlite": lambda request: SQLiteKind(request.getfixturevalue("tmp_path")),
}
