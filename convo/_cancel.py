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

import structlog

from .errors import Cancelled

log = structlog.get_logger("convo")


class CancelToken:
    """A one-shot cancellation signal with wake-up callbacks. Thread-safe."""

    __slots__ = ("_event", "_lock", "_callbacks", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
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

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout`` seconds; True if cancelled meanwhile."""
        return self._event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    @contextlib.contextmanager
    def on_cancel(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` if the token fires while inside the block.

        If the token has already fired, the callback runs at once.
        """
        key = id(callback)
        with self._lock:
            fired = self._event.is_set()
            if not fired:
                self._callbacks[key] = callback
        if fired:
            callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)


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
