"""The engine keeps its promises: atomic runs, cancellation of a whole tree, hard budgets, typed misuse.

Each test drives the public API the way the issue that asked for it
reproduced the problem, with ScriptedService or a small fake service.
"""

from __future__ import annotations

import gc
import pickle
import threading
import time
import weakref
from decimal import Decimal

import pytest

import convo
from convo import (
    APIConnectionError,
    Budget,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConversationBusy,
    ConversationClosed,
    Convo,
    ConvoError,
    DoNotRespond,
    MaxTurnsExceeded,
    Message,
    Price,
    PriceTable,
    Role,
    StopReason,
    Text,
    TextDelta,
    ToolChoice,
    ToolResult,
    ToolUse,
    UnpricedModel,
    Usage,
    UsageUpdate,
    tool,
    tool_call_info,
)
from convo.testing import RecordingListener, ScriptedService, reply

PRICED = "test-model"
PRICES = PriceTable({PRICED: Price(1, 2)})  # $1 per million input tokens, $2 per million output


def calls(*uses: tuple, **kw) -> convo.Response:
    return reply(tool_uses=[ToolUse(i, n, inp) for i, n, inp in uses], **kw)


@tool
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@tool(ends_turn=True)
def hand_over(note: str) -> str:
    """Hand the conversation to a person."""
    return f"handed over: {note}"


@tool
def quiet() -> str:
    """Do something and say nothing."""
    raise DoNotRespond()


def results_sent(service: ScriptedService, index: int) -> list[tuple[str, str, bool]]:
    return [(r.tool_use_id, r.text(), r.is_error) for r in service.requests[index].messages[-1].tool_results()]


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# --- runs and turns ------------------------------------------------------------------------


class TestRunIsOneTurn:
    def test_a_send_from_another_thread_waits_until_the_run_ends(self):
        """A send cannot slip between a tool_use reply and its results."""
        started, release = threading.Event(), threading.Event()

        @tool
        def slow() -> str:
            """Wait for the test."""
            started.set()
            release.wait(5)
            return "slow done"

        service = ScriptedService([calls(("t1", "slow", {})), reply("run done"), reply("other done")])
        c = Convo(service, tools=[slow])
        runner = threading.Thread(target=c.run, args=("go",))
        runner.start()
        assert started.wait(5)
        other = threading.Thread(target=c.send_user_text_message, args=("me too",))
        other.start()
        time.sleep(0.2)
        assert len(service.requests) == 1, "the other send went through in the middle of the run"
        release.set()
        runner.join(5)
        other.join(5)
        roles = [m.role for m in c.messages]
        assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
        assert c.messages[2].tool_results()[0].text() == "slow done"
        assert c.messages[4].text() == "me too"

    def test_a_tool_sending_on_its_own_convo_gets_a_clear_error(self):
        holder = {}

        @tool
        def meddle() -> str:
            """Send on the convo that called me."""
            return holder["c"].send_user_text_message("sneaky").text()

        service = ScriptedService([calls(("t1", "meddle", {})), reply("ok")])
        c = holder["c"] = Convo(service, tools=[meddle])
        assert c.run("go", max_turns=3).text() == "ok"
        [(tid, text, is_error)] = results_sent(service, 1)
        assert is_error and "ConversationBusy" in text and "sub_convo" in text
        assert len(service.requests) == 2

    def test_a_sub_convo_inside_a_tool_works(self):
        @tool
        def delegate() -> str:
            """Ask a sub-agent."""
            return tool_call_info().convo.sub_convo().send_user_text_message("ask").text()

        script = ScriptedService([calls(("t1", "delegate", {})), reply("sub answer"), reply("done")])
        c = Convo(script, tools=[delegate])
        assert c.run("go").text() == "done"
        assert results_sent(script, 2) == [("t1", "sub answer", False)]


