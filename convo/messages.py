"""The neutral data model: messages, content blocks, requests and responses.

These are frozen attrs values. They know nothing of any provider's wire
format; each provider module converts to and from its own JSON. Every type
round-trips through ``to_dict()`` / ``from_dict()`` as plain JSON whose enums
are readable strings.

Values are immutable and so safe to share between threads.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any, ClassVar, Iterable, Union

import attrs
from attrs import field, frozen

from .errors import ArgumentTypeError, ConfigurationError
from .usage import Usage

__all__ = [
    "Block",
    "Document",
    "Image",
    "Message",
    "RawBlock",
    "RedactedThinking",
    "Request",
    "Response",
    "Role",
    "StopReason",
    "Text",
    "Thinking",
    "ThinkingConfig",
    "ToolChoice",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "block_from_dict",
    "is_content",
    "tool_result_content",
]


class _StrEnum(str, enum.Enum):
    """A closed string-valued enum that prints, compares and serialises as its value.

    An unknown value is a :class:`~convo.ConfigurationError` naming the
    values it could have been.
    """

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value):
        choices = ", ".join(repr(m.value) for m in cls)
        raise ConfigurationError(f"{value!r} is not a valid {cls.__name__}; expected one of {choices}")


class _OpenStrEnum(_StrEnum):
    """A string-valued enum that keeps values it does not know.

    Providers add values over time (a new stop reason, say): keep them
    readable instead of failing to parse a whole response.
    """

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            member = str.__new__(cls, value)
            member._name_ = value.upper()
            member._value_ = value
            return member
        return super()._missing_(value)


class Role(_StrEnum):
    """Who said a message: ``user`` or ``assistant`` (nothing else)."""

    USER = "user"
    ASSISTANT = "assistant"


_ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT}


def _to_role(value: Any) -> Role:
    # Role(value) walks the enum machinery; history decoding does this for every message.
    return value if type(value) is Role else _ROLES.get(value) or Role(value)


class StopReason(_OpenStrEnum):
    """Why the model stopped. Unknown values from a provider are kept as-is."""

    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    REFUSAL = "refusal"
    PAUSE_TURN = "pause_turn"


# --- validation helpers ------------------------------------------------------

def _require_type(value, kind, what: str) -> None:
    if not isinstance(value, kind):
        raise ArgumentTypeError(f"{what} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")


# --- time helpers ----------------------------------------------------------

def _time_to_json(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time_from_json(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- content blocks --------------------------------------------------------

_BLOCK_TYPES: dict[str, type] = {}


def _register(cls):
    _BLOCK_TYPES[cls.type] = cls
    return cls


@_register
@frozen
class Text:
    """Plain text.

    ``cache`` asks the provider to cache the prompt up to and including this
    block (Anthropic prompt caching); providers without caching ignore it.
    """

    type: ClassVar[str] = "text"
    text: str = field(validator=lambda i, a, v: _require_type(v, str, "Text.text"))
    citations: tuple = field(default=(), converter=tuple)
    cache: bool = False

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": self.type, "text": self.text}
        if self.citations:
            d["citations"] = list(self.citations)
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Text":
        return cls(text=d["text"], citations=d.get("citations") or (), cache=d.get("cache", False))


def _check_source(instance, attribute, value):
    names = ("data", "url", "text") if hasattr(instance, "text") else ("data", "url")
    given = [n for n in names if getattr(instance, n) is not None]
    if len(given) != 1:
        choices = " or ".join(f"{n}=" for n in names)
        raise ConfigurationError(f"{type(instance).__name__} needs exactly one of {choices}, got {given or 'none'}")


@_register
@frozen
class Image:
    """An image, as base64 ``data`` with its ``media_type``, or as a ``url``."""

    type: ClassVar[str] = "image"
    media_type: str | None = None
    data: str | None = None
    url: str | None = field(default=None, validator=_check_source)
    cache: bool = False

    @classmethod
    def from_bytes(cls, raw: bytes, media_type: str | None = None, *, max_bytes: int | None = None) -> "Image":
        """An image from raw bytes, base64-encoded for the wire; its media type is detected unless given.

        Raises:
            AttachmentTooLarge: over ``max_bytes`` (default 20 MiB).
            ConfigurationError: the bytes are not an image.
        """
        from .packs.attachments import image_from_bytes

        return image_from_bytes(raw, media_type, max_bytes=max_bytes)

    @classmethod
    def from_file(cls, path: Any, media_type: str | None = None, *, max_bytes: int | None = None) -> "Image":
        """An image from a file: its size checked before reading, its media type detected (see :func:`convo.attach`)."""
        from .packs.attachments import image_from_file

        return image_from_file(path, media_type, max_bytes=max_bytes)

    @classmethod
    def from_url(cls, url: str, media_type: str | None = None) -> "Image":
        """An image the provider fetches from an http(s) URL (or a ``data:`` URL); nothing is downloaded here."""
        from .packs.attachments import image_from_url

        return image_from_url(url, media_type)

    def to_dict(self) -> dict:
        d = {"type": self.type, "media_type": self.media_type, "data": self.data, "url": self.url}
        d = {k: v for k, v in d.items() if v is not None}
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Image":
        return cls(media_type=d.get("media_type"), data=d.get("data"), url=d.get("url"),
                   cache=d.get("cache", False))


@_register
@frozen
class Document:
    """A document (PDF or plain text): base64 ``data``, a ``url`` or inline ``text``."""

    type: ClassVar[str] = "document"
    media_type: str | None = None
    data: str | None = None
    text: str | None = None
    url: str | None = field(default=None, validator=_check_source)
    title: str | None = None
    cache: bool = False

    @classmethod
    def from_file(cls, path: Any, media_type: str | None = None, *, title: str | None = None,
                  max_bytes: int | None = None) -> "Document":
        """A document from a file (a PDF, or text such as .txt, .md, .csv, .json), its type detected.

        Text files become ``Document(text=...)``; PDFs and other binary
        files are base64-encoded. The title is the file's name unless given.

        Raises:
            AttachmentTooLarge: over ``max_bytes`` (default 32 MiB), checked before reading.
            ConfigurationError: the type cannot be told (pass ``media_type=``).
        """
        from .packs.attachments import document_from_file

        return document_from_file(path, media_type, title=title, max_bytes=max_bytes)

    @classmethod
    def from_bytes(cls, raw: bytes, media_type: str | None = None, *, title: str | None = None,
                   max_bytes: int | None = None) -> "Document":
        """A document from raw bytes; see :meth:`from_file`."""
        from .packs.attachments import document_from_bytes

        return document_from_bytes(raw, media_type, title=title, max_bytes=max_bytes)

    def to_dict(self) -> dict:
        d = {"type": self.type, "media_type": self.media_type, "data": self.data,
             "text": self.text, "url": self.url, "title": self.title}
        d = {k: v for k, v in d.items() if v is not None}
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Document":
        return cls(media_type=d.get("media_type"), data=d.get("data"), text=d.get("text"),
                   url=d.get("url"), title=d.get("title"), cache=d.get("cache", False))


@_register
@frozen
class Thinking:
    """The model's visible reasoning, with the signature that must be sent back unchanged."""

    type: ClassVar[str] = "thinking"
    thinking: str
    signature: str = ""

    def to_dict(self) -> dict:
        return {"type": self.type, "thinking": self.thinking, "signature": self.signature}

    @classmethod
    def from_dict(cls, d: dict) -> "Thinking":
        return cls(thinking=d["thinking"], signature=d.get("signature", ""))


