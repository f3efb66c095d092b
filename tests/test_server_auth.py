"""Tokens, permissions, the one authorisation check, and per-user window budgets on a store's counters."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import jwt
import pytest

from convo import ConfigurationError, Convo, MemoryStore
from convo.remote import AuthError, Permissions, create_budget, create_token, verify_token
from convo.server.auth import Principal, SessionNotFound, load_owned, owner_of, parse_window_start, principal_from_token
from convo.server.budgets import UserBudget, WindowExhausted, window_start
from convo.testing import ScriptedService, reply

SECRET = "k" * 40


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


class TestTokens:
    def test_round_trip_with_budget_and_permissions(self):
        start = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
        tok = create_token("u1", "p1", SECRET, create_budget(1.25, 0.5, "week", start), expires_in=60,
                           permissions={"tools": ["add"], "models": ["claude-haiku-4-5"], "max_turns": 3})
        claims = verify_token(tok, SECRET)
        assert claims["sub"] == "u1" and claims["iss"] == "p1" and claims["exp"] - claims["iat"] == 60
        assert claims["budget"] == {"ai": 1_250_000, "compute": 1800, "window": "week",
                                    "windowStart": "2026-01-05T09:30:00.000Z"}
        assert claims["permissions"] == {"allowedTools": ["add"], "allowedModels": ["claude-haiku-4-5"], "maxTurns": 3}
        assert jwt.get_unverified_header(tok) == {"alg": "HS256", "typ": "JWT"}

    def test_budget_truncates_to_microdollars_like_the_sdks(self):
        assert create_budget(0.1234567, 1 / 7).ai == 123_456
        assert create_budget(0.1234567, 1 / 7).compute == 514

    def test_the_python_sdks_spacey_json_verifies(self):
        """PY signs json.dumps output with spaces: the signature is checked over the segments as received."""
        header, claims = _b64({"alg": "HS256", "typ": "JWT"}), _b64({"sub": "u", "iss": "p",
                                                                    "exp": int(time.time()) + 60})
        import hashlib
        import hmac

        sig = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), f"{header}.{claims}".encode(),
                                                hashlib.sha256).digest()).rstrip(b"=").decode()
        assert verify_token(f"{header}.{claims}.{sig}", SECRET)["sub"] == "u"

    @pytest.mark.parametrize("make, words", [
        (lambda: create_token("u", "p", "x" * 40), "signature"),
        (lambda: jwt.encode({"sub": "u", "iss": "p", "exp": int(time.time()) - 100}, SECRET), "expired"),
        (lambda: jwt.encode({"sub": "u", "iss": "p", "exp": int(time.time()) + 60}, SECRET * 2, algorithm="HS512"),
         "HS256"),
        (lambda: f"{_b64({'alg': 'none'})}.{_b64({'sub': 'u', 'iss': 'p', 'exp': int(time.time()) + 60})}.", "HS256"),
        (lambda: jwt.encode({"iss": "p", "exp": int(time.time()) + 60}, SECRET), "'sub'"),
        (lambda: jwt.encode({"sub": "u", "iss": "p"}, SECRET), "'exp'"),
        (lambda: jwt.encode({"sub": "u", "iss": "p", "exp": int(time.time()) + 60, "budget": {"window": "year"}},
                            SECRET), "budget"),
        (lambda: jwt.encode({"sub": "u", "iss": "p", "exp": int(time.time()) + 60,
                             "budget": {"ai": 1, "compute": 1, "window": "day", "windowStart": "yesterday"}},
                            SECRET), "windowStart"),
        (lambda: jwt.encode({"sub": "u", "iss": "p", "exp": int(time.time()) + 60, "permissions": {"maxTurns": 0}},
                            SECRET), "maxTurns"),
        (lambda: "a.b", "not a token"),
        (lambda: "!!.??.##", "not a token"),
    ])
    def test_refused_tokens(self, make, words):
        with pytest.raises(AuthError) as caught:
            verify_token(make(), SECRET)
        assert words in str(caught.value) and SECRET not in str(caught.value)

    def test_project_check(self):
        tok = create_token("u", "p1", SECRET)
        assert verify_token(tok, SECRET, project_id="p1")["iss"] == "p1"
        with pytest.raises(AuthError, match="another project"):
            verify_token(tok, SECRET, project_id="p2")

    def test_secrets_must_be_long_enough_and_never_show(self):
        with pytest.raises(ConfigurationError, match="at least 32") as caught:
            create_token("u", "p", "short-secret")
        assert "short-secret" not in str(caught.value)
        with pytest.raises(ConfigurationError):
            verify_token(create_token("u", "p", SECRET), "")

    @pytest.mark.parametrize("text, expected", [
        ("2026-01-05T09:30:00.123456Z", datetime(2026, 1, 5, 9, 30, 0, 123456, tzinfo=timezone.utc)),  # PY
        ("2026-01-05T09:30:00.123Z", datetime(2026, 1, 5, 9, 30, 0, 123000, tzinfo=timezone.utc)),  # TS
        ("2026-01-05T11:30:00+02:00", datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)),  # GO, a local offset
        ("2026-01-05T00:00:00Z", datetime(2026, 1, 5, tzinfo=timezone.utc)),  # the CLI's midnight
        (None, None),  # the CLI docs leave it out
    ])
    def test_window_start_in_every_sdks_form(self, text, expected):
        assert parse_window_start(text) == expected

    def test_principal(self):
        p = principal_from_token(create_token("u", "p", SECRET, create_budget(2, 1, "lifetime")), SECRET)
        assert p.user_id == "u" and p.budget.ai_dollars == Decimal(2) and not p.expired()
        assert SECRET not in repr(p)
        assert Principal("a/b", "c").key != Principal("a", "b/c").key  # no two users share a key


class TestPermissions:
    @pytest.mark.parametrize("claim", [
        {"tools": ["add"], "blockedTools": ["sub"], "maxTurns": 3, "model": "m1"},  # TypeScript
        {"allowedTools": ["add"], "maxTurns": 3},  # PHP, TS CLAUDE.md
        {"allowedModels": ["m1"], "allowedTools": ["add"], "maxTurnsPerSession": 3},  # Go
    ])
    def test_every_sdks_shape_is_read(self, claim):
        p = Permissions.from_claim(claim)
        assert p.allows_tool("add") and not p.allows_tool("sub") and p.max_turns == 3
        assert p.allows_tool("mcp__inline-tools__add", "add")
        if "model" in claim or "allowedModels" in claim:
            assert p.allows_model("m1") and not p.allows_model("m2")

    def test_wildcards_and_caps(self):
        p = Permissions.from_claim({"allowedTools": ["*"], "allowedModels": ["*"], "maxTurns": 4})
        assert p.allows_tool("anything") and p.allows_model("any")
        assert p.cap_turns(10) == 4 and p.cap_turns(2) == 2 and p.cap_turns(None) == 4
        assert Permissions().cap_turns(None) is None

    def test_bad_permissions_to_create_token(self):
        with pytest.raises(ConfigurationError, match="unknown permissions"):
            create_token("u", "p", SECRET, permissions={"root": True})


class TestAuthorisation:
    def test_a_session_is_found_only_by_its_owner(self):
        store = MemoryStore()
        alice, bob = Principal("alice", "p"), Principal("bob", "p")
        c = Convo(ScriptedService([reply("hi")]), store=store, id="s1", extra_data={"owner": owner_of(alice)})
        c.send("hello")
        assert load_owned(store, alice, "s1").id == "s1"
        messages = set()
        for who, sid in ((bob, "s1"), (alice, "nope"), (Principal("alice", "other-project"), "s1")):
            with pytest.raises(SessionNotFound) as caught:
                load_owned(store, who, sid)
            messages.add(str(caught.value).replace(sid, "ID"))
        assert messages == {"session 'ID' not found"}

    def test_sub_convos_are_not_sessions(self):
        store = MemoryStore()
        alice = Principal("alice", "p")
        c = Convo(ScriptedService([reply("hi"), reply("sub")]), store=store, id="s1",
                  extra_data={"owner": owner_of(alice)})
        c.send("hello")
        sub = c.sub_convo(id="s1-sub", extra_data={"owner": owner_of(alice)})
        sub.send("x")
        with pytest.raises(SessionNotFound):
            load_owned(store, alice, "s1-sub")


def _principal(ai: float = 1.0, hours: float = 1.0, window: str = "day") -> Principal:
    return principal_from_token(create_token("u", "p", SECRET, create_budget(ai, hours, window)), SECRET)


class TestBudgets:
    @pytest.mark.parametrize("window, expected", [
        ("hour", datetime(2026, 3, 18, 14, tzinfo=timezone.utc)),
        ("day", datetime(2026, 3, 18, tzinfo=timezone.utc)),
        ("week", datetime(2026, 3, 16, tzinfo=timezone.utc)),  # the Monday
        ("month", datetime(2026, 3, 1, tzinfo=timezone.utc)),
        ("lifetime", None),
    ])
    def test_windows_are_utc_calendar_periods(self, window, expected):
        at = datetime(2026, 3, 18, 14, 25, 7, tzinfo=timezone.utc).timestamp()  # a Wednesday
        assert window_start(window, at) == expected

    def test_reserve_settle_and_refuse(self):
        store = MemoryStore()
        budget = UserBudget(store, _principal(ai=1.0))
        key = budget.reserve(Decimal("0.6"))
        with pytest.raises(WindowExhausted) as caught:
            budget.reserve(Decimal("0.6"))  # 0.6 held + 0.6 > 1.0
        assert caught.value.requested == Decimal("0.6") and caught.value.details()["limitMicrodollars"] == 1_000_000
        budget.settle(key, Decimal("0.6"), Decimal("0.1"))
        assert budget.spent() == Decimal("0.1")
        budget.reserve(Decimal("0.6"))
        budget.charge(Decimal("0.5"))
        with pytest.raises(WindowExhausted) as caught:
            budget.check()
        assert str(caught.value).startswith("Budget exceeded for window 'day'")

    def test_a_new_window_starts_afresh(self):
        store = MemoryStore()
        now = [datetime(2026, 3, 18, 23, 59, tzinfo=timezone.utc).timestamp()]
        budget = UserBudget(store, _principal(ai=1.0), clock=lambda: now[0])
        budget.charge(Decimal(1))
        with pytest.raises(WindowExhausted):
            budget.check()
        now[0] += 120  # past midnight UTC
        budget.check()

    def test_compute_seconds(self):
        budget = UserBudget(MemoryStore(), _principal(hours=1 / 3600))
        budget.charge_compute(0.6)
        budget.check()
        budget.charge_compute(0.6)
        with pytest.raises(WindowExhausted) as caught:
            budget.check()
        assert caught.value.kind == "compute" and caught.value.details()["limitSeconds"] == 1.0

    def test_users_do_not_share_budgets(self):
        store = MemoryStore()
        a = UserBudget(store, principal_from_token(create_token("a", "p", SECRET, create_budget(1, 1)), SECRET))
        b = UserBudget(store, principal_from_token(create_token("b", "p", SECRET, create_budget(1, 1)), SECRET))
        a.charge(Decimal(1))
        b.check()

    def test_no_budget_claim_is_unlimited(self):
        budget = UserBudget(MemoryStore(), principal_from_token(create_token("u", "p", SECRET), SECRET))
        assert not budget.limited and budget.reserve(Decimal(10 ** 6)) is None

    def test_reservations_from_many_threads_never_pass_the_budget(self, store):
        """Under load, on every store backend: 16 threads race to reserve; exactly what fits is granted."""
        budget = UserBudget(store, _principal(ai=1.0))
        granted = []
        lock = threading.Lock()

        def grab() -> None:
            for _ in range(10):
                try:
                    budget.reserve(Decimal("0.03"))
                except WindowExhausted:
                    continue
                with lock:
                    granted.append(1)

        threads = [threading.Thread(target=grab) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(granted) == 33 and budget.spent() == Decimal("0.99")
