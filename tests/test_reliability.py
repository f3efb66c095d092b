"""The reliability suite: convo against a fault-injecting Messages server on 127.0.0.1.

Every turn must either complete or raise a typed error; history must never
be corrupted; usage must equal the sum of the successful replies exactly;
cancellation must be prompt wherever the caller is blocked; secrets must
never leak. Bounded in time: the whole module runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from decimal import Decimal

import pytest
import structlog

import convo
from convo import (
    AnthropicService,
    Budget,
    Cancelled,
    Convo,
    ConvoError,
    Message,
    RetryPolicy,
    Tool,
    Usage,
    tool,
    tool_call_info,
)
from convo.testing import RecordingListener
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer, closed_port

SECRET = "sk-ant-api03-RELIABILITY-SECRET-0123456789abcdef"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.01, max_delay=0.05)


@tool
def lookup(n: int) -> str:
    """Look a number up."""
    return f"value {n}"


def service(url: str, *, retry: RetryPolicy = FAST_RETRY, timeout=(2.0, 0.5)) -> AnthropicService:
    return AnthropicService(api_key=SECRET, base_url=url, model="claude-haiku-4-5", retry=retry, timeout=timeout,
                            max_tokens=256)


def assert_history_sound(c: Convo) -> None:
    """Alternating roles, starting with the user; every tool_use answered exactly once, by the next message."""
    messages = c.messages
    assert len(messages) % 2 == 0, f"{c.id}: odd history length {len(messages)}"
    seen_ids: set[str] = set()
    for i, m in enumerate(messages):
        assert m.role == ("user" if i % 2 == 0 else "assistant"), f"{c.id}: message {i} has role {m.role}"
        if m.role == "assistant":
            ids = [tu.id for tu in m.tool_uses()]
            assert not (set(ids) & seen_ids), f"{c.id}: duplicate tool_use ids {ids}"
            seen_ids.update(ids)
            if ids and i + 1 < len(messages):
                answered = [r.tool_use_id for r in messages[i + 1].tool_results()]
                assert sorted(answered) == sorted(ids), f"{c.id}: {ids} answered by {answered}"
        else:
            for r in m.tool_results():
                assert i > 0 and r.tool_use_id in [tu.id for tu in messages[i - 1].tool_uses()], \
                    f"{c.id}: orphaned tool_result {r.tool_use_id}"


class UsageLedger(convo.NoopListener):
    """Sums the usage the listener is told of: every successful reply, and what failed streams billed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = Usage(cost_usd=Decimal(0))
        self.count = 0
        self.partial = 0

    def on_response(self, c, response) -> None:
        with self.lock:
            self.total = self.total + response.usage
            self.count += 1

    def on_usage(self, c, usage) -> None:
        with self.lock:
            self.total = self.total + usage
            self.partial += 1


