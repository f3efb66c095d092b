"""The OpenAI Chat Completions service, for OpenAI and every server that speaks its protocol.

:class:`OpenAIService` talks to ``POST {base_url}/chat/completions``: OpenAI
itself, OpenRouter, and local servers (llama.cpp, vLLM, Ollama, LM Studio).
The wire format lives here and nowhere else: :func:`to_wire` builds the
request body from a neutral :class:`~convo.Request`, :func:`from_wire` reads
a completion, :class:`StreamAssembler` merges streamed chunks, and
:func:`error_from_body` reads OpenAI's and OpenRouter's error bodies. All
four are pure functions of their input, tested on recorded traffic.

Where the protocol cannot say what convo's data model says, this module
makes a documented choice:

- Tool results become ``tool`` messages, which carry text only. Images and
  files a tool returned follow in one ``user`` message after the ``tool``
  messages, each introduced by a line naming its tool call.
- ``Thinking``, ``RedactedThinking`` and ``RawBlock`` blocks cannot be sent
  back (DeepSeek even rejects its own ``reasoning_content``): they stay in
  the history and are left out of the request.
- Malformed tool-call arguments (invalid JSON, or JSON that is not an
  object) are kept as the raw string in ``ToolUse.input``. Nothing crashes:
  the Convo's input validation rejects a non-object input, so the model
  reads an error result and can try again, and the raw string is sent back
  unchanged so the history stays faithful.
- Structured output (``Request.output_schema``) is a ``response_format`` of
  type ``json_schema`` named ``final_output``, ``strict`` only when the
  schema is within the strict subset OpenAI accepts (every object closed
  and every property required; see :func:`strict_schema_ok`), since OpenAI
  rejects a strict schema outside it. The reply's content is the JSON text.
- Usage: ``input_tokens`` is ``prompt_tokens`` minus the cached ones, which
  are reported as ``cache_read_input_tokens``. A stream whose server sends
  no usage chunk (``stream_options`` is ignored by some servers, llama.cpp's
  Python server among them) ends with zero usage.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests

from . import _http
from .._log import log
from .._time import now
from ..errors import (
    AttachmentTooLarge,
    MissingAPIKeyError,
    ProviderError,
    ResponseFormatError,
    UnsupportedContent,
    error_for_status,
)
from ..messages import (
    Document,
    Image,
    Message,
    RawBlock,
    Request,
    Response,
    Role,
    StopReason,
    Text,
    Thinking,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
from ..pricing import lookup_model
from ..service import (
    BlockDone,
    StreamDone,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolInputDelta,
    UsageUpdate,
)
from ..usage import Usage
from ._retry import RetryPolicy
from ._sse import iter_sse

__all__ = [
    "CONTEXT_WINDOWS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "OpenAIService",
    "StreamAssembler",
    "context_window_for",
    "error_from_body",
    "from_wire",
    "strict_schema_ok",
    "to_wire",
    "usage_from_wire",
]

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

# --- context windows ---------------------------------------------------------

# Tokens each model attends to, input and output together, from OpenAI's
# model pages. Looked up by convo.pricing.lookup_model, the one rule for
# per-model tables: the exact name, a dated snapshot of it
# ("gpt-4o-2024-08-06" is a "gpt-4o"), or a router's "openai/gpt-4o".
# Anything else, local models included, gets _DEFAULT_CONTEXT_WINDOW: pass
# context_window= to be exact.
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-5-pro": 400_000,
    "gpt-5-codex": 400_000,
    "gpt-5-chat": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4.5-preview": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o-latest": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-turbo-preview": 128_000,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-3.5-turbo": 16_385,
    "gpt-oss-120b": 131_072,
    "gpt-oss-20b": 131_072,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o1-pro": 200_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o3-pro": 200_000,
    "o4-mini": 200_000,
}
_DEFAULT_CONTEXT_WINDOW = 128_000


def context_window_for(model: str) -> int:
    """The context window of ``model`` from :data:`CONTEXT_WINDOWS`, 128k if unknown."""
    window = lookup_model(CONTEXT_WINDOWS, model)
    return _DEFAULT_CONTEXT_WINDOW if window is None else window


# --- request: neutral -> wire --------------------------------------------------

def _data_url(media_type: str | None, data: str) -> str:
    return f"data:{media_type or 'application/octet-stream'};base64,{data}"


# What Chat Completions takes inline (OpenAI's images-and-vision and PDF-files guides): four
# image types as data URLs, and PDFs as ``file`` parts, within their size limits.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_FILE_BYTES = 32 * 1024 * 1024


def _decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")


def _image_part(image: Image) -> dict:
    if image.url is not None:
        return {"type": "image_url", "image_url": {"url": image.url}}
    if image.media_type not in IMAGE_TYPES:
        raise UnsupportedContent(PROVIDER, f"images of type {image.media_type or '(none given)'}",
                                 f"it takes {', '.join(IMAGE_TYPES)}")
    size = _decoded_size(image.data or "")
    if size > MAX_IMAGE_BYTES:
        raise AttachmentTooLarge(f"an {image.media_type} image for OpenAI", size, MAX_IMAGE_BYTES)
    return {"type": "image_url", "image_url": {"url": _data_url(image.media_type, image.data or "")}}


def _document_part(doc: Document) -> dict:
    if doc.text is not None:
        title = f"{doc.title}\n\n" if doc.title else ""
        return {"type": "text", "text": title + doc.text}
    if doc.data is not None:
        media_type = doc.media_type or "application/pdf"
        if media_type != "application/pdf":
            raise UnsupportedContent(PROVIDER, f"files of type {media_type}",
                                     "it takes PDFs, and text given as Document(text=...)")
        size = _decoded_size(doc.data)
        if size > MAX_FILE_BYTES:
            raise AttachmentTooLarge("a PDF for OpenAI", size, MAX_FILE_BYTES)
        name = doc.title or "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": _data_url(media_type, doc.data)}}
    # Chat Completions cannot fetch a document by URL: tell the model where it is.
    return {"type": "text", "text": f"[document: {doc.title + ' ' if doc.title else ''}{doc.url}]"}


def _user_content(parts: list[dict]) -> str | list[dict]:
    # Plain text goes as a string: many local servers' chat templates render
    # a list of parts as its Python repr.
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _tool_result_text(result: ToolResult) -> str:
    texts = [b.text for b in result.content if isinstance(b, Text)]
    texts += [b.text for b in result.content if isinstance(b, Document) and b.text is not None]
    text = "\n\n".join(texts)
    if result.is_error and not text.lower().startswith("error"):
        # The protocol has no error flag for tool results; say it in words.
        text = f"Error: {text}" if text else "Error"
    return text


def _tool_result_attachments(result: ToolResult) -> list[dict]:
    out = []
    for block in result.content:
        if isinstance(block, Image):
            out.append(_image_part(block))
        elif isinstance(block, Document) and block.text is None:
            out.append(_document_part(block))
    return out


def _arguments(tool_input: Any) -> str:
    # A malformed input kept as its raw string (see from_wire) goes back verbatim.
    if isinstance(tool_input, str):
        return tool_input
    return json.dumps(tool_input, ensure_ascii=False)


def _user_messages(message: Message) -> list[dict]:
    out: list[dict] = []
    attachments: list[dict] = []
    parts: list[dict] = []
    for block in message.content:
        if isinstance(block, ToolResult):
            extra = _tool_result_attachments(block)
            text = _tool_result_text(block)
            if extra:
                if not text:
                    text = "(the result is in the next user message)"
                attachments.append({"type": "text", "text": f"Attachments from tool call {block.tool_use_id}:"})
                attachments.extend(extra)
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, Text):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, Image):
            parts.append(_image_part(block))
        elif isinstance(block, Document):
            parts.append(_document_part(block))
        # Thinking, RedactedThinking, RawBlock and ToolUse cannot appear in a
        # user turn on this wire: dropped from the request, kept in history.
    # Tool messages must directly follow the assistant's tool_calls, so what
    # the tools returned beyond text, and the user's own words, come after.
    user_parts = attachments + parts
    if user_parts:
        out.append({"role": "user", "content": _user_content(user_parts)})
    return out


def _assistant_message(message: Message) -> dict | None:
    text = "".join(b.text for b in message.content if isinstance(b, Text))
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": _arguments(b.input)}}
        for b in message.content
        if isinstance(b, ToolUse)
    ]
    # Thinking and RedactedThinking cannot be sent back on this wire, nor can
    # RawBlocks: they stay in the history and are left out of the request.
    if not text and not calls:
        return None  # the API rejects an empty assistant message
    # With only calls, content is "" rather than null or absent: OpenAI takes
    # all three, but llama.cpp's server rejects null, and its function-calling
    # chat template fails on a missing content.
    wire: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        wire["tool_calls"] = calls
    return wire


def _tool_choice(choice: ToolChoice) -> str | dict:
    kind = str(choice.type)
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "none": "none", "any": "required"}.get(kind, kind)


def _tool(spec: ToolSpec) -> dict:
    fn: dict[str, Any] = {"name": spec.name}
    if spec.description:
        fn["description"] = spec.description
    fn["parameters"] = spec.input_schema
    return {"type": "function", "function": fn}


# The keywords OpenAI's strict mode accepts (its "supported schemas" list); anything else makes a
# strict schema a 400, so such a schema is sent with strict off.
_STRICT_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
    "description", "title", "$defs", "definitions", "$ref", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
})


def strict_schema_ok(schema: Any) -> bool:
    """Whether ``schema`` fits OpenAI's strict structured outputs: closed objects, all properties required."""
    if isinstance(schema, list):
        return all(strict_schema_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if not set(schema) <= _STRICT_KEYWORDS:
        return False
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(properties):
            return False
    nested = [*(schema.get("properties") or {}).values(), *(schema.get("$defs") or {}).values(),
              *(schema.get("definitions") or {}).values(), schema.get("items"), schema.get("anyOf")]
    return all(strict_schema_ok(s) for s in nested if s is not None)


def _response_format(schema: dict) -> dict:
    spec: dict[str, Any] = {"name": "final_output"}
    if isinstance(schema.get("description"), str) and schema["description"]:
        spec["description"] = schema["description"]
    spec["schema"] = schema
    spec["strict"] = strict_schema_ok(schema)
    return {"type": "json_schema", "json_schema": spec}


def to_wire(
    request: Request,
    model: str,
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    max_tokens_field: str = "max_tokens",
) -> dict:
    """The Chat Completions body for ``request``.

    Args:
        request: the neutral request.
        model: the model name to put in the body.
        stream: ask for a stream, with a final usage chunk.
        max_tokens: used when ``request.max_tokens`` is None; neither set
            means no limit is sent and the server decides.
        max_tokens_field: ``"max_tokens"`` (what every compatible server
            reads) or ``"max_completion_tokens"`` (OpenAI's current name,
            the only one its o-series and gpt-5 models accept).

    ``request.extra`` is merged in last, so it can set or override any field.
    Prompt-cache marks (``cache=True``) are not sent: OpenAI caches prompts
    automatically. ``request.thinking`` is not mapped; set
    ``extra={"reasoning_effort": ...}`` for OpenAI's reasoning models.
    """
    messages: list[dict] = []
    system = "\n\n".join(b.text for b in request.system if isinstance(b, Text))
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if message.role == Role.USER:
            messages.extend(_user_messages(message))
        else:
            wire = _assistant_message(message)
            if wire is not None:
                messages.append(wire)

    body: dict[str, Any] = {"model": model, "messages": messages}
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        # OpenAI rejects tool_choice and parallel_tool_calls without tools.
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
            if request.tool_choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
    limit = request.max_tokens if request.max_tokens is not None else max_tokens
    # Setting both names is an error on OpenAI: a name given in extra wins.
    if limit is not None and not ({"max_tokens", "max_completion_tokens"} & request.extra.keys()):
        body[max_tokens_field] = limit
    if request.temperature is not None:
        body["temperature"] = request.temperature
    for name in ("top_p", "frequency_penalty", "presence_penalty"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.top_k is not None:
        # Chat Completions has no top_k (OpenAI rejects it); servers that take
        # one (llama.cpp, vLLM) get it through extra={"top_k": ...}.
        log.debug("parameter_not_sent", provider=PROVIDER, parameter="top_k")
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.output_schema is not None:
        body["response_format"] = _response_format(request.output_schema)
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(request.extra)
    return body


# --- response: wire -> neutral ----------------------------------------------------

_FINISH_REASONS = {
    "stop": StopReason.END_TURN,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "length": StopReason.MAX_TOKENS,
    "content_filter": StopReason.REFUSAL,
}


def _stop_reason(finish_reason: str | None, has_tool_calls: bool, refused: bool) -> StopReason:
    if refused:
        return StopReason.REFUSAL
    if finish_reason is None or finish_reason == "stop":
        # Some servers end a tool-calling turn with "stop" (or send no finish
        # reason at all in a stream); the calls are what matters to the loop.
        # A plain "stop" may also mean a stop sequence was hit: the protocol
        # does not say which, so stop_sequence stays None.
        return StopReason.TOOL_USE if has_tool_calls else StopReason.END_TURN
    return _FINISH_REASONS.get(finish_reason) or StopReason(finish_reason)


def usage_from_wire(usage: dict | None) -> Usage:
    """Our :class:`~convo.Usage` from a Chat Completions ``usage`` object (None gives zero)."""
    if not usage:
        return Usage()
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cache_read_input_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _parse_arguments(raw: str | None, name: str) -> dict | str:
    if raw is None or not raw.strip():
        return {}  # servers send "" for a call without arguments
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    log.warning("tool_arguments_malformed", provider=PROVIDER, tool_name=name, arguments=raw[:200])
    return raw


def _reasoning_of(message: dict) -> str:
    # llama.cpp, vLLM and DeepSeek say reasoning_content; OpenRouter says reasoning.
    value = message.get("reasoning_content")
    if not isinstance(value, str):
        value = message.get("reasoning")
    return value if isinstance(value, str) else ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a few servers answer with content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _raise_error_in_body(body: dict, status_code: int | None, request_id: str | None) -> None:
    if isinstance(body, dict) and body.get("error") is not None and not body.get("choices"):
        raise error_from_body(status_code, body, request_id=request_id)


def from_wire(
    body: dict,
    *,
    model: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    request_id: str | None = None,
) -> Response:
    """The :class:`~convo.Response` for a Chat Completions body (the first choice).

    ``model`` is used when the body names none. An error object in place of
    choices (OpenRouter sends those with HTTP 200) raises its typed error.

    Raises:
        ProviderError: the body is an error.
        ResponseFormatError: the body has no choices.
    """
    _raise_error_in_body(body, None, request_id)
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices:
        raise ResponseFormatError(
            f"{PROVIDER} response has no choices: {_http.snippet(body)}", request_id=request_id
        )
    choice = next((c for c in choices if c.get("index", 0) == 0), choices[0])
    message = choice.get("message") or {}

    content: list = []
    reasoning = _reasoning_of(message)
    if reasoning:
        content.append(Thinking(reasoning))
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else ""
    text = _text_of(message.get("content")) + refusal
    if text:
        content.append(Text(text))
    calls = message.get("tool_calls") or []
    content.extend(_tool_call_block(call) for call in calls)
    if not calls and isinstance(message.get("function_call"), dict):
        # The legacy single function call, from servers that predate tool_calls.
        fc = message["function_call"]
        name = fc.get("name") or ""
        content.append(ToolUse("function_call", name, _parse_arguments(fc.get("arguments"), name)))

    has_calls = any(isinstance(b, ToolUse) for b in content)
    return Response(
        id=body.get("id") or "",
        model=body.get("model") or model,
        content=content,
        stop_reason=_stop_reason(choice.get("finish_reason"), has_calls, bool(refusal)),
        stop_sequence=None,
        usage=usage_from_wire(body.get("usage")),
        start_time=start_time,
        end_time=end_time,
    )


def _tool_call_block(call: dict):
    if call.get("type", "function") != "function" or not isinstance(call.get("function"), dict):
        return RawBlock(call)  # a kind of call convo does not model, kept verbatim
    fn = call["function"]
    name = fn.get("name") or ""
    return ToolUse(call.get("id") or "", name, _parse_arguments(fn.get("arguments"), name))


# --- errors -------------------------------------------------------------------------

def error_from_body(status_code: int | None, body: Any, *, request_id: str | None = None) -> ProviderError:
    """The typed error for an error body from OpenAI, OpenRouter or a compatible server.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}`` where ``code``
    may be null; ``error_type`` is the type, else the code. OpenRouter:
    ``{"error": {"code": 429, "message", "metadata": {"provider_name", "raw"}}}``
    with an integer code (the HTTP status again) and no type; the upstream
    provider's own words from ``metadata`` are added to the message. Inside
    a stream (``status_code`` None) an integer code stands in for the status.
    """
    err: Any = body.get("error") if isinstance(body, dict) else None
    if err is None and isinstance(body, dict):
        err = body  # vLLM and friends put the error fields at the top level
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {}
    message = err.get("message") or err.get("detail")
    if not isinstance(message, str):
        message = json.dumps(message) if message else f"HTTP {status_code} error"
    code = err.get("code")
    error_type = err.get("type") if isinstance(err.get("type"), str) else None
    if error_type is None and isinstance(code, str):
        error_type = code
    if status_code is None and isinstance(code, int):
        status_code = code
    metadata = err.get("metadata")
    if isinstance(metadata, dict) and metadata.get("raw"):
        raw = metadata["raw"]
        raw = raw if isinstance(raw, str) else json.dumps(raw)
        who = metadata.get("provider_name")
        message = f"{message} ({who}: {raw})" if who else f"{message} ({raw})"
    return error_for_status(status_code, message, error_type=error_type, request_id=request_id)


# --- streaming ------------------------------------------------------------------------


class _Call:
    __slots__ = ("block", "id", "name", "args")

    def __init__(self, block: int) -> None:
        self.block = block
        self.id = ""
        self.name = ""
        self.args: list[str] = []


class StreamAssembler:
    """Merges streamed Chat Completions chunks into stream events and a final response.

    Feed each decoded ``data:`` object to :meth:`feed`, then call
    :meth:`finish`. Block indices follow the order in which blocks first
    appear (reasoning, text, then tool calls, as servers send them), which
    is also the order of the final response's content, so the response
    equals what :func:`from_wire` builds for the same reply.

    Tool calls are merged by their ``index``. Servers that repeat the id and
    name in every chunk (llama.cpp, several OpenRouter providers) do not
    duplicate them: a name equal to the one held is ignored, one that
    extends it replaces it, anything else is appended. Arguments are always
    appended. ``BlockDone`` events come when the finish reason arrives (or
    at the end, if it never does), because a server may interleave
    fragments of parallel calls. A chunk carrying ``usage`` gives a
    :class:`~convo.service.UsageUpdate`.

    One assembler per stream; not thread-safe.
    """

    def __init__(self, model: str = "") -> None:
        self._model = model
        self._id = ""
        self._chunk_model = ""
        self._order: list[tuple[str, Any]] = []  # (kind, key) per block index
        self._thinking: list[str] = []
        self._text: list[str] = []
        self._thinking_block: int | None = None
        self._text_block: int | None = None
        self._calls: dict[int, _Call] = {}
        self._finish_reason: str | None = None
        self._refused = False
        self._usage: dict | None = None
        self._closed = False

    def _open(self, kind: str, key: Any = None) -> int:
        self._order.append((kind, key))
        return len(self._order) - 1

    def feed(self, chunk: dict) -> list[StreamEvent]:
        """The events one chunk yields (often none, or one)."""
        _raise_error_in_body(chunk, None, None)
        events: list[StreamEvent] = []
        if not self._id and chunk.get("id"):
            self._id = chunk["id"]
        if not self._chunk_model and chunk.get("model"):
            self._chunk_model = chunk["model"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = _reasoning_of(delta)
            if reasoning:
                if self._thinking_block is None:
                    self._thinking_block = self._open("thinking")
                self._thinking.append(reasoning)
                events.append(ThinkingDelta(self._thinking_block, reasoning))
            refusal = delta.get("refusal") if isinstance(delta.get("refusal"), str) else ""
            if refusal:
                self._refused = True
            text = _text_of(delta.get("content")) + refusal
            if text:
                if self._text_block is None:
                    self._text_block = self._open("text")
                self._text.append(text)
                events.append(TextDelta(self._text_block, text))
            tool_calls = delta.get("tool_calls")
            if not tool_calls and isinstance(delta.get("function_call"), dict):
                # The legacy single function call; llama.cpp sends it alongside
                # tool_calls, and then it is ignored.
                fc = delta["function_call"]
                tool_calls = [{"index": 0, "id": "function_call", "function": fc}]
            for position, tc in enumerate(tool_calls or ()):
                events.extend(self._merge_call(tc, position))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                events.extend(self._close())
        if chunk.get("usage"):
            self._usage = chunk["usage"]  # the last one wins; OpenRouter may repeat it
            events.append(UsageUpdate(usage_from_wire(self._usage)))
        return events

    def _merge_call(self, tc: dict, position: int) -> list[StreamEvent]:
        index = tc.get("index")
        if not isinstance(index, int):
            # A few servers leave out the index: find the call by id, else it
            # continues the latest call, else it is a new one.
            known = [i for i, c in self._calls.items() if tc.get("id") and c.id == tc.get("id")]
            if known:
                index = known[0]
            elif tc.get("id") or not self._calls:
                index = max(self._calls, default=-1) + 1
            else:
                index = max(self._calls)
        call = self._calls.get(index)
        new = call is None
        if new:
            call = self._calls[index] = _Call(self._open("tool", index))
        if tc.get("id") and not call.id:
            call.id = tc["id"]
        fn = tc.get("function") or {}
        name = fn.get("name")
        if name:
            if not call.name or name.startswith(call.name):
                call.name = name
            elif name != call.name:
                call.name += name
        fragment = fn.get("arguments")
        if not isinstance(fragment, str):
            fragment = "" if fragment is None else json.dumps(fragment)
        if fragment:
            call.args.append(fragment)
        if new or fragment:
            return [ToolInputDelta(call.block, call.id, call.name, fragment)]
        return []

    def _blocks(self) -> list:
        blocks = []
        for kind, key in self._order:
            if kind == "thinking":
                blocks.append(Thinking("".join(self._thinking)))
            elif kind == "text":
                blocks.append(Text("".join(self._text)))
            else:
                call = self._calls[key]
                blocks.append(ToolUse(call.id, call.name, _parse_arguments("".join(call.args), call.name)))
        return blocks

    def _close(self) -> list[StreamEvent]:
        if self._closed:
            return []
        self._closed = True
        return [BlockDone(i, block) for i, block in enumerate(self._blocks())]

    def finish(self, *, start_time: datetime | None = None, end_time: datetime | None = None) -> list[StreamEvent]:
        """The last events: any ``BlockDone`` not yet sent, then :class:`~convo.StreamDone`."""
        events = self._close()
        content = self._blocks()
        has_calls = any(isinstance(b, ToolUse) for b in content)
        response = Response(
            id=self._id,
            model=self._chunk_model or self._model,
            content=content,
            stop_reason=_stop_reason(self._finish_reason, has_calls, self._refused),
            stop_sequence=None,
            usage=usage_from_wire(self._usage),
            start_time=start_time,
            end_time=end_time,
        )
        events.append(StreamDone(response))
        return events


# --- the service ------------------------------------------------------------------------


class OpenAIService(_http.SessionOwner):
    """A model served over OpenAI's Chat Completions API (OpenAI, OpenRouter, local servers).

    Args:
        model: the model name sent with every request.
        api_key: the key, else ``OPENAI_API_KEY``. Optional: without one no
            ``Authorization`` header is sent, which is what local servers want.
        base_url: the API root including its version, as in the official
            SDK (``https://api.openai.com/v1``, ``http://127.0.0.1:8080/v1``);
            else ``OPENAI_BASE_URL``, else OpenAI's. Requests go to
            ``{base_url}/chat/completions``.
        max_tokens: the output limit when a request sets none; None sends
            no limit and the server decides.
        session: a ``requests.Session`` to use (and to leave open on
            :meth:`close`); by default one from
            :func:`convo.providers._http.new_session`, whose in-flight requests
            ``Convo.cancel()`` can abort (a session of your own cannot be).
        timeout: seconds, or ``(connect, read)`` as requests takes them.
        retry: the :class:`~convo.RetryPolicy` for transient failures.
        organization: sent as ``OpenAI-Organization``.
        project: sent as ``OpenAI-Project``.
        headers: extra HTTP headers for every request (OpenRouter's
            ``HTTP-Referer``, say).
        context_window: what :meth:`token_context_window` answers; by default
            looked up in :data:`CONTEXT_WINDOWS` (128k for unknown models).
        max_tokens_field: the body field for the output limit. By default
            ``max_completion_tokens`` on api.openai.com (its o-series and
            gpt-5 models accept no other, and every current model takes it)
            and ``max_tokens`` elsewhere (what llama.cpp, vLLM, Ollama, LM
            Studio and OpenRouter read).

    Raises:
        MissingAPIKeyError: no key is given or in the environment and the
            base URL is OpenAI's own.

    Thread-safe: the service holds no per-call state, and its session's
    connection pool serves concurrent calls, so one instance may be shared
    by a Convo, its sub-convos and any number of threads; call
    :meth:`close` (or leave its ``with`` block) only when no call is
    running. The API key never appears in its repr, in errors (nor their
    tracebacks' locals and chains) or in logs.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int | None = None,
        session: requests.Session | None = None,
        timeout: float | tuple = (10.0, 600.0),
        retry: RetryPolicy = RetryPolicy(),
        organization: str | None = None,
        project: str | None = None,
        headers: dict | None = None,
        context_window: int | None = None,
        max_tokens_field: str | None = None,
    ) -> None:
        self._api_key = _http.Secret.given_or_from_env(api_key, "OPENAI_API_KEY")
        del api_key  # only the Secret holds the key now, not this frame's locals
        self.model = model
        self.base_url = (base_url or _http.environ("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        host = urlsplit(self.base_url).hostname or ""
        if self._api_key is None and host == "api.openai.com":
            # Local servers need no key; OpenAI itself would answer 401 after a round trip.
            raise MissingAPIKeyError("OPENAI_API_KEY", "OpenAI")
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retry = retry
        self.organization = organization
        self.project = project
        self.extra_headers = dict(headers or {})
        self.context_window = context_window
        if max_tokens_field is None:
            max_tokens_field = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
        self.max_tokens_field = max_tokens_field
        self._use_session(session)
        self._url = f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAIService(model={self.model!r}, base_url={self.base_url!r}, api_key={key})"

    def token_context_window(self) -> int:
        """How many tokens the model attends to, input and output together."""
        return self.context_window or context_window_for(self.model)

    def do(self, request: Request) -> Response:
        """Send ``request`` and return the whole reply.

        Failed attempts are retried under the retry policy, including a
        connection that drops while the reply's body is being read.

        Raises:
            ProviderError: a typed error (after retries), see :mod:`convo.errors`.
            Cancelled: ``Convo.cancel()`` stopped the call.
        """
        return _http.scrubbed(self._api_key, self._do, self._body(request, stream=False))

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Send ``request`` and yield events as they arrive; the last is :class:`~convo.StreamDone`.

        Nothing is sent until the first event is asked for. A connection
        that drops before the first event is retried under the retry policy;
        once an event has been yielded, a drop raises
        :class:`~convo.APIConnectionError` (the reply cannot be resumed).
        ``data: [DONE]`` ends the stream; its absence does too, at the end
        of the body. A chunk carrying usage gives a
        :class:`~convo.service.UsageUpdate`. Close the iterator (or drain
        it) to release the connection; it may be closed from any thread.
        """
        body = self._body(request, stream=True)
        return _http.scrubbed_events(self._api_key, self._stream(body))

    # --- internals

    def _body(self, request: Request, stream: bool) -> dict:
        return to_wire(request, self.model, stream=stream, max_tokens=self.max_tokens,
                       max_tokens_field=self.max_tokens_field)

    def _send_kwargs(self, *, stream: bool = False) -> dict:
        headers = {"content-type": "application/json",
                   "accept": "text/event-stream" if stream else "application/json",
                   "user-agent": "convo"}
        if self._api_key is not None:
            headers["authorization"] = self._api_key.header("Bearer ")
        if self.organization:
            headers["openai-organization"] = self.organization
        if self.project:
            headers["openai-project"] = self.project
        headers.update(self.extra_headers)
        return {"headers": headers, "timeout": self.timeout, "retry": self.retry,
                "error_from_body": error_from_body, "provider": PROVIDER}

    def _do(self, body: dict) -> Response:
        start = now()
        data, resp = _http.post_json(self._session, self._url, body, **self._send_kwargs())
        request_id = _http.request_id_of(resp.headers)
        response = from_wire(data, model=self.model, start_time=start, end_time=now(), request_id=request_id)
        _http.log_response(PROVIDER, response, request_id)
        return response

    def _stream(self, body: dict) -> Iterator[StreamEvent]:
        start = now()

        def read(resp: requests.Response) -> Iterator[StreamEvent]:
            assembler = StreamAssembler(self.model)
            yield from self._events(resp, assembler)
            events = assembler.finish(start_time=start, end_time=now())
            _http.log_response(PROVIDER, events[-1].response, _http.request_id_of(resp.headers))
            yield from events

        yield from _http.stream(self._session, self._url, body, read=read, **self._send_kwargs(stream=True))

    def _events(self, resp: requests.Response, assembler: StreamAssembler) -> Iterator[StreamEvent]:
        request_id = _http.request_id_of(resp.headers)
        for sse in iter_sse(_http.iter_body(resp, PROVIDER)):
            data = sse.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None
            if not isinstance(chunk, dict):
                raise ResponseFormatError(
                    f"{PROVIDER} stream sent data that is not a JSON object: {_http.snippet(data)!r}",
                    status_code=resp.status_code, request_id=request_id,
                )
            _raise_error_in_body(chunk, None, request_id)
            yield from assembler.feed(chunk)
