"""The chats API's JSON, as pure functions: Coder's experimental chats API (first public version).

Everything the routes, the stream and the client read or write is here,
and nothing else is: values in, JSON out (``to_wire``), JSON in, values out
(``from_wire`` and the ``parse_*`` request readers). No sockets, threads or
stores. The shapes follow ``codersdk`` at coder/coder ``edee917d`` (see
``/work/shared/protocols/coder-chats.md``), field for field and in the same
order; Go's ``omitempty`` is kept (an empty string, false, zero or null is
left out where Go leaves it out).

What convo adds, each a key a Go client ignores:

- ``Chat.usage``: the tokens and dollars of this chat's own model calls,
  and ``Chat.total_usage``: this chat's and every sub-chat's below it (on
  a root chat, the whole tree). Coder rolls nothing up (section 14.14).
  Dollars are decimal strings, exact.
- ``Chat.last_error``: why the chat is in ``error`` (Coder added the same
  field later; section 14.19).

Requests are read as Go's ``encoding/json`` reads them: unknown keys are
ignored, ``null`` is the zero value, and a value of the wrong type is the
400 "Request body must be valid JSON." with a decoder-style detail.

Immutable values and pure functions: thread-safe.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

from attrs import field, frozen

__all__ = [
    "API_PREFIX",
    "CatalogModel",
    "CatalogProvider",
    "Chat",
    "ChatMessage",
    "ChatStatus",
    "ChatUsage",
    "ChatWithMessages",
    "CreateChat",
    "CreateMessage",
    "DiffContents",
    "DiffStatus",
    "EditMessage",
    "MAX_QUEUE_SIZE",
    "MessagePart",
    "MessagePosted",
    "MessageUsage",
    "ModelCatalog",
    "ModelConfig",
    "ModelConfigCreate",
    "ModelConfigUpdate",
    "NIL_UUID",
    "PROVIDERS",
    "ProviderConfig",
    "ProviderCreate",
    "ProviderUpdate",
    "QueuedMessage",
    "STREAM_BATCH",
    "StreamEvent",
    "WatchEvent",
    "WireError",
]

#: Where every route lives.
API_PREFIX = "/api/experimental/chats"

#: Queued messages one chat may hold (Coder's ``MaxQueueSize``).
MAX_QUEUE_SIZE = 20

#: Events per stream frame (Coder's ``chatStreamBatchSize``).
STREAM_BATCH = 256

NIL_UUID = "00000000-0000-0000-0000-000000000000"

#: Supported providers in Coder's order, with their default display names; ``local`` (the
#: embedded model, no key) is convo's own and comes last.
PROVIDERS = {
    "anthropic": "Anthropic",
    "azure": "Azure OpenAI",
    "bedrock": "AWS Bedrock",
    "google": "Google",
    "openai": "OpenAI",
    "openai-compat": "OpenAI Compatible",
    "openrouter": "OpenRouter",
    "vercel": "Vercel AI Gateway",
    "local": "Local model",
}

#: Providers that need no API key to be available.
KEYLESS_PROVIDERS = ("local",)

DEFAULT_COMPRESSION_THRESHOLD = 70

# --- the messages Coder answers with -------------------------------------------------------------

SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
NOT_FOUND = "Resource not found or you do not have access to this resource"
FORBIDDEN = "Forbidden."
FORBIDDEN_DETAIL = ("You don't have permission to view this content. If you believe this is a mistake, please "
                    "contact your administrator or try signing in with different credentials.")
ROUTE_NOT_FOUND = "Route not found."
METHOD_NOT_ALLOWED = "Method not allowed."
BAD_JSON = "Request body must be valid JSON."
QUEUE_FULL = "Message queue is full."


class ChatStatus(str, enum.Enum):
    """A chat's status; the values are what the API and the store say."""

    WAITING = "waiting"
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class WireError(Exception):
    """A request the API refuses: the status code and Coder's ``Response`` body.

    ``body()`` is ``{"message", "detail"?, "validations"?}`` (empty ones left out).
    """

    def __init__(self, status: int, message: str, detail: str = "", validations: Sequence[dict] = ()) -> None:
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = tuple(validations)
        super().__init__(f"{status}: {message}" + (f" ({detail})" if detail else ""))

    def body(self) -> dict:
        return response_body(self.message, self.detail, self.validations)


def response_body(message: str, detail: str = "", validations: Sequence[dict] = ()) -> dict:
    """Coder's error body (``codersdk.Response``), ``detail`` and ``validations`` left out when empty."""
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    if validations:
        body["validations"] = [dict(v) for v in validations]
    return body


def not_found() -> WireError:
    return WireError(404, NOT_FOUND)


def forbidden() -> WireError:
    return WireError(403, FORBIDDEN, FORBIDDEN_DETAIL)


def signed_out(detail: str = "") -> WireError:
    return WireError(401, SIGNED_OUT, detail)


