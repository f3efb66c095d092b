"""OpenTelemetry traces and metrics of conversations: :class:`OTelListener` (extra ``otel``).

Spans follow OpenTelemetry's semantic conventions for generative AI
(``gen_ai.*``, status Development), nested as the sub-convo tree nests::

    invoke_agent                      INTERNAL  one turn of a convo: a send, a stream, a whole run()
    ├── chat claude-haiku-4-5         CLIENT    one request and its reply
    ├── execute_tool ask_expert       INTERNAL  one tool call
    │   └── invoke_agent              INTERNAL  a sub-convo the tool created...
    │       └── chat claude-haiku-4-5           ...and its requests
    └── chat claude-haiku-4-5

The agent span starts with a convo's first request of a turn and ends when
the model ends its turn (a reply that calls no tool), when a request fails,
or when a tool call is held for approval; a root convo's agent span is a
child of the span current where the turn began, and a sub-convo's is a
child of the ``execute_tool`` span of the tool call that created it (or of
its parent's agent span). Attributes:

- every span: ``gen_ai.operation.name`` (``invoke_agent``, ``chat``,
  ``execute_tool``), ``gen_ai.provider.name`` (``anthropic``, ``openai``,
  ``llama_cpp``, else ``_OTHER``) and ``gen_ai.conversation.id`` (the
  convo's id);
- ``invoke_agent``: ``gen_ai.agent.id`` (the convo's id), ``convo.depth``,
  ``convo.parent.id``, ``convo.root.id``,
  ``gen_ai.request.model``, and the turn's ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens`` and ``convo.cost_usd``;
- ``chat``: ``gen_ai.request.model``, ``gen_ai.request.max_tokens``,
  ``gen_ai.request.temperature``, ``gen_ai.response.id``,
  ``gen_ai.response.model``, ``gen_ai.response.finish_reasons`` (the
  provider's stop reason), ``gen_ai.usage.input_tokens`` (every input
  token, cached ones included, as the conventions ask),
  ``gen_ai.usage.output_tokens``, ``gen_ai.usage.cache_read.input_tokens``,
  ``gen_ai.usage.cache_creation.input_tokens``,
  ``gen_ai.usage.reasoning.output_tokens``, ``convo.cost_usd``,
  ``server.address`` and ``server.port``;
- ``execute_tool``: ``gen_ai.tool.name``, ``gen_ai.tool.call.id``,
  ``gen_ai.tool.type`` (``function``).

A failed request, a failed turn and a tool result marked as an error set
the span's status to ERROR and ``error.type`` (the exception's class name;
``tool_error`` for an error result without an exception).

Metrics: the histograms ``gen_ai.client.token.usage`` (``{token}``, with
``gen_ai.token.type`` ``input`` or ``output``) and
``gen_ai.client.operation.duration`` (``s``), with the conventions' bucket
boundaries.

Message contents (``gen_ai.input.messages``, ``gen_ai.output.messages``,
``gen_ai.system_instructions``, ``gen_ai.tool.call.arguments``,
``gen_ai.tool.call.result``, as JSON text) are recorded only when asked:
``capture_content=True``, or the environment variable
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; the
``redact`` hook of :mod:`convo.audit.events` masks them first. API keys
never reach a span.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(f"convo.otel needs OpenTelemetry ({exc}); install it with: pip install 'convo[otel]'") from None

from ._log import log
from .audit.events import Redact, _apply, _text

__all__ = ["OTelListener", "TOKEN_BUCKETS", "DURATION_BUCKETS"]

#: Bucket boundaries the conventions give for ``gen_ai.client.token.usage``.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
#: ... and for ``gen_ai.client.operation.duration`` (seconds).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_PROVIDERS = {"AnthropicService": "anthropic", "OpenAIService": "openai", "LocalService": "llama_cpp"}

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_call",
           "refusal": "content_filter", "pause_turn": "stop"}


def _provider(service: Any) -> str:
    return _PROVIDERS.get(type(service).__name__, "_OTHER")


def _server(service: Any) -> dict:
    base = getattr(service, "base_url", None)
    if not isinstance(base, str):
        return {}
    parts = urlsplit(base)
    if not parts.hostname:
        return {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname, "server.port": port}  # never the userinfo part of a URL


class _At:
    """Where and when an event happened, read once: what the spans of the event are made from."""

    __slots__ = ("id", "parent_id", "root_id", "depth", "model", "service", "call", "context", "t", "perf")

    def __init__(self, convo: Any) -> None:
        from opentelemetry import context as _context

        from .tools import tool_call_info

        parent = convo.parent
        self.id = convo.id
        self.parent_id = None if parent is None else parent.id
        self.root_id = convo.root().id
        self.depth = convo.depth()
        self.model = convo.model
        self.service = convo.service
        info = tool_call_info()
        self.call = None if info is None else (info.convo.id, info.tool_use_id)
        self.context = _context.get_current()  # the caller's span, for a root convo's turn
        self.t = time.time_ns()
        self.perf = time.perf_counter()


class _Turn:
    """An open ``invoke_agent`` span and what its turn has used so far."""

    __slots__ = ("span", "context", "input_tokens", "output_tokens", "cost")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.context = _trace.set_span_in_context(span)
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0


class OTelListener:
    """A listener that turns conversations into OpenTelemetry spans and metrics (see :mod:`convo.otel`).

    Args:
        tracer_provider: where spans go (default: the global one).
        meter_provider: where metrics go (default: the global one).
        capture_content: record message and tool contents on spans (default:
            the ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
            environment variable; off unless it is ``true``).
        redact: ``redact(what, name, value) -> value``, applied to contents
            before they are recorded (see :mod:`convo.audit.events`).
        strict: let a failure inside this listener fail the send (by
            default it is logged and ignored).

    Thread-safe: spans and metrics are made on the thread of each event;
    one lock guards the table of open spans, held only to look a span up
    or put it away (never while calling the SDK). Call :meth:`close` at
    shutdown to end the spans of turns that never finished (a convo dropped
    mid-turn), so they are exported.
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None, *,
                 capture_content: bool | None = None, redact: Redact | None = None, strict: bool = False) -> None:
        from . import __version__

        self._tracer = _trace.get_tracer("convo", __version__, tracer_provider=tracer_provider)
        meter = _metrics.get_meter("convo", __version__, meter_provider=meter_provider)
        self._tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                              description="Number of input and output tokens used.",
                                              explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
        self._duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                                description="GenAI operation duration.",
                                                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        if capture_content is None:
            capture_content = os.environ.get(CONTENT_ENV, "").strip().lower() in ("true", "1", "yes")
        self.capture_content = bool(capture_content)
        self.redact = redact
        self.strict = bool(strict)
        self._lock = threading.Lock()
        self._turns: dict[str, _Turn] = {}
        self._chats: dict[str, tuple[Any, float, dict]] = {}
        self._tools: dict[tuple[str, str], Any] = {}
        self._held: dict[str, Any] = {}  # the context of a turn ended by a held tool call, for its round's other calls
        self._closed = False

    def __repr__(self) -> str:
        return f"OTelListener(capture_content={self.capture_content})"

    # --- plumbing ------------------------------------------------------------------

    def _guard(self, event: str, convo: Any, work: Any, *args: Any) -> None:
        # Made on the event's own thread: handing the work to a background thread was measured to cost
        # more than it saved on a busy two-core machine (the SDK's span and metric calls dominate).
        if self._closed:
            return
        try:
            work(_At(convo), *args)
        except Exception as exc:
            if self.strict:
                raise
            log.warning("otel_listener_failed", listener_event=event, convo_id=getattr(convo, "id", None),
                        error=f"{type(exc).__name__}: {exc}")

    def flush(self, timeout: float | None = None) -> bool:
        """True: spans and metrics are made before each listener call returns (the SDK exports them)."""
        return True

    @staticmethod
    def _common(at: _At, operation: str) -> dict:
        attributes = {"gen_ai.operation.name": operation, "gen_ai.provider.name": _provider(at.service),
                      "gen_ai.conversation.id": at.id}
        if operation == "invoke_agent":  # where in the tree: once per turn (its chat and tool spans sit under it)
            attributes.update({"convo.depth": at.depth, "convo.parent.id": at.parent_id or "",
                               "convo.root.id": at.root_id})
        return attributes

    def _parent_context(self, at: _At) -> Any:
        with self._lock:
            if at.call is not None:
                span = self._tools.get(at.call)
                if span is not None:
                    return _trace.set_span_in_context(span)
            if at.parent_id is not None:
                turn = self._turns.get(at.parent_id)
                if turn is not None:
                    return turn.context
        return at.context  # the span current where the turn began, if any

    def _turn(self, at: _At) -> _Turn:
        with self._lock:
            turn = self._turns.get(at.id)
        if turn is not None:
            return turn
        attributes = self._common(at, "invoke_agent")
        attributes["gen_ai.agent.id"] = at.id
        if at.model:
            attributes["gen_ai.request.model"] = at.model
        span = self._tracer.start_span("invoke_agent", context=self._parent_context(at), kind=SpanKind.INTERNAL,
                                       attributes=attributes, start_time=at.t)
        turn = _Turn(span)
        with self._lock:
            self._turns[at.id] = turn
        return turn

    def _end_turn(self, at: _At, error: BaseException | None = None, **attributes: Any) -> None:
        with self._lock:
            turn = self._turns.pop(at.id, None)
        if turn is None:
            return
        span = turn.span
        span.set_attributes({"gen_ai.usage.input_tokens": turn.input_tokens,
                             "gen_ai.usage.output_tokens": turn.output_tokens, "convo.cost_usd": turn.cost,
                             **attributes})
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end(end_time=at.t)

    def close(self) -> None:
        """End every span still open (turns that never finished), so they are exported; ignore later events.

        Idempotent.
        """
        self._closed = True
        with self._lock:
            turns, self._turns = list(self._turns.values()), {}
            chats, self._chats = list(self._chats.values()), {}
            tools, self._tools = list(self._tools.values()), {}
            self._held = {}
        for span in [c[0] for c in chats] + tools + [t.span for t in turns]:
            span.set_attribute("convo.abandoned", True)
            span.end()

    # --- content (opt-in) ---------------------------------------------------------

    def _parts(self, role: str, content: Any, names: dict) -> tuple[list, list]:
        """The conventions' message parts of some content blocks, and tool responses split out."""
        parts, responses = [], []
        for block in content:
            kind = getattr(block, "type", None)
            if kind == "text":
                parts.append({"type": "text", "content": _text(self.redact, role, block.text)})
            elif kind == "thinking":
                parts.append({"type": "reasoning", "content": _text(self.redact, "thinking", block.thinking)})
            elif kind == "tool_use":
                parts.append({"type": "tool_call", "id": block.id, "name": block.name,
                              "arguments": _apply(self.redact, "tool_input", block.name, block.input)})
            elif kind == "tool_result":
                name = names.get(block.tool_use_id, "")
                responses.append({"type": "tool_call_response", "id": block.tool_use_id,
                                  "response": _apply(self.redact, "tool_output", name, block.text())})
            else:
                parts.append({"type": str(kind)})
        return parts, responses

    def _input_messages(self, request: Any) -> str:
        out, names = [], {}
        for message in request.messages:
            role = str(message.role)
            parts, responses = self._parts(role, message.content, names)
            if responses:
                out.append({"role": "tool", "parts": responses})
            if parts:
                out.append({"role": role, "parts": parts})
            if role == "assistant":
                names = {b.id: b.name for b in message.content if getattr(b, "type", None) == "tool_use"}
        return json.dumps(out, ensure_ascii=False, default=str)

    # --- events --------------------------------------------------------------------

    def on_request(self, convo, request) -> None:
        self._guard("on_request", convo, self._request, request)

    def _request(self, at: _At, request: Any) -> None:
        if self._held:
            with self._lock:
                self._held.pop(at.id, None)
        turn = self._turn(at)
        model = at.model or ""
        attributes = self._common(at, "chat")
        if model:
            attributes["gen_ai.request.model"] = model
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.stop_sequences:
            attributes["gen_ai.request.stop_sequences"] = list(request.stop_sequences)
        attributes.update(_server(at.service))
        if self.capture_content:
            attributes["gen_ai.input.messages"] = self._input_messages(request)
            if request.system:
                system = "".join(getattr(b, "text", "") for b in request.system)
                attributes["gen_ai.system_instructions"] = json.dumps(
                    [{"type": "text", "content": _text(self.redact, "system", system)}], ensure_ascii=False)
        span = self._tracer.start_span(f"chat {model}" if model else "chat", context=turn.context,
                                       kind=SpanKind.CLIENT, attributes=attributes, start_time=at.t)
        metric = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": attributes["gen_ai.provider.name"]}
        if model:
            metric["gen_ai.request.model"] = model
        with self._lock:
            self._chats[at.id] = (span, at.perf, metric)

    def on_response(self, convo, response) -> None:
        self._guard("on_response", convo, self._response, response)

    def _response(self, at: _At, response: Any) -> None:
        with self._lock:
            chat = self._chats.pop(at.id, None)
        usage = response.usage
        n_in, n_out = usage.total_input_tokens(), usage.output_tokens
        cost = float(usage.cost_usd) if usage.cost_usd is not None else 0.0
        if chat is not None:
            span, began, metric = chat
            stop = None if response.stop_reason is None else str(response.stop_reason)
            attributes = {"gen_ai.response.id": response.id, "gen_ai.response.model": response.model,
                          "gen_ai.usage.input_tokens": n_in, "gen_ai.usage.output_tokens": n_out,
                          "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
                          "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
                          "convo.cost_usd": cost}
            if stop is not None:
                attributes["gen_ai.response.finish_reasons"] = [stop]
            if usage.reasoning_tokens:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
            if self.capture_content:
                parts, _ = self._parts("assistant", response.content, {})
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "parts": parts, "finish_reason": _FINISH.get(stop or "", "stop")}],
                    ensure_ascii=False, default=str)
            span.set_attributes(attributes)
            span.end(end_time=at.t)
            metric = dict(metric, **{"gen_ai.response.model": response.model})
            self._duration.record(at.perf - began, metric)
            self._tokens.record(n_in, dict(metric, **{"gen_ai.token.type": "input"}))
            self._tokens.record(n_out, dict(metric, **{"gen_ai.token.type": "output"}))
        with self._lock:
            turn = self._turns.get(at.id)
        if turn is not None:
            turn.input_tokens += n_in
            turn.output_tokens += n_out
            turn.cost += cost
        more = str(response.stop_reason) in ("tool_use", "pause_turn") and (
            response.tool_uses() or str(response.stop_reason) == "pause_turn")
        if not more:
            self._end_turn(at)

    def on_error(self, convo, request, error) -> None:
        self._guard("on_error", convo, self._error, request, error)

    def _error(self, at: _At, request: Any, error: BaseException) -> None:
        with self._lock:
            chat = self._chats.pop(at.id, None)
        kind = type(error).__name__
        if chat is not None:
            span, began, metric = chat
            span.set_attribute("error.type", kind)
            status = getattr(error, "status_code", None)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            span.set_status(Status(StatusCode.ERROR, kind))
            span.end(end_time=at.t)
            self._duration.record(at.perf - began, dict(metric, **{"error.type": kind}))
        self._end_turn(at, error)

    def on_usage(self, convo, usage) -> None:
        self._guard("on_usage", convo, self._usage, usage)

    def _usage(self, at: _At, usage: Any) -> None:
        # Tokens billed for a request that failed part-way: counted as the conventions ask (billable tokens).
        metric = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": _provider(at.service)}
        if at.model:
            metric["gen_ai.request.model"] = at.model
        self._tokens.record(usage.total_input_tokens(), dict(metric, **{"gen_ai.token.type": "input"}))
        self._tokens.record(usage.output_tokens, dict(metric, **{"gen_ai.token.type": "output"}))

    def on_tool_call(self, convo, tool_use) -> None:
        self._guard("on_tool_call", convo, self._tool_call, tool_use)

    def _tool_attributes(self, at: _At, tool_use: Any) -> dict:
        attributes = self._common(at, "execute_tool")
        attributes.update({"gen_ai.tool.name": tool_use.name, "gen_ai.tool.call.id": tool_use.id,
                           "gen_ai.tool.type": "function"})
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = json.dumps(
                _apply(self.redact, "tool_input", tool_use.name, tool_use.input), ensure_ascii=False, default=str)
        return attributes

    def _context_of(self, at: _At) -> Any:
        with self._lock:
            turn = self._turns.get(at.id)
            return turn.context if turn is not None else self._held.get(at.id)

    def _tool_call(self, at: _At, tool_use: Any) -> None:
        context = self._context_of(at)
        span = self._tracer.start_span(f"execute_tool {tool_use.name}", context=context, kind=SpanKind.INTERNAL,
                                       attributes=self._tool_attributes(at, tool_use), start_time=at.t)
        with self._lock:
            self._tools[(at.id, tool_use.id)] = span

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        self._guard("on_tool_result", convo, self._tool_result, tool_use, result, error)

    def _tool_result(self, at: _At, tool_use: Any, result: Any, error: BaseException | None) -> None:
        with self._lock:
            span = self._tools.pop((at.id, tool_use.id), None)
        if span is None:
            # Answered without an execute_tool span of ours (a held call approved later): one for the run.
            start = result.start_time
            span = self._tracer.start_span(
                f"execute_tool {tool_use.name}", context=self._context_of(at),
                kind=SpanKind.INTERNAL, attributes=self._tool_attributes(at, tool_use),
                start_time=None if start is None else int(start.timestamp() * 1e9))
        if self.capture_content:
            span.set_attribute("gen_ai.tool.call.result",
                               json.dumps(_apply(self.redact, "tool_output", tool_use.name, result.text()),
                                          ensure_ascii=False, default=str))
        if result.is_error:
            kind = type(error).__name__ if error is not None else "tool_error"
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end(end_time=at.t)

    def on_tool_pending(self, convo, pending_tool) -> None:
        self._guard("on_tool_pending", convo, self._pending, pending_tool)

    def _pending(self, at: _At, pending: Any) -> None:
        with self._lock:
            span = self._tools.pop((at.id, pending.id), None)
        if span is not None:
            span.set_attribute("convo.tool.pending", True)
            span.end(end_time=at.t)
        # The turn waits for a person, maybe for hours and in another process: end its span now
        # (the round's other calls, announced after this one, still nest under it).
        with self._lock:
            turn = self._turns.get(at.id)
            if turn is not None:
                self._held[at.id] = turn.context
        self._end_turn(at, **{"convo.turn.pending_approval": True})