class TestHeldResults:
    def test_ends_turn_results_survive_a_failed_send(self):
        service = ScriptedService([calls(("t1", "hand_over", {"note": "x"})), APIConnectionError("down"),
                                   reply("thanks")])
        c = Convo(service, tools=[hand_over])
        c.run("go")
        with pytest.raises(APIConnectionError):
            c.send_user_text_message("next")
        c.send_user_text_message("next")
        assert results_sent(service, 2) == [("t1", "handed over: x", False)]

    def test_max_turns_results_survive_a_cancelled_send(self):
        def cancel_me(request):
            holder["c"].cancel("stop")
            raise Cancelled("stop")

        holder = {}
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 2})), cancel_me, reply("3 it is")])
        c = holder["c"] = Convo(service, tools=[add])
        with pytest.raises(MaxTurnsExceeded):
            c.run("go", max_turns=1)
        with pytest.raises(Cancelled):
            c.send_user_text_message("and?")
        c.send_user_text_message("and?")
        assert results_sent(service, 2) == [("t1", "3", False)]

    def test_held_results_survive_an_abandoned_stream(self):
        service = ScriptedService([calls(("t1", "hand_over", {"note": "y"})), reply("a long answer"),
                                   reply("second try")])
        c = Convo(service, tools=[hand_over])
        c.run("go")
        with c.stream("next") as s:
            next(iter(s))  # read part of it, then leave
        assert len(c.messages) == 2
        c.send_user_text_message("next")
        assert results_sent(service, 2) == [("t1", "handed over: y", False)]


class TestToolsNeverHang:
    @pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), type("Custom", (BaseException,), {})()])
    def test_base_exceptions_become_error_results(self, exc):
        @tool
        def die() -> str:
            """Raise something drastic."""
            raise exc

        service = ScriptedService([calls(("t1", "die", {})), reply("noted")])
        c = Convo(service, tools=[die])
        done = []
        t = threading.Thread(target=lambda: done.append(c.run("go")))
        t.start()
        t.join(5)
        assert done and done[0].text() == "noted"
        [(_, text, is_error)] = results_sent(service, 1)
        assert is_error and type(exc).__name__ in text

    def test_keyboard_interrupt_is_raised_in_the_caller_after_other_tools_finish(self):
        @tool
        def interrupt() -> str:
            """Simulate Ctrl-C inside a tool."""
            raise KeyboardInterrupt

        service = ScriptedService([calls(("t1", "interrupt", {}), ("t2", "add", {"a": 2, "b": 2})), reply("ok")])
        c = Convo(service, tools=[interrupt, add])
        with pytest.raises(KeyboardInterrupt):
            c.run("go")
        c.send_user_text_message("carry on")
        sent = results_sent(service, 1)
        assert [s[0] for s in sent] == ["t1", "t2"]
        assert sent[0][2] and "KeyboardInterrupt" in sent[0][1]
        assert sent[1] == ("t2", "4", False)


class TestEveryResultIsTrueAndAnnounced:
    def test_missing_results_are_filled_in_order_with_true_text(self):
        """The model asked t1, t2, t3; the caller gives only t3; t1 ran (no result), t2 never ran."""
        rec = RecordingListener()
        service = ScriptedService([calls(("t1", "quiet", {}), ("t2", "add", {"a": 1, "b": 1}),
                                         ("t3", "add", {"a": 2, "b": 2})), reply("ok")])
        c = Convo(service, tools=[quiet, add], listener=rec)
        first = c.send_user_text_message("go")
        c.tool_result_contents(convo.Response(first.id, first.model, content=first.content[:1],
                                              stop_reason=StopReason.TOOL_USE))  # runs only t1
        c.send_user_text_message("here is t3", ToolResult("t3", "four"))
        sent = service.requests[1].messages[-1]
        assert [b.tool_use_id for b in sent.tool_results()] == ["t1", "t2", "t3"]
        assert isinstance(sent.content[-1], Text) and sent.content[-1].text == "here is t3"
        texts = {r.tool_use_id: r.text() for r in sent.tool_results()}
        assert texts["t1"] == "the tool ran and returned no result"
        assert texts["t2"].startswith("not executed") and "'add'" in texts["t2"]
        assert texts["t3"] == "four"
        announced = [e.args[1].tool_use_id for e in rec.of("tool_result")]
        assert sorted(announced) == ["t1", "t2", "t3"], "every result the model receives reaches the listener"
        names = rec.names()
        assert names[-4:] == ["tool_result", "tool_result", "request", "response"], \
            "the filled-in and given results are announced before the request that carries them"

    def test_results_reach_the_listener_once_even_when_a_send_is_retried(self):
        rec = RecordingListener()
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 1})), APIConnectionError("down"), reply("ok")])
        c = Convo(service, tools=[add], listener=rec)
        c.send_user_text_message("go")
        with pytest.raises(APIConnectionError):
            c.send_user_text_message("continue")
        c.send_user_text_message("continue")
        assert [e.args[1].text() for e in rec.of("tool_result")] == ["not executed: the conversation moved on "
                                                                      "before 'add' ran"]

    def test_results_for_unknown_calls_are_refused_before_sending(self):
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 1}))])
        c = Convo(service, tools=[add])
        c.send_user_text_message("go")
        with pytest.raises(ConfigurationError, match="did not call"):
            c.send_message(Message.user("", ToolResult("nope", "x")))
        assert len(service.requests) == 1


