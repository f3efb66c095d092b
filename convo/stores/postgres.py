"""The PostgreSQL store: conversations in PostgreSQL, on psycopg 3 and its pool (extra ``postgres``).

Layout (schema version 1), in the connection's current schema (the first
one on ``search_path``: ``public`` unless the DSN says otherwise, e.g.
``postgresql://.../db?options=-csearch_path%3Dmyapp``)::

    convo_meta(key text PRIMARY KEY, value text)            -- 'schema_version' -> '1'
    convo_conversations(id text PRIMARY KEY, parent_id text, root_id text NOT NULL,
                        created timestamptz, updated timestamptz, version bigint,
                        message_count integer, state text, usage text)   -- JSON texts
        INDEX convo_conversations_root (root_id)
    convo_messages(conversation_id text, seq integer, data text,
                   PRIMARY KEY (conversation_id, seq))
    convo_kv(namespace text, key text, value text, PRIMARY KEY (namespace, key))

JSON is kept as ``text``, not ``jsonb``: byte for byte what every other
store keeps (``jsonb`` reorders keys and refuses the ``\\u0000`` escape a
message may hold). Cast in SQL to query it: ``state::jsonb ->> 'model'``.

A turn is one transaction: lock the conversation's row (``SELECT ... FOR
UPDATE``), check the version, delete the messages past ``keep`` (none, for
a plain turn), insert the new ones with one statement, update the row. A
new conversation is inserted with ``ON CONFLICT DO NOTHING``: of two
writers creating one id, the second finds a row count of 0 and gets
:class:`~convo.ConcurrentUpdate`. Its cost does not depend on how long the
history is. Reads are single statements, so each sees one snapshot.
``claim`` is ``INSERT ... ON CONFLICT DO NOTHING``; a counter is kept in
``convo_kv`` and changed under ``SELECT ... FOR UPDATE``.

Connections come from a ``psycopg_pool.ConnectionPool`` (autocommit, with
explicit transactions). A connection the server closed while it sat idle
(a restart) is noticed without a round trip when it is taken from the
pool, and replaced; a statement that fails because the server went away
raises :class:`~convo.StoreUnavailable`, and its connection is discarded.
A server that hangs without closing its connections holds a call until
TCP gives up; libpq's ``tcp_user_timeout`` and ``keepalives_*`` DSN
parameters bound that.

Migrating: the schema version is in ``convo_meta``. Opening creates the
tables if they are missing, under a transaction-scoped advisory lock, so
processes opening a new database at once do not trip over each other; an
opener that finds the current version touches nothing (it needs no DDL
rights). A newer convo that changes the layout migrates older tables the
same way; an older convo refuses a newer layout with
:class:`~convo.IncompatibleStore`.
"""

from __future__ import annotations

import json
import logging
import select
from typing import Any

from ..errors import ConfigurationError, IncompatibleStore, StoreError, StoreUnavailable
from .base import SCHEMA_VERSION, BaseStore, RawRecord, RawRow, RawWrite

__all__ = ["PostgresStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS convo_meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS convo_conversations (
        id text PRIMARY KEY,
        parent_id text,
        root_id text NOT NULL,
        created timestamptz NOT NULL,
        updated timestamptz NOT NULL,
        version bigint NOT NULL,
        message_count integer NOT NULL,
        state text NOT NULL,
        usage text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS convo_conversations_root ON convo_conversations (root_id)",
    """CREATE TABLE IF NOT EXISTS convo_messages (
        conversation_id text NOT NULL,
        seq integer NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS convo_kv (
        namespace text NOT NULL,
        key text NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (namespace, key)
    )""",
)

#: The advisory lock (per database) held while the tables are created or migrated.
_SCHEMA_LOCK = 0x636F6E766F  # "convo"

_EPOCH = "extract(epoch FROM {0})::float8"

