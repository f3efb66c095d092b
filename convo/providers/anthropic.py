"""Claude through the Anthropic Messages API.

:class:`AnthropicService` speaks ``POST /v1/messages`` over the shared HTTP
seam (:mod:`convo.providers._http`), either as one JSON reply (``do``) or as a
Server-Sent Events stream (``stream``). The rest of this module is small
pure functions, tested on recorded real traffic:

- :func:`to_wire` turns a neutral :class:`~convo.Request` into the JSON body;
- :func:`from_wire` turns a reply's JSON body into a :class:`~convo.Response`;
- :func:`usage_from_wire` reads the ``usage`` object;
- :func:`error_from_body` builds the typed error for an error body;
- :func:`stream_events` turns parsed SSE events into convo stream events.

The streaming path rebuilds the very JSON message the non-streaming path
would have received and hands it to :func:`from_wire`, so ``do()`` and
``stream()`` return identical responses for the same reply.

Where the API is odd, and what convo does about it:

- Empty text blocks are rejected by the API ("text content blocks must be
  non-empty"), so a ``Text("")`` stays in the history but is left out of the
  request body; a cache marker it carried moves to the block before it.
- A tool input cut short by ``max_tokens`` in a stream is not valid JSON.
  Its :class:`~convo.ToolUse` keeps its id and name with ``input == {}`` (a
  truncated argument list is never safe to run), a ``tool_input_incomplete``
  warning is logged, and the response's stop reason says ``max_tokens``.
- When server-side compaction runs, the top-level ``usage`` counts only the
  final sampling step; the ``usage.iterations`` list has every step, and
  its sum is what is billed, so that sum is what :class:`~convo.Usage` holds.
- Blocks convo does not model (server tool calls and results, compaction,
  future types) become :class:`~convo.RawBlock` holding the block's JSON as
  the API sent it (a streamed block as assembled from its deltas), and are
  sent back unchanged.
- The Messages API has no response format: a request with an
  ``output_schema`` gets one more tool, :data:`OUTPUT_TOOL`, whose input
  schema is the output schema, and a ``tool_choice`` that makes the model
  call it (see :func:`to_wire`). The reply's call of that tool becomes a
  :class:`~convo.Text` block holding its input as JSON (streamed as text
  deltas), so the output reads like any provider's and the history never
  holds a tool call without a result.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Mapping

import attrs
import requests

from . import _http
from .._log import log
from .._time import now
from ._retry import RetryPolicy
from ._sse import SSEEvent, iter_sse
from ..errors import (
    APIConnectionError,
    AttachmentTooLarge,
    ConfigurationError,
    MissingAPIKeyError,
    ProviderError,
    ResponseFormatError,
    UnsupportedContent,
    error_for_status,
)
from ..messages import (
    Document,
    Image,
    RawBlock,
    RedactedThinking,
    Request,
    Response,
    Text,
    Thinking,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
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

__all__ = [
    "API_VERSION",
    "AnthropicService",
    "DEFAULT_MODEL",
    "OUTPUT_TOOL",
    "error_from_body",
    "from_wire",
    "stream_events",
    "to_wire",
    "usage_from_wire",
]

PROVIDER = "anthropic"
ENV_VAR = "ANTHROPIC_API_KEY"
BASE_URL_ENV_VAR = "ANTHROPIC_BASE_URL"
API_VERSION = "2023-06-01"
DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_BASE_URL = "https://api.anthropic.com"

# Every current Claude model attends to 200k tokens. Some can opt into a 1M
# window with the beta below (Anthropic's context-window docs: Sonnet 4 and
# later Sonnets, Opus 4.6); without the beta they stay at 200k.
CONTEXT_WINDOW = 200_000
CONTEXT_1M_BETA = "context-1m-2025-08-07"
_CONTEXT_1M_MODELS = ("claude-sonnet-4", "claude-opus-4-6")

_CACHE_CONTROL = {"type": "ephemeral"}

#: The tool a request with an ``output_schema`` asks the model to call with its output.
OUTPUT_TOOL = "final_output"
_OUTPUT_TOOL_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer."


# --- request: neutral -> wire -------------------------------------------------

def to_wire(
    request: Request,
    *,
    model: str,
    max_tokens: int,
    stream: bool = False,
    thinking: ThinkingConfig | None = None,
) -> dict:
    """The Messages API body for ``request``.

    ``max_tokens`` and ``thinking`` are the service's defaults, used where
    the request leaves them unset. ``request.extra`` is merged in last, so
    it can add any field the API knows (``metadata``, ``top_k``,
    ``context_management``...) or override one convo sets.

    Raises:
        ConfigurationError: a block or setting the Messages API cannot take.
    """
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else max_tokens,
        "messages": [],
    }
    for message in request.messages:
        content = _blocks_to_wire(message.content, where=f"a {message.role} message")
        # The API rejects empty content: a message whose blocks were all
        # empty text stays in the history but is left out of the request.
        if content:
            body["messages"].append({"role": str(message.role), "content": content})
    system = _blocks_to_wire(request.system, where="the system prompt", allowed=(Text, RawBlock))
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [_tool_to_wire(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice_to_wire(request.tool_choice)
    config = request.thinking if request.thinking is not None else thinking
    if config is not None:
        body["thinking"] = _thinking_to_wire(config)
    if request.output_schema is not None:
        _add_output_tool(body, request, thinking=config is not None)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name) is not None:
            # The Messages API has no penalties: left out, as documented for Request.
            log.debug("parameter_not_sent", provider=PROVIDER, parameter=name)
    if request.stop_sequences:
        body["stop_sequences"] = list(request.stop_sequences)
    if stream:
        body["stream"] = True
    body.update(request.extra)
    return body


def _count_tokens_body(request: Request, *, model: str, thinking: ThinkingConfig | None) -> dict:
    # count_tokens takes the prompt-shaping fields only: no max_tokens,
    # sampling settings or stream flag.
    full = to_wire(request, model=model, max_tokens=1, thinking=thinking)
    keep = ("model", "messages", "system", "tools", "tool_choice", "thinking")
    body = {k: full[k] for k in keep if k in full}
    for key in ("context_management", "mcp_servers"):
        if key in request.extra:
            body[key] = request.extra[key]
    return body


def _with_cache(d: dict, cache: bool) -> dict:
    if cache:
        d["cache_control"] = dict(_CACHE_CONTROL)
    return d


def _blocks_to_wire(blocks: Iterable, *, where: str, allowed: tuple | None = None) -> list[dict]:
    out: list[dict] = []
    for block in blocks:
        if allowed is not None and not isinstance(block, allowed):
            raise ConfigurationError(f"{where} cannot hold a {type(block).__name__} block for Anthropic")
        if isinstance(block, Text) and block.text == "":
            # Empty text is rejected by the API; keep the cache breakpoint it
            # carried by moving it to the block before it.
            if block.cache and out and "cache_control" not in out[-1] and out[-1].get("type") not in (
                "thinking", "redacted_thinking"
            ):
                out[-1]["cache_control"] = dict(_CACHE_CONTROL)
            continue
        out.append(_block_to_wire(block, where))
    return out


def _block_to_wire(block: Any, where: str) -> dict:
    if isinstance(block, Text):
        d: dict[str, Any] = {"type": "text", "text": block.text}
        if block.citations:
            d["citations"] = list(block.citations)
        return _with_cache(d, block.cache)
    if isinstance(block, Image):
        return _with_cache({"type": "image", "source": _image_source(block)}, block.cache)
    if isinstance(block, Document):
        d = {"type": "document", "source": _document_source(block)}
        if block.title is not None:
            d["title"] = block.title
        return _with_cache(d, block.cache)
    if isinstance(block, Thinking):
        # Sent back exactly as received: the signature covers the text.
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, RedactedThinking):
        return {"type": "redacted_thinking", "data": block.data}
    if isinstance(block, ToolUse):
        d = {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
        return _with_cache(d, block.cache)
    if isinstance(block, ToolResult):
        return _tool_result_to_wire(block)
    if isinstance(block, RawBlock):
        return _with_cache(dict(block.data), block.cache)
    raise ConfigurationError(f"{where} holds a {type(block).__name__}, which Anthropic cannot take")


# What the Messages API takes inline (Anthropic's vision and PDF support docs): four image
# types of at most 5 MB each, PDFs within the 32 MB request limit, and plain text.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024


def _decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")


def _image_source(image: Image) -> dict:
    if image.url is not None:
        return {"type": "url", "url": image.url}
    if not image.media_type:
        raise ConfigurationError("an Image given as data= needs media_type= (e.g. 'image/png') for Anthropic")
    if image.media_type not in IMAGE_TYPES:
        raise UnsupportedContent(PROVIDER, f"images of type {image.media_type}",
                                 f"it takes {', '.join(IMAGE_TYPES)}")
    size = _decoded_size(image.data or "")
    if size > MAX_IMAGE_BYTES:
        raise AttachmentTooLarge(f"an {image.media_type} image for Anthropic", size, MAX_IMAGE_BYTES)
    return {"type": "base64", "media_type": image.media_type, "data": image.data}


def _document_source(doc: Document) -> dict:
    if doc.url is not None:
        return {"type": "url", "url": doc.url}
    if doc.text is not None:
        return {"type": "text", "media_type": doc.media_type or "text/plain", "data": doc.text}
    media_type = doc.media_type or "application/pdf"
    if media_type != "application/pdf":
        raise UnsupportedContent(PROVIDER, f"documents of type {media_type}",
                                 "it takes PDFs, and text given as Document(text=...)")
    size = _decoded_size(doc.data or "")
    if size > MAX_DOCUMENT_BYTES:
        raise AttachmentTooLarge("a PDF for Anthropic", size, MAX_DOCUMENT_BYTES)
    return {"type": "base64", "media_type": media_type, "data": doc.data}


def _tool_result_to_wire(result: ToolResult) -> dict:
    d: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.tool_use_id}
    content = _blocks_to_wire(result.content, where="a tool result", allowed=(Text, Image, Document, RawBlock))
    if len(content) == 1 and set(content[0]) == {"type", "text"}:
        d["content"] = content[0]["text"]  # the short form every client sends for plain text
    elif content:
        d["content"] = content
    if result.is_error:
        d["is_error"] = True
    return _with_cache(d, result.cache)


def _tool_to_wire(tool: ToolSpec) -> dict:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


def _tool_choice_to_wire(choice: ToolChoice) -> dict:
    d: dict[str, Any] = {"type": str(choice.type)}
    if choice.name is not None:
        d["name"] = choice.name
    if choice.disable_parallel_tool_use:
        d["disable_parallel_tool_use"] = True
    return d


def _add_output_tool(body: dict, request: Request, *, thinking: bool) -> None:
    """Ask for ``request.output_schema`` as a call of :data:`OUTPUT_TOOL`.

    Alone, the tool is forced. Beside other tools the choice is ``any``, so
    the model may call those first and the output tool last. A named tool
    choice is kept (the caller wants that tool first); ``none`` forces the
    output tool. Under extended thinking, which refuses forced tool use,
    the choice is ``auto`` and the tool's description does the asking.
    """
    tools = body.setdefault("tools", [])
    if any(t.get("name") == OUTPUT_TOOL for t in tools):
        raise ConfigurationError(f"a tool is named {OUTPUT_TOOL!r}, the name Anthropic structured output uses; "
                                 "rename the tool")
    schema = dict(request.output_schema)
    description = schema.pop("description", None) or _OUTPUT_TOOL_DESCRIPTION
    tools.append({"name": OUTPUT_TOOL, "description": description, "input_schema": schema})
    choice = request.tool_choice
    if thinking:
        wire: dict[str, Any] = {"type": "auto"}
    elif choice is not None and choice.type == "tool":
        return
    elif len(tools) > 1 and (choice is None or choice.type != "none"):
        wire = {"type": "any"}
    else:
        wire = {"type": "tool", "name": OUTPUT_TOOL}
    if choice is not None and choice.disable_parallel_tool_use:
        wire["disable_parallel_tool_use"] = True
    body["tool_choice"] = wire


def _thinking_to_wire(config: ThinkingConfig) -> dict:
    if config.adaptive:
        d: dict[str, Any] = {"type": "adaptive"}
    elif config.budget_tokens is not None:
        d = {"type": "enabled", "budget_tokens": config.budget_tokens}
    else:
        raise ConfigurationError("ThinkingConfig needs budget_tokens=N or adaptive=True for Anthropic")
    if config.display is not None:
        d["display"] = config.display
    return d


# --- response: wire -> neutral -------------------------------------------------

def from_wire(body: Any, *, output_tool: str | None = None) -> Response:
    """The :class:`~convo.Response` for a Messages API reply body (a ``message`` object).

    ``start_time``/``end_time`` are left unset and ``usage.cost_usd`` None:
    the service and the Convo fill them in. ``output_tool`` names the tool
    that carries structured output (:data:`OUTPUT_TOOL` when the request
    had an ``output_schema``): its call becomes a text block of its input's JSON.

    Raises:
        ResponseFormatError: the body is not a message.
    """
    if not isinstance(body, dict) or not isinstance(body.get("content"), list) or "id" not in body:
        raise ResponseFormatError(f"Anthropic sent something that is not a message: {_http.snippet(body)}")
    try:
        return Response(
            id=str(body["id"]),
            model=str(body.get("model") or ""),
            content=tuple(block_from_wire(b, output_tool) for b in body["content"]),
            stop_reason=_stop_reason(body, output_tool),
            stop_sequence=body.get("stop_sequence"),
            usage=usage_from_wire(body.get("usage") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResponseFormatError(
            f"Anthropic sent a message convo cannot read ({exc!r}): {_http.snippet(body)}") from None


def _is_output(block: dict, output_tool: str | None) -> bool:
    return output_tool is not None and block.get("type") == "tool_use" and block.get("name") == output_tool


def _stop_reason(body: dict, output_tool: str | None) -> Any:
    stop = body.get("stop_reason")
    if stop == "tool_use" and output_tool is not None:
        # A reply whose only call gave the output has ended its turn: there is no tool to run.
        calls = [b for b in body["content"] if isinstance(b, dict) and b.get("type") == "tool_use"]
        if calls and all(_is_output(b, output_tool) for b in calls):
            return "end_turn"
    return stop


def block_from_wire(block: dict, output_tool: str | None = None) -> Any:
    """The neutral block for one content block of a reply; unknown types become RawBlock.

    A call of ``output_tool`` becomes a :class:`~convo.Text` of its input as JSON.
    """
    kind = block.get("type")
    if _is_output(block, output_tool):
        tool_input = block.get("input")
        return Text(json.dumps(tool_input if isinstance(tool_input, dict) else {}, ensure_ascii=False))
    if kind == "text":
        return Text(block["text"], citations=block.get("citations") or ())
    if kind == "thinking":
        return Thinking(block.get("thinking") or "", block.get("signature") or "")
    if kind == "redacted_thinking":
        return RedactedThinking(block["data"])
    if kind == "tool_use":
        tool_input = block.get("input")
        return ToolUse(block["id"], block["name"], tool_input if isinstance(tool_input, dict) else {})
    return RawBlock(block)


def usage_from_wire(usage: Mapping[str, Any]) -> Usage:
    """Token counts from a ``usage`` object (nulls count as 0).

    With ``iterations`` (server-side compaction), the billed usage is the sum
    of every iteration, not the top-level counts of the last one.
    """
    iterations = usage.get("iterations")
    if isinstance(iterations, list) and iterations:
        parts = [i for i in iterations if isinstance(i, dict)]
    else:
        parts = [usage]
    details = usage.get("output_tokens_details") or {}
    return Usage(
        input_tokens=sum(_count(p, "input_tokens") for p in parts),
        output_tokens=sum(_count(p, "output_tokens") for p in parts),
        cache_creation_input_tokens=sum(_count(p, "cache_creation_input_tokens") for p in parts),
        cache_read_input_tokens=sum(_count(p, "cache_read_input_tokens") for p in parts),
        reasoning_tokens=_count(details, "thinking_tokens") if isinstance(details, dict) else 0,
    )


def _count(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    return value if isinstance(value, int) and value > 0 else 0


# --- errors ------------------------------------------------------------------------

def error_from_body(status: int | None, body: Any, *, request_id: str | None = None) -> ProviderError:
    """The typed error for an Anthropic error body ``{"type": "error", "error": {...}}``.

    ``status`` None is an ``error`` event inside a 200 stream. A body that is
    not the usual shape still gives a typed error from the status alone.
    """
    error_type = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or error_type or "unknown error")
        if request_id is None and isinstance(body.get("request_id"), str):
            request_id = body["request_id"]
    elif body in (None, ""):
        message = "the response had no body"
    else:
        message = f"unexpected error body: {_http.snippet(body)}"
    return error_for_status(status, message, error_type=error_type, request_id=request_id)


# --- streaming: SSE -> events ------------------------------------------------------

class _Assembler:
    """Rebuilds a Messages API ``message`` object from its SSE events, emitting convo events.

    One assembler per stream; not thread-safe (a stream is read by one thread).
    """

    def __init__(self, request_id: str | None = None, output_tool: str | None = None) -> None:
        self.request_id = request_id
        self.output_tool = output_tool
        self.message: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.partial_json: dict[int, str] = {}
        self.open: set[int] = set()
        self.stopped = False

    def feed(self, sse: SSEEvent) -> list[StreamEvent]:
        if self.stopped:
            return []
        data = self._parse(sse)
        kind = data.get("type", sse.event) if isinstance(data, dict) else sse.event
        if kind == "ping":
            return []
        if kind == "error":
            body = data if isinstance(data, dict) else None
            raise error_from_body(None, body, request_id=self.request_id)
        if not isinstance(data, dict):
            raise ResponseFormatError(f"Anthropic sent a {kind} event whose data is not an object: "
                                      f"{_http.snippet(data)}",
                                      request_id=self.request_id)
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise self._format_error("message_start without a message", data)
            self.message = dict(message)
            self.message["usage"] = dict(message.get("usage") or {})
            return [UsageUpdate(usage_from_wire(self.message["usage"]))]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_stop":
            index = self._index(data)
            if index not in self.open:
                return []
            return [self._close(index)]
        if kind == "message_delta":
            message = self._require_message(data)
            delta = data.get("delta")
            if isinstance(delta, dict):
                message.update(delta)
            usage = data.get("usage")
            if isinstance(usage, dict):
                # message_delta carries the counts so far; keep message_start's where it is silent.
                message["usage"].update({k: v for k, v in usage.items() if v is not None})
                return [UsageUpdate(usage_from_wire(message["usage"]))]
            return []
        if kind == "message_stop":
            self._require_message(data)
            self.stopped = True
            return [self._close(i) for i in sorted(self.open)]
        log.debug("anthropic_unknown_event", sse_event=kind)
        return []

    def finish(self) -> Response:
        """The assembled response; the stream must have reached message_stop."""
        if self.message is None or not self.stopped:
            raise ResponseFormatError("the Anthropic stream ended before message_stop", request_id=self.request_id)
        message = dict(self.message)
        message["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        return from_wire(message, output_tool=self.output_tool)

    # --- helpers

    def _parse(self, sse: SSEEvent) -> Any:
        try:
            return json.loads(sse.data) if sse.data.strip() else {}
        except ValueError as exc:
            raise ResponseFormatError(
                f"Anthropic sent a {sse.event} event whose data is not JSON ({exc}): {_http.snippet(sse.data)}",
                request_id=self.request_id,
            ) from None

    def _format_error(self, what: str, data: Any) -> ResponseFormatError:
        return ResponseFormatError(f"Anthropic stream: {what}: {_http.snippet(data)}", request_id=self.request_id)

    def _require_message(self, data: dict) -> dict:
        if self.message is None:
            raise self._format_error(f"{data.get('type')} before message_start", data)
        return self.message

    def _index(self, data: dict) -> int:
        index = data.get("index")
        if not isinstance(index, int):
            raise self._format_error("a content block event without an index", data)
        return index

    def _block_start(self, data: dict) -> list[StreamEvent]:
        self._require_message(data)
        index = self._index(data)
        block = data.get("content_block")
        if not isinstance(block, dict):
            raise self._format_error("content_block_start without a content_block", data)
        self.blocks[index] = dict(block)
        self.open.add(index)
        return []

    def _block_delta(self, data: dict) -> list[StreamEvent]:
        index = self._index(data)
        block = self.blocks.get(index)
        delta = data.get("delta")
        if block is None:
            raise self._format_error(f"a delta for content block {index}, which never started", data)
        if not isinstance(delta, dict):
            raise self._format_error("content_block_delta without a delta", data)
        kind = delta.get("type")
        if kind == "text_delta":
            text = str(delta.get("text") or "")
            block["text"] = (block.get("text") or "") + text
            return [TextDelta(index, text)] if text and block.get("type") == "text" else []
        if kind == "thinking_delta":
            text = str(delta.get("thinking") or "")
            block["thinking"] = (block.get("thinking") or "") + text
            return [ThinkingDelta(index, text)] if text and block.get("type") == "thinking" else []
        if kind == "signature_delta":
            block["signature"] = (block.get("signature") or "") + str(delta.get("signature") or "")
            return []
        if kind == "input_json_delta":
            piece = str(delta.get("partial_json") or "")
            self.partial_json[index] = self.partial_json.get(index, "") + piece
            if piece and _is_output(block, self.output_tool):
                return [TextDelta(index, piece)]  # the output, as the text it becomes
            if piece and block.get("type") == "tool_use":
                return [ToolInputDelta(index, str(block.get("id", "")), str(block.get("name", "")), piece)]
            return []
        if kind == "citations_delta":
            citations = block.get("citations")
            if not isinstance(citations, list):
                citations = block["citations"] = []
            citations.append(delta.get("citation"))
            return []
        # A delta type convo does not know. Every delta so far appends its
        # string fields to the same-named fields of its block (compaction_delta
        # fills "content"), so do that and keep going; anything else is ignored.
        for key, value in delta.items():
            if key != "type" and isinstance(value, str) and isinstance(block.get(key, ""), (str, type(None))):
                block[key] = (block.get(key) or "") + value
        log.debug("anthropic_unknown_delta", delta_type=kind, index=index)
        return []

    def _close(self, index: int) -> BlockDone:
        self.open.discard(index)
        block = self.blocks[index]
        if index in self.partial_json:
            block["input"] = self._parse_input(block, self.partial_json.pop(index))
        return BlockDone(index, block_from_wire(block, self.output_tool))

    def _parse_input(self, block: dict, raw: str) -> dict:
        if not raw.strip():
            return {}  # a tool called with no arguments streams only ""
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        # Only seen when max_tokens cuts a tool input short: the arguments
        # are incomplete and must not be run, so the call keeps no input.
        log.warning("tool_input_incomplete", provider=PROVIDER, tool_name=block.get("name"),
                    tool_use_id=block.get("id"), partial_chars=len(raw), request_id=self.request_id)
        return {}


def stream_events(events: Iterable[SSEEvent], request_id: str | None = None, *,
                  output_tool: str | None = None) -> Iterator[StreamEvent]:
    """Convo stream events for a Messages API event stream, :class:`StreamDone` last.

    ``output_tool`` is as for :func:`from_wire`; that tool's input streams as text deltas.

    ``ping`` and unknown events are skipped; an ``error`` event raises its
    typed :class:`~convo.ProviderError`. :class:`~convo.service.UsageUpdate`
    reports the usage so far when ``message_start`` arrives and whenever a
    ``message_delta`` carries usage, summed as the final response's usage is.

    Raises:
        ProviderError: the stream carried an ``error`` event.
        ResponseFormatError: malformed data, or the stream ended before ``message_stop``.
    """
    assembler = _Assembler(request_id, output_tool)
    for sse in events:
        yield from assembler.feed(sse)
    yield StreamDone(assembler.finish())


# --- the service ------------------------------------------------------------------------


def _output_tool(request: Request) -> str | None:
    return OUTPUT_TOOL if request.output_schema is not None else None


class AnthropicService(_http.SessionOwner):
    """Claude through the Anthropic Messages API.

    Args:
        model: the model name or alias, e.g. ``"claude-sonnet-4-5"``.
        api_key: the API key; by default the ``ANTHROPIC_API_KEY`` environment variable.
        max_tokens: output tokens per reply, unless a request sets its own.
        base_url: the API's address, for proxies and gateways; by default
            ``ANTHROPIC_BASE_URL`` (as the official SDK reads it), else Anthropic's.
        session: a ``requests.Session`` to use (and to leave open on
            :meth:`close`); by default one built by ``convo.providers._http``
            whose in-flight requests ``Convo.cancel()`` can abort.
        timeout: seconds to connect and to wait for each read, as requests takes it.
        retry: how transient failures (429, 5xx, 529, dropped connections) are retried.
        betas: beta feature names, sent in the ``anthropic-beta`` header.
        thinking: extended thinking for every request that does not set its own.
        context_window: overrides :meth:`token_context_window`.

    Raises:
        MissingAPIKeyError: no ``api_key`` and ``ANTHROPIC_API_KEY`` is unset.

    Thread-safe: one service (and its one connection pool) may be shared by
    any number of threads, convos and sub-convos; treat its settings as fixed
    once it is in use, and call :meth:`close` (or leave its ``with`` block)
    only when no call is running. The API key never appears in its repr, in
    errors (nor their tracebacks' locals and chains) or in logs.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        max_tokens: int = 8192,
        base_url: str | None = None,
        session: requests.Session | None = None,
        timeout: float | tuple = (10.0, 600.0),
        retry: RetryPolicy = RetryPolicy(),
        betas: Iterable[str] = (),
        thinking: ThinkingConfig | None = None,
        context_window: int | None = None,
    ) -> None:
        self._api_key = _http.Secret.given_or_from_env(api_key, ENV_VAR)
        del api_key  # only the Secret holds the key now, not this frame's locals
        if self._api_key is None:
            raise MissingAPIKeyError(ENV_VAR, "Anthropic")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigurationError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.model = model
        self.max_tokens = max_tokens
        self.base_url = (base_url or _http.environ(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.betas = tuple(betas)
        self.thinking = thinking
        self._context_window = context_window
        self._use_session(session)

    def __repr__(self) -> str:
        extra = f", betas={self.betas!r}" if self.betas else ""
        return (f"AnthropicService(model={self.model!r}, max_tokens={self.max_tokens!r}, "
                f"base_url={self.base_url!r}{extra})")

    # --- the Service protocol

    def do(self, request: Request) -> Response:
        """Send ``request`` and return the whole reply.

        Raises:
            ProviderError: a typed error from the API, after retries.
            Cancelled: the current cancel token fired.
        """
        return _http.scrubbed(self._api_key, self._do, self.to_wire(request), _output_tool(request))

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Send ``request`` and yield events as they arrive; the last is :class:`StreamDone`.

        The request is sent when iteration starts, under the cancel token
        current then. A stream is retried (as ``retry`` allows) only until
        its first event arrives; a failure after that is raised. Close the
        iterator (or drain it) to release the connection; it may be closed
        from any thread. :class:`~convo.service.UsageUpdate` events report
        the usage so far, at the start of the message and as it ends.

        Raises:
            ProviderError: a typed error from the API or inside the stream.
            APIConnectionError: the connection dropped after the first event.
            Cancelled: the current cancel token fired.
        """
        body = self.to_wire(request, stream=True)
        return _http.scrubbed_events(self._api_key, self._stream(body, _output_tool(request)))

    def token_context_window(self) -> int:
        """How many tokens the model attends to: 200k, or 1M for models that opted into the 1M beta."""
        if self._context_window is not None:
            return self._context_window
        if CONTEXT_1M_BETA in self.betas and self.model.startswith(_CONTEXT_1M_MODELS):
            return 1_000_000
        return CONTEXT_WINDOW

    # --- more

    def count_tokens(self, request: Request) -> int:
        """How many input tokens ``request`` would use, from the count-tokens endpoint.

        Raises:
            ProviderError: a typed error from the API, after retries.
        """
        body = _count_tokens_body(request, model=self.model, thinking=self.thinking)
        return _http.scrubbed(self._api_key, self._count_tokens, body)

    def to_wire(self, request: Request, *, stream: bool = False) -> dict:
        """The JSON body this service would send for ``request``."""
        return to_wire(request, model=self.model, max_tokens=self.max_tokens, stream=stream,
                       thinking=self.thinking)

    # --- internals

    def _send_kwargs(self, *, stream: bool = False) -> dict:
        headers = {
            "x-api-key": self._api_key.header(),
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        if self.betas:
            headers["anthropic-beta"] = ",".join(self.betas)
        return {"headers": headers, "timeout": self.timeout, "retry": self.retry,
                "error_from_body": error_from_body, "provider": PROVIDER}

    def _do(self, body: dict, output_tool: str | None = None) -> Response:
        start = now()
        data, resp = _http.post_json(self._session, self.base_url + "/v1/messages", body, **self._send_kwargs())
        request_id = _http.request_id_of(resp.headers)
        try:
            response = from_wire(data, output_tool=output_tool)
        except ResponseFormatError as exc:
            exc.request_id = exc.request_id or request_id
            raise
        response = attrs.evolve(response, start_time=start, end_time=now())
        _http.log_response(PROVIDER, response, request_id)
        return response

    def _count_tokens(self, body: dict) -> int:
        data, resp = _http.post_json(self._session, self.base_url + "/v1/messages/count_tokens", body,
                                     **self._send_kwargs())
        count = data.get("input_tokens") if isinstance(data, dict) else None
        if not isinstance(count, int):
            raise ResponseFormatError(f"count_tokens answered without input_tokens: {_http.snippet(data)}",
                                      status_code=resp.status_code, request_id=_http.request_id_of(resp.headers))
        return count

    def _stream(self, body: dict, output_tool: str | None = None) -> Iterator[StreamEvent]:
        start = now()

        def read(resp: requests.Response) -> Iterator[StreamEvent]:
            request_id = _http.request_id_of(resp.headers)
            assembler = _Assembler(request_id, output_tool)
            try:
                for sse in iter_sse(_http.iter_body(resp, PROVIDER)):
                    yield from assembler.feed(sse)
            except APIConnectionError:
                if not assembler.stopped:
                    raise
                # the message is complete; only the stream's tail was lost
            response = attrs.evolve(assembler.finish(), start_time=start, end_time=now())
            _http.log_response(PROVIDER, response, request_id)
            yield StreamDone(response)

        yield from _http.stream(self._session, self.base_url + "/v1/messages", body, read=read,
                                **self._send_kwargs(stream=True))
