"""The embedded store: one SQLite file, standard library ``sqlite3`` only.

Layout (schema version 1)::

    convo_meta(key TEXT PRIMARY KEY, value TEXT)            -- 'schema_version' -> '1'
    convo_conversations(id TEXT PRIMARY KEY, parent_id TEXT, root_id TEXT NOT NULL,
                        created REAL, updated REAL, version INTEGER, message_count INTEGER,
                        state TEXT, usage TEXT)              -- JSON texts
    convo_messages(conversation_id TEXT, seq INTEGER, data TEXT,
                   PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID
    convo_kv(namespace TEXT, key TEXT, value TEXT, PRIMARY KEY (namespace, key)) WITHOUT ROWID

Times are Unix seconds (UTC). A turn is one ``BEGIN IMMEDIATE`` transaction:
check the version, delete the messages past ``keep`` (none, for a plain
turn), insert the new ones, update the conversation row. Its cost does not
depend on how long the history is.

The database runs in WAL mode with ``synchronous=NORMAL``: a transaction
that committed survives the process being killed (it may be lost only to a
power failure, as in every WAL database in that mode). Several threads and
several processes may use one file: each thread has its own connection, and
writers wait up to ``timeout`` seconds for each other.

Migrating: the schema version is in ``convo_meta``. A newer convo that
changes the layout migrates older files when it opens them; an older convo
refuses a newer file with :class:`~convo.IncompatibleStore`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, IncompatibleStore, StoreUnavailable
from .base import SCHEMA_VERSION, BaseStore, RawRecord, RawRow, RawWrite

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS convo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS convo_conversations (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    root_id TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    usage TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS convo_conversations_root ON convo_conversations (root_id);
CREATE TABLE IF NOT EXISTS convo_messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS convo_kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""


class SQLiteStore(BaseStore):
    """Conversations in one SQLite file (see the module docstring for the layout).

    Args:
        path: the database file (created with its folder if missing), or
            ``":memory:"`` is refused: use :class:`~convo.MemoryStore`.
        timeout: seconds a writer waits for another before
            :class:`~convo.StoreUnavailable`.

    Thread-safe, and safe for several processes on one file.
    """

    scheme = "sqlite"

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0) -> None:
        super().__init__()
        if str(path) in ("", ":memory:"):
            raise ConfigurationError("SQLiteStore needs a file path; use convo.MemoryStore() for an in-memory store")
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema(self._conn())

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --- connections --------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=OFF")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open the SQLite store {str(self.path)!r}: {exc}") from None
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    class _tx:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error; sqlite errors become store errors."""

        def __init__(self, conn: sqlite3.Connection, immediate: bool = True) -> None:
            self.conn = conn
            self.immediate = immediate

        def __enter__(self) -> sqlite3.Connection:
            try:
                self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the SQLite store is busy or unreadable: {exc}") from None
            return self.conn

        def __exit__(self, kind, exc, tb) -> bool:
            if kind is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error as err:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise StoreUnavailable(f"the SQLite store could not commit: {err}") from None
                return False
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"the SQLite store failed: {exc}") from None
            return False

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        with self._tx(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS convo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM convo_meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise IncompatibleStore(f"{self.path} was laid out by a newer convo (schema version {row[0]}; "
                                        f"this convo knows up to {SCHEMA_VERSION}); upgrade convo")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO convo_meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))

    def _close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # --- primitives --------------------------------------------------------------------

    def _write(self, write: RawWrite) -> int:
        conn = self._conn()
        with self._tx(conn):
            row = conn.execute("SELECT version, message_count FROM convo_conversations WHERE id = ?",
                               (write.id,)).fetchone()
            found = row[0] if row is not None else None
            if (found or 0) != write.expected_version:
                raise self._mismatch(write.id, write.expected_version, found)
            count = row[1] if row is not None else 0
            keep = min(write.keep, count)
            if keep < count:
                conn.execute("DELETE FROM convo_messages WHERE conversation_id = ? AND seq >= ?", (write.id, keep))
            if write.append:
                conn.executemany("INSERT INTO convo_messages (conversation_id, seq, data) VALUES (?, ?, ?)",
                                 [(write.id, keep + i, data) for i, data in enumerate(write.append)])
            total = keep + len(write.append)
            if row is None:
                conn.execute(
                    "INSERT INTO convo_conversations (id, parent_id, root_id, created, updated, version, "
                    "message_count, state, usage) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
                    (write.id, write.parent_id, write.root_id, write.at, write.at, total, write.state, write.usage))
                return 1
            conn.execute("UPDATE convo_conversations SET updated = ?, version = ?, message_count = ?, state = ?, "
                         "usage = ? WHERE id = ?",
                         (write.at, found + 1, total, write.state, write.usage, write.id))
            return found + 1

    def _read(self, id: str) -> RawRecord | None:
        conn = self._conn()
        with self._tx(conn, immediate=False):
            row = conn.execute("SELECT parent_id, root_id, created, updated, version, state FROM convo_conversations "
                               "WHERE id = ?", (id,)).fetchone()
            if row is None:
                return None
            messages = conn.execute("SELECT data FROM convo_messages WHERE conversation_id = ? ORDER BY seq",
                                    (id,)).fetchall()
        return RawRecord(id, row[0], row[1], row[2], row[3], row[4], row[5], tuple(m[0] for m in messages))

    def _rows(self, root: str | None) -> list[RawRow]:
        conn = self._conn()
        query = ("SELECT id, parent_id, root_id, created, updated, version, message_count, usage "
                 "FROM convo_conversations")
        with self._tx(conn, immediate=False):
            rows = (conn.execute(query).fetchall() if root is None
                    else conn.execute(query + " WHERE root_id = ?", (root,)).fetchall())
        return [RawRow(*r) for r in rows]

    def _delete(self, ids: list[str]) -> None:
        conn = self._conn()
        with self._tx(conn):
            conn.executemany("DELETE FROM convo_messages WHERE conversation_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM convo_conversations WHERE id = ?", [(i,) for i in ids])

    def _kv(self, op: str, namespace: str, key: str, value: str | None) -> Any:
        conn = self._conn()
        with self._tx(conn, immediate=op != "get"):
            if op == "get":
                row = conn.execute("SELECT value FROM convo_kv WHERE namespace = ? AND key = ?",
                                   (namespace, key)).fetchone()
                return row[0] if row is not None else None
            if op == "put":
                conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (?, ?, ?) "
                             "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                             (namespace, key, value))
            elif op == "claim":
                cur = conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (?, ?, ?) "
                                   "ON CONFLICT (namespace, key) DO NOTHING", (namespace, key, value))
                return cur.rowcount == 1
            elif op == "delete":
                conn.execute("DELETE FROM convo_kv WHERE namespace = ? AND key = ?", (namespace, key))
            return None

    def _counter(self, namespace: str, key: str, delta: str, limit: str | None) -> tuple[bool, str]:
        conn = self._conn()
        with self._tx(conn):
            row = conn.execute("SELECT value FROM convo_kv WHERE namespace = ? AND key = ?",
                               (namespace, key)).fetchone()
            added, value = self._counter_step(None if row is None else json.loads(row[0]), delta, limit)
            if added:
                conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (?, ?, ?) "
                             "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                             (namespace, key, json.dumps(value)))
            return added, value