# --- times, ids, JSON ---------------------------------------------------------------------------


def format_time(when: datetime | float) -> str:
    """RFC 3339 in UTC as Go writes a ``time.Time`` (``RFC3339Nano``: trailing zeros of the fraction cut)."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, timezone.utc)
    when = when.astimezone(timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += ("." + f"{when.microsecond:06d}").rstrip("0")
    return text + "Z"


def parse_time(text: Any) -> datetime:
    """A timestamp the API wrote (any RFC 3339 form) as an aware datetime."""
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp: {text!r}")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", value)
    if match and match.group(2) and len(match.group(2)) > 7:  # Go writes nanoseconds; Python reads micro
        value = match.group(1) + match.group(2)[:7] + match.group(3)
    when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def dumps(value: Any) -> str:
    """Compact JSON, as Go's ``json.Marshal`` writes it (no spaces; UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_uuid(raw: str) -> str:
    """A path's UUID in its canonical form.

    Raises:
        WireError: 400 ``Invalid UUID "<raw>".``, as Coder's path parser says it.
    """
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError) as exc:
        raise WireError(400, f"Invalid UUID {json.dumps(raw)}.", str(exc) or "invalid UUID") from None


def parse_id(raw: str, message: str, detail: str = "") -> int:
    """A path's positive int64 id, or a 400 with ``message``."""
    if not re.fullmatch(r"[0-9]{1,19}", raw or "") or not 0 < int(raw) < 2 ** 63:
        raise WireError(400, message, detail)
    return int(raw)


def _omit_empty(d: dict) -> dict:
    """Go's ``omitempty``: drop None, "", False, 0 and empty containers."""
    return {k: v for k, v in d.items() if v is not None and v != "" and v is not False and v != 0
            and v != [] and v != {}}


# --- usage --------------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a decimal: {value!r}") from None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a token count is an int >= 0, got {value!r}")
    return value


@frozen
class ChatUsage:
    """Tokens and dollars a chat's model calls used (convo's addition to Coder's ``Chat``).

    Values add up: ``a + b`` is a ``ChatUsage``, so a tree's total is a sum.
    ``cost_usd`` is exact (a :class:`~decimal.Decimal`).
    """

    input_tokens: int = field(default=0, converter=_count)
    output_tokens: int = field(default=0, converter=_count)
    reasoning_tokens: int = field(default=0, converter=_count)
    cache_creation_tokens: int = field(default=0, converter=_count)
    cache_read_tokens: int = field(default=0, converter=_count)
    cost_usd: Decimal = field(default=Decimal(0), converter=_dec)
    responses: int = field(default=0, converter=_count)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens

    def __add__(self, other: "ChatUsage") -> "ChatUsage":
        if not isinstance(other, ChatUsage):
            return NotImplemented
        return ChatUsage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                         self.reasoning_tokens + other.reasoning_tokens,
                         self.cache_creation_tokens + other.cache_creation_tokens,
                         self.cache_read_tokens + other.cache_read_tokens, self.cost_usd + other.cost_usd,
                         self.responses + other.responses)

    def __radd__(self, other: Any) -> "ChatUsage":
        if other == 0:
            return self
        return NotImplemented

    def to_wire(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "reasoning_tokens": self.reasoning_tokens, "cache_creation_tokens": self.cache_creation_tokens,
                "cache_read_tokens": self.cache_read_tokens, "total_tokens": self.total_tokens,
                "cost_usd": str(self.cost_usd), "responses": self.responses}

    @classmethod
    def from_wire(cls, d: Any) -> "ChatUsage":
        if not isinstance(d, dict):
            return cls()
        return cls(d.get("input_tokens", 0), d.get("output_tokens", 0), d.get("reasoning_tokens", 0),
                   d.get("cache_creation_tokens", 0), d.get("cache_read_tokens", 0), d.get("cost_usd", "0"),
                   d.get("responses", 0))