class TestRunLoop:
    def test_pause_turn_is_continued_and_merged(self):
        paused = reply("searching...", stop_reason="pause_turn")
        service = ScriptedService([paused, reply("found it")])
        c = Convo(service)
        final = c.run("search the web")
        assert final.text() == "found it"
        assert service.requests[1].messages[-1].role == Role.ASSISTANT  # continued, not a new user turn
        assert [m.role for m in c.messages] == ["user", "assistant"]
        assert c.messages[1].text() == "searching...found it"

    def test_max_turns_none_means_no_limit(self):
        script = [calls((f"t{i}", "add", {"a": i, "b": 1})) for i in range(40)] + [reply("done")]
        c = Convo(ScriptedService(script), tools=[add])
        assert c.run("count", max_turns=None).text() == "done"

    @pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
    def test_bad_max_turns_is_a_configuration_error(self, bad):
        with pytest.raises(ConfigurationError):
            Convo(ScriptedService()).run("x", max_turns=bad)

    def test_continue_turn_after_max_turns(self):
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 1})), calls(("t2", "add", {"a": 2, "b": 2})),
                                   reply("done")])
        c = Convo(service, tools=[add])
        with pytest.raises(MaxTurnsExceeded):
            c.run("go", max_turns=1)
        assert c.continue_turn().text() == "done"
        assert results_sent(service, 1) == [("t1", "2", False)]
        assert results_sent(service, 2) == [("t2", "4", False)]
        with pytest.raises(ConfigurationError, match="nothing to continue"):
            c.continue_turn()


class TestStreamingContextManager:
    def test_a_stream_left_part_read_does_not_block_other_threads_after_the_block(self):
        service = ScriptedService([reply("one two three"), reply("next")])
        c = Convo(service)
        with c.stream("hi") as s:
            assert isinstance(next(iter(s)), TextDelta)
        t = threading.Thread(target=c.send_user_text_message, args=("again",))
        t.start()
        t.join(5)
        assert not t.is_alive()
        assert [m.text() for m in c.messages] == ["again", "next"]

    def test_a_dropped_stream_frees_the_turn(self):
        service = ScriptedService([reply("one"), reply("two")])
        c = Convo(service)
        s = c.stream("hi")
        next(iter(s))
        del s
        gc.collect()
        assert c.send_user_text_message("again").text() == "two"

    def test_same_thread_send_while_a_stream_is_open_is_refused(self):
        c = Convo(ScriptedService([reply("one"), reply("two")]))
        with c.stream("hi"):
            with pytest.raises(ConversationBusy):
                c.send_user_text_message("nested")

    def test_checks_run_when_the_stream_is_created(self):
        c = Convo(ScriptedService([reply("x", model=PRICED, usage=Usage(input_tokens=10**6))]),
                  budget=Budget(1), prices=PRICES)
        c.send_user_text_message("spend it all")
        with pytest.raises(BudgetExceeded):
            c.stream("more")
        c.close()
        with pytest.raises(ConversationClosed):
            c.stream("more")

    def test_until_done_and_text_stream(self):
        c = Convo(ScriptedService([reply("hello"), reply("world")]))
        with c.stream("a") as s:
            assert s.until_done().text() == "hello"
        with c.stream("b") as s:
            assert "".join(s.text_stream) == "world"
        assert s.response.text() == "world"

    def test_a_stream_that_ends_early_counts_the_usage_the_provider_reported(self):
        class Failing:
            model = PRICED

            def do(self, request):
                raise NotImplementedError

            def stream(self, request):
                yield UsageUpdate(Usage(input_tokens=1000))
                yield TextDelta(0, "partial")
                yield UsageUpdate(Usage(input_tokens=1000, output_tokens=50))
                raise APIConnectionError("dropped")

        c = Convo(Failing(), prices=PRICES)
        with pytest.raises(APIConnectionError):
            for _ in c.stream("hi"):
                pass
        u = c.cumulative_usage()
        assert (u.input_tokens, u.output_tokens, u.responses) == (1000, 50, 0)
        assert u.total_cost_usd == Decimal("0.0011")
        assert c.messages == []

        abandoned = Convo(Failing(), prices=PRICES)
        with abandoned.stream("hi") as s:
            next(iter(s))
        assert abandoned.cumulative_usage().input_tokens == 1000


