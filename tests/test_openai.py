"""OpenAIService: its pure conversions, stream assembly, errors, retries, cancellation and secrets."""

from __future__ import annotations

import json
import threading
import time

import attrs
import pytest
import structlog

from convo import (
    APIConnectionError,
    AuthenticationError,
    Cancelled,
    Convo,
    Document,
    Image,
    InvalidRequestError,
    Message,
    MissingAPIKeyError,
    ProviderError,
    OverloadedError,
    RateLimitError,
    RawBlock,
    RedactedThinking,
    Request,
    ResponseFormatError,
    RetryPolicy,
    Role,
    ServerError,
    StopReason,
    StreamDone,
    Text,
    Thinking,
    Tool,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)
from convo._cancel import CancelToken, cancel_scope
from convo.providers.openai import (
    CONTEXT_WINDOWS,
    OpenAIService,
    StreamAssembler,
    context_window_for,
    error_from_body,
    from_wire,
    to_wire,
)
from convo.service import BlockDone, TextDelta, ThinkingDelta, ToolInputDelta, UsageUpdate, collect
from tests.servers import Reply, ScriptedHTTPServer, closed_port

SECRET = "sk-test-SECRET-5678"
FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02)
WEATHER = ToolSpec("get_weather", "Weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def body(message: dict, finish_reason: str | None = "stop", usage: dict | None = None, **top) -> dict:
    """A non-streamed completion body."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
            "usage": usage, **top}


def tc(id: str | None, name: str | None, arguments: str | None, index: int | None = None) -> dict:
    """One tool call as the wire spells it (parts left None are left out)."""
    fn = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    call: dict = {"type": "function", "function": fn}
    if id is not None:
        call["id"] = id
    if index is not None:
        call["index"] = index
    return call


def sse(*chunks: dict | str) -> str:
    """An event stream of these chunks, then [DONE]."""
    lines = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return "".join(lines) + "data: [DONE]\n\n"


def chunk(delta: dict | None = None, finish_reason: str | None = None, usage: dict | None = None,
          choices: bool = True) -> dict:
    c: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
               "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}] if choices else [],
               "usage": usage}
    return c


USAGE = {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
         "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0}}


# --- to_wire -------------------------------------------------------------------


class TestToWire:
    def test_system_prompt_becomes_the_first_message(self):
        wire = to_wire(Request([Message.user("hi")], system="Be brief."), "gpt-4o")
        assert wire["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert wire["model"] == "gpt-4o"
        assert wire["stream"] is False and "stream_options" not in wire

    def test_streaming_asks_for_the_usage_chunk(self):
        wire = to_wire(Request([Message.user("hi")]), "m", stream=True)
        assert wire["stream"] is True
        assert wire["stream_options"] == {"include_usage": True}

    def test_user_images_as_data_urls_and_http_urls(self):
        msg = Message.user("what is this?", Image(media_type="image/png", data="iVBORw0KGgo="),
                           Image(url="https://example.com/cat.jpg"))
        (wire,) = to_wire(Request([msg]), "m")["messages"]
        assert wire == {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "what is this?"},
        ]}

    def test_documents(self):
        msg = Message.user("", Document(text="hello", title="notes.txt"),
                           Document(media_type="application/pdf", data="JVBERi0=", title="a.pdf"))
        (wire,) = to_wire(Request([msg]), "m")["messages"]
        assert wire["content"] == [
            {"type": "text", "text": "notes.txt\n\nhello"},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        ]

    def test_assistant_text_and_tool_calls_with_json_string_arguments(self):
        msg = Message.assistant("Let me look.", ToolUse("call_1", "get_weather", {"city": "Paris"}),
                                ToolUse("call_2", "get_weather", {"city": "Ñuñoa"}))
        (wire,) = to_wire(Request([msg]), "m")["messages"]
        assert wire == {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            tc("call_2", "get_weather", '{"city": "Ñuñoa"}'),
        ]}

    def test_assistant_with_only_tool_calls_has_empty_content(self):
        """Not null, not absent: llama.cpp's server rejects the one, its chat template the other."""
        (wire,) = to_wire(Request([Message.assistant("", ToolUse("c", "t", {}))]), "m")["messages"]
        assert wire["content"] == "" and wire["tool_calls"][0]["function"]["arguments"] == "{}"

    def test_tool_results_become_tool_messages_in_order_before_the_user_text(self):
        msg = Message.user("and now?", ToolResult("call_1", "sunny"), ToolResult("call_2", [Text("rain"), Text("y")]))
        wire = to_wire(Request([msg]), "m")["messages"]
        assert wire == [
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain\n\ny"},
            {"role": "user", "content": "and now?"},
        ]

    def test_failed_tool_result_says_so_in_words(self):
        wire = to_wire(Request([Message.user("", ToolResult("c1", "boom", is_error=True),
                                             ToolResult("c2", "error: already said", is_error=True))]), "m")
        assert [m["content"] for m in wire["messages"]] == ["Error: boom", "error: already said"]

    def test_images_from_tools_follow_in_one_user_message(self):
        """tool messages carry text only: the image goes in a user message after all the tool messages."""
        png = Image(media_type="image/png", data="AAAA")
        msg = Message.user("describe it", ToolResult("call_1", [Text("a chart"), png]), ToolResult("call_2", "ok"),
                           ToolResult("call_3", [png]))
        wire = to_wire(Request([msg]), "m")["messages"]
        assert [m["role"] for m in wire] == ["tool", "tool", "tool", "user"]
        assert wire[0]["content"] == "a chart"
        assert wire[2]["content"] == "(the result is in the next user message)"
        assert wire[3]["content"] == [
            {"type": "text", "text": "Attachments from tool call call_1:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "Attachments from tool call call_3:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "describe it"},
        ]

    def test_thinking_redacted_thinking_and_raw_blocks_are_not_sent(self):
        history = [
            Message.user("hi", RawBlock({"type": "mystery"})),
            Message(Role.ASSISTANT, [Thinking("hmm", "sig"), RedactedThinking("xyz"), Text("hello"),
                                     RawBlock({"type": "server_tool_use"})]),
            Message(Role.ASSISTANT, [Thinking("only thinking")]),
        ]
        wire = to_wire(Request(history), "m")["messages"]
        assert wire == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    @pytest.mark.parametrize("choice,expected", [
        (ToolChoice.auto(), "auto"),
        (ToolChoice.none(), "none"),
        (ToolChoice.any(), "required"),
        (ToolChoice.tool("get_weather"), {"type": "function", "function": {"name": "get_weather"}}),
    ])
    def test_tool_choice(self, choice, expected):
        wire = to_wire(Request([Message.user("x")], tools=[WEATHER], tool_choice=choice), "m")
        assert wire["tool_choice"] == expected
        assert "parallel_tool_calls" not in wire

    def test_tools_and_disabling_parallel_calls(self):
        choice = ToolChoice("auto", disable_parallel_tool_use=True)
        wire = to_wire(Request([Message.user("x")], tools=[WEATHER, ToolSpec("noop")], tool_choice=choice), "m")
        assert wire["tools"] == [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                              "parameters": WEATHER.input_schema}},
            {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
        ]
        assert wire["parallel_tool_calls"] is False

    def test_no_tool_choice_without_tools(self):
        """OpenAI rejects tool_choice and parallel_tool_calls when no tools are given."""
        wire = to_wire(Request([Message.user("x")], tool_choice=ToolChoice("any", disable_parallel_tool_use=True)), "m")
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & wire.keys()

    def test_sampling_settings_and_extra(self):
        req = Request([Message.user("x")], temperature=0.2, stop_sequences=["END", "STOP"],
                      extra={"seed": 7, "temperature": 0.0, "reasoning_effort": "low"})
        wire = to_wire(req, "m")
        assert wire["stop"] == ["END", "STOP"]
        assert wire["seed"] == 7 and wire["reasoning_effort"] == "low"
        assert wire["temperature"] == 0.0  # extra wins

    def test_max_tokens_rule(self):
        req = Request([Message.user("x")])
        assert "max_tokens" not in to_wire(req, "m")
        assert to_wire(req, "m", max_tokens=100)["max_tokens"] == 100
        assert to_wire(attrs.evolve(req, max_tokens=5), "m", max_tokens=100)["max_tokens"] == 5
        wire = to_wire(req, "o3", max_tokens=100, max_tokens_field="max_completion_tokens")
        assert wire["max_completion_tokens"] == 100 and "max_tokens" not in wire
        wire = to_wire(attrs.evolve(req, max_tokens=5, extra={"max_completion_tokens": 9}), "m")
        assert wire["max_completion_tokens"] == 9 and "max_tokens" not in wire

    def test_malformed_arguments_kept_raw_go_back_verbatim(self):
        (wire,) = to_wire(Request([Message.assistant("", ToolUse("c", "t", '{"city": "Par'))]), "m")["messages"]
        assert wire["tool_calls"][0]["function"]["arguments"] == '{"city": "Par'

    def test_empty_user_message_is_left_out(self):
        wire = to_wire(Request([Message.user("hi"), Message.assistant("yo"), Message(Role.USER, [])]), "m")
        assert [m["role"] for m in wire["messages"]] == ["user", "assistant"]