@frozen
class MessageUsage:
    """``ChatMessageUsage``: an assistant message's tokens (all optional, as in Go)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_creation_tokens: int | None = None
    cache_read_tokens: int | None = None
    context_limit: int | None = None

    def to_wire(self) -> dict:
        return {k: v for k, v in (("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens),
                                  ("total_tokens", self.total_tokens), ("reasoning_tokens", self.reasoning_tokens),
                                  ("cache_creation_tokens", self.cache_creation_tokens),
                                  ("cache_read_tokens", self.cache_read_tokens),
                                  ("context_limit", self.context_limit)) if v is not None}

    @classmethod
    def from_wire(cls, d: Any) -> "MessageUsage | None":
        if not isinstance(d, dict):
            return None
        return cls(*(d.get(k) for k in ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens",
                                        "cache_creation_tokens", "cache_read_tokens", "context_limit")))

    def is_empty(self) -> bool:
        return self == MessageUsage()


# --- message parts ------------------------------------------------------------------------------

_PART_FIELDS = ("type", "text", "signature", "tool_call_id", "tool_name", "args", "args_delta", "result",
                "result_delta", "is_error", "source_id", "url", "title", "media_type", "data")


@frozen
class MessagePart:
    """``ChatMessagePart``: one piece of a message. Every field but ``type`` is optional.

    ``args`` and ``result`` hold JSON values (Go's ``json.RawMessage``);
    ``data`` is base64 text (Go's ``[]byte``).
    """

    type: str
    text: str = ""
    signature: str = ""
    tool_call_id: str = ""
    tool_name: str = ""
    args: Any = None
    args_delta: str = ""
    result: Any = None
    result_delta: str = ""
    is_error: bool = False
    source_id: str = ""
    url: str = ""
    title: str = ""
    media_type: str = ""
    data: str = ""

    def to_wire(self) -> dict:
        d = {name: getattr(self, name) for name in _PART_FIELDS}
        out = {"type": self.type}
        for name in _PART_FIELDS[1:]:
            value = d[name]
            if name in ("args", "result"):
                if value is not None:  # raw JSON: {} and [] are kept, as Go keeps non-empty raw bytes
                    out[name] = value
            elif value not in ("", False, None):
                out[name] = value
        return out

    @classmethod
    def from_wire(cls, d: dict) -> "MessagePart":
        if not isinstance(d, dict):
            raise ValueError(f"a message part is an object, got {type(d).__name__}")
        values = {name: d[name] for name in _PART_FIELDS if d.get(name) is not None}
        values.setdefault("type", "")
        return cls(**values)

    # -- constructors for the part kinds the server makes --

    @classmethod
    def text_part(cls, text: str) -> "MessagePart":
        return cls("text", text=text)

    @classmethod
    def reasoning(cls, text: str = "", title: str = "") -> "MessagePart":
        return cls("reasoning", text=text, title=title)

    @classmethod
    def tool_call(cls, tool_call_id: str, tool_name: str, args: Any = None, args_delta: str = "") -> "MessagePart":
        return cls("tool-call", tool_call_id=tool_call_id, tool_name=tool_name, args=args, args_delta=args_delta)

    @classmethod
    def tool_result(cls, tool_call_id: str, tool_name: str, result: Any, is_error: bool = False) -> "MessagePart":
        return cls("tool-result", tool_call_id=tool_call_id, tool_name=tool_name, result=result, is_error=is_error)


def tool_result_value(text: str, is_error: bool) -> Any:
    """A tool result's ``result`` JSON, by Coder's rules: errors become ``{"error": text}``; text that
    is valid JSON passes through; any other text becomes ``{"output": text}``."""
    if is_error:
        return {"error": text}
    stripped = text.strip()
    if stripped:
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return {"output": text}


def reasoning_title(text: str) -> str:
    """The title of a reasoning block: its bold first line (``**Title**``), at most 8 words and 80 characters."""
    first = text.strip().split("\n", 1)[0].strip()
    match = re.fullmatch(r"\*\*(.+?)\*\*:?", first)
    if not match:
        return ""
    words = match.group(1).split()
    return " ".join(words[:8])[:80]


def fallback_title(texts: Iterable[str], *, ellipsis: str = "\u2026") -> str:
    """A chat's first title: the first 6 words of its first message (+ ``…`` if more), at most 80 characters."""
    words = " ".join(texts).split()
    if not words:
        return "New Chat"
    title = " ".join(words[:6]) + (ellipsis if len(words) > 6 else "")
    return title[:80]


# --- chats and messages ----------------------------------------------------------------------------


@frozen
class DiffStatus:
    """``ChatDiffStatus``. convo has no workspaces, so every chat has the zero status."""

    chat_id: str
    changes_requested: bool = False
    additions: int = 0
    deletions: int = 0
    changed_files: int = 0
    url: str | None = None
    pull_request_state: str | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"chat_id": self.chat_id}
        if self.url is not None:
            d["url"] = self.url
        if self.pull_request_state is not None:
            d["pull_request_state"] = self.pull_request_state
        d.update(changes_requested=self.changes_requested, additions=self.additions, deletions=self.deletions,
                 changed_files=self.changed_files)
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "DiffStatus":
        return cls(d["chat_id"], bool(d.get("changes_requested")), d.get("additions", 0), d.get("deletions", 0),
                   d.get("changed_files", 0), d.get("url"), d.get("pull_request_state"))


@frozen
class DiffContents:
    """``ChatDiffContents``: no workspace, so no diff."""

    chat_id: str
    diff: str = ""

    def to_wire(self) -> dict:
        return _omit_empty({"chat_id": self.chat_id, "diff": self.diff})

    @classmethod
    def from_wire(cls, d: dict) -> "DiffContents":
        return cls(d["chat_id"], d.get("diff", ""))


@frozen
class Chat:
    """``Chat``: a chat's row as the API shows it (plus convo's ``usage``, ``total_usage``, ``last_error``)."""

    id: str
    owner_id: str
    last_model_config_id: str
    title: str
    status: ChatStatus = field(converter=ChatStatus)
    created_at: datetime
    updated_at: datetime
    parent_chat_id: str | None = None
    root_chat_id: str | None = None
    workspace_id: str | None = None
    workspace_agent_id: str | None = None
    diff_status: DiffStatus | None = None
    usage: ChatUsage = field(factory=ChatUsage)
    total_usage: ChatUsage = field(factory=ChatUsage)
    last_error: str | None = None

    def to_wire(self, *, with_diff_status: bool = False) -> dict:
        d: dict[str, Any] = {"id": self.id, "owner_id": self.owner_id}
        if self.workspace_id:
            d["workspace_id"] = self.workspace_id
        if self.workspace_agent_id:
            d["workspace_agent_id"] = self.workspace_agent_id
        if self.parent_chat_id:
            d["parent_chat_id"] = self.parent_chat_id
        # The root is always filled: the stored root, else the parent, else the chat itself.
        d["root_chat_id"] = self.root_chat_id or self.parent_chat_id or self.id
        d["last_model_config_id"] = self.last_model_config_id
        d["title"] = self.title
        d["status"] = self.status.value
        if with_diff_status:
            d["diff_status"] = (self.diff_status or DiffStatus(self.id)).to_wire()
        d["created_at"] = format_time(self.created_at)
        d["updated_at"] = format_time(self.updated_at)
        d["usage"] = self.usage.to_wire()
        d["total_usage"] = self.total_usage.to_wire()
        if self.last_error:
            d["last_error"] = self.last_error
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "Chat":
        return cls(
            id=d["id"], owner_id=d["owner_id"], last_model_config_id=d.get("last_model_config_id", NIL_UUID),
            title=d.get("title", ""), status=d["status"], created_at=parse_time(d["created_at"]),
            updated_at=parse_time(d["updated_at"]), parent_chat_id=d.get("parent_chat_id"),
            root_chat_id=d.get("root_chat_id"), workspace_id=d.get("workspace_id"),
            workspace_agent_id=d.get("workspace_agent_id"),
            diff_status=DiffStatus.from_wire(d["diff_status"]) if d.get("diff_status") else None,
            usage=ChatUsage.from_wire(d.get("usage")), total_usage=ChatUsage.from_wire(d.get("total_usage")),
            last_error=d.get("last_error"))


@frozen
class ChatMessage:
    """``ChatMessage``: one visible message (ids grow across all chats; not consecutive within one)."""

    id: int
    chat_id: str
    created_at: datetime
    role: str
    content: tuple = field(default=(), converter=tuple)
    model_config_id: str | None = None
    usage: MessageUsage | None = None

    def text(self) -> str:
        """The message's text parts joined."""
        return "".join(p.text for p in self.content if p.type == "text")

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "chat_id": self.chat_id}
        if self.model_config_id:
            d["model_config_id"] = self.model_config_id
        d["created_at"] = format_time(self.created_at)
        d["role"] = self.role
        if self.content:
            d["content"] = [p.to_wire() for p in self.content]
        if self.usage is not None and not self.usage.is_empty():
            d["usage"] = self.usage.to_wire()
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "ChatMessage":
        return cls(d["id"], d["chat_id"], parse_time(d["created_at"]), d["role"],
                   tuple(MessagePart.from_wire(p) for p in d.get("content") or ()), d.get("model_config_id"),
                   MessageUsage.from_wire(d.get("usage")))


