"""Token usage and what it cost.

:class:`Usage` is the tokens (and dollars) of one response; usages add up,
so a rollup is a sum. :class:`CumulativeUsage` is a conversation's running
total. Dollars are :class:`decimal.Decimal` so that totals summed in any
order, from any number of threads, are exact to the last digit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
from attrs import define, field, frozen

from . import _time
from .errors import ConfigurationError
from ._time import now

__all__ = ["CumulativeUsage", "Usage", "UsageNode"]


def _to_decimal(value) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        # str() gives the shortest repr, so 0.1 becomes Decimal("0.1"), not 0.1000000000000000055...
        return Decimal(str(value))
    return Decimal(value)


def _nonneg_int(instance, attribute, value):
    if not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"Usage.{attribute.name} must be a non-negative int, got {value!r}")


@frozen
class Usage:
    """Tokens one response used, and its cost in dollars.

    ``input_tokens`` counts the uncached input only; cached input is in
    ``cache_read_input_tokens`` (read from cache) and
    ``cache_creation_input_tokens`` (written to cache), as the Anthropic API
    reports it. ``reasoning_tokens`` is informational: providers count them
    inside ``output_tokens`` already. ``cost_usd`` is None while unpriced.
    """

    input_tokens: int = field(default=0, validator=_nonneg_int)
    output_tokens: int = field(default=0, validator=_nonneg_int)
    cache_creation_input_tokens: int = field(default=0, validator=_nonneg_int)
    cache_read_input_tokens: int = field(default=0, validator=_nonneg_int)
    reasoning_tokens: int = field(default=0, validator=_nonneg_int)
    cost_usd: Decimal | None = field(default=None, converter=_to_decimal)

    def total_input_tokens(self) -> int:
        """Input tokens of every kind: uncached, cache writes and cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def is_zero(self) -> bool:
        return self == Usage() or self == Usage(cost_usd=0)

    def __add__(self, other: "Usage") -> "Usage":
        if not isinstance(other, Usage):
            return NotImplemented
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or Decimal(0)) + (other.cost_usd or Decimal(0))
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=cost,
        )

    def __radd__(self, other):
        # Lets sum(usages) work with its default start of 0.
        if other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict:
        d: dict[str, Any] = attrs.asdict(self)
        d["cost_usd"] = None if self.cost_usd is None else str(self.cost_usd)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Usage":
        known = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})


@define(on_setattr=attrs.setters.NO_OP)  # add() runs per reply under a lock: keep assignment plain
class CumulativeUsage:
    """A conversation's running totals, including every sub-conversation below it.

    ``Convo.cumulative_usage()`` hands out copies, so a value you hold never
    changes under you.
    """

    start_time: datetime = field(factory=now)
    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    reasoning_tokens: int = 0
    total_cost_usd: Decimal = field(default=Decimal(0), converter=_to_decimal)
    tool_uses: dict = field(factory=dict)
    unpriced_responses: int = 0

    def add(self, usage: Usage, *, response: bool = True) -> None:
        """Count one response's usage (not thread-safe: the Convo holds a lock around it).

        ``response=False`` counts tokens and dollars of a reply that never
        completed (a stream that failed or was abandoned after the provider
        reported usage) without counting a response.
        """
        if response:
            self.responses += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens
        self.cache_read_input_tokens += usage.cache_read_input_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        if usage.cost_usd is None:
            self.unpriced_responses += 1
        else:
            self.total_cost_usd += usage.cost_usd

    def merge(self, other: "CumulativeUsage") -> None:
        """Add ``other``'s totals into these (not thread-safe: hold the lock that guards this value).

        Counting starts at the earlier of the two start times.
        """
        self.responses += other.responses
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.total_cost_usd += other.total_cost_usd
        self.unpriced_responses += other.unpriced_responses
        for name, n in other.tool_uses.items():
            self.tool_uses[name] = self.tool_uses.get(name, 0) + n
        if other.start_time < self.start_time:
            self.start_time = other.start_time

    def __repr__(self) -> str:
        tools = f" tool_uses={self.total_tool_uses()}" if self.tool_uses else ""
        unpriced = f" unpriced={self.unpriced_responses}" if self.unpriced_responses else ""
        return (f"<CumulativeUsage responses={self.responses} tokens={self.total_input_tokens()}/"
                f"{self.output_tokens} cost=${self.total_cost_usd}{unpriced}{tools}>")

    def _repr_html_(self) -> str:
        """The totals as an HTML table, for notebooks (see :mod:`convo.notebook`)."""
        from .notebook import usage_html

        return usage_html(self)

    def count_tool(self, name: str) -> None:
        self.tool_uses[name] = self.tool_uses.get(name, 0) + 1

    def copy(self) -> "CumulativeUsage":
        return attrs.evolve(self, tool_uses=dict(self.tool_uses))

    def total_input_tokens(self) -> int:
        """Input tokens of every kind: uncached, cache writes and cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def total_tool_uses(self) -> int:
        return sum(self.tool_uses.values())

    def wall_time(self, now: datetime | None = None) -> float:
        """Seconds since counting started."""
        return ((now or _time.now()) - self.start_time).total_seconds()

    def dollars_per_hour(self, now: datetime | None = None) -> Decimal:
        """Spending rate since counting started (0 in the first instant)."""
        seconds = self.wall_time(now)
        if seconds <= 0:
            return Decimal(0)
        return self.total_cost_usd * Decimal(3600) / Decimal(repr(seconds))

    def to_dict(self) -> dict:
        d = attrs.asdict(self)
        d["start_time"] = self.start_time.isoformat()
        d["total_cost_usd"] = str(self.total_cost_usd)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CumulativeUsage":
        d = dict(d)
        d["start_time"] = datetime.fromisoformat(d["start_time"])
        return cls(**d)


@frozen
class UsageNode:
    """One conversation of a sub-convo tree with what it spent: its own replies, and with everything below.

    ``live`` is False for a sub-convo no longer in memory (its numbers were
    kept when it was dropped). See :meth:`convo.Convo.usage_tree`.
    """

    id: str
    depth: int
    own: CumulativeUsage
    total: CumulativeUsage
    children: tuple = ()
    live: bool = True

    def walk(self):
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()
