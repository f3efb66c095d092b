"""The Convo engine, through its public API with ScriptedService."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import pytest
import structlog

import convo
from convo import (
    Budget,
    BudgetExceeded,
    Cancelled,
    Convo,
    DoNotRespond,
    MaxTurnsExceeded,
    Message,
    Price,
    PriceTable,
    StopReason,
    StreamDone,
    TextDelta,
    Tool,
    ToolOut,
    ToolUse,
    UnknownToolUseError,
    Usage,
    tool,
    tool_call_info,
)
from convo.testing import FunctionService, RecordingListener, ScriptedService, reply

PRICED = "test-model"


@pytest.fixture
def prices() -> PriceTable:
    """A price table where test-model costs $1 per million input and $2 per million output tokens."""
    return PriceTable({PRICED: Price(1, 2)})


def usage(i: int = 10, o: int = 5) -> Usage:
    return Usage(input_tokens=i, output_tokens=o)


@tool
def nap(seconds: float) -> str:
    """Sleep for a while, then say so.

    Args:
        seconds: how long to sleep.
    """
    time.sleep(seconds)
    return f"slept {seconds}"


@tool
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


def tool_turn(*uses: tuple, model: str = PRICED, u: Usage | None = None):
    return reply(tool_uses=[ToolUse(i, n, inp) for i, n, inp in uses], model=model, usage=u or usage())


class TestSend:
    def test_success_appends_message_and_reply(self):
        svc = ScriptedService([reply("hello")])
        c = Convo(svc)
        r = c.send_user_text_message("hi")
        assert r.text() == "hello"
        assert [m.role for m in c.messages] == ["user", "assistant"]
        assert c.messages[0].text() == "hi"

    def test_error_leaves_history_untouched(self):
        svc = ScriptedService([reply("one"), convo.ServerError("boom", status_code=500)])
        c = Convo(svc)
        c.send_user_text_message("first")
        before = c.messages
        with pytest.raises(convo.ServerError):
            c.send_user_text_message("second")
        assert c.messages == before

    def test_other_contents_go_before_text(self):
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 2})), reply("ok")])
        c = Convo(svc, tools=[add])
        first = c.send_user_text_message("go")
        results, _ = c.tool_result_contents(first)
        c.send_user_text_message("and then?", *results)
        sent = svc.requests[1].messages[-1]
        assert [b.type for b in sent.content] == ["tool_result", "text"]

    def test_prompt_caching_marks_request_not_history(self):
        svc = ScriptedService([reply("a")])
        c = Convo(svc, system_prompt="be brief")
        msg = Message.user("hi")
        c.send_message(msg)
        req = svc.requests[0]
        assert req.system[-1].cache is True
        assert req.messages[-1].content[-1].cache is True
        assert msg.content[-1].cache is False
        assert c.messages[0].content[-1].cache is False

    def test_prompt_caching_off_marks_nothing(self):
        svc = ScriptedService([reply("a")])
        Convo(svc, system_prompt="s", prompt_caching=False).send_user_text_message("hi")
        req = svc.requests[0]
        assert not req.system[0].cache and not req.messages[-1].content[-1].cache

    def test_tool_use_only_forces_a_tool(self):
        svc = ScriptedService([reply("a"), reply("b")])
        Convo(svc, tools=[add], tool_use_only=True).send_user_text_message("x")
        Convo(svc, tools=[add]).send_user_text_message("x")
        assert str(svc.requests[0].tool_choice.type) == "any"
        assert str(svc.requests[1].tool_choice.type) == "auto"
        assert svc.requests[0].tools[0].name == "add"

    def test_missing_tool_results_are_inserted_as_errors(self):
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 2}), ("t2", "add", {"a": 0, "b": 0})),
                               reply("fine")])
        c = Convo(svc, tools=[add])
        c.send_user_text_message("go")
        c.send_user_text_message("never mind")
        sent = svc.requests[1].messages[-1]
        assert [r.tool_use_id for r in sent.tool_results()] == ["t1", "t2"]
        assert all(r.is_error for r in sent.tool_results())
        assert c.messages[2].tool_results()[0].tool_use_id == "t1"

    def test_rejects_non_user_message_and_empty_message(self):
        c = Convo(ScriptedService([reply("x")]))
        with pytest.raises(ValueError):
            c.send_message(Message.assistant("no"))
        with pytest.raises(ValueError):
            c.send_message(Message.user(""))
        with pytest.raises(TypeError):
            c.send_message("just a string")  # type: ignore[arg-type]
        assert c.messages == []

    def test_service_returning_wrong_type_is_a_clear_error(self):
        c = Convo(FunctionService(lambda req: "not a response"))  # type: ignore[arg-type, return-value]
        with pytest.raises(TypeError, match="not a convo.Response"):
            c.send_user_text_message("hi")
        assert c.messages == []

    def test_rejects_a_service_that_is_not_one(self):
        with pytest.raises(convo.ConfigurationError, match="Service protocol"):
            Convo(object())  # type: ignore[arg-type]

    def test_thinking_with_tool_use_only_is_refused(self):
        with pytest.raises(convo.ConfigurationError, match="extended thinking"):
            Convo(ScriptedService(), tools=[add], tool_use_only=True,
                  thinking=convo.ThinkingConfig(budget_tokens=1024))

    def test_rejects_duplicate_and_non_tool_tools(self):
        with pytest.raises(convo.ToolDefinitionError, match="two tools"):
            Convo(ScriptedService(), tools=[add, add])
        with pytest.raises(convo.ToolDefinitionError, match="convo.Tool"):
            Convo(ScriptedService(), tools=[lambda x: x])

    def test_concurrent_sends_on_one_convo_are_serialised(self):
        svc = FunctionService(lambda req: reply(f"n={len(req.messages)}"))
        c = Convo(svc)
        threads = [threading.Thread(target=c.send_user_text_message, args=(f"m{i}",)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        roles = [str(m.role) for m in c.messages]
        assert roles == ["user", "assistant"] * 16
        # each request saw the whole history so far: 1, 3, 5, ... messages
        assert sorted(len(r.messages) for r in svc.requests) == list(range(1, 32, 2))

    def test_listener_sending_on_its_own_convo_is_refused_not_deadlocked(self):
        seen = []

        class Reentrant:
            def on_response(self, c, response):
                try:
                    c.send_user_text_message("again")
                except convo.ConvoError as exc:
                    seen.append(exc)

        c = Convo(ScriptedService([reply("a"), reply("b")]), listener=Reentrant())
        c.send_user_text_message("hi")
        assert len(seen) == 1 and isinstance(seen[0], convo.ConversationBusy)


class TestStreaming:
    def test_stream_yields_deltas_then_done(self):
        svc = ScriptedService([reply("hello world")])
        c = Convo(svc)
        events = list(c.stream_user_text_message("hi"))
        assert isinstance(events[0], TextDelta) and events[0].text == "hello world"
        assert isinstance(events[-1], StreamDone) and events[-1].response.text() == "hello world"
        assert len(c.messages) == 2

    def test_history_changes_only_when_stream_completes(self):
        c = Convo(ScriptedService([reply("hello")]))
        stream = c.stream_user_text_message("hi")
        next(stream)
        assert c.messages == []
        stream.close()  # abandoned part-way
        assert c.messages == []
        # the convo is usable again afterwards
        c2_svc = ScriptedService([reply("x")])
        c.service = c2_svc
        c.send_user_text_message("again")
        assert len(c.messages) == 2

    def test_stream_error_leaves_history_untouched(self):
        class Broken(ScriptedService):
            def stream(self, request):
                yield TextDelta(0, "partial")
                raise convo.APIConnectionError("dropped")

        c = Convo(Broken())
        with pytest.raises(convo.APIConnectionError):
            list(c.stream_user_text_message("hi"))
        assert c.messages == []

    def test_cancel_during_stream_raises_cancelled(self):
        gate = threading.Event()

        class Slow(ScriptedService):
            def stream(self, request):
                yield TextDelta(0, "a")
                gate.wait(5)
                yield TextDelta(0, "b")
                yield StreamDone(reply("ab"))

        c = Convo(Slow())
        stream = c.stream_user_text_message("hi")
        next(stream)
        threading.Timer(0.05, lambda: (c.cancel("user hit stop"), gate.set())).start()
        start = time.monotonic()
        with pytest.raises(Cancelled):
            list(stream)
        assert time.monotonic() - start < 2
        assert c.messages == []


class TestTools:
    def test_four_slow_tools_run_concurrently_in_request_order(self):
        uses = [(f"t{i}", "nap", {"seconds": 0.3 - 0.05 * i}) for i in range(4)]
        svc = ScriptedService([tool_turn(*uses)])
        c = Convo(svc, tools=[nap])
        response = c.send_user_text_message("nap four times")
        start = time.monotonic()
        results, ends_turn = c.tool_result_contents(response)
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, f"four 0.3 s tools took {elapsed:.2f} s: not concurrent"
        assert [r.tool_use_id for r in results] == ["t0", "t1", "t2", "t3"]
        assert [r.text() for r in results] == [f"slept {0.3 - 0.05 * i}" for i in range(4)]
        assert not ends_turn
        assert all(r.start_time <= r.end_time for r in results)

    def test_max_tool_workers_limits_concurrency(self):
        svc = ScriptedService([tool_turn(*[(f"t{i}", "nap", {"seconds": 0.2}) for i in range(4)])])
        c = Convo(svc, tools=[nap], max_tool_workers=2)
        start = time.monotonic()
        c.tool_result_contents(c.send_user_text_message("go"))
        assert time.monotonic() - start >= 0.38

    def test_unknown_tool_is_an_error_result_naming_the_tools(self):
        c = Convo(ScriptedService([tool_turn(("t1", "nope", {}))]), tools=[add])
        results, _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert results[0].is_error and "unknown tool 'nope'" in results[0].text() and "add" in results[0].text()

    def test_raising_tool_is_an_error_result(self):
        @tool
        def explode() -> str:
            """Always fails."""
            raise RuntimeError("kaboom")

        rec = RecordingListener()
        c = Convo(ScriptedService([tool_turn(("t1", "explode", {}))]), tools=[explode], listener=rec)
        results, _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert results[0].is_error and "RuntimeError: kaboom" in results[0].text()
        event = rec.of("tool_result")[0]
        assert isinstance(event.args[2], RuntimeError)

    def test_input_failing_schema_is_an_error_result_and_tool_not_run(self):
        ran = []
        t = Tool("strict", "needs an int", {"type": "object", "properties": {"n": {"type": "integer"}},
                                            "required": ["n"]}, lambda inp: ran.append(inp) or "ran")
        c = Convo(ScriptedService([tool_turn(("t1", "strict", {"n": "seven"}))]), tools=[t])
        results, _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert results[0].is_error and "invalid input" in results[0].text() and "'seven'" in results[0].text()
        assert ran == []

    def test_do_not_respond_gives_no_result(self):
        @tool
        def hand_off() -> str:
            """Hand the turn to a human."""
            raise DoNotRespond()

        c = Convo(ScriptedService([tool_turn(("t1", "hand_off", {}), ("t2", "add", {"a": 2, "b": 2}))]),
                  tools=[hand_off, add])
        results, _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert [r.tool_use_id for r in results] == ["t2"]

    def test_call_cut_off_by_max_tokens_does_not_run(self):
        ran = []
        t = Tool("record", run=lambda inp: ran.append(inp) or "ran")
        cut = reply(tool_uses=[ToolUse("t1", "record", {"a": 1}), ToolUse("t2", "record", {})],
                    stop_reason="max_tokens")
        rec = RecordingListener()
        c = Convo(ScriptedService([cut]), tools=[t], listener=rec)
        results, _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert sorted(e.args[0].id for e in rec.of("tool_result")) == ["t1", "t2"]
        assert ran == [{"a": 1}]
        assert [r.tool_use_id for r in results] == ["t1", "t2"]
        assert not results[0].is_error
        assert results[1].is_error and "cut off by the max_tokens limit" in results[1].text()

    def test_ends_turn(self):
        done = Tool("done", "finish", run=lambda inp: "bye", ends_turn=True)
        c = Convo(ScriptedService([tool_turn(("t1", "done", {}))]), tools=[done])
        _, ends_turn = c.tool_result_contents(c.send_user_text_message("x"))
        assert ends_turn

    def test_tool_out_display_and_error(self):
        t = Tool("fancy", run=lambda inp: ToolOut("for the model", display={"html": "<b>hi</b>"}, error=True))
        c = Convo(ScriptedService([tool_turn(("t1", "fancy", {}))]), tools=[t])
        (r,), _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert r.text() == "for the model" and r.display == {"html": "<b>hi</b>"} and r.is_error

    def test_unserialisable_result_is_an_error_result(self):
        t = Tool("weird", run=lambda inp: object())
        c = Convo(ScriptedService([tool_turn(("t1", "weird", {}))]), tools=[t])
        (r,), _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert r.is_error and "not JSON-serialisable" in r.text()

    def test_json_values_are_sent_as_json_text(self):
        t = Tool("data", run=lambda inp: {"a": [1, 2]})
        c = Convo(ScriptedService([tool_turn(("t1", "data", {}))]), tools=[t])
        (r,), _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert json.loads(r.text()) == {"a": [1, 2]} and not r.is_error

    def test_oversized_result_is_an_error_result(self):
        t = Tool("huge", run=lambda inp: "x" * 1000)
        c = Convo(ScriptedService([tool_turn(("t1", "huge", {}))]), tools=[t], max_tool_result_chars=100)
        (r,), _ = c.tool_result_contents(c.send_user_text_message("x"))
        assert r.is_error and "1000 characters" in r.text()

    def test_tool_call_info_inside_a_tool(self):
        seen = {}

        def probe(inp):
            info = tool_call_info()
            seen[inp["k"]] = (info.tool_use_id, info.convo, info.cancelled.is_set())
            return "ok"

        t = Tool("probe", input_schema={"type": "object", "properties": {"k": {"type": "string"}}}, run=probe)
        c = Convo(ScriptedService([tool_turn(("id-a", "probe", {"k": "a"}), ("id-b", "probe", {"k": "b"}))]),
                  tools=[t])
        c.tool_result_contents(c.send_user_text_message("x"))
        assert seen == {"a": ("id-a", c, False), "b": ("id-b", c, False)}
        assert tool_call_info() is None

    def test_tool_uses_are_counted_by_name_up_the_tree(self):
        parent = Convo(ScriptedService())
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 1}), ("t2", "add", {"a": 1, "b": 1}),
                                         ("t3", "nope", {}))])
        child = parent.sub_convo(tools=[add])
        child.service = svc
        child.tool_result_contents(child.send_user_text_message("x"))
        assert parent.cumulative_usage().tool_uses == {"add": 2, "nope": 1}


class TestCancel:
    def _slow_turn(self, seconds: float = 5.0):
        return tool_turn(("slow", "nap", {"seconds": seconds}), ("fast", "add", {"a": 1, "b": 1}))

    def test_cancel_tool_use_returns_promptly_and_drops_late_result(self):
        rec = RecordingListener()
        c = Convo(ScriptedService([self._slow_turn(1.0)]), tools=[nap, add], listener=rec)
        response = c.send_user_text_message("go")
        threading.Timer(0.1, c.cancel_tool_use, args=("slow", "took too long")).start()
        start = time.monotonic()
        results, _ = c.tool_result_contents(response)
        assert time.monotonic() - start < 0.8
        assert results[0].is_error and "took too long" in results[0].text()
        assert results[1].text() == "2" and not results[1].is_error
        time.sleep(1.1)  # let the abandoned tool thread finish: its result must not appear anywhere
        slow_results = [e for e in rec.of("tool_result") if e.args[0].id == "slow"]
        assert len(slow_results) == 1 and slow_results[0].args[1].is_error

    def test_cooperative_tool_sees_cancelled_event(self):
        observed = threading.Event()

        def patient(inp):
            info = tool_call_info()
            if info.cancelled.wait(5):
                observed.set()
            return "finished anyway"

        t = Tool("patient", run=patient)
        c = Convo(ScriptedService([tool_turn(("p1", "patient", {}))]), tools=[t])
        response = c.send_user_text_message("go")
        threading.Timer(0.05, c.cancel).start()
        (r,), _ = c.tool_result_contents(response)
        assert r.is_error and "cancelled" in r.text()
        assert observed.wait(2)

    def test_cancel_unknown_id_is_a_clear_error(self):
        c = Convo(ScriptedService())
        with pytest.raises(UnknownToolUseError, match="no running tool call has id 'nope'"):
            c.cancel_tool_use("nope")

    def test_tool_result_cancel_contents(self):
        c = Convo(ScriptedService([self._slow_turn()]), tools=[nap, add])
        response = c.send_user_text_message("go")
        results = c.tool_result_cancel_contents(response)
        assert [r.tool_use_id for r in results] == ["slow", "fast"] and all(r.is_error for r in results)


class TestSubConvos:
    def test_ids_parents_and_depth(self):
        root = Convo(ScriptedService())
        child = root.sub_convo()
        grandchild = child.sub_convo()
        assert (root.depth(), child.depth(), grandchild.depth()) == (0, 1, 2)
        assert grandchild.parent is child and child.parent is root
        assert len({root.id, child.id, grandchild.id}) == 3
        assert child.service is root.service

    def test_parallel_sub_convos_roll_up_exactly(self, prices):
        """8 threads each drive a sub-convo for 25 turns; the root's totals are exact sums."""
        u = Usage(input_tokens=123, output_tokens=45, cache_read_input_tokens=7, cache_creation_input_tokens=3)

        def answer(req: convo.Request):
            if req.messages[-1].tool_results():
                return reply("ok", model=PRICED, usage=u)
            return tool_turn(("t", "add", {"a": 1, "b": 2}), u=u)

        root = Convo(FunctionService(answer), prices=prices)
        middle = root.sub_convo()
        subs = [middle.sub_convo(tools=[add]) for _ in range(8)]
        errors = []

        def drive(c: Convo):
            try:
                for i in range(25):
                    if i % 2 == 0:
                        c.tool_result_contents(c.send_user_text_message(f"turn {i}"))
                    else:
                        c.send_user_text_message(f"turn {i}")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=drive, args=(c,)) for c in subs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        n = 8 * 25
        per = prices.cost(PRICED, u)
        for total in (root.cumulative_usage(), middle.cumulative_usage()):
            assert total.responses == n
            assert total.input_tokens == 123 * n and total.output_tokens == 45 * n
            assert total.cache_read_input_tokens == 7 * n and total.cache_creation_input_tokens == 3 * n
            assert total.total_cost_usd == per * n
            assert total.tool_uses == {"add": 8 * 13}
            assert total.unpriced_responses == 0
        assert subs[0].cumulative_usage().responses == 25
        assert sum((s.cumulative_usage().total_cost_usd for s in subs), Decimal(0)) == root.cumulative_usage().total_cost_usd

    def test_sub_convo_with_history_can_run_tools(self):
        svc = ScriptedService([reply("first"), tool_turn(("t1", "add", {"a": 2, "b": 3})), reply("5")])
        root = Convo(svc, tools=[add], system_prompt="sys")
        root.send_user_text_message("hello")
        sub = root.sub_convo_with_history()
        assert sub.messages == root.messages and sub.system_prompt == "sys"
        assert sub.run("add 2 and 3").text() == "5"
        assert svc.requests[2].messages[-1].tool_results()[0].text() == "5"
        assert len(root.messages) == 2  # the parent's history is its own

    def test_listener_sees_every_depth(self):
        rec = RecordingListener()
        root = Convo(ScriptedService([reply("a"), reply("b")]), listener=rec)
        child = root.sub_convo()
        root.send_user_text_message("x")
        child.send_user_text_message("y")
        depths = [(e.name, e.depth) for e in rec.events]
        assert depths == [("request", 0), ("response", 0), ("request", 1), ("response", 1)]
        assert rec.events[2].convo_id == child.id