@frozen
class QueuedMessage:
    """``ChatQueuedMessage``: a message waiting for the run in progress to end."""

    id: int
    chat_id: str
    content: tuple = field(converter=tuple)
    created_at: datetime

    def text(self) -> str:
        return "".join(p.text for p in self.content if p.type == "text")

    def to_wire(self) -> dict:
        return {"id": self.id, "chat_id": self.chat_id, "content": [p.to_wire() for p in self.content],
                "created_at": format_time(self.created_at)}

    @classmethod
    def from_wire(cls, d: dict) -> "QueuedMessage":
        return cls(d["id"], d["chat_id"], tuple(MessagePart.from_wire(p) for p in d.get("content") or ()),
                   parse_time(d["created_at"]))


@frozen
class ChatWithMessages:
    """``ChatWithMessages``: a chat, its visible messages and its queue (both lists always present)."""

    chat: Chat
    messages: tuple = field(converter=tuple)
    queued_messages: tuple = field(converter=tuple)

    def to_wire(self) -> dict:
        return {"chat": self.chat.to_wire(), "messages": [m.to_wire() for m in self.messages],
                "queued_messages": [q.to_wire() for q in self.queued_messages]}

    @classmethod
    def from_wire(cls, d: dict) -> "ChatWithMessages":
        return cls(Chat.from_wire(d["chat"]), tuple(ChatMessage.from_wire(m) for m in d.get("messages") or ()),
                   tuple(QueuedMessage.from_wire(q) for q in d.get("queued_messages") or ()))