@_register
@frozen
class RedactedThinking:
    """Reasoning the provider encrypted; sent back verbatim on later turns."""

    type: ClassVar[str] = "redacted_thinking"
    data: str

    def to_dict(self) -> dict:
        return {"type": self.type, "data": self.data}

    @classmethod
    def from_dict(cls, d: dict) -> "RedactedThinking":
        return cls(data=d["data"])


@_register
@frozen
class ToolUse:
    """The model asks to call tool ``name`` with ``input``; ``id`` links the result."""

    type: ClassVar[str] = "tool_use"
    id: str
    name: str
    input: dict = field(factory=dict)
    cache: bool = False

    def to_dict(self) -> dict:
        d = {"type": self.type, "id": self.id, "name": self.name, "input": self.input}
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ToolUse":
        return cls(id=d["id"], name=d["name"], input=d.get("input") or {}, cache=d.get("cache", False))


def _to_blocks(value) -> tuple:
    """Content blocks from a str, one block, or an iterable of blocks and strs (a str becomes a Text)."""
    if isinstance(value, str):
        return (Text(value),)
    if isinstance(value, _BLOCK_CLASSES):
        return (value,)
    if type(value) is tuple:
        for v in value:
            if isinstance(v, str):
                break
        else:
            return value  # already blocks (the validator checks them): the common case, kept cheap
    try:
        items = tuple(value)
    except TypeError:
        raise ArgumentTypeError(f"content must be a str or content blocks, got {type(value).__name__}") from None
    return tuple(Text(v) if isinstance(v, str) else v for v in items)


