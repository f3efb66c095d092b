"""convo.batch on a real Dask LocalCluster (two worker processes) against a Messages API peer on 127.0.0.1.

Never skipped: CI installs ``convo[test]``, which brings ``dask[distributed]``.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from distributed import Client, LocalCluster

from convo import AnthropicService, BudgetExceeded, Convo, ItemStatus, PRICES, RemoteItemError, Usage, batch
from tests.messages_server import CACHE_READ, INPUT_TOKENS, OUTPUT_TOKENS, message_for
from tests.servers import Reply, ScriptedHTTPServer

MODEL = "claude-haiku-4-5"
REPLY_COST = PRICES.lookup(MODEL).cost(Usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS,
                                             cache_read_input_tokens=CACHE_READ))
LATENCY = 0.2


# Tasks live at module level: workers import them from this module.

def send_item(item, c: Convo) -> tuple:
    """One request; says where it ran."""
    return c.send(f"item {item}").text(), os.getpid(), c.depth()


def fail_on_odd(item, c: Convo) -> str:
    c.send(f"item {item}")
    if item % 2:
        raise ValueError(f"odd item {item}")
    return "even"


class Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unpicklable(item, c: Convo) -> None:
    raise Unpicklable(1, 2)


@pytest.fixture(scope="module")
def client():
    """A two-process LocalCluster, started once for the module."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as c:
        yield c


class SlowPeer:
    """Answers as a model would, after LATENCY seconds; counts the requests it holds at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def __call__(self, req):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(LATENCY)
            return Reply.json(message_for(req.json()))
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def server():
    """A Messages API peer answering every request after LATENCY seconds, with known usage."""
    with ScriptedHTTPServer(default=SlowPeer()) as s:
        yield s


@pytest.fixture
def lead(server):
    service = AnthropicService(MODEL, api_key="test-key", base_url=server.url)
    yield Convo(service)
    service.close()


class TestDask:
    def test_items_run_on_the_workers_and_their_usage_rolls_up_exactly(self, client, lead):
        result = batch(range(24), send_item, parent=lead, executor=client, max_workers=12, progress=False)
        assert result.ok
        assert [r[0] for r in result] == ["done after 0 results"] * 24
        pids = {r[1] for r in result}
        assert os.getpid() not in pids and pids <= set(client.run(os.getpid).values())
        assert {r[2] for r in result} == {0}  # a root convo on the worker
        usage = lead.cumulative_usage()
        assert usage.responses == 24 and usage.total_cost_usd == 24 * REPLY_COST
        assert usage.input_tokens == 24 * INPUT_TOKENS and usage.cache_read_input_tokens == 24 * CACHE_READ
        assert result.cost_usd == 24 * REPLY_COST
        assert all(o.usage.total_cost_usd == REPLY_COST for o in result.outcomes)

    def test_items_wait_on_the_network_concurrently_beyond_the_worker_threads(self, client, server, lead):
        peer = server.default
        with peer.lock:
            peer.peak = 0
        result = batch(range(16), send_item, parent=lead, executor=client, max_workers=16, progress=False)
        assert result.ok
        # Two CPUs (one thread each) would hold at most two requests at once; waiting on the network, 16 may.
        assert 8 <= peer.peak <= 16, peer.peak

    def test_failures_come_back_with_the_workers_traceback_and_their_usage(self, client, lead):
        result = batch(range(6), fail_on_odd, parent=lead, executor=client, progress=False)
        assert list(result)[::2] == ["even"] * 3
        assert [type(result[i]) for i in (1, 3, 5)] == [ValueError] * 3 and str(result[3]) == "odd item 3"
        assert "fail_on_odd" in result.outcomes[1].traceback
        assert lead.cumulative_usage().total_cost_usd == 6 * REPLY_COST  # failed items spent too

    def test_an_exception_that_cannot_travel_back_is_reported_by_name(self, client, lead):
        [error] = batch([1], raise_unpicklable, parent=lead, executor=client, progress=False)
        assert isinstance(error, RemoteItemError)
        assert error.type_name.endswith("Unpicklable") and error.message == "1/2"

    def test_the_budget_holds_on_the_cluster(self, client, lead):
        budget = 5 * REPLY_COST
        result = batch(range(40), send_item, parent=lead, executor=client, max_workers=4, budget=budget,
                       progress=False)
        counts = result.counts()
        assert counts["not_started"] > 0
        assert budget <= result.cost_usd <= budget + 4 * REPLY_COST
        assert lead.cumulative_usage().total_cost_usd == result.cost_usd
        assert all(isinstance(o.error, BudgetExceeded) for o in result.outcomes if o.status == ItemStatus.NOT_STARTED)

    def test_a_template_with_output_runs_on_the_workers_through_the_forced_tool(self, client, server, lead):
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        result = batch(["a", "b"], "Count {item}", parent=lead, executor=client, output=schema, progress=False)
        # The peer calls the offered tool, final_output, with {"n": ...}: the worker parsed it into the output.
        assert result.ok and all(set(r) == {"n"} and isinstance(r["n"], int) for r in result)
        sent = [r.json() for r in server.requests if "Count" in str(r.json()["messages"])]
        assert len(sent) == 2 and all(b["tool_choice"] == {"type": "tool", "name": "final_output"} for b in sent)


def test_importing_distributed_leaves_secret_scrubbing_whole():
    """distributed makes tblib copy exceptions with their chain; a scrubbed error must still have none."""
    import distributed  # noqa: F401  (already imported above; what matters is that it was)
    from convo.errors import AuthenticationError
    from convo.providers._http import Secret, scrub

    secret = Secret("sk-canary-123")
    try:
        try:
            raise ValueError("the body said sk-canary-123")
        except ValueError as cause:
            raise AuthenticationError("bad key sk-canary-123", status_code=401) from cause
    except AuthenticationError as err:
        clean = scrub(err, secret)
    assert clean.message == "bad key <redacted>" and "sk-canary" not in str(clean)
    assert clean.__cause__ is None and clean.__context__ is None and clean.__traceback__ is None