@frozen
class MessagePosted:
    """``CreateChatMessageResponse``: the message (sent now) or the queued message (sent later)."""

    queued: bool
    message: ChatMessage | None = None
    queued_message: QueuedMessage | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {}
        if self.message is not None:
            d["message"] = self.message.to_wire()
        if self.queued_message is not None:
            d["queued_message"] = self.queued_message.to_wire()
        d["queued"] = self.queued
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "MessagePosted":
        return cls(bool(d.get("queued")), ChatMessage.from_wire(d["message"]) if d.get("message") else None,
                   QueuedMessage.from_wire(d["queued_message"]) if d.get("queued_message") else None)


# --- the stream -----------------------------------------------------------------------------------


@frozen
class StreamEvent:
    """``ChatStreamEvent``: one event of a chat's stream.

    ``type`` is ``message_part`` (``role`` and ``part``), ``message``,
    ``status``, ``error`` (``error`` is its message) or ``queue_update``
    (``queued_messages``: the whole queue; empty when the key is missing).
    """

    type: str
    chat_id: str
    message: ChatMessage | None = None
    role: str | None = None
    part: MessagePart | None = None
    status: ChatStatus | None = None
    error: str | None = None
    queued_messages: tuple = ()

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"type": self.type, "chat_id": self.chat_id}
        if self.message is not None:
            d["message"] = self.message.to_wire()
        if self.part is not None:
            mp: dict[str, Any] = {}
            if self.role:
                mp["role"] = self.role
            mp["part"] = self.part.to_wire()
            d["message_part"] = mp
        if self.status is not None:
            d["status"] = {"status": ChatStatus(self.status).value}
        if self.error is not None:
            d["error"] = {"message": self.error}
        if self.queued_messages:  # Go's omitempty: an empty queue leaves the key out
            d["queued_messages"] = [q.to_wire() for q in self.queued_messages]
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "StreamEvent":
        part = d.get("message_part") or None
        status = (d.get("status") or {}).get("status")
        return cls(
            type=d["type"], chat_id=d.get("chat_id", ""),
            message=ChatMessage.from_wire(d["message"]) if d.get("message") else None,
            role=part.get("role") if part else None,
            part=MessagePart.from_wire(part["part"]) if part and part.get("part") else None,
            status=ChatStatus(status) if status else None,
            error=(d.get("error") or {}).get("message") if d.get("error") else None,
            queued_messages=tuple(QueuedMessage.from_wire(q) for q in d.get("queued_messages") or ()))


def message_event(message: ChatMessage) -> dict:
    return StreamEvent("message", message.chat_id, message=message).to_wire()


def part_event(chat_id: str, role: str, part: MessagePart) -> dict:
    return StreamEvent("message_part", chat_id, role=role, part=part).to_wire()


def status_event(chat_id: str, status: ChatStatus | str) -> dict:
    return StreamEvent("status", chat_id, status=ChatStatus(status)).to_wire()


def error_event(chat_id: str, message: str) -> dict:
    return StreamEvent("error", chat_id, error=message).to_wire()


def queue_event(chat_id: str, queue: Sequence[QueuedMessage]) -> dict:
    return StreamEvent("queue_update", chat_id, queued_messages=tuple(queue)).to_wire()


def data_frame(events: Sequence[str]) -> str:
    """A stream frame: ``{"type":"data","data":[...]}`` from events already serialised with :func:`dumps`
    (each event is serialised once and shared by every watcher)."""
    return '{"type":"data","data":[' + ",".join(events) + "]}"


def ping_frame() -> str:
    return '{"type":"ping","data":null}'


def error_frame(message: str, detail: str = "") -> str:
    return dumps({"type": "error", "data": response_body(message, detail)})


def watch_frame(kind: str, chat: dict) -> str:
    """A ``/chats/watch`` frame (unbatched): ``{"type":"data","data":{"kind", "chat"}}``."""
    return dumps({"type": "data", "data": {"kind": kind, "chat": chat}})


@frozen
class WatchEvent:
    """One ``/chats/watch`` event: ``kind`` is ``created``, ``status_change``, ``title_change`` or ``deleted``."""

    kind: str
    chat: Chat

    @classmethod
    def from_wire(cls, d: dict) -> "WatchEvent":
        return cls(d["kind"], Chat.from_wire(d["chat"]))


def parse_envelope(text: str | bytes) -> tuple[str, Any]:
    """A stream frame's ``(type, data)``: ``ping``, ``data`` or ``error``.

    Raises:
        ValueError: the frame is not an envelope.
    """
    frame = json.loads(text)
    if not isinstance(frame, dict) or frame.get("type") not in ("ping", "data", "error"):
        raise ValueError(f"not a stream envelope: {str(text)[:200]!r}")
    return frame["type"], frame.get("data")


