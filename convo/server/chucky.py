"""The Chucky wire protocol as pure functions: frames in, values out; values in, frames out.

Chucky (Chucky-Cloud) runs agent sessions over one WebSocket per session.
Every frame is a JSON text message, in one of two framings: an envelope
``{"type": ..., "payload": {...}}`` (``init``, ``prompt``, ``control``,
``error``, ``ping``/``pong``, ``tool_call``/``tool_result``, the wrapper
``sdk_message``) or a bare Claude Agent SDK message (``system``,
``assistant``, ``user``, ``result``, ``stream_event``). The reference is
``shared/protocols/chucky.md``; the published SDKs (Python 0.2.0,
TypeScript, Go, PHP) are the clients this module is written for.

Both halves live here, with no sockets and no threads, so each is tested on
the exact JSON the peer sends:

- the server reads client frames with :func:`parse_client_frame` (one of
  :class:`Init`, :class:`Turn`, :class:`ToolResultFrame`, :class:`Ping`,
  :class:`Control`, :class:`Ignored`, or a :class:`ProtocolError`) and
  writes frames with the ``*_frame`` builders;
- the client (:mod:`convo.remote`) reads server frames with
  :func:`parse_server_frame` (typed messages: :class:`SystemMessage`,
  :class:`AssistantMessage`, :class:`UserMessage`, :class:`StreamEvent`,
  :class:`ResultMessage`, :class:`ToolCall`, :class:`ErrorMessage`...) and
  writes frames with :func:`init_frame`, :func:`user_frame`,
  :func:`tool_result_frame` and friends.

Where the SDKs disagree, the choices (section 10 of the notes) are:

- a turn starts with ``prompt`` (PY: ``{message, options}``, or flat),
  a bare ``user`` (TS, Go, PHP) or ``sdk_message{type: user_message}``
  (TS 0.1); ``prompt.options`` count only when no ``init`` came first;
- SDK messages go out bare (TS, Go and PHP need that; PY takes both), with
  ``uuid`` and a top-level ``session_id`` always (PHP reads them);
  ``system``/``init`` is flat, as in the Agent SDK;
- ``executeIn`` ``"client"`` and ``"browser"`` both mean "the client runs
  it"; tools without it (or ``"server"``) have no handler anywhere and are
  left out; pass-through MCP configs (stdio, sse, http) are never started
  by the server and show as ``"failed"`` in ``system``/``init``;
- the model sees client tools as ``mcp__<server>__<tool>`` (the Agent SDK
  form); ``tool_call`` names the bare tool, as every SDK looks it up; the
  ``callId`` is the model's ``tool_use`` id, and the ``assistant`` frame
  holding the call goes out before the ``tool_call``;
- result subtypes are the Agent SDK's (``success``, ``error_max_turns``,
  ``error_during_execution``, ``error_max_budget_usd`` for ``maxBudgetUsd``,
  ``error_max_structured_output_retries``) plus Go/PHP's ``error_budget``
  when the token's window budget runs out mid-turn; an error result also
  carries ``errors`` and ``error: {code, message}``;
- ``pong`` echoes the client's ``timestamp`` (the server's clock in ms when
  there is none);
- one extension: ``init.toolChoice`` (``{"type": "auto"|"any"|"none"}`` or
  ``{"type": "tool", "name": ...}``, as the Messages API writes it) applies
  to the first model request of each turn; the SDKs never send it.

Values here are frozen attrs classes; functions are pure. Everything is
safe to use from any thread.
"""

from __future__ import annotations

import enum
import json
import time
from decimal import Decimal
from typing import Any, Iterable, Union

from attrs import field, frozen

from ..errors import ConvoError
from ..messages import Document, Image, RawBlock, RedactedThinking, Response, Text, Thinking, ToolResult, ToolUse
from ..usage import Usage

__all__ = [
    "AssistantMessage",
    "ClientTool",
    "Control",
    "ErrorCode",
    "ErrorMessage",
    "Ignored",
    "Init",
    "MAX_FRAME_BYTES",
    "OTHER_SERVER_MESSAGE",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ready",
    "ResultMessage",
    "ResultSubtype",
    "SessionInfo",
    "StreamEvent",
    "StreamEncoder",
    "SystemMessage",
    "ToolCall",
    "ToolResultFrame",
    "Turn",
    "UserMessage",
    "assistant_frame",
    "blocks_from_mcp",
    "blocks_to_mcp",
    "control_frame",
    "error_frame",
    "fit_frame",
    "init_frame",
    "parse_client_frame",
    "parse_server_frame",
    "ping_frame",
    "pong_frame",
    "ready_frame",
    "result_frame",
    "session_info_frame",
    "stream_event_frame",
    "system_init_frame",
    "tool_call_frame",
    "tool_result_frame",
    "tool_result_user_frame",
    "user_frame",
]

#: The largest frame either side sends by default: the Python SDK's websockets
#: library closes the connection on a message over 1 MiB.
MAX_FRAME_BYTES = 1 << 20

