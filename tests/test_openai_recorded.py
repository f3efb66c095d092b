"""OpenAIService replaying every recorded OpenAI and OpenRouter exchange from a real local server."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from convo import (
    InvalidRequestError,
    Message,
    RateLimitError,
    Request,
    Response,
    RetryPolicy,
    Role,
    StopReason,
    StreamDone,
    Text,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)
from convo.providers.openai import OpenAIService, to_wire
from convo.service import BlockDone, TextDelta, ToolInputDelta, collect
from tests.recordings import load, recorded_files
from tests.servers import Reply, ScriptedHTTPServer

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def _is_openai(exchange: dict) -> bool:
    url = (exchange.get("request") or {}).get("url") or ""
    return "openai.com" in url or "openrouter.ai" in url


OPENAI_FILES = [f for f in recorded_files() if any(_is_openai(e) for e in load(f)["exchanges"])]
EXCHANGES = [
    pytest.param(f, i, id=f"{f.stem}[{i}]")
    for f in OPENAI_FILES
    for i, e in enumerate(load(f)["exchanges"])
    if _is_openai(e)
]


def test_the_recorded_openai_traffic_is_all_here():
    """Guards the parametrised tests below against an empty or moved fixture directory."""
    assert len(OPENAI_FILES) == 10
    assert len(EXCHANGES) == 21


# --- helpers -------------------------------------------------------------------


def _is_sse(response: dict) -> bool:
    return "event-stream" in response["headers"].get("content-type", "")


def reply_for(exchange: dict, chunk_size: int | None = None) -> Reply:
    """The recorded response as a scripted reply, optionally cut into tiny chunks."""
    r = exchange["response"]
    headers = {k: v for k, v in r["headers"].items() if k.lower() not in _HOP_BY_HOP}
    if chunk_size and _is_sse(r):
        return Reply.sse(r["body"], chunk_size=chunk_size, headers=headers)
    return Reply(r["status"], r["body"], headers)


def neutral_request(wire: dict) -> Request:
    """The neutral Request a convo user would send to produce the recorded wire body."""
    system: list[str] = []
    messages: list[Message] = []
    for m in wire["messages"]:
        role = m["role"]
        if role in ("system", "developer"):
            system.append(m["content"])
        elif role == "user":
            messages.append(Message.user(m["content"]))
        elif role == "assistant":
            blocks: list = [Text(m["content"])] if m.get("content") else []
            for tc in m.get("tool_calls") or ():
                blocks.append(ToolUse(tc["id"], tc["function"]["name"], json.loads(tc["function"]["arguments"])))
            if blocks:
                messages.append(Message(Role.ASSISTANT, blocks))
        elif role == "tool":
            result = ToolResult(m["tool_call_id"], m["content"])
            last = messages[-1] if messages else None
            if last is not None and last.role == Role.USER and all(isinstance(b, ToolResult) for b in last.content):
                messages[-1] = Message(Role.USER, last.content + (result,))
            else:
                messages.append(Message(Role.USER, [result]))
    tools = [
        ToolSpec(t["function"]["name"], t["function"].get("description", ""), t["function"]["parameters"])
        for t in wire.get("tools") or ()
    ]
    choice = wire.get("tool_choice")
    if isinstance(choice, dict):
        tool_choice = ToolChoice.tool(choice["function"]["name"])
    elif choice is not None:
        tool_choice = ToolChoice({"auto": "auto", "required": "any", "none": "none"}[choice])
    else:
        tool_choice = None
    modelled = {"model", "messages", "tools", "tool_choice", "stream", "stream_options"}
    extra = {k: v for k, v in wire.items() if k not in modelled}
    return Request(messages, system=[Text(s) for s in system], tools=tools, tool_choice=tool_choice, extra=extra)


def essentials(body: dict) -> dict:
    """What must survive to_wire: roles, contents, tool calls and their ids, tools, tool_choice, streaming."""
    messages = []
    for m in body["messages"]:
        if m["role"] == "assistant" and not m.get("content") and not m.get("tool_calls"):
            continue  # simonw/llm sends an empty assistant message before the tool calls
        role = "system" if m["role"] == "developer" else m["role"]
        out = {"role": role, "content": m.get("content") or None}
        if m.get("tool_calls"):
            out["tool_calls"] = [
                (tc["id"], tc["type"], tc["function"]["name"], json.loads(tc["function"]["arguments"]))
                for tc in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            out["tool_call_id"] = m["tool_call_id"]
        messages.append(out)
    # consecutive assistant messages (again simonw/llm) are one turn
    merged: list[dict] = []
    for m in messages:
        if merged and m["role"] == "assistant" and merged[-1]["role"] == "assistant":
            merged[-1] = {**merged[-1], **{k: v for k, v in m.items() if v}}
        else:
            merged.append(m)
    tools = [
        (t["type"], t["function"]["name"], t["function"].get("description") or "", t["function"]["parameters"])
        for t in body.get("tools") or ()
    ]
    return {
        "model": body["model"],
        "messages": merged,
        "tools": tools,
        "tool_choice": body.get("tool_choice"),
        "stream": bool(body.get("stream")),
        "stream_options": body.get("stream_options"),
        "extra": {k: body[k] for k in ("n", "web_search_options") if k in body},
    }


def expected_response(body_text: str) -> dict:
    """What the recorded body says, read naively: text, tool calls, finish reason, usage."""
    if body_text.lstrip().startswith("data:"):
        chunks = [json.loads(line[5:]) for line in body_text.splitlines()
                  if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    else:
        body = json.loads(body_text)
        choice = body["choices"][0]
        message = choice["message"]
        chunks = [{
            "id": body["id"], "model": body["model"], "usage": body.get("usage"),
            "choices": [{"delta": {"content": message.get("content"), "tool_calls": [
                {**tc, "index": i} for i, tc in enumerate(message.get("tool_calls") or ())
            ]}, "finish_reason": choice["finish_reason"]}],
        }]
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or ():
                call = calls.setdefault(tc["index"], {"id": None, "name": None, "args": ""})
                call["id"] = call["id"] or tc.get("id")
                call["name"] = call["name"] or tc.get("function", {}).get("name")
                call["args"] += tc.get("function", {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {
        "id": chunks[0]["id"],
        "model": chunks[0]["model"],
        "text": text,
        "tool_calls": [(c["id"], c["name"], json.loads(c["args"] or "{}")) for _, c in sorted(calls.items())],
        "finish_reason": finish,
        "prompt_tokens": usage["prompt_tokens"],
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
    }


def service_for(server: ScriptedHTTPServer, exchange: dict, **kw) -> OpenAIService:
    path = urlsplit(exchange["request"]["url"]).path
    base = path[: -len("/chat/completions")]
    kw.setdefault("retry", RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02))
    return OpenAIService(api_key="sk-test-recorded", model=exchange["request"]["body"]["model"],
                         base_url=server.url + base, **kw)


def call(service: OpenAIService, request: Request, stream: bool) -> tuple[Response, list]:
    if stream:
        events = list(service.stream(request))
        return collect(events), events
    return service.do(request), []


_FINISH = {"stop": StopReason.END_TURN, "tool_calls": StopReason.TOOL_USE, None: StopReason.TOOL_USE}


# --- every exchange ---------------------------------------------------------------


@pytest.mark.parametrize("path,index", EXCHANGES)
class TestEveryExchange:
    def test_to_wire_reproduces_the_recorded_request(self, path: Path, index: int):
        """The neutral equivalent of the recorded request goes out with the same roles, calls and ids."""
        wire = load(path)["exchanges"][index]["request"]["body"]
        ours = to_wire(neutral_request(wire), wire["model"], stream=bool(wire.get("stream")))
        assert essentials(ours) == essentials(wire)

    @pytest.mark.parametrize("chunk_size", [None, 7])
    def test_replayed_exchange_parses_to_what_the_body_says(self, path: Path, index: int, chunk_size):
        """Replayed from 127.0.0.1 (SSE also in 7-byte chunks), the reply parses to the recorded values or error."""
        exchange = load(path)["exchanges"][index]
        wire = exchange["request"]["body"]
        stream = bool(wire.get("stream"))
        with ScriptedHTTPServer([reply_for(exchange, chunk_size)] * 3) as server:
            service = service_for(server, exchange, retry=RetryPolicy.none())
            status = exchange["response"]["status"]
            if status != 200:
                with pytest.raises(Exception) as info:
                    call(service, neutral_request(wire), stream)
                err = json.loads(exchange["response"]["body"])["error"]
                assert info.value.status_code == status
                assert info.value.message.startswith(err["message"])
                return
            response, events = call(service, neutral_request(wire), stream)
        sent = server.requests[0]
        assert sent.path == urlsplit(exchange["request"]["url"]).path
        assert essentials(sent.json()) == essentials(wire)
        assert sent.headers["authorization"] == "Bearer sk-test-recorded"

        want = expected_response(exchange["response"]["body"])
        assert response.id == want["id"]
        assert response.model == want["model"]
        assert response.text() == want["text"]
        assert [(t.id, t.name, t.input) for t in response.tool_uses()] == want["tool_calls"]
        assert response.stop_reason == _FINISH[want["finish_reason"]]
        assert response.stop_sequence is None
        assert response.usage == Usage(
            input_tokens=want["prompt_tokens"] - want["cached_tokens"],
            output_tokens=want["completion_tokens"],
            cache_read_input_tokens=want["cached_tokens"],
            reasoning_tokens=want["reasoning_tokens"],
        )
        assert response.usage.cost_usd is None
        assert response.start_time is not None and response.end_time >= response.start_time
        assert response.start_time.utcoffset().total_seconds() == 0
        if stream:
            assert isinstance(events[-1], StreamDone)
            done = [e.index for e in events if isinstance(e, BlockDone)]
            assert done == list(range(len(response.content)))
            if response.text():
                assert "".join(e.text for e in events if isinstance(e, TextDelta)) == response.text()
            for i, tool_use in enumerate(response.tool_uses()):
                fragments = [e for e in events if isinstance(e, ToolInputDelta) and e.id == tool_use.id]
                assert fragments and all(e.name == tool_use.name for e in fragments)
                assert json.loads("".join(e.partial_json for e in fragments) or "{}") == tool_use.input


STREAMED = [p for p in EXCHANGES if _is_sse(load(p.values[0])["exchanges"][p.values[1]]["response"])]


@pytest.mark.parametrize("path,index", STREAMED)
def test_stream_and_do_build_the_same_response_for_the_same_reply(path: Path, index: int):
    """A recorded stream, and the equivalent non-streamed body, give equal Responses."""
    exchange = load(path)["exchanges"][index]
    want = expected_response(exchange["response"]["body"])
    message: dict = {"role": "assistant", "content": want["text"] or None}
    if want["tool_calls"]:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in want["tool_calls"]
        ]
    body = {
        "id": want["id"], "model": want["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": want["finish_reason"]}],
        "usage": {"prompt_tokens": want["prompt_tokens"], "completion_tokens": want["completion_tokens"],
                  "prompt_tokens_details": {"cached_tokens": want["cached_tokens"]},
                  "completion_tokens_details": {"reasoning_tokens": want["reasoning_tokens"]}},
    }
    wire = exchange["request"]["body"]
    with ScriptedHTTPServer([reply_for(exchange), Reply.json(body)]) as server:
        service = service_for(server, exchange)
        streamed = collect(service.stream(neutral_request(wire)))
        done = service.do(neutral_request(wire))
    strip = dict(start_time=None, end_time=None)
    assert attrs.evolve(streamed, **strip) == attrs.evolve(done, **strip)


# --- named recordings, with their values spelled out -------------------------------


def _exchange(stem: str, index: int) -> dict:
    return load(next(f for f in OPENAI_FILES if f.stem == stem))["exchanges"][index]


class TestRecordedValues:
    def test_streamed_tool_call_from_openai(self):
        """gpt-4o-mini streams one call's arguments in fragments, then a usage-only chunk."""
        exchange = _exchange("llm__test_tool_use_basic", 0)
        with ScriptedHTTPServer([reply_for(exchange, chunk_size=5)]) as server:
            response = collect(service_for(server, exchange).stream(neutral_request(exchange["request"]["body"])))
        assert response.id == "chatcmpl-BWlJBDk2xe66hjff60joVYpXi1hh4"
        assert response.model == "gpt-4o-mini-2024-07-18"
        assert response.content == (ToolUse("call_1EYWDzueHEp8OsB8jJSEp7WB", "multiply", {"a": 1231, "b": 2331}),)
        assert response.stop_reason == StopReason.TOOL_USE
        assert response.usage == Usage(input_tokens=54, output_tokens=20)

    def test_streamed_text_after_a_tool_result(self):
        exchange = _exchange("llm__test_tool_use_basic", 1)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            response = collect(service_for(server, exchange).stream(neutral_request(exchange["request"]["body"])))
        assert response.text() == "The result of \\( 1231 \\times 2331 \\) is \\( 2,869,461 \\)."
        assert response.stop_reason == StopReason.END_TURN
        assert response.usage == Usage(input_tokens=87, output_tokens=26)

    def test_provider_repeating_id_and_name_in_every_chunk(self):
        """OpenRouter's Novita repeats id "0" and the name, sends no finish reason, and usage inside a choice chunk."""
        exchange = _exchange("llm__test_tools_streaming_variant_a", 0)
        with ScriptedHTTPServer([reply_for(exchange, chunk_size=3)]) as server:
            events = list(service_for(server, exchange).stream(neutral_request(exchange["request"]["body"])))
        response = collect(events)
        assert response.content == (ToolUse("0", "llm_version", {}),)
        assert response.stop_reason == StopReason.TOOL_USE  # inferred: the stream never says
        assert response.usage == Usage(input_tokens=57, output_tokens=17)
        assert response.model == "moonshotai/kimi-k2"
        assert {e.name for e in events if isinstance(e, ToolInputDelta)} == {"llm_version"}

    def test_parallel_tool_calls_streamed_by_index(self):
        exchange = _exchange("pydantic-ai__test_complex_agent_run_sequential_tool", 0)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            response = collect(service_for(server, exchange).stream(neutral_request(exchange["request"]["body"])))
        assert response.content == (
            ToolUse("call_3rqTYrA6H21AYUaRGP4F66oq", "get_country", {}),
            ToolUse("call_Xw9XMKBJU48kAAd78WgIswDx", "get_product_name", {}),
        )
        assert response.usage == Usage(input_tokens=364, output_tokens=40)

    def test_nested_arguments_streamed_in_fragments(self):
        exchange = _exchange("pydantic-ai__test_complex_agent_run_sequential_tool", 2)
        with ScriptedHTTPServer([reply_for(exchange, chunk_size=11)]) as server:
            response = collect(service_for(server, exchange).stream(neutral_request(exchange["request"]["body"])))
        (call_,) = response.tool_uses()
        assert call_.id == "call_4kc6691zCzjPnOuEtbEGUvz2"
        assert call_.input == {"answers": [
            {"label": "Capital of the country", "answer": "Mexico City"},
            {"label": "Weather in the capital", "answer": "Sunny"},
            {"label": "Product Name", "answer": "Pydantic AI"},
        ]}
        assert response.usage == Usage(input_tokens=448, output_tokens=49)

    def test_parallel_tool_calls_in_one_json_reply(self):
        exchange = _exchange("pydantic-ai__test_dbos_agent_with_hitl_tool", 0)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            response = service_for(server, exchange).do(neutral_request(exchange["request"]["body"]))
        assert response.content == (
            ToolUse("call_jYdIdRZHxZTn5bWCq5jlMrJi", "delete_file", {"path": ".env"}),
            ToolUse("call_TmlTVWQbzrXCZ4jNsCVNbNqu", "create_file", {"path": "test.txt"}),
        )
        assert response.stop_reason == StopReason.TOOL_USE
        assert response.usage == Usage(input_tokens=71, output_tokens=46)

    def test_final_text_after_two_tool_results(self):
        exchange = _exchange("pydantic-ai__test_dbos_agent_with_hitl_tool", 1)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            response = service_for(server, exchange).do(neutral_request(exchange["request"]["body"]))
        assert response.text() == "The file `.env` has been deleted and `test.txt` has been created successfully."
        assert response.stop_reason == StopReason.END_TURN
        assert response.usage == Usage(input_tokens=133, output_tokens=19)
        sent = server.requests[0].json()["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
        assert [m.get("tool_call_id") for m in sent[3:]] == ["call_jYdIdRZHxZTn5bWCq5jlMrJi",
                                                              "call_TmlTVWQbzrXCZ4jNsCVNbNqu"]
        assert [m["content"] for m in sent[3:]] == ["true", "Success"]

    def test_request_id_is_kept_from_the_response_headers(self):
        exchange = _exchange("llm__test_tool_use_chain_of_two_calls", 2)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            response = service_for(server, exchange).do(neutral_request(exchange["request"]["body"]))
        assert response.text() == "YES"
        assert response.usage == Usage(input_tokens=146, output_tokens=3)

    def test_openai_400_with_a_code(self):
        exchange = _exchange("pydantic-ai__test_openai_o1_mini_system_role-developer", 0)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            with pytest.raises(InvalidRequestError) as info:
                service_for(server, exchange).do(neutral_request(exchange["request"]["body"]))
        err = info.value
        assert isinstance(err, ValueError)
        assert (err.status_code, err.error_type) == (400, "invalid_request_error")
        assert err.message == "Unsupported value: 'messages[0].role' does not support 'developer' with this model."
        assert len(server.requests) == 1  # a 400 is not retried

    def test_openai_400_with_a_null_code(self):
        exchange = _exchange("pydantic-ai__test_openai_web_search_tool_model_not_supported", 0)
        with ScriptedHTTPServer([reply_for(exchange)]) as server:
            with pytest.raises(InvalidRequestError) as info:
                service_for(server, exchange).do(neutral_request(exchange["request"]["body"]))
        assert (info.value.status_code, info.value.error_type) == (400, "invalid_request_error")
        assert info.value.message == "Web search options not supported with this model."
        sent = server.requests[0].json()
        assert sent["web_search_options"] == {"search_context_size": "low"}  # Request.extra went out

    def test_openrouter_429_storm_exhausts_the_retries(self):
        """Three recorded OpenRouter 429s (integer code, no type) use up three attempts."""
        exchanges = load(next(f for f in OPENAI_FILES if "openrouter" in f.stem))["exchanges"]
        with ScriptedHTTPServer([reply_for(e) for e in exchanges]) as server:
            service = service_for(server, exchanges[0])
            with pytest.raises(RateLimitError) as info:
                service.do(neutral_request(exchanges[0]["request"]["body"]))
        err = info.value
        assert len(server.requests) == 3
        assert server.requests[0].path == "/api/v1/chat/completions"
        assert err.status_code == 429
        assert err.error_type is None
        assert err.message == (
            "Provider returned error (Google: google/gemini-2.0-flash-exp:free is temporarily rate-limited "
            "upstream. Please retry shortly, or add your own key to accumulate your rate limits: "
            "https://openrouter.ai/settings/integrations)"
        )
        assert "429" in str(err) and "Provider returned error" in str(err)

    def test_to_wire_of_a_multi_turn_request_matches_the_recording_exactly(self):
        """pydantic-ai's third turn: two parallel results, then one more call; the messages match field for field."""
        wire = _exchange("pydantic-ai__test_complex_agent_run_sequential_tool", 2)["request"]["body"]
        request = Request(
            [
                Message.user("Tell me: the capital of the country; the weather there; the product name"),
                Message.assistant("", ToolUse("call_3rqTYrA6H21AYUaRGP4F66oq", "get_country", {}),
                                  ToolUse("call_Xw9XMKBJU48kAAd78WgIswDx", "get_product_name", {})),
                Message.user("", ToolResult("call_3rqTYrA6H21AYUaRGP4F66oq", "Mexico"),
                             ToolResult("call_Xw9XMKBJU48kAAd78WgIswDx", "Pydantic AI")),
                Message.assistant("", ToolUse("call_Vz0Sie91Ap56nH0ThKGrZXT7", "get_weather", {"city": "Mexico City"})),
                Message.user("", ToolResult("call_Vz0Sie91Ap56nH0ThKGrZXT7", "sunny")),
            ],
            tools=[ToolSpec(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
                   for t in wire["tools"]],
            tool_choice=ToolChoice.any(),
        )
        ours = to_wire(request, "gpt-4o", stream=True)
        for mine, theirs in zip(ours["messages"], wire["messages"], strict=True):
            assert mine["role"] == theirs["role"]
            assert (mine.get("content") or None) == (theirs.get("content") or None)  # "" for no text
            assert mine.get("tool_call_id") == theirs.get("tool_call_id")
            assert [(c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in mine.get("tool_calls", ())] == \
                   [(c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in theirs.get("tool_calls", ())]
        assert ours["tool_choice"] == "required"
        assert ours["stream_options"] == {"include_usage": True}


def test_recorded_models_are_priced():
    """Every OpenAI model in the recordings resolves in the price table (router models need not)."""
    from convo.pricing import PRICES

    models = set()
    for f in OPENAI_FILES:
        for e in load(f)["exchanges"]:
            if e["response"]["status"] == 200:
                want = expected_response(e["response"]["body"])
                models.add(want["model"])
            models.add(e["request"]["body"]["model"])
    openai_models = {m for m in models if m.startswith(("gpt-", "o1", "o3", "o4"))}
    assert openai_models == {"gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-mini", "gpt-4o-mini-2024-07-18",
                             "gpt-4.1-mini", "o1-mini"}
    assert all(PRICES.lookup(m) is not None for m in openai_models)
