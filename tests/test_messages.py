"""The neutral data model: construction, validation and to_dict/from_dict round trips."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from convo import (
    Document,
    Image,
    Message,
    RawBlock,
    RedactedThinking,
    Request,
    Response,
    Role,
    StopReason,
    Text,
    Thinking,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)
from convo.messages import block_from_dict

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)

BLOCKS = [
    Text("hello", cache=True),
    Text("cited", citations=({"type": "char_location", "cited_text": "x"},)),
    Image(media_type="image/png", data="iVBORw0KGgo="),
    Image(url="https://example.invalid/cat.png"),
    Document(media_type="application/pdf", data="JVBERi0=", title="spec"),
    Document(text="plain words", media_type="text/plain"),
    Thinking("let me think", signature="EqQBCkgIBxAB"),
    RedactedThinking("EmwKAhgBEgy3va3pzix"),
    ToolUse("toolu_01", "weather", {"city": "Paris", "nested": {"list": [1, 2]}}),
    ToolResult("toolu_01", [Text("sunny"), Image(media_type="image/png", data="AA==")], is_error=False,
               start_time=NOW, end_time=NOW, display={"temp": 21}),
    RawBlock({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}}),
]


class TestBlocks:
    @pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.type)
    def test_round_trip_through_json(self, block):
        again = block_from_dict(json.loads(json.dumps(block.to_dict())))
        assert again == block

    def test_every_block_has_a_string_type(self):
        assert [b.type for b in BLOCKS] == [
            "text", "text", "image", "image", "document", "document", "thinking", "redacted_thinking",
            "tool_use", "tool_result", "server_tool_use"]

    def test_image_needs_exactly_one_source(self):
        with pytest.raises(ValueError, match="exactly one of data= or url="):
            Image(media_type="image/png")
        with pytest.raises(ValueError):
            Image(media_type="image/png", data="AA==", url="https://x.invalid/a.png")

    def test_image_from_bytes(self):
        assert Image.from_bytes(b"\x89PNG", "image/png").data == "iVBORw=="

    def test_unknown_block_type_is_a_clear_error(self):
        with pytest.raises(ValueError, match="unknown content block type 'hologram'"):
            block_from_dict({"type": "hologram"})

    def test_tool_result_accepts_a_string(self):
        r = ToolResult("t1", "done")
        assert r.content == (Text("done"),) and r.text() == "done"

    def test_text_must_be_a_string(self):
        with pytest.raises(TypeError):
            Text(42)  # type: ignore[arg-type]


class TestMessage:
    def test_user_puts_blocks_before_text(self):
        m = Message.user("and?", ToolResult("t1", "ok"))
        assert [b.type for b in m.content] == ["tool_result", "text"]
        assert m.role == Role.USER == "user"

    def test_assistant_puts_text_first(self):
        m = Message.assistant("calling", ToolUse("t1", "f", {}))
        assert [b.type for b in m.content] == ["text", "tool_use"]
        assert m.tool_uses()[0].name == "f"

    def test_content_must_be_blocks(self):
        with pytest.raises(TypeError, match="content blocks"):
            Message("user", [{"type": "text", "text": "raw dict"}])

    def test_round_trip(self):
        m = Message("assistant", BLOCKS)
        assert Message.from_dict(json.loads(json.dumps(m.to_dict()))) == m

    def test_string_content(self):
        assert Message("user", "hi").text() == "hi"


class TestStopReason:
    def test_compares_equal_to_strings(self):
        assert StopReason.TOOL_USE == "tool_use"
        assert str(StopReason.END_TURN) == "end_turn"
        assert {s.value for s in StopReason} == {"end_turn", "tool_use", "max_tokens", "stop_sequence",
                                                 "refusal", "pause_turn"}

    def test_unknown_values_are_kept(self):
        r = StopReason("model_context_window_exceeded")
        assert r == "model_context_window_exceeded" and str(r) == "model_context_window_exceeded"


class TestRequestResponse:
    def test_request_round_trip(self):
        req = Request(
            messages=[Message.user("hi"), Message("assistant", BLOCKS), Message.user("more")],
            system=[Text("be brief", cache=True)],
            tools=[ToolSpec("weather", "get weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
            tool_choice=ToolChoice.tool("weather"),
            max_tokens=100,
            temperature=0.5,
            stop_sequences=["END"],
            thinking=ThinkingConfig(budget_tokens=1024),
            extra={"metadata": {"user_id": "u1"}},
        )
        assert Request.from_dict(json.loads(json.dumps(req.to_dict()))) == req

    def test_tool_choice_validation(self):
        with pytest.raises(ValueError):
            ToolChoice("tool")
        with pytest.raises(ValueError):
            ToolChoice("auto", name="x")
        assert ToolChoice.any().to_dict() == {"type": "any"}

    def test_response_helpers_and_round_trip(self):
        r = Response("msg_1", "claude-x", [Thinking("hm", "sig"), Text("a"), ToolUse("t1", "f", {}), Text("b")],
                     "tool_use", None, Usage(3, 4, cost_usd=Decimal("0.001")), NOW, NOW)
        assert r.text() == "ab" and [t.id for t in r.tool_uses()] == ["t1"]
        d = json.loads(json.dumps(r.to_dict()))
        assert d["stop_reason"] == "tool_use" and d["usage"]["cost_usd"] == "0.001"
        assert Response.from_dict(d) == r
        assert r.to_message().role == "assistant"
