"""Client-side prices per model, so budgets work in dollars.

Prices are US dollars per million tokens. A model is found by its exact name,
else by the longest known prefix (``claude-sonnet-4-5-20250929`` is priced as
``claude-sonnet-4-5``). Users override or add prices with
``PRICES.set(...)`` or by giving a Convo its own :class:`PriceTable`.

A :class:`PriceTable` is thread-safe: lookups and updates may run from any
thread.
"""

from __future__ import annotations

import threading
from decimal import Decimal

from attrs import field, frozen

from .usage import Usage, _to_decimal

__all__ = ["PRICES", "Price", "PriceTable"]

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
    "claude-sonnet-4-6": _claude("3", "15"),
    "claude-sonnet-4-5": _claude("3", "15"),
    "claude-sonnet-4": _claude("3", "15"),
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


class PriceTable:
    """Prices keyed by model name, looked up by exact name or longest prefix."""

    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self._lock = threading.Lock()
        self._prices: dict[str, Price] = dict(_DEFAULT_PRICES if prices is None else prices)

    def set(self, model: str, price: Price) -> None:
        """Add or replace the price of ``model`` (and of names it is a prefix of)."""
        if not isinstance(price, Price):
            raise TypeError(f"price must be a convo.Price, got {type(price).__name__}")
        with self._lock:
            self._prices[model] = price

    def lookup(self, model: str) -> Price | None:
        """The price of ``model``, or None if no known name or prefix matches.

        A router's ``vendor/model`` name (OpenRouter's ``openai/gpt-4o``) is
        priced as ``model`` when the full name has no price of its own.
        """
        with self._lock:
            price = self._lookup(model)
            if price is None and "/" in model:
                price = self._lookup(model.rsplit("/", 1)[1])
            return price

    def _lookup(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        best = ""
        for name in self._prices:
            if model.startswith(name) and len(name) > len(best) and _at_boundary(model, name):
                best = name
        return self._prices[best] if best else None

    def cost(self, model: str, usage: Usage) -> Decimal | None:
        """The dollar cost of ``usage`` on ``model``, or None if the model is unpriced."""
        price = self.lookup(model)
        return None if price is None else price.cost(usage)

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def _at_boundary(model: str, prefix: str) -> bool:
    # "o1" must not price "o1x" or "gpt-4o" price "gpt-4oo"; a prefix ends at a separator.
    rest = model[len(prefix):]
    return not rest or rest[0] in "-:@/."


PRICES = PriceTable()
"""The default price table every Convo uses unless given its own."""
