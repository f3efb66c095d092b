"""Budgets in dollars, and the worst-case estimate that makes them hard caps.

A :class:`Budget` caps what a conversation and its whole subtree of
sub-convos may spend. Before each request, a Convo reserves the request's
worst-case cost against its own budget and every ancestor's; the reply's real
cost replaces the reservation when it arrives (a failed request releases
it). A request that does not fit next to what is spent and what is held for
requests in flight is refused with :class:`~convo.BudgetExceeded`, so
parallel sub-convos cannot together spend past a parent's budget.

The worst case of a request is its input estimate at the model's highest
input rate (uncached, cache write or cache read) plus its ``max_tokens`` at
the output rate. The input estimate, :func:`estimate_input_tokens`, is

- for the part of the history the provider already counted (the previous
  reply reported its input tokens, and its output tokens are now history):
  exactly that count;
- for everything newer, and for a system prompt or tools that changed since:
  one token per UTF-8 byte of text and JSON (a token is never shorter than a
  byte in the byte-level tokenizers current models use), a fixed allowance
  per image and per document page's worth of bytes, and a fixed overhead per
  message and for tool definitions.

So the bound: **what a subtree spends never exceeds its budget as long as the
provider bills no more input tokens than the estimate** (the estimate counts
high on purpose) **and no more output tokens than** ``max_tokens``. Under a
budget every request carries a ``max_tokens`` (the request's, else the
service's, else :data:`DEFAULT_RESERVED_OUTPUT_TOKENS`), so the second
condition always holds; the first fails only for content the estimate
cannot see (a provider's hidden per-request prompt larger than the
allowance).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Iterable

from attrs import field, frozen

from .errors import ConfigurationError
from .messages import Document, Image, Message, RawBlock, RedactedThinking, Request, Text, Thinking, ToolResult, ToolUse
from .usage import _to_decimal

__all__ = ["Budget", "DEFAULT_RESERVED_OUTPUT_TOKENS", "estimate_input_tokens"]

#: The reply cap sent under a budget when neither the request nor the service sets one.
DEFAULT_RESERVED_OUTPUT_TOKENS = 8192

# Allowances, in tokens. Anthropic bills an image at most ~1,600 tokens and
# OpenAI's high-detail tiles stay under 2,000; a tool definition block adds
# a few hundred tokens of provider instructions; each message a few tokens
# of framing.
IMAGE_TOKENS = 2_000
TOOLS_OVERHEAD_TOKENS = 1_000
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 64


def _check_max_dollars(instance, attribute, value):
    if value is not None and (not value.is_finite() or value < 0):
        raise ConfigurationError(f"Budget.max_dollars must be None (unlimited) or >= 0, got {value!r}")


def _dollars(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        raise ConfigurationError(f"Budget.max_dollars must be a number of dollars, got {value!r}")
    try:
        return _to_decimal(value)
    except (ArithmeticError, TypeError, ValueError):
        raise ConfigurationError(f"Budget.max_dollars must be a number of dollars, got {value!r}") from None


@frozen
class Budget:
    """How many dollars a conversation and everything below it may spend.

    ``Budget()`` or ``Budget(None)`` is unlimited; ``Budget(0)`` means nothing
    may be spent, so nothing is sent; any other amount is a hard cap on the
    whole subtree (see this module's docstring for how it is kept, and the
    bound). Once spending reaches the limit, every further send is refused.

    Immutable, so safe to share.
    """

    max_dollars: Decimal | None = field(default=None, converter=_dollars, validator=_check_max_dollars)

    @property
    def unlimited(self) -> bool:
        return self.max_dollars is None

    def to_dict(self) -> dict:
        return {"max_dollars": None if self.max_dollars is None else str(self.max_dollars)}

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        return cls(d.get("max_dollars"))


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _json_bytes(value: Any) -> int:
    return _text_bytes(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _block_tokens(block: Any) -> int:
    if isinstance(block, Text):
        return _text_bytes(block.text)
    if isinstance(block, Thinking):
        return _text_bytes(block.thinking) + len(block.signature)
    if isinstance(block, RedactedThinking):
        return len(block.data)
    if isinstance(block, ToolUse):
        return _text_bytes(block.name) + _json_bytes(block.input)
    if isinstance(block, ToolResult):
        return sum(_block_tokens(b) for b in block.content) + MESSAGE_OVERHEAD_TOKENS
    if isinstance(block, Image):
        return IMAGE_TOKENS
    if isinstance(block, Document):
        if block.text is not None:
            return _text_bytes(block.text)
        if block.data is not None:
            # A PDF is billed as its text plus an image per page; its size in bytes bounds both generously.
            return max(IMAGE_TOKENS, len(block.data) * 3 // 4)
        return IMAGE_TOKENS * 10  # a document by URL: its size is unknown here
    if isinstance(block, RawBlock):
        return _json_bytes(block.data)
    return _json_bytes(getattr(block, "to_dict", lambda: str(block))())


def _messages_tokens(messages: Iterable[Message]) -> int:
    return sum(MESSAGE_OVERHEAD_TOKENS + sum(_block_tokens(b) for b in m.content) for m in messages)


def preamble_tokens(request: Request) -> int:
    """The estimate for a request's system prompt and tool definitions."""
    n = sum(_block_tokens(b) for b in request.system)
    if request.tools:
        n += TOOLS_OVERHEAD_TOKENS + sum(_json_bytes(t.to_dict()) for t in request.tools)
    if request.output_schema is not None:
        # Sent as one more tool (Anthropic) or a response format (OpenAI): count it like a tool.
        n += TOOLS_OVERHEAD_TOKENS + _json_bytes(request.output_schema)
    return n


def estimate_input_tokens(request: Request, counted: tuple[int, int, int] | None = None) -> int:
    """An upper estimate of the input tokens ``request`` will be billed for.

    ``counted`` is ``(messages, tokens, preamble)``: the provider counted
    ``tokens`` for the first ``messages`` messages of this history together
    with a system prompt and tools whose estimate was ``preamble``. That part
    is taken as counted; a preamble that grew since adds its growth.
    """
    preamble = preamble_tokens(request)
    messages = request.messages
    if counted is not None and counted[0] <= len(messages):
        n, tokens, counted_preamble = counted
        return (REQUEST_OVERHEAD_TOKENS + tokens + max(0, preamble - counted_preamble)
                + _messages_tokens(messages[n:]))
    return REQUEST_OVERHEAD_TOKENS + preamble + _messages_tokens(messages)

