"""The audit record: what one listener event becomes, in every sink (JSON lines, a store, traces).

An audit record is a JSON object; format version 1 has these fields, in
this order on a line of a :class:`~convo.audit.JSONLAuditLog`::

    v        1, the format version (a reader refuses a newer one)
    seq      0, 1, 2...: the record's place in its chain (JSON lines only)
    prev     the ``hash`` of the record before it; 64 zeros for the first (JSON lines only)
    at       when the event happened: ISO 8601, UTC, microseconds ("2025-06-01T12:00:00.123456+00:00")
    event    what happened (below)
    convo    the conversation's id
    parent   its parent's id, or null for a root conversation
    root     the id of the root of its tree
    depth    0 for a root, 1 for its sub-convos, and so on
    data     the event's details (below)
    hash     SHA-256 (or HMAC-SHA256 with a key) of the line up to ``hash``, in hex (JSON lines only)

Events and their ``data``:

``request`` (before a request is sent)
    ``kind``: ``"user"`` (a new user message), ``"tool_results"`` (results
    going back to the model) or ``"continue"`` (a paused reply continued);
    ``message``: that last message (see *content* below), or null;
    ``messages``: how many messages the request holds; ``model``;
    ``tools``: the names of the tools offered; ``max_tokens``;
    ``temperature``; ``system_sha256``: the SHA-256 of the system prompt
    (the prompt itself is not repeated on every line).
``response`` (a reply arrived, priced)
    ``id``, ``model``, ``stop_reason``, ``content``, ``usage`` (tokens and
    ``cost_usd``, dollars as a decimal string), ``cost_usd``,
    ``duration_s``; ``validations`` and ``pending_tools`` when there are any.
``error`` (a request failed; nothing joined the history)
    ``error_type`` (the exception's class), ``message``, and
    ``status_code``, ``request_id`` when the provider gave them.
``usage`` (tokens billed for a request that failed part-way)
    the usage, as in ``response``.
``tool_call`` (before a tool runs)
    ``id``, ``name``, ``input``.
``tool_result`` (after it ran, or was answered without running)
    ``id``, ``name``, ``is_error``, ``output`` (the result's text),
    ``attachments`` (non-text blocks, described without their data),
    ``error_type`` (the exception the tool raised, if any), ``duration_s``.
``tool_pending`` (a hook held a call for approval)
    ``id``, ``name``, ``input``, ``reason``, ``message``.
``tool_resolved`` (a person approved or rejected a held call)
    ``id``, ``name``, ``approved``.
``state_saved``, ``state_loaded`` (a store saved or resumed the conversation)
    ``version``.
``audit_gap`` (written by the sink itself)
    ``dropped``: how many events could not be written, ``since``: when the
    first of them happened, ``error``: why.

Events that listeners learn later (packs add some) are recorded with their
name less the ``on_`` prefix and ``data = {"args": [...]}``, each argument
as its ``to_dict()``, or as plain JSON.

*content* is a list of blocks: ``{"type": "text", "text": ...}``,
``{"type": "tool_use", "id", "name", "input"}``, ``{"type":
"tool_result", "tool_use_id", "is_error", "output"}``, ``{"type":
"thinking", "thinking": ...}``; images and documents are described by
``type``, ``media_type`` and their size or URL, never their bytes.

Secrets: a record is built from the conversation's messages, the reply and
the tools' inputs and outputs, never from the service (so never from an API
key). Personal data in tool inputs and outputs and in message text can be
masked with a ``redact`` hook before anything is written, for every sink:
``redact(what, name, value)`` is called with ``what`` one of
``"tool_input"`` (``name`` the tool's, ``value`` a dict),
``"tool_output"`` (``name`` the tool's, ``value`` a str) or ``"text"``
(``name`` the role, ``value`` a message's text, a reply's or a thought's)
and returns what to write instead. A redact hook that raises makes the
field ``"[redaction failed]"``: what it was given is never written.

Everything here is a pure function of its arguments, safe from any thread.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from .._log import log
from ..errors import ConvoError

__all__ = [
    "FORMAT_VERSION",
    "GENESIS",
    "AuditListener",
    "AuditWriteFailed",
    "REDACTION_FAILED",
    "Redact",
    "build_record",
    "dumps",
    "place_of",
    "now_iso",
]

#: The version of the record format this convo writes and reads.
FORMAT_VERSION = 1

#: The ``prev`` of the first record of a chain.
GENESIS = "0" * 64

#: What a field becomes when the redact hook raised.
REDACTION_FAILED = "[redaction failed]"

#: ``redact(what, name, value) -> value``: see the module docstring.
Redact = Callable[[str, str, Any], Any]

_EVENTS = {
    "on_request": "request",
    "on_response": "response",
    "on_error": "error",
    "on_usage": "usage",
    "on_tool_call": "tool_call",
    "on_tool_result": "tool_result",
    "on_tool_pending": "tool_pending",
    "on_tool_resolved": "tool_resolved",
    "on_state_saved": "state_saved",
    "on_state_loaded": "state_loaded",
}


class AuditWriteFailed(ConvoError, OSError):
    """An audit sink could not record an event (a full disk, a file that cannot be opened, a database down).

    A sink with ``strict=True`` raises it from the listener call, so the
    send (or tool call) that caused the event fails before it happens;
    otherwise it is logged and the conversation goes on.
    """


# --- JSON --------------------------------------------------------------------------

def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return str(value)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_default, allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON text of a record (UTF-8 safe, no NaN; Decimals and times as strings)."""
    try:
        return _encoder.encode(value)
    except ValueError:  # NaN or infinity in a tool's input: write them as strings rather than fail
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default,
                          allow_nan=True).replace("NaN", '"NaN"').replace("Infinity", '"Infinity"')


