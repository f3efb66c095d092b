"""``convo serve`` as a real process on 127.0.0.1, driven with exact frames (as every Chucky SDK sends them),
with our client, and with the real chucky-sdk 0.2.0 from PyPI; the model is a fake Claude over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import warnings
from datetime import datetime, timezone

import pytest
import requests
import websocket

from convo import tool
from convo.remote import Client, RemoteConnectionError, RemoteError, verify_token
from tests.server_support import (
    ADD_TOOL, API_KEY, CHEAP, MODEL, RECEIVED, SECRET, FakeClaude, Raw, ServeProcess, inline, token, user,
)

pytestmark = pytest.mark.filterwarnings("ignore:websockets.client.WebSocketClientProtocol is deprecated")


@pytest.fixture(scope="module")
def fake():
    with FakeClaude() as server:
        yield server


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    with ServeProcess(folder, fake.url, args=("--tool-timeout", "2", "--max-sessions-per-user", "3", "--tools")) as p:
        yield p


@pytest.fixture
def raw(served):
    with Raw(served.ws_url, token()) as r:
        yield r


def _result(frames: list[dict]) -> dict:
    assert frames[-1]["type"] == "result", frames
    return frames[-1]


def add(args: dict) -> str:
    return str(args["a"] + args["b"])


class TestOpening:
    def test_ready_comes_first_without_waiting_for_init(self, served):
        """The Python SDK sends nothing until it sees control/ready."""
        with Raw(served.ws_url, token(), query="type=prompt") as r:
            assert r.ready == {"type": "control", "payload": {"action": "ready"}}

    def test_init_before_ready_is_accepted(self, served):
        """TypeScript, Go and PHP send init at once, before reading anything."""
        with Raw(served.ws_url, token(), query="vessel=box-1", read_ready=False) as r:
            r.send({"type": "init", "payload": {"model": MODEL}})
            assert r.recv()["payload"]["action"] == "ready"
            info = r.recv()
            assert info["payload"]["action"] == "session_info"
            assert info["payload"]["data"]["model"] == MODEL and info["payload"]["data"]["sessionId"]

    def test_health(self, served):
        assert requests.get(served.url + "/health", timeout=5).json()["status"] == "ok"


class TestTurns:
    def test_python_sdk_prompt_form_gets_every_sdk_message(self, raw):
        raw.send({"type": "init", "payload": {"model": MODEL}})
        raw.send({"type": "prompt", "payload": {"message": "What is 2 + 2?; USAGE 1000 200",
                                                "options": {"model": MODEL}}})
        frames = raw.until("result")
        kinds = [f["type"] for f in frames]
        assert kinds == ["control", "system", "assistant", "result"]
        system, assistant, result = frames[1:]
        sid = frames[0]["payload"]["data"]["sessionId"]
        assert system["subtype"] == "init" and system["session_id"] == sid and system["model"] == MODEL
        assert all(f["session_id"] == sid and f["uuid"] for f in (system, assistant, result))
        assert assistant["message"]["content"] == [{"type": "text", "text": "echo: What is 2 + 2?; USAGE 1000 200"}]
        assert assistant["message"]["usage"]["input_tokens"] == 1000
        assert result["subtype"] == "success" and result["is_error"] is False
        assert result["result"] == "echo: What is 2 + 2?; USAGE 1000 200"
        assert result["num_turns"] == 1 and result["duration_ms"] >= 0 and result["duration_api_ms"] >= 0
        assert result["usage"] == {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0}
        assert result["total_cost_usd"] == pytest.approx(1000 * 3e-6 + 200 * 15e-6)  # claude-sonnet-4-5's prices

    def test_flat_prompt_form_of_the_first_typescript_sdk(self, raw):
        raw.send({"type": "prompt", "payload": {"message": "SYSTEM?", "model": CHEAP, "systemPrompt": "Be flat."}})
        frames = raw.until("result")
        assert frames[0]["payload"]["data"]["model"] == CHEAP  # the options made the session
        assert _result(frames)["result"] == "system: Be flat."

    def test_bare_user_messages_typescript_and_go(self, raw):
        raw.init(model=MODEL)
        raw.send(user("from typescript", session_id="6c1f0a52-5c1e-4c8b-9e0f-2b1b3f8d9a11"))
        assert _result(raw.until("result"))["result"] == "echo: from typescript"
        raw.send(user("from go", uuid="2b7d9d2c-1f3e-4d38-9a0a-7f3e1c2b4d5e"))  # session_id "unknown"
        assert _result(raw.until("result"))["result"] == "echo: from go"

    def test_legacy_sdk_message_user_message(self, raw):
        raw.init()
        raw.send({"type": "sdk_message", "payload": {"type": "user_message", "content": "legacy"}})
        assert _result(raw.until("result"))["result"] == "echo: legacy"

    def test_content_blocks_with_an_image(self, raw):
        raw.init()
        png = base64.b64encode(b"\x89PNG fake").decode()
        raw.send(user([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                       {"type": "text", "text": "what is this"}]))
        assert _result(raw.until("result"))["result"] == "echo: what is this [image]"

    def test_several_turns_on_one_socket_keep_the_history(self, raw):
        raw.init(systemPrompt={"type": "preset", "preset": "claude_code", "append": "Appended."})
        for text in ("one", "two"):
            raw.send(user(text))
            raw.until("result")
        raw.send(user("HISTORY?"))
        assert _result(raw.until("result"))["result"] == "history: one | two"
        raw.send(user("SYSTEM?"))
        assert _result(raw.until("result"))["result"] == "system: Appended."

    def test_partial_messages_stream_bare_stream_events(self, raw):
        raw.init(includePartialMessages=True)
        raw.send(user("stream me please"))
        frames = raw.until("result")
        events = [f["event"] for f in frames if f["type"] == "stream_event"]
        assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == "echo: stream me please"
        assert [f["type"] for f in frames].index("assistant") > [f["type"] for f in frames].index("stream_event")

    def test_structured_output(self, raw):
        schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
        raw.init(outputFormat={"type": "json_schema", "schema": schema})
        raw.send(user('JSON {"answer": 4}'))
        result = _result(raw.until("result"))
        assert result["subtype"] == "success" and result["structured_output"] == {"answer": 4}

    def test_server_side_tool(self, raw):
        raw.init(tools=["calculate"])
        raw.send(user('CALL calculate {"expression": "6 * 7"}'))
        frames = raw.until("result")
        assert "tool_call" not in [f["type"] for f in frames]  # it ran on the server
        assert frames[0]["tools"] == ["calculate"]
        echoed = [f for f in frames if f["type"] == "user"][0]["message"]["content"][0]
        assert echoed["type"] == "tool_result" and echoed["content"] == [{"type": "text", "text": "42"}]
        assert _result(frames)["result"] == "results: 42"

    def test_prompts_sent_during_a_turn_wait_their_turn(self, raw):
        raw.init()
        raw.send(user("first; SLEEP 0.3"))
        raw.send(user("second"))
        assert _result(raw.until("result"))["result"] == "echo: first; SLEEP 0.3"
        assert _result(raw.until("result"))["result"] == "echo: second"


class TestClientTools:
    def test_python_sdk_tool_round_trip(self, raw):
        """Section 8.2 of the protocol notes, frame for frame on the client side."""
        raw.send({"type": "init", "payload": {"model": MODEL, "mcpServers": inline(ADD_TOOL)}})
        raw.send({"type": "prompt", "payload": {"message": 'CALL add {"a": 7, "b": 15}', "options": {"model": MODEL}}})
        frames = raw.until("result", answer_tools={"add": add})
        kinds = [f["type"] for f in frames]
        assert kinds == ["control", "system", "assistant", "tool_call", "user", "assistant", "result"]
        system, call_msg, call = frames[1], frames[2], frames[3]
        assert system["tools"] == ["calculate", "current_time", "word_count", "mcp__inline-tools__add"]
        assert system["mcp_servers"] == [{"name": "inline-tools", "status": "connected"}]
        tool_use = call_msg["message"]["content"][0]
        assert tool_use["name"] == "mcp__inline-tools__add" and tool_use["input"] == {"a": 7, "b": 15}
        assert call["payload"] == {"callId": tool_use["id"], "toolName": "add", "input": {"a": 7, "b": 15}}
        assert frames[4]["message"]["content"][0]["tool_use_id"] == tool_use["id"]
        assert _result(frames)["result"] == "results: 22" and _result(frames)["num_turns"] == 2

    def test_parallel_calls_answered_out_of_order_reach_the_model_in_order(self, raw):
        raw.init(mcpServers=inline(dict(ADD_TOOL, executeIn="client")))
        raw.send(user('CALL add {"a": 1, "b": 1}; CALL add {"a": 2, "b": 2}; CALL add {"a": 3, "b": 3}'))
        calls = []
        while len(calls) < 3:
            frame = raw.recv()
            if frame["type"] == "tool_call":
                calls.append(frame["payload"])
        for p in reversed(calls):  # all three wait at once on the server
            raw.send({"type": "tool_result", "payload": {"callId": p["callId"], "result": {
                "content": [{"type": "text", "text": add(p["input"])}], "isError": False}}})
        assert _result(raw.until("result"))["result"] == "results: 2 | 4 | 6"

    def test_a_client_that_never_answers_gets_an_error_result_after_the_timeout(self, raw):
        """The TypeScript SDK never answers a call for a tool it lacks; the server must not wait for ever."""
        raw.init(mcpServers=inline(ADD_TOOL))
        began = time.monotonic()
        raw.send(user('CALL add {"a": 1, "b": 2}'))
        result = _result(raw.until("result"))
        assert 1.5 < time.monotonic() - began < 10
        assert result["result"] == "results: the client did not answer the call of 'add' within 2 s (error)"

    def test_an_error_result_from_the_client_reaches_the_model(self, raw):
        raw.init(mcpServers=inline(ADD_TOOL))
        raw.send(user('CALL add {"a": 1, "b": 2}'))
        call = raw.until("tool_call")[-1]["payload"]
        raw.send({"type": "tool_result", "payload": {"callId": call["callId"], "result": {
            "content": [{"type": "text", "text": "Unknown tool: add"}], "isError": True}}})
        assert _result(raw.until("result"))["result"] == "results: Unknown tool: add (error)"

    def test_tool_result_for_an_unknown_call_id_is_a_protocol_error(self, raw):
        raw.init()
        raw.send({"type": "tool_result", "payload": {"callId": "toolu_nope", "result": {"content": []}}})
        error = raw.recv()
        assert error["type"] == "error" and error["payload"]["code"] == "PROTOCOL_ERROR"
        assert "toolu_nope" in error["payload"]["message"]
        raw.send(user("still here"))
        assert _result(raw.until("result"))["result"] == "echo: still here"

    def test_malformed_tool_result_is_a_tool_execution_error(self, raw):
        raw.init(mcpServers=inline(ADD_TOOL))
        raw.send(user('CALL add {"a": 1, "b": 2}'))
        call = raw.until("tool_call")[-1]["payload"]
        raw.send({"type": "tool_result", "payload": {"callId": call["callId"], "result": "three"}})
        frames = raw.until("result")
        errors = [f for f in frames if f["type"] == "error"]
        assert errors[0]["payload"]["code"] == "TOOL_EXECUTION_ERROR"
        assert "could not be read" in _result(frames)["result"]

    def test_a_vanished_client_does_not_hold_up_another_session(self, served):
        with Raw(served.ws_url, token("carol")) as gone, Raw(served.ws_url, token("dave")) as other:
            gone.init(mcpServers=inline(ADD_TOOL))
            gone.send(user('CALL add {"a": 1, "b": 2}'))
            gone.until("tool_call")
            gone.ws.sock.close()  # no close frame: the client just vanishes mid-call
            other.init()
            began = time.monotonic()
            other.send(user("unaffected"))
            assert _result(other.until("result"))["result"] == "echo: unaffected"
            assert time.monotonic() - began < 1.5


class TestLimits:
    def test_max_turns_from_the_client(self, raw):
        raw.init(maxTurns=2, mcpServers=inline(ADD_TOOL))
        raw.send(user("LOOP add"))
        result = _result(raw.until("result", answer_tools={"add": lambda a: "again"}))
        assert result["subtype"] == "error_max_turns" and result["is_error"] and result["num_turns"] == 2
        assert "result" not in result and result["errors"]

    def test_max_turns_from_the_token_caps_the_client(self, served):
        with Raw(served.ws_url, token(permissions={"max_turns": 1})) as r:
            r.init(maxTurns=10, mcpServers=inline(ADD_TOOL))
            r.send(user("LOOP add"))
            result = _result(r.until("result", answer_tools={"add": lambda a: "again"}))
            assert result["subtype"] == "error_max_turns" and result["num_turns"] == 1

    def test_max_budget_usd_ends_the_turn_with_its_subtype(self, raw):
        raw.init(maxBudgetUsd=0.01)  # less than one request's worst case
        raw.send(user("hello"))
        result = _result(raw.until("result"))
        assert result["subtype"] == "error_max_budget_usd" and result["num_turns"] == 0
        assert "budget" in result["errors"][0]

    def test_provider_rate_limit(self, raw):
        raw.init()
        raw.send(user("STATUS 429"))
        result = _result(raw.until("result"))
        assert result["subtype"] == "error_during_execution" and result["error"]["code"] == "RATE_LIMIT"

    def test_a_provider_that_does_not_answer_in_time_is_a_timeout(self, fake, tmp_path):
        with ServeProcess(tmp_path, fake.url, args=("--provider-timeout", "0.3"), name="impatient") as impatient:
            with Raw(impatient.ws_url, token()) as r:
                r.init()
                r.send(user("SLEEP 1.5"))
                result = _result(r.until("result"))
        assert result["subtype"] == "error_during_execution" and result["error"]["code"] == "TIMEOUT"

    def test_concurrency_limit_per_user(self, served):
        opened = [Raw(served.ws_url, token("erin")) for _ in range(3)]
        try:
            with Raw(served.ws_url, token("erin"), read_ready=False) as fourth:
                error = fourth.recv()
                assert error["type"] == "error" and error["payload"]["code"] == "CONCURRENCY_LIMIT"
                assert fourth.closed_with() == 1013
            with Raw(served.ws_url, token("frank")) as other_user:
                assert other_user.ready["payload"]["action"] == "ready"
        finally:
            for r in opened:
                r.close()
        deadline = time.monotonic() + 5
        while True:  # the slots free as the server sees the closes
            with Raw(served.ws_url, token("erin"), read_ready=False) as again:
                if again.recv()["type"] == "control":
                    break
            assert time.monotonic() < deadline

    def test_a_model_not_served_is_a_validation_error(self, raw):
        error = raw.init(model="claude-opus-4-1")
        assert error["type"] == "error" and error["payload"]["code"] == "VALIDATION_ERROR"
        assert raw.closed_with() == 1008

    def test_token_permissions_choose_models(self, served):
        with Raw(served.ws_url, token(permissions={"models": [CHEAP]})) as r:
            error = r.init(model=MODEL)
            assert error["type"] == "error" and error["payload"]["code"] == "AUTHENTICATION_ERROR"
        with Raw(served.ws_url, token(permissions={"models": [CHEAP]})) as r:
            assert r.init(model=CHEAP)["payload"]["action"] == "session_info"

    def test_token_permissions_choose_tools_and_the_model_cannot_call_the_others(self, served):
        sub = dict(ADD_TOOL, name="sub", description="Subtract")
        with Raw(served.ws_url, token(permissions={"tools": ["add"]})) as r:
            info = r.init(mcpServers=inline(ADD_TOOL, sub), tools=["calculate"])
            assert info["payload"]["data"]["tools"] == ["mcp__inline-tools__add"]
            r.send(user('CALL sub {"a": 5, "b": 2}'))
            frames = r.until("result")
            assert "tool_call" not in [f["type"] for f in frames]
            assert _result(frames)["result"].endswith("(error)")


class TestBudgets:
    def test_spent_budget_refuses_the_connection_before_ready(self, served):
        tok = token("grace", ai=0.2)
        with Raw(served.ws_url, tok) as r:
            r.init()
            r.send(user("expensive; USAGE 100000 10"))  # $0.30 at Sonnet's input price
            assert _result(r.until("result"))["subtype"] == "success"
            r.send(user("again"))
            error = r.recv()
            assert error["type"] == "error" and error["payload"]["code"] == "BUDGET_EXCEEDED"
            assert error["payload"]["message"].startswith("Budget exceeded for window 'day'")
            assert error["payload"]["details"]["limitMicrodollars"] == 200_000
        with Raw(served.ws_url, tok, read_ready=False) as r:
            error = r.recv()
            assert error["payload"]["code"] == "BUDGET_EXCEEDED" and error["payload"]["details"]["kind"] == "ai"
            assert r.closed_with() == 1008

    def test_a_turn_that_runs_out_mid_way_ends_with_error_budget(self, served):
        with Raw(served.ws_url, token("heidi", ai=0.2)) as r:
            r.init(mcpServers=inline(ADD_TOOL))
            r.send(user('CALL add {"a": 1, "b": 2}; USAGE 100000 10'))
            result = _result(r.until("result", answer_tools={"add": add}))
            assert result["subtype"] == "error_budget" and result["is_error"]
            assert result["error"]["code"] == "BUDGET_EXCEEDED" and result["num_turns"] == 1
            assert result["total_cost_usd"] == pytest.approx(0.30015)

    def test_compute_budget(self, served):
        tok = token("ivan", hours=1 / 3600)  # one second a day
        with Raw(served.ws_url, tok) as r:
            r.init()
            r.send(user("slow; SLEEP 1.2"))
            assert _result(r.until("result"))["subtype"] == "success"
            r.send(user("more"))
            error = r.recv()
            assert error["payload"]["code"] == "BUDGET_EXCEEDED" and error["payload"]["details"]["kind"] == "compute"

    def test_one_budget_across_a_users_parallel_sessions(self, served):
        """Three sessions at once, room for two worst cases: the third is refused while the others run."""
        tok = token("judy", ai=0.3)
        outcomes = []

        def run() -> None:
            with Raw(served.ws_url, tok) as r:
                r.init()
                r.send(user("hold; SLEEP 1"))
                outcomes.append(_result(r.until("result"))["subtype"])

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["error_budget", "success", "success"]


class TestResume:
    def test_resume_and_fork_with_our_client(self, served):
        tok = token("kim")
        with Client(served.ws_url, tok) as client:
            with client.create_session() as first:
                first.prompt("the code is 42")
                sid = first.session_id
            with client.create_session(session_id=sid) as again:
                assert again.session_id == sid
                assert again.prompt("HISTORY?").result == "history: the code is 42"
            with client.create_session(session_id=sid, fork=True) as fork:
                assert fork.session_id != sid
                fork.prompt("only in the fork")
                assert fork.prompt("HISTORY?").result == ("history: the code is 42 | HISTORY? | only in the fork")
            with client.create_session(session_id=sid) as original:
                assert original.prompt("HISTORY?").result == "history: the code is 42 | HISTORY?"

    def test_continue_resumes_the_latest_session_as_go_and_php_do(self, served):
        tok = token("liam")
        with Raw(served.ws_url, tok) as r:
            sid = r.init()["payload"]["data"]["sessionId"]
            r.send(user("remember me"))
            r.until("result")
        with Raw(served.ws_url, tok) as r:
            assert r.init(**{"continue": True})["payload"]["data"]["sessionId"] == sid
            r.send(user("HISTORY?"))
            assert _result(r.until("result"))["result"] == "history: remember me"

    def test_typescript_resume_with_session_id_and_demo_resume_key(self, served):
        tok = token("mia")
        with Raw(served.ws_url, tok) as r:
            sid = r.init()["payload"]["data"]["sessionId"]
            r.send(user("first"))
            r.until("result")
        with Raw(served.ws_url, tok) as r:
            assert r.init(sessionId=sid, resume=sid)["payload"]["data"]["sessionId"] == sid

    def test_another_users_session_is_not_found_exactly_as_a_missing_one(self, served):
        with Raw(served.ws_url, token("owner")) as r:
            sid = r.init()["payload"]["data"]["sessionId"]
            r.send(user("private"))
            r.until("result")
        answers = {}
        for label, target, fork in (("theirs", sid, False), ("theirs-fork", sid, True),
                                    ("missing", "00000000-0000-4000-8000-000000000000", False)):
            with Raw(served.ws_url, token("intruder")) as r:
                error = r.init(sessionId=target, forkSession=fork)
                assert error["type"] == "error" and error["payload"]["code"] == "SESSION_ERROR"
                answers[label] = error["payload"]["message"].replace(target, "ID")
                assert r.closed_with() == 1008
        assert answers["theirs"] == answers["theirs-fork"] == answers["missing"] == "session 'ID' not found"

    def test_watching_a_session_over_http_is_for_its_owner_only(self, served):
        with Raw(served.ws_url, token("nina")) as r:
            sid = r.init()["payload"]["data"]["sessionId"]
            r.send(user("watched"))
            r.until("result")
        mine = requests.get(f"{served.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token('nina')}"},
                            timeout=5)
        assert mine.status_code == 200 and mine.json()["messageCount"] == 2
        theirs = requests.get(f"{served.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token('oscar')}"},
                              timeout=5)
        missing = requests.get(f"{served.url}/v1/sessions/nope", headers={"Authorization": f"Bearer {token('oscar')}"},
                               timeout=5)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace(sid, "X") == missing.json()["error"]["message"].replace(
            "nope", "X")
        anonymous = requests.get(f"{served.url}/v1/sessions/{sid}", timeout=5)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "AUTHENTICATION_ERROR"


class TestBadInput:
    @pytest.mark.parametrize("frame, code", [
        ("{not json", "PROTOCOL_ERROR"),
        ("[1, 2]", "PROTOCOL_ERROR"),
        ('{"payload": {}}', "PROTOCOL_ERROR"),
        ('{"type": "teleport", "payload": {}}', "PROTOCOL_ERROR"),
        ('{"type": "init", "payload": {"maxTurns": "many"}}', "VALIDATION_ERROR"),
        ('{"type": "user", "message": {"role": "user", "content": [{"type": "video"}]}}', "VALIDATION_ERROR"),
        ('{"type": "control", "payload": {"action": "explode"}}', "PROTOCOL_ERROR"),
        ('{"type": "user", "message": {"role": "user", "content": "   "}}', "VALIDATION_ERROR"),
    ])
    def test_a_bad_frame_gets_an_error_and_the_session_goes_on(self, raw, frame, code):
        raw.init()
        raw.send(frame)
        error = raw.recv()
        assert error["type"] == "error" and error["payload"]["code"] == code and error["payload"]["message"]
        raw.send(user("fine"))
        assert _result(raw.until("result"))["result"] == "echo: fine"

    def test_binary_frames_are_refused(self, raw):
        raw.ws.send_binary(b"\x00\x01")
        assert raw.recv()["payload"]["code"] == "PROTOCOL_ERROR"

    def test_an_oversized_frame_closes_only_that_connection(self, served):
        with Raw(served.ws_url, token("pat")) as big, Raw(served.ws_url, token("quinn")) as other:
            big.send(user("x" * (2 << 20)))
            error = big.recv()
            assert error["payload"]["code"] == "PROTOCOL_ERROR" and "limit" in error["payload"]["message"]
            assert big.closed_with() == 1009
            other.init()
            other.send(user("still fine"))
            assert _result(other.until("result"))["result"] == "echo: still fine"

    def test_a_second_init_is_a_session_error(self, raw):
        raw.init()
        raw.send({"type": "init", "payload": {}})
        assert raw.recv()["payload"]["code"] == "SESSION_ERROR"

    def test_a_huge_reply_is_cut_to_fit_a_frame(self, raw):
        raw.init()
        raw.send(user("BIG 1500000"))
        frames = raw.until("result")
        text = [f for f in frames if f["type"] == "assistant"][0]["message"]["content"][0]["text"]
        assert len(text.encode()) < 1 << 20 and text.endswith("characters]")


class TestTokens:
    def _refused(self, served, tok) -> str:
        with Raw(served.ws_url, tok, read_ready=False) as r:
            error = r.recv()
            assert error["type"] == "error" and error["payload"]["code"] == "AUTHENTICATION_ERROR"
            assert r.closed_with() == 1008
            return error["payload"]["message"]

    def test_no_token(self, served):
        assert "no token" in self._refused(served, None)

    def test_forged_token(self, served):
        assert "signature" in self._refused(served, token(secret="another-secret-" + "x" * 32))

    def test_expired_token(self, served):
        import jwt

        now = int(time.time())
        expired = jwt.encode({"sub": "a", "iss": "p", "iat": now - 7200, "exp": now - 3600}, SECRET, algorithm="HS256")
        assert "expired" in self._refused(served, expired)

    def test_alg_none(self, served):
        def b64(obj) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'a', 'iss': 'p', 'exp': int(time.time()) + 60})}."
        assert "HS256" in self._refused(served, unsigned)

    def test_wrong_algorithms(self, served):
        import jwt

        claims = {"sub": "a", "iss": "p", "exp": int(time.time()) + 60}
        assert "HS256" in self._refused(served, jwt.encode(claims, SECRET * 2, algorithm="HS512"))
        header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
        assert "HS256" in self._refused(served, header + "." + jwt.encode(claims, SECRET).split(".", 1)[1])

    def test_garbage(self, served):
        assert "not a token" in self._refused(served, "not-a-jwt")


class TestKeepalive:
    def test_ping_pong_echoes_the_timestamp(self, raw):
        raw.send({"type": "ping", "payload": {"timestamp": 1767225600000}})
        assert raw.recv() == {"type": "pong", "payload": {"timestamp": 1767225600000}}

    def test_protocol_pings_are_answered(self, raw):
        raw.ws.ping(b"alive?")
        opcode, data = raw.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG and data == b"alive?"

    def test_control_close_and_end_input(self, raw):
        raw.init()
        raw.send({"type": "control", "payload": {"action": "end_input"}})
        raw.send({"type": "pong", "payload": {"timestamp": 1}})  # a client's pong is ignored
        raw.send({"type": "control", "payload": {"action": "close", "data": None}})  # PHP adds data: null
        assert raw.closed_with() == 1000


class TestOurClient:
    def test_prompt_with_a_client_tool(self, served):
        calls = []

        @tool
        def add(a: int, b: int) -> int:
            """Add two integers."""
            calls.append(threading.current_thread().name)
            return a + b

        with Client(served.ws_url, token("rita")) as client:
            result = client.prompt('CALL add {"a": 7, "b": 15}', tools=[add], model=CHEAP)
        assert result.ok and result.result == "results: 22" and result.num_turns == 2
        assert result.total_cost_usd > 0 and result.usage.input_tokens == 20
        assert calls and calls[0].startswith("convo-remote-tool")

    def test_error_frames_raise_with_their_code(self, served):
        with Client(served.ws_url, token("sam", permissions={"models": [CHEAP]})) as client:
            with pytest.raises(RemoteError) as caught:
                client.create_session(model=MODEL)
        assert caught.value.code == "AUTHENTICATION_ERROR"

    def test_a_closed_port_is_a_connection_error(self):
        from tests.servers import closed_port

        with pytest.raises(RemoteConnectionError) as caught:
            Client(f"ws://127.0.0.1:{closed_port()}/ws", token()).create_session()
        assert caught.value.code == "CONNECTION_ERROR"


def _chucky():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import chucky
    return chucky


def _chucky_token(chucky, user_id: str, ai: float = 10.0) -> str:
    # window_start given: the SDK's default calls datetime.utcnow(), deprecated on Python 3.12.
    start = datetime.now(timezone.utc).replace(tzinfo=None)
    return chucky.create_token(user_id, "proj", SECRET, chucky.create_budget(ai, 1, "day", window_start=start))


class TestChuckySDK:
    """The real chucky-sdk 0.2.0 from PyPI, asyncio and all, as a client of the real server."""

    def test_one_shot_prompt(self, served):
        chucky = _chucky()

        async def go():
            client = chucky.Chucky(url=served.ws_url, token=_chucky_token(chucky, "tess"), model=MODEL)
            return await client.prompt("What is 2 + 2?; USAGE 12 2")

        result = asyncio.run(go())
        assert result["type"] == "result" and result["subtype"] == "success"
        assert chucky.get_result_text(result) == "echo: What is 2 + 2?; USAGE 12 2"
        assert result["total_cost_usd"] == pytest.approx(12 * 3e-6 + 2 * 15e-6)
        assert result["session_id"] and result["num_turns"] == 1

    def test_client_side_tool_and_a_second_turn(self, served):
        chucky = _chucky()

        @chucky.tool("add", "Add two integers")
        async def sdk_add(a: int, b: int):
            return chucky.text_result(str(a + b))

        async def go():
            client = chucky.Chucky(url=served.ws_url, token=_chucky_token(chucky, "uma"), model=MODEL)
            session = client.create_session(tools=[sdk_add])
            texts, results = [], []
            for prompt in ('Use add for 7 + 15; CALL add {"a": 7, "b": 15}', "HISTORY?"):
                await session.send(prompt)
                async for message in session.stream():
                    if message.get("type") == "assistant":
                        texts.append(chucky.get_assistant_text(message))
                    if message.get("type") == "result":
                        results.append(message)
            await session.close()
            return texts, results

        texts, results = asyncio.run(go())
        assert [r["subtype"] for r in results] == ["success", "success"]
        assert results[0]["result"] == "results: 22"
        assert results[1]["result"].startswith("history: Use add for 7 + 15")
        assert results[0]["session_id"] == results[1]["session_id"]

    def test_refusals_reach_the_sdk_as_its_errors(self, served):
        chucky = _chucky()

        async def go(tok):
            return await chucky.Chucky(url=served.ws_url, token=tok, model=MODEL).prompt("hi")

        with pytest.raises(RuntimeError, match="signature"):
            asyncio.run(go(chucky.create_token("v", "proj", "wrong-secret-" + "y" * 32, chucky.create_budget(
                1, 1, window_start=datetime.now(timezone.utc).replace(tzinfo=None)))))
        spent = _chucky_token(chucky, "walt", ai=0.2)
        with Raw(served.ws_url, spent) as r:
            r.init()
            r.send(user("spend; USAGE 100000 1"))
            r.until("result")
        with pytest.raises(RuntimeError, match="Budget exceeded"):
            asyncio.run(go(spent))

    def test_tokens_agree_both_ways(self, served):
        chucky = _chucky()
        theirs = _chucky_token(chucky, "xena")
        claims = verify_token(theirs, SECRET)
        assert claims["sub"] == "xena" and claims["budget"]["ai"] == 10_000_000 and claims["budget"]["window"] == "day"
        ours = token("yuri", ai=2.5, hours=1.5)
        assert chucky.verify_token(ours, SECRET) is True and chucky.verify_token(ours, "z" * 40) is False
        assert chucky.decode_token(ours)["payload"]["budget"] == {
            "ai": 2_500_000, "compute": 5400, "window": "day",
            "windowStart": chucky.decode_token(ours)["payload"]["budget"]["windowStart"]}


class TestSecrets:
    def test_secret_and_provider_key_never_leave_the_server(self, served, fake):
        """Last in this module: every frame any test received, and the server's whole output (run with -v)."""
        used = token("leak-check")
        with Raw(served.ws_url, used) as r:
            r.init()
            r.send(user("STATUS 429"))
            r.until("result")
        time.sleep(0.2)
        output = served.output()
        assert "session_started" in output and "[accepted]" in output  # -v logs sessions and handshakes
        everything = output + "\n".join(RECEIVED)
        assert SECRET not in everything and API_KEY not in everything
        assert used.split(".")[2] not in output and "token=[redacted]" in output  # nor tokens