class TestBudget:
    def test_parent_budget_stops_a_sub_convos_next_send(self, prices):
        # each reply costs 1,000,000 input tokens at $1/M = $1
        costly = reply("spent", model=PRICED, usage=Usage(input_tokens=1_000_000))
        svc = ScriptedService(default=costly)
        parent = Convo(svc, budget=Budget(2), prices=prices)
        child = parent.sub_convo()
        child.send_user_text_message("one")
        child.send_user_text_message("two")
        with pytest.raises(BudgetExceeded) as info:
            child.send_user_text_message("three")
        assert info.value.convo_id == parent.id and info.value.spent == Decimal(2)
        assert len(svc.requests) == 2
        assert child.over_budget() is not None and parent.over_budget() is not None

    def test_own_budget_and_reset(self, prices):
        costly = reply("spent", model=PRICED, usage=Usage(input_tokens=500_000))
        c = Convo(ScriptedService(default=costly), budget=Budget(0.5), prices=prices)
        c.send_user_text_message("one")
        with pytest.raises(BudgetExceeded):
            c.send_user_text_message("two")
        c.reset_budget(Budget(1))
        c.send_user_text_message("two")
        assert c.over_budget() is None
        assert c.cumulative_usage().total_cost_usd == Decimal("1.0")

    def test_unlimited_by_default(self, prices):
        c = Convo(ScriptedService(default=reply("x", model=PRICED, usage=Usage(input_tokens=10**9))), prices=prices)
        for _ in range(3):
            c.send_user_text_message("go")
        assert c.over_budget() is None

    def test_unpriced_model_is_counted_and_logged_once(self):
        class Unpriced:
            """A service with no price of its own (ScriptedService would price its replies at $0)."""

            def do(self, request):
                return reply("x", model="mystery-model-9000", usage=usage())

            def stream(self, request):
                raise NotImplementedError

        c = Convo(Unpriced())
        with structlog.testing.capture_logs() as logs:
            c.send_user_text_message("a")
            c.send_user_text_message("b")
        assert c.cumulative_usage().unpriced_responses == 2
        assert c.cumulative_usage().total_cost_usd == 0
        assert [e["model"] for e in logs if e["event"] == "unpriced_model"] == ["mystery-model-9000"]

    def test_rejects_negative_budget(self):
        with pytest.raises(ValueError):
            Budget(-1)


