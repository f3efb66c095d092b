"""The pure conversions of convo.providers.anthropic: request mapping, reply parsing, errors, SSE assembly."""

from __future__ import annotations

import json

import pytest

from convo import errors
from convo.providers._sse import iter_sse
from convo.providers.anthropic import error_from_body, from_wire, stream_events, to_wire, usage_from_wire
from convo.messages import (
    Document,
    Image,
    Message,
    RawBlock,
    RedactedThinking,
    Request,
    Role,
    StopReason,
    Text,
    Thinking,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
from convo.service import BlockDone, StreamDone, TextDelta, ToolInputDelta, UsageUpdate
from convo.usage import Usage


def wire(request: Request, **kw) -> dict:
    kw.setdefault("model", "claude-test")
    kw.setdefault("max_tokens", 100)
    return to_wire(request, **kw)


def user(*blocks) -> Message:
    return Message(Role.USER, blocks)


EPHEMERAL = {"type": "ephemeral"}


class TestRequestMapping:
    def test_minimal_body(self):
        assert wire(Request([Message.user("hi")])) == {
            "model": "claude-test", "max_tokens": 100,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}

    def test_request_max_tokens_wins_over_the_default(self):
        assert wire(Request([Message.user("hi")], max_tokens=7))["max_tokens"] == 7

    def test_stream_flag(self):
        assert wire(Request([Message.user("hi")]), stream=True)["stream"] is True
        assert "stream" not in wire(Request([Message.user("hi")]))

    def test_system_blocks_with_cache_control(self):
        body = wire(Request([Message.user("hi")], system=[Text("rules"), Text("more rules", cache=True)]))
        assert body["system"] == [{"type": "text", "text": "rules"},
                                  {"type": "text", "text": "more rules", "cache_control": EPHEMERAL}]

    def test_system_cannot_hold_images(self):
        with pytest.raises(errors.ConfigurationError, match="system prompt"):
            wire(Request([Message.user("hi")], system=[Image(media_type="image/png", data="AAAA")]))

    def test_tools_and_tool_choice(self):
        spec = ToolSpec("get_weather", "Weather for a city",
                        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
        cases = [
            (ToolChoice.auto(), {"type": "auto"}),
            (ToolChoice.any(), {"type": "any"}),
            (ToolChoice.none(), {"type": "none"}),
            (ToolChoice.tool("get_weather"), {"type": "tool", "name": "get_weather"}),
            (ToolChoice("auto", disable_parallel_tool_use=True), {"type": "auto", "disable_parallel_tool_use": True}),
        ]
        for choice, expected in cases:
            body = wire(Request([Message.user("hi")], tools=[spec], tool_choice=choice))
            assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                      "input_schema": spec.input_schema}]
            assert body["tool_choice"] == expected
        assert "tool_choice" not in wire(Request([Message.user("hi")], tools=[spec]))

    def test_thinking_budget_adaptive_and_display(self):
        r = Request([Message.user("hi")], thinking=ThinkingConfig(budget_tokens=2048))
        assert wire(r)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        r = Request([Message.user("hi")], thinking=ThinkingConfig(adaptive=True))
        assert wire(r)["thinking"] == {"type": "adaptive"}
        r = Request([Message.user("hi")], thinking=ThinkingConfig(budget_tokens=1024, display="summarized"))
        assert wire(r)["thinking"] == {"type": "enabled", "budget_tokens": 1024, "display": "summarized"}

    def test_service_thinking_applies_unless_the_request_sets_its_own(self):
        default = ThinkingConfig(budget_tokens=4000)
        assert wire(Request([Message.user("hi")]), thinking=default)["thinking"]["budget_tokens"] == 4000
        own = Request([Message.user("hi")], thinking=ThinkingConfig(adaptive=True))
        assert wire(own, thinking=default)["thinking"] == {"type": "adaptive"}
        assert "thinking" not in wire(Request([Message.user("hi")]))

    def test_thinking_config_without_budget_or_adaptive_is_rejected(self):
        with pytest.raises(errors.ConfigurationError, match="budget_tokens"):
            wire(Request([Message.user("hi")], thinking=ThinkingConfig()))

    def test_sampling_settings(self):
        body = wire(Request([Message.user("hi")], temperature=0.2, stop_sequences=["END", "```"]))
        assert (body["temperature"], body["stop_sequences"]) == (0.2, ["END", "```"])

    def test_images_and_documents(self):
        msg = user(
            Image(media_type="image/png", data="iVBORw0KGgo="),
            Image(url="https://example.com/cat.jpg", cache=True),
            Document(media_type="application/pdf", data="JVBERi0=", title="Spec"),
            Document(text="plain words"),
            Document(url="https://example.com/a.pdf"),
            Text("What are these?"),
        )
        assert wire(Request([msg]))["messages"][0]["content"] == [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"},
             "cache_control": EPHEMERAL},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
             "title": "Spec"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
            {"type": "text", "text": "What are these?"},
        ]

    def test_image_data_needs_a_media_type(self):
        with pytest.raises(errors.ConfigurationError, match="media_type"):
            wire(Request([user(Image(data="AAAA"))]))

    def test_tool_results_plain_rich_error_and_cached(self):
        msg = user(
            ToolResult("toolu_1", "42"),
            ToolResult("toolu_2", [Text("chart:"), Image(media_type="image/png", data="AAAA"),
                                   Document(text="the table")]),
            ToolResult("toolu_3", "boom", is_error=True, cache=True),
            ToolResult("toolu_4", ""),
        )
        assert wire(Request([msg]))["messages"][0]["content"] == [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                {"type": "text", "text": "chart:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "the table"}}]},
            {"type": "tool_result", "tool_use_id": "toolu_3", "content": "boom", "is_error": True,
             "cache_control": EPHEMERAL},
            {"type": "tool_result", "tool_use_id": "toolu_4"},
        ]

    def test_assistant_blocks_go_back_exactly(self):
        sig = "EqEECkYICxgCKkAo3UA4WwDbB8ihhpykVCsPx6iMzwNTNP8dePIgYjNpu2EWrt5JbApWWONE+/=="
        raw = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"},
               "future_field": [1, {"nested": None}]}
        msg = Message(Role.ASSISTANT, [Thinking("Let me think… «ünïcode»\n", sig), RedactedThinking("EtgBCkYI=="),
                                       Text("Calling."), RawBlock(raw), ToolUse("toolu_1", "f", {"a": [1, 2]})])
        content = wire(Request([Message.user("q"), msg]))["messages"][1]["content"]
        assert content == [
            {"type": "thinking", "thinking": "Let me think… «ünïcode»\n", "signature": sig},
            {"type": "redacted_thinking", "data": "EtgBCkYI=="},
            {"type": "text", "text": "Calling."},
            raw,
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, 2]}},
        ]
        assert content[3] is not raw  # a copy: adding cache_control must never touch the history

    def test_raw_block_with_cache(self):
        raw = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
        sent = wire(Request([user(RawBlock(raw, cache=True))]))["messages"][0]["content"][0]
        assert sent == {**raw, "cache_control": EPHEMERAL}
        assert "cache_control" not in raw

    def test_empty_text_is_left_out_and_its_cache_marker_moves_back(self):
        msgs = [user(Text("question"), Text("", cache=True)), Message(Role.ASSISTANT, [Text("")]),
                Message.user("next")]
        body = wire(Request(msgs))
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "question", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "text", "text": "next"}]},
        ]
        assert msgs[0].content[1] == Text("", cache=True)  # the history keeps it

    def test_whitespace_text_is_sent(self):
        body = wire(Request([Message.user("q"), Message(Role.ASSISTANT, [Text(" "), ToolUse("t", "f")])]))
        assert body["messages"][1]["content"][0] == {"type": "text", "text": " "}

    def test_citations_go_back_with_their_text(self):
        cite = {"type": "char_location", "cited_text": "x", "document_index": 0, "start_char_index": 0,
                "end_char_index": 1}
        sent = wire(Request([Message(Role.ASSISTANT, [Text("x", citations=[cite])])]))["messages"][0]["content"]
        assert sent == [{"type": "text", "text": "x", "citations": [cite]}]

    def test_extra_is_merged_last(self):
        extra = {"metadata": {"user_id": "u1"}, "top_k": 5, "max_tokens": 9,
                 "cache_control": {"type": "ephemeral", "ttl": "5m"}}
        body = wire(Request([Message.user("hi")], extra=extra))
        assert body["metadata"] == {"user_id": "u1"} and body["top_k"] == 5 and body["max_tokens"] == 9
        assert body["cache_control"] == {"type": "ephemeral", "ttl": "5m"}

    def test_to_wire_is_json_and_leaves_the_request_alone(self):
        request = Request([user(ToolResult("t", [Text("a", cache=True)]))], system=[Text("s", cache=True)])
        before = request.to_dict()
        json.dumps(wire(request))
        assert request.to_dict() == before


