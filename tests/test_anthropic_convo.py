"""A Convo on AnthropicService runs a multi-turn, parallel, thinking tool loop against a local Messages peer."""

from __future__ import annotations

import base64
import json
import threading
from decimal import Decimal

import pytest

from convo import AnthropicService, Convo, PRICES, RetryPolicy, StreamDone, TextDelta, Thinking, ThinkingConfig, tool
from tests.servers import Recorded, Reply, ScriptedHTTPServer
from tests.test_anthropic_replay import sse_from_message

MODEL = "claude-haiku-4-5"
USAGE = {"input_tokens": 50, "output_tokens": 40, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000}


class ThinkingClaude:
    """Plays Claude with extended thinking: thinks, calls both tools at once, then answers from their results.

    Every reply carries a fresh thinking block and signature; every request
    must send back, unchanged, each thinking block it was given before.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0
        self.thinking_sent: dict[str, dict] = {}  # signature -> the block as this peer sent it
        self.problems: list[str] = []

    def __call__(self, req: Recorded) -> Reply:
        body = req.json()
        with self.lock:
            self.n += 1
            n = self.n
        if body.get("thinking") != {"type": "enabled", "budget_tokens": 1024}:
            self.problems.append(f"request {n}: thinking is {body.get('thinking')}")
        # Every thinking block in the history must come back exactly as it was sent.
        for m in body["messages"]:
            for b in m["content"] if isinstance(m["content"], list) else ():
                if b["type"] == "thinking":
                    original = self.thinking_sent.get(b["signature"])
                    if original != b:
                        self.problems.append(f"request {n}: thinking block changed: {b!r}")
                    encoded = json.dumps(original["thinking"], ensure_ascii=False).encode()
                    if encoded not in req.body or original["signature"].encode() not in req.body:
                        self.problems.append(f"request {n}: thinking text or signature not byte-exact")
        last = body["messages"][-1]["content"]
        results = {b["tool_use_id"]: b.get("content") for b in last if b["type"] == "tool_result"}
        signature = base64.b64encode(f"sig-{n}-".encode() * 12).decode()
        thinking = {"type": "thinking", "thinking": f"Reasoning #{n}: «both tools» — ünïcödé, \"quoted\"\n",
                    "signature": signature}
        self.thinking_sent[signature] = thinking
        if results:
            content = [thinking, {"type": "text", "text": "Answer: " + " | ".join(
                str(results[k]) for k in sorted(results))}]
            stop = "end_turn"
        else:
            city = body["messages"][-1]["content"][-1].get("text", "")
            content = [thinking, {"type": "text", "text": "Checking both."},
                       {"type": "tool_use", "id": f"toolu_w{n}", "name": "weather", "input": {"city": city}},
                       {"type": "tool_use", "id": f"toolu_t{n}", "name": "local_time", "input": {"city": city}}]
            stop = "tool_use"
        message = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": MODEL,
                   "content": content, "stop_reason": stop, "stop_sequence": None, "usage": dict(USAGE)}
        if body.get("stream"):
            return Reply.sse(sse_from_message(message, piece=3), chunk_size=13,
                             headers={"request-id": f"req_{n}"})
        return Reply.json(message, headers={"request-id": f"req_{n}"})


def tools_that_must_overlap():
    """Two tools that each wait for the other: they only finish if run at the same time."""
    both = threading.Barrier(2, timeout=5)

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        both.wait()
        return f"sunny in {city}"

    @tool
    def local_time(city: str) -> str:
        """The local time in a city."""
        both.wait()
        return f"10:00 in {city}"

    return [weather, local_time], both


@pytest.mark.parametrize("streaming", [False, True], ids=["do", "stream"])
def test_parallel_tool_loop_with_thinking(streaming):
    peer = ThinkingClaude()
    tools, barrier = tools_that_must_overlap()
    events = []
    with ScriptedHTTPServer(default=peer) as server:
        service = AnthropicService(api_key="sk-ant-test", base_url=server.url, model=MODEL,
                                   retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
        c = Convo(service, system_prompt="You are terse.", tools=tools,
                  thinking=ThinkingConfig(budget_tokens=1024))
        on_event = events.append if streaming else None
        first = c.run("Paris", on_event=on_event)
        barrier.reset()
        second = c.run("Lima", on_event=on_event)
        requests = [r.json() for r in server.requests]

    assert peer.problems == []
    assert first.text() == "Answer: 10:00 in Paris | sunny in Paris"
    assert second.text() == "Answer: 10:00 in Lima | sunny in Lima"
    assert len(requests) == 4 and all(r.get("stream", False) is streaming for r in requests)

    # The history: user, assistant(thinking, text, 2 tool uses), user(2 results), assistant(thinking, text), x2.
    history = c.messages
    assert [str(m.role) for m in history] == ["user", "assistant"] * 4
    assert [len(m.tool_uses()) for m in history] == [0, 2, 0, 0, 0, 2, 0, 0]
    assert [len(m.tool_results()) for m in history] == [0, 0, 2, 0, 0, 0, 2, 0]
    assert all(isinstance(m.content[0], Thinking) for m in history[1::2])
    assert not any(r.is_error for m in history for r in m.tool_results())

    # The last request carries the three earlier thinking blocks, untouched.
    sent = [b for m in requests[3]["messages"] for b in m["content"] if b["type"] == "thinking"]
    assert sent == [peer.thinking_sent[b["signature"]] for b in sent] and len(sent) == 3

    # Prompt caching: the Convo's markers reach the wire on the system prompt and the newest block.
    for r in requests:
        assert r["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert r["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert sum("cache_control" in b for m in r["messages"] for b in m["content"]) == 1

    # Usage is priced with the cache rates and rolls up exactly.
    price = PRICES.lookup(MODEL)
    one = (50 * price.input + 40 * price.output + 200 * price.cache_write + 1000 * price.cache_read) / 1_000_000
    assert first.usage.cost_usd == one
    assert one == (50 * 1 + 40 * 5 + 200 * Decimal("1.25") + 1000 * Decimal("0.1")) / Decimal(1_000_000)
    total = c.cumulative_usage()
    assert (total.responses, total.input_tokens, total.cache_read_input_tokens) == (4, 200, 4000)
    assert total.total_cost_usd == 4 * one

    if streaming:
        assert "".join(e.text for e in events if isinstance(e, TextDelta)).count("Answer:") == 2
        assert sum(isinstance(e, StreamDone) for e in events) == 4
