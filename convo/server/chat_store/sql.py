"""Chats in SQL: SQLite (a :class:`~convo.SQLiteStore`'s file, or memory) and PostgreSQL (a :class:`~convo.PostgresStore`'s database).

Tables (chat layout version 1), beside the store's own, in the same file or schema::

    convo_chat_meta(key PRIMARY KEY, value)                 -- 'chat_schema_version' -> '1'
    convo_chats(id PRIMARY KEY, owner_id, parent_chat_id, root_chat_id, workspace_id, title, status,
                last_model_config_id, worker_id, started_at, heartbeat_at, generation, last_error,
                created_at, updated_at, usage)              -- usage: JSON text
        INDEX (owner_id), INDEX (status, updated_at), INDEX (parent_chat_id)
    convo_chat_messages(id serial PRIMARY KEY, chat_id, created_at, role, visibility, compressed,
                        model_config_id, content, model, usage)   -- JSON texts
        INDEX (chat_id, id)
    convo_chat_queue(id serial PRIMARY KEY, chat_id, content, created_at)   INDEX (chat_id, id)
    convo_chat_providers(id PRIMARY KEY, provider UNIQUE, display_name, api_key, base_url, enabled,
                         created_at, updated_at)
    convo_chat_model_configs(id PRIMARY KEY, provider, model, display_name, enabled, is_default,
                             context_limit, compression_threshold, options, deleted, created_at, updated_at)

Message and queue ids are the database's own sequences (``BIGSERIAL`` on
PostgreSQL, ``AUTOINCREMENT`` on SQLite): they only grow and are shared by
every chat. Times are Unix seconds.

Locking. PostgreSQL: a chat's transaction starts with ``SELECT ... FOR
UPDATE`` on its row; acquisition is one ``UPDATE`` of the oldest pending
row picked with ``FOR UPDATE SKIP LOCKED``, so two replicas never take one
chat; providers and model configs change under a transaction-scoped
advisory lock. SQLite: every write transaction is ``BEGIN IMMEDIATE``
(SQLite has one writer at a time), WAL mode, one connection per thread.
The in-memory backend (for a :class:`~convo.MemoryStore`) is SQLite's
``:memory:`` on one connection behind a lock.

Migrating: the layout version is in ``convo_chat_meta``; tables are made
when missing (under the store's advisory lock on PostgreSQL); a newer
layout is refused with :class:`~convo.IncompatibleStore`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Callable, Sequence

from ...errors import IncompatibleStore, StoreError, StoreUnavailable
from ..chats_wire import ChatUsage
from .base import (
    ChatRow,
    ChatStore,
    ChatTx,
    ConfigTx,
    MessageRow,
    ModelConfigRow,
    NewMessage,
    ProviderRow,
    QueuedRow,
    dump_json,
    dump_message_usage,
    dump_parts,
    dump_usage,
    load_json,
    load_message_usage,
    load_parts,
)

__all__ = ["PostgresChatStore", "SQLiteChatStore"]

CHAT_SCHEMA_VERSION = 1

_CHAT_COLUMNS = ("id, owner_id, title, status, created_at, updated_at, last_model_config_id, parent_chat_id, "
                 "root_chat_id, workspace_id, worker_id, started_at, heartbeat_at, generation, last_error, usage")
_MESSAGE_COLUMNS = "id, chat_id, created_at, role, content, visibility, compressed, model_config_id, model, usage"
_PROVIDER_COLUMNS = "id, provider, display_name, api_key, base_url, enabled, created_at, updated_at"
_CONFIG_COLUMNS = ("id, provider, model, display_name, context_limit, compression_threshold, enabled, is_default, "
                   "options, deleted, created_at, updated_at")


def _schema(serial: str) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS convo_chat_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS convo_chats (
            id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
            last_model_config_id TEXT, parent_chat_id TEXT, root_chat_id TEXT, workspace_id TEXT, worker_id TEXT,
            started_at DOUBLE PRECISION, heartbeat_at DOUBLE PRECISION, generation BIGINT NOT NULL DEFAULT 0,
            last_error TEXT, usage TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS convo_chats_owner ON convo_chats (owner_id)",
        "CREATE INDEX IF NOT EXISTS convo_chats_status ON convo_chats (status, updated_at)",
        "CREATE INDEX IF NOT EXISTS convo_chats_parent ON convo_chats (parent_chat_id)",
        f"""CREATE TABLE IF NOT EXISTS convo_chat_messages (
            id {serial}, chat_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, role TEXT NOT NULL,
            content TEXT NOT NULL, visibility TEXT NOT NULL, compressed INTEGER NOT NULL DEFAULT 0,
            model_config_id TEXT, model TEXT, usage TEXT)""",
        "CREATE INDEX IF NOT EXISTS convo_chat_messages_chat ON convo_chat_messages (chat_id, id)",
        f"""CREATE TABLE IF NOT EXISTS convo_chat_queue (
            id {serial}, chat_id TEXT NOT NULL, content TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS convo_chat_queue_chat ON convo_chat_queue (chat_id, id)",
        """CREATE TABLE IF NOT EXISTS convo_chat_providers (
            id TEXT PRIMARY KEY, provider TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, api_key TEXT NOT NULL,
            base_url TEXT NOT NULL, enabled INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS convo_chat_model_configs (
            id TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, display_name TEXT NOT NULL,
            context_limit BIGINT NOT NULL, compression_threshold INTEGER NOT NULL, enabled INTEGER NOT NULL,
            is_default INTEGER NOT NULL, options TEXT NOT NULL, deleted INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    ]


def _chat_row(r: Sequence) -> ChatRow:
    return ChatRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], int(r[13]),
                   r[14], ChatUsage.from_wire(load_json(r[15])))


def _chat_values(row: ChatRow) -> tuple:
    return (row.id, row.owner_id, row.title, row.status.value, row.created_at, row.updated_at,
            row.last_model_config_id, row.parent_id, row.root_id, row.workspace_id, row.worker_id, row.started_at,
            row.heartbeat_at, row.generation, row.last_error, dump_usage(row.usage))


def _message_row(r: Sequence) -> MessageRow:
    return MessageRow(int(r[0]), r[1], r[2], r[3], load_parts(r[4]), r[5], bool(r[6]), r[7], load_json(r[8]),
                      load_message_usage(r[9]))


def _queued_row(r: Sequence) -> QueuedRow:
    return QueuedRow(int(r[0]), r[1], load_parts(r[2]), r[3])


def _provider_row(r: Sequence) -> ProviderRow:
    return ProviderRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7])


def _config_row(r: Sequence) -> ModelConfigRow:
    return ModelConfigRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), bool(r[6]), bool(r[7]),
                          load_json(r[8]) or {}, bool(r[9]), r[10], r[11])


class _SQLTx(ChatTx, ConfigTx):
    """Both transaction views over one DB-API cursor; ``q`` turns ``?`` placeholders into the dialect's."""

    def __init__(self, cur: Any, chat_id: str | None, now: float, q: Callable[[str], str]) -> None:
        self.cur = cur
        self.chat_id = chat_id
        self.now = now
        self.q = q
        self._row: Any = ...

    def _exec(self, sql: str, args: Sequence = ()) -> Any:
        self.cur.execute(self.q(sql), tuple(args))
        return self.cur

    # -- ChatTx --

    def chat(self) -> ChatRow | None:
        if self._row is ...:
            raise AssertionError("the chat row is read when the transaction starts")
        return self._row

    def messages(self) -> list[MessageRow]:
        rows = self._exec(f"SELECT {_MESSAGE_COLUMNS} FROM convo_chat_messages WHERE chat_id = ? ORDER BY id",
                          (self.chat_id,)).fetchall()
        return [_message_row(r) for r in rows]

    def queue(self) -> list[QueuedRow]:
        rows = self._exec("SELECT id, chat_id, content, created_at FROM convo_chat_queue WHERE chat_id = ? ORDER BY id",
                          (self.chat_id,)).fetchall()
        return [_queued_row(r) for r in rows]

    def save_chat(self, row: ChatRow) -> None:
        values = _chat_values(row)
        if self._row is None:
            marks = ", ".join("?" * len(values))
            self._exec(f"INSERT INTO convo_chats ({_CHAT_COLUMNS}) VALUES ({marks})", values)
        else:
            names = [c.strip() for c in _CHAT_COLUMNS.split(",")][1:]
            self._exec(f"UPDATE convo_chats SET {', '.join(n + ' = ?' for n in names)} WHERE id = ?",
                       values[1:] + (row.id,))
        self._row = row

    def add_message(self, m: NewMessage) -> MessageRow:
        got = self._exec("INSERT INTO convo_chat_messages (chat_id, created_at, role, content, visibility, compressed, "
                         "model_config_id, model, usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                         (self.chat_id, self.now, m.role, dump_parts(m.content), m.visibility, int(m.compressed),
                          m.model_config_id, dump_json(m.model), dump_message_usage(m.usage))).fetchone()
        return MessageRow(int(got[0]), self.chat_id, self.now, m.role, m.content, m.visibility, m.compressed,
                          m.model_config_id, m.model, m.usage)

    def set_content(self, row: MessageRow, content: tuple) -> None:
        self._exec("UPDATE convo_chat_messages SET content = ?, model = NULL WHERE id = ? AND chat_id = ?",
                   (dump_parts(content), row.id, self.chat_id))

    def drop_messages_after(self, message_id: int) -> None:
        self._exec("DELETE FROM convo_chat_messages WHERE chat_id = ? AND id > ?", (self.chat_id, message_id))

    def enqueue(self, content: tuple) -> QueuedRow:
        got = self._exec("INSERT INTO convo_chat_queue (chat_id, content, created_at) VALUES (?, ?, ?) RETURNING id",
                         (self.chat_id, dump_parts(content), self.now)).fetchone()
        return QueuedRow(int(got[0]), self.chat_id, content, self.now)

    def drop_queued(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._exec("DELETE FROM convo_chat_queue WHERE chat_id = ? AND id = ?", (self.chat_id, i))

    def delete_chat(self) -> None:
        for table in ("convo_chat_messages", "convo_chat_queue"):
            self._exec(f"DELETE FROM {table} WHERE chat_id = ?", (self.chat_id,))
        self._exec("DELETE FROM convo_chats WHERE id = ?", (self.chat_id,))
        self._row = None

    # -- ConfigTx --

    def providers(self) -> list[ProviderRow]:
        return [_provider_row(r) for r in self._exec(f"SELECT {_PROVIDER_COLUMNS} FROM convo_chat_providers").fetchall()]

    def model_configs(self) -> list[ModelConfigRow]:
        return [_config_row(r) for r in
                self._exec(f"SELECT {_CONFIG_COLUMNS} FROM convo_chat_model_configs").fetchall()]

    def save_provider(self, row: ProviderRow) -> None:
        self._exec("DELETE FROM convo_chat_providers WHERE id = ?", (row.id,))
        self._exec(f"INSERT INTO convo_chat_providers ({_PROVIDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (row.id, row.provider, row.display_name, row.api_key, row.base_url, int(row.enabled),
                    row.created_at, row.updated_at))

    def delete_provider(self, provider_id: str) -> None:
        self._exec("DELETE FROM convo_chat_providers WHERE id = ?", (provider_id,))

    def save_model_config(self, row: ModelConfigRow) -> None:
        self._exec("DELETE FROM convo_chat_model_configs WHERE id = ?", (row.id,))
        self._exec(f"INSERT INTO convo_chat_model_configs ({_CONFIG_COLUMNS}) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (row.id, row.provider, row.model, row.display_name, row.context_limit, row.compression_threshold,
                    int(row.enabled), int(row.is_default), dump_json(row.options), int(row.deleted), row.created_at,
                    row.updated_at))

    def delete_model_config(self, config_id: str) -> None:
        self._exec("DELETE FROM convo_chat_model_configs WHERE id = ?", (config_id,))