# --- providers, model configs, catalog --------------------------------------------------------------


@frozen
class ProviderConfig:
    """``ChatProviderConfig``. The API key is never part of it: ``has_api_key`` says whether one is set."""

    id: str
    provider: str
    display_name: str
    enabled: bool
    has_api_key: bool
    source: str
    base_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "provider": self.provider, "display_name": self.display_name,
                             "enabled": self.enabled, "has_api_key": self.has_api_key}
        if self.base_url:
            d["base_url"] = self.base_url
        d["source"] = self.source
        if self.created_at is not None:
            d["created_at"] = format_time(self.created_at)
        if self.updated_at is not None:
            d["updated_at"] = format_time(self.updated_at)
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "ProviderConfig":
        return cls(d["id"], d["provider"], d.get("display_name", ""), bool(d.get("enabled")),
                   bool(d.get("has_api_key")), d.get("source", ""), d.get("base_url"),
                   parse_time(d["created_at"]) if d.get("created_at") else None,
                   parse_time(d["updated_at"]) if d.get("updated_at") else None)


@frozen
class ModelConfig:
    """``ChatModelConfig``; ``model_config`` is the call settings (``max_output_tokens``, ``temperature``...)."""

    id: str
    provider: str
    model: str
    display_name: str
    enabled: bool
    is_default: bool
    context_limit: int
    compression_threshold: int
    created_at: datetime
    updated_at: datetime
    model_config: dict | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "provider": self.provider, "model": self.model,
                             "display_name": self.display_name, "enabled": self.enabled,
                             "is_default": self.is_default, "context_limit": self.context_limit,
                             "compression_threshold": self.compression_threshold}
        call = {k: v for k, v in (self.model_config or {}).items() if v not in (None, {}, "")}
        if call:
            d["model_config"] = call
        d["created_at"] = format_time(self.created_at)
        d["updated_at"] = format_time(self.updated_at)
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "ModelConfig":
        return cls(d["id"], d["provider"], d["model"], d.get("display_name", ""), bool(d.get("enabled")),
                   bool(d.get("is_default")), d.get("context_limit", 0), d.get("compression_threshold", 0),
                   parse_time(d["created_at"]), parse_time(d["updated_at"]), d.get("model_config"))


@frozen
class CatalogModel:
    id: str
    provider: str
    model: str
    display_name: str

    def to_wire(self) -> dict:
        return {"id": self.id, "provider": self.provider, "model": self.model, "display_name": self.display_name}

    @classmethod
    def from_wire(cls, d: dict) -> "CatalogModel":
        return cls(d["id"], d["provider"], d["model"], d.get("display_name", ""))


@frozen
class CatalogProvider:
    provider: str
    available: bool
    models: tuple = field(converter=tuple)
    unavailable_reason: str = ""

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"provider": self.provider, "available": self.available}
        if self.unavailable_reason:
            d["unavailable_reason"] = self.unavailable_reason
        d["models"] = [m.to_wire() for m in self.models]
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "CatalogProvider":
        return cls(d["provider"], bool(d.get("available")), tuple(CatalogModel.from_wire(m) for m in d.get("models") or ()),
                   d.get("unavailable_reason", ""))


@frozen
class ModelCatalog:
    """``ChatModelsResponse``: the models a user may pick, by provider (catalog ids are ``provider:model``)."""

    providers: tuple = field(converter=tuple)

    def to_wire(self) -> dict:
        return {"providers": [p.to_wire() for p in self.providers]}

    @classmethod
    def from_wire(cls, d: dict) -> "ModelCatalog":
        return cls(tuple(CatalogProvider.from_wire(p) for p in d.get("providers") or ()))


# --- reading requests --------------------------------------------------------------------------------

_GO_KIND = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number",
            type(None): "null"}


def _kind(value: Any) -> str:
    return _GO_KIND.get(type(value), "value")


def _type_error(value: Any, struct: str, name: str, go_type: str) -> WireError:
    return WireError(400, BAD_JSON, f"json: cannot unmarshal {_kind(value)} into Go struct field {struct}.{name} of "
                                    f"type {go_type}")


def read_json(raw: bytes, struct: str) -> dict:
    """A request body as Go's decoder reads it into ``struct``: an object (``null`` is the empty object).

    Raises:
        WireError: 400 "Request body must be valid JSON." with the decoder's complaint as detail.
    """
    text = raw.decode("utf-8", errors="replace").strip() if isinstance(raw, (bytes, bytearray)) else str(raw)
    if not text:
        raise WireError(400, BAD_JSON, "EOF")
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise WireError(400, BAD_JSON, str(exc).split(":")[0]) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireError(400, BAD_JSON, f"json: cannot unmarshal {_kind(value)} into Go value of type codersdk.{struct}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _field(body: dict, struct: str, name: str, kind: type | tuple, go_type: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int, float)))
    if kind is int and isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value)
    if not ok:
        raise _type_error(value, struct, name, go_type)
    return value


