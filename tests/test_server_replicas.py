"""Two ``convo serve`` processes sharing one real PostgreSQL behave as one service: sessions and budgets."""

from __future__ import annotations

import threading
import uuid

import pytest

from convo.remote import Client
from tests.server_support import FakeClaude, Raw, ServeProcess, token, user


@pytest.fixture(scope="module")
def replicas(postgres_server, tmp_path_factory):
    schema = f"serve_{uuid.uuid4().hex[:10]}"
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = postgres_server.dsn(options=f"-csearch_path%3D{schema}")
    folder = tmp_path_factory.mktemp("replicas")
    with FakeClaude() as fake, ServeProcess(folder, fake.url, store=dsn, name="a") as a, \
            ServeProcess(folder, fake.url, store=dsn, name="b") as b:
        yield a, b, postgres_server.password


def _result(r: Raw) -> dict:
    return r.until("result")[-1]


def test_any_replica_resumes_any_session(replicas):
    a, b, _ = replicas
    tok = token("rosa")
    with Client(a.ws_url, tok) as on_a, on_a.create_session() as first:
        first.prompt("said on a")
        sid = first.session_id
    with Client(b.ws_url, tok) as on_b:
        with on_b.create_session(session_id=sid) as again:
            assert again.prompt("HISTORY?").result == "history: said on a"
            again.prompt("said on b")
        with on_b.create_session(session_id=sid, fork=True) as fork:
            assert fork.session_id != sid
    with Client(a.ws_url, tok) as on_a, on_a.create_session(session_id=sid) as back:
        assert back.prompt("HISTORY?").result == "history: said on a | HISTORY? | said on b"
    with Raw(b.ws_url, token("someone-else")) as r:
        error = r.init(sessionId=sid)
        assert error["payload"]["code"] == "SESSION_ERROR" and "not found" in error["payload"]["message"]


def test_a_budget_spent_on_one_replica_holds_on_the_other(replicas):
    a, b, _ = replicas
    tok = token("sven", ai=0.2)
    with Raw(a.ws_url, tok) as r:
        r.init()
        r.send(user("spend; USAGE 100000 10"))
        assert _result(r)["subtype"] == "success"
    with Raw(b.ws_url, tok, read_ready=False) as r:
        error = r.recv()
        assert error["type"] == "error" and error["payload"]["code"] == "BUDGET_EXCEEDED"


def test_parallel_sessions_on_both_replicas_share_one_reservation_budget(replicas):
    """Room for two worst-case requests; four run at once, two per replica: exactly two get through."""
    a, b, _ = replicas
    tok = token("tara", ai=0.3)
    outcomes = []
    lock = threading.Lock()

    def run(server) -> None:
        with Raw(server.ws_url, tok) as r:
            r.init()
            r.send(user("hold; SLEEP 1"))
            subtype = _result(r)["subtype"]
            with lock:
                outcomes.append(subtype)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["error_budget", "error_budget", "success", "success"]


def test_the_database_password_never_shows(replicas):
    a, b, password = replicas
    assert password not in a.output() and password not in b.output()
