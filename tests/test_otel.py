"""convo.otel: GenAI spans and metrics, checked with the OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import convo
from convo import Convo, ToolUse, Usage, tool, tool_call_info
from convo.otel import DURATION_BUCKETS, TOKEN_BUCKETS, OTelListener
from convo.testing import FunctionService, ScriptedService, reply
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer

MODEL = "claude-haiku-4-5"
SECRET = "sk-ant-FAKE-otel-leak-canary-93e1"


@pytest.fixture
def otel():
    """``(listener factory, spans(), metrics())`` on fresh SDK providers with in-memory export."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    made: list[OTelListener] = []

    def make(**kw) -> OTelListener:
        made.append(OTelListener(tracer_provider, meter_provider, **kw))
        return made[-1]

    def spans():
        for listener in made:
            assert listener.flush(10)
        return exporter.get_finished_spans()

    def metrics() -> dict:
        for listener in made:
            assert listener.flush(10)
        found = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    found[m.name] = m
        return found

    yield make, spans, metrics
    for listener in made:
        listener.close()
    tracer_provider.shutdown()
    meter_provider.shutdown()


@tool
def ask_expert(question: str) -> str:
    """Ask a sub-agent.

    Args:
        question: the question.
    """
    return tool_call_info().convo.sub_convo(system_prompt="expert").send(question).text()


@tool
def broken(x: int) -> str:
    """Always fails.

    Args:
        x: anything.
    """
    raise KeyError("no such thing")


def agent(request: convo.Request) -> convo.Response:
    usage = Usage(input_tokens=100, output_tokens=10, cache_read_input_tokens=20)
    last = request.messages[-1]
    if last.tool_results():
        return reply("summary", model=MODEL, usage=usage)
    if request.tools:
        return reply(tool_uses=[ToolUse("e1", "ask_expert", {"question": "water?"}),
                                ToolUse("e2", "ask_expert", {"question": "fire?"}),
                                ToolUse("b1", "broken", {"x": 1})], model=MODEL, usage=usage)
    return reply(f"answer to {last.text()}", model=MODEL, usage=usage)


def service() -> FunctionService:
    s = FunctionService(agent)
    s.model = MODEL
    return s


def tree(spans) -> dict:
    """span name -> list of (span, parent span or None)."""
    by_id = {s.context.span_id: s for s in spans}
    return [(s, by_id.get(s.parent.span_id) if s.parent else None) for s in spans]


