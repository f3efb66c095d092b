"""Every recorded Anthropic exchange, replayed by a real HTTP server on 127.0.0.1.

Expected values are read from the recorded bodies here, with a deliberately
naive line-by-line reading of the SSE (not convo's parser), and compared
with what AnthropicService parses. The helpers at the top are shared with
the other test_anthropic* modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convo import errors
from convo.providers._retry import RetryPolicy
from convo.providers._sse import iter_sse
from convo.providers.anthropic import AnthropicService, stream_events, to_wire
from convo.messages import (
    Message,
    RawBlock,
    RedactedThinking,
    Request,
    Response,
    StopReason,
    Text,
    Thinking,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
from convo.pricing import PRICES
from convo.service import BlockDone, StreamDone, TextDelta, ThinkingDelta, ToolInputDelta
from tests.recordings import load, recorded_files
from tests.servers import Reply, ScriptedHTTPServer

KEY = "sk-ant-test-key"
FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)


# --- shared helpers -------------------------------------------------------------------

def anthropic_exchanges() -> list[tuple[str, int, dict]]:
    """(file name, index, exchange) for every Anthropic exchange in the recordings."""
    found = []
    for path in recorded_files():
        for i, ex in enumerate(load(path)["exchanges"]):
            req = ex["request"]
            if req is not None:
                if "api.anthropic.com" in req["url"]:
                    found.append((path.name, i, ex))
            elif ex["response"]["body"].startswith("event: message_start"):
                found.append((path.name, i, ex))  # request not kept: the Anthropic SDK's own fixtures
    return found


EXCHANGES = anthropic_exchanges()
OK_EXCHANGES = [e for e in EXCHANGES if e[2]["response"]["status"] == 200]
SSE_EXCHANGES = [e for e in OK_EXCHANGES if e[2]["response"]["body"].startswith("event:")]
JSON_EXCHANGES = [e for e in OK_EXCHANGES if not e[2]["response"]["body"].startswith("event:")]
ERROR_EXCHANGES = [e for e in EXCHANGES if e[2]["response"]["status"] != 200]


def ex_id(e) -> str:
    return f"{Path(e[0]).stem}[{e[1]}]"


def exchange(name: str, index: int = 0) -> dict:
    for n, i, ex in EXCHANGES:
        if n.startswith(name) and i == index:
            return ex
    raise KeyError(name)


def replay_headers(ex: dict) -> dict:
    return {k: v for k, v in ex["response"]["headers"].items() if k.lower() != "set-cookie"}


def reply_for(ex: dict, chunk_size: int | None = None, **kw) -> Reply:
    resp = ex["response"]
    if chunk_size:
        data = resp["body"].encode()
        chunks = tuple(data[i:i + chunk_size] for i in range(0, len(data), chunk_size))
        return Reply(resp["status"], b"", replay_headers(ex), chunks=chunks, **kw)
    return Reply(resp["status"], resp["body"], replay_headers(ex), **kw)


def message_from_sse_text(body: str) -> dict:
    """The message object a recorded SSE body describes, read naively line by line."""
    message: dict = {}
    blocks: dict[int, dict] = {}
    partial: dict[int, str] = {}
    for line in body.split("\n"):
        if not line.startswith("data:"):
            continue
        data = json.loads(line[len("data:"):])
        kind = data["type"]
        if kind == "message_start":
            message = dict(data["message"])
            message["usage"] = dict(message["usage"])
        elif kind == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            b, d = blocks[data["index"]], data["delta"]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            elif d["type"] == "signature_delta":
                b["signature"] += d["signature"]
            elif d["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + d["partial_json"]
            elif d["type"] == "compaction_delta":
                b["content"] = (b.get("content") or "") + d["content"]
            else:
                raise AssertionError(f"recording has a delta this reader does not know: {d['type']}")
        elif kind == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"]["stop_sequence"]
            message["usage"].update(data["usage"])
    for index, raw in partial.items():
        try:
            blocks[index]["input"] = json.loads(raw) if raw else {}
        except ValueError:
            blocks[index]["input"] = {}  # convo's documented choice for a tool input cut off by max_tokens
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def expected_message(ex: dict) -> dict:
    body = ex["response"]["body"]
    return message_from_sse_text(body) if body.startswith("event:") else json.loads(body)


_NEUTRAL = {"text": Text, "thinking": Thinking, "redacted_thinking": RedactedThinking, "tool_use": ToolUse}


def expected_usage(usage: dict) -> dict:
    parts = usage.get("iterations") or [usage]
    total = {k: sum(p.get(k) or 0 for p in parts) for k in
             ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    total["reasoning_tokens"] = (usage.get("output_tokens_details") or {}).get("thinking_tokens", 0)
    return total


def assert_matches(response: Response, message: dict) -> None:
    """``response`` says what the recorded ``message`` says, block by block."""
    assert response.id == message["id"]
    assert response.model == message["model"]
    assert response.stop_reason == message["stop_reason"]
    assert response.stop_sequence == message.get("stop_sequence")
    assert [type(b) for b in response.content] == [_NEUTRAL.get(b["type"], RawBlock) for b in message["content"]]
    for got, want in zip(response.content, message["content"]):
        if isinstance(got, Text):
            assert got.text == want["text"]
        elif isinstance(got, Thinking):
            assert (got.thinking, got.signature) == (want["thinking"], want["signature"])
        elif isinstance(got, RedactedThinking):
            assert got.data == want["data"]
        elif isinstance(got, ToolUse):
            assert (got.id, got.name, got.input) == (want["id"], want["name"], want["input"])
        else:
            assert got.type == want["type"]
            assert got.data == want
    u = response.usage
    assert attrs.asdict(u, filter=lambda a, v: a.name != "cost_usd") == expected_usage(message["usage"])
    assert u.cost_usd is None


def sse_from_message(message: dict, piece: int = 5) -> str:
    """The event stream the API would send for ``message``, deltas cut into ``piece``-char pieces."""
    def event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def cut(s: str) -> list[str]:
        return [s[i:i + piece] for i in range(0, len(s), piece)] or [""]

    usage = dict(message["usage"])
    start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=dict(usage, output_tokens=1))
    out = [event("message_start", {"type": "message_start", "message": start}), event("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            out.append(event("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": {"type": "text", "text": ""}}))
            for p in cut(block["text"]):
                out.append(event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                         "delta": {"type": "text_delta", "text": p}}))
        elif kind == "thinking":
            out.append(event("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": {"type": "thinking", "thinking": "",
                                                                       "signature": ""}}))
            for p in cut(block["thinking"]):
                out.append(event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                         "delta": {"type": "thinking_delta", "thinking": p}}))
            out.append(event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                     "delta": {"type": "signature_delta",
                                                               "signature": block["signature"]}}))
        elif kind == "tool_use":
            out.append(event("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": dict(block, input={})}))
            raw = json.dumps(block["input"]) if block["input"] else ""
            for p in cut(raw):
                out.append(event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                         "delta": {"type": "input_json_delta", "partial_json": p}}))
        else:
            out.append(event("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": block}))
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": message["stop_reason"],
                                                 "stop_sequence": message.get("stop_sequence")},
                                       "usage": {"output_tokens": usage["output_tokens"]}}))
    out.append(event("message_stop", {"type": "message_stop"}))
    return "".join(out)


def without_times(r: Response) -> Response:
    return attrs.evolve(r, start_time=None, end_time=None)


def service_for(url: str, **kw) -> AnthropicService:
    kw.setdefault("retry", FAST)
    return AnthropicService(api_key=KEY, base_url=url, **kw)


def a_request() -> Request:
    return Request(messages=[Message.user("hello")])


def request_from_recorded(body: dict) -> tuple[Request, str]:
    """The neutral Request (and model) a recorded Messages body expresses; what convo cannot model goes to extra."""
    def block(b: dict):
        cache = b.get("cache_control") == {"type": "ephemeral"}
        kind = b["type"]
        if kind == "text":
            return Text(b["text"], citations=b.get("citations") or (), cache=cache)
        if kind == "thinking":
            return Thinking(b["thinking"], b["signature"])
        if kind == "redacted_thinking":
            return RedactedThinking(b["data"])
        if kind == "tool_use":
            return ToolUse(b["id"], b["name"], b["input"], cache=cache)
        if kind == "tool_result":
            content = b.get("content", ())
            if not isinstance(content, str):
                content = tuple(block(c) for c in content)
            return ToolResult(b["tool_use_id"], content, is_error=b.get("is_error", False), cache=cache)
        return RawBlock(b)

    body = dict(body)
    model = body.pop("model")
    messages = [Message(m["role"], [block(b) for b in m["content"]] if isinstance(m["content"], list)
                        else [Text(m["content"])]) for m in body.pop("messages")]
    system = body.pop("system", ())
    system = [Text(system)] if isinstance(system, str) else [block(b) for b in system]
    tools = body.pop("tools", [])
    extra = {}
    if any("input_schema" not in t for t in tools):
        extra["tools"], tools = tools, []  # server tools are passed through extra
    thinking = body.pop("thinking", None)
    if thinking is not None:
        thinking = ThinkingConfig(budget_tokens=thinking.get("budget_tokens"),
                                  adaptive=thinking["type"] == "adaptive", display=thinking.get("display"))
    choice = body.pop("tool_choice", None)
    request = Request(
        messages=messages,
        system=system,
        tools=[ToolSpec(t["name"], t.get("description", ""), t["input_schema"]) for t in tools],
        tool_choice=ToolChoice(choice["type"], choice.get("name"),
                               choice.get("disable_parallel_tool_use", False)) if choice else None,
        max_tokens=body.pop("max_tokens"),
        temperature=body.pop("temperature", None),
        stop_sequences=body.pop("stop_sequences", ()),
        thinking=thinking,
        extra={**{k: v for k, v in body.items() if k != "stream"}, **extra},
    )
    return request, model


def normalized_body(body: dict) -> dict:
    """A Messages body with the spellings that mean the same thing made equal."""
    body = json.loads(json.dumps(body))
    if isinstance(body.get("system"), str):
        body["system"] = [{"type": "text", "text": body["system"]}]
    if body.get("stream") is False:
        del body["stream"]
    for m in body["messages"]:
        if isinstance(m["content"], str):
            m["content"] = [{"type": "text", "text": m["content"]}]
        for b in m["content"]:
            if b["type"] == "tool_result":
                if b.get("is_error") is False:
                    del b["is_error"]
                if isinstance(b.get("content"), str):
                    b["content"] = [{"type": "text", "text": b["content"]}]
    return body


# --- fixtures, parsed -----------------------------------------------------------------------

class TestRecordedReplies:
    """The parsed Response says what each recorded reply says."""

    def test_the_recordings_cover_what_the_issue_lists(self):
        bodies = " ".join(e[2]["response"]["body"] for e in EXCHANGES)
        for what in ("tool_use", "thinking", "signature_delta", "redacted_thinking", "server_tool_use",
                     "cache_read_input_tokens", "stop_sequence", "not_found_error", "invalid_request_error"):
            assert what in bodies
        assert len(SSE_EXCHANGES) >= 10 and len(JSON_EXCHANGES) >= 8 and len(ERROR_EXCHANGES) == 2

    @pytest.mark.parametrize("ex", JSON_EXCHANGES, ids=ex_id)
    def test_json_reply_via_do(self, ex):
        with ScriptedHTTPServer([reply_for(ex[2])]) as server:
            response = service_for(server.url).do(a_request())
        assert_matches(response, expected_message(ex[2]))
        assert len(server.requests) == 1

    @pytest.mark.parametrize("chunk_size", [None, 7], ids=["whole", "7-byte-chunks"])
    @pytest.mark.parametrize("ex", SSE_EXCHANGES, ids=ex_id)
    def test_sse_reply_via_stream(self, ex, chunk_size):
        with ScriptedHTTPServer([reply_for(ex[2], chunk_size)]) as server:
            events = list(service_for(server.url).stream(a_request()))
        assert isinstance(events[-1], StreamDone)
        assert not any(isinstance(e, StreamDone) for e in events[:-1])
        response = events[-1].response
        message = expected_message(ex[2])
        assert_matches(response, message)
        # Deltas add up to the blocks, and every block is announced done once, in order.
        done = [e for e in events if isinstance(e, BlockDone)]
        assert [e.index for e in done] == list(range(len(message["content"])))
        assert tuple(e.block for e in done) == response.content
        for index, block in enumerate(response.content):
            if isinstance(block, Text):
                assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index) == block.text
            if isinstance(block, Thinking):
                assert "".join(e.thinking for e in events
                               if isinstance(e, ThinkingDelta) and e.index == index) == block.thinking
            if isinstance(block, ToolUse) and block.input:
                pieces = [e for e in events if isinstance(e, ToolInputDelta) and e.index == index]
                assert {(e.id, e.name) for e in pieces} == {(block.id, block.name)}
                assert json.loads("".join(e.partial_json for e in pieces)) == block.input

    @pytest.mark.parametrize("ex", JSON_EXCHANGES, ids=ex_id)
    def test_do_and_stream_agree_on_json_recordings(self, ex):
        message = json.loads(ex[2]["response"]["body"])
        with ScriptedHTTPServer([reply_for(ex[2]), Reply.sse(sse_from_message(message), chunk_size=11)]) as server:
            service = service_for(server.url)
            via_do = service.do(a_request())
            via_stream = list(service.stream(a_request()))[-1].response
        assert without_times(via_do) == without_times(via_stream)

    @pytest.mark.parametrize("ex", SSE_EXCHANGES, ids=ex_id)
    def test_do_and_stream_agree_on_sse_recordings(self, ex):
        message = message_from_sse_text(ex[2]["response"]["body"])
        with ScriptedHTTPServer([reply_for(ex[2]), Reply.json(message)]) as server:
            service = service_for(server.url)
            via_stream = list(service.stream(a_request()))[-1].response
            via_do = service.do(a_request())
        assert without_times(via_do) == without_times(via_stream)

    def test_times_are_utc_and_ordered(self):
        ex = exchange("sketch__basic_convo")
        with ScriptedHTTPServer([reply_for(ex)]) as server:
            r = service_for(server.url).do(a_request())
        assert r.start_time.tzinfo is not None and r.start_time.utcoffset().total_seconds() == 0
        assert r.start_time <= r.end_time

    def test_every_recorded_model_is_priced(self):
        models = {expected_message(ex)["model"] for _, _, ex in OK_EXCHANGES}
        models |= {ex["request"]["body"]["model"] for _, _, ex in EXCHANGES if ex["request"]}
        models.discard("claude-does-not-exist")
        assert {m for m in models if PRICES.lookup(m) is None} == set()


class TestRecordedSpecifics:
    """Hand-checked values from particular recordings, so a shared mistake cannot hide."""

    def replay(self, name, index=0, chunk_size=None):
        ex = exchange(name, index)
        with ScriptedHTTPServer([reply_for(ex, chunk_size)]) as server:
            service = service_for(server.url)
            if ex["response"]["body"].startswith("event:"):
                return list(service.stream(a_request()))[-1].response
            return service.do(a_request())

    def test_thinking_then_tool_use_with_signature(self):
        r = self.replay("llm-anthropic__test_fixed_version_tool_chain", chunk_size=7)
        thinking, call = r.content
        assert thinking.signature.startswith("EoQDCm0IDhgCKkCDzGs2kL2P") and thinking.signature.endswith("xgB")
        assert thinking.thinking.startswith("The user wants me to:\n1. Use the fixed_version tool")
        assert call == ToolUse("toolu_01825dXWLSoJwCst1qTsiWdb", "fixed_version", {})
        assert r.stop_reason == StopReason.TOOL_USE
        assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.reasoning_tokens) == (598, 92, 53)

    def test_parallel_tool_uses_keep_their_order(self):
        r = self.replay("pydantic-ai__test_multiple_parallel_tool_calls")
        assert [(t.id, t.input["name"]) for t in r.tool_uses()] == [
            ("toolu_0167cfEnoQaPviGdVXA95zcu", "Alice"), ("toolu_01EEe2V5HD1Ac4rKiUR4HD2T", "Bob"),
            ("toolu_01XFyAjstT3966qvRynZyVPo", "Charlie"), ("toolu_013mnQZbgtK2oe3Mo3XKJsx3", "Daisy")]

    def test_cache_tokens(self):
        r = self.replay("pydantic-ai__test_anthropic_cache_real_api", 1)
        assert (r.usage.input_tokens, r.usage.cache_creation_input_tokens, r.usage.cache_read_input_tokens,
                r.usage.output_tokens) == (3, 418, 1111, 33)
        assert self.replay("sketch__agent_loop").usage.cache_creation_input_tokens == 3811

    def test_cache_tokens_are_priced_at_their_own_rates(self):
        r = self.replay("pydantic-ai__test_anthropic_cache_real_api", 1)
        from decimal import Decimal
        # claude-sonnet-4-5: $3 input, $15 output, $3.75 cache write, $0.30 cache read per million.
        assert PRICES.cost(r.model, r.usage) == (3 * Decimal(3) + 33 * Decimal(15) + 418 * Decimal("3.75")
                                                 + 1111 * Decimal("0.30")) / 1_000_000

    def test_stop_sequence(self):
        r = self.replay("llm-anthropic__test_prompt_with_prefill")
        assert (r.stop_reason, r.stop_sequence) == (StopReason.STOP_SEQUENCE, "```")
        assert r.text() == '\ndef pelican():\n    return "A large waterbird with a long bill and a throat pouch for catching fish."\n'

    def test_redacted_thinking(self):
        r = self.replay("pydantic-ai__test_anthropic_model_thinking_part_redacted")
        assert [type(b) for b in r.content] == [RedactedThinking, RedactedThinking, Text]
        assert r.content[1].data.startswith("EtgBCkYIBxgCKkDQfGkw") and r.content[1].data.endswith("0GAE=")

    def test_server_tool_blocks_are_raw_with_their_streamed_input(self):
        r = self.replay("pydantic-ai__test_anthropic_code_execution_tool_stream", chunk_size=7)
        call, result = r.content[2], r.content[3]
        assert call.data == {"type": "server_tool_use", "id": "srvtoolu_01MwXaweAHve88x6s3Fc8x6Q",
                             "name": "bash_code_execution",
                             "input": {"command": 'echo "65465-6544 * 65464-6+1.02255" | bc -l'}}
        assert result.type == "bash_code_execution_tool_result"
        assert result.data["content"]["stdout"] == "-428330955.97745\n"
        assert r.tool_uses() == []

    def test_compaction_block_and_usage_summed_over_iterations(self):
        r = self.replay("pydantic-ai__test_anthropic_compaction_usage_with_cache_streaming")
        compaction = r.content[0]
        assert compaction.type == "compaction"
        assert compaction.data["content"].startswith("The user provided a very long context")
        assert r.text() == "Hello! 👋"
        # Top level says 181 in / 8 out; the compaction step (100 in, 83 out, 55096 cached) is billed too.
        u = r.usage
        assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == (281, 91, 55096)

    def test_adaptive_thinking_between_texts(self):
        r = self.replay("llm-anthropic__test_opus_46_adaptive_thinking", chunk_size=7)
        assert [type(b) for b in r.content] == [Text, Thinking, Text]
        assert r.content[1].thinking == "Brief answer with two pet pelican names."
        assert r.content[2].text == "1. **Captain Scoop**\n2. **Gullet**"

    def test_tool_input_cut_off_by_max_tokens(self):
        """The partial tool input is not guessed at: the call keeps its id and name with input {}."""
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            r = self.replay("anthropic-sdk-python__incomplete_partial_json", chunk_size=7)
        assert r.stop_reason == StopReason.MAX_TOKENS
        assert r.text().endswith("Let me do that for you now.")
        assert r.tool_uses() == [ToolUse("toolu_01EKqbqmZrGRXy18eN7m9kvY", "make_file", {})]
        warning = [e for e in logs if e["event"] == "tool_input_incomplete"]
        assert warning and warning[0]["tool_name"] == "make_file" and warning[0]["log_level"] == "warning"
        assert (r.usage.input_tokens, r.usage.output_tokens) == (450, 124)

    def test_tool_input_streamed_as_only_empty_string_is_empty_dict(self):
        r = self.replay("llm-anthropic__test_tools")
        assert [t.input for t in r.tool_uses()] == [{}, {}]

    def test_request_id_header_is_used_for_format_errors(self):
        with ScriptedHTTPServer([Reply(200, "{not json", {"content-type": "application/json",
                                                          "request-id": "req_bad"})]) as server:
            with pytest.raises(errors.ResponseFormatError) as info:
                service_for(server.url).do(a_request())
        assert info.value.request_id == "req_bad"


class TestRecordedErrors:
    """The recorded 400 and 404 bodies become typed errors with every field."""

    def test_count_tokens_404(self):
        ex = exchange("pydantic-ai__test_anthropic_count_tokens_error")
        with ScriptedHTTPServer([reply_for(ex)]) as server:
            service = service_for(server.url, model="claude-does-not-exist")
            with pytest.raises(errors.NotFoundError) as info:
                service.count_tokens(Request(messages=[Message.user("hello")]))
        e = info.value
        assert (e.status_code, e.error_type, e.message, e.request_id) == (
            404, "not_found_error", "model: claude-does-not-exist", "req_011CVEA3SF7rnb3DuBZytqQa")
        assert isinstance(e, LookupError)
        assert server.requests[0].path == "/v1/messages/count_tokens"
        assert server.requests[0].json() == {k: v for k, v in ex["request"]["body"].items()}
        assert len(server.requests) == 1

    @pytest.mark.parametrize("streaming", [False, True])
    def test_unsupported_effort_400(self, streaming):
        ex = exchange("pydantic-ai__test_anthropic_explicit_effort_xhigh")
        with ScriptedHTTPServer([reply_for(ex)]) as server:
            service = service_for(server.url, model="claude-opus-4-6")
            request = Request(messages=[Message.user("What is 2+2?")], max_tokens=4096,
                              extra={"output_config": {"effort": "xhigh"}})
            with pytest.raises(errors.InvalidRequestError) as info:
                if streaming:
                    list(service.stream(request))
                else:
                    service.do(request)
        e = info.value
        assert (e.status_code, e.error_type, e.request_id) == (400, "invalid_request_error", "req_011Ca7jT9AHpgXgdv8igm4z9")
        assert e.message == "This model does not support effort level 'xhigh'. Supported levels: high, low, max, medium."
        assert isinstance(e, ValueError)
        assert len(server.requests) == 1  # a 400 is not retried
        sent = server.requests[0].json()
        assert sent["output_config"] == {"effort": "xhigh"} and sent.get("stream", False) is streaming


# --- recorded requests -------------------------------------------------------------------------

RECORDED_REQUESTS = [e for e in EXCHANGES if e[2]["request"] and e[2]["request"]["url"].split("?")[0].endswith(
    "/v1/messages")]


class TestRecordedRequests:
    """to_wire of the neutral equivalent of each recorded request sends the same body."""

    @pytest.mark.parametrize("ex", RECORDED_REQUESTS, ids=ex_id)
    def test_same_body(self, ex):
        recorded = ex[2]["request"]["body"]
        request, model = request_from_recorded(recorded)
        body = to_wire(request, model=model, max_tokens=1, stream=bool(recorded.get("stream")))
        assert normalized_body(body) == normalized_body(recorded)

    def test_thinking_tool_chain_second_request_is_byte_identical(self):
        """The thinking block and signature go back exactly as they came (the whole body, in fact)."""
        first, second = exchange("llm-anthropic__test_fixed_version_tool_chain", 0), \
            exchange("llm-anthropic__test_fixed_version_tool_chain", 1)
        with ScriptedHTTPServer([reply_for(first, 7), reply_for(second)]) as server:
            service = service_for(server.url, model="claude-haiku-4-5-20251001", max_tokens=64000,
                                  thinking=ThinkingConfig(budget_tokens=1024, display="summarized"))
            spec = ToolSpec("fixed_version", "Return a fixed test version string",
                            {"properties": {}, "type": "object"})
            question = Message.user("Use the fixed_version tool. Then tell me the version and make one short "
                                    "joke about it. Think about it first.")
            r1 = list(service.stream(Request([question], tools=[spec], temperature=1.0)))[-1].response
            call = r1.tool_uses()[0]
            history = [question, r1.to_message(), Message.user("", ToolResult(call.id, "0.32a0"))]
            r2 = list(service.stream(Request(history, tools=[spec], temperature=1.0)))[-1].response
        assert server.requests[0].json() == first["request"]["body"]
        assert server.requests[1].json() == second["request"]["body"]
        assert r2.text().startswith("The version is **0.32a0**.")

    def test_tool_with_thinking_json_chain(self):
        first, second = exchange("pydantic-ai__test_anthropic_tool_with_thinking", 0), \
            exchange("pydantic-ai__test_anthropic_tool_with_thinking", 1)
        with ScriptedHTTPServer([reply_for(first), reply_for(second)]) as server:
            service = service_for(server.url, model="claude-sonnet-4-0", max_tokens=4096,
                                  thinking=ThinkingConfig(budget_tokens=3000))
            spec = ToolSpec("get_user_country", "", {"additionalProperties": False, "properties": {},
                                                     "type": "object"})
            question = Message.user("What is the largest city in the user country?")
            r1 = service.do(Request([question], tools=[spec], tool_choice=ToolChoice.auto()))
            history = [question, r1.to_message(), Message.user("", ToolResult(r1.tool_uses()[0].id, "Mexico"))]
            service.do(Request(history, tools=[spec], tool_choice=ToolChoice.auto()))
        assert normalized_body(server.requests[1].json()) == normalized_body(second["request"]["body"])
        sent_thinking = server.requests[1].json()["messages"][1]["content"][0]
        assert sent_thinking == json.loads(first["response"]["body"])["content"][0]


# --- chunk boundaries, as a property ---------------------------------------------------------

@pytest.mark.parametrize("name", ["llm-anthropic__test_stream_events_thinking",
                                  "pydantic-ai__test_anthropic_code_execution_tool_stream"])
def test_any_chunking_gives_the_same_response(name):
    """However the bytes are split, even inside a UTF-8 character, the response is the same."""
    data = exchange(name)["response"]["body"].encode()
    whole = list(stream_events(iter_sse([data])))[-1].response

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=40))
    def check(cuts):
        bounds = [0, *sorted(cuts), len(data)]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        assert list(stream_events(iter_sse(chunks)))[-1].response == whole

    check()