def is_content(value: Any) -> bool:
    """Whether ``value`` is already content: a str, a block, or a non-empty list or tuple of blocks."""
    if isinstance(value, (str,) + _BLOCK_CLASSES):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, _BLOCK_CLASSES) for v in value)


def tool_result_content(value: Any) -> tuple:
    """``value`` as the content of a tool result: text, image, document and raw blocks only."""
    blocks = _to_blocks(value)
    _check_result_blocks(None, None, blocks)
    return blocks


def _check_tool_use_id(instance, attribute, value):
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"ToolResult.tool_use_id must be a non-empty str, got {value!r}")


def _check_result_blocks(instance, attribute, value):
    for block in value:
        if not isinstance(block, _RESULT_BLOCKS):
            raise ArgumentTypeError(
                f"a tool result holds text, image and document blocks, got {type(block).__name__}"
            )


@_register
@frozen
class ToolResult:
    """What a tool call produced, sent back to the model in a user message.

    ``content`` holds text, image and document blocks (a plain string is
    converted to one Text block). ``display`` is for people, never sent to
    the model. ``start_time``/``end_time`` record when the tool ran.
    """

    type: ClassVar[str] = "tool_result"
    tool_use_id: str = field(validator=_check_tool_use_id)
    content: tuple = field(default=(), converter=_to_blocks, validator=_check_result_blocks)
    is_error: bool = field(default=False, validator=lambda i, a, v: _require_type(v, bool, "ToolResult.is_error"))
    start_time: datetime | None = None
    end_time: datetime | None = None
    display: Any = None
    cache: bool = False

    def text(self) -> str:
        """The result's text blocks joined together."""
        return "".join(b.text for b in self.content if isinstance(b, Text))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "type": self.type,
            "tool_use_id": self.tool_use_id,
            "content": [b.to_dict() for b in self.content],
            "is_error": self.is_error,
        }
        if self.start_time is not None:
            d["start_time"] = _time_to_json(self.start_time)
        if self.end_time is not None:
            d["end_time"] = _time_to_json(self.end_time)
        if self.display is not None:
            d["display"] = self.display
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ToolResult":
        content = d.get("content") or ()
        if not isinstance(content, str):
            content = tuple(block_from_dict(b) for b in content)
        return cls(
            tool_use_id=d["tool_use_id"],
            content=content,
            is_error=d.get("is_error", False),
            start_time=_time_from_json(d.get("start_time")),
            end_time=_time_from_json(d.get("end_time")),
            display=d.get("display"),
            cache=d.get("cache", False),
        )


