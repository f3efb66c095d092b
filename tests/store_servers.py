"""Real Redis and PostgreSQL servers on 127.0.0.1 for the store tests, and their conformance-suite kinds.

Each server is a throwaway: started once per test session on a free port
in a temporary folder (from the Debian packages: ``redis-server``,
PostgreSQL's ``initdb`` and ``postgres``), stopped and removed at the end.
Both require a password, so the tests can check it never leaks.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
system user; its postmaster is this process's child (not daemonised by
``pg_ctl``), so it is reaped when it stops. ``stopped()`` takes a server
down and brings it back on the same port with the same data, for the
outage tests.

Importing this module registers the ``redis`` and ``postgres`` kinds in
``tests.store_kinds.KINDS``; tests/conftest.py imports the two session
fixtures, ``redis_server`` and ``postgres_server``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests import store_kinds
from tests.store_kinds import StoreKind


def _dies_with(sig: int):
    """A ``preexec_fn`` that has the server killed by ``sig`` if this process dies (Linux).

    A test session killed by its timeout runs no teardown, and a server left
    running would outlive it; the kernel's parent-death signal stops it.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def arrange() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG; after the switch to the postgres user, which would clear it

    return arrange


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDied(RuntimeError):
    """A server process exited while we waited for it to accept connections."""


def _wait_until(ready, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except ServerDied:
            raise
        except Exception:  # not accepting connections yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout} s")
        time.sleep(0.02)


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 with a password, persistence off except on ``stop()``.

    ``stop()`` is ``SHUTDOWN SAVE``, so ``start()`` again brings back the
    same data, as a restarted production server would.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="convo-redis-"))
        self.port = free_port()
        self.password = "redis-pw-" + secrets.token_hex(8)
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self):
        """A redis-py client (close it) for poking at the data behind a store's back."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: SHUTDOWN drops the connection, which is not worth three backed-off retries.
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--dbfilename", "dump.rdb", "--requirepass", self.password,
             "--daemonize", "no", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_dies_with(signal.SIGTERM))

        def ping() -> bool:
            if self._process.poll() is not None:
                raise ServerDied(f"redis-server exited; see {self.folder / 'redis.log'}")
            with self.client() as c:
                return c.ping()

        _wait_until(ping, "redis-server")

    def stop(self) -> None:
        """Save the data and shut down (the data comes back with ``start()``)."""
        if self._process is None:
            return
        with contextlib.suppress(Exception), self.client() as c:
            c.shutdown(save=True)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block and up again (same port, same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL's initdb is not installed (apt-get install postgresql)")


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 with password (scram) login.

    ``durable=False`` (the tests) turns fsync off; the benchmark keeps the
    defaults. As root, every server command runs as the ``postgres`` user.
    """

    user = "postgres"
    dbname = "convo_test"

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = _pg_bin()
        self.durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="convo-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.password = "pg-pw-" + secrets.token_hex(8)
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._process: subprocess.Popen | None = None
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            import pwd

            entry = pwd.getpwnam("postgres")
            for path in (self.folder, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        pwfile.unlink()
        _started.append(self)

    def _as_postgres(self) -> dict:
        """subprocess arguments that run a command as the postgres user when we are root (it refuses root)."""
        if not self._as_root:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": [], "cwd": self.folder}

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([str(self.bin / program), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, **self._as_postgres())
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}")

    def dsn(self, dbname: str | None = None, *, password: str | None = None, **params: str) -> str:
        """A ``postgresql://`` URL for this server (the right password unless told otherwise)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return (f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/"
                f"{dbname or self.dbname}" + (f"?{query}" if query else ""))

    def connect(self, dbname: str | None = None):
        """A psycopg connection (autocommit; close it) for poking at the data behind a store's back."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def start(self) -> None:
        # The postmaster runs as our child (not daemonised by pg_ctl), so we reap it when it stops.
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
                   "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"]
        if not self.durable:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.folder / "postgres.log", "ab") as log:
            # SIGQUIT: PostgreSQL's immediate shutdown, fine for a cluster nobody will read again.
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                             preexec_fn=_dies_with(signal.SIGQUIT), **self._as_postgres())

        def accepting() -> bool:
            if self._process.poll() is not None:
                raise ServerDied(f"postgres exited; see {self.folder / 'postgres.log'}")
            with self.connect("postgres"):
                return True

        _wait_until(accepting, "PostgreSQL", timeout=60)

    def create_database(self) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended (clients get FATAL 57P01), the data stays."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block and up again (same port, same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self in _started:
            _started.remove(self)