# --- cancellation ----------------------------------------------------------------------------------


class TestCancellation:
    def test_cancel_stops_run_and_sends_nothing_more(self):
        started = threading.Event()

        @tool
        def wait_forever() -> str:
            """Block until cancelled."""
            started.set()
            tool_call_info().cancelled.wait(10)
            return "never seen"

        service = ScriptedService([calls(("t1", "wait_forever", {})), reply("should not be asked")])
        c = Convo(service, tools=[wait_forever])
        outcome = []

        def go():
            try:
                c.run("go", max_turns=10)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=go)
        t.start()
        assert started.wait(5)
        c.cancel("user pressed stop")
        t.join(5)
        assert isinstance(outcome[0], Cancelled)
        assert len(service.requests) == 1
        # the convo stays usable, and the model is told what happened to its call
        service.add(reply("ok"))
        c.send_user_text_message("hello again")
        [(tid, text, is_error)] = results_sent(service, 1)
        assert is_error and "cancelled" in text

    def test_cancel_reaches_sub_agents_a_tool_created(self):
        """Four sub-agents started by tools stop when the parent is cancelled, and are billed no more."""
        in_flight = threading.Semaphore(0)

        def blocking(request):
            in_flight.release()
            convo._cancel.current_token().wait(10)
            raise Cancelled("stopped")

        sub_service = ScriptedService(default=blocking, model=PRICED)

        @tool
        def research(topic: str) -> str:
            """Ask a sub-agent."""
            sub = tool_call_info().convo.sub_convo(service=sub_service)
            return sub.send_user_text_message(topic).text()

        service = ScriptedService([calls(*[(f"t{i}", "research", {"topic": str(i)}) for i in range(4)]),
                                   reply("unreachable")])
        c = Convo(service, tools=[research], prices=PRICES)
        outcome = []
        t = threading.Thread(target=lambda: outcome.append(pytest.raises(Cancelled, c.run, "go")))
        t.start()
        for _ in range(4):
            assert in_flight.acquire(timeout=5)
        started = time.monotonic()
        c.cancel()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - started < 2
        assert len(sub_service.requests) == 4
        assert len(service.requests) == 1

    def test_sub_convos_of_a_cancelled_call_refuse_to_send(self):
        made = []
        release = threading.Event()

        @tool
        def spawn() -> str:
            """Make a sub-agent, then wait."""
            made.append(tool_call_info().convo.sub_convo())
            release.wait(5)
            return "spawned"

        c = Convo(ScriptedService(default=reply("sub reply")), tools=[spawn])
        t = threading.Thread(target=c.tool_result_contents, args=(calls(("t1", "spawn", {})),))
        t.start()
        wait_until(lambda: made)
        c.cancel_tool_use("t1", "no longer needed")
        with pytest.raises(Cancelled):
            made[0].send_user_text_message("hello")
        release.set()
        t.join(5)

    def test_plain_sub_convos_are_cancelled_and_stay_usable(self):
        entered = threading.Event()

        def blocking(request):
            entered.set()
            convo._cancel.current_token().wait(10)
            raise Cancelled("stopped")

        sub_service = ScriptedService([blocking, reply("fine")])
        parent = Convo(ScriptedService())
        child = parent.sub_convo(service=sub_service)
        errors = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(Cancelled, child.send, "x")))
        t.start()
        assert entered.wait(5)
        parent.cancel()
        t.join(5)
        assert not t.is_alive()
        assert child.send("again").text() == "fine"