#: The MCP server name the Python SDK packs per-session tools into (and so does convo.remote).
INLINE_TOOLS = "inline-tools"


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` frame (the TypeScript and Go SDKs' sets together)."""

    CONNECTION_ERROR = "CONNECTION_ERROR"
    AUTHENTICATION_ERROR = "AUTHENTICATION_ERROR"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"
    RATE_LIMIT = "RATE_LIMIT"
    SESSION_ERROR = "SESSION_ERROR"
    TOOL_EXECUTION_ERROR = "TOOL_EXECUTION_ERROR"
    TIMEOUT = "TIMEOUT"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"

    def __str__(self) -> str:
        return self.value


class ResultSubtype(str, enum.Enum):
    """How a turn ended, as the ``result`` message's ``subtype`` says."""

    SUCCESS = "success"
    ERROR_MAX_TURNS = "error_max_turns"
    ERROR_DURING_EXECUTION = "error_during_execution"
    ERROR_MAX_BUDGET_USD = "error_max_budget_usd"
    ERROR_MAX_STRUCTURED_OUTPUT_RETRIES = "error_max_structured_output_retries"
    ERROR_BUDGET = "error_budget"

    def __str__(self) -> str:
        return self.value


class ProtocolError(ConvoError, ValueError):
    """A frame that breaks the protocol: what the ``error`` frame sent back says.

    Attributes:
        code: an :class:`ErrorCode` (``PROTOCOL_ERROR`` for frames that are
            not the protocol, ``VALIDATION_ERROR`` for fields of the wrong
            type or value).
        message: what was wrong, in words.
        details: extra JSON values for the ``error`` frame.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR, details: dict | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.details = dict(details or {})
        super().__init__(message)


def _invalid(message: str, **details: Any) -> ProtocolError:
    return ProtocolError(message, ErrorCode.VALIDATION_ERROR, details)


# --- what a client sends ------------------------------------------------------------------


@frozen
class ClientTool:
    """A tool the client runs, declared in ``init.mcpServers``: the model calls it by ``model_name``."""

    server: str
    name: str
    description: str = ""
    input_schema: dict = field(factory=lambda: {"type": "object", "properties": {}})

    @property
    def model_name(self) -> str:
        """``mcp__<server>__<tool>``, the Agent SDK's name for it."""
        return f"mcp__{self.server}__{self.name}"


@frozen
class Init:
    """A session's settings, from an ``init`` frame (or a ``prompt``'s options when no init came)."""

    model: str | None = None
    system_prompt: str | None = None
    max_turns: int | None = None
    max_budget_usd: Decimal | None = None
    server_tools: tuple | None = None  # names of the server's tools to offer (None: all)
    allowed_tools: tuple | None = None
    disallowed_tools: tuple = ()
    client_tools: tuple = ()  # ClientTool
    mcp_servers: tuple = ()  # (name, status) for system/init
    resume: str | None = None
    fork: bool = False
    continue_latest: bool = False
    resume_at: str | None = None
    output_schema: dict | None = None
    include_partial_messages: bool = False
    max_thinking_tokens: int | None = None
    tool_choice: str | None = None  # convo's extension: "auto", "any", "none" or a tool's name


@frozen
class Turn:
    """A turn starts: the user's text and any image or document blocks (before the text)."""

    text: str
    blocks: tuple = ()
    options: Init | None = None  # a prompt frame's options, used only before any init
    form: str = "user"  # "prompt", "user" or "sdk_message"


@frozen
class ToolResultFrame:
    """The client's answer to a ``tool_call``; ``malformed`` says why ``content`` could not be read."""

    call_id: str
    content: tuple = ()
    is_error: bool = False
    malformed: str | None = None


@frozen
class Ping:
    """An application-level keepalive (TS, Go); answered with a ``pong``."""

    timestamp: Any = None


@frozen
class Control:
    """A ``control`` frame: ``close`` ends the session; ``end_input`` is accepted and means nothing yet."""

    action: str
    data: Any = None


@frozen
class Ignored:
    """A frame the protocol allows and that needs no answer (a client's ``pong``)."""

    type: str


ClientFrame = Union[Init, Turn, ToolResultFrame, Ping, Control, Ignored]


def _loads(text: str | bytes, max_bytes: int) -> dict:
    if isinstance(text, bytes):
        raise ProtocolError("frames are JSON text messages, not binary")
    if max_bytes and len(text) > max_bytes and len(text.encode("utf-8")) > max_bytes:
        raise ProtocolError(f"frame of {len(text.encode('utf-8'))} bytes is over the {max_bytes}-byte limit",
                            details={"limit": max_bytes})
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a frame is a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("frame has no \"type\"")
    return data


def _payload(data: dict) -> dict:
    payload = data.get("payload")
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ProtocolError(f"{data['type']}: \"payload\" must be an object, got {type(payload).__name__}")
    return payload


def parse_client_frame(text: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> ClientFrame:
    """The value a client frame carries.

    Raises:
        ProtocolError: the frame is binary, too large, not JSON, not an
            object, of an unknown type, or has fields of the wrong shape.
    """
    data = _loads(text, max_bytes)
    kind = data["type"]
    if kind == "init":
        return parse_init(_payload(data))
    if kind == "prompt":
        return _parse_prompt(_payload(data))
    if kind == "user":
        return _parse_user(data)
    if kind == "sdk_message":
        payload = _payload(data)
        if payload.get("type") == "user_message":
            return Turn(_text(payload.get("content"), "sdk_message.content"), form="sdk_message")
        if payload.get("type") == "user":  # a wrapped bare user message
            return _parse_user(payload)
        raise ProtocolError(f"sdk_message of type {payload.get('type')!r} is not something a client sends")
    if kind == "tool_result":
        return _parse_tool_result(_payload(data))
    if kind == "ping":
        return Ping(_payload(data).get("timestamp"))
    if kind == "pong":
        return Ignored("pong")
    if kind == "control":
        payload = _payload(data)
        action = payload.get("action")
        if not isinstance(action, str) or not action:
            raise ProtocolError("control frame has no \"action\"")
        return Control(action, payload.get("data"))
    raise ProtocolError(f"unknown message type {kind!r}", details={"type": kind[:100]})


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{where} must be a string, got {type(value).__name__}")
    return value


def _opt_str(payload: dict, key: str) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    return _text(value, key)


def _opt_bool(payload: dict, key: str) -> bool:
    value = payload.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, got {json.dumps(value)[:40]}")
    return value


def _opt_positive_int(payload: dict, key: str) -> int | None:
    value = payload.get(key)
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(f"{key} must be a positive integer, got {json.dumps(value)[:40]}")
    return value


def _str_list(payload: dict, key: str) -> tuple | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"{key} must be a list of strings")
    return tuple(value)


def _system_prompt(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "preset":
        # The Claude Code preset is the Agent SDK's; this server has no such prompt, only what is appended.
        append = value.get("append")
        return append if isinstance(append, str) else ""
    raise _invalid("systemPrompt must be a string or {\"type\": \"preset\", ...}")


def _client_tools(server: str, tools: Any) -> list[ClientTool]:
    if not isinstance(tools, list):
        raise _invalid(f"mcpServers[{server!r}].tools must be a list")
    out = []
    for t in tools:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise _invalid(f"every tool of mcpServers[{server!r}] needs a \"name\"")
        where = t.get("executeIn")
        if where not in ("client", "browser"):
            continue  # no handler on either side ("server", or left out by Go for handler-less tools)
        schema = t.get("inputSchema") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise _invalid(f"tool {t['name']!r}: inputSchema must be an object")
        schema = {k: v for k, v in schema.items() if v is not None}  # PY's pydantic path sends "required": null
        schema.setdefault("type", "object")
        description = t.get("description")
        out.append(ClientTool(server, t["name"], description if isinstance(description, str) else "", schema))
    return out


def parse_init(payload: dict) -> Init:
    """An :class:`Init` from an ``init`` payload (camelCase keys; every one optional; unknown keys ignored).

    Raises:
        ProtocolError: a field of the wrong type (``VALIDATION_ERROR``).
    """
    client_tools: list[ClientTool] = []
    servers: list[tuple[str, str]] = []
    mcp = payload.get("mcpServers")
    if mcp is not None:
        if isinstance(mcp, dict):  # the Agent SDK's name -> config record
            mcp = [{"name": k, **v} for k, v in mcp.items() if isinstance(v, dict)]
        if not isinstance(mcp, list):
            raise _invalid("mcpServers must be a list")
        for entry in mcp:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise _invalid("every mcpServers entry needs a \"name\"")
            if "tools" in entry and entry.get("type") in (None, "sdk"):
                tools = _client_tools(entry["name"], entry["tools"])
                client_tools.extend(tools)
                servers.append((entry["name"], "connected"))
            else:
                servers.append((entry["name"], "failed"))  # stdio/sse/http configs: never started here
    server_tools: tuple | None = None
    tools = payload.get("tools")
    if isinstance(tools, list) and tools and all(isinstance(t, dict) for t in tools):
        # TypeScript 0.1 sent tool objects here.
        client_tools.extend(_client_tools(INLINE_TOOLS, [{"executeIn": "client", **t} for t in tools]))
    elif isinstance(tools, list):
        server_tools = _str_list(payload, "tools")
    elif tools is not None and not (isinstance(tools, dict) and tools.get("type") == "preset"):
        raise _invalid("tools must be a list of tool names or {\"type\": \"preset\", ...}")
    names = [t.model_name for t in client_tools]
    if len(set(names)) != len(names):
        raise _invalid("two client tools have the same name")
    budget = payload.get("maxBudgetUsd")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise _invalid(f"maxBudgetUsd must be a number of dollars >= 0, got {json.dumps(budget)[:40]}")
        budget = Decimal(str(budget))
    output_schema = None
    fmt = payload.get("outputFormat")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise _invalid("outputFormat must be {\"type\": \"json_schema\", \"schema\": {...}}")
        output_schema = fmt["schema"]
    resume = _opt_str(payload, "sessionId") or _opt_str(payload, "resume")
    choice = payload.get("toolChoice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        choice = choice.get("name")
    elif isinstance(choice, dict):
        choice = choice.get("type")
    if choice is not None and (not isinstance(choice, str) or not choice):
        raise _invalid("toolChoice must be \"auto\", \"any\", \"none\" or {\"type\": \"tool\", \"name\": ...}")
    allowed = _str_list(payload, "allowedTools")
    if allowed is not None and "*" in allowed:
        allowed = None
    return Init(
        model=_opt_str(payload, "model"),
        system_prompt=_system_prompt(payload.get("systemPrompt")),
        max_turns=_opt_positive_int(payload, "maxTurns"),
        max_budget_usd=budget,
        server_tools=server_tools,
        allowed_tools=allowed,
        disallowed_tools=_str_list(payload, "disallowedTools") or (),
        client_tools=tuple(client_tools),
        mcp_servers=tuple(servers),
        resume=resume,
        fork=_opt_bool(payload, "forkSession"),
        continue_latest=_opt_bool(payload, "continue"),
        resume_at=_opt_str(payload, "resumeSessionAt"),
        output_schema=output_schema,
        include_partial_messages=_opt_bool(payload, "includePartialMessages"),
        max_thinking_tokens=_opt_positive_int(payload, "maxThinkingTokens"),
        tool_choice=choice,
    )


def _parse_prompt(payload: dict) -> Turn:
    if "message" not in payload:
        raise _invalid("prompt needs a \"message\"")
    options = payload.get("options")
    if options is None:  # TS 0.1's flat form: {message, model?, ...}
        options = {k: v for k, v in payload.items() if k != "message"}
    if not isinstance(options, dict):
        raise _invalid("prompt options must be an object")
    text, blocks = _user_content(payload["message"], "prompt.message")
    return Turn(text, blocks, parse_init(options) if options else None, form="prompt")


def _parse_user(data: dict) -> Turn:
    message = data.get("message")
    if not isinstance(message, dict):
        raise _invalid("a user message needs \"message\": {\"role\": \"user\", \"content\": ...}")
    if message.get("role", "user") != "user":
        raise _invalid(f"a user message has role \"user\", got {message.get('role')!r}")
    text, blocks = _user_content(message.get("content"), "message.content")
    return Turn(text, blocks, form="user")


def _user_content(content: Any, where: str) -> tuple[str, tuple]:
    """(text, other blocks) of a user message's content: a string, or text/image/document blocks."""
    if isinstance(content, str):
        return content, ()
    if not isinstance(content, list):
        raise _invalid(f"{where} must be a string or a list of content blocks")
    texts: list[str] = []
    blocks: list[Any] = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise _invalid(f"{where}[{i}] must be an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block.get("text"), f"{where}[{i}].text"))
        elif kind in ("image", "document"):
            blocks.append(_media(block, f"{where}[{i}]"))
        else:
            raise _invalid(f"{where}[{i}]: a user message holds text, image and document blocks, got {kind!r}")
    return "\n".join(texts), tuple(blocks)


def _media(block: dict, where: str) -> Image | Document:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _invalid(f"{where} needs a \"source\"")
    cls = Image if block["type"] == "image" else Document
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
        return cls(media_type=source["media_type"], data=source["data"])
    if kind == "url" and isinstance(source.get("url"), str):
        return cls(url=source["url"])
    if cls is Document and kind == "text" and isinstance(source.get("data"), str):
        return Document(media_type="text/plain", text=source["data"])
    raise _invalid(f"{where}.source must be base64 (media_type, data) or a url")


def _parse_tool_result(payload: dict) -> ToolResultFrame:
    call_id = payload.get("callId")
    if not isinstance(call_id, str) or not call_id:
        raise ProtocolError("tool_result needs a \"callId\"")
    result = payload.get("result")
    if not isinstance(result, dict):
        return ToolResultFrame(call_id, malformed="\"result\" must be an object {content, isError}")
    is_error = result.get("isError", False)
    if not isinstance(is_error, bool):
        return ToolResultFrame(call_id, malformed="\"isError\" must be true or false")
    try:
        content = blocks_from_mcp(result.get("content"))
    except ValueError as exc:
        return ToolResultFrame(call_id, is_error=True, malformed=str(exc))
    return ToolResultFrame(call_id, content, is_error)


def blocks_from_mcp(content: Any) -> tuple:
    """convo content blocks from MCP ``CallToolResult`` content (text, image, resource).

    Raises:
        ValueError: the content is not a list of such items.
    """
    if content is None:
        return ()
    if isinstance(content, str):
        return (Text(content),)
    if not isinstance(content, list):
        raise ValueError("\"content\" must be a list of content items")
    out: list[Any] = []
    for i, item in enumerate(content):
        if not isinstance(item, dict):
            raise ValueError(f"content[{i}] must be an object")
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            out.append(Text(item["text"]))
        elif kind == "image" and isinstance(item.get("data"), str):
            out.append(Image(media_type=item.get("mimeType") or "image/png", data=item["data"]))
        elif kind == "resource":
            resource = item.get("resource") if isinstance(item.get("resource"), dict) else item
            text = resource.get("text")
            out.append(Text(text if isinstance(text, str) else f"[resource {resource.get('uri', '?')}]"))
        else:
            raise ValueError(f"content[{i}] is not a text, image or resource item")
    return tuple(out)


def blocks_to_mcp(blocks: Iterable[Any]) -> list[dict]:
    """MCP content items for convo content blocks (what a client's tool returned)."""
    out: list[dict] = []
    for block in blocks:
        if isinstance(block, Text):
            out.append({"type": "text", "text": block.text})
        elif isinstance(block, Image) and block.data is not None:
            out.append({"type": "image", "data": block.data, "mimeType": block.media_type or "image/png"})
        elif isinstance(block, (Image, Document)):
            text = block.text if isinstance(block, Document) and block.text is not None else None
            out.append({"type": "resource", "resource": {"uri": block.url or "", "mimeType": block.media_type,
                                                          "text": text}})
        else:
            out.append({"type": "text", "text": json.dumps(block.to_dict(), ensure_ascii=False)})
    return out


# --- what a server sends --------------------------------------------------------------------


def ready_frame() -> dict:
    """``control``/``ready``: sent at once on connect (the Python SDK sends nothing until it arrives)."""
    return {"type": "control", "payload": {"action": "ready"}}


def control_frame(action: str, data: Any = None) -> dict:
    payload: dict[str, Any] = {"action": action}
    if data is not None:
        payload["data"] = data
    return {"type": "control", "payload": payload}


def session_info_frame(session_id: str, *, state: str, model: str | None, tools: Iterable[str],
                       message_count: int, created_at: str | None = None) -> dict:
    """``control``/``session_info``: the session's id once known (TypeScript adopts it)."""
    data: dict[str, Any] = {"sessionId": session_id, "state": state, "model": model, "tools": list(tools),
                            "messageCount": message_count}
    if created_at:
        data["createdAt"] = created_at
    return control_frame("session_info", data)


def error_frame(code: ErrorCode | str, message: str, details: dict | None = None) -> dict:
    payload: dict[str, Any] = {"message": message, "code": str(ErrorCode(code))}
    if details:
        payload["details"] = details
    return {"type": "error", "payload": payload}


def pong_frame(timestamp: Any = None) -> dict:
    """The answer to a ``ping``: its timestamp echoed, or the server's clock in ms."""
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
        timestamp = int(time.time() * 1000)
    return {"type": "pong", "payload": {"timestamp": timestamp}}


def tool_call_frame(call_id: str, tool_name: str, tool_input: Any) -> dict:
    return {"type": "tool_call", "payload": {"callId": call_id, "toolName": tool_name, "input": tool_input}}


def system_init_frame(session_id: str, uuid: str, *, model: str | None, tools: Iterable[str],
                      mcp_servers: Iterable[tuple[str, str]], permission_mode: str = "default") -> dict:
    """``system``/``init``, flat, as the Agent SDK writes it."""
    return {"type": "system", "subtype": "init", "uuid": uuid, "session_id": session_id, "cwd": "/",
            "tools": list(tools), "mcp_servers": [{"name": n, "status": s} for n, s in mcp_servers],
            "model": model, "permissionMode": permission_mode, "apiKeySource": "none", "slash_commands": [],
            "output_style": "default"}


def _usage_to_wire(usage: Usage) -> dict:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens}


def _block_to_wire(block: Any, names: dict) -> dict:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, RedactedThinking):
        return {"type": "redacted_thinking", "data": block.data}
    if isinstance(block, ToolUse):
        return {"type": "tool_use", "id": block.id, "name": names.get(block.name, block.name), "input": block.input}
    if isinstance(block, RawBlock):
        return dict(block.data)
    return block.to_dict()


def assistant_frame(session_id: str, uuid: str, response: Response, names: dict | None = None) -> dict:
    """An ``assistant`` message for one model reply (``names`` maps tool names to what clients see)."""
    names = names or {}
    return {"type": "assistant", "uuid": uuid, "session_id": session_id, "parent_tool_use_id": None,
            "message": {"id": response.id, "type": "message", "role": "assistant", "model": response.model,
                        "content": [_block_to_wire(b, names) for b in response.content],
                        "stop_reason": None if response.stop_reason is None else str(response.stop_reason),
                        "stop_sequence": response.stop_sequence, "usage": _usage_to_wire(response.usage)}}


def tool_result_user_frame(session_id: str, uuid: str, result: ToolResult) -> dict:
    """A ``user`` message echoing one tool result, as the Agent SDK streams them."""
    block = {"type": "tool_result", "tool_use_id": result.tool_use_id,
             "content": [_block_to_wire(b, {}) for b in result.content]}
    if result.is_error:
        block["is_error"] = True
    return {"type": "user", "uuid": uuid, "session_id": session_id, "parent_tool_use_id": None,
            "message": {"role": "user", "content": [block]}}


def stream_event_frame(session_id: str, uuid: str, event: dict) -> dict:
    """A ``stream_event`` (sent bare: the Python SDK 0.2.0 drops these, and never asks for them)."""
    return {"type": "stream_event", "uuid": uuid, "session_id": session_id, "parent_tool_use_id": None,
            "event": event}


class StreamEncoder:
    """Raw Anthropic stream events (``message_start`` ... ``message_stop``) for one reply's convo stream events.

    Not thread-safe: one per reply being streamed. No I/O.
    """

    def __init__(self, model: str | None = None, names: dict | None = None) -> None:
        self._model = model or ""
        self._names = names or {}
        self._open: set[int] = set()
        self._started = False

    def encode(self, event: Any) -> list[dict]:
        """The raw events for one convo stream event (``UsageUpdate`` gives none)."""
        from ..service import BlockDone, StreamDone, TextDelta, ThinkingDelta, ToolInputDelta

        out: list[dict] = []
        if not self._started and isinstance(event, (TextDelta, ThinkingDelta, ToolInputDelta, BlockDone, StreamDone)):
            self._started = True
            out.append({"type": "message_start", "message": {"id": "", "type": "message", "role": "assistant",
                                                             "model": self._model, "content": [], "stop_reason": None,
                                                             "stop_sequence": None,
                                                             "usage": {"input_tokens": 0, "output_tokens": 0}}})

        def start(index: int, block: dict) -> None:
            if index not in self._open:
                self._open.add(index)
                out.append({"type": "content_block_start", "index": index, "content_block": block})

        if isinstance(event, TextDelta):
            start(event.index, {"type": "text", "text": ""})
            out.append({"type": "content_block_delta", "index": event.index,
                        "delta": {"type": "text_delta", "text": event.text}})
        elif isinstance(event, ThinkingDelta):
            start(event.index, {"type": "thinking", "thinking": "", "signature": ""})
            out.append({"type": "content_block_delta", "index": event.index,
                        "delta": {"type": "thinking_delta", "thinking": event.thinking}})
        elif isinstance(event, ToolInputDelta):
            start(event.index, {"type": "tool_use", "id": event.id, "name": self._names.get(event.name, event.name),
                                "input": {}})
            out.append({"type": "content_block_delta", "index": event.index,
                        "delta": {"type": "input_json_delta", "partial_json": event.partial_json}})
        elif isinstance(event, BlockDone):
            if event.index not in self._open:
                start(event.index, _block_to_wire(event.block, self._names))
            out.append({"type": "content_block_stop", "index": event.index})
        elif isinstance(event, StreamDone):
            response = event.response
            out.append({"type": "message_delta",
                        "delta": {"stop_reason": None if response.stop_reason is None else str(response.stop_reason),
                                  "stop_sequence": response.stop_sequence},
                        "usage": {"output_tokens": response.usage.output_tokens}})
            out.append({"type": "message_stop"})
            self._open.clear()
            self._started = False
        return out


def result_frame(session_id: str, uuid: str, *, subtype: ResultSubtype | str, result: str | None,
                 num_turns: int, duration_ms: int, duration_api_ms: int, cost_usd: Decimal, usage: Usage,
                 stop_reason: str | None = None, structured_output: Any = None,
                 error_code: ErrorCode | str | None = None, errors: Iterable[str] = ()) -> dict:
    """The ``result`` message that ends every turn.

    Error subtypes leave ``result`` out and carry ``errors`` (the Agent
    SDK's) and ``error: {code, message}`` (the code an ``error`` frame
    would carry, for clients that want it).
    """
    subtype = ResultSubtype(subtype)
    frame: dict[str, Any] = {
        "type": "result", "subtype": str(subtype), "uuid": uuid, "session_id": session_id,
        "is_error": subtype != ResultSubtype.SUCCESS, "duration_ms": int(duration_ms),
        "duration_api_ms": int(duration_api_ms), "num_turns": num_turns,
        "total_cost_usd": float(cost_usd), "usage": _usage_to_wire(usage), "stop_reason": stop_reason,
        "permission_denials": [],
    }
    if subtype == ResultSubtype.SUCCESS:
        frame["result"] = result if result is not None else ""
        if structured_output is not None:
            frame["structured_output"] = structured_output
    else:
        errors = list(errors)
        frame["errors"] = errors
        if error_code is not None:
            frame["error"] = {"code": str(ErrorCode(error_code)), "message": errors[0] if errors else ""}
    return frame


def fit_frame(frame: dict, limit: int = MAX_FRAME_BYTES) -> str:
    """The frame as compact JSON of at most ``limit`` bytes: the longest strings cut (and marked) if need be.

    A Python SDK client closes the connection on a frame over 1 MiB, so
    an enormous reply or tool input is cut rather than sent whole.
    """
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), default=str)
    size = len(text.encode("utf-8"))
    if size <= limit:
        return text
    frame = json.loads(text)
    for _ in range(64):
        over = size - limit
        path, longest = _longest_string(frame)
        if path is None or len(longest) < 64:
            break
        keep = max(0, len(longest.encode("utf-8")) - over - 64)
        cut = longest.encode("utf-8")[:keep].decode("utf-8", "ignore")
        _set(frame, path, f"{cut}…[cut {len(longest) - len(cut)} characters]")
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
        if size <= limit:
            return text
    raise ProtocolError(f"a {frame.get('type')} frame does not fit in {limit} bytes")


def _longest_string(value: Any, path: tuple = ()) -> tuple[tuple | None, str]:
    best: tuple[tuple | None, str] = (None, "")
    if isinstance(value, str):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if key in ("type", "uuid", "session_id", "id", "tool_use_id", "callId"):
            continue
        found = _longest_string(item, path + (key,))
        if found[0] is not None and len(found[1]) > len(best[1]):
            best = found
    return best


def _set(value: Any, path: tuple, new: str) -> None:
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


# --- what a client reads ----------------------------------------------------------------------


@frozen
class Ready:
    """``control``/``ready``: the server accepts frames."""


@frozen
class SessionInfo:
    """``control``/``session_info``: the session's id and state."""

    session_id: str
    data: dict = field(factory=dict)


@frozen
class SystemMessage:
    """A ``system`` message (``subtype`` ``init`` at the start of each turn)."""

    subtype: str
    session_id: str
    data: dict = field(factory=dict)

    @property
    def tools(self) -> list:
        return list(self.data.get("tools") or [])

    @property
    def model(self) -> str | None:
        return self.data.get("model")


@frozen
class AssistantMessage:
    """One model reply: its content as convo blocks, and the raw message."""

    session_id: str
    uuid: str
    content: tuple
    model: str = ""
    raw: dict = field(factory=dict, repr=False)

    @property
    def text(self) -> str:
        """The reply's text blocks joined."""
        return "".join(b.text for b in self.content if isinstance(b, Text))

    @property
    def tool_uses(self) -> list[ToolUse]:
        return [b for b in self.content if isinstance(b, ToolUse)]


@frozen
class UserMessage:
    """A ``user`` message from the server: tool results echoed back."""

    session_id: str
    uuid: str
    content: tuple
    raw: dict = field(factory=dict, repr=False)


@frozen
class StreamEvent:
    """A raw Anthropic stream event (only with ``include_partial_messages``)."""

    session_id: str
    event: dict

    @property
    def text_delta(self) -> str:
        """The text this event adds, if it is a text delta ("" otherwise)."""
        delta = self.event.get("delta") or {}
        return delta.get("text", "") if delta.get("type") == "text_delta" else ""


@frozen
class ResultMessage:
    """The end of a turn: how it ended, its text, its cost and usage."""

    subtype: str
    session_id: str
    is_error: bool
    result: str | None
    total_cost_usd: Decimal
    usage: Usage
    num_turns: int
    duration_ms: int
    duration_api_ms: int = 0
    structured_output: Any = None
    errors: tuple = ()
    error_code: str | None = None
    raw: dict = field(factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.subtype == "success" and not self.is_error


@frozen
class ToolCall:
    """The server asks the client to run one of its tools."""

    call_id: str
    tool_name: str
    input: Any


@frozen
class ErrorMessage:
    """An ``error`` frame: its code, message and details."""

    code: str
    message: str
    details: dict = field(factory=dict)


@frozen
class Pong:
    timestamp: Any = None


@frozen
class OtherServerMessage:
    """A frame this client does not act on (a future type, ``control``/``close``), kept raw."""

    type: str
    raw: dict = field(factory=dict)


OTHER_SERVER_MESSAGE = OtherServerMessage

ServerMessage = Union[Ready, SessionInfo, SystemMessage, AssistantMessage, UserMessage, StreamEvent, ResultMessage,
                      ToolCall, ErrorMessage, Pong, OtherServerMessage]


def _blocks_from_wire(content: Any) -> tuple:
    if isinstance(content, str):
        return (Text(content),)
    out: list[Any] = []
    for block in content or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(Text(block["text"]))
        elif kind == "thinking":
            out.append(Thinking(block.get("thinking", ""), block.get("signature", "")))
        elif kind == "tool_use":
            out.append(ToolUse(str(block.get("id", "")), str(block.get("name", "")), block.get("input") or {}))
        elif kind == "tool_result":
            inner = block.get("content")
            inner_blocks = _blocks_from_wire(inner) if inner is not None else ()
            out.append(ToolResult(str(block.get("tool_use_id") or "?"),
                                  tuple(b for b in inner_blocks if isinstance(b, (Text, Image, Document, RawBlock))),
                                  is_error=bool(block.get("is_error", False))))
        else:
            out.append(RawBlock(block))
    return tuple(out)


def parse_server_frame(text: str | bytes) -> ServerMessage:
    """The typed message a server frame carries (``sdk_message`` wrappers unwrapped).

    Raises:
        ProtocolError: the frame is not a JSON object with a ``type``.
    """
    data = _loads(text if isinstance(text, str) else text.decode("utf-8", "replace"), 0)
    kind = data["type"]
    if kind == "sdk_message" and isinstance(data.get("payload"), dict) and "type" in data["payload"]:
        data = data["payload"]
        kind = data["type"]
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    session_id = str(data.get("session_id") or "")
    if kind == "control":
        action = payload.get("action")
        if action == "ready":
            return Ready()
        if action == "session_info" and isinstance(payload.get("data"), dict):
            return SessionInfo(str(payload["data"].get("sessionId", "")), payload["data"])
        return OtherServerMessage("control", data)
    if kind == "system":
        return SystemMessage(str(data.get("subtype", "")), session_id or str(
            (data.get("data") or {}).get("session_id", "")), data)
    if kind == "assistant":
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        return AssistantMessage(session_id, str(data.get("uuid", "")), _blocks_from_wire(message.get("content")),
                                str(message.get("model", "")), data)
    if kind == "user":
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        return UserMessage(session_id, str(data.get("uuid", "")), _blocks_from_wire(message.get("content")), data)
    if kind == "stream_event":
        return StreamEvent(session_id, data.get("event") if isinstance(data.get("event"), dict) else {})
    if kind == "result":
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        cost = data.get("total_cost_usd")
        return ResultMessage(
            subtype=str(data.get("subtype", "")), session_id=session_id, is_error=bool(data.get("is_error")),
            result=data.get("result"), total_cost_usd=Decimal(str(cost)) if cost is not None else Decimal(0),
            usage=Usage(**{k: int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens",
                                                                 "cache_creation_input_tokens",
                                                                 "cache_read_input_tokens")}),
            num_turns=int(data.get("num_turns") or 0), duration_ms=int(data.get("duration_ms") or 0),
            duration_api_ms=int(data.get("duration_api_ms") or 0), structured_output=data.get("structured_output"),
            errors=tuple(str(e) for e in data.get("errors") or ()), error_code=error.get("code"), raw=data)
    if kind == "tool_call":
        return ToolCall(str(payload.get("callId", "")), str(payload.get("toolName", "")), payload.get("input") or {})
    if kind == "error":
        details = payload.get("details") if isinstance(payload.get("details"), dict) else {}
        return ErrorMessage(str(payload.get("code") or ErrorCode.UNKNOWN_ERROR), str(payload.get("message", "")),
                            details)
    if kind == "pong":
        return Pong(payload.get("timestamp"))
    return OtherServerMessage(kind, data)


# --- what a client sends ---------------------------------------------------------------------


def init_frame(*, model: str | None = None, system_prompt: str | None = None, max_turns: int | None = None,
               max_budget_usd: Any = None, tools: Iterable[Any] = (), session_id: str | None = None,
               fork: bool = False, output_schema: dict | None = None,
               include_partial_messages: bool = False, tool_choice: str | None = None) -> dict:
    """An ``init`` frame; ``tools`` are objects with ``name``, ``description`` and ``input_schema`` (convo Tools)."""
    payload: dict[str, Any] = {}
    if model:
        payload["model"] = model
    if system_prompt:
        payload["systemPrompt"] = system_prompt
    if max_turns:
        payload["maxTurns"] = max_turns
    if max_budget_usd is not None:
        payload["maxBudgetUsd"] = float(max_budget_usd)
    tools = list(tools)
    if tools:
        payload["mcpServers"] = [{"name": INLINE_TOOLS, "version": "1.0.0", "tools": [
            {"name": t.name, "description": t.description, "inputSchema": t.input_schema, "executeIn": "client"}
            for t in tools]}]
    if session_id:
        payload["sessionId"] = session_id
        if fork:
            payload["forkSession"] = True
    if output_schema is not None:
        payload["outputFormat"] = {"type": "json_schema", "schema": output_schema}
    if include_partial_messages:
        payload["includePartialMessages"] = True
    if tool_choice is not None:
        payload["toolChoice"] = ({"type": tool_choice} if tool_choice in ("auto", "any", "none")
                                 else {"type": "tool", "name": tool_choice})
    return {"type": "init", "payload": payload}


def user_frame(text: str, session_id: str | None = None, blocks: Iterable[Any] = ()) -> dict:
    """A bare ``user`` message starting a turn (as the TypeScript, Go and PHP SDKs send it)."""
    content: Any = text
    blocks = list(blocks)
    if blocks:
        content = []
        for b in blocks:
            d = b.to_dict()
            source = ({"type": "base64", "media_type": d.get("media_type"), "data": d["data"]} if d.get("data")
                      else {"type": "url", "url": d.get("url")})
            content.append({"type": d["type"], "source": source})
        if text:
            content.append({"type": "text", "text": text})
    return {"type": "user", "session_id": session_id or "unknown", "parent_tool_use_id": None,
            "message": {"role": "user", "content": content}}


def tool_result_frame(call_id: str, content: list[dict], is_error: bool = False) -> dict:
    return {"type": "tool_result", "payload": {"callId": call_id, "result": {"content": content,
                                                                               "isError": is_error}}}


def ping_frame(timestamp: int | None = None) -> dict:
    return {"type": "ping", "payload": {"timestamp": timestamp if timestamp is not None
                                        else int(time.time() * 1000)}}