# --- building records --------------------------------------------------------------------

_UTC = timezone.utc


def now_iso() -> str:
    """The current time as a record's ``at``: ISO 8601 UTC, always with microseconds (text order is time order)."""
    return datetime.now(_UTC).isoformat(timespec="microseconds")


def _apply(redact: Redact | None, what: str, name: str, value: Any) -> Any:
    if redact is None:
        return value
    try:
        return redact(what, name, value)
    except Exception as exc:
        log.warning("audit_redact_failed", what=what, name=name, error=f"{type(exc).__name__}: {exc}")
        return REDACTION_FAILED


def _text(redact: Redact | None, role: str, text: str) -> Any:
    return _apply(redact, "text", role, text) if redact is not None else text


def _attachment(block: Any) -> dict:
    d: dict[str, Any] = {"type": getattr(block, "type", type(block).__name__)}
    for name in ("media_type", "url", "title"):
        value = getattr(block, name, None)
        if value is not None:
            d[name] = value
    data = getattr(block, "data", None)
    if isinstance(data, str):
        d["bytes"] = len(data) * 3 // 4  # base64
    return d


def _blocks(content: Any, role: str, redact: Redact | None, tool_names: dict | None = None) -> list:
    out = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            out.append({"type": "text", "text": _text(redact, role, block.text)})
        elif kind == "tool_use":
            out.append({"type": "tool_use", "id": block.id, "name": block.name,
                        "input": _apply(redact, "tool_input", block.name, block.input)})
        elif kind == "tool_result":
            name = (tool_names or {}).get(block.tool_use_id, "")
            entry = {"type": "tool_result", "tool_use_id": block.tool_use_id, "is_error": block.is_error,
                     "output": _apply(redact, "tool_output", name, block.text())}
            attachments = [_attachment(b) for b in block.content if getattr(b, "type", None) != "text"]
            if attachments:
                entry["attachments"] = attachments
            out.append(entry)
        elif kind == "thinking":
            out.append({"type": "thinking", "thinking": _text(redact, "thinking", block.thinking)})
        elif kind == "redacted_thinking":
            out.append({"type": "redacted_thinking"})
        else:
            out.append(_attachment(block))
    return out


def _message(message: Any, redact: Redact | None, tool_names: dict | None = None) -> dict:
    role = str(message.role)
    return {"role": role, "content": _blocks(message.content, role, redact, tool_names)}


def _tool_names(messages: Any) -> dict:
    """Tool names by call id, from the reply a results message answers."""
    for message in reversed(messages[:-1]):
        if str(message.role) == "assistant":
            return {b.id: b.name for b in message.content if getattr(b, "type", None) == "tool_use"}
    return {}


_system_cache: dict[str, str] = {}
_system_lock = threading.Lock()


def _system_sha256(request: Any) -> str | None:
    if not request.system:
        return None
    text = "".join(getattr(b, "text", "") for b in request.system)
    found = _system_cache.get(text)
    if found is None:
        found = hashlib.sha256(text.encode()).hexdigest()
        with _system_lock:
            if len(_system_cache) > 256:
                _system_cache.clear()
            _system_cache[text] = found
    return found