# --- budgets ---------------------------------------------------------------------------------


class TestHardBudgets:
    def test_ten_parallel_children_stay_under_the_parents_budget(self):
        """Each request of 400 kB is billed 300k input tokens ($0.30); ten children at once under $1.00."""
        gate = threading.Barrier(10, timeout=5)

        def expensive(request):
            time.sleep(0.05)  # all ten are in flight together
            return reply("spent", model=PRICED, usage=Usage(input_tokens=300_000))

        service = ScriptedService(default=expensive, model=PRICED, max_tokens=1000)
        parent = Convo(service, budget=Budget("1.00"), prices=PRICES)
        children = [parent.sub_convo() for _ in range(10)]
        refused = []

        def spend(child):
            gate.wait()
            for _ in range(5):
                try:
                    child.send("x" * 400_000)
                except BudgetExceeded:
                    refused.append(child.id)
                    return

        threads = [threading.Thread(target=spend, args=(child,)) for child in children]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        spent = parent.cumulative_usage().total_cost_usd
        assert spent <= Decimal("1.00")
        assert len(refused) == 10
        assert parent.cumulative_usage().responses >= 2

    def test_the_refusal_says_why(self):
        c = Convo(ScriptedService(model=PRICED, max_tokens=100_000), budget=Budget("0.10"), prices=PRICES)
        with pytest.raises(BudgetExceeded) as info:
            c.send("hi")
        assert info.value.requested > Decimal("0.10") and "max_tokens" in str(info.value)

    def test_an_unpriced_model_under_a_budget_is_refused(self):
        class Unknown:
            model = "brand-new-model"

            def do(self, request):
                raise AssertionError("must not be sent")

            def stream(self, request):
                raise AssertionError("must not be sent")

        c = Convo(Unknown(), budget=Budget(5))
        with pytest.raises(UnpricedModel, match="brand-new-model"):
            c.send("hi")
        priced = PriceTable({"brand-new-model": Price(1, 1)})
        with pytest.raises(AssertionError, match="must not be sent"):
            Convo(Unknown(), budget=Budget(5), prices=priced).send("hi")

    def test_budget_none_is_unlimited_and_zero_sends_nothing(self):
        assert Budget().unlimited and Budget(None).unlimited
        free = Convo(ScriptedService([reply("x", model=PRICED, usage=Usage(input_tokens=10**9))]), prices=PRICES)
        free.send("hi")
        zero = Convo(ScriptedService([reply("x")]), budget=Budget(0))
        with pytest.raises(BudgetExceeded):
            zero.send("hi")
        assert zero.over_budget() is not None

    def test_requests_carry_a_reply_cap_under_a_budget(self):
        service = ScriptedService([reply("x")], model=PRICED)
        service.max_tokens = None
        Convo(service, budget=Budget(10), prices=PRICES).send("hi")
        assert service.requests[0].max_tokens == convo.budget.DEFAULT_RESERVED_OUTPUT_TOKENS

    def test_estimate_counts_reported_history_exactly(self):
        history_reply = reply("x" * 10, model=PRICED, usage=Usage(input_tokens=5000, output_tokens=100))
        service = ScriptedService([history_reply, reply("y")], model=PRICED)
        c = Convo(service, budget=Budget(100), prices=PRICES)
        c.send("a" * 20_000)
        request = c._build_request(c.messages + [Message.user("b")], None)
        estimate = convo.budget.estimate_input_tokens(request, c._counted_tokens())
        assert 5100 <= estimate < 5400, "the 20,000-byte first message is counted at the provider's 5,000 tokens"


