"""Hooks: code that shapes a conversation's requests, checks its replies and gates its tool calls.

Listeners observe; hooks take part. A hook is any object with some of these
methods (missing ones are skipped), given to ``Convo(hooks=[...])``; hooks
run in order, on the thread of the turn (tool gates on tool threads)::

    prepare_request(convo, request) -> Request | None
        Before a request is checked against budgets and sent: return a
        changed request (render the system prompt, add parameters, trim the
        context), None to keep it, or raise to refuse it (nothing is sent;
        the error reaches the caller).

    check_response(convo, response) -> Response | None
        When a reply arrived, before it joins the history: return it
        annotated (``attrs.evolve(response, validations=...)``), None to keep
        it, or raise to reject it: it does not join the history, its cost is
        counted (it was spent), and the error reaches the caller.

    check_stream(convo, event, text) -> None
        For every event of a streamed reply, with the reply's text so far:
        raise to stop the stream at this event (as ``check_response``'s
        rejection).

    gate_tool_call(convo, tool_use) -> None | Pending | ToolResult
        Before a tool call runs: None runs it; a :class:`Pending` holds it
        for a person to approve (``Convo.resolve_tool``) or reject
        (``Convo.reject_tool``); a ToolResult answers it without running
        (a blocked tool, a policy limit).

    tools(convo) -> list[Tool]
        Tools this hook adds to the convo's own (a pack's declared tools),
        listed afresh for every request and tool round.

A hook that keeps state worth saving (a pack's variables, say) has a
``state_key`` (a str) and ``to_state() -> dict``: a Convo with a store saves
that dict with every turn, and :func:`convo.resume` rebuilds the hook with
the function registered for its key by :func:`register_restorer` (which is
given the saved dict and the resumed convo's settings, and returns the
hook). Hooks given to ``resume(hooks=[...])`` are used as given instead.

A hook that raises anything else than in the places above is a bug in the
hook: the error reaches the caller as it is. Hooks must be thread-safe when
the convo is shared between threads (turns are serialised, tool gates are
not).

Packs (:func:`convo.open`) are built on these, and any application can
write its own.
"""

from __future__ import annotations

from typing import Any, Protocol

from attrs import field, frozen

__all__ = ["Hook", "Pending", "PendingTool", "ValidationResult", "register_restorer", "restorer_for"]

_RESTORERS: dict[str, Any] = {}
# Modules that register restorers, loaded the first time a saved key needs one.
_PROVIDERS = {"pack": "convo.packs"}


def register_restorer(key: str, restore: Any) -> None:
    """Register ``restore(saved: dict, convo_settings: dict) -> hook`` for hooks whose ``state_key`` is ``key``."""
    _RESTORERS[key] = restore


def restorer_for(key: str) -> Any:
    """The restorer registered for ``key``, importing the module known to provide it; None if there is none."""
    if key not in _RESTORERS and key in _PROVIDERS:
        import importlib

        importlib.import_module(_PROVIDERS[key])
    return _RESTORERS.get(key)


@frozen
class Pending:
    """A gate's answer: hold this tool call until a person approves or rejects it.

    ``reason`` is for the program (a code, say ``"amount_over_limit"``),
    ``message`` for the person asked to approve.
    """

    reason: str = ""
    message: str = ""


@frozen
class PendingTool:
    """A tool call held for approval: its id, tool name, arguments, and why it was held."""

    id: str
    name: str
    arguments: dict = field(factory=dict)
    reason: str = ""
    message: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "reason": self.reason,
                "message": self.message}

    @classmethod
    def from_dict(cls, d: dict) -> "PendingTool":
        return cls(d["id"], d["name"], d.get("arguments") or {}, d.get("reason", ""), d.get("message", ""))


@frozen
class ValidationResult:
    """What one check found about a message: its type, whether it passed, details, and which way it went.

    ``direction`` is ``"output"`` for the model's reply, ``"input"`` for the
    user's message, or empty when the check does not say.
    """

    type: str
    passed: bool
    details: dict = field(factory=dict)
    message: str = ""
    direction: str = ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": self.type, "passed": self.passed}
        if self.details:
            d["details"] = self.details
        if self.message:
            d["message"] = self.message
        if self.direction:
            d["direction"] = self.direction
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ValidationResult":
        return cls(d["type"], bool(d["passed"]), d.get("details") or {}, d.get("message", ""),
                   d.get("direction", ""))


class Hook(Protocol):
    """The methods a hook may have (all optional); see this module's docstring."""

    def prepare_request(self, convo: Any, request: Any) -> Any: ...

    def check_response(self, convo: Any, response: Any) -> Any: ...

    def check_stream(self, convo: Any, event: Any, text: str) -> None: ...

    def gate_tool_call(self, convo: Any, tool_use: Any) -> Any: ...

    def tools(self, convo: Any) -> Any: ...
