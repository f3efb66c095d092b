"""The Chucky wire protocol module, on the exact frames each SDK sends and expects (tests/chucky_frames/)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from convo import BlockDone, Document, Image, Response, StreamDone, Text, TextDelta, ToolInputDelta, ToolResult, ToolUse
from convo.server import chucky
from convo.server.chucky import ErrorCode, ProtocolError
from convo.usage import Usage

FRAMES = Path(__file__).parent / "chucky_frames"


def frame(name: str) -> str:
    return (FRAMES / f"{name}.json").read_text().strip()


class TestClientFrames:
    def test_python_sdk_init_with_an_inline_tool(self):
        init = chucky.parse_client_frame(frame("py_init_with_tool"))
        assert isinstance(init, chucky.Init) and init.model == "claude-sonnet-4-5-20250929"
        (t,) = init.client_tools
        assert (t.server, t.name, t.model_name) == ("inline-tools", "add", "mcp__inline-tools__add")
        assert t.input_schema["required"] == ["a", "b"]
        assert init.mcp_servers == (("inline-tools", "connected"),)

    def test_pydantic_required_null_and_allowed_tools(self):
        init = chucky.parse_client_frame(frame("py_init_pydantic_schema"))
        assert "required" not in init.client_tools[0].input_schema
        assert init.allowed_tools == ("mcp__inline-tools__greet",) and init.max_turns == 3
        assert init.system_prompt == "You are terse."

    def test_typescript_init_with_every_field(self):
        init = chucky.parse_client_frame(frame("ts_init_full"))
        assert init.system_prompt == "Answer in French."  # the preset's appendix; there is no Claude Code prompt here
        assert init.max_turns == 5 and init.max_budget_usd == Decimal("0.25") and init.max_thinking_tokens == 2048
        assert init.server_tools is None and init.allowed_tools is None and init.disallowed_tools == ("Bash",)
        assert [t.model_name for t in init.client_tools] == ["mcp__client-tools__greet"]  # "server" has no handler
        assert init.mcp_servers == (("client-tools", "connected"), ("fs", "failed"))  # stdio is never started
        assert init.output_schema["required"] == ["answer"] and init.include_partial_messages
        assert init.resume == "4f2c8a9e-3b1d-4e6f-9a7c-1d2e3f4a5b6c" and init.fork

    def test_tool_choice_extension(self):
        for choice, expected in (({"type": "any"}, "any"), ({"type": "tool", "name": "add"}, "add"), ("none", "none")):
            assert chucky.parse_client_frame(json.dumps({"type": "init", "payload": {"toolChoice": choice}})
                                             ).tool_choice == expected
        assert chucky.init_frame(tool_choice="add")["payload"]["toolChoice"] == {"type": "tool", "name": "add"}

    def test_go_continue_and_typescript_01_tool_objects(self):
        assert chucky.parse_client_frame(frame("go_init_continue")).continue_latest
        init = chucky.parse_client_frame(frame("ts0_init_tool_objects"))
        assert [t.model_name for t in init.client_tools] == ["mcp__inline-tools__lookup"]

    def test_turns_in_every_form(self):
        py = chucky.parse_client_frame(frame("py_prompt"))
        assert (py.text, py.form, py.options.model) == ("Use add for 7 + 15", "prompt", "claude-sonnet-4-5-20250929")
        flat = chucky.parse_client_frame(frame("ts0_prompt_flat"))
        assert flat.options.system_prompt == "Be brief." and flat.text == "Hello"
        assert chucky.parse_client_frame(frame("ts_user")) == chucky.Turn("What is 5 + 3?")
        assert chucky.parse_client_frame(frame("go_user")).text == "Hello from Go"
        assert chucky.parse_client_frame(frame("ts0_sdk_message")) == chucky.Turn("Hello from 0.1", form="sdk_message")

    def test_user_content_blocks(self):
        turn = chucky.parse_client_frame(frame("ts_user_blocks"))
        assert turn.text == "Describe both."
        assert turn.blocks == (Image(media_type="image/png", data="iVBORw0KGgo="),
                               Document(media_type="application/pdf", data="JVBERi0xLjQ="))

    def test_tool_results(self):
        ok = chucky.parse_client_frame(frame("py_tool_result"))
        assert ok == chucky.ToolResultFrame("toolu_01", (Text("22"),), False)
        err = chucky.parse_client_frame(frame("go_tool_result_error"))
        assert err.is_error and err.content == (Text("Tool not found: sub"),)
        mixed = chucky.parse_client_frame(frame("ts_tool_result_mixed"))
        assert mixed.content == (Text("see image"), Image(media_type="image/png", data="iVBORw0KGgo="), Text("file body"))
        assert not mixed.is_error  # TypeScript leaves isError out when false

    def test_malformed_tool_result_is_kept_for_the_waiting_call(self):
        bad = chucky.parse_client_frame('{"type":"tool_result","payload":{"callId":"c1","result":{"content":"x",'
                                        '"isError":"yes"}}}')
        assert bad.call_id == "c1" and bad.malformed

    def test_ping_control_and_pong(self):
        assert chucky.parse_client_frame(frame("ts_ping")) == chucky.Ping(1767225600000)
        assert chucky.parse_client_frame(frame("php_control_close")) == chucky.Control("close")
        assert chucky.parse_client_frame('{"type":"pong","payload":{"timestamp":1}}') == chucky.Ignored("pong")

    @pytest.mark.parametrize("text, code, words", [
        ("{nope", ErrorCode.PROTOCOL_ERROR, "not JSON"),
        ('"init"', ErrorCode.PROTOCOL_ERROR, "JSON object"),
        ('{"payload":{}}', ErrorCode.PROTOCOL_ERROR, "no \"type\""),
        ('{"type":"warp"}', ErrorCode.PROTOCOL_ERROR, "unknown message type 'warp'"),
        ('{"type":"init","payload":[]}', ErrorCode.PROTOCOL_ERROR, "must be an object"),
        ('{"type":"init","payload":{"maxTurns":-1}}', ErrorCode.VALIDATION_ERROR, "maxTurns"),
        ('{"type":"init","payload":{"maxBudgetUsd":"lots"}}', ErrorCode.VALIDATION_ERROR, "maxBudgetUsd"),
        ('{"type":"init","payload":{"mcpServers":[{"tools":[]}]}}', ErrorCode.VALIDATION_ERROR, "name"),
        ('{"type":"init","payload":{"outputFormat":{"type":"text"}}}', ErrorCode.VALIDATION_ERROR, "outputFormat"),
        ('{"type":"prompt","payload":{}}', ErrorCode.VALIDATION_ERROR, "message"),
        ('{"type":"user","message":{"role":"assistant","content":"x"}}', ErrorCode.VALIDATION_ERROR, "role"),
        ('{"type":"tool_result","payload":{"result":{}}}', ErrorCode.PROTOCOL_ERROR, "callId"),
        ('{"type":"control","payload":{}}', ErrorCode.PROTOCOL_ERROR, "action"),
        ('{"type":"sdk_message","payload":{"type":"assistant"}}', ErrorCode.PROTOCOL_ERROR, "sdk_message"),
    ])
    def test_bad_frames(self, text, code, words):
        with pytest.raises(ProtocolError) as caught:
            chucky.parse_client_frame(text)
        assert caught.value.code == code and words in caught.value.message

    def test_binary_and_oversized(self):
        with pytest.raises(ProtocolError, match="binary"):
            chucky.parse_client_frame(b"{}")
        with pytest.raises(ProtocolError, match="limit") as caught:
            chucky.parse_client_frame('{"type":"ping","payload":{"pad":"' + "x" * 100 + '"}}', max_bytes=64)
        assert caught.value.details == {"limit": 64}

    @given(st.text(max_size=200))
    @settings(max_examples=200, deadline=None)
    def test_any_text_is_a_frame_or_a_protocol_error(self, text):
        try:
            chucky.parse_client_frame(text)
        except ProtocolError:
            pass


class TestServerFrames:
    def test_system_init_is_flat_with_a_top_level_session_id(self):
        f = chucky.system_init_frame("S1", "u1", model="m", tools=["a"], mcp_servers=[("inline-tools", "connected")])
        assert f["type"] == "system" and f["subtype"] == "init" and f["session_id"] == "S1" and f["uuid"] == "u1"
        assert f["mcp_servers"] == [{"name": "inline-tools", "status": "connected"}] and f["apiKeySource"] == "none"

    def test_assistant_frame(self):
        r = Response("msg_1", "m", [Text("hi"), ToolUse("t1", "add", {"a": 1})], usage=Usage(3, 4))
        f = chucky.assistant_frame("S", "u", r)
        assert f["message"]["content"] == [{"type": "text", "text": "hi"},
                                           {"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 1}}]
        assert f["message"]["usage"]["input_tokens"] == 3 and f["message"]["stop_reason"] == "end_turn"
        assert f["parent_tool_use_id"] is None and f["session_id"] == "S"

    def test_result_frames(self):
        ok = chucky.result_frame("S", "u", subtype="success", result="4", num_turns=1, duration_ms=5,
                                 duration_api_ms=4, cost_usd=Decimal("0.0031"), usage=Usage(12, 2))
        assert ok["result"] == "4" and ok["total_cost_usd"] == 0.0031 and not ok["is_error"] and "errors" not in ok
        bad = chucky.result_frame("S", "u", subtype="error_budget", result=None, num_turns=1, duration_ms=5,
                                  duration_api_ms=4, cost_usd=Decimal(0), usage=Usage(), error_code="BUDGET_EXCEEDED",
                                  errors=["Budget exceeded"])
        assert bad["is_error"] and "result" not in bad
        assert bad["error"] == {"code": "BUDGET_EXCEEDED", "message": "Budget exceeded"}

    def test_error_pong_tool_call_ready(self):
        assert chucky.error_frame("BUDGET_EXCEEDED", "no", {"window": "day"}) == {
            "type": "error", "payload": {"message": "no", "code": "BUDGET_EXCEEDED", "details": {"window": "day"}}}
        assert chucky.pong_frame(7) == {"type": "pong", "payload": {"timestamp": 7}}
        assert isinstance(chucky.pong_frame(None)["payload"]["timestamp"], int)
        assert chucky.tool_call_frame("c", "add", {}) == {"type": "tool_call",
                                                          "payload": {"callId": "c", "toolName": "add", "input": {}}}
        assert chucky.ready_frame() == {"type": "control", "payload": {"action": "ready"}}

    def test_tool_result_user_frame(self):
        f = chucky.tool_result_user_frame("S", "u", ToolResult("t1", "boom", is_error=True))
        assert f["message"]["content"] == [{"type": "tool_result", "tool_use_id": "t1",
                                            "content": [{"type": "text", "text": "boom"}], "is_error": True}]

    def test_fit_frame_cuts_the_longest_strings_only(self):
        f = {"type": "assistant", "uuid": "u" * 10, "message": {"content": [{"type": "text", "text": "x" * 5000}]}}
        text = chucky.fit_frame(f, 1000)
        assert len(text.encode()) <= 1000
        back = json.loads(text)
        assert back["uuid"] == "u" * 10 and back["message"]["content"][0]["text"].endswith("characters]")
        assert chucky.fit_frame({"type": "pong"}, 100) == '{"type":"pong"}'

    def test_stream_encoder_makes_anthropic_events(self):
        enc = chucky.StreamEncoder("m")
        events = []
        for e in (TextDelta(0, "He"), TextDelta(0, "llo"), BlockDone(0, Text("Hello")),
                  ToolInputDelta(1, "t1", "add", '{"a":1}'), BlockDone(1, ToolUse("t1", "add", {"a": 1})),
                  StreamDone(Response("r", "m", [Text("Hello")], stop_reason="tool_use", usage=Usage(1, 9)))):
            events += enc.encode(e)
        assert [e["type"] for e in events] == [
            "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-2]["usage"]["output_tokens"] == 9
        assert events[5]["content_block"]["name"] == "add"


class TestClientSide:
    def test_server_frames_parse_into_typed_messages(self):
        system = chucky.parse_server_frame(frame("server_system_init"))
        assert isinstance(system, chucky.SystemMessage) and system.session_id == "S1"
        assert system.tools[-1] == "mcp__inline-tools__add" and system.model == "claude-sonnet-4-5-20250929"
        assert chucky.parse_server_frame(frame("server_system_nested_go")).session_id == "S9"
        assistant = chucky.parse_server_frame(frame("server_assistant_tool_use"))
        assert assistant.text == "Let me add." and assistant.tool_uses[0].input == {"a": 7, "b": 15}
        assert assistant.content[2].type == "server_tool_use"  # kept raw
        result = chucky.parse_server_frame(frame("server_result_success"))
        assert result.ok and result.result == "4" and result.total_cost_usd == Decimal("0.0031")
        assert result.usage.input_tokens == 12 and result.duration_api_ms == 1650

    def test_wrapped_messages_tool_calls_and_errors(self):
        wrapped = chucky.parse_server_frame(frame("server_sdk_message_wrapped"))
        assert isinstance(wrapped, chucky.ResultMessage) and wrapped.subtype == "error_max_turns"
        assert not wrapped.ok and wrapped.errors == ("Reached maximum number of turns (5)",)
        assert chucky.parse_server_frame(frame("server_tool_call")) == chucky.ToolCall("call_1", "add", {"a": 7, "b": 15})
        error = chucky.parse_server_frame(frame("server_error_budget"))
        assert error.code == "BUDGET_EXCEEDED" and error.details["limitMicrodollars"] == 1_000_000

    def test_client_frames_round_trip_through_the_server_parser(self):
        tool = type("T", (), {"name": "add", "description": "Add", "input_schema": {"type": "object"}})()
        init = chucky.parse_client_frame(json.dumps(chucky.init_frame(
            model="m", system_prompt="s", max_turns=2, max_budget_usd=Decimal("0.5"), tools=[tool],
            session_id="S", fork=True, output_schema={"type": "object"}, include_partial_messages=True)))
        assert (init.model, init.system_prompt, init.max_turns, init.max_budget_usd) == ("m", "s", 2, Decimal("0.5"))
        assert init.client_tools[0].model_name == "mcp__inline-tools__add" and init.resume == "S" and init.fork
        turn = chucky.parse_client_frame(json.dumps(chucky.user_frame("hi", None, [Image(media_type="image/png",
                                                                                           data="AA==")])))
        assert turn == chucky.Turn("hi", (Image(media_type="image/png", data="AA=="),))
        result = chucky.parse_client_frame(json.dumps(chucky.tool_result_frame(
            "c", chucky.blocks_to_mcp([Text("a"), Image(media_type="image/png", data="AA==")]), True)))
        assert result == chucky.ToolResultFrame("c", (Text("a"), Image(media_type="image/png", data="AA==")), True)
