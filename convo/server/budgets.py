"""Per-user window budgets, kept in the store's atomic counters so every replica shares them.

A token carries a budget: AI dollars and compute seconds per window. What a
user spends is counted per (project, user, window) in two counters of the
store (:meth:`~convo.stores.BaseStore.counter_add`: exact decimals, atomic
across threads, processes and machines), so several ``convo serve``
processes sharing one PostgreSQL (or Redis) store keep one budget:

- before each model request, the request's worst case (its input estimate
  at the highest input rate plus its ``max_tokens`` of output, as
  :mod:`convo.budget` computes it) is **reserved** with the budget as the
  counter's limit; a reservation that does not fit is refused, so parallel
  sessions on any replica cannot together pass the budget;
- when the reply arrives, the reservation is **settled**: the difference to
  the real cost is added (a negative delta); a failed request releases it;
- spending nothing reserved beforehand (a sub-convo a server tool made) is
  added when it happens;
- compute is the wall-clock time a session's turns run (model requests and
  tools), added after each reply and at the end of each turn; a turn does
  not start, and no request is sent, once the compute budget is used up.

Windows are UTC calendar periods: the hour, the day, the ISO week (from
Monday), the calendar month; ``lifetime`` never resets. A token's
``windowStart`` is read (any ISO 8601 form, or none) but does not move the
window: the SDKs stamp it with the moment the token was made, so anchoring
windows to it would give every new token a fresh budget.

:class:`UserBudget` is thread-safe (the counters are atomic; it keeps no
other state).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..errors import ConvoError
from .auth import Principal, TokenBudget

__all__ = ["NAMESPACE", "UserBudget", "WindowExhausted", "window_start"]

#: The store's key-value namespace the counters live in.
NAMESPACE = "convo.server.budget"

_MICRO = Decimal(1_000_000)


def window_start(window: str, at: float) -> datetime | None:
    """The start of the ``window`` (hour, day, week, month) that contains the Unix time ``at``; None for lifetime."""
    now = datetime.fromtimestamp(at, timezone.utc)
    if window == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return day
    if window == "week":
        return day - timedelta(days=day.weekday())
    if window == "month":
        return day.replace(day=1)
    return None


class WindowExhausted(ConvoError, RuntimeError):
    """The token's budget for its window is spent (or a request's worst case would pass it).

    Attributes:
        kind: ``"ai"`` (dollars) or ``"compute"`` (seconds).
        window: the window's name; ``start``: when it began (None for lifetime).
        limit, spent: in dollars (ai) or seconds (compute); ``requested``:
            the refused reservation (0 when the budget was already spent).
    """

    def __init__(self, kind: str, window: str, start: datetime | None, limit: Decimal, spent: Decimal,
                 requested: Decimal = Decimal(0)) -> None:
        self.kind = kind
        self.window = window
        self.start = start
        self.limit = limit
        self.spent = spent
        self.requested = requested
        if kind == "ai":
            what = f"${spent.normalize():f} of ${limit.normalize():f} in AI"
            if requested:
                what += f"; the next request could cost up to ${requested.quantize(Decimal('0.000001'))}"
        else:
            what = f"{spent.quantize(Decimal('0.001'))} s of {limit} s of compute"
        super().__init__(f"Budget exceeded for window '{window}': {what} spent")

    def details(self) -> dict:
        """The ``details`` of the error frame (money in microdollars, as tokens count it)."""
        d: dict[str, Any] = {"window": self.window, "kind": self.kind,
                             "windowStart": self.start.isoformat().replace("+00:00", "Z") if self.start else None}
        if self.kind == "ai":
            d["limitMicrodollars"] = int(self.limit * _MICRO)
            d["spentMicrodollars"] = int(self.spent * _MICRO)
        else:
            d["limitSeconds"] = float(self.limit)
            d["spentSeconds"] = float(self.spent)
        return d


class UserBudget:
    """One principal's window budget in one store: check, reserve, settle and charge.

    ``clock`` (Unix seconds) is for tests. Thread-safe.
    """

    def __init__(self, store: Any, principal: Principal, clock=time.time) -> None:
        self._store = store
        self._principal = principal
        self._budget: TokenBudget | None = principal.budget
        self._clock = clock

    @property
    def limited(self) -> bool:
        return self._budget is not None

    def _key(self, kind: str) -> tuple[str, datetime | None]:
        budget = self._budget
        start = window_start(budget.window, self._clock())
        stamp = start.strftime("%Y-%m-%dT%H") if start is not None else "lifetime"
        return f"{self._principal.key}|{budget.window}|{stamp}|{kind}", start

    def _limit(self, kind: str) -> Decimal:
        return self._budget.ai_dollars if kind == "ai" else Decimal(self._budget.compute)

    def spent(self, kind: str = "ai") -> Decimal:
        """What this window's counter holds now (dollars for ``ai``, seconds for ``compute``)."""
        if self._budget is None:
            return Decimal(0)
        key, _ = self._key(kind)
        return self._store.counter_get(NAMESPACE, key)

    def check(self, kinds: tuple = ("ai", "compute")) -> None:
        """Raise :class:`WindowExhausted` if a budget of the current window (AI, compute) is spent."""
        if self._budget is None:
            return
        for kind in kinds:
            key, start = self._key(kind)
            spent = self._store.counter_get(NAMESPACE, key)
            limit = self._limit(kind)
            if spent >= limit:
                raise WindowExhausted(kind, self._budget.window, start, limit, spent)

    def reserve(self, dollars: Decimal) -> str | None:
        """Hold ``dollars`` against the AI budget; the counter's key, to settle with (None: no budget).

        Raises:
            WindowExhausted: it does not fit next to what is spent and held.
        """
        if self._budget is None:
            return None
        self.check(("compute",))  # the AI budget is the counter's limit below
        key, start = self._key("ai")
        limit = self._limit("ai")
        added, value = self._store.counter_add(NAMESPACE, key, dollars, limit=limit)
        if not added:
            raise WindowExhausted("ai", self._budget.window, start, limit, value, requested=dollars)
        return key

    def settle(self, key: str | None, reserved: Decimal, actual: Decimal | None) -> None:
        """Replace a reservation by what was really spent (``actual`` None: nothing, the request failed)."""
        if key is None:
            return
        delta = (actual or Decimal(0)) - reserved
        if delta:
            self._store.counter_add(NAMESPACE, key, delta)

    def charge(self, dollars: Decimal | None) -> None:
        """Count dollars spent without a reservation."""
        if self._budget is None or not dollars:
            return
        key, _ = self._key("ai")
        self._store.counter_add(NAMESPACE, key, dollars)

    def charge_compute(self, seconds: float) -> None:
        """Count compute seconds."""
        if self._budget is None or seconds <= 0:
            return
        key, _ = self._key("compute")
        self._store.counter_add(NAMESPACE, key, Decimal(repr(round(seconds, 6))))