def _uuid_field(body: dict, struct: str, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error(value, struct, name, "uuid.UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise WireError(400, BAD_JSON, f"invalid UUID length: {len(value)}" if len(value) not in (32, 36, 38, 45)
                        else "invalid UUID format") from None


def _content(body: dict, struct: str) -> tuple:
    """The text parts of a request's ``content`` (trimmed), by Coder's rules for input parts."""
    raw = body.get("content")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _type_error(raw, struct, "content", "[]codersdk.ChatInputPart")
    texts = []
    for i, part in enumerate(raw):
        if part is None:
            part = {}
        if not isinstance(part, dict):
            raise _type_error(part, struct, "content", "codersdk.ChatInputPart")
        kind = part.get("type", "")
        text = part.get("text", "")
        if not isinstance(kind, str):
            raise _type_error(kind, "ChatInputPart", "type", "codersdk.ChatInputPartType")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise _type_error(text, "ChatInputPart", "text", "string")
        if kind != "text":
            raise WireError(400, "Invalid input part.", f"content[{i}].type {json.dumps(kind)} is not supported.")
        if not text.strip():
            raise WireError(400, "Invalid input part.", f"content[{i}].text cannot be empty.")
        texts.append(text.strip())
    if not texts:
        raise WireError(400, "Content is required.", "Content cannot be empty.")
    return tuple(texts)


@frozen
class CreateChat:
    """``CreateChatRequest``: the first message's texts, a workspace and a model config (both optional)."""

    content: tuple
    workspace_id: str | None = None
    model_config_id: str | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"content": [{"type": "text", "text": t} for t in self.content]}
        if self.workspace_id:
            d["workspace_id"] = self.workspace_id
        if self.model_config_id:
            d["model_config_id"] = self.model_config_id
        return d


def parse_create_chat(raw: bytes) -> CreateChat:
    body = read_json(raw, "CreateChatRequest")
    workspace = _uuid_field(body, "CreateChatRequest", "workspace_id")
    config = _uuid_field(body, "CreateChatRequest", "model_config_id")
    return CreateChat(_content(body, "CreateChatRequest"), workspace, config)


@frozen
class CreateMessage:
    """``CreateChatMessageRequest``."""

    content: tuple
    model_config_id: str | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"content": [{"type": "text", "text": t} for t in self.content]}
        if self.model_config_id:
            d["model_config_id"] = self.model_config_id
        return d


def parse_create_message(raw: bytes) -> CreateMessage:
    body = read_json(raw, "CreateChatMessageRequest")
    config = _uuid_field(body, "CreateChatMessageRequest", "model_config_id")
    return CreateMessage(_content(body, "CreateChatMessageRequest"), config)


@frozen
class EditMessage:
    """``EditChatMessageRequest``: the new content of a user message."""

    content: tuple

    def to_wire(self) -> dict:
        return {"content": [{"type": "text", "text": t} for t in self.content]}


def parse_edit_message(raw: bytes) -> EditMessage:
    return EditMessage(_content(read_json(raw, "EditChatMessageRequest"), "EditChatMessageRequest"))


def _provider_name(value: Any) -> str:
    name = value.strip().lower() if isinstance(value, str) else ""
    if name not in PROVIDERS:
        raise WireError(400, "Invalid provider.", f"Provider must be one of: {', '.join(PROVIDERS)}.")
    return name


def _base_url(value: str) -> str:
    value = value.strip()
    if value and not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE):
        raise WireError(400, "Invalid provider base URL.", "base_url must be an absolute http or https URL.")
    return value


@frozen
class ProviderCreate:
    """``CreateChatProviderConfigRequest``. Its repr never shows the key."""

    provider: str
    display_name: str = ""
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    enabled: bool = True

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"provider": self.provider}
        if self.display_name:
            d["display_name"] = self.display_name
        if self.api_key:
            d["api_key"] = self.api_key
        if self.base_url:
            d["base_url"] = self.base_url
        d["enabled"] = self.enabled
        return d


def parse_provider_create(raw: bytes) -> ProviderCreate:
    s = "CreateChatProviderConfigRequest"
    body = read_json(raw, s)
    provider = _field(body, s, "provider", str, "string", "")
    display = _field(body, s, "display_name", str, "string", "")
    key = _field(body, s, "api_key", str, "string", "")
    base = _field(body, s, "base_url", str, "string", "")
    enabled = _field(body, s, "enabled", bool, "bool", True)
    return ProviderCreate(_provider_name(provider), display.strip(), key, _base_url(base), enabled)