def _request(model: str | None, request: Any, redact: Redact | None) -> dict:
    messages = request.messages
    last = messages[-1] if messages else None
    if last is None or str(last.role) == "assistant":
        kind, message = "continue", None
    else:
        results = any(getattr(b, "type", None) == "tool_result" for b in last.content)
        texts = any(getattr(b, "type", None) == "text" and b.text for b in last.content)
        kind = "tool_results" if results and not texts else "user"
        message = _message(last, redact, _tool_names(messages) if results else None)
    return {"kind": kind, "message": message, "messages": len(messages),
            "model": model, "tools": [t.name for t in request.tools],
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "system_sha256": _system_sha256(request)}


def _usage(usage: Any) -> dict:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost_usd": None if usage.cost_usd is None else str(usage.cost_usd)}


def _response(response: Any, redact: Redact | None) -> dict:
    d = {"id": response.id, "model": response.model,
         "stop_reason": None if response.stop_reason is None else str(response.stop_reason),
         "content": _blocks(response.content, "assistant", redact),
         "usage": _usage(response.usage),
         "cost_usd": None if response.usage.cost_usd is None else str(response.usage.cost_usd),
         "duration_s": response.duration}
    if response.validations:
        d["validations"] = [v.to_dict() for v in response.validations]
    if response.pending_tools:
        d["pending_tools"] = [_pending(p, redact) for p in response.pending_tools]
    return d


def _error(error: BaseException) -> dict:
    d = {"error_type": type(error).__name__, "message": str(error)}
    for name in ("status_code", "request_id"):
        value = getattr(error, name, None)
        if value is not None:
            d[name] = value
    return d


def _tool_call(tool_use: Any, redact: Redact | None) -> dict:
    return {"id": tool_use.id, "name": tool_use.name,
            "input": _apply(redact, "tool_input", tool_use.name, tool_use.input)}


def _tool_result(tool_use: Any, result: Any, error: BaseException | None, redact: Redact | None) -> dict:
    d = {"id": tool_use.id, "name": tool_use.name, "is_error": result.is_error,
         "output": _apply(redact, "tool_output", tool_use.name, result.text()),
         "error_type": None if error is None else type(error).__name__,
         "duration_s": None if result.start_time is None or result.end_time is None
         else (result.end_time - result.start_time).total_seconds()}
    attachments = [_attachment(b) for b in result.content if getattr(b, "type", None) != "text"]
    if attachments:
        d["attachments"] = attachments
    return d


def _pending(pending: Any, redact: Redact | None) -> dict:
    return {"id": pending.id, "name": pending.name,
            "input": _apply(redact, "tool_input", pending.name, pending.arguments),
            "reason": pending.reason, "message": pending.message}


def _generic(args: tuple) -> dict:
    out = []
    for arg in args:
        to_dict = getattr(arg, "to_dict", None)
        if callable(to_dict):
            out.append(to_dict())
        elif isinstance(arg, (str, int, float, bool, type(None), list, dict)):
            out.append(arg)
        elif isinstance(arg, (tuple, set, frozenset)):
            out.append([a.to_dict() if callable(getattr(a, "to_dict", None)) else a for a in arg])
        else:
            out.append(f"<{type(arg).__name__}>")
    return {"args": out}


_BUILDERS = {
    "on_request": lambda model, args, redact: _request(model, args[0], redact),
    "on_response": lambda model, args, redact: _response(args[0], redact),
    "on_tool_call": lambda model, args, redact: _tool_call(args[0], redact),
    "on_tool_result": lambda model, args, redact: _tool_result(args[0], args[1], args[2], redact),
    "on_error": lambda model, args, redact: _error(args[1]),
    "on_usage": lambda model, args, redact: _usage(args[0]),
    "on_tool_pending": lambda model, args, redact: _pending(args[0], redact),
    "on_tool_resolved": lambda model, args, redact: {"id": args[0].id, "name": args[0].name,
                                                     "approved": bool(args[1])},
    "on_state_saved": lambda model, args, redact: {"version": args[0]},
    "on_state_loaded": lambda model, args, redact: {"version": args[0]},
}


def event_data(event: str, model: str | None, args: tuple, redact: Redact | None = None) -> dict:
    """The ``data`` of the record for listener method ``event`` (``"on_request"``...) called with ``args``."""
    builder = _BUILDERS.get(event)
    return _generic(args) if builder is None else builder(model, args, redact)


def event_name(method: str) -> str:
    """The record's ``event`` for a listener method name: ``on_tool_call`` -> ``tool_call``."""
    return _EVENTS.get(method) or (method[3:] if method.startswith("on_") else method)