class TestListeners:
    def test_raising_listener_is_harmless(self):
        class Angry:
            def __getattr__(self, name):
                def boom(*args):
                    raise RuntimeError(f"listener exploded in {name}")
                return boom

        rec = RecordingListener()
        listener = convo.combine_listeners(Angry(), rec)
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 1})), reply("2")])
        c = Convo(svc, tools=[add], listener=listener)
        with structlog.testing.capture_logs() as logs:
            assert c.run("1+1").text() == "2"
        assert rec.names() == ["request", "response", "tool_call", "tool_result", "request", "response"]
        assert sum(1 for e in logs if e["event"] == "listener_failed") == 6

    def test_error_event_on_failed_request(self):
        rec = RecordingListener()
        c = Convo(ScriptedService([convo.RateLimitError("slow down", status_code=429)]), listener=rec)
        with pytest.raises(convo.RateLimitError):
            c.send_user_text_message("x")
        assert rec.names() == ["request", "error"]

    def test_noop_listener_subclass(self):
        class OnlyResponses(convo.NoopListener):
            def __init__(self):
                self.seen = []

            def on_response(self, c, response):
                self.seen.append(response.text())

        listener = OnlyResponses()
        Convo(ScriptedService([reply("hey")]), listener=listener).send_user_text_message("x")
        assert listener.seen == ["hey"]