class _SQLChatStore(ChatStore):
    """The SQL shared by both dialects; subclasses give connections and transactions."""

    def _q(self, sql: str) -> str:
        return sql

    def _read(self, work: Callable[[Any], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write(self, work: Callable[[Any], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _lock_chat(self, cur: Any, chat_id: str) -> Any:
        return cur.execute(self._q(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE id = ?"), (chat_id,)).fetchone()

    def _chat_tx(self, chat_id: str, fn: Callable[[ChatTx], Any]) -> Any:
        def work(cur):
            tx = _SQLTx(cur, chat_id, self.clock(), self._q)
            found = self._lock_chat(cur, chat_id)
            tx._row = _chat_row(found) if found is not None else None
            return fn(tx)

        return self._write(work)

    def _config_tx(self, fn: Callable[[ConfigTx], Any]) -> Any:
        def work(cur):
            self._lock_configs(cur)
            return fn(_SQLTx(cur, None, self.clock(), self._q))

        return self._write(work)

    def _lock_configs(self, cur: Any) -> None:
        pass

    def _select(self, sql: str, args: Sequence = ()) -> list:
        return self._read(lambda cur: cur.execute(self._q(sql), tuple(args)).fetchall())

    def _chat(self, chat_id: str) -> ChatRow | None:
        rows = self._select(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE id = ?", (chat_id,))
        return _chat_row(rows[0]) if rows else None

    def _owner_chats(self, owner_id: str) -> list[ChatRow]:
        return [_chat_row(r) for r in self._select(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE owner_id = ?",
                                                   (owner_id,))]

    def _children(self, chat_id: str) -> list[ChatRow]:
        return [_chat_row(r) for r in self._select(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE parent_chat_id = ? "
                                                   "ORDER BY created_at", (chat_id,))]

    def _snapshot(self, chat_id: str):
        def work(cur):
            q = self._q
            found = cur.execute(q(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE id = ?"), (chat_id,)).fetchone()
            if found is None:
                return None, [], []
            messages = cur.execute(q(f"SELECT {_MESSAGE_COLUMNS} FROM convo_chat_messages WHERE chat_id = ? "
                                     "ORDER BY id"), (chat_id,)).fetchall()
            queue = cur.execute(q("SELECT id, chat_id, content, created_at FROM convo_chat_queue WHERE chat_id = ? "
                                  "ORDER BY id"), (chat_id,)).fetchall()
            return _chat_row(found), [_message_row(r) for r in messages], [_queued_row(r) for r in queue]

        return self._read_consistent(work)

    def _read_consistent(self, work: Callable[[Any], Any]) -> Any:
        return self._write(work)

    def _heartbeat(self, worker_id: str, chat_ids: Sequence[str], now: float) -> set:
        def work(cur):
            alive = set()
            for chat_id in chat_ids:
                got = cur.execute(self._q("UPDATE convo_chats SET heartbeat_at = ? WHERE id = ? AND worker_id = ? "
                                          "AND status = 'running' RETURNING id"), (now, chat_id, worker_id)).fetchone()
                if got is not None:
                    alive.add(got[0])
            return alive

        return self._write(work)

    def _stale(self, cutoff: float) -> list[str]:
        return [r[0] for r in self._select("SELECT id FROM convo_chats WHERE status = 'running' AND "
                                           "(heartbeat_at IS NULL OR heartbeat_at < ?)", (cutoff,))]

    def _read_configs(self):
        def work(cur):
            providers = cur.execute(f"SELECT {_PROVIDER_COLUMNS} FROM convo_chat_providers").fetchall()
            configs = cur.execute(f"SELECT {_CONFIG_COLUMNS} FROM convo_chat_model_configs").fetchall()
            return [_provider_row(r) for r in providers], [_config_row(r) for r in configs]

        return self._read(work)


# --- SQLite -----------------------------------------------------------------------------------------


class SQLiteChatStore(_SQLChatStore):
    """Chats in a SQLite file (a :class:`~convo.SQLiteStore`'s), or in memory with ``path=None``.

    Thread-safe; several processes may share a file (events then reach
    only the process that made them: use PostgreSQL or Redis for replicas).
    """

    def __init__(self, path: Any = None, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout
        self.shared = path is not None
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.RLock()  # the one connection of a memory database
        self._memory: sqlite3.Connection | None = None
        self._closed = False
        if path is None:
            self._memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._init()

    def __repr__(self) -> str:
        return f"SQLiteChatStore({str(self.path) if self.path else ':memory:'!r})"

    def _conn(self) -> sqlite3.Connection:
        if self._memory is not None:
            return self._memory
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open the SQLite chat store {str(self.path)!r}: {exc}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _tx(self, work: Callable[[Any], Any], immediate: bool) -> Any:
        with self._lock if self._memory is not None else _NoLock():
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the SQLite chat store is busy or unreadable: {exc}") from None
            try:
                result = work(conn.cursor())
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"the SQLite chat store failed: {exc}") from None
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"the SQLite chat store failed: {type(exc).__name__}: {exc}") from None
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StoreUnavailable(f"the SQLite chat store could not commit: {exc}") from None
            return result

    def _read(self, work):
        return self._tx(work, immediate=False)

    def _write(self, work):
        return self._tx(work, immediate=True)

    def _read_consistent(self, work):
        return self._tx(work, immediate=False)

    def _init(self) -> None:
        def work(cur):
            cur.execute("CREATE TABLE IF NOT EXISTS convo_chat_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            found = cur.execute("SELECT value FROM convo_chat_meta WHERE key = 'chat_schema_version'").fetchone()
            if found is not None and int(found[0]) > CHAT_SCHEMA_VERSION:
                raise IncompatibleStore(f"the chat tables in {self.path} were laid out by a newer convo (version "
                                        f"{found[0]}; this convo knows up to {CHAT_SCHEMA_VERSION}); upgrade convo")
            for statement in _schema("INTEGER PRIMARY KEY AUTOINCREMENT"):
                cur.execute(statement)
            if found is None:
                cur.execute("INSERT INTO convo_chat_meta (key, value) VALUES ('chat_schema_version', ?)",
                            (str(CHAT_SCHEMA_VERSION),))

        self._write(work)

    def _acquire(self, worker_id: str, now: float) -> ChatRow | None:
        def work(cur):
            found = cur.execute("SELECT id FROM convo_chats WHERE status = 'pending' ORDER BY updated_at, id "
                                "LIMIT 1").fetchone()
            if found is None:
                return None
            got = cur.execute(f"UPDATE convo_chats SET status = 'running', worker_id = ?, started_at = ?, "
                              f"heartbeat_at = ?, updated_at = ?, generation = generation + 1 WHERE id = ? "
                              f"RETURNING {_CHAT_COLUMNS}", (worker_id, now, now, now, found[0])).fetchone()
            return _chat_row(got)

        return self._write(work)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
            if self._memory is not None:
                conns.append(self._memory)
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- PostgreSQL ---------------------------------------------------------------------------------------

#: The advisory lock held while the chat tables are made (per database), and while configs change.
_CHAT_SCHEMA_LOCK = 0x636F6E766F63  # "convoc"
_CONFIG_LOCK = 0x636F6E766F64


class PostgresChatStore(_SQLChatStore):
    """Chats in PostgreSQL, on a pool of their own made from the :class:`~convo.PostgresStore`'s connection settings.

    ``pool_size`` connections at most (a run's step is one short transaction
    on it). Thread-safe, and safe for several replicas on one database.
    Errors never show the password.
    """

    def __init__(self, conninfo: str, kwargs: dict, *, pool_size: int = 20, timeout: float = 10.0) -> None:
        super().__init__()
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        from psycopg_pool import ConnectionPool

        params = conninfo_to_dict(conninfo)
        self._secrets = sorted({str(params[k]) for k in ("password", "sslpassword") if params.get(k)}, key=len,
                               reverse=True)
        self._where = (f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/"
                       f"{params.get('dbname') or params.get('user') or ''}")
        self.conninfo = conninfo
        self.kwargs = dict(kwargs)
        self._psycopg_error = psycopg.Error
        self._unavailable = (psycopg.OperationalError, psycopg.InterfaceError)
        self._retry = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        self._pool = ConnectionPool(conninfo, kwargs=self.kwargs, min_size=1, max_size=pool_size, timeout=timeout,
                                    reconnect_timeout=timeout, check=ConnectionPool.check_connection,
                                    name="convo-chats", open=True)
        try:
            self._init()
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresChatStore({self._where!r})"

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _error(self, exc: BaseException) -> StoreError:
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if isinstance(exc, self._unavailable):
            return StoreUnavailable(f"the PostgreSQL chat store at {self._where} is unavailable: {text}")
        return StoreError(f"the PostgreSQL chat store at {self._where} failed: {type(exc).__name__}: {text}")

    def _run(self, work: Callable[[Any], Any], write: bool) -> Any:
        for attempt in range(5):
            try:
                with self._pool.connection() as conn:
                    if not write:
                        with conn.cursor() as cur:
                            return work(cur)
                    with conn.transaction(), conn.cursor() as cur:
                        return work(cur)
            except self._retry:
                if attempt == 4:
                    raise
                time.sleep(0.01 * (attempt + 1))
            except self._psycopg_error as exc:
                raise self._error(exc) from None
        return None  # pragma: no cover

    def _read(self, work):
        return self._run(work, write=False)

    def _write(self, work):
        return self._run(work, write=True)

    def _read_consistent(self, work):
        def snapshot(cur):
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return work(cur)

        return self._run(snapshot, write=True)

    def _lock_chat(self, cur: Any, chat_id: str) -> Any:
        return cur.execute(f"SELECT {_CHAT_COLUMNS} FROM convo_chats WHERE id = %s FOR UPDATE", (chat_id,)).fetchone()

    def _lock_configs(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CONFIG_LOCK,))

    def _init(self) -> None:
        def work(cur):
            exists = cur.execute("SELECT to_regclass('convo_chat_meta') IS NOT NULL").fetchone()[0]
            found = None
            if exists:
                row = cur.execute("SELECT value FROM convo_chat_meta WHERE key = 'chat_schema_version'").fetchone()
                found = int(row[0]) if row is not None else None
            if found is not None and found > CHAT_SCHEMA_VERSION:
                raise IncompatibleStore(f"the chat tables at {self._where} were laid out by a newer convo (version "
                                        f"{found}; this convo knows up to {CHAT_SCHEMA_VERSION}); upgrade convo")
            if found == CHAT_SCHEMA_VERSION:
                return
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAT_SCHEMA_LOCK,))
            for statement in _schema("BIGSERIAL PRIMARY KEY"):
                cur.execute(statement)
            cur.execute("INSERT INTO convo_chat_meta (key, value) VALUES ('chat_schema_version', %s) "
                        "ON CONFLICT (key) DO NOTHING", (str(CHAT_SCHEMA_VERSION),))

        self._write(work)

    def _acquire(self, worker_id: str, now: float) -> ChatRow | None:
        def work(cur):
            got = cur.execute(
                f"UPDATE convo_chats SET status = 'running', worker_id = %s, started_at = %s, heartbeat_at = %s, "
                f"updated_at = %s, generation = generation + 1 WHERE status = 'pending' AND id = (SELECT id FROM "
                f"convo_chats WHERE status = 'pending' ORDER BY updated_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_CHAT_COLUMNS}",
                (worker_id, now, now, now)).fetchone()
            return _chat_row(got) if got is not None else None

        return self._write(work)

    def _heartbeat(self, worker_id: str, chat_ids: Sequence[str], now: float) -> set:
        rows = self._write(lambda cur: cur.execute(
            "UPDATE convo_chats SET heartbeat_at = %s WHERE id = ANY(%s) AND worker_id = %s AND status = 'running' "
            "RETURNING id", (now, list(chat_ids), worker_id)).fetchall())
        return {r[0] for r in rows}

    def bridge(self) -> Any:
        from .events import PostgresBridge

        return PostgresBridge(self)

    def connect(self) -> Any:
        """A connection of its own (autocommit), outside the pool: for ``LISTEN``."""
        import psycopg

        try:
            return psycopg.connect(self.conninfo, **{**self.kwargs, "autocommit": True})
        except self._psycopg_error as exc:
            raise self._error(exc) from None

    def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """Send NOTIFYs, all in one statement (one round trip)."""
        self._run(lambda cur: cur.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                                          (channel, list(payloads))), write=False)

    def close(self) -> None:
        self._pool.close()