def place_of(convo: Any) -> tuple:
    """``(id, parent id, root id, depth, model)``: where in its tree an event happened, read at once.

    A record can then be built later, on another thread: everything else it
    holds comes from immutable values (requests, replies, tool calls).
    """
    parent = convo.parent
    return (convo.id, None if parent is None else parent.id, convo.root().id, convo.depth(),
            getattr(convo, "model", None))


def build_record(event: str, place: tuple, args: tuple, redact: Redact | None = None,
                 at: str | None = None) -> dict:
    """The record (without its chain fields) for listener method ``event`` at ``place`` (see :func:`place_of`)."""
    id, parent, root, depth, model = place
    builder = _BUILDERS.get(event)
    data = _generic(args) if builder is None else builder(model, args, redact)
    return {"at": at or now_iso(), "event": _EVENTS.get(event) or event_name(event), "convo": id, "parent": parent,
            "root": root, "depth": depth, "data": data}


# --- the listener every sink shares ------------------------------------------------------

class AuditListener:
    """A listener that turns every event into an audit record and hands it to :meth:`_emit`.

    Subclasses (the sinks) implement ``_emit(record)``. A failure to build or
    write a record is logged once per outage and counted in ``dropped``;
    with ``strict=True`` it raises :class:`AuditWriteFailed` instead, so the
    engine stops the send or tool call that caused the event.

    Thread-safe when ``_emit`` is.
    """

    def __init__(self, *, redact: Redact | None = None, strict: bool = False) -> None:
        if redact is not None and not callable(redact):
            from ..errors import ArgumentTypeError

            raise ArgumentTypeError(f"redact must be a callable (what, name, value) -> value, "
                                    f"got {type(redact).__name__}")
        self.redact = redact
        self.strict = bool(strict)

    def _emit(self, record: dict) -> None:  # pragma: no cover - every sink overrides it
        raise NotImplementedError

    def _event(self, event: str, convo: Any, *args: Any) -> None:
        try:
            parent = convo.parent
            place = (convo.id, None if parent is None else parent.id, convo.root().id, convo.depth(),
                     getattr(convo, "model", None))  # place_of(), inline: this runs for every event
        except Exception as exc:  # not a Convo: say so, never break the caller
            if self.strict:
                raise AuditWriteFailed(f"cannot audit {event} on a {type(convo).__name__}: {exc}") from exc
            log.error("audit_record_failed", listener_event=event, error=f"{type(exc).__name__}: {exc}")
            return
        self._accept(event, datetime.now(_UTC).isoformat(timespec="microseconds"), place, args)

    def _accept(self, event: str, at: str, place: tuple, args: tuple) -> None:
        """Take one event: by default build its record now and :meth:`_emit` it (sinks may queue it instead)."""
        record = self._build(event, at, place, args)
        if record is not None:
            self._emit(record)

    def _build(self, event: str, at: str, place: tuple, args: tuple) -> dict | None:
        """The event's record; None (logged) if it cannot be built, or, when strict, :class:`AuditWriteFailed`."""
        try:
            return build_record(event, place, args, self.redact, at)
        except Exception as exc:
            if self.strict:
                raise AuditWriteFailed(f"could not build the audit record of {event}: "
                                       f"{type(exc).__name__}: {exc}") from exc
            log.error("audit_record_failed", listener_event=event, convo_id=place[0],
                      error=f"{type(exc).__name__}: {exc}")
            return None

    def on_request(self, convo, request) -> None:
        self._event("on_request", convo, request)

    def on_response(self, convo, response) -> None:
        self._event("on_response", convo, response)

    def on_error(self, convo, request, error) -> None:
        self._event("on_error", convo, request, error)

    def on_usage(self, convo, usage) -> None:
        self._event("on_usage", convo, usage)

    def on_tool_call(self, convo, tool_use) -> None:
        self._event("on_tool_call", convo, tool_use)

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        self._event("on_tool_result", convo, tool_use, result, error)

    def on_tool_pending(self, convo, pending_tool) -> None:
        self._event("on_tool_pending", convo, pending_tool)

    def on_tool_resolved(self, convo, pending_tool, approved) -> None:
        self._event("on_tool_resolved", convo, pending_tool, approved)

    def on_state_saved(self, convo, version) -> None:
        self._event("on_state_saved", convo, version)

    def on_state_loaded(self, convo, version) -> None:
        self._event("on_state_loaded", convo, version)

    def __getattr__(self, name: str) -> Any:
        # Events added after this sink was written (packs' on_validation, context truncation...)
        # are recorded too, generically, rather than silently missing from the trail.
        if name.startswith("on_") and not name.startswith("on__"):
            def record(convo, *args):
                self._event(name, convo, *args)

            return record
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