# One statement (so one snapshot, and one round trip): the conversation's row, with its state in
# the ``data`` column and seq -1, then its messages. (An ARRAY(...) of the messages is ~8x slower
# to build and parse than the rows.)
_READ = ("SELECT -1 AS seq, state AS data, parent_id, root_id, " + _EPOCH.format("created") + ", "
         + _EPOCH.format("updated") + ", version FROM convo_conversations WHERE id = %(id)s "
         "UNION ALL SELECT seq, data, NULL, NULL, NULL, NULL, NULL FROM convo_messages "
         "WHERE conversation_id = %(id)s ORDER BY seq")

_ROWS = ("SELECT id, parent_id, root_id, " + _EPOCH.format("created") + ", " + _EPOCH.format("updated") + ", "
         "version, message_count, usage FROM convo_conversations")

_APPEND = ("INSERT INTO convo_messages (conversation_id, seq, data) "
           "SELECT %s, %s + m.n - 1, m.data FROM unnest(%s::text[]) WITH ORDINALITY AS m(data, n)")

#: Connection parameters whose values are secrets: kept out of reprs, errors and logs.
_SECRET_PARAMS = ("password", "sslpassword")


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


class PostgresStore(BaseStore):
    """Conversations in PostgreSQL (see the module docstring for the tables).

    Args:
        dsn: ``postgresql://user:password@host:port/dbname`` (or
            ``postgres://``) or a libpq ``key=value`` string.
        pool_size: the most connections this store opens (it keeps one
            open when idle).
        timeout: seconds a call waits for a connection (another call's, or
            the server to come back) before :class:`~convo.StoreUnavailable`;
            also the connect timeout, unless the DSN sets ``connect_timeout``.

    Opening connects once (to check or create the tables), so a server that
    is down makes the constructor raise :class:`~convo.StoreUnavailable`.
    While the server is down or restarting, a call waits up to ``timeout``
    for it, then raises :class:`~convo.StoreUnavailable`; a statement cut
    off by a restart raises it at once. Once the server is back, the next
    call works. Thread-safe, and safe for several processes and machines
    on one database.

    Raises:
        ConfigurationError: psycopg is missing, or the DSN does not parse.
        IncompatibleStore: the tables were laid out by a newer convo.
        StoreUnavailable: the server cannot be reached (or refuses the login).
    """

    scheme = "postgresql"

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = 10.0) -> None:
        super().__init__()
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigurationError(f"PostgresStore needs psycopg and psycopg_pool ({exc}); "
                                     "install them with: pip install 'convo[postgres]'") from None
        if not isinstance(dsn, str):
            raise ConfigurationError(f"a PostgreSQL DSN is a str, got {type(dsn).__name__}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size is an int >= 1, got {pool_size!r}")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's message quotes the DSN, which may hold the password: say it without it.
            raise ConfigurationError("the PostgreSQL DSN does not parse (expected postgresql://user:password@"
                                     "host:port/dbname or 'host=... dbname=...')") from None
        self.pool_size = pool_size
        self.timeout = timeout
        self._secrets = sorted({str(params[k]) for k in _SECRET_PARAMS if params.get(k)}, key=len, reverse=True)
        shown = {k: v for k, v in params.items() if k not in _SECRET_PARAMS}
        self._shown = make_conninfo(**shown)
        self._where = (f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/"
                       f"{params.get('dbname') or params.get('user') or ''}")
        self._psycopg_error = psycopg.Error
        self._unavailable = (psycopg.OperationalError, psycopg.InterfaceError)
        # psycopg's pool logs its reconnection attempts; without a handler, logging's
        # last resort would print them on stderr, and a library never prints.
        logging.getLogger("psycopg").addHandler(logging.NullHandler())
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, round(timeout))
        if "application_name" not in params:
            kwargs["application_name"] = "convo"
        self._init_schema(psycopg, dsn, kwargs)
        # reconnect_timeout: while the server is down the pool retries with a growing backoff,
        # then gives up until a call asks again; bounding it by ``timeout`` means a call made
        # after the server is back never waits on a retry scheduled for later than that.
        self._pool = ConnectionPool(dsn, kwargs=kwargs, min_size=1, max_size=pool_size, timeout=timeout,
                                    reconnect_timeout=timeout, check=self._check_connection, name="convo",
                                    open=True)

    def __repr__(self) -> str:
        return f"PostgresStore({self._shown!r})"

    # --- plumbing -----------------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if isinstance(exc, self._unavailable):
            return StoreUnavailable(f"the PostgreSQL store at {self._where} is unavailable: {text}")
        return StoreError(f"the PostgreSQL store at {self._where} failed: {type(exc).__name__}: {text}")

    def _check_connection(self, conn: Any) -> None:
        """The pool's check of a connection it hands out: cheap, a round trip only when in doubt.

        An idle connection has nothing to read unless the server closed it (a
        restart or a crash: the server sent a FATAL message, or the kernel an
        EOF), so only then is it tried. A dead one raises, and the pool
        replaces it; the others idle beside it died the same way, so they are
        swept out at once rather than tried one by one with the pool's
        growing pause between failed checks.
        """
        if conn.closed or _readable(conn.fileno()):
            try:
                conn.execute("")
            except Exception:
                self._pool.check()
                raise

    # --- for modules that keep tables of their own in this database (audit log, chats) ----

    def run(self, work, write: bool = False) -> Any:
        """``work(conn)`` on a pooled psycopg connection, one transaction if ``write``.

        For parts of convo that keep tables of their own beside the store's
        (the audit log, the chats API). psycopg errors become store errors
        (:class:`~convo.StoreUnavailable` when the server cannot be reached),
        never with the password.
        """
        return self._run(work, write)

    def connection_settings(self) -> tuple[str, dict]:
        """``(conninfo, kwargs)`` for ``psycopg.connect``, for a connection of one's own (``LISTEN`` needs one)."""
        return self._pool.conninfo, dict(self._pool.kwargs or {})

    def _run(self, work, write: bool = False) -> Any:
        """``work(conn)`` on a pooled connection (one transaction if ``write``); psycopg errors become store errors."""
        try:
            with self._pool.connection() as conn:
                if not write:
                    return work(conn)
                with conn.transaction():
                    return work(conn)
        except self._psycopg_error as exc:
            raise self._error(exc) from None

    def _init_schema(self, psycopg: Any, dsn: str, kwargs: dict) -> None:
        def version(conn) -> int | None:
            if not conn.execute("SELECT to_regclass('convo_meta') IS NOT NULL").fetchone()[0]:
                return None
            row = conn.execute("SELECT value FROM convo_meta WHERE key = 'schema_version'").fetchone()
            return int(row[0]) if row is not None else None

        try:
            with psycopg.connect(dsn, **kwargs) as conn:
                found = version(conn)
                if found is None or found < SCHEMA_VERSION:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute("INSERT INTO convo_meta (key, value) VALUES ('schema_version', %s) "
                                     "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
                    found = version(conn)
        except self._psycopg_error as exc:
            raise self._error(exc) from None
        if found is not None and found > SCHEMA_VERSION:
            raise IncompatibleStore(f"the PostgreSQL store at {self._where} was laid out by a newer convo (schema "
                                    f"version {found}; this convo knows up to {SCHEMA_VERSION}); upgrade convo")

    def _close(self) -> None:
        self._pool.close()

    # --- primitives --------------------------------------------------------------------

    def _write(self, write: RawWrite) -> int:
        def work(conn) -> int:
            row = conn.execute("SELECT version, message_count FROM convo_conversations WHERE id = %s FOR UPDATE",
                               (write.id,)).fetchone()
            found = row[0] if row is not None else None
            if (found or 0) != write.expected_version:
                raise self._mismatch(write.id, write.expected_version, found)
            if row is None:
                created = conn.execute(
                    "INSERT INTO convo_conversations (id, parent_id, root_id, created, updated, version, "
                    "message_count, state, usage) VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), 1, %s, "
                    "%s, %s) ON CONFLICT (id) DO NOTHING",
                    (write.id, write.parent_id, write.root_id, write.at, write.at, len(write.append), write.state,
                     write.usage)).rowcount
                if not created:  # another writer created it since the SELECT (and has committed)
                    raise self._mismatch(write.id, 0, self._version_now(conn, write.id))
                if write.append:
                    conn.execute(_APPEND, (write.id, 0, list(write.append)))
                return 1
            keep = min(write.keep, row[1])
            if keep < row[1]:
                conn.execute("DELETE FROM convo_messages WHERE conversation_id = %s AND seq >= %s", (write.id, keep))
            if write.append:
                conn.execute(_APPEND, (write.id, keep, list(write.append)))
            conn.execute("UPDATE convo_conversations SET updated = to_timestamp(%s), version = %s, "
                         "message_count = %s, state = %s, usage = %s WHERE id = %s",
                         (write.at, found + 1, keep + len(write.append), write.state, write.usage, write.id))
            return found + 1

        return self._run(work, write=True)

    @staticmethod
    def _version_now(conn: Any, id: str) -> int | None:
        row = conn.execute("SELECT version FROM convo_conversations WHERE id = %s", (id,)).fetchone()
        return row[0] if row is not None else None

    def _read(self, id: str) -> RawRecord | None:
        rows = self._run(lambda conn: conn.execute(_READ, {"id": id}).fetchall())
        if not rows or rows[0][0] != -1:
            return None
        _, state, parent, root, created, updated, version = rows[0]
        return RawRecord(id, parent, root, created, updated, version, state, tuple(r[1] for r in rows[1:]))

    def _rows(self, root: str | None) -> list[RawRow]:
        def work(conn):
            if root is None:
                return conn.execute(_ROWS).fetchall()
            return conn.execute(_ROWS + " WHERE root_id = %s", (root,)).fetchall()

        return [RawRow(*r) for r in self._run(work)]

    def _delete(self, ids: list[str]) -> None:
        def work(conn):
            conn.execute("DELETE FROM convo_messages WHERE conversation_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM convo_conversations WHERE id = ANY(%s)", (ids,))

        self._run(work, write=True)

    def _kv(self, op: str, namespace: str, key: str, value: str | None) -> Any:
        def work(conn):
            if op == "get":
                row = conn.execute("SELECT value FROM convo_kv WHERE namespace = %s AND key = %s",
                                   (namespace, key)).fetchone()
                return row[0] if row is not None else None
            if op == "put":
                conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (%s, %s, %s) "
                             "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                             (namespace, key, value))
            elif op == "claim":
                return conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (%s, %s, %s) "
                                    "ON CONFLICT (namespace, key) DO NOTHING", (namespace, key, value)).rowcount == 1
            elif op == "delete":
                conn.execute("DELETE FROM convo_kv WHERE namespace = %s AND key = %s", (namespace, key))
            return None

        return self._run(work)

    def _counter(self, namespace: str, key: str, delta: str, limit: str | None) -> tuple[bool, str]:
        def work(conn):
            while True:
                row = conn.execute("SELECT value FROM convo_kv WHERE namespace = %s AND key = %s FOR UPDATE",
                                   (namespace, key)).fetchone()
                added, value = self._counter_step(None if row is None else json.loads(row[0]), delta, limit)
                if not added:
                    return added, value
                if row is not None:
                    conn.execute("UPDATE convo_kv SET value = %s WHERE namespace = %s AND key = %s",
                                 (json.dumps(value), namespace, key))
                    return added, value
                if conn.execute("INSERT INTO convo_kv (namespace, key, value) VALUES (%s, %s, %s) "
                                "ON CONFLICT (namespace, key) DO NOTHING",
                                (namespace, key, json.dumps(value))).rowcount == 1:
                    return added, value
                # Another writer created the counter since the SELECT (and committed: the insert
                # waited for it): read it again, locked this time.

        return self._run(work, write=True)
