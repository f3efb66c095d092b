"""Tokens and authorisation: who a connection is, what it may do, and whose sessions it may touch.

A token is a JWT signed with HMAC-SHA256 by the application's backend, one
per end user, exactly as the Chucky SDKs make them (``create_token`` in the
Python, TypeScript, Go and PHP SDKs)::

    header  {"alg": "HS256", "typ": "JWT"}
    claims  {"sub": user id, "iss": project id, "iat": ..., "exp": ...,
             "budget": {"ai": microdollars, "compute": seconds,
                        "window": "hour"|"day"|"week"|"month"|"lifetime",
                        "windowStart": ISO 8601},
             "permissions": {...}}      # optional

Verification (PyJWT) checks the signature over the segments as received
(the Python SDK signs JSON with spaces, the others without: nothing is
re-serialised), compares in constant time, accepts HS256 only (``alg:
none``, HS512 and RS256 are refused), and requires ``exp``, ``sub`` and
``iss``. ``windowStart`` may be any ISO 8601 form or missing (see
:mod:`convo.server.budgets` for how windows are counted).

``permissions`` has three shapes in the SDKs; all are read:
``tools``/``allowedTools`` (tool names the session may offer the model, in
either the bare or the ``mcp__server__tool`` form, ``"*"`` for all),
``blockedTools``, ``model``/``allowedModels`` (a name or a list) and
``maxTurns``/``maxTurnsPerSession``. ``create_token`` writes
``allowedTools``, ``blockedTools``, ``allowedModels`` and ``maxTurns``.

Authorisation lives here and nowhere else: :func:`owner_of` is what a
session is stamped with, :func:`load_owned` is the only way a handler reads
a stored session for a principal, and a session that is not the
principal's is "not found", exactly as one that does not exist. For the
chats API, :func:`owner_uuid` is the owner a chat is stamped with (every
chat read filters by it) and :func:`request_token` finds the token in a
request's headers, cookie or query; ``permissions.admin`` marks the tokens
that may manage providers and model configs.

Secrets never appear in an error, a log line or a repr: errors say what
was wrong with a token, never the key it was checked against.

Everything here is immutable or stateless, and so thread-safe.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal, ROUND_DOWN
from typing import Any

from attrs import field, frozen

from ..errors import ConfigurationError, ConvoError

__all__ = [
    "AuthError",
    "MIN_SECRET_BYTES",
    "Permissions",
    "Principal",
    "SessionNotFound",
    "TokenBudget",
    "WINDOWS",
    "check_secret",
    "create_budget",
    "create_token",
    "load_owned",
    "owner_of",
    "owner_uuid",
    "principal_from_token",
    "request_token",
    "verify_token",
]

#: HMAC-SHA256 keys shorter than this are refused (RFC 7518 section 3.2; Chucky's own keys are 40 bytes).
MIN_SECRET_BYTES = 32

#: The budget windows a token may name ("lifetime" never resets; the TypeScript SDK has it).
WINDOWS = ("hour", "day", "week", "month", "lifetime")

#: Seconds of clock difference tolerated between the token's maker and this server.
LEEWAY_SECONDS = 30


class AuthError(ConvoError, PermissionError):
    """A token that is refused (forged, expired, malformed), or an action its permissions forbid."""


class SessionNotFound(ConvoError, LookupError):
    """No session with this id belongs to the caller: it does not exist, or it is someone else's.

    The two cases are the same error with the same message, so a caller
    cannot learn whether another user's session exists.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} not found")


def check_secret(secret: Any) -> bytes:
    """The secret as bytes, checked: a str or bytes of at least :data:`MIN_SECRET_BYTES` bytes.

    Raises:
        ConfigurationError: it is missing or too short (the message never shows it).
    """
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise ConfigurationError("a signing secret (str or bytes) is required")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"the signing secret is {len(secret)} bytes; HMAC-SHA256 needs at least "
                                 f"{MIN_SECRET_BYTES} (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return secret


def _jwt():
    try:
        import jwt
    except ImportError:  # pragma: no cover - the extra is part of the test environment
        raise ConfigurationError("tokens need PyJWT: pip install 'convo[remote]' (or 'convo[server]')") from None
    return jwt


# --- budgets -----------------------------------------------------------------------------