#: PostgreSQL servers still to remove: a session that dies without its fixture
#: teardown must not leave one running or its folder behind.
_started: list[PostgresServer] = []


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_started):
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for the whole session."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 for the whole session, with the database ``convo_test``."""
    server = PostgresServer()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()


# --- the conformance suite's kinds ------------------------------------------------------------


class RedisKind(StoreKind):
    """Each store a prefix of its own on the session's server."""

    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._stores: list = []
        self._client = None

    def _track(self, store):
        self._stores.append(store)
        return store

    def make(self, **options):
        from convo import RedisStore

        return self._track(RedisStore(self.server.url, prefix=f"t-{uuid.uuid4().hex[:12]}", **options))

    def reopen(self, store):
        from convo import RedisStore

        return self._track(RedisStore(self.server.url, prefix=store.prefix, ttl=store.ttl))

    def client(self):
        if self._client is None:
            self._client = self.server.client()
        return self._client

    def corrupt_message(self, store, conversation_id, seq):
        self.client().lset(f"{store.prefix}:messages:{conversation_id}", seq, "{not json")

    def corrupt_usage(self, store, conversation_id):
        self.client().hset(f"{store.prefix}:conversation:{conversation_id}", "usage", '{"responses": "many"}')

    def stamp_schema(self, store, version):
        self.client().hset(f"{store.prefix}:meta", "schema_version", str(version))

    def cleanup(self) -> None:
        for store in self._stores:
            store.close()
        if self._client is not None:
            self._client.close()


class PostgresKind(StoreKind):
    """Each store a schema of its own (``search_path`` in its DSN) in the session's database."""

    name = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._stores: list = []
        self._dsns: dict[int, str] = {}
        self._schemas: dict[int, str] = {}
        self._conn = None

    def _sql(self, statement: str, *args) -> None:
        if self._conn is None:
            self._conn = self.server.connect()
        self._conn.execute(statement, args or None)

    def make(self, **options):
        from convo import PostgresStore

        schema = f"t_{uuid.uuid4().hex[:12]}"
        self._sql(f"CREATE SCHEMA {schema}")
        dsn = self.server.dsn(options=f"-csearch_path%3D{schema}")
        store = PostgresStore(dsn, pool_size=4, **options)
        self._dsns[id(store)], self._schemas[id(store)] = dsn, schema
        self._stores.append(store)
        return store

    def reopen(self, store):
        from convo import PostgresStore

        again = PostgresStore(self._dsns[id(store)], pool_size=4)
        self._dsns[id(again)], self._schemas[id(again)] = self._dsns[id(store)], self._schemas[id(store)]
        self._stores.append(again)
        return again

    def corrupt_message(self, store, conversation_id, seq):
        self._sql(f"UPDATE {self._schemas[id(store)]}.convo_messages SET data = '{{not json' "
                  "WHERE conversation_id = %s AND seq = %s", conversation_id, seq)

    def corrupt_usage(self, store, conversation_id):
        self._sql(f"UPDATE {self._schemas[id(store)]}.convo_conversations SET usage = '{{\"responses\": \"many\"}}' "
                  "WHERE id = %s", conversation_id)

    def stamp_schema(self, store, version):
        self._sql(f"UPDATE {self._schemas[id(store)]}.convo_meta SET value = %s WHERE key = 'schema_version'",
                  str(version))

    def cleanup(self) -> None:
        for store in self._stores:
            store.close()
        if self._conn is not None:
            self._conn.close()


store_kinds.KINDS["redis"] = lambda request: RedisKind(request.getfixturevalue("redis_server"))
store_kinds.KINDS["postgres"] = lambda request: PostgresKind(request.getfixturevalue("postgres_server"))
