"""Structured output: Output specs, Convo.run(output=...), and each provider's native mechanism on its real wire."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import pickle
import threading
from decimal import Decimal
from typing import Literal, Optional

import attrs
import llama_cpp  # noqa: F401  (no skip: the local-model tests need it; imported here, before any test)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo import (
    AnthropicService,
    ArgumentTypeError,
    ConfigurationError,
    Convo,
    Message,
    OpenAIService,
    Output,
    OutputValidationError,
    Request,
    StopReason,
    Text,
    TextDelta,
    ThinkingConfig,
    ToolChoice,
    ToolSpec,
    ToolUse,
    tool,
)
from convo.budget import estimate_input_tokens
from convo.providers import anthropic, openai
from convo.providers._sse import SSEEvent
from convo.testing import ScriptedService, reply
from tests.servers import Reply, ScriptedHTTPServer
from tests.test_anthropic_replay import sse_from_message


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


@attrs.frozen
class Label:
    """The sentiment of a review.

    Attributes:
        sentiment: how the reviewer feels.
        confidence: from 0 to 1.
    """

    sentiment: Literal["positive", "negative"]
    confidence: float


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@attrs.frozen
class Visit:
    when: dt.date
    mood: Mood
    points: tuple[Point, ...] = ()
    note: Optional[str] = None


@attrs.frozen
class Checked:
    n: int = attrs.field(validator=lambda i, a, v: _positive(v))


def _positive(v: int) -> None:
    if v <= 0:
        raise ValueError("n must be positive")


LABEL_JSON = '{"sentiment": "positive", "confidence": 0.9}'


# --- the spec -------------------------------------------------------------------------


class TestOutputSpec:
    def test_an_attrs_class_gives_a_closed_object_schema_described_by_its_docstring(self):
        out = Output(Label)
        assert out.schema["type"] == "object" and out.schema["required"] == ["sentiment", "confidence"]
        assert out.schema["properties"]["sentiment"]["enum"] == ["positive", "negative"]
        assert out.wire_schema["additionalProperties"] is False
        assert out.wire_schema["description"] == "The sentiment of a review."
        assert out.name == "Label"

    def test_a_non_object_type_is_wrapped_in_a_value_property_on_the_wire(self):
        out = Output(list[str])
        assert out.schema == {"type": "array", "items": {"type": "string"}}
        assert out.wire_schema == {"type": "object", "properties": {"value": out.schema}, "required": ["value"],
                                   "additionalProperties": False}
        assert out.parse('{"value": ["a", "b"]}') == ["a", "b"]
        assert out.parse('["a", "b"]') == ["a", "b"]

    def test_a_dataclass_and_nested_types_convert_to_instances(self):
        out = Output(Visit)
        value = out.parse('{"when": "2024-05-01", "mood": "sad", "points": [{"x": 1, "y": 2}]}')
        assert value == Visit(dt.date(2024, 5, 1), Mood.SAD, (Point(1, 2),))

    def test_a_json_schema_dict_returns_plain_json(self):
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                  "description": "A count."}
        out = Output(schema)
        assert out.parse('{"n": 3}') == {"n": 3}
        assert out.wire_schema["description"] == "A count."

    def test_an_invalid_json_schema_is_a_configuration_error(self):
        with pytest.raises(ConfigurationError, match="not a valid JSON Schema"):
            Output({"type": "no-such-type"})

    def test_a_type_json_cannot_express_is_an_argument_type_error(self):
        with pytest.raises(ArgumentTypeError, match="has no JSON Schema"):
            Output(complex)
        with pytest.raises(ArgumentTypeError):
            Output("Label")

    def test_attempts_must_be_positive(self):
        with pytest.raises(ConfigurationError, match="attempts"):
            Output(Label, attempts=0)

    def test_every_problem_is_named_with_its_place(self):
        _, problems = Output(Label).check('{"sentiment": "meh", "confidence": "high"}')
        assert any(p.startswith("confidence:") for p in problems)
        assert any(p.startswith("sentiment:") and "meh" in p for p in problems)

    def test_a_missing_property_is_a_problem(self):
        _, problems = Output(Label).check('{"sentiment": "positive"}')
        assert problems == ["'confidence' is a required property"]

    def test_the_class_own_validation_is_a_problem(self):
        _, problems = Output(Checked).check('{"n": -1}')
        assert problems and "n must be positive" in problems[0]

    def test_json_is_found_in_a_fence_or_after_prose(self):
        out = Output(Label)
        assert out.parse(f"Here you go:\n```json\n{LABEL_JSON}\n```") == Label("positive", 0.9)
        assert out.parse(f"Sure! {LABEL_JSON} Hope that helps.") == Label("positive", 0.9)

    def test_a_reply_without_json_says_what_it_was(self):
        with pytest.raises(OutputValidationError, match="holds no JSON value") as info:
            Output(Label).parse("I think it is positive.")
        assert "I think it is positive." in str(info.value)

    def test_a_reply_cut_at_max_tokens_says_so(self):
        _, problems = Output(Label).check(reply('{"sentiment": "pos', stop_reason=StopReason.MAX_TOKENS))
        assert "cut off at max_tokens" in problems[0]

    def test_values_round_trip_through_json(self):
        out = Output(Visit)
        value = Visit(dt.date(2024, 5, 1), Mood.HAPPY, (Point(1, 2), Point(3, 4)), "ok")
        data = out.to_json(value)
        assert json.loads(json.dumps(data)) == data
        assert out.from_json(data) == value

    @settings(max_examples=50, deadline=None)
    @given(st.builds(Label, st.sampled_from(["positive", "negative"]),
                     st.floats(allow_nan=False, allow_infinity=False)))
    def test_to_json_then_from_json_is_the_identity(self, value):
        out = Output(Label)
        assert out.from_json(json.loads(json.dumps(out.to_json(value)))) == value

    def test_specs_and_errors_pickle(self):
        out = pickle.loads(pickle.dumps(Output(Label, attempts=2)))
        assert out.attempts == 2 and out.parse(LABEL_JSON) == Label("positive", 0.9)
        err = OutputValidationError("Label", ["x: bad"], reply("nope"), 3)
        back = pickle.loads(pickle.dumps(err))
        assert back.problems == ["x: bad"] and back.attempts == 3 and back.text == "nope"
        assert isinstance(back, ValueError)

    def test_request_round_trips_its_output_schema(self):
        request = Request([Message.user("hi")], output_schema=Output(Label).wire_schema)
        assert Request.from_dict(json.loads(json.dumps(request.to_dict()))) == request

    def test_the_budget_estimate_counts_the_output_schema(self):
        plain = Request([Message.user("hi")])
        with_output = Request([Message.user("hi")], output_schema=Output(Visit).wire_schema)
        assert estimate_input_tokens(with_output) > estimate_input_tokens(plain) + len(
            json.dumps(with_output.output_schema))


# --- Convo.run(output=...) ------------------------------------------------------------------


class TestRunWithOutput:
    def test_returns_the_parsed_value_and_asks_for_the_schema(self):
        service = ScriptedService([reply(LABEL_JSON)])
        c = Convo(service)
        assert c.run("Classify: great phone", output=Label) == Label("positive", 0.9)
        assert service.requests[0].output_schema == Output(Label).wire_schema
        assert c.messages[-1].text() == LABEL_JSON

    def test_a_bad_reply_is_answered_with_its_problems_and_retried(self):
        service = ScriptedService([reply('{"sentiment": "meh", "confidence": 0.5}'), reply(LABEL_JSON)])
        c = Convo(service)
        assert c.run("Classify", output=Label) == Label("positive", 0.9)
        feedback = service.requests[1].messages[-1].text()
        assert "not a valid Label" in feedback and "sentiment:" in feedback and "meh" in feedback
        assert len(c.messages) == 4

    def test_after_every_attempt_the_error_carries_the_problems_and_last_reply(self):
        service = ScriptedService(default=reply("no idea"))
        with pytest.raises(OutputValidationError) as info:
            Convo(service).run("Classify", output=Output(Label, attempts=2))
        err = info.value
        assert err.attempts == 2 and len(service.requests) == 2
        assert err.text == "no idea" and "holds no JSON value" in err.problems[0]

    def test_the_model_may_call_tools_before_giving_the_output(self):
        @tool
        def lookup(word: str) -> str:
            """Look a word up."""
            return f"{word}: good"

        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "lookup", {"word": "great"})]), reply(LABEL_JSON)])
        c = Convo(service, tools=[lookup])
        assert c.run("Classify", output=Label) == Label("positive", 0.9)
        assert service.requests[1].messages[-1].tool_results()[0].text() == "great: good"
        assert all(r.output_schema is not None for r in service.requests)

    def test_a_tool_that_ends_the_turn_ends_it_without_a_correction(self):
        @tool(ends_turn=True)
        def hand_over() -> str:
            """Hand over to a person."""
            return "handed over"

        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "hand_over", {})])])
        with pytest.raises(OutputValidationError, match="a tool ended the turn"):
            Convo(service, tools=[hand_over]).run("Classify", output=Label)
        assert len(service.requests) == 1

    def test_later_sends_carry_no_output_schema(self):
        service = ScriptedService([reply(LABEL_JSON), reply("plain")])
        c = Convo(service)
        c.run("Classify", output=Label)
        assert c.send("thanks").text() == "plain"
        assert service.requests[1].output_schema is None

    def test_a_bad_output_type_fails_before_anything_is_sent(self):
        service = ScriptedService([reply("x")])
        c = Convo(service)
        with pytest.raises(ArgumentTypeError):
            c.run("Classify", output=complex)
        assert service.requests == [] and c.send("hi").text() == "x"

    def test_streamed_replies_reach_on_event(self):
        service = ScriptedService([reply(LABEL_JSON)])
        events = []
        assert Convo(service).run("Classify", output=Label, on_event=events.append) == Label("positive", 0.9)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == LABEL_JSON

    def test_concurrent_runs_on_sibling_convos_each_get_their_own_schema(self):
        """Under load: 16 threads, two output types, one shared service."""
        def answer(request: Request):
            is_label = "sentiment" in request.output_schema["properties"]
            return reply(LABEL_JSON if is_label else '{"x": 1, "y": 2}')

        lead = Convo(ScriptedService(default=answer))
        results: dict[int, object] = {}

        def worker(i: int) -> None:
            results[i] = lead.sub_convo().run("go", output=Label if i % 2 else Point)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {i: Label("positive", 0.9) if i % 2 else Point(1, 2) for i in range(16)}


# --- Anthropic: a forced tool ------------------------------------------------------------

OTHER_TOOL = ToolSpec("lookup", "Look a word up.", {"type": "object", "properties": {"w": {"type": "string"}}})
WIRE = Output(Label).wire_schema


def _wire(**kw) -> dict:
    return anthropic.to_wire(Request([Message.user("hi")], output_schema=WIRE, **kw), model="claude-haiku-4-5",
                             max_tokens=100)


class TestAnthropicWire:
    def test_the_output_alone_is_a_forced_tool(self):
        body = _wire()
        assert body["tools"] == [{"name": "final_output", "description": "The sentiment of a review.",
                                  "input_schema": {k: v for k, v in WIRE.items() if k != "description"}}]
        assert body["tool_choice"] == {"type": "tool", "name": "final_output"}

    def test_beside_other_tools_the_model_must_call_one_of_them_or_the_output(self):
        body = _wire(tools=[OTHER_TOOL], tool_choice=ToolChoice.auto())
        assert [t["name"] for t in body["tools"]] == ["lookup", "final_output"]
        assert body["tool_choice"] == {"type": "any"}

    @pytest.mark.parametrize("choice, expected", [
        (ToolChoice.tool("lookup"), {"type": "tool", "name": "lookup"}),
        (ToolChoice.none(), {"type": "tool", "name": "final_output"}),
        (ToolChoice(disable_parallel_tool_use=True), {"type": "any", "disable_parallel_tool_use": True}),
    ])
    def test_a_given_tool_choice(self, choice, expected):
        assert _wire(tools=[OTHER_TOOL], tool_choice=choice)["tool_choice"] == expected

    def test_extended_thinking_gets_auto_because_it_refuses_forced_tools(self):
        assert _wire(thinking=ThinkingConfig(budget_tokens=1024))["tool_choice"] == {"type": "auto"}

    def test_a_tool_with_the_output_tool_name_is_refused(self):
        clash = ToolSpec("final_output", "", {"type": "object", "properties": {}})
        with pytest.raises(ConfigurationError, match="final_output"):
            _wire(tools=[clash])

    def test_the_output_call_becomes_its_json_as_text_and_ends_the_turn(self):
        body = {"id": "msg_1", "model": "claude-haiku-4-5", "stop_reason": "tool_use",
                "usage": {"input_tokens": 10, "output_tokens": 5},
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "final_output",
                             "input": {"sentiment": "negative", "confidence": 0.25}}]}
        response = anthropic.from_wire(body, output_tool="final_output")
        assert response.content == (Text('{"sentiment": "negative", "confidence": 0.25}'),)
        assert response.stop_reason == StopReason.END_TURN
        assert anthropic.from_wire(body).tool_uses()[0].name == "final_output"

    def test_other_calls_beside_the_output_stay_calls(self):
        body = {"id": "msg_1", "model": "m", "stop_reason": "tool_use", "usage": {},
                "content": [{"type": "tool_use", "id": "a", "name": "lookup", "input": {"w": "x"}},
                            {"type": "tool_use", "id": "b", "name": "final_output", "input": {}}]}
        response = anthropic.from_wire(body, output_tool="final_output")
        assert [type(b) for b in response.content] == [ToolUse, Text]
        assert response.stop_reason == StopReason.TOOL_USE

    def test_a_streamed_output_call_arrives_as_text_deltas(self):
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                   "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 4},
                   "content": [{"type": "tool_use", "id": "toolu_1", "name": "final_output",
                                "input": {"sentiment": "positive", "confidence": 1}}]}
        events = [SSEEvent(event=chunk.split("\n")[0][7:], data=chunk.split("\n")[1][6:])
                  for chunk in sse_from_message(message).split("\n\n") if chunk]
        out = list(anthropic.stream_events(events, output_tool="final_output"))
        streamed = "".join(e.text for e in out if isinstance(e, TextDelta))
        assert json.loads(streamed) == {"sentiment": "positive", "confidence": 1}
        done = out[-1].response
        assert json.loads(done.text()) == {"sentiment": "positive", "confidence": 1}
        assert done.stop_reason == StopReason.END_TURN


def _claude_message(tool_input: dict, n: int) -> dict:
    return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
            "content": [{"type": "tool_use", "id": f"toolu_{n}", "name": "final_output", "input": tool_input}]}


class TestAnthropicService:
    def test_run_with_output_against_a_messages_peer_corrects_a_bad_call(self):
        replies = [Reply.json(_claude_message({"sentiment": "meh", "confidence": 0.5}, 1)),
                   Reply.json(_claude_message({"sentiment": "negative", "confidence": 0.75}, 2))]
        with ScriptedHTTPServer(replies) as server, \
                AnthropicService("claude-haiku-4-5", api_key="test-key", base_url=server.url) as service:
            c = Convo(service)
            assert c.run("Classify: it broke", output=Label) == Label("negative", 0.75)
            usage = c.cumulative_usage()
        first, second = (r.json() for r in server.requests)
        assert first["tool_choice"] == {"type": "tool", "name": "final_output"}
        assert first["tools"][-1]["input_schema"]["properties"]["sentiment"]["enum"] == ["positive", "negative"]
        # The bad call went back as the assistant's text, and the correction as the user's.
        assert second["messages"][1] == {"role": "assistant", "content": [
            {"type": "text", "text": '{"sentiment": "meh", "confidence": 0.5}'}]}
        assert "sentiment:" in second["messages"][2]["content"][0]["text"]
        assert usage.responses == 2 and usage.total_cost_usd > 0

    def test_a_streamed_run_with_output(self):
        stream = Reply.sse(sse_from_message(_claude_message({"sentiment": "positive", "confidence": 1.0}, 1)))
        with ScriptedHTTPServer([stream]) as server, \
                AnthropicService("claude-haiku-4-5", api_key="test-key", base_url=server.url) as service:
            events = []
            value = Convo(service).run("Classify", output=Label, on_event=events.append)
        assert value == Label("positive", 1.0)
        assert server.requests[0].json()["stream"] is True
        assert json.loads("".join(e.text for e in events if isinstance(e, TextDelta))) == {
            "sentiment": "positive", "confidence": 1.0}


# --- OpenAI: response_format json_schema ----------------------------------------------------


class TestOpenAIWire:
    def test_the_output_is_a_strict_json_schema_response_format(self):
        body = openai.to_wire(Request([Message.user("hi")], output_schema=WIRE), "gpt-4o")
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "final_output", "description": "The sentiment of a review.", "schema": WIRE, "strict": True}}

    def test_optional_fields_turn_strict_off(self):
        schema = Output(Visit).wire_schema
        body = openai.to_wire(Request([Message.user("hi")], output_schema=schema), "gpt-4o")
        assert body["response_format"]["json_schema"]["strict"] is False

    @pytest.mark.parametrize("schema, ok", [
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
          "additionalProperties": False}, True),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, False),
        ({"type": "object", "properties": {"a": {"type": "array", "items": {
            "type": "object", "properties": {"b": {"type": "integer"}}, "required": [],
            "additionalProperties": False}}}, "required": ["a"], "additionalProperties": False}, False),
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
          "required": ["a"], "additionalProperties": False}, True),
        ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}, "required": ["a"],
          "additionalProperties": False}, False),
    ])
    def test_strict_schema_ok(self, schema, ok):
        assert openai.strict_schema_ok(schema) is ok

    def test_run_with_output_against_a_chat_completions_peer(self):
        completion = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                          "role": "assistant", "content": '{"sentiment":"positive","confidence":0.5}'}}],
                      "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}}
        with ScriptedHTTPServer([Reply.json(completion)]) as server, \
                OpenAIService("gpt-4o", api_key="test-key", base_url=server.url + "/v1") as service:
            assert Convo(service).run("Classify", output=Label) == Label("positive", 0.5)
        sent = server.requests[0].json()
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["schema"]["required"] == ["sentiment", "confidence"]


# --- the local model: a grammar ---------------------------------------------------------------


@attrs.frozen
class Verdict:
    """Whether a statement is true."""

    answer: Literal["yes", "no"]
    certainty: int


@pytest.fixture(scope="module")
def local():
    from convo import LocalService

    svc = LocalService(temperature=0.0, max_tokens=48, seed=7)
    svc.load()
    return svc


class TestLocal:
    def test_the_grammar_is_the_output_or_a_call_of_an_offered_tool(self):
        from convo.providers.local import output_grammar

        grammar = output_grammar(WIRE, [OTHER_TOOL])
        assert grammar.startswith("root ::= output | call-0\n")
        assert output_grammar(WIRE).startswith("root ::= output\n")
        assert output_grammar(WIRE, [OTHER_TOOL], ToolChoice.tool("lookup")).startswith("root ::= call-0\n")

    def test_the_system_message_asks_for_the_json(self):
        from convo.providers.local import to_chat_messages

        chat = to_chat_messages(Request([Message.user("hi")], output_schema=WIRE))
        assert chat[0]["role"] == "system" and '"sentiment"' in chat[0]["content"]

    def test_the_local_model_answers_with_a_valid_value_on_its_first_reply(self, local):
        c = Convo(local)
        value = c.run("Is the sky blue on a clear day?", output=Output(Verdict, attempts=1))
        assert isinstance(value, Verdict) and value.answer in ("yes", "no")
        assert c.cumulative_usage().responses == 1 and c.cumulative_usage().total_cost_usd == Decimal(0)

    def test_the_local_model_gives_a_json_schema_output(self, local):
        schema = {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"],
                  "additionalProperties": False}
        value = Convo(local).run("How many legs does a cat have?", output=Output(schema, attempts=1))
        assert set(value) == {"legs"} and isinstance(value["legs"], int)