def message(**kw) -> dict:
    base = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 2}}
    base.update(kw)
    return base


class TestReplyParsing:
    def test_unknown_block_types_are_kept_verbatim(self):
        block = {"type": "container_upload", "file_id": "f1", "extra": {"a": 1}}
        r = from_wire(message(content=[block]))
        assert r.content == (RawBlock(block),)

    def test_unknown_stop_reason_is_kept(self):
        r = from_wire(message(stop_reason="model_context_window_exceeded"))
        assert str(r.stop_reason) == "model_context_window_exceeded"

    def test_null_stop_reason(self):
        assert from_wire(message(stop_reason=None)).stop_reason is None

    def test_not_a_message(self):
        for body in ([], {"content": []}, {"id": "x"}, "text", {"id": "x", "content": [{"type": "text"}]}):
            with pytest.raises(errors.ResponseFormatError):
                from_wire(body)

    def test_usage_with_nulls_and_details(self):
        u = usage_from_wire({"input_tokens": 5, "output_tokens": 20, "cache_creation_input_tokens": None,
                             "cache_read_input_tokens": 7, "output_tokens_details": {"thinking_tokens": 12},
                             "server_tool_use": {"web_search_requests": 1}})
        assert u == Usage(5, 20, 0, 7, 12)

    def test_usage_iterations_are_summed(self):
        u = usage_from_wire({"input_tokens": 3, "output_tokens": 4, "iterations": [
            {"type": "compaction", "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 100},
            {"type": "message", "input_tokens": 3, "output_tokens": 4, "cache_creation_input_tokens": 9}]})
        assert u == Usage(13, 5, 9, 100)


class TestErrors:
    @pytest.mark.parametrize("status,etype,cls", [
        (400, "invalid_request_error", errors.InvalidRequestError),
        (401, "authentication_error", errors.AuthenticationError),
        (403, "permission_error", errors.PermissionDeniedError),
        (404, "not_found_error", errors.NotFoundError),
        (413, "request_too_large", errors.InvalidRequestError),
        (429, "rate_limit_error", errors.RateLimitError),
        (500, "api_error", errors.ServerError),
        (529, "overloaded_error", errors.OverloadedError),
        (None, "overloaded_error", errors.OverloadedError),
        (None, "api_error", errors.ServerError),
    ])
    def test_typed(self, status, etype, cls):
        e = error_from_body(status, {"type": "error", "error": {"type": etype, "message": "m"}},
                            request_id="req_1")
        assert type(e) is cls
        assert (e.status_code, e.error_type, e.message, e.request_id) == (status, etype, "m", "req_1")

    def test_request_id_from_the_body_when_no_header(self):
        e = error_from_body(404, {"type": "error", "error": {"type": "not_found_error", "message": "m"},
                                  "request_id": "req_body"})
        assert e.request_id == "req_body"

    def test_odd_bodies_still_give_a_typed_error(self):
        assert type(error_from_body(502, "<html>bad gateway</html>")) is errors.ServerError
        assert "bad gateway" in str(error_from_body(502, "<html>bad gateway</html>"))
        assert type(error_from_body(401, None)) is errors.AuthenticationError


def sse(*events) -> bytes:
    return "".join(f"event: {kind}\ndata: {json.dumps(data) if not isinstance(data, str) else data}\n\n"
                   for kind, data in events).encode()


START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5}}})
STOP = ("message_stop", {"type": "message_stop"})


