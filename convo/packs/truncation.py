"""Context limits: fitting what is sent into a token budget, oldest history first.

With ``convo.open(..., token_budget=N)``, every request (system prompt,
tools and messages) is counted before it is sent; one that is over the
budget has its oldest history taken out:

- ``truncation="sliding"`` (the default) drops the oldest exchanges.
- ``truncation="summarize"`` replaces them with a summary the model writes
  (in a sub-convo of the conversation, so its tokens and dollars roll up
  like any other spending, and a budget covers it). The summary is kept
  with the pack's state and extended as more history falls out of the
  window, so old history is summarised once, not at every send.

History is cut only where a user starts a turn (a user message that is not
just tool results), so a tool call is never separated from its result, and
the request still starts with a user message. The turn being sent is always
kept: if it alone is over the budget, it is sent anyway (and a warning is
logged) for the provider to judge.

Only what is *sent* is trimmed: the conversation's history, as stored and as
``c.messages`` shows it, stays whole, so an audit, a resumed conversation or
a larger budget later still has everything.

Counting uses the provider's own counter where the service has one
(``count_tokens``: :class:`~convo.AnthropicService` asks the API;
:class:`~convo.LocalService` runs the model's tokenizer), and only when the
request might not fit: one under convo's upper estimate
(:func:`convo.budget.estimate_input_tokens`, a token per byte) is sent
without asking. A service without a counter is counted with
:func:`estimate_tokens`, a documented estimate (four characters a token,
plus fixed allowances for images, documents, messages and tools).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import attrs
from attrs import frozen

from .._log import log
from ..messages import Document, Image, Message, Request, Role, Text, ToolResult, ToolUse

__all__ = ["ContextTrimmed", "cut_points", "estimate_tokens", "fit", "token_counter"]

#: Allowances of the estimate, in tokens.
IMAGE_TOKENS = 1_600  # Anthropic bills a ~1.15 megapixel image at about this
DOCUMENT_TOKENS = 2_000
MESSAGE_TOKENS = 4
TOOL_TOKENS = 50


@frozen
class ContextTrimmed:
    """What a token budget took out of one request (given to a listener's ``on_context_trimmed``).

    ``messages_dropped`` counts the history messages not sent as they
    were; ``summary`` is the text that stands in for them (``"summarize"``).
    Immutable, so thread-safe.
    """

    strategy: str
    messages_dropped: int
    tokens_before: int
    tokens_after: int
    budget: int
    summary: str | None = None


def estimate_tokens(request: Request) -> int:
    """An estimate of the input tokens of ``request``: 4 characters a token, plus allowances."""
    chars = sum(len(b.text) for b in request.system if isinstance(b, Text))
    tokens = 0
    for spec in request.tools:
        chars += len(json.dumps(spec.to_dict(), ensure_ascii=False))
        tokens += TOOL_TOKENS
    for message in request.messages:
        tokens += MESSAGE_TOKENS
        for block in message.content:
            c, t = _block_size(block)
            chars += c
            tokens += t
    return tokens + (chars + 3) // 4


def _block_size(block: Any) -> tuple[int, int]:
    if isinstance(block, Text):
        return len(block.text), 0
    if isinstance(block, Image):
        return 0, IMAGE_TOKENS
    if isinstance(block, Document):
        return len(block.text or ""), DOCUMENT_TOKENS if block.text is None else 0
    if isinstance(block, ToolUse):
        return len(block.name) + len(json.dumps(block.input, ensure_ascii=False, default=str)), 0
    if isinstance(block, ToolResult):
        chars, tokens = 0, 0
        for inner in block.content:
            c, t = _block_size(inner)
            chars, tokens = chars + c, tokens + t
        return chars, tokens
    text = getattr(block, "thinking", None) or getattr(block, "data", None)
    return (len(text) if isinstance(text, str) else len(json.dumps(text, default=str))), 0


def token_counter(service: Any) -> tuple[Callable[[Request], int], str]:
    """How to count a request's tokens for ``service``: its own ``count_tokens``, else :func:`estimate_tokens`.

    Returns ``(count, name)``; a provider count that fails falls back to the
    estimate for that request (logged once per counter).
    """
    own = getattr(service, "count_tokens", None)
    if not callable(own):
        return estimate_tokens, "estimate"
    warned = []

    def count(request: Request) -> int:
        try:
            return int(own(request))
        except Exception as exc:  # counting must not stop the conversation: estimate instead
            if not warned:
                warned.append(True)
                log.warning("token_count_failed", service=type(service).__name__,
                            error=f"{type(exc).__name__}: {exc}", using="estimate")
            return estimate_tokens(request)

    return count, type(service).__name__ + ".count_tokens"


def _starts_turn(message: Message) -> bool:
    if message.role != Role.USER:
        return False
    return any(not isinstance(b, ToolResult) and not (isinstance(b, Text) and not b.text) for b in message.content)


def cut_points(messages: list) -> list[int]:
    """Where the history sent may start: indexes (after 0) of user messages that start a turn."""
    return [i for i in range(1, len(messages)) if _starts_turn(messages[i])]


def fit(request: Request, budget: int, count: Callable[[Request], int], *,
        reserve: int = 0, total: int | None = None) -> tuple[Request, int, int]:
    """The request with its oldest history dropped until it fits ``budget`` (less ``reserve``).

    Returns ``(request, cut, tokens)``: ``cut`` messages were dropped (0:
    it fit as it was) and ``tokens`` is the count of what is returned. A
    binary search over the cut points, so a provider counter is asked
    about log2(turns) times.
    """
    total = count(request) if total is None else total
    limit = budget - reserve
    if total <= limit:
        return request, 0, total
    messages = list(request.messages)
    points = cut_points(messages)
    if not points:
        log.warning("context_over_budget", budget=budget, tokens=total,
                    hint="the turn being sent is over the token budget by itself; it is sent whole")
        return request, 0, total
    low, high = 0, len(points) - 1
    best: tuple[int, int] | None = None
    while low <= high:
        mid = (low + high) // 2
        cut = points[mid]
        tokens = count(attrs.evolve(request, messages=messages[cut:]))
        if tokens <= limit:
            best = (cut, tokens)
            high = mid - 1
        else:
            low = mid + 1
    if best is None:
        cut = points[-1]
        tokens = count(attrs.evolve(request, messages=messages[cut:]))
        log.warning("context_over_budget", budget=budget, tokens=tokens,
                    hint="the turn being sent is over the token budget by itself; it is sent whole")
        best = (cut, tokens)
    cut, tokens = best
    return attrs.evolve(request, messages=messages[cut:]), cut, tokens


def digest(messages: list) -> str:
    """A fingerprint of ``messages``: tells whether a summary still covers the same history."""
    h = hashlib.sha256()
    for m in messages:
        h.update(json.dumps(m.to_dict(), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return h.hexdigest()


def transcript(messages: list, limit: int = 4_000) -> str:
    """The messages as plain text for a summariser: who said what, tool calls and (shortened) results."""
    lines = []
    for m in messages:
        who = "User" if m.role == Role.USER else "Assistant"
        for block in m.content:
            if isinstance(block, Text) and block.text:
                lines.append(f"{who}: {block.text}")
            elif isinstance(block, ToolUse):
                lines.append(f"{who} called the tool {block.name} with "
                             f"{json.dumps(block.input, ensure_ascii=False, default=str)[:limit]}")
            elif isinstance(block, ToolResult):
                text = block.text()
                text = text if len(text) <= limit else text[:limit] + "..."
                lines.append(f"Tool result{' (error)' if block.is_error else ''}: {text}")
            elif isinstance(block, Image):
                lines.append(f"{who}: [an image]")
            elif isinstance(block, Document):
                lines.append(f"{who}: [a document{': ' + block.title if block.title else ''}]")
    return "\n".join(lines)


SUMMARY_SYSTEM = ("You summarise conversations so they can continue without their full text. Keep every "
                  "fact, name, number, preference, decision and open question someone continuing the "
                  "conversation needs. Write only the summary, in plain prose, as briefly as it allows.")
SUMMARY_HEADING = "[Summary of the earlier conversation]"


def summarize(convo: Any, messages: list, previous: str | None, max_tokens: int) -> str:
    """A summary of ``messages`` (after ``previous``, an earlier summary), written by a sub-convo of ``convo``."""
    parts = []
    if previous:
        parts.append(f"Summary so far:\n{previous}\n\nWhat was said after that:")
    else:
        parts.append("The conversation:")
    parts.append(transcript(messages))
    parts.append("\nWrite the summary now.")
    worker = convo.sub_convo(system_prompt=SUMMARY_SYSTEM, tools=(), mcp_servers=(), hidden=True,
                             max_tokens=max_tokens, tool_choice=None)
    reply = worker.send("\n".join(parts))
    return reply.text().strip()


def with_summary(messages: list, summary: str) -> list:
    """``messages`` (starting with a user turn) with the summary leading their first message."""
    first = messages[0]
    lead = Text(f"{SUMMARY_HEADING}\n{summary}\n\n")
    return [Message(first.role, (lead,) + tuple(first.content))] + list(messages[1:])