class TestRun:
    def test_multi_turn_tool_loop(self):
        svc = ScriptedService([
            tool_turn(("t1", "add", {"a": 1, "b": 2}), ("t2", "add", {"a": 3, "b": 4})),
            tool_turn(("t3", "add", {"a": 3, "b": 7})),
            reply("the answer is 10", model=PRICED),
        ])
        c = Convo(svc, tools=[add])
        final = c.run("add things")
        assert final.text() == "the answer is 10" and final.stop_reason == StopReason.END_TURN
        assert [r.text() for r in svc.requests[1].messages[-1].tool_results()] == ["3", "7"]
        assert [r.text() for r in svc.requests[2].messages[-1].tool_results()] == ["10"]
        assert len(c.messages) == 6

    def test_streaming_run_passes_events(self):
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 2})), reply("3")])
        events = []
        final = Convo(svc, tools=[add]).run("1+2", on_event=events.append)
        assert final.text() == "3"
        assert [type(e).__name__ for e in events].count("StreamDone") == 2

    def test_max_turns(self):
        svc = ScriptedService(default=tool_turn(("t", "add", {"a": 1, "b": 1})))
        c = Convo(svc, tools=[add])
        with pytest.raises(MaxTurnsExceeded) as info:
            c.run("loop forever", max_turns=3)
        assert info.value.max_turns == 3 and len(svc.requests) == 3

    def test_ends_turn_keeps_results_for_the_next_message(self):
        done = Tool("done", "finish", run=lambda inp: "all done", ends_turn=True)
        svc = ScriptedService([tool_turn(("t1", "done", {})), reply("ok")])
        c = Convo(svc, tools=[done])
        response = c.run("finish up")
        assert response.tool_uses()[0].name == "done" and len(svc.requests) == 1
        c.send_user_text_message("thanks")
        sent = svc.requests[1].messages[-1]
        assert sent.tool_results()[0].text() == "all done" and not sent.tool_results()[0].is_error

    def test_all_do_not_respond_stops_the_loop(self):
        @tool
        def ask_human(question: str) -> str:
            """Ask a person."""
            raise DoNotRespond()

        svc = ScriptedService([tool_turn(("t1", "ask_human", {"question": "?"}))])
        response = Convo(svc, tools=[ask_human]).run("hm")
        assert response.tool_uses() and len(svc.requests) == 1


class TestDebugJson:
    def test_round_trips(self, prices):
        svc = ScriptedService([tool_turn(("t1", "add", {"a": 1, "b": 2})),
                               reply("3", model=PRICED, usage=Usage(input_tokens=5, cost_usd=Decimal("0.1")))])
        c = Convo(svc, tools=[add], system_prompt="sys", extra_data={"user": "ana"}, budget=Budget(5),
                  prices=prices)
        c.run("1+2")
        text = c.debug_json()
        data = json.loads(text)
        assert data["messages"][1]["content"][0]["type"] == "tool_use"
        assert data["messages"][3]["content"][0]["text"] == "3"
        assert data["cumulative_usage"]["tool_uses"] == {"add": 1}
        back = Convo.from_debug_json(text, svc, tools=[add], prices=prices)
        assert back.messages == c.messages
        assert back.cumulative_usage() == c.cumulative_usage()
        assert back.debug_json() == text

    def test_stop_reasons_are_strings(self):
        c = Convo(ScriptedService([reply("x")]))
        c.send_user_text_message("y")
        assert '"role": "assistant"' in c.debug_json()