def _iso_utc(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_window_start(value: Any) -> datetime | None:
    """A ``windowStart`` in any ISO 8601 form (``Z``, an offset, microseconds, none), or None when missing.

    Raises:
        AuthError: it is present and not ISO 8601.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AuthError("token budget.windowStart must be an ISO 8601 string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise AuthError(f"token budget.windowStart is not ISO 8601: {value[:40]!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


@frozen
class TokenBudget:
    """A token's budget: AI dollars (in microdollars) and compute seconds per window.

    Immutable.
    """

    ai: int
    compute: int
    window: str = "day"
    window_start: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("ai", "compute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"budget {name} must be an int >= 0, got {value!r}")
        if self.window not in WINDOWS:
            raise ConfigurationError(f"budget window must be one of {', '.join(WINDOWS)}; got {self.window!r}")

    @property
    def ai_dollars(self) -> Decimal:
        """The AI budget in dollars (exact)."""
        return Decimal(self.ai) / 1_000_000

    @property
    def compute_seconds(self) -> int:
        return self.compute

    def to_claim(self) -> dict:
        claim: dict[str, Any] = {"ai": self.ai, "compute": self.compute, "window": self.window}
        if self.window_start is not None:
            claim["windowStart"] = self.window_start
        return claim

    @classmethod
    def from_claim(cls, claim: Any) -> "TokenBudget":
        """The budget a token's ``budget`` claim holds.

        Raises:
            AuthError: the claim is not a budget.
        """
        if not isinstance(claim, dict):
            raise AuthError("token budget must be an object {ai, compute, window, windowStart}")
        try:
            budget = cls(int(claim.get("ai", 0)), int(claim.get("compute", 0)), claim.get("window", "day"),
                         claim.get("windowStart"))
        except (ConfigurationError, TypeError, ValueError) as exc:
            raise AuthError(f"token budget is invalid: {exc}") from None
        parse_window_start(budget.window_start)
        return budget


def create_budget(ai_dollars: Any, compute_hours: Any, window: str = "day",
                  window_start: datetime | None = None) -> TokenBudget:
    """A token budget: ``ai_dollars`` and ``compute_hours`` per ``window``, as the Chucky SDKs make it.

    Dollars become whole microdollars (truncated, as the Python and Go
    SDKs do); hours become whole seconds. ``window_start`` defaults to now
    (UTC); it is written as ISO 8601 with a ``Z``.
    """
    micro = (Decimal(str(ai_dollars)) * 1_000_000).to_integral_value(rounding=ROUND_DOWN)
    seconds = (Decimal(str(compute_hours)) * 3600).to_integral_value(rounding=ROUND_DOWN)
    start = window_start if window_start is not None else datetime.now(timezone.utc)
    return TokenBudget(int(micro), int(seconds), window, _iso_utc(start))


# --- permissions -------------------------------------------------------------------------------


def _names(value: Any, what: str) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthError(f"token permissions.{what} must be a name or a list of names")


@frozen
class Permissions:
    """What a token allows: which tools and models, how many model replies per turn, and whether it is an admin's.

    ``tools`` / ``models`` None means any. ``admin`` (claim ``admin: true``)
    lets the token manage the chats API's providers and model configs.
    Immutable.
    """

    tools: tuple | None = None
    blocked_tools: tuple = ()
    models: tuple | None = None
    max_turns: int | None = None
    admin: bool = False

    @classmethod
    def from_claim(cls, claim: Any) -> "Permissions":
        """Read any of the SDKs' three shapes (see the module docstring).

        Raises:
            AuthError: the claim is not an object, or a field has the wrong type.
        """
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise AuthError("token permissions must be an object")
        tools = _names(claim.get("allowedTools", claim.get("tools")), "allowedTools")
        if tools is not None and "*" in tools:
            tools = None
        models = _names(claim.get("allowedModels", claim.get("model", claim.get("models"))), "allowedModels")
        if models is not None and "*" in models:
            models = None
        turns = claim.get("maxTurns", claim.get("maxTurnsPerSession"))
        if turns is not None and (isinstance(turns, bool) or not isinstance(turns, int) or turns < 1):
            raise AuthError("token permissions.maxTurns must be a positive integer")
        admin = claim.get("admin", False)
        if not isinstance(admin, bool):
            raise AuthError("token permissions.admin must be true or false")
        return cls(tools, _names(claim.get("blockedTools"), "blockedTools") or (), models, turns, admin)

    @classmethod
    def of(cls, value: Any) -> "Permissions":
        """Permissions from a :class:`Permissions`, None, or a dict of ``tools``/``blocked_tools``/``models``/``max_turns``
        (the claim's camelCase keys work too)."""
        if value is None or isinstance(value, Permissions):
            return value or cls()
        if not isinstance(value, dict):
            raise ConfigurationError(f"permissions must be a dict or convo.remote.Permissions, got {type(value).__name__}")
        snake = {"allowed_tools": "allowedTools", "blocked_tools": "blockedTools", "allowed_models": "allowedModels",
                 "models": "allowedModels", "max_turns": "maxTurns", "tools": "allowedTools"}
        known = set(snake) | set(snake.values()) | {"model", "maxTurnsPerSession", "admin"}
        unknown = set(value) - known
        if unknown:
            raise ConfigurationError(f"unknown permissions {sorted(unknown)}; expected tools, blocked_tools, models, "
                                     "max_turns, admin")
        try:
            return cls.from_claim({snake.get(k, k): v for k, v in value.items()})
        except AuthError as exc:
            raise ConfigurationError(str(exc)) from None

    def to_claim(self) -> dict:
        claim: dict[str, Any] = {}
        if self.tools is not None:
            claim["allowedTools"] = list(self.tools)
        if self.blocked_tools:
            claim["blockedTools"] = list(self.blocked_tools)
        if self.models is not None:
            claim["allowedModels"] = list(self.models)
        if self.max_turns is not None:
            claim["maxTurns"] = self.max_turns
        if self.admin:
            claim["admin"] = True
        return claim

    def allows_tool(self, *names: str) -> bool:
        """Whether a tool known by any of ``names`` (bare, ``mcp__server__tool``) may be offered."""
        if any(n in self.blocked_tools for n in names):
            return False
        return self.tools is None or any(n in self.tools for n in names)

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def cap_turns(self, max_turns: int | None) -> int | None:
        """``max_turns`` lowered to the token's cap, if it has one."""
        if self.max_turns is None:
            return max_turns
        return self.max_turns if max_turns is None else min(max_turns, self.max_turns)


# --- tokens ------------------------------------------------------------------------------------


def create_token(user_id: str, project_id: str, secret: str | bytes, budget: TokenBudget | None = None,
                 expires_in: int = 3600, permissions: Any = None) -> str:
    """A signed token for one end user, in the form every Chucky SDK makes (and this server reads).

    Args:
        user_id: the end user (``sub``); budgets and sessions are theirs.
        project_id: the project (``iss``).
        secret: the HMAC key the server verifies with (at least 32 bytes).
        budget: from :func:`create_budget`; None for a token with no budget
            claim (the server then enforces no window budget).
        expires_in: seconds until it expires (default one hour, as the SDKs).
        permissions: a :class:`Permissions` or a dict of ``tools``,
            ``blocked_tools``, ``models`` and ``max_turns``.

    Raises:
        ConfigurationError: a bad argument (a short secret, a bad permission).
    """
    key = check_secret(secret)
    for name, value in (("user_id", user_id), ("project_id", project_id)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{name} must be a non-empty str, got {value!r}")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
        raise ConfigurationError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    if budget is not None and not isinstance(budget, TokenBudget):
        raise ConfigurationError(f"budget must come from create_budget(), got {type(budget).__name__}")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iss": project_id, "iat": now, "exp": now + expires_in}
    if budget is not None:
        claims["budget"] = budget.to_claim()
    perms = Permissions.of(permissions).to_claim()
    if perms:
        claims["permissions"] = perms
    return _jwt().encode(claims, key, algorithm="HS256", headers={"typ": "JWT"})


def verify_token(token: str, secret: str | bytes, *, project_id: str | None = None) -> dict:
    """The claims of a valid token.

    Valid means: a well-formed JWT, signed with HS256 under ``secret``
    (checked over the segments as received, in constant time), not expired
    (30 s of clock difference allowed), with ``sub`` and ``iss``, ``iss``
    equal to ``project_id`` when that is given, and a well-formed budget
    and permissions when present.

    Raises:
        AuthError: the token is refused; the message says why.
        ConfigurationError: ``secret`` is missing or too short.
    """
    key = check_secret(secret)
    jwt = _jwt()
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("not a token: expected a JWT (three dot-separated parts)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("not a token: its header does not decode") from None
    if header.get("alg") != "HS256":
        raise AuthError(f"token algorithm {str(header.get('alg'))[:20]!r} is not accepted; tokens are signed with HS256")
    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "sub", "iss"], "verify_iss": False})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token has no {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"token refused: {type(exc).__name__}") from None
    for name in ("sub", "iss"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise AuthError(f"token {name} must be a non-empty string")
    if project_id is not None and claims["iss"] != project_id:
        raise AuthError("token was issued for another project")
    if claims.get("budget") is not None:
        TokenBudget.from_claim(claims["budget"])
    Permissions.from_claim(claims.get("permissions"))
    return claims


@frozen
class Principal:
    """Who a verified token speaks for: a user of a project, their budget, permissions and expiry.

    Immutable.
    """

    user_id: str
    project_id: str
    budget: TokenBudget | None = None
    permissions: Permissions = field(factory=Permissions)
    expires_at: float = 0.0

    @property
    def key(self) -> str:
        """One string per (project, user): budgets, session slots and "latest session" are kept under it."""
        return f"{len(self.project_id)}:{self.project_id}/{self.user_id}"

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.expires_at + LEEWAY_SECONDS

    def __repr__(self) -> str:
        return f"Principal(user_id={self.user_id!r}, project_id={self.project_id!r})"


def principal_from_token(token: Any, secret: str | bytes, *, project_id: str | None = None) -> Principal:
    """The :class:`Principal` of a valid token (see :func:`verify_token`).

    Raises:
        AuthError: the token is missing or refused.
    """
    if not token:
        raise AuthError("no token: connect with ?token=<JWT>")
    claims = verify_token(token, secret, project_id=project_id)
    budget = TokenBudget.from_claim(claims["budget"]) if claims.get("budget") is not None else None
    return Principal(claims["sub"], claims["iss"], budget, Permissions.from_claim(claims.get("permissions")),
                     float(claims["exp"]))


# --- the one place sessions are authorised -----------------------------------------------------


def owner_of(principal: Principal) -> dict:
    """What a session is stamped with (in its stored ``extra_data``) to say whose it is."""
    return {"iss": principal.project_id, "sub": principal.user_id}


def owner_uuid(principal: Principal) -> str:
    """The chats API's ``owner_id`` for a principal: a UUID derived from its project and user (so stable
    across replicas and restarts). Every chat read goes through it: a chat stamped with another owner is
    "not found"."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "convo-chat-owner:" + principal.key))


def request_token(headers: Any, query: Any = None, cookies: Any = None) -> str | None:
    """The token an HTTP request or WebSocket upgrade carries, for the chats API, as Coder's clients send it:
    ``Authorization: Bearer``, the ``Coder-Session-Token`` header, or the ``coder_session_token`` cookie or
    query parameter (what a browser's WebSocket can send); None if it carries none."""
    header = (headers.get("authorization") or "").strip()
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    for value in (headers.get("coder-session-token"), (cookies or {}).get("coder_session_token"),
                  (query or {}).get("coder_session_token")):
        if value and value.strip():
            return value.strip()
    return None


def owns(principal: Principal, state: dict) -> bool:
    extra = state.get("extra_data")
    owner = extra.get("owner") if isinstance(extra, dict) else None
    return owner == owner_of(principal)


def load_owned(store: Any, principal: Principal, session_id: Any) -> Any:
    """The stored session ``session_id`` if it is the principal's.

    Raises:
        SessionNotFound: it does not exist, is not a session, or belongs to
            someone else (one error for all three).
    """
    from ..errors import ConversationNotFound, ConversationUnreadable

    if not isinstance(session_id, str) or not session_id or len(session_id) > 200:
        raise SessionNotFound(str(session_id)[:200])
    try:
        stored = store.load(session_id)
    except (ConversationNotFound, ConversationUnreadable):
        raise SessionNotFound(session_id) from None
    if stored.parent_id is not None or not owns(principal, stored.state):
        raise SessionNotFound(session_id)
    return stored
