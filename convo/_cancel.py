"""Cooperative cancellation that travels with the call in a contextvar.

``Convo.send_message`` runs the service call inside a :class:`CancelToken`'s
scope; ``Convo.cancel()`` fires the token. Code doing blocking I/O asks for
the current token and registers a callback that unblocks it (shutting down
a socket, say); waits between retries use :meth:`CancelToken.wait`.

Python cannot interrupt a thread, so this is the whole mechanism: whoever
blocks must either wait on the token or register a way to be woken.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Callable, Iterator


from .errors import Cancelled

from ._log import log


class CancelToken:
    """A one-shot cancellation signal with wake-up callbacks. Thread-safe.

    It also answers :class:`threading.Event`'s ``is_set()``, ``set()`` and
    ``wait()``, so code written against an event (a tool polling
    ``tool_call_info().cancelled``) works unchanged.
    """

    __slots__ = ("_event", "_lock", "_callbacks", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[object, Callable[[], None]] = {}
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def event(self) -> threading.Event:
        return self._event

    def cancel(self, reason: str | None = None) -> None:
        """Fire the token and run every registered callback (once)."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for cb in callbacks:
            try:
                cb()
            except Exception:  # a wake-up that fails must not stop the others
                log.warning("cancel_callback_failed", exc_info=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds (None: until cancelled); True if cancelled."""
        return self._event.wait(timeout)

    def is_set(self) -> bool:
        """Whether the token fired (``threading.Event`` spelling)."""
        return self._event.is_set()

    def set(self) -> None:
        """Fire the token (``threading.Event`` spelling of :meth:`cancel`)."""
        self.cancel()

    def __repr__(self) -> str:
        return f"<CancelToken {'cancelled' if self.cancelled else 'live'}>"

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def add_callback(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the token fires (at once if it has); returns a remover."""
        key = object()
        with self._lock:
            fired = self._event.is_set()
            if not fired:
                self._callbacks[key] = callback
        if fired:
            callback()

        def remove() -> None:
            with self._lock:
                self._callbacks.pop(key, None)

        return remove

    @contextlib.contextmanager
    def on_cancel(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` if the token fires while inside the block (at once if it has fired)."""
        remove = self.add_callback(callback)
        try:
            yield
        finally:
            remove()


_NEVER = CancelToken()
_current: contextvars.ContextVar[CancelToken] = contextvars.ContextVar("convo_cancel_token", default=_NEVER)


def current_token() -> CancelToken:
    """The token of the call in progress (one that never fires outside a call)."""
    return _current.get()


@contextlib.contextmanager
def cancel_scope(token: CancelToken) -> Iterator[CancelToken]:
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)