class TestSpans:
    def test_names_kinds_and_nesting_follow_the_sub_convo_tree(self, otel):
        make, spans, _ = otel
        c = Convo(service(), tools=[ask_expert, broken], listener=make())
        c.run("go")
        found = tree(spans())
        names = Counter(s.name for s, _ in found)
        assert names == {"invoke_agent": 3, f"chat {MODEL}": 4, "execute_tool ask_expert": 2,
                         "execute_tool broken": 1}
        (root,) = [s for s, p in found if p is None]
        assert root.name == "invoke_agent" and root.attributes["gen_ai.agent.id"] == c.id
        for span, parent in found:
            if span.name.startswith("chat"):
                assert span.kind == SpanKind.CLIENT and parent.name == "invoke_agent"
            elif span.name.startswith("execute_tool"):
                assert span.kind == SpanKind.INTERNAL and parent is root
            elif span is not root:
                # A sub-agent's span sits under the tool call that created it.
                assert parent.name == "execute_tool ask_expert"
                assert span.attributes["convo.parent.id"] == c.id and span.attributes["convo.depth"] == 1
        chats_of_root = [s for s, p in found if p is root and s.name.startswith("chat")]
        assert len(chats_of_root) == 2
        assert all(s.context.trace_id == root.context.trace_id for s, _ in found)

    def test_chat_spans_carry_the_gen_ai_attributes(self, otel):
        make, spans, _ = otel
        c = Convo(service(), tools=[ask_expert, broken], listener=make(), max_tokens=512, temperature=0.5)
        c.run("go")
        chat = next(s for s in spans() if s.name.startswith("chat") and s.attributes["gen_ai.conversation.id"] == c.id)
        a = dict(chat.attributes)
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "_OTHER"
        assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == MODEL
        assert a["gen_ai.request.max_tokens"] == 512 and a["gen_ai.request.temperature"] == 0.5
        assert a["gen_ai.usage.input_tokens"] == 120  # cached input included, as the conventions ask
        assert a["gen_ai.usage.cache_read.input_tokens"] == 20 and a["gen_ai.usage.output_tokens"] == 10
        assert a["gen_ai.response.finish_reasons"] == ("tool_use",)
        assert a["gen_ai.response.id"].startswith("msg_") and a["gen_ai.conversation.id"] == c.id
        assert a["convo.cost_usd"] == pytest.approx(float(convo.PRICES.lookup(MODEL).cost(
            Usage(input_tokens=100, output_tokens=10, cache_read_input_tokens=20))))
        for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"):
            assert key not in a  # contents only when asked for
        root = next(s for s in spans() if s.name == "invoke_agent" and s.parent is None)
        assert root.attributes["gen_ai.usage.input_tokens"] == 240  # the turn's two requests
        tool_span = next(s for s in spans() if s.name == "execute_tool ask_expert")
        assert tool_span.attributes["gen_ai.tool.call.id"] in ("e1", "e2")
        assert tool_span.attributes["gen_ai.tool.type"] == "function"
        assert "gen_ai.tool.call.arguments" not in tool_span.attributes

    def test_failures_set_error_status_and_type(self, otel):
        make, spans, _ = otel
        c = Convo(ScriptedService([convo.OverloadedError("busy", status_code=529)], model=MODEL), listener=make())
        with pytest.raises(convo.OverloadedError):
            c.send("hello")
        (chat, agent_) = sorted(spans(), key=lambda s: s.name)
        assert chat.status.status_code == StatusCode.ERROR and chat.attributes["error.type"] == "OverloadedError"
        assert chat.attributes["http.response.status_code"] == 529
        assert agent_.status.status_code == StatusCode.ERROR
        c2 = Convo(service(), tools=[ask_expert, broken], listener=make())
        c2.run("go")
        failed = next(s for s in spans() if s.name == "execute_tool broken")
        assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "KeyError"

    def test_a_held_call_ends_the_turn_and_its_approved_run_gets_a_span(self, otel):
        make, spans, _ = otel

        class Hold:
            def gate_tool_call(self, c, tool_use):
                return convo.Pending("check")

        s = ScriptedService([reply(tool_uses=[ToolUse("t1", "broken", {"x": 1})]), reply("done")], model=MODEL)
        c = Convo(s, tools=[broken], listener=make(), hooks=[Hold()])
        c.run("go")
        first = {sp.name: sp for sp in spans()}
        assert first["invoke_agent"].attributes["convo.turn.pending_approval"] is True
        assert first["execute_tool broken"].attributes["convo.tool.pending"] is True
        c.resolve_tool("t1")
        c.continue_turn()
        ran = [sp for sp in spans() if sp.name == "execute_tool broken"]
        assert len(ran) == 2 and ran[1].status.status_code == StatusCode.ERROR
        assert len([sp for sp in spans() if sp.name == "invoke_agent"]) == 2

    def test_a_root_turn_nests_under_the_callers_span(self, otel):
        make, spans, _ = otel
        listener = make()
        tracer = listener._tracer
        with tracer.start_as_current_span("handle_request") as outer:
            Convo(ScriptedService([reply("hi")], model=MODEL), listener=listener).send("hello")
        agent_ = next(s for s in spans() if s.name == "invoke_agent")
        assert agent_.parent.span_id == outer.get_span_context().span_id

    def test_a_thread_hammer_ends_every_span_under_the_right_parent(self, otel):
        make, spans, _ = otel
        listener = make()
        convos = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(3):
                c = Convo(service(), tools=[ask_expert, broken], listener=listener)
                c.run("go")
                with lock:
                    convos.append(c.id)

        threads = [threading.Thread(target=worker) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        listener.close()
        found = tree(spans())
        assert len(found) == 30 * 10
        assert not any(s.attributes.get("convo.abandoned") for s, _ in found)
        roots = [s for s, p in found if p is None]
        assert sorted(s.attributes["gen_ai.agent.id"] for s in roots) == sorted(convos)
        for span, parent in found:
            if parent is not None:
                assert span.context.trace_id == parent.context.trace_id
                assert span.attributes["gen_ai.conversation.id"] in (parent.attributes["gen_ai.conversation.id"],) \
                    or parent.name.startswith("execute_tool")
        per_trace = Counter(s.context.trace_id for s, _ in found)
        assert set(per_trace.values()) == {10}


class TestContent:
    def test_contents_are_recorded_only_when_asked_and_redacted_first(self, otel):
        make, spans, _ = otel

        def redact(what, name, value):
            if what == "tool_input":
                return {"question": "***"}
            if what == "tool_output":
                return "[withheld]"
            return value.replace("go", "g*").replace("water", "w***r")

        c = Convo(service(), tools=[ask_expert, broken], listener=make(capture_content=True, redact=redact),
                  system_prompt="be brief")
        c.run("go")
        mine = [s for s in spans() if s.name.startswith("chat") and s.attributes["gen_ai.conversation.id"] == c.id]
        last_chat = mine[-1]
        inputs = json.loads(last_chat.attributes["gen_ai.input.messages"])
        assert inputs[0] == {"role": "user", "parts": [{"type": "text", "content": "g*"}]}
        assert inputs[1]["role"] == "assistant" and inputs[1]["parts"][0] == {
            "type": "tool_call", "id": "e1", "name": "ask_expert", "arguments": {"question": "***"}}
        assert inputs[2]["role"] == "tool" and inputs[2]["parts"][0] == {
            "type": "tool_call_response", "id": "e1", "response": "[withheld]"}
        outputs = json.loads(last_chat.attributes["gen_ai.output.messages"])
        assert outputs == [{"role": "assistant", "parts": [{"type": "text", "content": "summary"}],
                            "finish_reason": "stop"}]
        assert json.loads(last_chat.attributes["gen_ai.system_instructions"]) == [
            {"type": "text", "content": "be brief"}]
        tool_span = next(s for s in spans() if s.name == "execute_tool ask_expert")
        assert json.loads(tool_span.attributes["gen_ai.tool.call.arguments"]) == {"question": "***"}
        assert json.loads(tool_span.attributes["gen_ai.tool.call.result"]) == "[withheld]"
        everything = json.dumps([dict(s.attributes) for s in spans()])
        assert "water" not in everything  # masked in text, tool inputs and tool outputs alike

    def test_the_environment_variable_opts_in(self, otel, monkeypatch):
        make, _, _ = otel
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        assert make().capture_content
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
        assert not make().capture_content

    def test_the_api_key_reaches_no_span(self, otel):
        make, spans, _ = otel

        def answer(req):
            if "fail" in json.dumps(req.json()["messages"][-1]["content"]):
                return Reply.json({"type": "error", "error": {"type": "authentication_error",
                                                              "message": f"bad key {SECRET}"}}, 401)
            return Reply.json(ms.message_for(req.json()))

        with ScriptedHTTPServer(default=answer) as server:
            svc = convo.AnthropicService(MODEL, api_key=SECRET, base_url=server.url)
            c = Convo(svc, listener=make(capture_content=True))
            c.send("hello")
            with pytest.raises(convo.AuthenticationError):
                c.send("fail")
            svc.close()
        dump = json.dumps([[dict(s.attributes), [dict(e.attributes) for e in s.events], s.status.description]
                           for s in spans()], default=str)
        assert SECRET not in dump
        chat = next(s for s in spans() if s.name == f"chat {MODEL}")
        assert chat.attributes["gen_ai.provider.name"] == "anthropic"
        assert chat.attributes["server.address"] == "127.0.0.1"
        assert chat.attributes["server.port"] == int(server.url.rsplit(":", 1)[1])


class TestMetrics:
    def test_token_usage_and_duration_histograms(self, otel):
        make, _, metrics = otel
        c = Convo(service(), tools=[ask_expert, broken], listener=make())
        c.run("go")
        found = metrics()
        tokens, duration = found["gen_ai.client.token.usage"], found["gen_ai.client.operation.duration"]
        assert tokens.unit == "{token}" and duration.unit == "s"
        points = list(tokens.data.data_points)
        by_type = {p.attributes["gen_ai.token.type"]: p for p in points}
        assert by_type["input"].count == 4 and by_type["input"].sum == 4 * 120
        assert by_type["output"].sum == 40
        assert tuple(by_type["input"].explicit_bounds) == TOKEN_BUCKETS
        assert by_type["input"].attributes["gen_ai.operation.name"] == "chat"
        assert by_type["input"].attributes["gen_ai.request.model"] == MODEL
        assert by_type["input"].attributes["gen_ai.response.model"] == MODEL
        (point,) = duration.data.data_points
        assert point.count == 4 and tuple(point.explicit_bounds) == DURATION_BUCKETS
        assert "error.type" not in point.attributes

    def test_a_failed_request_is_timed_with_its_error_type(self, otel):
        make, _, metrics = otel
        c = Convo(ScriptedService([convo.RateLimitError("slow", status_code=429)], model=MODEL), listener=make())
        with pytest.raises(convo.RateLimitError):
            c.send("hi")
        (point,) = metrics()["gen_ai.client.operation.duration"].data.data_points
        assert point.attributes["error.type"] == "RateLimitError"


def test_a_listener_failure_is_logged_unless_strict(otel, monkeypatch):
    make, _, _ = otel
    listener = make()
    monkeypatch.setattr(listener, "_request", lambda *a: (_ for _ in ()).throw(RuntimeError("exporter bug")))
    assert Convo(ScriptedService([reply("ok")]), listener=listener).send("x").text() == "ok"
    strict = make(strict=True)
    monkeypatch.setattr(strict, "_request", lambda *a: (_ for _ in ()).throw(RuntimeError("exporter bug")))
    service_ = ScriptedService([reply("never")])
    with pytest.raises(RuntimeError, match="exporter bug"):
        Convo(service_, listener=strict).send("x")
    assert service_.requests == []