class TestSoak:
    def test_random_faults_across_threads_and_sub_convos(self):
        """A few hundred turns with ~30 % injected faults: turns complete or raise typed errors, nothing corrupts."""
        faults = ms.Faults(rate=0.3, seed=20261121, stall=1.0)
        ledger = UsageLedger()
        outcomes = {"ok": 0, "typed_error": 0}
        untyped: list[BaseException] = []
        lock = threading.Lock()
        with ScriptedHTTPServer(default=faults) as server:
            root = Convo(service(server.url), listener=ledger)
            workers = [root.sub_convo(tools=[lookup]) for _ in range(6)]
            workers += [w.sub_convo(tools=[lookup]) for w in workers[:2]]  # depth 2 too

            def drive(c: Convo, index: int) -> None:
                for turn in range(14):
                    try:
                        if turn % 2:
                            events = list(c.stream_user_text_message(f"turn {turn}"))
                            response = events[-1].response
                        else:
                            response = c.send_user_text_message(f"turn {turn}")
                        if response.tool_uses():
                            results, _ = c.tool_result_contents(response)
                            c.send_message(Message.user("", *results))
                        with lock:
                            outcomes["ok"] += 1
                    except (ConvoError, Cancelled) as exc:
                        assert isinstance(exc, convo.ProviderError), repr(exc)
                        with lock:
                            outcomes["typed_error"] += 1
                    except BaseException as exc:  # pragma: no cover - the failure being tested for
                        with lock:
                            untyped.append(exc)

            threads = [threading.Thread(target=drive, args=(c, i)) for i, c in enumerate(workers)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=90)
            assert not any(t.is_alive() for t in threads), "a worker hung"
            elapsed = time.monotonic() - start

        assert untyped == [], untyped
        assert sum(faults.injected.values()) > 30, faults.injected
        assert len(faults.injected) == len(ms.Faults.KINDS), f"not every fault kind was exercised: {faults.injected}"
        assert outcomes["ok"] > 50 and outcomes["typed_error"] > 0, outcomes
        for c in workers:
            assert_history_sound(c)
        total = root.cumulative_usage()
        assert total.responses == ledger.count
        assert (total.input_tokens, total.output_tokens, total.cache_read_input_tokens) == (
            ledger.total.input_tokens, ledger.total.output_tokens, ledger.total.cache_read_input_tokens)
        assert total.total_cost_usd == ledger.total.cost_usd
        assert total.responses == sum(len(c.messages) // 2 for c in workers)
        assert elapsed < 60


class TestHammer:
    def test_senders_and_readers_on_one_tree(self):
        """Many threads send on sub-convos of one parent while others read usage and history."""
        with ScriptedHTTPServer(default=lambda req: ms.answer(req)) as server:
            root = Convo(service(server.url))
            subs = [root.sub_convo() for _ in range(12)]
            stop = threading.Event()
            problems: list[BaseException] = []

            def send(c: Convo) -> None:
                try:
                    for i in range(10):
                        c.send_user_text_message(f"hello {i}")
                except BaseException as exc:  # pragma: no cover
                    problems.append(exc)

            def read() -> None:
                try:
                    while not stop.is_set():
                        u = root.cumulative_usage()
                        assert u.input_tokens == u.responses * ms.INPUT_TOKENS
                        for c in subs:
                            assert len(c.messages) % 2 == 0
                        json.loads(root.debug_json())
                except BaseException as exc:  # pragma: no cover
                    problems.append(exc)

            readers = [threading.Thread(target=read) for _ in range(4)]
            senders = [threading.Thread(target=send, args=(c,)) for c in subs]
            for t in readers + senders:
                t.start()
            for t in senders:
                t.join(timeout=60)
            stop.set()
            for t in readers:
                t.join(timeout=10)
        assert problems == []
        total = root.cumulative_usage()
        assert total.responses == 120
        assert total.input_tokens == 120 * ms.INPUT_TOKENS
        assert total.output_tokens == 120 * ms.OUTPUT_TOKENS
        assert total.total_cost_usd == convo.PRICES.cost("claude-haiku-4-5", Usage(
            input_tokens=ms.INPUT_TOKENS, output_tokens=ms.OUTPUT_TOKENS, cache_read_input_tokens=ms.CACHE_READ)) * 120


def _cancel_later(c: Convo, after: float = 0.2) -> threading.Timer:
    timer = threading.Timer(after, c.cancel, args=("test cancel",))
    timer.start()
    return timer


class TestCancellationUnderLoad:
    def test_cancel_during_stalled_stream(self):
        def stalled(req):
            good = ms.answer(req)
            return Reply(200, b"", good.headers, chunks=good.chunks[:2] + ("", ) * 1 + good.chunks[2:],
                         chunk_delay=10)

        with ScriptedHTTPServer(default=stalled) as server:
            c = Convo(service(server.url, timeout=(2, 30)))
            _cancel_later(c)
            start = time.monotonic()
            with pytest.raises(Cancelled):
                list(c.stream_user_text_message("hi"))
            assert time.monotonic() - start < 2
            assert c.messages == []

    def test_cancel_while_waiting_for_headers(self):
        def stalled(req):
            good = ms.answer(req)
            return Reply(good.status, good.body, good.headers, stall=10)

        with ScriptedHTTPServer(default=stalled) as server:
            c = Convo(service(server.url, timeout=(2, 30)))
            _cancel_later(c)
            start = time.monotonic()
            with pytest.raises(Cancelled):
                c.send_user_text_message("hi")
            assert time.monotonic() - start < 2
            assert c.messages == []

    def test_cancel_during_a_retry_wait(self):
        slow_retry = RetryPolicy(max_attempts=5, initial_delay=30, max_delay=30)
        with ScriptedHTTPServer(default=ms.error(529, "overloaded_error")) as server:
            c = Convo(service(server.url, retry=slow_retry))
            _cancel_later(c)
            start = time.monotonic()
            with pytest.raises(Cancelled):
                c.send_user_text_message("hi")
            assert time.monotonic() - start < 2
            assert len(server.requests) == 1

    def test_cancel_with_running_tools_across_threads(self):
        started = threading.Barrier(5)

        def wait_forever(inp):
            started.wait(5)
            tool_call_info().cancelled.wait(30)
            return "late"

        blocker = Tool("lookup", "blocks until cancelled",
                       {"type": "object", "properties": {"n": {"type": "integer"}}}, wait_forever)
        with ScriptedHTTPServer(default=lambda req: ms.answer(req, tool_calls=4)) as server:
            c = Convo(service(server.url), tools=[blocker])
            response = c.send_user_text_message("go")
            assert len(response.tool_uses()) == 4
            threading.Thread(target=lambda: (started.wait(5), c.cancel("stop"))).start()
            start = time.monotonic()
            results, _ = c.tool_result_contents(response)
            assert time.monotonic() - start < 2
            assert len(results) == 4 and all(r.is_error and "stop" in r.text() for r in results)
            # the convo carries on: the cancelled results go back to the model
            final = c.send_message(Message.user("", *results))
            assert final.text() == "done after 4 results"
            assert_history_sound(c)

    def test_connection_refused_is_typed_and_prompt(self):
        c = Convo(service(f"http://127.0.0.1:{closed_port()}"))
        start = time.monotonic()
        with pytest.raises(convo.APIConnectionError):
            c.send_user_text_message("anyone?")
        assert time.monotonic() - start < 2
        assert c.messages == []


class TestBadInput:
    def test_malformed_tool_input_from_the_model(self):
        def bad_input(req):
            body = req.json()
            message = ms.message_for(body)
            if message["stop_reason"] == "tool_use":
                message["content"][0]["input"] = {"n": "not a number"}
                message["content"][1]["input"] = {"unexpected": True}
            return Reply.json(message)

        with ScriptedHTTPServer(default=bad_input) as server:
            c = Convo(service(server.url), tools=[lookup])
            final = c.run("go")
            assert final.text() == "done after 2 results"
            sent = server.requests[1].json()["messages"][-1]["content"]
            assert [b["is_error"] for b in sent] == [True, True]
            assert "invalid input" in json.dumps(sent)

    def test_tool_returning_unserialisable_and_oversized(self):
        weird = Tool("lookup", "returns odd things", {"type": "object", "properties": {"n": {"type": "integer"}}},
                     lambda inp: {0: object, 1: "x" * 5000}[inp["n"]])
        with ScriptedHTTPServer(default=lambda req: ms.answer(req)) as server:
            c = Convo(service(server.url), tools=[weird], max_tool_result_chars=1000)
            final = c.run("go")
            assert final.text() == "done after 2 results"
            sent = server.requests[1].json()["messages"][-1]["content"]
            assert all(b["is_error"] for b in sent)
            assert "not JSON-serialisable" in json.dumps(sent[0]) and "5000 characters" in json.dumps(sent[1])

    def test_listener_that_raises_everywhere(self):
        class Exploding:
            def __getattr__(self, name):
                def boom(*args):
                    raise ValueError("listener bug")
                return boom

        with ScriptedHTTPServer(default=lambda req: ms.answer(req)) as server:
            c = Convo(service(server.url), tools=[lookup], listener=Exploding())
            assert c.run("go").text() == "done after 2 results"
            assert_history_sound(c)

    def test_budget_is_a_hard_cap_under_parallel_sub_convos(self):
        """Four sub-convos spending in parallel never take the root past its budget, and all get refused."""
        with ScriptedHTTPServer(default=lambda req: ms.answer(req)) as server:
            per_reply = convo.PRICES.cost("claude-haiku-4-5", Usage(
                input_tokens=ms.INPUT_TOKENS, output_tokens=ms.OUTPUT_TOKENS, cache_read_input_tokens=ms.CACHE_READ))
            limit = Decimal("0.03")
            root = Convo(service(server.url), budget=Budget(limit))
            subs = [root.sub_convo() for _ in range(4)]
            refused = []

            def spend(c):
                for _ in range(500):
                    try:
                        c.send_user_text_message("spend")
                    except convo.BudgetExceeded:
                        refused.append(c.id)
                        return

            threads = [threading.Thread(target=spend, args=(c,)) for c in subs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        total = root.cumulative_usage()
        assert len(refused) == 4
        assert total.total_cost_usd <= limit
        assert total.total_cost_usd == per_reply * total.responses
        # The worst case (256 output tokens at $5/M, input at one token a byte) is reserved, the real
        # cost settled: the budget is used to within a few worst cases, not refused early.
        assert total.total_cost_usd > limit - 8 * Decimal("0.002")


class TestSecrets:
    def test_key_never_leaks(self, capsys):
        """Logs, errors, reprs and dumps never contain the API key, whatever fails."""
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        logging.getLogger().addHandler(handler)
        seen: list[str] = []
        try:
            with structlog.testing.capture_logs() as logs:
                faults = ms.Faults(rate=0.6, seed=7)
                with ScriptedHTTPServer(default=faults) as server:
                    svc = service(server.url, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
                    rec = RecordingListener()
                    c = Convo(svc, tools=[lookup], listener=rec)
                    for i in range(12):
                        try:
                            c.run(f"turn {i}")
                        except (ConvoError, Cancelled) as exc:
                            seen += [str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)]
                    for status, kind in [(401, "authentication_error"), (403, "permission_error"),
                                         (400, "invalid_request_error")]:
                        server.add(ms.error(status, kind))
                        with pytest.raises(convo.ProviderError) as info:
                            c.send_user_text_message("x")
                        seen += [str(info.value), repr(info.value)]
                    seen += [repr(svc), repr(c), c.debug_json(), repr(rec.events), str(server.requests[-1].headers
                                                                                         .keys())]
                with pytest.raises(convo.APIConnectionError) as info:
                    Convo(service(f"http://127.0.0.1:{closed_port()}")).send_user_text_message("x")
                seen += [str(info.value), repr(info.value)]
            seen += [repr(e) for e in logs]
        finally:
            logging.getLogger().removeHandler(handler)
        out = capsys.readouterr()
        seen += [out.out, out.err, buffer.getvalue()]
        assert len(seen) > 20
        leaks = [s for s in seen if SECRET in s or SECRET[-16:] in s]
        assert leaks == []
        # and it was really sent, so the test could have failed
        assert server.requests[-1].headers["x-api-key"] == SECRET

    def test_missing_key_names_the_variable(self, monkeypatch):
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        with pytest.raises(convo.MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
            AnthropicService()