class TestPrices:
    @pytest.mark.parametrize("model", ["anthropic/claude-opus-4.5", "claude-opus-4-9", "claude-sonnet-5",
                                       "gpt-4o-ultra", "o3x", "claude-opus-4-5-fast"])
    def test_unknown_names_are_unpriced(self, model):
        assert convo.PRICES.lookup(model) is None

    @pytest.mark.parametrize("model, base", [
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ])
    def test_exact_names_and_dated_snapshots(self, model, base):
        assert convo.PRICES.lookup(model) == convo.PRICES.lookup(base) is not None

    def test_a_snapshot_with_its_own_price_keeps_it(self):
        assert convo.PRICES.lookup("gpt-4o-2024-05-13") != convo.PRICES.lookup("gpt-4o")

    def test_scripted_services_cost_nothing_and_warn_about_nothing(self, caplog):
        import structlog

        c = Convo(ScriptedService([reply("x", usage=Usage(input_tokens=100))]))
        with structlog.testing.capture_logs() as logs:
            c.send("hi")
        assert c.cumulative_usage().total_cost_usd == 0
        assert c.cumulative_usage().unpriced_responses == 0
        assert not [e for e in logs if e["event"] == "unpriced_model"]


# --- API a Python user expects ----------------------------------------------------------------------


class TestApi:
    def test_sub_convo_with_another_service(self):
        cheap = ScriptedService([reply("cheap answer")], model="cheap")
        lead = Convo(ScriptedService())
        worker = lead.sub_convo(service=cheap, system_prompt="be brief")
        assert worker.send("q").text() == "cheap answer" and worker.service is cheap and worker.parent is lead

    def test_model_picks_the_service(self, monkeypatch):
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        c = Convo(model="claude-haiku-4-5")
        assert type(c.service).__name__ == "AnthropicService" and c.model == "claude-haiku-4-5"
        with pytest.raises(ConfigurationError):
            Convo(ScriptedService(), model="claude-haiku-4-5")

    def test_tool_choice_on_the_convo_and_per_send(self):
        service = ScriptedService(default=reply("ok"))
        c = Convo(service, tools=[add], tool_choice="any")
        c.send("a")
        c.send("b", tool_choice="none")
        c.send("c", tool_choice=add)
        c.send("d", tool_choice=ToolChoice.tool("add"))
        kinds = [(r.tool_choice.type, r.tool_choice.name) for r in service.requests]
        assert kinds == [("any", None), ("none", None), ("tool", "add"), ("tool", "add")]
        with pytest.raises(ConfigurationError):
            c.send("e", tool_choice="sometimes")
        with pytest.raises(ConfigurationError, match="does not have"):
            c.send("f", tool_choice=ToolChoice.tool("missing"))

    def test_run_forces_a_tool_on_the_first_request_only(self):
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 1})), reply("2")])
        Convo(service, tools=[add]).run("go", tool_choice="any")
        assert [r.tool_choice.type for r in service.requests] == ["any", "auto"]