# --- from_wire -----------------------------------------------------------------


class TestFromWire:
    @pytest.mark.parametrize("finish,stop", [
        ("stop", StopReason.END_TURN),
        ("length", StopReason.MAX_TOKENS),
        ("content_filter", StopReason.REFUSAL),
        ("tool_calls", StopReason.TOOL_USE),
        ("function_call", StopReason.TOOL_USE),
        (None, StopReason.END_TURN),
        ("eos", "eos"),
    ])
    def test_finish_reasons(self, finish, stop):
        response = from_wire(body({"content": "hi"}, finish))
        assert response.stop_reason == stop
        assert response.stop_sequence is None

    def test_text_and_tool_calls(self):
        response = from_wire(body({"content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "noop", "arguments": ""}},
        ]}, "tool_calls"))
        assert response.content == (Text("Checking."), ToolUse("call_a", "get_weather", {"city": "Oslo"}),
                                    ToolUse("call_b", "noop", {}))
        assert response.stop_reason == StopReason.TOOL_USE
        assert response.id == "chatcmpl-1" and response.model == "gpt-4o-2024-08-06"

    def test_stop_with_tool_calls_means_tool_use(self):
        """Some servers end a tool-calling turn with "stop"; the calls decide."""
        response = from_wire(body({"content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}]}, "stop"))
        assert response.stop_reason == StopReason.TOOL_USE

    @pytest.mark.parametrize("raw", ['{"city": "Par', "not json at all", "[1, 2]", "42"])
    def test_malformed_arguments_are_kept_raw_without_crashing(self, raw):
        with structlog.testing.capture_logs() as logs:
            response = from_wire(body({"tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": raw}}]}, "tool_calls"))
        assert response.content == (ToolUse("c", "get_weather", raw),)
        assert [e["event"] for e in logs] == ["tool_arguments_malformed"]

    def test_reasoning_content_becomes_a_thinking_block_first(self):
        response = from_wire(body({"content": "4", "reasoning_content": "2+2 is 4"}))
        assert response.content == (Thinking("2+2 is 4"), Text("4"))
        openrouter = from_wire(body({"content": "4", "reasoning": "openrouter says"}))
        assert openrouter.content[0] == Thinking("openrouter says")

    def test_refusal(self):
        response = from_wire(body({"content": None, "refusal": "I can't help with that."}, "stop"))
        assert response.content == (Text("I can't help with that."),)
        assert response.stop_reason == StopReason.REFUSAL

    def test_usage_counts_uncached_input_and_cache_reads(self):
        response = from_wire(body({"content": "x"}, usage=USAGE))
        assert response.usage == Usage(input_tokens=176, output_tokens=80, cache_read_input_tokens=1024,
                                       reasoning_tokens=64)
        assert response.usage.total_input_tokens() == 1200
        assert response.usage.cost_usd is None

    def test_usage_without_details_or_at_all(self):
        assert from_wire(body({"content": "x"}, usage={"prompt_tokens": 9, "completion_tokens": 2})).usage == \
            Usage(input_tokens=9, output_tokens=2)
        assert from_wire(body({"content": "x"}, usage=None)).usage == Usage()

    def test_legacy_function_call_and_unknown_call_types(self):
        response = from_wire(body({"function_call": {"name": "t", "arguments": '{"a": 1}'}}, "function_call"))
        assert response.content == (ToolUse("function_call", "t", {"a": 1}),)
        custom = {"id": "c", "type": "custom", "custom": {"name": "x", "input": "raw"}}
        assert from_wire(body({"tool_calls": [custom]}, "tool_calls")).content == (RawBlock(custom),)

    def test_content_parts(self):
        response = from_wire(body({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
        assert response.text() == "ab"

    def test_error_object_in_a_200_body_raises_its_typed_error(self):
        with pytest.raises(RateLimitError) as info:
            from_wire({"error": {"code": 429, "message": "slow down"}})
        assert info.value.status_code == 429

    def test_no_choices_is_a_format_error(self):
        with pytest.raises(ResponseFormatError):
            from_wire({"id": "x", "choices": []})


# --- errors ---------------------------------------------------------------------


class TestErrorFromBody:
    def test_openai_error_with_type_and_code(self):
        err = error_from_body(401, {"error": {"message": "Incorrect API key provided: sk-abc***xyz.",
                                              "type": "invalid_request_error", "param": None,
                                              "code": "invalid_api_key"}}, request_id="req_1")
        assert isinstance(err, AuthenticationError)
        assert (err.status_code, err.error_type, err.request_id) == (401, "invalid_request_error", "req_1")

    def test_code_stands_in_for_a_missing_type(self):
        err = error_from_body(429, {"error": {"message": "quota", "type": None, "code": "insufficient_quota"}})
        assert isinstance(err, RateLimitError) and err.error_type == "insufficient_quota"

    def test_openrouter_integer_code_is_not_a_type(self):
        err = error_from_body(502, {"error": {"code": 502, "message": "upstream failed"}})
        assert isinstance(err, ServerError)
        assert (err.error_type, err.message) == (None, "upstream failed")

    def test_in_stream_error_is_typed_by_its_code(self):
        err = error_from_body(None, {"error": {"code": 429, "message": "rate limited",
                                               "metadata": {"raw": {"detail": "x"}}}})
        assert isinstance(err, RateLimitError)
        assert err.message == 'rate limited ({"detail": "x"})'

    def test_top_level_and_string_errors(self):
        vllm = error_from_body(400, {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400})
        assert isinstance(vllm, InvalidRequestError) and vllm.message == "bad"
        assert error_from_body(500, {"error": "kaput"}).message == "kaput"
        assert error_from_body(422, {"detail": [{"loc": ["body"], "msg": "field required"}]}).message == \
            '[{"loc": ["body"], "msg": "field required"}]'
        assert error_from_body(503, None).message == "HTTP 503 error"


# --- stream assembly -------------------------------------------------------------


def assemble(chunks: list[dict], model: str = "m") -> list:
    assembler = StreamAssembler(model)
    events = []
    for c in chunks:
        events.extend(assembler.feed(c))
    return events + assembler.finish()


class TestStreamAssembler:
    def test_text_then_tool_calls_with_fragmented_arguments(self):
        events = assemble([
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me"}),
            chunk({"content": " check."}),
            chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Rome"}'}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                   "function": {"name": "noop", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
            chunk(usage=USAGE, choices=False),
        ])
        assert events == [
            TextDelta(0, "Let me"),
            TextDelta(0, " check."),
            ToolInputDelta(1, "call_1", "get_weather", ""),
            ToolInputDelta(1, "call_1", "get_weather", '{"ci'),
            ToolInputDelta(1, "call_1", "get_weather", 'ty": "Rome"}'),
            ToolInputDelta(2, "call_2", "noop", "{}"),
            BlockDone(0, Text("Let me check.")),
            BlockDone(1, ToolUse("call_1", "get_weather", {"city": "Rome"})),
            BlockDone(2, ToolUse("call_2", "noop", {})),
            UsageUpdate(Usage(input_tokens=176, output_tokens=80, cache_read_input_tokens=1024, reasoning_tokens=64)),
            events[-1],
        ]
        response = events[-1].response
        assert response.content == tuple(e.block for e in events if isinstance(e, BlockDone))
        assert response.stop_reason == StopReason.TOOL_USE
        assert response.usage == Usage(input_tokens=176, output_tokens=80, cache_read_input_tokens=1024,
                                       reasoning_tokens=64)

    def test_llama_cpp_style_repeated_id_name_and_legacy_function_call(self):
        """llama.cpp repeats id and name in every chunk and adds a function_call copy: no duplicates."""
        def piece(args):
            return chunk({"role": None, "content": None,
                          "function_call": {"name": "get_weather", "arguments": args},
                          "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": args}}]})
        events = assemble([chunk({"role": "assistant", "content": None, "tool_calls": None}),
                           piece('{"city"'), piece(': "Lima"}'), chunk({}, "tool_calls")])
        response = events[-1].response
        assert response.content == (ToolUse("call__0_get_weather_cmpl-1", "get_weather", {"city": "Lima"}),)
        assert response.usage == Usage()  # no usage chunk: zero, as documented

    def test_name_streamed_in_fragments_or_cumulatively(self):
        def named(name):
            return chunk({"tool_calls": [{"index": 0, "function": {"name": name}}]})
        assert assemble([named("get_"), named("weather")])[-1].response.content[0].name == "get_weather"
        assert assemble([named("get_"), named("get_weather")])[-1].response.content[0].name == "get_weather"

    def test_calls_without_an_index(self):
        events = assemble([
            chunk({"tool_calls": [{"id": "a", "function": {"name": "t", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
            chunk({"tool_calls": [{"id": "b", "function": {"name": "u", "arguments": "{}"}}]}),
        ])
        assert events[-1].response.content == (ToolUse("a", "t", {}), ToolUse("b", "u", {}))

    def test_reasoning_deltas(self):
        events = assemble([chunk({"reasoning_content": "think "}), chunk({"reasoning_content": "more"}),
                           chunk({"content": "answer"}), chunk({}, "stop")])
        assert events[:3] == [ThinkingDelta(0, "think "), ThinkingDelta(0, "more"), TextDelta(1, "answer")]
        assert events[-1].response.content == (Thinking("think more"), Text("answer"))

    def test_each_usage_chunk_reports_the_usage_so_far(self):
        """vLLM's continuous usage stats put usage on every chunk; each one is the total so far."""
        events = assemble([chunk({"content": "a"}, usage={"prompt_tokens": 9, "completion_tokens": 1}),
                           chunk({"content": "b"}, usage={"prompt_tokens": 9, "completion_tokens": 2}),
                           chunk({}, "stop")])
        assert [e for e in events if isinstance(e, UsageUpdate)] == [
            UsageUpdate(Usage(input_tokens=9, output_tokens=1)), UsageUpdate(Usage(input_tokens=9, output_tokens=2))]
        assert events[-1].response.usage == Usage(input_tokens=9, output_tokens=2)

    def test_no_finish_reason_and_no_usage(self):
        events = assemble([chunk({"content": "hi"})])
        assert events[-2:] == [BlockDone(0, Text("hi")), events[-1]]
        assert events[-1].response.stop_reason == StopReason.END_TURN
        assert events[-1].response.usage == Usage()

    def test_truncated_arguments_at_max_tokens(self):
        events = assemble([chunk({"tool_calls": [tc("c", "t", '{"a": "lo', index=0)]}),
                           chunk({}, "length")])
        response = events[-1].response
        assert response.stop_reason == StopReason.MAX_TOKENS
        assert response.content == (ToolUse("c", "t", '{"a": "lo'),)

    def test_refusal_deltas(self):
        events = assemble([chunk({"refusal": "I can't"}), chunk({"refusal": " do that."}), chunk({}, "stop")])
        assert events[-1].response.content == (Text("I can't do that."),)
        assert events[-1].response.stop_reason == StopReason.REFUSAL

    def test_error_chunk_raises(self):
        with pytest.raises(ServerError):
            assemble([chunk({"content": "a"}), {"error": {"code": 502, "message": "upstream died"}}])

    def test_equivalent_stream_and_body_give_equal_responses(self):
        """do() and stream() agree: reasoning, text, two calls, finish reason and cached usage."""
        message = {"content": "Two calls.", "reasoning_content": "plan",
                   "tool_calls": [tc("c1", "get_weather", '{"city": "Oslo"}'), tc("c2", "noop", "")]}
        whole = from_wire(body(message, "tool_calls", USAGE))
        streamed = assemble([
            chunk({"role": "assistant", "reasoning_content": "pl"}), chunk({"reasoning_content": "an"}),
            chunk({"content": "Two "}), chunk({"content": "calls."}),
            chunk({"tool_calls": [tc("c1", "get_weather", '{"city": ', index=0)]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            chunk({"tool_calls": [tc("c2", "noop", "", index=1)]}),
            chunk({}, "tool_calls"), chunk(usage=USAGE, choices=False),
        ])[-1].response
        assert streamed == whole


# --- context windows --------------------------------------------------------------


class TestContextWindow:
    @pytest.mark.parametrize("model,window", [
        ("gpt-4o", 128_000), ("gpt-4o-2024-08-06", 128_000), ("gpt-4o-mini", 128_000),
        ("gpt-4.1", 1_047_576), ("gpt-4.1-mini-2025-04-14", 1_047_576),
        ("gpt-5", 400_000), ("gpt-5-mini", 400_000), ("o1", 200_000), ("o1-mini", 128_000),
        ("o3-mini", 200_000), ("o4-mini-2025-04-16", 200_000), ("gpt-4", 8_192), ("gpt-4-turbo", 128_000),
        ("openai/gpt-4.1", 1_047_576), ("smollm2", 128_000), ("gpt-4oo", 128_000), ("o10", 128_000),
        ("gpt-4.1-nano", 1_047_576), ("gpt-5-nano", 400_000), ("chatgpt-4o-latest", 128_000),
        ("openai/gpt-4o", 128_000), ("openai/gpt-4o-mini-2024-07-18", 128_000), ("gpt-4-0613", 8_192),
        ("o1-2024-12-17", 200_000), ("gpt-5-chat-latest", 128_000), ("openai/gpt-oss-120b", 131_072),
    ])
    def test_table(self, model, window):
        assert context_window_for(model) == window

    def test_names_match_by_the_one_rule_of_pricing(self):
        """Exact names, dated snapshots and router names only: a longer name is not its prefix's family."""
        from convo.pricing import lookup_model

        for model in ("gpt-4.1-mini-2025-04-14", "openai/o3", "gpt-4o-search-preview", "gpt-4-turbo-new"):
            assert context_window_for(model) == (lookup_model(CONTEXT_WINDOWS, model) or 128_000)
        assert context_window_for("gpt-4-32k-0613") == 32_768
        assert context_window_for("gpt-4-new-model") == 128_000  # unknown, not gpt-4's 8k

    def test_service_uses_the_table_or_its_override(self):
        assert OpenAIService(api_key="k", model="gpt-4.1").token_context_window() == 1_047_576
        assert OpenAIService(api_key="k", model="local", context_window=2048).token_context_window() == 2048
        assert all(v > 0 for v in CONTEXT_WINDOWS.values())


# --- the service against a local server ------------------------------------------


def ok(text: str = "hello", **kw) -> Reply:
    return Reply.json(body({"content": text}, usage={"prompt_tokens": 5, "completion_tokens": 1}, **kw))


def service(server: ScriptedHTTPServer, **kw) -> OpenAIService:
    kw.setdefault("api_key", SECRET)
    kw.setdefault("retry", FAST)
    return OpenAIService(model="gpt-4o", base_url=server.url + "/v1", **kw)


REQ = Request([Message.user("hi")])


class TestConfiguration:
    def test_key_and_base_url_from_the_environment(self, monkeypatch):
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        with ScriptedHTTPServer([ok()]) as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1/")
            svc = OpenAIService(model="gpt-4o")
            assert svc.base_url == server.url + "/v1"
            assert svc.do(REQ).text() == "hello"
        sent = server.requests[0]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {SECRET}"
        assert sent.headers["content-type"] == "application/json"

    def test_defaults(self, monkeypatch):
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        svc = OpenAIService()
        assert svc.base_url == "https://api.openai.com/v1"
        assert svc.model == "gpt-4o-mini"
        assert svc.max_tokens_field == "max_completion_tokens"
        assert OpenAIService(base_url="http://127.0.0.1:8080/v1").max_tokens_field == "max_tokens"

    def test_openai_itself_needs_a_key(self, monkeypatch):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        with pytest.raises(MissingAPIKeyError) as info:
            OpenAIService()
        assert "OPENAI_API_KEY" in str(info.value) and isinstance(info.value, ValueError)
        assert OpenAIService(base_url="http://127.0.0.1:11434/v1").token_context_window() == 128_000

    def test_no_key_sends_no_authorization_header(self, monkeypatch):
        """Local servers need no key."""
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with ScriptedHTTPServer([ok()]) as server:
            OpenAIService(model="local", base_url=server.url + "/v1").do(REQ)
        assert "authorization" not in server.requests[0].headers

    def test_organization_project_extra_headers_and_max_tokens(self):
        with ScriptedHTTPServer([ok()]) as server:
            service(server, organization="org-1", project="proj-1", headers={"HTTP-Referer": "https://x"},
                    max_tokens=33).do(REQ)
        sent = server.requests[0]
        assert sent.headers["openai-organization"] == "org-1"
        assert sent.headers["openai-project"] == "proj-1"
        assert sent.headers["http-referer"] == "https://x"
        assert sent.json()["max_tokens"] == 33
        assert sent.json()["model"] == "gpt-4o"


class TestSecrets:
    def test_key_never_in_repr_errors_or_logs(self):
        echo = {"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "invalid_request_error",
                          "code": "invalid_api_key"}}
        with ScriptedHTTPServer([Reply.json({"error": {"message": "busy"}}, 503),
                                 Reply.json(echo, 401)]) as server:
            svc = service(server)
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(AuthenticationError) as info:
                    svc.do(REQ)
        err = info.value
        dumps = [repr(svc), str(svc), repr(vars(svc)), str(err), repr(err), err.message, repr(logs)]
        assert logs, "the retry should have been logged"
        for text in dumps:
            assert SECRET not in text
            assert "SECRET-5678" not in text
        assert "api_key=set" in repr(svc)
        assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"

    def test_key_not_in_connection_errors(self):
        svc = OpenAIService(api_key=SECRET, base_url=f"http://127.0.0.1:{closed_port()}/v1", retry=RetryPolicy.none())
        with pytest.raises(APIConnectionError) as info:
            svc.do(REQ)
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)


class TestRetries:
    def test_429_with_retry_after_then_200(self):
        with ScriptedHTTPServer([
            Reply.json({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                       429, headers={"retry-after": "0.3", "x-request-id": "req_429"}),
            ok("after the wait"),
        ]) as server:
            start = time.monotonic()
            response = service(server, retry=RetryPolicy(max_attempts=2, initial_delay=5)).do(REQ)
            elapsed = time.monotonic() - start
        assert response.text() == "after the wait"
        assert len(server.requests) == 2
        assert 0.25 <= elapsed < 4  # the server's 0.3 s, not the policy's 5 s

    def test_body_cut_off_mid_way_is_retried(self):
        text = json.dumps(body({"content": "whole"}))
        cut = Reply(200, b"", {"content-type": "application/json"}, chunks=(text[:20], text[20:]), drop_after=1)
        with ScriptedHTTPServer([cut, Reply(200, text, {"content-type": "application/json"})]) as server:
            assert service(server).do(REQ).text() == "whole"
        assert len(server.requests) == 2
        with ScriptedHTTPServer([cut]) as server:
            with pytest.raises(APIConnectionError):
                service(server, retry=RetryPolicy.none()).do(REQ)

    def test_non_json_error_body(self):
        with ScriptedHTTPServer([Reply(502, "<html>Bad Gateway</html>", {"content-type": "text/html"})]) as server:
            with pytest.raises(ServerError) as info:
                service(server, retry=RetryPolicy.none()).do(REQ)
        assert info.value.status_code == 502 and "Bad Gateway" in info.value.message

    def test_error_object_in_a_200_body(self):
        with ScriptedHTTPServer([Reply.json({"error": {"code": 401, "message": "No auth credentials found"}})]) as s:
            with pytest.raises(AuthenticationError):
                service(s).do(REQ)

    def test_body_that_is_not_json(self):
        with ScriptedHTTPServer([Reply(200, "surprise", {"content-type": "text/plain"})]) as server:
            with pytest.raises(ResponseFormatError):
                service(server).do(REQ)


STREAM = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
             chunk({}, "stop"), chunk(usage=USAGE, choices=False))


class TestStreaming:
    def test_events_and_final_response(self):
        with ScriptedHTTPServer([Reply.sse(STREAM, chunk_size=4)]) as server:
            events = list(service(server).stream(REQ))
        assert events[:3] == [TextDelta(0, "Hel"), TextDelta(0, "lo"), BlockDone(0, Text("Hello"))]
        assert isinstance(events[-1], StreamDone) and len(events) == 5
        response = events[-1].response
        assert events[3] == UsageUpdate(response.usage)
        assert response.text() == "Hello" and response.usage.cache_read_input_tokens == 1024
        sent = server.requests[0].json()
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    def test_nothing_is_sent_until_the_first_event_is_asked_for(self):
        with ScriptedHTTPServer([Reply.sse(STREAM)]) as server:
            events = service(server).stream(REQ)
            assert server.requests == []
            next(events)
            events.close()
            assert len(server.requests) == 1

    def test_stream_ends_at_done_even_if_more_follows(self):
        text = STREAM + "data: {not json}\n\n"
        with ScriptedHTTPServer([Reply.sse(text)]) as server:
            assert collect(service(server).stream(REQ)).text() == "Hello"

    def test_garbage_in_a_stream_is_a_format_error(self):
        with ScriptedHTTPServer([Reply.sse("data: {not json}\n\n")]) as server:
            with pytest.raises(ResponseFormatError):
                list(service(server).stream(REQ))

    def test_error_event_in_a_stream(self):
        text = sse(chunk({"content": "a"}), {"error": {"code": 429, "message": "Rate limit exceeded upstream"}})
        with ScriptedHTTPServer([Reply.sse(text)]) as server:
            with pytest.raises(RateLimitError) as info:
                list(service(server).stream(REQ))
        assert info.value.message == "Rate limit exceeded upstream"

    def test_drop_after_the_first_event_raises_and_is_not_retried(self):
        events = tuple(e + "\n\n" for e in STREAM.split("\n\n") if e)
        reply = Reply(200, b"", {"content-type": "text/event-stream"}, chunks=events, drop_after=3)
        with ScriptedHTTPServer([reply, Reply.sse(STREAM)]) as server:
            seen = []
            with pytest.raises(APIConnectionError):
                for event in service(server).stream(REQ):
                    seen.append(event)
        assert seen and isinstance(seen[0], TextDelta)
        assert len(server.requests) == 1

    def test_drop_before_any_event_is_retried(self):
        head = STREAM[:30]  # part of the first chunk, which yields no event
        dropped = Reply.sse(head, chunk_size=30, drop_after=1)
        with ScriptedHTTPServer([dropped, Reply.sse(STREAM)]) as server:
            response = collect(service(server).stream(REQ))
        assert response.text() == "Hello"
        assert len(server.requests) == 2

    def test_drop_before_any_event_exhausts_retries(self):
        dropped = Reply.sse(STREAM[:30], chunk_size=30, drop_after=1)
        with ScriptedHTTPServer([dropped] * 3) as server:
            with pytest.raises(APIConnectionError):
                list(service(server).stream(REQ))
        assert len(server.requests) == 3

    @pytest.mark.parametrize("streaming", [True, False])
    def test_drops_and_error_statuses_share_one_attempt_budget(self, streaming):
        """529, a dropped body, 529: three attempts in all for max_attempts=3, then the last error."""
        overloaded = Reply.json({"error": {"message": "busy", "type": "overloaded"}}, 529)
        if streaming:
            dropped = Reply.sse(STREAM[:30], chunk_size=30, drop_after=1)
        else:
            text = json.dumps(body({"content": "whole"}))
            dropped = Reply(200, b"", {"content-type": "application/json"}, chunks=(text[:20], text[20:]),
                            drop_after=1)
        with ScriptedHTTPServer([overloaded, dropped, overloaded], default=Reply.sse(STREAM)) as server:
            svc = service(server, retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
            with pytest.raises(OverloadedError):
                list(svc.stream(REQ)) if streaming else svc.do(REQ)
        assert len(server.requests) == 3

    def test_http_error_before_the_stream(self):
        with ScriptedHTTPServer([Reply.json({"error": {"message": "no such model", "type": "invalid_request_error",
                                                       "code": "model_not_found"}}, 404)]) as server:
            with pytest.raises(ProviderError) as info:
                list(service(server).stream(REQ))
        assert (info.value.status_code, info.value.error_type) == (404, "invalid_request_error")

    def test_cancel_wakes_a_stalled_stream(self):
        """Convo.cancel() fires the token; the blocked read ends at once with Cancelled."""
        stalled = Reply.sse(STREAM, chunk_size=40, chunk_delay=30)
        token = CancelToken()
        with ScriptedHTTPServer([stalled]) as server:
            svc = service(server)
            timer = threading.Timer(0.3, token.cancel, args=("user stop",))
            timer.start()
            start = time.monotonic()
            with cancel_scope(token):
                with pytest.raises(Cancelled):
                    list(svc.stream(REQ))
            timer.cancel()
        assert time.monotonic() - start < 5

    def test_cancel_wakes_a_stalled_do(self):
        token = CancelToken()
        with ScriptedHTTPServer([Reply(200, "{}", stall=10)]) as s:
            timer = threading.Timer(0.3, token.cancel)
            timer.start()
            start = time.monotonic()
            with cancel_scope(token):
                with pytest.raises(Cancelled):
                    service(s).do(REQ)
            timer.cancel()
        assert time.monotonic() - start < 5

    def test_do_and_stream_agree_over_http(self):
        message = {"content": "Hello", "refusal": None}
        with ScriptedHTTPServer([Reply.sse(STREAM, chunk_size=3),
                                 Reply.json(body(message, "stop", USAGE))]) as server:
            svc = service(server)
            streamed = collect(svc.stream(REQ))
            whole = svc.do(REQ)
        strip = {"start_time": None, "end_time": None}
        assert attrs.evolve(streamed, **strip) == attrs.evolve(whole, **strip)

    def test_concurrent_calls_share_one_service(self):
        with ScriptedHTTPServer(default=Reply.sse(STREAM, chunk_size=16)) as server:
            svc = service(server)
            results: list = []

            def worker():
                results.append(collect(svc.stream(REQ)).text())

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        assert results == ["Hello"] * 8


class TestWithConvo:
    def test_malformed_arguments_reach_the_model_as_an_error_result(self):
        """The raw string fails the tool's input validation; the model reads why and tries again."""
        ran = []
        weather = Tool("get_weather", "Weather for a city", WEATHER.input_schema,
                       run=lambda args: ran.append(args) or "sunny")
        bad = body({"content": None, "tool_calls": [
            {"id": "call_bad", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}}]},
            "tool_calls", {"prompt_tokens": 10, "completion_tokens": 5})
        good = body({"content": None, "tool_calls": [
            tc("call_ok", "get_weather", '{"city": "Paris"}')]},
            "tool_calls", {"prompt_tokens": 20, "completion_tokens": 5})
        with ScriptedHTTPServer([Reply.json(bad), Reply.json(good), ok("It is sunny.")]) as server:
            convo = Convo(service(server), tools=[weather])
            response = convo.run("Weather in Paris?", max_turns=5)
        assert response.text() == "It is sunny."
        assert ran == [{"city": "Paris"}]
        second = server.requests[1].json()["messages"]
        assert second[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Par'
        assert second[2]["role"] == "tool" and second[2]["tool_call_id"] == "call_bad"
        assert "input must be a JSON object" in second[2]["content"]
        assert second[2]["content"].startswith("Error: ")
