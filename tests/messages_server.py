"""A tiny Anthropic Messages protocol peer for tests, with fault injection.

:func:`answer` reads a real request body and plays a plausible model: with
tools available it first asks for ``tool_calls`` of them in parallel, and
once the tool results arrive it ends its turn with text. It answers in JSON
or, when the request asks to stream, in SSE exactly as the Messages API
frames it. :class:`Faults` swaps some answers for failures (refused or
reset connections, drops mid-stream, stalls, malformed JSON, truncated SSE,
429/529 storms), at random from a seeded generator so a failing run can be
replayed.
"""

from __future__ import annotations

import itertools
import json
import random
import threading

from tests.servers import Recorded, Reply

_ids = itertools.count(1)

#: Usage of every successful reply: known, so totals can be checked exactly.
INPUT_TOKENS = 101
OUTPUT_TOKENS = 7
CACHE_READ = 3


def usage_of(n_blocks: int) -> dict:
    return {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS * n_blocks,
            "cache_read_input_tokens": CACHE_READ, "cache_creation_input_tokens": 0}


def message_for(body: dict, tool_calls: int = 2, model: str = "claude-haiku-4-5") -> dict:
    """The reply a model would give to ``body`` (a Messages API request)."""
    last = body["messages"][-1]
    content = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
    answered = any(b.get("type") == "tool_result" for b in content)
    tools = body.get("tools") or []
    n = next(_ids)
    if tools and not answered:
        blocks = [{"type": "tool_use", "id": f"toolu_{n}_{i}", "name": tools[i % len(tools)]["name"],
                   "input": {"n": i}} for i in range(tool_calls)]
        stop = "tool_use"
    else:
        results = sum(1 for b in content if b.get("type") == "tool_result")
        blocks = [{"type": "text", "text": f"done after {results} results"}]
        stop = "end_turn"
    return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop, "stop_sequence": None, "usage": usage_of(len(blocks))}


def sse_for(message: dict) -> list[str]:
    """The message as Messages API stream events, one string per event."""
    def ev(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    start = dict(message, content=[], stop_reason=None,
                 usage=dict(message["usage"], output_tokens=1))
    events = [ev("message_start", {"type": "message_start", "message": start}), ev("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(ev("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": {"type": "text", "text": ""}}))
            events.append(ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                                     "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            events.append(ev("content_block_start", {"type": "content_block_start", "index": i,
                                                     "content_block": dict(block, input={})}))
            events.append(ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                                     "delta": {"type": "input_json_delta",
                                                               "partial_json": json.dumps(block["input"])}}))
        events.append(ev("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(ev("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                       "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(ev("message_stop", {"type": "message_stop"}))
    return events


def answer(req: Recorded, tool_calls: int = 2) -> Reply:
    """A correct reply to a Messages API request, JSON or SSE as it asks."""
    body = req.json()
    message = message_for(body, tool_calls)
    if body.get("stream"):
        return Reply(200, b"", {"content-type": "text/event-stream", "request-id": f"req_{message['id']}"},
                     chunks=tuple(sse_for(message)))
    return Reply.json(message, headers={"request-id": f"req_{message['id']}"})


def error(status: int, kind: str, headers: dict | None = None) -> Reply:
    return Reply.json({"type": "error", "error": {"type": kind, "message": f"injected {kind}"}}, status,
                      headers={"request-id": "req_fault", **(headers or {})})


class Faults:
    """A server handler that fails a share of requests in many different ways.

    Every fault is one the client must survive: retry what is transient,
    raise a typed error for the rest, never corrupt history or usage.
    """

    KINDS = ("reset_before_headers", "drop_mid_stream", "stall", "malformed_json", "truncated_sse",
             "overloaded", "rate_limited", "rate_limited_retry_after", "server_error", "slow")

    def __init__(self, rate: float = 0.3, seed: int = 1234, stall: float = 2.0, tool_calls: int = 2):
        self.rate = rate
        self.stall = stall
        self.tool_calls = tool_calls
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}

    def __call__(self, req: Recorded) -> Reply:
        with self._lock:
            kind = self._rng.choice(self.KINDS) if self._rng.random() < self.rate else None
            if kind:
                self.injected[kind] = self.injected.get(kind, 0) + 1
        good = answer(req, self.tool_calls)
        streaming = good.chunks is not None
        if kind is None:
            return good
        if kind == "reset_before_headers":
            return Reply(drop_after=0)
        if kind == "drop_mid_stream":
            if streaming:
                return Reply(200, b"", good.headers, chunks=good.chunks, drop_after=3)
            return Reply(drop_after=0)
        if kind == "stall":
            return Reply(good.status, good.body, good.headers, chunks=good.chunks, stall=self.stall)
        if kind == "malformed_json":
            if streaming:
                bad = good.chunks[:2] + ("event: content_block_start\ndata: {\"type\": \"content_bl\n\n",)
                return Reply(200, b"", good.headers, chunks=bad)
            return Reply(200, '{"id": "msg_x", "content": [', {"content-type": "application/json"})
        if kind == "truncated_sse":
            if streaming:
                return Reply(200, b"", good.headers, chunks=good.chunks[:4])
            return Reply(200, good.body[: len(good.body) // 2], good.headers)
        if kind == "overloaded":
            return error(529, "overloaded_error")
        if kind == "rate_limited":
            return error(429, "rate_limit_error")
        if kind == "rate_limited_retry_after":
            return error(429, "rate_limit_error", {"retry-after": "0"})
        if kind == "server_error":
            return error(500, "api_error")
        if kind == "slow":
            return Reply(good.status, good.body, good.headers, chunks=good.chunks, stall=0.05)
        raise AssertionError(kind)
