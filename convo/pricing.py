"""Client-side prices per model, so budgets work in dollars.

Prices are US dollars per million tokens. A model is found by its exact
name or as a dated snapshot of a known name (``claude-sonnet-4-5-20250929``
is priced as ``claude-sonnet-4-5``, ``gpt-4o-2024-08-06`` as ``gpt-4o``); a
router's ``vendor/model`` name is looked up as ``model``. Nothing else
matches: a name convo does not know is unpriced, never priced as a family it
happens to start with (``claude-opus-4.5`` is not ``claude-opus-4``, and a
future model is not its predecessor). :func:`lookup_model` is that one rule,
shared with every other per-model table (context windows). Users override or
add prices with ``PRICES.set(...)`` or by giving a Convo its own
:class:`PriceTable`.

A :class:`PriceTable` is thread-safe: lookups and updates may run from any
thread.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from typing import Mapping, TypeVar

from attrs import field, frozen

from .usage import Usage, _to_decimal

__all__ = ["FREE", "PRICES", "Price", "PriceTable", "lookup_model", "price_for"]

_T = TypeVar("_T")

_MILLION = Decimal(1_000_000)


@frozen
class Price:
    """Dollars per million tokens: input, output, cache writes and cache reads.

    ``cache_write`` and ``cache_read`` default to the input price when a
    provider has no separate rate.
    """

    input: Decimal = field(converter=_to_decimal)
    output: Decimal = field(converter=_to_decimal)
    cache_write: Decimal | None = field(default=None, converter=_to_decimal)
    cache_read: Decimal | None = field(default=None, converter=_to_decimal)

    def cost(self, usage: Usage) -> Decimal:
        """The dollar cost of ``usage`` at this price."""
        write = self.cache_write if self.cache_write is not None else self.input
        read = self.cache_read if self.cache_read is not None else self.input
        micro = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_input_tokens * write
            + usage.cache_read_input_tokens * read
        )
        return micro / _MILLION

    def worst_case(self, input_tokens: int, output_tokens: int) -> Decimal:
        """The most ``input_tokens`` in and ``output_tokens`` out can cost, whatever the cache does."""
        rates = [self.input] + [r for r in (self.cache_write, self.cache_read) if r is not None]
        return (input_tokens * max(rates) + output_tokens * self.output) / _MILLION


FREE = Price(0, 0, 0, 0)


def _claude(inp: str, out: str) -> Price:
    # Anthropic: 5-minute cache writes cost 1.25x input, cache reads 0.1x input.
    i = Decimal(inp)
    return Price(i, Decimal(out), i * Decimal("1.25"), i * Decimal("0.1"))


def _gpt(inp: str, out: str, cached: str) -> Price:
    # OpenAI caches automatically: no write surcharge, cached input at its own rate.
    return Price(Decimal(inp), Decimal(out), Decimal(inp), Decimal(cached))


_DEFAULT_PRICES: dict[str, Price] = {
    # Claude
    "claude-opus-4-6": _claude("5", "25"),
    "claude-opus-4-5": _claude("5", "25"),
    "claude-opus-4-1": _claude("15", "75"),
    "claude-opus-4": _claude("15", "75"),
    "claude-opus-4-0": _claude("15", "75"),
    "claude-sonnet-4-6": _claude("3", "15"),
    "claude-sonnet-4-5": _claude("3", "15"),
    "claude-sonnet-4": _claude("3", "15"),
    "claude-sonnet-4-0": _claude("3", "15"),
    "claude-3-7-sonnet": _claude("3", "15"),
    "claude-3-5-sonnet": _claude("3", "15"),
    "claude-haiku-4-5": _claude("1", "5"),
    "claude-3-5-haiku": _claude("0.80", "4"),
    "claude-3-opus": _claude("15", "75"),
    "claude-3-haiku": Price("0.25", "1.25", "0.30", "0.03"),
    # GPT
    "gpt-5": _gpt("1.25", "10", "0.125"),
    "gpt-5-mini": _gpt("0.25", "2", "0.025"),
    "gpt-5-nano": _gpt("0.05", "0.40", "0.005"),
    "gpt-4.1": _gpt("2", "8", "0.50"),
    "gpt-4.1-mini": _gpt("0.40", "1.60", "0.10"),
    "gpt-4.1-nano": _gpt("0.10", "0.40", "0.025"),
    "gpt-5-pro": Price("15", "120"),
    "gpt-4o": _gpt("2.50", "10", "1.25"),
    "gpt-4o-2024-05-13": Price("5", "15"),
    "chatgpt-4o-latest": Price("5", "15"),
    "gpt-4o-mini": _gpt("0.15", "0.60", "0.075"),
    "gpt-4-turbo": _gpt("10", "30", "10"),
    "gpt-3.5-turbo": _gpt("0.50", "1.50", "0.50"),
    "o1": _gpt("15", "60", "7.50"),
    "o1-mini": _gpt("1.10", "4.40", "0.55"),
    "o1-pro": Price("150", "600"),
    "o3": _gpt("2", "8", "0.50"),
    "o3-pro": Price("20", "80"),
    "o3-mini": _gpt("1.10", "4.40", "0.55"),
    "o4-mini": _gpt("1.10", "4.40", "0.275"),
}


# A dated snapshot suffix: -20250929, -2024-08-06, @20250929 (Vertex), OpenAI's older -0613, or -latest.
_SNAPSHOT = re.compile(r"(?:[-@](?:\d{8}|\d{4}-\d{2}-\d{2})|-\d{4}|-latest)$")


def lookup_model(table: Mapping[str, _T], model: str) -> _T | None:
    """The entry of ``model`` in a per-model ``table``, or None.

    ``model`` matches by its exact name, as a dated snapshot of a name in the
    table (the date suffix removed), and, for a router's ``vendor/model``
    name, as ``model`` by the same two rules. No other prefix matches.
    """
    for name in (model, model.rsplit("/", 1)[-1]) if "/" in model else (model,):
        entry = table.get(name)
        if entry is None:
            base = _SNAPSHOT.sub("", name)
            if base != name:
                entry = table.get(base)
        if entry is not None:
            return entry
    return None


class PriceTable:
    """Prices keyed by model name; see :func:`lookup_model` for how a name matches.

    Thread-safe: lookups and updates may run from any thread.
    """

    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self._lock = threading.Lock()
        self._prices: dict[str, Price] = dict(_DEFAULT_PRICES if prices is None else prices)

    def set(self, model: str, price: Price) -> None:
        """Add or replace the price of ``model`` (and so of its dated snapshots)."""
        if not isinstance(price, Price):
            from .errors import ArgumentTypeError

            raise ArgumentTypeError(f"price must be a convo.Price, got {type(price).__name__}")
        if not isinstance(model, str) or not model:
            from .errors import ConfigurationError

            raise ConfigurationError(f"model must be a non-empty str, got {model!r}")
        with self._lock:
            self._prices[model] = price

    def lookup(self, model: str) -> Price | None:
        """The price of ``model``, or None if it is unpriced."""
        with self._lock:
            return lookup_model(self._prices, model)

    def cost(self, model: str, usage: Usage) -> Decimal | None:
        """The dollar cost of ``usage`` on ``model``, or None if the model is unpriced."""
        price = self.lookup(model)
        return None if price is None else price.cost(usage)

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def price_for(model: str | None, service: object = None, prices: "PriceTable | None" = None) -> Price | None:
    """The price of ``model``: from the price table, else the service's own (``service.price()``), else None.

    The one rule a Convo prices by (a local model's service says it is free;
    a table entry the user set wins over it).
    """
    price = (prices or PRICES).lookup(model) if model else None
    if price is None:
        own = getattr(service, "price", None)
        if callable(own):
            price = own()
    return price


PRICES = PriceTable()
"""The default price table every Convo uses unless given its own."""