class TestMisuseErrors:
    @pytest.mark.parametrize("make, builtin", [
        (lambda: Convo(ScriptedService()).send_message("hi"), TypeError),
        (lambda: Convo(ScriptedService()).send_message(Message(Role.ASSISTANT, "hi")), ValueError),
        (lambda: Convo(ScriptedService()).send(""), ValueError),
        (lambda: Convo(ScriptedService(), budget=-1), ValueError),
        (lambda: Convo(ScriptedService(), budget="lots"), ValueError),
        (lambda: Convo(ScriptedService(), max_tool_workers=0), ValueError),
        (lambda: Convo(object()), ValueError),
        (lambda: Convo(ScriptedService(), tools=["add"]), TypeError),
        (lambda: Role("bot"), ValueError),
        (lambda: ToolChoice("sometimes"), ValueError),
        (lambda: Message("user", [42]), TypeError),
        (lambda: Text(3), TypeError),
        (lambda: ToolResult("", "x"), ValueError),
        (lambda: ToolResult("t1", [ToolUse("a", "b", {})]), TypeError),
        (lambda: ToolResult("t1", "x", is_error="yes"), TypeError),
        (lambda: Usage(input_tokens=-1), ValueError),
        (lambda: convo.RetryPolicy(max_attempts=0), ValueError),
        (lambda: convo.PRICES.set("m", 3), TypeError),
    ])
    def test_misuse_raises_a_convo_error_that_is_also_the_builtin(self, make, builtin):
        with pytest.raises(ConvoError) as info:
            make()
        assert isinstance(info.value, builtin)

    def test_stop_reasons_stay_open(self):
        assert StopReason("brand_new_reason") == "brand_new_reason"

    def test_every_error_survives_pickling(self):
        import inspect

        samples = {
            convo.BudgetExceeded: convo.BudgetExceeded("c1", Decimal(2), Decimal(1), reserved=Decimal("0.5")),
            convo.MaxTurnsExceeded: convo.MaxTurnsExceeded(3, None),
            convo.UnknownToolUseError: convo.UnknownToolUseError("t9"),
            convo.MissingAPIKeyError: convo.MissingAPIKeyError("X_KEY", "X"),
            convo.ConversationClosed: convo.ConversationClosed("c1"),
            convo.UnpricedModel: convo.UnpricedModel("m", "c1"),
            convo.RateLimitError: convo.RateLimitError("slow down", status_code=429, request_id="r1"),
            convo.ConcurrentUpdate: convo.ConcurrentUpdate("c1", 3, 4),
            convo.ConversationNotFound: convo.ConversationNotFound("c1"),
            convo.ConversationUnreadable: convo.ConversationUnreadable("c1", "bad JSON"),
            convo.errors.PendingAlreadyResolved: convo.errors.PendingAlreadyResolved("t1"),
            convo.errors.ToolsPending: convo.errors.ToolsPending("c1", ["t1"]),
        }
        for name in dir(convo.errors):
            cls = getattr(convo.errors, name)
            if inspect.isclass(cls) and issubclass(cls, ConvoError) and cls not in samples:
                samples[cls] = cls("message")
        for cls, err in samples.items():
            back = pickle.loads(pickle.dumps(err))
            assert type(back) is cls and str(back) == str(err) and vars(back) == vars(err), cls


class TestDebugJson:
    def test_round_trips_every_setting_and_the_budget_state(self):
        service = ScriptedService([calls(("t1", "hand_over", {"note": "n"}))], model=PRICED)
        c = Convo(service, system_prompt="sys", tools=[hand_over], tool_choice="auto", budget=Budget(3),
                  prompt_caching=False, hidden=True, extra_data={"k": [1]}, max_tool_workers=2, id="abc",
                  max_tokens=99, temperature=0.5, thinking=None, max_tool_result_chars=777, prices=PRICES)
        c.run("go")
        c.reset_budget(Budget(2))
        text = c.debug_json()
        back = Convo.from_debug_json(text, service, tools=[hand_over], prices=PRICES)
        assert back.debug_json() == text
        for name in ("system_prompt", "tool_choice", "budget", "prompt_caching", "hidden", "extra_data",
                     "max_tool_workers", "id", "max_tokens", "temperature", "max_tool_result_chars"):
            assert getattr(back, name) == getattr(c, name), name
        # held results come back too: the next send tells the model the truth
        service.add(reply("ok"))
        back.send("next")
        assert results_sent(service, 1) == [("t1", "handed over: n", False)]

    def test_restoring_without_its_tools_is_an_error(self):
        c = Convo(ScriptedService(), tools=[add])
        with pytest.raises(ConfigurationError, match="add"):
            Convo.from_debug_json(c.debug_json(), ScriptedService())

    @pytest.mark.parametrize("text", ["not json", "[]", '{"format": 99, "id": "x"}', '{"no_id": 1}'])
    def test_garbage_is_a_configuration_error(self, text):
        with pytest.raises(ConfigurationError):
            Convo.from_debug_json(text, ScriptedService())


class TestToolPool:
    def test_max_tool_workers_bounds_threads(self):
        peak = [0]
        running = [0]
        lock = threading.Lock()

        @tool
        def work(i: int) -> str:
            """Count how many run at once."""
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.001)
            with lock:
                running[0] -= 1
            return str(i)

        before = threading.active_count()
        service = ScriptedService([calls(*[(f"t{i}", "work", {"i": i}) for i in range(200)]), reply("done")])
        c = Convo(service, tools=[work], max_tool_workers=2)
        grown = []

        def watch():
            while not done.is_set():
                grown.append(threading.active_count() - before)
                time.sleep(0.001)

        done = threading.Event()
        watcher = threading.Thread(target=watch)
        watcher.start()
        c.run("go")
        done.set()
        watcher.join()
        assert peak[0] <= 2
        assert max(grown) <= 2 + 1  # two workers (plus the watcher itself)
        assert [r[1] for r in results_sent(service, 1)] == [str(i) for i in range(200)]

    def test_no_worker_keeps_a_dropped_convo_alive(self):
        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 2})), reply("3")])
        c = Convo(service, tools=[add])
        c.run("go")
        ref = weakref.ref(c)
        del c
        gc.collect()
        assert ref() is None