@frozen
class ProviderUpdate:
    """``UpdateChatProviderConfigRequest``: None keeps a value; ``api_key=""`` clears the key."""

    display_name: str = ""
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    enabled: bool | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {}
        if self.display_name:
            d["display_name"] = self.display_name
        if self.api_key is not None:
            d["api_key"] = self.api_key
        if self.base_url is not None:
            d["base_url"] = self.base_url
        if self.enabled is not None:
            d["enabled"] = self.enabled
        return d


def parse_provider_update(raw: bytes) -> ProviderUpdate:
    s = "UpdateChatProviderConfigRequest"
    body = read_json(raw, s)
    display = _field(body, s, "display_name", str, "string", "")
    key = _field(body, s, "api_key", str, "string", None)
    base = _field(body, s, "base_url", str, "string", None)
    enabled = _field(body, s, "enabled", bool, "bool", None)
    return ProviderUpdate(display.strip(), key, None if base is None else _base_url(base), enabled)


_CALL_FIELDS = {"max_output_tokens": int, "temperature": (int, float), "top_p": (int, float), "top_k": int,
                "presence_penalty": (int, float), "frequency_penalty": (int, float), "provider_options": dict}


def _call_config(body: dict, struct: str) -> dict | None:
    value = body.get("model_config")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error(value, struct, "model_config", "codersdk.ChatModelCallConfig")
    out = {}
    for name, kind in _CALL_FIELDS.items():
        got = _field(value, "ChatModelCallConfig", name, kind, "number" if kind is not dict else "object")
        if got is not None:
            out[name] = got
    if "max_output_tokens" in out and out["max_output_tokens"] <= 0:
        raise WireError(400, "Invalid model config.", "model_config.max_output_tokens must be greater than zero.")
    return out


def _threshold(value: int) -> int:
    if not 0 <= value <= 100:
        raise WireError(400, "Invalid compression threshold.", "compression_threshold must be between 0 and 100.")
    return value


@frozen
class ModelConfigCreate:
    """``CreateChatModelConfigRequest``."""

    provider: str
    model: str
    context_limit: int
    display_name: str = ""
    enabled: bool = True
    is_default: bool = False
    compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD
    model_config: dict | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {"provider": self.provider, "model": self.model}
        if self.display_name:
            d["display_name"] = self.display_name
        d.update(enabled=self.enabled, is_default=self.is_default, context_limit=self.context_limit,
                 compression_threshold=self.compression_threshold)
        if self.model_config:
            d["model_config"] = self.model_config
        return d


def parse_model_config_create(raw: bytes) -> ModelConfigCreate:
    s = "CreateChatModelConfigRequest"
    body = read_json(raw, s)
    provider = _field(body, s, "provider", str, "string", "")
    model = _field(body, s, "model", str, "string", "")
    display = _field(body, s, "display_name", str, "string", "")
    enabled = _field(body, s, "enabled", bool, "bool", True)
    default = _field(body, s, "is_default", bool, "bool", False)
    limit = _field(body, s, "context_limit", int, "int64", 0)
    threshold = _field(body, s, "compression_threshold", int, "int32", DEFAULT_COMPRESSION_THRESHOLD)
    call = _call_config(body, s)
    provider = _provider_name(provider)
    if not model.strip():
        raise WireError(400, "Model is required.")
    if limit <= 0:
        raise WireError(400, "Context limit is required.", "context_limit must be greater than zero.")
    return ModelConfigCreate(provider, model.strip(), limit, display.strip(), enabled, default, _threshold(threshold),
                             call)


@frozen
class ModelConfigUpdate:
    """``UpdateChatModelConfigRequest``: partial; None (or an empty string) keeps a value."""

    provider: str = ""
    model: str = ""
    display_name: str = ""
    enabled: bool | None = None
    is_default: bool | None = None
    context_limit: int | None = None
    compression_threshold: int | None = None
    model_config: dict | None = None

    def to_wire(self) -> dict:
        d: dict[str, Any] = {}
        for name in ("provider", "model", "display_name"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        for name in ("enabled", "is_default", "context_limit", "compression_threshold", "model_config"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


def parse_model_config_update(raw: bytes) -> ModelConfigUpdate:
    s = "UpdateChatModelConfigRequest"
    body = read_json(raw, s)
    provider = _field(body, s, "provider", str, "string", "")
    model = _field(body, s, "model", str, "string", "")
    display = _field(body, s, "display_name", str, "string", "")
    enabled = _field(body, s, "enabled", bool, "bool", None)
    default = _field(body, s, "is_default", bool, "bool", None)
    limit = _field(body, s, "context_limit", int, "int64", None)
    threshold = _field(body, s, "compression_threshold", int, "int32", None)
    call = _call_config(body, s)
    if provider.strip():
        provider = _provider_name(provider)
    if limit is not None and limit <= 0:
        raise WireError(400, "Context limit must be greater than zero.")
    if threshold is not None:
        _threshold(threshold)
    return ModelConfigUpdate(provider.strip(), model.strip(), display.strip(), enabled, default, limit, threshold,
                             call)
