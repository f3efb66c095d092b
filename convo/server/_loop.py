"""Handing work from worker threads to the server's event loop: one wake-up per burst, not per item.

Conversations run on threads; their frames and events come in bursts (a
reply then its result, stream events, an event for a hundred watchers).
Waking the loop once per item would cost a system call and a loop iteration
each; a :class:`LoopBatch` collects what arrives while a wake-up is pending
and delivers it all in one call on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

__all__ = ["LoopBatch"]


class LoopBatch:
    """Collects items posted from any thread and delivers them, in order, in batches on an event loop.

    ``deliver(items)`` runs on the loop. Items posted after the loop closed
    (the server is stopping) are dropped. Thread-safe.
    """

    __slots__ = ("loop", "_deliver", "_lock", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list], Any]) -> None:
        self.loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: list = []
        self._scheduled = False

    def post(self, item: Any) -> None:
        """Queue ``item``; wake the loop unless a wake-up is already on its way."""
        with self._lock:
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    def _flush(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._scheduled = False
        self._deliver(items)
