"""Audit records in the conversations' own database: :class:`StoreAuditLog`.

The table, created beside the store's own (in SQLite the same file, in
PostgreSQL the connection's current schema)::

    convo_audit_events(
        seq        INTEGER PRIMARY KEY AUTOINCREMENT    -- bigint identity in PostgreSQL: the order written
        at         TEXT     -- ISO 8601 UTC with microseconds (timestamptz in PostgreSQL)
        event      TEXT     -- "request", "response", "tool_call"... (convo.audit.events)
        convo_id   TEXT, parent_id TEXT, root_id TEXT, depth INTEGER
        data       TEXT     -- the record's data, as JSON text
    )
    INDEX convo_audit_events_convo (convo_id, seq)
    INDEX convo_audit_events_root  (root_id, seq)
    INDEX convo_audit_events_at    (at)

Query it with :meth:`StoreAuditLog.events` (by conversation, tree, time or
position), with ``convo logs STORE-URL``, or in SQL
(``data::jsonb -> 'usage' ->> 'cost_usd'`` in PostgreSQL). Rows are only
ever inserted. Unlike the JSON-lines log there is no hash chain: the
database's own access control guards the table.

Writing: events are queued and written by one background thread, many
per transaction, so a conversation waits for a queue append, not for the
database. With ``strict=True`` the event's thread waits until its row is
committed (and the send or tool call fails if it cannot be), still sharing
transactions with other threads' events. If the database is down, queued
events wait (up to ``max_queue``; beyond that the oldest are dropped and
counted) and are written once it is back, after an ``audit_gap`` record
when any were dropped.
"""

from __future__ import annotations

import atexit
import json
import queue
import sqlite3
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import Any

from .._log import log
from ..errors import ConfigurationError
from .events import FORMAT_VERSION, AuditListener, AuditWriteFailed, Redact, dumps, now_iso

__all__ = ["StoreAuditLog"]

TABLE = "convo_audit_events"

_SQLITE_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        convo_id TEXT,
        parent_id TEXT,
        root_id TEXT,
        depth INTEGER,
        data TEXT NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_convo ON {TABLE} (convo_id, seq)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_root ON {TABLE} (root_id, seq)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at)",
)

_PG_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL,
        event text NOT NULL,
        convo_id text,
        parent_id text,
        root_id text,
        depth integer,
        data text NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_convo ON {TABLE} (convo_id, seq)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_root ON {TABLE} (root_id, seq)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at)",
)

_PG_LOCK = 0x636F6E766F61  # "convoa": held while the table is created

_COLUMNS = "seq, at, event, convo_id, parent_id, root_id, depth, data"


def _row(record: dict) -> tuple:
    return (record["at"], record["event"], record["convo"], record["parent"], record["root"], record["depth"],
            dumps(record["data"]))


def _record(row: tuple) -> dict:
    seq, at, event, convo, parent, root, depth, data = row
    if isinstance(at, datetime):
        at = at.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return {"v": FORMAT_VERSION, "seq": seq, "at": at, "event": event, "convo": convo, "parent": parent,
            "root": root, "depth": depth, "data": json.loads(data)}


def _select(where: list[str], limit: int | None) -> str:
    """The query, with ``{p}`` for a parameter and ``{t}`` for a time parameter (each backend fills them in)."""
    sql = f"SELECT {_COLUMNS} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError("since= and until= must be timezone-aware datetimes (or ISO 8601 strings)")
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, str):
        return _iso(datetime.fromisoformat(value))
    raise ConfigurationError(f"since= and until= take a datetime or an ISO 8601 str, got {type(value).__name__}")


class _SQLite:
    """The table in the store's SQLite file, through connections of its own."""

    def __init__(self, store: Any) -> None:
        self.path = store.path
        self.timeout = getattr(store, "timeout", 30.0)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone():
            return  # there already: opening needs no write lock (the database may be busy)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SQLITE_SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def insert(self, rows: list[tuple]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT INTO {TABLE} (at, event, convo_id, parent_id, root_id, depth, data) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def select(self, where: list[str], args: list, limit: int | None) -> list[tuple]:
        sql = _select(where, limit).format(p="?", t="?")
        return self._conn().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass


