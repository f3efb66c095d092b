"""Fakes for testing code that uses convo, without a model or a network.

- :class:`ScriptedService` plays back a list of replies and records every
  request it received.
- :class:`FunctionService` answers each request with a function of it.
- :func:`reply` builds a :class:`~convo.Response` in one line.
- :class:`RecordingListener` captures every listener event.

Example::

    from convo import Convo, ToolUse
    from convo.testing import ScriptedService, reply

    service = ScriptedService([
        reply(tool_uses=[ToolUse("t1", "add", {"a": 1, "b": 2})]),
        reply("3"),
    ])
    c = Convo(service, tools=[add])
    assert c.run("1+2?").text() == "3"
    assert service.requests[1].messages[-1].tool_results()[0].text() == "3"
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Iterable, Iterator, Union

import attrs
from attrs import frozen

from ._time import now
from .errors import ArgumentTypeError, ConvoError
from .messages import Request, Response, StopReason, Text, ToolUse
from .pricing import FREE, Price
from .service import StreamEvent, stream_from_response
from .usage import Usage

__all__ = ["FunctionService", "RecordingListener", "ScriptExhausted", "ScriptedService", "reply"]

_ids = itertools.count(1)


def reply(text: str = "", *, tool_uses: Iterable[ToolUse] = (), usage: Usage | None = None,
          model: str = "scripted", stop_reason: StopReason | str | None = None, id: str | None = None,
          content: Iterable[Any] = ()) -> Response:
    """A :class:`~convo.Response` with ``text`` and/or ``tool_uses``.

    The stop reason is ``tool_use`` when there are tool uses, else
    ``end_turn``. A reply from the default model, ``"scripted"``, costs $0
    (a :class:`ScriptedService` is free); give a priced model name (or a
    usage with ``cost_usd``) to exercise budgets.
    """
    blocks: list[Any] = list(content)
    if text:
        blocks.append(Text(text))
    tool_uses = list(tool_uses)
    blocks.extend(tool_uses)
    if stop_reason is None:
        stop_reason = StopReason.TOOL_USE if tool_uses else StopReason.END_TURN
    return Response(id=id or f"msg_scripted_{next(_ids)}", model=model, content=blocks,
                    stop_reason=stop_reason, usage=usage or Usage())


class ScriptExhausted(ConvoError, AssertionError):
    """A :class:`ScriptedService` received more requests than it had replies for."""


Reply = Union[Response, Callable[[Request], Response], BaseException]


class ScriptedService:
    """A service that plays back scripted replies, in order.

    Each script entry is a :class:`~convo.Response`, a callable
    ``request -> Response`` (to answer depending on the request, or to
    block, or to raise), or an exception instance to raise. When the
    script runs out, ``default`` answers if set (same kinds); otherwise
    :class:`ScriptExhausted` is raised. Every request received is appended
    to ``requests``; replies get fresh start and end times.

    Pricing: a reply whose model the price table knows is priced at that
    model's rates; any other reply costs $0 (this is a fake, and warns about
    nothing). A budget reserves each request's worst case at ``model``'s
    price and ``max_tokens``: give a priced ``model`` (``"claude-haiku-4-5"``)
    to test budgets as hard caps.

    Thread-safe: concurrent requests take script entries one at a time.
    """

    def __init__(self, replies: Iterable[Reply] = (), *, default: Reply | None = None,
                 context_window: int = 200_000, model: str = "scripted", max_tokens: int = 4096) -> None:
        self._lock = threading.Lock()
        self._script = list(replies)
        self.default = default
        self.requests: list[Request] = []
        self.context_window = context_window
        self.model = model
        self.max_tokens = max_tokens

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def do(self, request: Request) -> Response:
        start = now()
        with self._lock:
            self.requests.append(request)
            if self._script:
                item = self._script.pop(0)
            elif self.default is not None:
                item = self.default
            else:
                raise ScriptExhausted(f"ScriptedService got request #{len(self.requests)} but its script is empty")
        if isinstance(item, BaseException):
            raise item
        response = item(request) if callable(item) else item
        if not isinstance(response, Response):
            raise ArgumentTypeError(f"a script entry produced {type(response).__name__}, not a convo.Response")
        return attrs.evolve(response, start_time=start, end_time=now())

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """The scripted reply as stream events (text deltas, blocks, then StreamDone)."""
        return stream_from_response(self.do(request))

    def token_context_window(self) -> int:
        return self.context_window

    def price(self) -> Price:
        """What a reply costs when the price table does not know its model: nothing."""
        return FREE

    def close(self) -> None:
        """Nothing to release; here so a ScriptedService stands in for any service."""

    def __enter__(self) -> "ScriptedService":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScriptedService(remaining={self.remaining}, requests={len(self.requests)})"


class FunctionService(ScriptedService):
    """A service whose every reply is ``fn(request)``. Thread-safe if ``fn`` is."""

    def __init__(self, fn: Callable[[Request], Response], *, context_window: int = 200_000) -> None:
        super().__init__((), default=fn, context_window=context_window)


@frozen
class Event:
    """One captured listener event: its name, the convo's id and the event's arguments."""

    name: str
    convo_id: str
    depth: int
    args: tuple


class RecordingListener:
    """A listener that keeps every event, in the order they happened.

    Thread-safe: events from tool threads and sub-convos are appended under a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def of(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def _add(self, name: str, convo: Any, *args: Any) -> None:
        event = Event(name, convo.id, convo.depth(), args)
        with self._lock:
            self._events.append(event)

    def on_request(self, convo, request) -> None:
        self._add("request", convo, request)

    def on_response(self, convo, response) -> None:
        self._add("response", convo, response)

    def on_error(self, convo, request, error) -> None:
        self._add("error", convo, request, error)

    def on_usage(self, convo, usage) -> None:
        self._add("usage", convo, usage)

    def on_tool_call(self, convo, tool_use) -> None:
        self._add("tool_call", convo, tool_use)

    def on_tool_pending(self, convo, pending_tool) -> None:
        self._add("tool_pending", convo, pending_tool)

    def on_state_saved(self, convo, version) -> None:
        self._add("state_saved", convo, version)

    def on_state_loaded(self, convo, version) -> None:
        self._add("state_loaded", convo, version)

    def on_tool_resolved(self, convo, pending_tool, approved) -> None:
        self._add("tool_resolved", convo, pending_tool, approved)

    def on_validation(self, convo, result) -> None:
        self._add("validation", convo, result)

    def on_context_trimmed(self, convo, trimmed) -> None:
        self._add("context_trimmed", convo, trimmed)

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        self._add("tool_result", convo, tool_use, result, error)
