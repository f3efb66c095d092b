"""A reply as it streams in: :class:`Stream`, what :meth:`Convo.stream` returns.

Use it as a context manager, as the official SDKs' streams are used::

    with c.stream("Tell me a story") as s:
        for text in s.text_stream:
            print(text, end="", flush=True)
    reply = s.response            # the whole reply, once the stream ended

Every check (a closed convo, the budget) ran before :meth:`Convo.stream`
returned. The request is sent when iteration starts. The history changes
only when the stream completes; a stream that fails, is cancelled or is
closed part-way leaves it untouched, but the tokens the provider reported
for it (and bills) are counted.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any, Iterator

from . import _cancel
from .errors import Cancelled, ResponseFormatError
from .messages import Response
from .service import StreamDone, StreamEvent, TextDelta, UsageUpdate
from .usage import Usage

if TYPE_CHECKING:
    from .conversation import Convo, _Send

__all__ = ["Stream"]


class Stream:
    """A reply streaming in from the model: an iterator of events, and a context manager.

    The events are :class:`~convo.TextDelta`, :class:`~convo.ThinkingDelta`,
    :class:`~convo.ToolInputDelta` and :class:`~convo.BlockDone` as they
    arrive, then :class:`~convo.StreamDone` with the priced reply, after
    which the reply is in the history and :attr:`response` holds it.

    While open, the stream holds its convo's turn: another thread's send on
    that convo waits until it ends, and a send on the same thread raises
    :class:`~convo.ConversationBusy`. Leaving the ``with`` block, calling
    :meth:`close`, or dropping the last reference ends it.

    Thread safety: iterate from one thread at a time. :meth:`close` may be
    called from any thread; while another thread is inside ``next()`` it
    cancels the request, and that thread's ``next()`` raises
    :class:`~convo.Cancelled`.
    """

    def __init__(self, convo: "Convo", send: "_Send", *, owns_turn: bool) -> None:
        self._convo = convo
        self._send = send
        self._owns_turn = owns_turn
        self._ctx = contextvars.copy_context()
        # The service's generator runs in a context of its own, so its
        # cancel scope (a contextvar) never leaks into the caller's code.
        self._ctx.run(_cancel._current.set, send.token)
        self._events: Iterator[StreamEvent] | None = None
        self._reported: Usage | None = None
        self._response: Response | None = None
        self._finished = False
        self._busy = False
        self._lock = threading.Lock()
        self._checks = convo._hook_methods("check_stream")
        self._text: list[str] = []
        self._joined: str | None = None

    # --- the iterator --------------------------------------------------------

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamEvent:
        with self._lock:
            if self._finished:
                raise StopIteration
            self._busy = True
        try:
            return self._next()
        except StopIteration:
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            self._busy = False

    def _next(self) -> StreamEvent:
        token = self._send.token
        if self._events is None:
            self._events = iter(self._ctx.run(self._convo.service.stream, self._send.request))
        while True:
            try:
                event = self._ctx.run(next, self._events)
            except StopIteration:
                raise ResponseFormatError(
                    f"{type(self._convo.service).__name__}.stream() ended without a StreamDone event"
                ) from None
            if token.cancelled:
                raise Cancelled(token.reason or "cancelled")
            if isinstance(event, UsageUpdate):
                self._reported = event.usage
                continue
            if isinstance(event, StreamDone):
                self._close_events()
                response = self._convo._commit(self._send, event.response)
                self._response = response
                self._end(None)
                return StreamDone(response)
            if self._checks:
                if isinstance(event, TextDelta):
                    self._text.append(event.text)
                    self._joined = None
                if self._joined is None:  # joined again only when the text grew
                    self._joined = "".join(self._text)
                text = self._joined
                for check in self._checks:
                    check(self._convo, event, text)  # raising stops the stream here
            return event

    # --- ending --------------------------------------------------------------

    def _close_events(self) -> None:
        events, self._events = self._events, None
        close = getattr(events, "close", None)
        if close is not None:
            try:
                self._ctx.run(close)
            except Exception:  # a service that fails to clean up must not hide the real outcome
                pass

    def _end(self, error: BaseException | None) -> None:
        """Finish once: on failure, release the reservation and count reported usage; then free the turn."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            if error is not None:
                self._close_events()
                self._convo._abort(self._send, error, self._reported)
        finally:
            if self._owns_turn:
                self._convo._exit_turn(self._send.token)

    def close(self) -> None:
        """End the stream. A reply not yet complete is abandoned: nothing joins the history.

        Safe to call more than once and from any thread (see the class docstring).
        """
        with self._lock:
            if self._finished:
                return
            busy = self._busy
        if busy:
            self._send.token.cancel("the stream was closed")
            return
        self._end(Cancelled("the stream was closed before it finished"))

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- results -------------------------------------------------------------

    @property
    def response(self) -> Response | None:
        """The whole reply once the stream completed, else None."""
        return self._response

    @property
    def finished(self) -> bool:
        """Whether the stream ended (completed, failed or closed)."""
        return self._finished

    def until_done(self) -> Response:
        """Read the rest of the stream and return the whole reply.

        Raises:
            Cancelled: the stream was closed or cancelled before it completed.
        """
        for _ in self:
            pass
        if self._response is None:
            raise Cancelled("the stream ended before the reply was complete")
        return self._response

    @property
    def text_stream(self) -> Iterator[str]:
        """The text of the reply as it arrives (other events are consumed silently)."""
        for event in self:
            if isinstance(event, TextDelta):
                yield event.text

    def __repr__(self) -> str:
        state = "done" if self._response is not None else ("ended" if self._finished else "open")
        return f"<Stream convo={self._convo.id} {state}>"
