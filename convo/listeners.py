"""Listeners: hooks that see every request, response, tool call and tool result.

A listener is any object with some of these methods; each receives the
:class:`~convo.Convo` the event belongs to first, so one listener set on a
root conversation hears every sub-conversation at every depth too (use
``convo.id``, ``convo.parent`` and ``convo.depth()`` to place an event)::

    on_request(convo, request)          before a request is sent
    on_response(convo, response)        after a reply arrived (usage priced)
    on_error(convo, request, error)     a request failed (nothing joined the history)
    on_usage(convo, usage)              tokens the provider reported (and bills) for a
                                        request that failed or was abandoned part-way;
                                        counted in the usage, with no response
    on_tool_call(convo, tool_use)       before a tool runs
    on_tool_pending(convo, pending_tool) a hook held a tool call for approval
    on_tool_resolved(convo, pending_tool, approved)
                                        a held call was approved (it then runs) or rejected
    on_state_saved(convo, version)      a store saved the conversation (a turn, a change)
    on_state_loaded(convo, version)     the conversation was resumed from a store
    on_validation(convo, result)        a pack validator judged a message or a reply
                                        (a :class:`~convo.ValidationResult`; ``result.passed``)
    on_context_trimmed(convo, trimmed)  a pack's token budget dropped or summarised old
                                        history from a request (:class:`convo.packs.ContextTrimmed`)
    on_tool_result(convo, tool_use, result, error)
                                        after it ran; ``error`` is the exception
                                        it raised, if any (``result`` then
                                        carries the error text the model sees)

PromptKit's events, for packs (:func:`convo.open`), are these: provider call
started / completed / failed = ``on_request`` / ``on_response`` /
``on_error``; tool call started / completed / failed = ``on_tool_call`` /
``on_tool_result`` (with ``error``, or ``result.is_error``); validation
passed / failed = ``on_validation``; context truncated / compacted =
``on_context_trimmed`` (``trimmed.strategy`` is ``"sliding"`` /
``"summarize"``); approval pending / resolved = ``on_tool_pending`` /
``on_tool_resolved``; state loaded / saved = ``on_state_loaded`` /
``on_state_saved``.

Missing methods are skipped. A listener that raises never breaks the
conversation: the exception is logged (``listener_failed``) and ignored,
unless the listener has ``strict = True``: then the exception propagates,
and a request whose ``on_request`` failed is not sent (a tool whose
``on_tool_call`` failed does not run).
Listeners are called from whichever thread the event happens on (tool
events from tool worker threads), so they must be thread-safe, and convo
holds no lock while calling them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


__all__ = ["Listener", "MultiListener", "NoopListener", "combine_listeners"]

from ._log import log

EVENTS = ("on_request", "on_response", "on_error", "on_usage", "on_tool_call", "on_tool_pending",
          "on_tool_resolved", "on_tool_result", "on_state_saved", "on_state_loaded", "on_validation",
          "on_context_trimmed")


@runtime_checkable
class Listener(Protocol):
    """What a listener may implement; see the module docstring for the events."""

    def on_request(self, convo: Any, request: Any) -> None: ...

    def on_response(self, convo: Any, response: Any) -> None: ...

    def on_tool_call(self, convo: Any, tool_use: Any) -> None: ...

    def on_tool_result(self, convo: Any, tool_use: Any, result: Any, error: BaseException | None) -> None: ...


class NoopListener:
    """A listener that ignores everything: subclass it and override what you need.

    Stateless, so thread-safe.
    """

    def on_request(self, convo, request) -> None:
        pass

    def on_response(self, convo, response) -> None:
        pass

    def on_error(self, convo, request, error) -> None:
        pass

    def on_usage(self, convo, usage) -> None:
        pass

    def on_tool_call(self, convo, tool_use) -> None:
        pass

    def on_tool_pending(self, convo, pending_tool) -> None:
        pass

    def on_state_saved(self, convo, version) -> None:
        pass

    def on_state_loaded(self, convo, version) -> None:
        pass

    def on_tool_resolved(self, convo, pending_tool, approved) -> None:
        pass

    def on_validation(self, convo, result) -> None:
        pass

    def on_context_trimmed(self, convo, trimmed) -> None:
        pass

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        pass


class MultiListener:
    """Several listeners as one: each event goes to each, in order.

    One failing listener does not stop the others. Immutable, so
    thread-safe when its listeners are.
    """

    def __init__(self, *listeners: Any) -> None:
        flat: list[Any] = []
        for listener in listeners:
            if listener is None:
                continue
            if isinstance(listener, MultiListener):
                flat.extend(listener.listeners)
            else:
                flat.append(listener)
        self.listeners = tuple(flat)
        # Strict when any is: a strict listener's failure must not be swallowed on its way out.
        self.strict = any(getattr(x, "strict", False) is True for x in flat)

    def __repr__(self) -> str:
        return f"MultiListener({', '.join(type(x).__name__ for x in self.listeners)})"

    def _dispatch(self, event: str, *args) -> None:
        for listener in self.listeners:
            notify(listener, event, *args)

    def on_request(self, convo, request) -> None:
        self._dispatch("on_request", convo, request)

    def on_response(self, convo, response) -> None:
        self._dispatch("on_response", convo, response)

    def on_error(self, convo, request, error) -> None:
        self._dispatch("on_error", convo, request, error)

    def on_usage(self, convo, usage) -> None:
        self._dispatch("on_usage", convo, usage)

    def on_tool_call(self, convo, tool_use) -> None:
        self._dispatch("on_tool_call", convo, tool_use)

    def on_tool_pending(self, convo, pending_tool) -> None:
        self._dispatch("on_tool_pending", convo, pending_tool)

    def on_state_saved(self, convo, version) -> None:
        self._dispatch("on_state_saved", convo, version)

    def on_state_loaded(self, convo, version) -> None:
        self._dispatch("on_state_loaded", convo, version)

    def on_tool_resolved(self, convo, pending_tool, approved) -> None:
        self._dispatch("on_tool_resolved", convo, pending_tool, approved)

    def on_validation(self, convo, result) -> None:
        self._dispatch("on_validation", convo, result)

    def on_context_trimmed(self, convo, trimmed) -> None:
        self._dispatch("on_context_trimmed", convo, trimmed)

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        self._dispatch("on_tool_result", convo, tool_use, result, error)


def combine_listeners(*listeners: Any) -> Any:
    """One listener out of several (None entries are dropped)."""
    multi = MultiListener(*listeners)
    if not multi.listeners:
        return None
    if len(multi.listeners) == 1:
        return multi.listeners[0]
    return multi


def notify(listener: Any, event: str, *args) -> None:
    """Call ``listener.<event>(*args)`` if it exists; log and swallow what it raises.

    A listener with ``strict = True`` (an audit log that must not miss an
    event) is the exception: what it raises propagates, and the send, tool
    call or turn that caused the event fails before going further.
    """
    if listener is None:
        return
    method = getattr(listener, event, None)
    if method is None:
        return
    try:
        method(*args)
    except Exception as exc:
        if getattr(listener, "strict", False) is True:
            raise
        convo = args[0] if args else None
        log.warning("listener_failed", listener=type(listener).__name__, listener_event=event,
                    convo_id=getattr(convo, "id", None), error=f"{type(exc).__name__}: {exc}",
                    exc_info=True)