@frozen
class RawBlock:
    """A block convo does not model (server tool blocks, future types), kept verbatim.

    ``data`` is the provider's JSON object exactly as received, so the block
    can be sent back unchanged on the next turn.
    """

    data: dict
    cache: bool = False

    @property
    def type(self) -> str:
        return str(self.data.get("type", "unknown"))

    def to_dict(self) -> dict:
        d = {"type": "raw", "data": self.data}
        if self.cache:
            d["cache"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RawBlock":
        return cls(data=d["data"], cache=d.get("cache", False))


Block = Union[Text, Image, Document, Thinking, RedactedThinking, ToolUse, ToolResult, RawBlock]

_BLOCK_CLASSES = (Text, Image, Document, Thinking, RedactedThinking, ToolUse, ToolResult, RawBlock)
# What a tool result may hold, and what a tool may return as content.
_RESULT_BLOCKS = (Text, Image, Document, RawBlock)


def block_from_dict(d: dict) -> Block:
    """Rebuild a content block from its ``to_dict()`` form."""
    kind = d.get("type")
    if kind == "raw":
        return RawBlock.from_dict(d)
    cls = _BLOCK_TYPES.get(kind)
    if cls is None:
        raise ConfigurationError(f"unknown content block type {kind!r}")
    return cls.from_dict(d)


def _check_blocks(instance, attribute, value):
    for block in value:
        if not isinstance(block, _BLOCK_CLASSES):
            raise ArgumentTypeError(
                f"message content must be content blocks, got {type(block).__name__}: {block!r:.200}"
            )


# --- messages ---------------------------------------------------------------

@frozen
class Message:
    """One turn of the conversation: a role and its content blocks."""

    role: Role = field(converter=_to_role)
    content: tuple = field(default=(), converter=_to_blocks, validator=_check_blocks)

    @classmethod
    def user(cls, text: str = "", *blocks: Block) -> "Message":
        """A user message: ``blocks`` (often tool results) first, then ``text`` if any."""
        content = list(blocks)
        if text:
            content.append(Text(text))
        return cls(Role.USER, content)

    @classmethod
    def assistant(cls, text: str = "", *blocks: Block) -> "Message":
        """An assistant message: ``text`` if any, then ``blocks``."""
        content = [Text(text)] if text else []
        content.extend(blocks)
        return cls(Role.ASSISTANT, content)

    def text(self) -> str:
        """The message's text blocks joined together."""
        return "".join(b.text for b in self.content if isinstance(b, Text))

    def tool_uses(self) -> list[ToolUse]:
        return [b for b in self.content if isinstance(b, ToolUse)]

    def tool_results(self) -> list[ToolResult]:
        return [b for b in self.content if isinstance(b, ToolResult)]

    def to_dict(self) -> dict:
        return {"role": str(self.role), "content": [b.to_dict() for b in self.content]}

    @classmethod
    def from_dict(cls, d: dict) -> "Message":
        content = d.get("content") or ()
        if not isinstance(content, str):
            content = tuple([block_from_dict(b) for b in content])
        role = d["role"]
        return cls(role=_ROLES.get(role, role), content=content)


# --- requests ---------------------------------------------------------------

@frozen
class ToolSpec:
    """What the model is told about a tool: its name, description and input JSON Schema."""

    name: str
    description: str = ""
    input_schema: dict = field(factory=lambda: {"type": "object", "properties": {}})

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    @classmethod
    def from_dict(cls, d: dict) -> "ToolSpec":
        return cls(name=d["name"], description=d.get("description", ""),
                   input_schema=d.get("input_schema") or {"type": "object", "properties": {}})


class ToolChoiceType(_StrEnum):
    AUTO = "auto"
    ANY = "any"
    TOOL = "tool"
    NONE = "none"


@frozen
class ToolChoice:
    """How the model may use tools: ``auto``, ``any`` (must call one), a named ``tool``, or ``none``."""

    type: ToolChoiceType = field(default=ToolChoiceType.AUTO, converter=ToolChoiceType)
    name: str | None = None
    disable_parallel_tool_use: bool = False

    def __attrs_post_init__(self):
        if (self.type == ToolChoiceType.TOOL) != (self.name is not None):
            raise ConfigurationError("ToolChoice(type='tool') needs name=, and only that type takes one")

    @classmethod
    def auto(cls) -> "ToolChoice":
        return cls(ToolChoiceType.AUTO)

    @classmethod
    def any(cls) -> "ToolChoice":
        return cls(ToolChoiceType.ANY)

    @classmethod
    def none(cls) -> "ToolChoice":
        return cls(ToolChoiceType.NONE)

    @classmethod
    def tool(cls, name: str) -> "ToolChoice":
        return cls(ToolChoiceType.TOOL, name)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": str(self.type)}
        if self.name is not None:
            d["name"] = self.name
        if self.disable_parallel_tool_use:
            d["disable_parallel_tool_use"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ToolChoice":
        return cls(d["type"], d.get("name"), d.get("disable_parallel_tool_use", False))


@frozen
class ThinkingConfig:
    """Extended thinking: a token budget for reasoning, or ``adaptive`` where the model supports it."""

    budget_tokens: int | None = None
    adaptive: bool = False
    display: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in attrs.asdict(self).items() if v not in (None, False)}

    @classmethod
    def from_dict(cls, d: dict) -> "ThinkingConfig":
        return cls(**d)


@frozen
class Request:
    """What a service receives: the history, system prompt, tools and sampling settings.

    ``max_tokens`` None lets the service use its own default. ``extra`` holds
    provider-specific fields passed through to the wire body unchanged.
    ``output_schema``, when set, is the JSON Schema (an object) the reply
    must be: each provider asks for it its own way (see
    :mod:`convo.structured`), and the reply carries it as JSON text.
    ``top_p``, ``top_k``, ``frequency_penalty`` and ``presence_penalty``
    (None: the provider's default) are sent by the providers that take them
    and left out, with a debug log, by those that do not (Anthropic takes no
    penalties; OpenAI's Chat Completions no ``top_k``).
    """

    messages: tuple = field(converter=tuple)
    system: tuple = field(default=(), converter=_to_blocks)
    tools: tuple = field(default=(), converter=tuple)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop_sequences: tuple = field(default=(), converter=tuple)
    thinking: ThinkingConfig | None = None
    extra: dict = field(factory=dict)
    output_schema: dict | None = None
    # Sampling parameters beyond temperature (a pack's ``parameters``); a
    # provider that cannot take one leaves it out and logs it at debug level.
    top_p: float | None = field(default=None, kw_only=True)
    top_k: int | None = field(default=None, kw_only=True)
    frequency_penalty: float | None = field(default=None, kw_only=True)
    presence_penalty: float | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.messages],
            "system": [b.to_dict() for b in self.system],
            "tools": [t.to_dict() for t in self.tools],
        }
        if self.tool_choice is not None:
            d["tool_choice"] = self.tool_choice.to_dict()
        for name in ("max_tokens", "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.stop_sequences:
            d["stop_sequences"] = list(self.stop_sequences)
        if self.thinking is not None:
            d["thinking"] = self.thinking.to_dict()
        if self.extra:
            d["extra"] = self.extra
        if self.output_schema is not None:
            d["output_schema"] = self.output_schema
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        return cls(
            messages=[Message.from_dict(m) for m in d.get("messages", ())],
            system=tuple(block_from_dict(b) for b in d.get("system", ())),
            tools=[ToolSpec.from_dict(t) for t in d.get("tools", ())],
            tool_choice=ToolChoice.from_dict(d["tool_choice"]) if d.get("tool_choice") else None,
            max_tokens=d.get("max_tokens"),
            temperature=d.get("temperature"),
            stop_sequences=d.get("stop_sequences", ()),
            thinking=ThinkingConfig.from_dict(d["thinking"]) if d.get("thinking") else None,
            extra=d.get("extra") or {},
            output_schema=d.get("output_schema"),
            top_p=d.get("top_p"),
            top_k=d.get("top_k"),
            frequency_penalty=d.get("frequency_penalty"),
            presence_penalty=d.get("presence_penalty"),
        )


# --- responses --------------------------------------------------------------

def _opt_stop_reason(value):
    return None if value is None else StopReason(value)


@frozen
class Response:
    """A model's reply: its content blocks, why it stopped and what it cost in tokens."""

    id: str
    model: str
    content: tuple = field(default=(), converter=_to_blocks, validator=_check_blocks)
    stop_reason: StopReason | None = field(default=StopReason.END_TURN, converter=_opt_stop_reason)
    stop_sequence: str | None = None
    usage: Usage = field(factory=Usage)
    start_time: datetime | None = None
    end_time: datetime | None = None
    validations: tuple = field(default=(), converter=tuple)
    pending_tools: tuple = field(default=(), converter=tuple)

    def text(self) -> str:
        """The reply's text blocks joined together."""
        return "".join(b.text for b in self.content if isinstance(b, Text))

    def tool_uses(self) -> list[ToolUse]:
        """The reply's tool calls, in the order the model made them."""
        return [b for b in self.content if isinstance(b, ToolUse)]

    @property
    def cost(self):
        """What the reply cost in dollars (a ``Decimal``), or None while unpriced."""
        return self.usage.cost_usd

    @property
    def duration(self) -> float | None:
        """Seconds from sending the request to the end of the reply, when the service timed it."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    @property
    def tokens_used(self) -> int:
        """Input tokens of every kind plus output tokens."""
        return self.usage.total_input_tokens() + self.usage.output_tokens

    def __repr__(self) -> str:
        text = self.text()
        text = text if len(text) <= 40 else text[:39] + "…"
        calls = len(self.tool_uses())
        cost = "unpriced" if self.usage.cost_usd is None else f"${self.usage.cost_usd}"
        return (f"<Response id={self.id} model={self.model} stop={self.stop_reason} text={text!r}"
                f"{f' tool_uses={calls}' if calls else ''} tokens={self.usage.total_input_tokens()}/"
                f"{self.usage.output_tokens} cost={cost}>")

    def _repr_html_(self) -> str:
        """The reply as HTML, for notebooks (see :mod:`convo.notebook`)."""
        from .notebook import response_html

        return response_html(self)

    def to_message(self) -> Message:
        """The reply as an assistant message for the history."""
        return Message(Role.ASSISTANT, self.content)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "model": self.model,
            "content": [b.to_dict() for b in self.content],
            "stop_reason": None if self.stop_reason is None else str(self.stop_reason),
            "stop_sequence": self.stop_sequence,
            "usage": self.usage.to_dict(),
            "start_time": _time_to_json(self.start_time),
            "end_time": _time_to_json(self.end_time),
            **({"validations": [v.to_dict() for v in self.validations]} if self.validations else {}),
            **({"pending_tools": [p.to_dict() for p in self.pending_tools]} if self.pending_tools else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Response":
        from .hooks import PendingTool, ValidationResult

        return cls(
            id=d["id"],
            model=d["model"],
            content=tuple(block_from_dict(b) for b in d.get("content", ())),
            stop_reason=d.get("stop_reason"),
            stop_sequence=d.get("stop_sequence"),
            usage=Usage.from_dict(d.get("usage") or {}),
            start_time=_time_from_json(d.get("start_time")),
            end_time=_time_from_json(d.get("end_time")),
            validations=[ValidationResult.from_dict(v) for v in d.get("validations", ())],
            pending_tools=[PendingTool.from_dict(p) for p in d.get("pending_tools", ())],
        )


def dumps(value: Any) -> str:
    """JSON text of anything with ``to_dict()`` (or a list of such), indented for people."""
    if isinstance(value, (list, tuple)):
        value = [v.to_dict() for v in value]
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def iter_blocks(messages: Iterable[Message]):
    for m in messages:
        yield from m.content
