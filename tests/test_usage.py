"""Usage arithmetic, cumulative totals and pricing."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from convo import PRICES, CumulativeUsage, Price, PriceTable, Usage

tokens = st.integers(min_value=0, max_value=10**9)
usages = st.builds(
    Usage,
    input_tokens=tokens,
    output_tokens=tokens,
    cache_creation_input_tokens=tokens,
    cache_read_input_tokens=tokens,
    reasoning_tokens=tokens,
    cost_usd=st.one_of(st.none(), st.decimals(min_value=0, max_value=1000, places=6)),
)


class TestUsage:
    @given(st.lists(usages, max_size=30))
    def test_rollup_is_a_sum_in_any_order(self, items):
        total = sum(items, Usage())
        assert total == sum(reversed(items), Usage())
        assert total.input_tokens == sum(u.input_tokens for u in items)
        priced = [u.cost_usd for u in items if u.cost_usd is not None]
        assert total.cost_usd == (sum(priced, Decimal(0)) if priced else None)

    @given(usages)
    def test_to_dict_round_trip(self, u):
        assert Usage.from_dict(u.to_dict()) == u

    @given(st.lists(usages, max_size=30))
    def test_cumulative_equals_the_sum(self, items):
        c = CumulativeUsage()
        for u in items:
            c.add(u)
        s = sum(items, Usage())
        assert (c.input_tokens, c.output_tokens, c.cache_read_input_tokens, c.cache_creation_input_tokens) == (
            s.input_tokens, s.output_tokens, s.cache_read_input_tokens, s.cache_creation_input_tokens)
        assert c.total_cost_usd == (s.cost_usd or 0)
        assert c.responses == len(items)
        assert c.unpriced_responses == sum(1 for u in items if u.cost_usd is None)
        assert CumulativeUsage.from_dict(c.to_dict()) == c

    def test_rejects_negative_tokens(self):
        with pytest.raises(ValueError, match="non-negative"):
            Usage(input_tokens=-1)

    def test_floats_become_exact_decimals(self):
        assert Usage(cost_usd=0.1).cost_usd == Decimal("0.1")

    def test_total_input_and_rates(self):
        c = CumulativeUsage()
        c.add(Usage(10, 1, 20, 30, cost_usd=Decimal("1")))
        assert c.total_input_tokens() == 60
        later = c.start_time + timedelta(minutes=30)
        assert c.wall_time(later) == 1800
        assert c.dollars_per_hour(later) == Decimal(2)


class TestPricing:
    def test_claude_prices_with_cache_rates(self):
        u = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_creation_input_tokens=1_000_000,
                  cache_read_input_tokens=1_000_000)
        # sonnet: $3 in, $15 out, $3.75 cache write, $0.30 cache read
        assert PRICES.cost("claude-sonnet-4-5-20250929", u) == Decimal("22.05")

    def test_longest_prefix_wins_at_a_boundary(self):
        assert PRICES.lookup("gpt-4o-mini-2024-07-18").input == Decimal("0.15")
        assert PRICES.lookup("gpt-4o-2024-08-06").input == Decimal("2.50")
        assert PRICES.lookup("o1-mini").input == Decimal("1.10")
        assert PRICES.lookup("o1x") is None
        assert PRICES.lookup("totally-unknown") is None
        # a dated snapshot or a pro tier is not priced as its cheaper family
        assert PRICES.lookup("gpt-4o-2024-05-13").input == Decimal("5")
        assert PRICES.lookup("o3-pro-2025-06-10").output == Decimal("80")

    def test_router_names_are_priced_as_the_model(self):
        assert PRICES.lookup("openai/gpt-4o-mini") == PRICES.lookup("gpt-4o-mini")
        assert PRICES.lookup("anthropic/claude-sonnet-4-5") == PRICES.lookup("claude-sonnet-4-5")
        assert PRICES.lookup("someone/unknown") is None

    def test_override(self):
        table = PriceTable()
        table.set("claude-sonnet-4-5", Price(1, 1))
        assert table.cost("claude-sonnet-4-5-20250929", Usage(1_000_000, 0)) == 1
        assert PRICES.cost("claude-sonnet-4-5-20250929", Usage(1_000_000, 0)) == 3
        with pytest.raises(TypeError):
            table.set("x", {"input": 1})  # type: ignore[arg-type]
