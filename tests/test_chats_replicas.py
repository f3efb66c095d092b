"""Several ``convo serve`` processes on one store act as one chats service: each run is acquired by exactly one
replica, watchers on any replica see every event, control crosses replicas, and a replica killed mid-run has
its runs recovered by another. Real PostgreSQL and Redis servers (tests/store_servers.py).

Each replica talks to a fake model of its own, so which fake was asked says which replica ran a chat.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from tests.chats_support import Api, FakeModel, Frames, part_text, texts, token, ws_url
from tests.server_support import ServeProcess

ARGS = ("--chat-heartbeat", "0.3", "--chat-stale-after", "1.5")
WORDS = lambda n: "".join(f"w{i} " for i in range(1, n + 1))  # noqa: E731


def pg_dsn(postgres_server) -> str:
    schema = f"chats_{uuid.uuid4().hex[:10]}"
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return postgres_server.dsn(options=f"-csearch_path%3D{schema}")


class Replicas:
    def __init__(self, folder, store: str, names=("a", "b")) -> None:
        self.fakes = [FakeModel().__enter__() for _ in names]
        self.servers = []
        try:
            for name, fake in zip(names, self.fakes):
                self.servers.append(ServeProcess(folder, fake.url, store=store, args=ARGS, name=name))
        except BaseException:
            self.close()
            raise

    def runner_of(self, prompt: str) -> int:
        """Which replica sent ``prompt`` to its model (waits until one did)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for i, fake in enumerate(self.fakes):
                for body in fake.bodies():
                    if body["messages"][0]["content"][-1].get("text") == prompt:
                        return i
            time.sleep(0.02)
        raise AssertionError(f"no replica ran {prompt!r}")

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for f in self.fakes:
            f.__exit__(None, None, None)


@pytest.fixture(scope="module")
def pg(postgres_server, tmp_path_factory):
    replicas = Replicas(tmp_path_factory.mktemp("chats-pg"), pg_dsn(postgres_server))
    yield replicas
    replicas.close()


class TestPostgres:
    def test_each_chat_is_run_exactly_once(self, pg):
        a, b = pg.servers
        chats = []
        for i in range(24):
            with Api((a, b)[i % 2].url, token("ana")) as api:
                chats.append((api.create(f"chat number {i}")["id"], i))
        with Api(b.url, token("ana")) as api:
            for chat_id, i in chats:
                assert texts(api.wait(chat_id)) == [("user", f"chat number {i}"),
                                                    ("assistant", f"echo: chat number {i}")]
        asked = Counter(body["messages"][0]["content"][-1]["text"] for fake in pg.fakes for body in fake.bodies()
                        if body["messages"][0]["content"][-1]["text"].startswith("chat number"))
        assert asked == Counter(f"chat number {i}" for i in range(24))

    def test_watchers_on_every_replica_see_every_event(self, pg):
        a, b = pg.servers
        with Api(a.url, token("ben")) as api:
            chat = api.create("hello")
            api.wait(chat["id"])
            with Frames(ws_url(a.url, f"/{chat['id']}/stream"), token("ben")) as on_a, \
                    Frames(ws_url(b.url, f"/{chat['id']}/stream"), token("ben")) as on_b:
                on_a.recv()
                on_b.recv()
                api.send(chat["id"], "DRIP 20 0.03")
                for w in (on_a, on_b):
                    w.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant"
                            and e["message"]["content"][0]["text"] == WORDS(20))
                    w.until_status("waiting")
        assert part_text(on_a.events) == part_text(on_b.events) == WORDS(20)
        statuses = [[e["status"]["status"] for e in w.events if e["type"] == "status"] for w in (on_a, on_b)]
        assert statuses[0][-1] == statuses[1][-1] == "waiting" and "running" in statuses[0] and "running" in statuses[1]

    def test_an_interrupt_on_one_replica_stops_the_run_on_the_other(self, pg):
        prompt = f"DRIP 200 0.02; {uuid.uuid4().hex}"
        with Api(pg.servers[0].url, token("cy")) as api:
            chat = api.create(prompt)
        runner = pg.runner_of(prompt)
        other = pg.servers[1 - runner]
        time.sleep(0.3)
        with Api(other.url, token("cy")) as api:
            assert api.post(f"/{chat['id']}/interrupt").json()["status"] == "waiting"
            got = api.wait_for(chat["id"], lambda g: len(g["messages"]) == 2)
        said = got["messages"][1]["content"][0]["text"]
        assert said.startswith("w1 w2") and len(said.split()) < 200

    def test_a_dead_replicas_runs_are_recovered_by_another(self, postgres_server, tmp_path):
        replicas = Replicas(tmp_path, pg_dsn(postgres_server), names=("c", "d"))
        try:
            prompt = f"DRIP 60 0.02; {uuid.uuid4().hex}"
            with Api(replicas.servers[0].url, token("dee")) as api:
                chat = api.create(prompt)
                api.send(chat["id"], "queued before the crash")
            runner = replicas.runner_of(prompt)
            survivor = replicas.servers[1 - runner]
            with Frames(ws_url(survivor.url, f"/{chat['id']}/stream"), token("dee")) as watcher:
                watcher.until(lambda e: e["type"] == "message_part")  # the run's parts cross replicas
                replicas.servers[runner].process.kill()
                replicas.servers[runner].process.wait()
                watcher.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant"
                              and e["message"]["content"][0]["text"] == "echo: queued before the crash")
            with Api(survivor.url, token("dee")) as api:
                got = api.wait(chat["id"])
            assert texts(got) == [("user", prompt), ("assistant", WORDS(60)), ("user", "queued before the crash"),
                                  ("assistant", "echo: queued before the crash")]
            assert any(b["messages"][0]["content"][-1]["text"] == prompt for b in replicas.fakes[1 - runner].bodies())
            assert "pending" in [e["status"]["status"] for e in watcher.events if e["type"] == "status"]
        finally:
            replicas.close()

    def test_the_database_password_never_shows(self, pg, postgres_server):
        assert all(postgres_server.password not in s.output() for s in pg.servers)


class TestRedis:
    def test_two_replicas_on_redis_share_runs_and_events(self, redis_server, tmp_path):
        replicas = Replicas(tmp_path, redis_server.url + f"?prefix=chats-{uuid.uuid4().hex[:8]}")
        try:
            a, b = replicas.servers
            with Api(a.url, token("eve")) as api:
                ids = [api.create(f"redis chat {i}")["id"] for i in range(10)]
                chat = api.create("hi")
                api.wait(chat["id"])
                with Frames(ws_url(a.url, f"/{chat['id']}/stream"), token("eve")) as on_a, \
                        Frames(ws_url(b.url, f"/{chat['id']}/stream"), token("eve")) as on_b:
                    on_a.recv()
                    on_b.recv()
                    api.send(chat["id"], "DRIP 15 0.03")
                    for w in (on_a, on_b):
                        w.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant"
                                and e["message"]["content"][0]["text"] == WORDS(15))
                for i, chat_id in enumerate(ids):
                    assert texts(api.wait(chat_id))[-1] == ("assistant", f"echo: redis chat {i}")
            assert part_text(on_a.events) == part_text(on_b.events) == WORDS(15)
            asked = Counter(body["messages"][0]["content"][-1]["text"] for fake in replicas.fakes
                            for body in fake.bodies())
            assert all(asked[f"redis chat {i}"] == 1 for i in range(10))
            assert redis_server.password not in a.output() + b.output()
        finally:
            replicas.close()
