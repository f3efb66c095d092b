"""Redis and PostgreSQL stores against real servers: outages, restarts, secrets, several processes.

What only a store with a server can get wrong; what every store must do is
in tests/test_store_conformance.py. The servers are the session's (see
tests/store_servers.py); a test that stops one starts it again before it
ends, on the same port with the same data.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import convo
from convo import (
    ConversationNotFound,
    Convo,
    CumulativeUsage,
    Message,
    PostgresStore,
    RedisStore,
    StoreUnavailable,
)
from convo.testing import ScriptedService, reply
from tests.store_servers import PostgresKind, RedisKind

ROOT = Path(__file__).resolve().parent.parent


def write(store, id, expected, *, keep=0, append=(), parent=None, root=None):
    return store.write(id, expected_version=expected, parent_id=parent, root_id=root or id,
                       state={"format": 1, "id": id}, usage=CumulativeUsage(), keep=keep, append=list(append))


def texts(messages) -> list[str]:
    return [m.text() for m in messages]


@pytest.fixture
def redis_kind(redis_server):
    kind = RedisKind(redis_server)
    yield kind
    kind.cleanup()


@pytest.fixture
def postgres_kind(postgres_server):
    kind = PostgresKind(postgres_server)
    yield kind
    kind.cleanup()


@pytest.fixture
def all_logs(caplog):
    """Every log record at every level, from convo and from the database clients."""
    for name in (None, "convo", "psycopg", "psycopg.pool", "redis"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def outage_round_trip(store, server) -> None:
    """A convo saves a turn, the server stops, a send fails cleanly, the server is back, the next send is saved."""
    service = ScriptedService(default=reply("ok"))
    c = Convo(service, store=store)
    c.send("one")
    with server.stopped():
        with pytest.raises(StoreUnavailable):
            c.send("two")
        assert texts(c.messages) == ["one", "ok"]  # the unsaved turn did not join the history
    c.send("three")
    assert texts(c.messages) == ["one", "ok", "three", "ok"]
    assert texts(store.load(c.id).messages) == ["one", "ok", "three", "ok"]
    assert convo.resume(c.id, store=store, service=service).messages == c.messages


# --- Redis --------------------------------------------------------------------------------------


class TestRedisOutage:
    def test_a_send_while_the_server_is_down_fails_and_the_next_one_after_it_is_back_is_saved(self, redis_kind,
                                                                                                redis_server):
        outage_round_trip(redis_kind.make(), redis_server)

    def test_opening_while_the_server_is_down_raises_store_unavailable(self, redis_server):
        with redis_server.stopped():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                RedisStore(redis_server.url)
            assert time.monotonic() - started < 5  # refused at once, retried briefly: no long hang

    def test_the_password_never_shows(self, redis_kind, redis_server, all_logs):
        store = redis_kind.make()
        assert redis_server.password not in repr(store) and "***" in repr(store)
        with pytest.raises(StoreUnavailable) as wrong:
            RedisStore(redis_server.url.replace(redis_server.password, "not-the-pw-123"))
        assert "not-the-pw-123" not in str(wrong.value) and redis_server.password not in str(wrong.value)
        with redis_server.stopped(), pytest.raises(StoreUnavailable) as down:
            store.load("anything")
        assert redis_server.password not in str(down.value)
        assert redis_server.password not in all_logs.text and "not-the-pw-123" not in all_logs.text

    def test_open_store_passes_ttl_and_prefix_from_the_url(self, redis_server):
        with convo.open_store(redis_server.url + "?ttl=60&prefix=from-url") as store:
            assert (type(store).__name__, store.ttl, store.prefix) == ("RedisStore", 60, "from-url")


class TestRedisLayout:
    def test_every_key_is_under_the_prefix_as_documented(self, redis_kind):
        store = redis_kind.make()
        write(store, "root", 0, append=[Message.user("a")])
        write(store, "kid", 0, parent="root", root="root")
        store.kv_put("batch:b1", "item-0", {"done": True})
        p = store.prefix
        with redis_kind.server.client() as client:
            keys = set(client.scan_iter(match=f"{p}:*"))
        assert keys == {f"{p}:meta", f"{p}:conversation:root", f"{p}:conversation:kid", f"{p}:messages:root",
                        f"{p}:tree:root", f"{p}:conversations", f"{p}:kv:batch%3Ab1:item-0"}

    def test_kv_namespaces_with_colons_do_not_collide(self, redis_kind):
        store = redis_kind.make()
        store.kv_put("a:b", "c", 1)
        store.kv_put("a", "b:c", 2)
        assert (store.kv_get("a:b", "c"), store.kv_get("a", "b:c")) == (1, 2)

    def test_a_retried_write_that_was_applied_recognises_itself(self, redis_kind):
        """A reply lost after the script ran: the client's retry must not report a conflict."""
        store = redis_kind.make()
        p = store.prefix + ":"
        keys = [p + "conversation:c1", p + "messages:c1", p + "conversations"]
        message = json.dumps(Message.user("m").to_dict())
        args = ["c1", 0, "0", "", "c1", '{"format":1,"id":"c1"}', "{}", 0, "1.0", 0, "token-1", p, message]
        assert store._write_script(keys, args) == 1
        assert store._write_script(keys, args) == 1  # the same write again: applied once, not a mismatch
        assert store._write_script(keys, [*args[:10], "token-2", *args[11:]]) == -1  # another write: refused
        assert store.load("c1").version == 1