class _Postgres:
    """The table in the store's PostgreSQL database, through the store's connection pool.

    It runs its statements with the store's ``run`` (a pooled connection,
    one transaction, psycopg's errors turned into store errors), so the
    audit table shares the store's DSN, pool, timeouts and secret handling.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

        def create(conn) -> None:
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]:
                return
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            for statement in _PG_SCHEMA:
                conn.execute(statement)

        self.store.run(create, write=True)

    def insert(self, rows: list[tuple]) -> None:
        def work(conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {TABLE} (at, event, convo_id, parent_id, root_id, depth, data) "
                                "VALUES (%s::timestamptz, %s, %s, %s, %s, %s, %s)", rows)

        self.store.run(work, write=True)

    def select(self, where: list[str], args: list, limit: int | None) -> list[tuple]:
        sql = _select(where, limit).format(p="%s", t="%s::timestamptz")
        return self.store.run(lambda conn: conn.execute(sql, args).fetchall())

    def close(self) -> None:
        pass  # the pool is the store's


class _Item:
    """One event on its way to the table: noted on the event's thread, built and written by the writer."""

    __slots__ = ("event", "row", "done", "error")

    def __init__(self, event: tuple, wait: bool) -> None:
        self.event = event  # (listener method, at, place, args): see AuditListener._accept
        self.row: tuple | None = None
        self.done = threading.Event() if wait else None
        self.error: str | None = None


_open_logs: "weakref.WeakSet[StoreAuditLog]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for audit in list(_open_logs):
        try:
            audit.close(timeout=5.0)
        except Exception:  # exiting: nothing left to tell
            pass