def delta(index, d):
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def block_start(index, block):
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def block_stop(index):
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop="end_turn", **usage):
    return ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                              "usage": usage})


def events_of(data: bytes) -> list:
    return list(stream_events(iter_sse([data])))


class TestStreamAssembly:
    def test_usage_merges_message_start_and_message_delta(self):
        events = events_of(sse(START, message_delta(output_tokens=30, input_tokens=None), STOP))
        assert events[-1].response.usage == Usage(input_tokens=10, output_tokens=30, cache_read_input_tokens=5)

    def test_usage_so_far_is_reported_at_the_start_and_on_each_delta(self):
        """Each UsageUpdate is the whole reply's usage so far, built as the final usage is."""
        events = events_of(sse(START, block_start(0, {"type": "text", "text": ""}),
                               delta(0, {"type": "text_delta", "text": "hi"}),
                               message_delta(output_tokens=12), message_delta(output_tokens=30),
                               block_stop(0), STOP))
        updates = [e.usage for e in events if isinstance(e, UsageUpdate)]
        assert updates == [Usage(input_tokens=10, output_tokens=1, cache_read_input_tokens=5),
                           Usage(input_tokens=10, output_tokens=12, cache_read_input_tokens=5),
                           Usage(input_tokens=10, output_tokens=30, cache_read_input_tokens=5)]
        assert isinstance(events[0], UsageUpdate)
        assert updates[-1] == events[-1].response.usage

    def test_usage_update_with_compaction_iterations_is_their_sum(self):
        iterations = [{"input_tokens": 100, "output_tokens": 20}, {"input_tokens": 40, "output_tokens": 7}]
        events = events_of(sse(START, message_delta(output_tokens=7, iterations=iterations), STOP))
        update = [e for e in events if isinstance(e, UsageUpdate)][-1]
        assert update.usage == events[-1].response.usage == Usage(input_tokens=140, output_tokens=27)

    def test_citations_delta(self):
        cite = {"type": "char_location", "cited_text": "sky is blue", "document_index": 0}
        events = events_of(sse(START, block_start(0, {"type": "text", "text": ""}),
                               delta(0, {"type": "text_delta", "text": "Blue."}),
                               delta(0, {"type": "citations_delta", "citation": cite}),
                               block_stop(0), message_delta(output_tokens=3), STOP))
        assert events[-1].response.content == (Text("Blue.", citations=[cite]),)

    def test_unknown_events_and_deltas_are_tolerated(self):
        events = events_of(sse(START, ("brand_new_event", {"type": "brand_new_event", "x": 1}),
                               block_start(0, {"type": "text", "text": ""}),
                               delta(0, {"type": "text_delta", "text": "ok"}),
                               delta(0, {"type": "mystery_delta", "weird": {"x": 1}}),
                               block_start(1, {"type": "future_block", "content": None}),
                               delta(1, {"type": "future_delta", "content": "abc"}),
                               delta(1, {"type": "future_delta", "content": "def"}),
                               block_stop(0), block_stop(1), message_delta(output_tokens=3), STOP))
        assert events[-1].response.content == (Text("ok"), RawBlock({"type": "future_block", "content": "abcdef"}))

    def test_whitespace_inside_data_json(self):
        data = (b'event: message_start\ndata:    ' + json.dumps(START[1]).encode() + b'   \n\n'
                + sse(block_start(0, {"type": "text", "text": ""}))
                + b'event: content_block_delta\ndata: {"type" : "content_block_delta", "index" : 0 ,'
                  b' "delta": {"type": "text_delta", "text": "spaced"}}       \n\n'
                + sse(block_stop(0), message_delta(output_tokens=2), STOP))
        assert events_of(data)[-1].response.text() == "spaced"

    def test_crlf_line_endings(self):
        data = sse(START, block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "x"}),
                   block_stop(0), message_delta(output_tokens=2), STOP).replace(b"\n", b"\r\n")
        assert events_of(data)[-1].response.text() == "x"

    def test_tool_input_deltas_carry_id_and_name(self):
        events = events_of(sse(START, block_start(0, {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}),
                               delta(0, {"type": "input_json_delta", "partial_json": ""}),
                               delta(0, {"type": "input_json_delta", "partial_json": '{"a": '}),
                               delta(0, {"type": "input_json_delta", "partial_json": "[1]}"}),
                               block_stop(0), message_delta("tool_use", output_tokens=9), STOP))
        assert [e for e in events if isinstance(e, ToolInputDelta)] == [
            ToolInputDelta(0, "toolu_9", "f", '{"a": '), ToolInputDelta(0, "toolu_9", "f", "[1]}")]
        assert events[-3:-1] == [BlockDone(0, ToolUse("toolu_9", "f", {"a": [1]})),
                                 UsageUpdate(Usage(input_tokens=10, output_tokens=9, cache_read_input_tokens=5))]
        assert events[-1].response.stop_reason == StopReason.TOOL_USE

    def test_error_event_is_a_typed_error(self):
        err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        stream = stream_events(iter_sse([sse(START, block_start(0, {"type": "text", "text": ""}),
                                             delta(0, {"type": "text_delta", "text": "par"}), ("error", err))]),
                               request_id="req_7")
        seen = []
        with pytest.raises(errors.OverloadedError) as info:
            for e in stream:
                seen.append(e)
        assert seen == [UsageUpdate(Usage(input_tokens=10, output_tokens=1, cache_read_input_tokens=5)),
                        TextDelta(0, "par")]
        assert (info.value.status_code, info.value.error_type, info.value.message, info.value.request_id) == (
            None, "overloaded_error", "Overloaded", "req_7")

    def test_data_that_is_not_json(self):
        with pytest.raises(errors.ResponseFormatError, match="not JSON"):
            events_of(sse(START, ("content_block_start", "{oops")))

    def test_stream_that_ends_before_message_stop(self):
        with pytest.raises(errors.ResponseFormatError, match="message_stop"):
            events_of(sse(START, block_start(0, {"type": "text", "text": ""}), block_stop(0)))

    def test_delta_for_a_block_that_never_started(self):
        with pytest.raises(errors.ResponseFormatError, match="never started"):
            events_of(sse(START, delta(3, {"type": "text_delta", "text": "x"})))

    def test_events_after_message_stop_are_ignored(self):
        events = events_of(sse(START, message_delta(output_tokens=1), STOP, ("error", {"type": "error"})))
        assert isinstance(events[-1], StreamDone)
