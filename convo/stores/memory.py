"""An in-process store: for tests and notebooks. Nothing survives the process."""

from __future__ import annotations

import json
import threading
from typing import Any

from .base import BaseStore, RawRecord, RawRow, RawWrite

__all__ = ["MemoryStore"]


class _Entry:
    __slots__ = ("parent_id", "root_id", "created", "updated", "version", "state", "usage", "messages")

    def __init__(self, write: RawWrite) -> None:
        self.parent_id = write.parent_id
        self.root_id = write.root_id
        self.created = write.at
        self.version = 0
        self.messages: list[str] = []


class MemoryStore(BaseStore):
    """Conversations kept in a dict, as the JSON text the other stores keep.

    Behaves exactly like the persistent stores (the same conformance suite
    passes), so code tested against it works against them. Thread-safe:
    one lock serialises every operation.
    """

    scheme = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._kv_data: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._entries)} conversations)"

    def _write(self, write: RawWrite) -> int:
        with self._lock:
            entry = self._entries.get(write.id)
            found = entry.version if entry is not None else 0
            if found != write.expected_version:
                raise self._mismatch(write.id, write.expected_version, found if entry is not None else None)
            if entry is None:
                entry = _Entry(write)
            # Nothing below can fail, so changing in place keeps a write all or nothing.
            del entry.messages[write.keep:]
            entry.messages.extend(write.append)
            entry.state, entry.usage = write.state, write.usage
            entry.updated = write.at
            entry.version += 1
            self._entries[write.id] = entry
            return entry.version

    def _read(self, id: str) -> RawRecord | None:
        with self._lock:
            e = self._entries.get(id)
            if e is None:
                return None
            return RawRecord(id, e.parent_id, e.root_id, e.created, e.updated, e.version, e.state, tuple(e.messages))

    def _rows(self, root: str | None) -> list[RawRow]:
        with self._lock:
            return [RawRow(id, e.parent_id, e.root_id, e.created, e.updated, e.version, len(e.messages), e.usage)
                    for id, e in self._entries.items() if root is None or e.root_id == root]

    def _delete(self, ids: list[str]) -> None:
        with self._lock:
            for id in ids:
                self._entries.pop(id, None)

    def _kv(self, op: str, namespace: str, key: str, value: str | None) -> Any:
        with self._lock:
            k = (namespace, key)
            if op == "get":
                return self._kv_data.get(k)
            if op == "put":
                self._kv_data[k] = value
            elif op == "claim":
                if k in self._kv_data:
                    return False
                self._kv_data[k] = value
                return True
            elif op == "delete":
                self._kv_data.pop(k, None)
            return None

    def _counter(self, namespace: str, key: str, delta: str, limit: str | None) -> tuple[bool, str]:
        with self._lock:
            current = self._kv_data.get((namespace, key))
            added, value = self._counter_step(None if current is None else json.loads(current), delta, limit)
            if added:
                self._kv_data[(namespace, key)] = json.dumps(value)
            return added, value