class TestRedisTTL:
    def test_each_write_sets_the_expiry_of_the_conversation_its_ancestors_and_its_tree(self, redis_kind):
        store = redis_kind.make(ttl=600)
        write(store, "root", 0, append=[Message.user("a")])
        write(store, "kid", 0, parent="root", root="root", append=[Message.user("b")])
        p = store.prefix
        with redis_kind.server.client() as client:
            client.expire(f"{p}:conversation:root", 5)
            client.expire(f"{p}:messages:root", 5)
            write(store, "kid", 1, keep=1, append=[Message.assistant("c")], parent="root", root="root")
            for key in ("conversation:root", "messages:root", "conversation:kid", "messages:kid", "tree:root"):
                assert 590 < client.ttl(f"{p}:{key}") <= 600, key
            assert client.ttl(f"{p}:meta") == -1  # the layout version never expires

    def test_a_conversation_not_written_for_ttl_seconds_disappears_whole(self, redis_kind):
        store = redis_kind.make(ttl=1)
        write(store, "c1", 0, append=[Message.user("a"), Message.assistant("b")])
        store.kv_put("ns", "k", 1)
        assert [r.id for r in store.list()] == ["c1"]
        time.sleep(1.1)
        with pytest.raises(ConversationNotFound):
            store.load("c1")
        assert store.list() == [] and store.kv_get("ns", "k") is None
        with redis_kind.server.client() as client:
            assert set(client.scan_iter(match=f"{store.prefix}:*")) <= {f"{store.prefix}:meta",
                                                                        f"{store.prefix}:conversations"}
        write(store, "c1", 0)  # the id is free again


# --- PostgreSQL ---------------------------------------------------------------------------------


class TestPostgresOutage:
    def test_a_send_while_the_server_is_down_fails_and_the_next_one_after_it_is_back_is_saved(self, postgres_kind,
                                                                                                postgres_server):
        outage_round_trip(postgres_kind.make(timeout=2), postgres_server)

    def test_a_restart_between_calls_goes_unnoticed(self, postgres_kind, postgres_server):
        """The pool's idle connections died with the old server: they are replaced, not handed out."""
        store = postgres_kind.make(timeout=5)
        write(store, "c1", 0, append=[Message.user("a")])
        threads = [threading.Thread(target=store.load, args=("c1",)) for _ in range(4)]
        for t in threads:  # grow the pool to several idle connections
            t.start()
        for t in threads:
            t.join()
        with postgres_server.stopped():
            pass
        started = time.monotonic()
        assert texts(store.load("c1").messages) == ["a"]
        assert write(store, "c1", 1, keep=1, append=[Message.assistant("b")]) == 2
        assert time.monotonic() - started < 2

    def test_opening_while_the_server_is_down_raises_store_unavailable_at_once(self, postgres_server):
        with postgres_server.stopped():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                PostgresStore(postgres_server.dsn())
            assert time.monotonic() - started < 2

    def test_the_password_never_shows(self, postgres_kind, postgres_server, all_logs):
        pw = postgres_server.password
        store = postgres_kind.make(timeout=1)
        assert pw not in repr(store) and "127.0.0.1" in repr(store)
        with pytest.raises(StoreUnavailable) as wrong:
            PostgresStore(postgres_server.dsn(password="not-the-pw-123"))
        assert "password authentication failed" in str(wrong.value)
        assert "not-the-pw-123" not in str(wrong.value) and pw not in str(wrong.value)
        with pytest.raises(convo.ConfigurationError) as unparsable:
            PostgresStore(f"host=127.0.0.1 password={pw} oops")
        assert pw not in str(unparsable.value)
        with postgres_server.stopped(), pytest.raises(StoreUnavailable) as down:
            store.load("anything")
        assert pw not in str(down.value)
        assert pw not in all_logs.text and "not-the-pw-123" not in all_logs.text