class StoreAuditLog(AuditListener):
    """A listener that records every event in a table of the conversations' store (SQLite or PostgreSQL).

    The same events and records as :class:`~convo.audit.JSONLAuditLog`
    (see :mod:`convo.audit.events`), queryable by conversation and time with
    :meth:`events`. The table and how it is written are described in
    :mod:`convo.audit.store`.

    Args:
        store: a :class:`~convo.SQLiteStore` (its file is opened with
            connections of this log's own) or a :class:`~convo.PostgresStore`
            (its connection pool is shared).
        redact: ``redact(what, name, value) -> value`` (see :mod:`convo.audit.events`).
        strict: wait until each event is committed, and raise
            :class:`~convo.audit.AuditWriteFailed` (failing the send or tool
            call) when it cannot be.
        max_queue: how many events may wait for a database that is down
            before the oldest are dropped (and counted in an ``audit_gap``
            record).
        timeout: with ``strict``, the longest an event waits for its commit.

    Thread-safe: events from any number of threads share one queue and one
    writer thread. Close it (or use it as a context manager) to write what
    is queued; :meth:`flush` waits for that without closing.

    Raises:
        ConfigurationError: the store is neither SQLite nor PostgreSQL.
        AuditWriteFailed: the table cannot be created.
    """

    def __init__(self, store: Any, *, redact: Redact | None = None, strict: bool = False,
                 max_queue: int = 100_000, timeout: float = 30.0) -> None:
        super().__init__(redact=redact, strict=strict)
        scheme = getattr(store, "scheme", None)
        try:
            if scheme == "sqlite":
                self._db: Any = _SQLite(store)
            elif scheme == "postgresql":
                self._db = _Postgres(store)
            else:
                raise ConfigurationError(f"StoreAuditLog needs a SQLiteStore or a PostgresStore, got "
                                         f"{type(store).__name__} (use JSONLAuditLog for a file)")
        except ConfigurationError:
            raise
        except Exception as exc:
            raise AuditWriteFailed(f"cannot create the audit table in {store!r}: {type(exc).__name__}: {exc}") \
                from None
        self.store = store
        self.max_queue = max_queue
        self.timeout = timeout
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._give_up_at = 0.0
        self._failing: str | None = None
        self._dropped = 0
        self._dropped_since: str | None = None
        self._unwritten = 0  # queued or being written
        self._idle = threading.Condition(self._lock)
        _open_logs.add(self)

    def __repr__(self) -> str:
        return f"StoreAuditLog({self.store!r})"

    def __enter__(self) -> "StoreAuditLog":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def dropped(self) -> int:
        """Events dropped because the queue overflowed while the database was down (not yet noted by a gap)."""
        with self._lock:
            return self._dropped

    # --- writing -------------------------------------------------------------------

    def _accept(self, event: str, at: str, place: tuple, args: tuple) -> None:
        item = _Item((event, at, place, args), wait=self.strict)
        with self._lock:
            if self._closed:
                error = f"{self!r} is closed"
            else:
                error = None
                if self._thread is None:
                    self._thread = threading.Thread(target=self._writer, name="convo-audit-writer", daemon=True)
                    self._thread.start()
                if self._unwritten >= self.max_queue and not self.strict:
                    self._drop_oldest()
                self._unwritten += 1
                self._queue.put(item)
        if error is not None:
            if self.strict:
                raise AuditWriteFailed(error)
            log.warning("audit_write_failed", sink=repr(self), error=error)
            return
        if item.done is not None:
            if not item.done.wait(self.timeout):
                raise AuditWriteFailed(f"{self!r}: the event was not committed within {self.timeout} s")
            if item.error is not None:
                raise AuditWriteFailed(f"{self!r} could not record the event: {item.error}")

    def _rows(self, batch: list) -> list:
        """Build the rows of newly taken events (once each); an event whose record cannot be built is settled."""
        kept = []
        for item in batch:
            if item.row is None:
                try:
                    record = self._build(*item.event)
                except AuditWriteFailed as exc:  # strict: its waiter fails
                    item.error = str(exc)
                    record = None
                if record is None:
                    if item.done is not None:
                        item.error = item.error or "the audit record could not be built"
                        item.done.set()
                    self._settled(1)
                    continue
                item.row = _row(record)
            kept.append(item)
        return kept
    def _drop_oldest(self) -> None:
        """The queue is full: drop its oldest event (lock held)."""
        try:
            old = self._queue.get_nowait()
        except queue.Empty:
            return
        if old is None:
            self._queue.put(None)
            return
        self._unwritten -= 1
        if not self._dropped:
            self._dropped_since = old.event[1]
        self._dropped += 1

    def _writer(self) -> None:
        backoff = 0.05
        batch: list[_Item] = []
        stop = False
        while True:
            if not batch:
                item = self._queue.get()
                if item is None:
                    return
                batch.append(item)
            while len(batch) < 500 and not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            batch = self._rows(batch)
            if not batch:
                if stop:
                    return
                continue
            with self._lock:
                dropped, since = self._dropped, self._dropped_since
            rows = [i.row for i in batch]
            if dropped:
                gap = {"at": now_iso(), "event": "audit_gap", "convo": None, "parent": None, "root": None,
                       "depth": None, "data": {"dropped": dropped, "since": since, "error": self._failing}}
                rows.insert(0, _row(gap))
            try:
                self._db.insert(rows)
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                if self._failing is None:
                    log.error("audit_write_failed", sink=repr(self), error=why,
                              hint="events wait in memory and are written once the database is back")
                self._failing = why
                # Strict events fail at once (their send must not go on unaudited); the others wait and retry.
                strict = [i for i in batch if i.done is not None]
                for i in strict:
                    i.error = why
                    i.done.set()
                batch = [i for i in batch if i.done is None]
                self._settled(len(strict))
                if self._closed and time.monotonic() > self._give_up_at:
                    lost = len(batch) + self._queue.qsize()
                    log.error("audit_events_lost", sink=repr(self), events=lost, error=why)
                    self._settled(lost)
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            if self._failing is not None:
                log.warning("audit_write_recovered", sink=repr(self))
                self._failing = None
            with self._lock:
                self._dropped -= dropped
            for i in batch:
                if i.done is not None:
                    i.done.set()
            self._settled(len(batch))
            batch = []
            if stop:
                return

    def _settled(self, n: int) -> None:
        with self._lock:
            self._unwritten -= n
            if self._unwritten <= 0:
                self._idle.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._unwritten > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued (waiting up to ``timeout``), stop the writer thread, release connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._give_up_at = time.monotonic() + (timeout if timeout is not None else 30.0)
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("audit_close_incomplete", sink=repr(self), unwritten=self._unwritten)
        self._db.close()
        _open_logs.discard(self)

    # --- reading -------------------------------------------------------------------

    def events(self, *, convo: str | None = None, root: str | None = None, event: str | None = None,
               since: datetime | str | None = None, until: datetime | str | None = None,
               after_seq: int | None = None, limit: int | None = None) -> list[dict]:
        """Audit records, oldest first, in the format of :mod:`convo.audit.events` (``seq`` is the row's).

        Args:
            convo: only this conversation's events.
            root: only the events of this tree (a root conversation and every sub-convo below it).
            event: only events of this kind (``"tool_call"``...).
            since: events at or after this time (a timezone-aware datetime or ISO 8601 text).
            until: events before this time.
            after_seq: events written after the one with this ``seq`` (to follow the table).
            limit: at most this many.
        """
        where: list[str] = []
        args: list = []
        for column, value in (("convo_id", convo), ("root_id", root), ("event", event)):
            if value is not None:
                where.append(f"{column} = {{p}}")
                args.append(value)
        if since is not None:
            where.append("at >= {t}")
            args.append(_iso(since))
        if until is not None:
            where.append("at < {t}")
            args.append(_iso(until))
        if after_seq is not None:
            where.append("seq > {p}")
            args.append(int(after_seq))
        return [_record(r) for r in self._db.select(where, args, limit)]