def test_py_typed_is_shipped():
    import importlib.resources

    assert importlib.resources.files("convo").joinpath("py.typed").is_file()


class TestStrictListeners:
    def test_a_strict_listener_that_fails_stops_the_send_before_anything_is_sent(self):
        class Audit:
            strict = True

            def on_request(self, c, request):
                raise OSError("disk full")

        service = ScriptedService([reply("never")], model=PRICED)
        c = Convo(service, listener=Audit(), budget=Budget(1), prices=PRICES)
        with pytest.raises(OSError):
            c.send("hi")
        assert service.requests == [] and c.messages == []
        assert c._reserved == 0, "the reservation was released"

    def test_a_strict_listener_stops_a_tool_before_it_runs(self):
        ran = []

        @tool
        def act() -> str:
            """Do something."""
            ran.append(1)
            return "done"

        class Audit:
            strict = True

            def on_tool_call(self, c, tool_use):
                raise OSError("disk full")

        c = Convo(ScriptedService([calls(("t1", "act", {}))]), tools=[act], listener=Audit())
        with pytest.raises(OSError):
            c.run("go")
        assert ran == []

    def test_a_strict_listener_refusing_a_result_stops_the_turn(self):
        class Audit:
            strict = True

            def on_tool_result(self, c, tool_use, result, error):
                raise OSError("disk full")

        service = ScriptedService([calls(("t1", "add", {"a": 1, "b": 2})), reply("3")])
        c = Convo(service, tools=[add], listener=Audit())
        with pytest.raises(OSError):
            c.run("go")
        assert len(service.requests) == 1, "the result that could not be audited was not sent"

    def test_a_strict_listener_inside_a_multi_listener_stays_strict(self):
        class Audit:
            strict = True

            def on_request(self, c, request):
                raise OSError("disk full")

        service = ScriptedService([reply("never")])
        c = Convo(service, listener=convo.combine_listeners(RecordingListener(), Audit()))
        with pytest.raises(OSError):
            c.send("hi")
        assert service.requests == []

    def test_every_result_is_announced_before_run_returns(self):
        seen = []

        class Slow:
            def on_tool_result(self, c, tool_use, result, error):
                time.sleep(0.05)
                seen.append(tool_use.id)

        service = ScriptedService([calls(*[(f"t{i}", "add", {"a": i, "b": 0}) for i in range(4)]), reply("done")])
        Convo(service, tools=[add], listener=Slow()).run("go")
        assert sorted(seen) == ["t0", "t1", "t2", "t3"]


class TestUsageTree:
    def test_the_tree_keeps_dropped_sub_convos(self):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        root = Convo(service, prices=PRICES)
        root.send("a")
        kept = root.sub_convo(id="kept")
        kept.send("b")
        dropped = root.sub_convo(id="dropped")
        deep = dropped.sub_convo(id="deep")
        deep.send("c")
        dropped.send("d")
        del dropped, deep
        gc.collect()
        tree = root.usage_tree()
        by_id = {n.id: n for n in tree.walk()}
        assert set(by_id) == {root.id, "kept", "dropped", "deep"}
        assert by_id["dropped"].live is False and by_id["dropped"].own.total_cost_usd == Decimal("0.001")
        assert by_id["dropped"].total.total_cost_usd == Decimal("0.002")
        assert tree.total.total_cost_usd == root.cumulative_usage().total_cost_usd == Decimal("0.004")
        assert tree.own.total_cost_usd == root.own_usage().total_cost_usd == Decimal("0.001")
        assert [c.id for c in root.sub_convos()] == ["kept"]
