"""An elastic pool of daemon threads for running tools.

Starting a thread costs ~0.1 ms (``Thread.start()`` waits for it to run),
which doubled the time of a turn with fast tools. Idle workers are reused;
when none is idle a new one starts, so the pool never makes a call wait:
a cancelled tool that never returns keeps its thread and nobody else's.
Workers idle for ``idle_timeout`` seconds exit. Daemon threads, so an
abandoned tool never blocks interpreter exit.

Why not ``concurrent.futures.ThreadPoolExecutor``: its workers are joined
when the interpreter exits, so one cancelled tool that never returns (Python
cannot kill a thread) would hang the program's exit; and its fixed size
makes a stuck tool hold a slot other calls wait for. The bound a convo's
``max_tool_workers`` sets is kept per tool round instead (that many drain
tasks take the round's calls; see :mod:`convo._tool_runner`).

Invariant: ``_idle`` counts workers waiting on the queue that no submit has
claimed; each claim enqueues exactly one task. So a worker timing out while
``_idle`` is 0 has been claimed, and must take the task waiting for it.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


class Workers:
    """Runs callables on reused daemon threads. Thread-safe."""

    def __init__(self, idle_timeout: float = 30.0, name: str = "convo-tool") -> None:
        self._lock = threading.Lock()
        self._idle = 0
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.idle_timeout = idle_timeout
        self.name = name

    def submit(self, fn: Callable[[], object]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._tasks.put(fn)
                return
        threading.Thread(target=self._work, args=(fn,), name=self.name, daemon=True).start()

    def _work(self, fn: Callable[[], object] | None) -> None:
        while True:
            try:
                fn()  # type: ignore[misc]
            except BaseException:  # a task handles its own errors; never let one kill a worker silently
                from ._log import log

                log.error("worker_task_failed", exc_info=True)
            fn = None
            with self._lock:
                self._idle += 1
            try:
                fn = self._tasks.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle:
                        self._idle -= 1
                        return
                fn = self._tasks.get()  # claimed at the last moment: the task is already queued

    @property
    def idle(self) -> int:
        with self._lock:
            return self._idle


TOOL_WORKERS = Workers()