class TestPostgresSharing:
    def test_two_store_objects_write_different_conversations_at_once(self, postgres_kind):
        first = postgres_kind.make()
        second = postgres_kind.reopen(first)
        errors = []

        def talk(store, name):
            try:
                service = ScriptedService(default=reply("ok"))
                convos = [Convo(service, store=store, id=f"{name}-{i}") for i in range(3)]
                for turn in range(5):
                    for c in convos:
                        c.send(f"{name} {turn}")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=talk, args=(s, n)) for s, n in ((first, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        rows = {r.id: r for r in second.list()}
        assert sorted(rows) == [f"{n}-{i}" for n in "ab" for i in range(3)]
        assert all(r.version == 5 and r.messages == 10 for r in rows.values())
        assert texts(first.load("b-2").messages)[-2:] == ["b 4", "ok"]

    def test_first_opens_racing_on_an_empty_database_all_succeed(self, postgres_kind, postgres_server):
        """Several processes start at once on a new database: the tables are created once, nobody fails."""
        postgres_kind._sql("CREATE SCHEMA racing")
        dsn = postgres_server.dsn(options="-csearch_path%3Dracing")
        barrier = threading.Barrier(6)
        opened, errors = [], []

        def open_it():
            barrier.wait()
            try:
                opened.append(PostgresStore(dsn, pool_size=1))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for store in opened:
            store.close()
        assert errors == [] and len(opened) == 6


# --- several real processes --------------------------------------------------------------------

CHILD = """
import sys
import convo
from convo.testing import ScriptedService, reply

store = convo.open_store(sys.argv[1])
name, conversation = sys.argv[2], sys.argv[3]
service = ScriptedService(default=reply("ok"))
c = None
for line in sys.stdin:
    command = line.strip()
    if command == "resume":
        c = convo.resume(conversation, store=store, service=service)
        print("ready", len(c.messages), flush=True)
    elif command == "send":
        try:
            c.send(name)
            print("won", flush=True)
        except convo.ConcurrentUpdate:
            print("lost", flush=True)
store.close()
"""


def store_url(kind: str, request) -> str:
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return f"{server.url}?prefix=procs-{time.monotonic_ns()}"
    server = request.getfixturevalue("postgres_server")
    schema = f"procs_{time.monotonic_ns()}"
    with server.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return server.dsn(options=f"-csearch_path%3D{schema}")


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_two_processes_resume_one_conversation_and_exactly_one_wins_each_version(kind, request):
    """Both children resume the same version, then both send: one is saved, the other gets ConcurrentUpdate."""
    url = store_url(kind, request)
    with convo.open_store(url) as store:
        c = Convo(ScriptedService(default=reply("ok")), store=store)
        c.send("start")
        conversation = c.id
    children = [subprocess.Popen([sys.executable, "-c", CHILD, url, name, conversation], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for name in ("first", "second")]

    def ask(command: str) -> list[str]:
        for child in children:
            child.stdin.write(command + "\n")
            child.stdin.flush()
        return [child.stdout.readline().strip() for child in children]

    winners = []
    try:
        for round_ in range(4):
            assert ask("resume") == [f"ready {2 + 2 * round_}"] * 2  # both hold the same version
            results = ask("send")
            assert sorted(results) == ["lost", "won"], results
            winners.append(("first", "second")[results.index("won")])
    finally:
        for child in children:
            child.stdin.close()
            child.wait(timeout=30)
            child.stdout.close()
    assert [child.returncode for child in children] == [0, 0]
    with convo.open_store(url) as store:
        saved = store.load(conversation)
    assert saved.version == 1 + len(winners)
    assert texts(saved.messages) == ["start", "ok"] + [t for w in winners for t in (w, "ok")]
