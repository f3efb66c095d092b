"""Many conversations at once: :func:`batch` runs a task over items, each on its own convo.

::

    results = convo.batch(reviews, label_review, parent=lead, max_workers=16, budget=5)
    results = convo.batch(reviews, "Label this review: {item}", output=Label, parent=lead)

Each item runs on its own sub-convo of one batch convo below ``parent``, so
every token and dollar rolls up into ``parent`` and its ancestors exactly,
as any sub-convo's does. Results come back in input order; an item that
fails leaves its exception in its slot and the others carry on.

How it runs. ``max_workers`` threads pull the next item in input order; the
caller's thread only collects finished items, writes them to the store and
moves the progress bar, so neither a store nor the bar is ever used from two
threads. Before each item starts, the budgets are checked: once the batch
has spent ``budget`` (or an ancestor's budget is exhausted), no more items
start.

On a cluster. With ``executor=`` a ``distributed.Client`` (Dask) or
``"ray"``, each worker thread hands its item to the cluster and waits for
it. What crosses the wire is the task, the output type, a copy of the
service (see :func:`batch`), the convo settings that shape a request, a
snapshot of the price table, and per item only the item and its convo id.
The spec is sent once per worker process (Dask: scattered to every worker;
Ray: given to a few threaded actors) and unpickled once there. A worker runs
the item on a root convo of its own and sends back the result and that
convo's :class:`~convo.CumulativeUsage`, which is added to the item's convo
here with ``Convo._absorb_usage`` and so to every ancestor. Dask tasks
secede from the worker's thread pool (they wait on the network, not the
CPU) and Ray actors run ``max_workers`` calls on threads, so a two-CPU
cluster still has ``max_workers`` items in flight.

Stores. A store needs two methods (:class:`BatchStore`): ``batch_get`` and
``batch_put``, keyed by a batch id and an item key. Each finished item is
recorded as JSON; running the same batch again returns recorded results
without running their items again (failed items are run again).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import itertools
import json
import math
import pickle
import queue
import string
import threading
import time
import traceback
import typing
from decimal import Decimal
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import attrs
from attrs import define, field, frozen

from ._log import log
from ._time import now
from .budget import Budget
from .conversation import Convo
from .errors import ArgumentTypeError, BudgetExceeded, ConfigurationError, ConvoError
from .messages import _StrEnum
from .structured import Output
from .tools import _NO, _shape_for, _to_json, _unwrap_partial
from .usage import CumulativeUsage

__all__ = [
    "BatchResult",
    "BatchStore",
    "DEFAULT_MAX_WORKERS",
    "ItemOutcome",
    "ItemStatus",
    "RemoteItemError",
    "batch",
]

#: Items run at once by default.
DEFAULT_MAX_WORKERS = 8

#: Version of the records :func:`batch` writes to a store.
RECORD_FORMAT = 1


class ItemStatus(_StrEnum):
    """What became of one item: ``done``, ``failed``, ``not_started`` (budget) or ``resumed`` (from a store)."""

    DONE = "done"
    FAILED = "failed"
    NOT_STARTED = "not_started"
    RESUMED = "resumed"


class RemoteItemError(ConvoError, RuntimeError):
    """An item failed on a worker with an exception that could not travel back as itself.

    Attributes:
        type_name: the exception's qualified type name.
        message: its ``str()``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


@frozen
class ItemOutcome:
    """One item of a batch: its place, its key, what became of it, and what it spent.

    ``value`` is the task's result (``done``, ``resumed``); ``error`` the
    exception it failed with (``failed``), or the
    :class:`~convo.BudgetExceeded` that kept it from starting
    (``not_started``). ``usage`` is what the item spent (for a resumed item,
    what it spent when it ran). ``traceback`` is the worker's traceback of a
    failure on Dask or Ray (a local failure keeps its own in
    ``error.__traceback__``). Immutable.
    """

    index: int
    item: Any = field(repr=False)
    key: str
    status: ItemStatus
    value: Any = None
    error: BaseException | None = None
    usage: CumulativeUsage | None = field(default=None, repr=False)
    convo_id: str | None = None
    seconds: float = 0.0
    traceback: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the item has a result (done now, or resumed from the store)."""
        return self.status in (ItemStatus.DONE, ItemStatus.RESUMED)


class BatchResult(Sequence):
    """What :func:`batch` returns: one slot per item, in input order.

    A slot holds the item's result, or the exception it failed with (as
    ``asyncio.gather(..., return_exceptions=True)`` does): a failed item
    its own exception, an item never started a
    :class:`~convo.BudgetExceeded`. :attr:`outcomes` has the details of
    each (:class:`ItemOutcome`), :attr:`usage` what this run spent.

    Immutable, so safe to share between threads.
    """

    def __init__(self, batch_id: str, outcomes: Iterable[ItemOutcome], usage: CumulativeUsage) -> None:
        self.batch_id = batch_id
        self.outcomes: tuple[ItemOutcome, ...] = tuple(outcomes)
        self.usage = usage

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._slot(o) for o in self.outcomes[index]]
        return self._slot(self.outcomes[index])

    @staticmethod
    def _slot(outcome: ItemOutcome) -> Any:
        return outcome.value if outcome.ok else outcome.error

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> bool:
        """Whether every item has a result."""
        return all(o.ok for o in self.outcomes)

    @property
    def errors(self) -> dict[int, BaseException]:
        """The exception of each item without a result, by index."""
        return {o.index: o.error for o in self.outcomes if not o.ok}

    @property
    def cost_usd(self) -> Decimal:
        """Dollars this run spent (resumed items cost nothing now)."""
        return self.usage.total_cost_usd

    def counts(self) -> dict[str, int]:
        """How many items are in each :class:`ItemStatus`."""
        out = {str(s): 0 for s in ItemStatus}
        for o in self.outcomes:
            out[str(o.status)] += 1
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in self.counts().items() if n)
        return f"<BatchResult {self.batch_id}: {counts or 'no items'}, ${self.cost_usd}>"


@runtime_checkable
class BatchStore(Protocol):
    """What :func:`batch` needs from a store: two methods, keyed by batch id and item key.

    ``batch_get`` returns the record ``batch_put`` stored for that item, or
    None. Records are JSON objects (``status``, ``result``, ``usage``,
    ``error``...; see :func:`batch`). :func:`batch` calls both from the
    thread that called it, never from two threads at once.
    """

    def batch_get(self, batch_id: str, item_key: str) -> dict | None:
        ...

    def batch_put(self, batch_id: str, item_key: str, record: dict) -> None:
        ...


# --- the task -------------------------------------------------------------------------

def _template_fields(template: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            names.add(name.split(".")[0].split("[")[0])
    return names


def _execute(task: Any, output: Output | None, item: Any, c: Convo) -> Any:
    """The item's result: ``task(item, c)``, or the reply to a prompt template."""
    if not isinstance(task, str):
        return task(item, c)
    prompt = task.format(item=item)
    if output is not None:
        return c.run(prompt, output=output)
    return c.run(prompt).text()


@define
class _Codec:
    """How an item's result becomes JSON for a store, and back."""

    to_json: Callable[[Any], Any]
    from_json: Callable[[Any], Any]


def _codec(task: Any, output: Output | None) -> _Codec:
    if output is not None:
        return _Codec(output.to_json, output.from_json)
    if isinstance(task, str):
        return _Codec(lambda v: v, lambda d: d)
    convert = None
    try:
        hint = typing.get_type_hints(_unwrap_partial(task)[0]).get("return")
        if hint is not None and hint is not type(None):
            convert = _shape_for(hint).convert
    except Exception:  # no usable annotation: the result comes back as the JSON it was stored as
        convert = None
    return _Codec(_to_json, (lambda d: convert(d, "")) if convert else (lambda d: d))


# --- keys ------------------------------------------------------------------------------

def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _canonical(value: Any) -> str:
    data = _to_json(value)
    if data is _NO:
        return "repr:" + repr(value)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _item_keys(items: list) -> list[str]:
    """A key per item from its content (JSON, else repr); a repeated item gets ``#2``, ``#3``..."""
    seen: dict[str, int] = {}
    keys = []
    for item in items:
        key = _digest(_canonical(item))[:32]
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def _task_identity(task: Any) -> str:
    if isinstance(task, str):
        return "template:" + task
    fn = _unwrap_partial(task)[0]
    fn = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None)
    if code is not None:  # two lambdas in one function share a name, not their code
        name += ":" + _digest(repr(code.co_code), repr(code.co_consts))[:16]
    if isinstance(task, functools.partial):
        name += ":" + repr(getattr(task, "args", ())) + repr(sorted(getattr(task, "keywords", {}).items()))
    return name


def default_batch_id(task: Any, items: Iterable[Any], output: Any = None) -> str:
    """The id :func:`batch` gives a batch when none is given: a hash of the task, the output type and the items.

    The same task over the same items gets the same id in every run (of the
    same code), which is how a run finds the records of an earlier one.
    """
    return _batch_id(task, Output.of(output) if output is not None else None, _item_keys(list(items)))


def _batch_id(task: Any, output: Output | None, keys: list[str]) -> str:
    schema = json.dumps(output.schema, sort_keys=True) if output is not None else ""
    return "batch-" + _digest(_task_identity(task), schema, *keys)[:20]


# --- what crosses the wire ---------------------------------------------------------------

def _dumps(value: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - dask and ray both bring cloudpickle
        return pickle.dumps(value)
    return cloudpickle.dumps(value)


@frozen
class _Rebuild:
    """A service that does not pickle, as its class and constructor arguments (an attrs class)."""

    cls: type
    kwargs: dict

    def __call__(self) -> Any:
        return self.cls(**self.kwargs)


def _shippable_service(service: Any, engine: str) -> Any:
    """The service as something a worker can rebuild it from: itself if it pickles, else a recipe."""
    try:
        pickle.loads(_dumps(service))
        return service
    except Exception as exc:
        problem = exc
    if attrs.has(type(service)):
        recipe = _Rebuild(type(service), {a.alias: getattr(service, a.name)
                                          for a in attrs.fields(type(service)) if a.init})
        try:
            _dumps(recipe)
            return recipe
        except Exception:
            pass
    raise ConfigurationError(
        f"the parent's {type(service).__name__} cannot be sent to {engine} workers "
        f"({type(problem).__name__}: {problem}); give batch() a parent whose service pickles "
        "(AnthropicService, OpenAIService and LocalService do)")


class _Spec:
    """Everything a worker needs to run any item of one batch; sent once per worker process.

    ``service`` is the service itself, or a :class:`_Rebuild` of it; either
    way one service is built per worker process and shared by its items.
    """

    _SENT = ("task", "output", "service", "settings", "prices")

    def __init__(self, task: Any, output: Output | None, service: Any, settings: dict, prices: dict) -> None:
        self.task = task
        self.output = output
        self.service = service
        self.settings = settings
        self.prices = prices
        self._built: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self._SENT}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def convo(self, convo_id: str) -> Convo:
        from .pricing import PriceTable

        with self._lock:
            if self._built is None:
                service = self.service() if isinstance(self.service, _Rebuild) else self.service
                self._built = (service, PriceTable(self.prices))
            service, prices = self._built
        return Convo(service, id=convo_id, prices=prices, **self.settings)

    def run(self, payload: tuple) -> tuple:
        """Run one item here; ``(ok, value or error, usage, seconds, traceback text)``, all picklable."""
        _, item, convo_id = payload
        started = time.perf_counter()
        tb = None
        try:
            c = self.convo(convo_id)
        except Exception as exc:
            return False, _portable(exc), CumulativeUsage(), 0.0, traceback.format_exc()
        try:
            value = _execute(self.task, self.output, item, c)
            ok = True
            try:
                _dumps(value)
            except Exception as exc:
                ok, value = False, TypeError(f"the item's result could not be sent back from the worker: "
                                             f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            ok, value, tb = False, _portable(exc), traceback.format_exc()
        return ok, value, c.cumulative_usage(), time.perf_counter() - started, tb


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`RemoteItemError` with its type and message."""
    try:
        back = pickle.loads(_dumps(exc))
        if type(back) is type(exc):
            return exc
    except Exception:
        pass
    return RemoteItemError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))


_SPECS: dict[str, _Spec] = {}
_SPECS_LOCK = threading.Lock()
_SPECS_KEPT = 8


def _spec_for(key: str, spec_bytes: bytes) -> _Spec:
    """The batch's spec in this worker process, unpickled on first use."""
    with _SPECS_LOCK:
        spec = _SPECS.get(key)
        if spec is None:
            spec = pickle.loads(spec_bytes)
            _SPECS[key] = spec
            while len(_SPECS) > _SPECS_KEPT:
                _SPECS.pop(next(iter(_SPECS)))
        return spec


def _run_on_dask(key: str, spec_bytes: bytes, payload: tuple) -> tuple:
    """A Dask task: one item. It secedes from the worker's thread pool, as it waits on the network."""
    try:
        from distributed import secede

        secede()
    except (ImportError, ValueError):  # not on a Dask worker (a local test of this function)
        pass
    return _spec_for(key, spec_bytes).run(payload)


class _RayWorker:
    """A Ray actor that runs items of one batch on its threads (``max_concurrency``)."""

    def __init__(self, key: str, spec_bytes: bytes) -> None:
        self._spec = _spec_for(key, spec_bytes)

    def run(self, payload: tuple) -> tuple:
        return self._spec.run(payload)


# --- engines: where items run ------------------------------------------------------------

class _Threads:
    """Items run on this process's threads, as sub-convos of the batch convo."""

    name = "threads"
    remote = False

    def start(self, spec: _Spec, key: str, max_workers: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Dask:
    name = "dask"
    remote = True

    def __init__(self, client: Any) -> None:
        self.client = client
        self._spec = None
        self._key = ""

    def start(self, spec: _Spec, key: str, max_workers: int) -> None:
        self._key = key
        self._spec = self.client.scatter(_dumps(spec), broadcast=True, hash=False)

    def submit(self, payload: tuple) -> Any:
        return self.client.submit(_run_on_dask, self._key, self._spec, payload, pure=False)

    @staticmethod
    def result(handle: Any) -> tuple:
        return handle.result()

    @staticmethod
    def cancel(handle: Any) -> None:
        handle.cancel()

    def close(self) -> None:
        spec, self._spec = self._spec, None
        if spec is not None:
            try:
                spec.release()
            except Exception:  # the client may be closing; the scattered bytes go with it
                pass


class _Ray:
    name = "ray"
    remote = True

    def __init__(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigurationError("executor='ray' needs Ray: pip install 'convo[ray]'") from None
        if not ray.is_initialized():
            raise ConfigurationError("executor='ray' runs on the Ray cluster this process is connected to: "
                                     "call ray.init(...) first")
        self.ray = ray
        self._actors: list = []
        self._turn = itertools.count()

    def start(self, spec: _Spec, key: str, max_workers: int) -> None:
        ray = self.ray
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        n = max(1, min(max_workers, cpus))
        actor = ray.remote(_RayWorker)
        spec_bytes = _dumps(spec)
        # The actors wait on the network, not the CPU: they hold no CPU and run many calls each.
        self._actors = [actor.options(num_cpus=0, max_concurrency=math.ceil(max_workers / n),
                                      scheduling_strategy="SPREAD").remote(key, spec_bytes) for _ in range(n)]

    def submit(self, payload: tuple) -> Any:
        actor = self._actors[next(self._turn) % len(self._actors)]
        return actor.run.remote(payload)

    def result(self, handle: Any) -> tuple:
        return self.ray.get(handle)

    def cancel(self, handle: Any) -> None:
        self.ray.cancel(handle)

    def close(self) -> None:
        actors, self._actors = self._actors, []
        for actor in actors:
            try:
                self.ray.kill(actor)
            except Exception:  # the cluster may be going away; the actors go with it
                pass


def _engine_for(executor: Any) -> Any:
    if executor is None or executor == "threads":
        return _Threads()
    if executor == "ray":
        return _Ray()
    module = type(executor).__module__ or ""
    if module.split(".")[0] == "distributed" and callable(getattr(executor, "submit", None)) \
            and callable(getattr(executor, "scatter", None)):
        return _Dask(executor)
    raise ConfigurationError(f"executor must be None (threads), a Dask distributed.Client or 'ray', "
                             f"got {executor!r}")


# --- the progress bar -----------------------------------------------------------------------

def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        log.info("batch_progress_unavailable", hint="pip install 'convo[batch]' for a progress bar")
        return None
    return tqdm(total=total, initial=initial, desc="batch", unit="item", dynamic_ncols=True)


# --- the run ---------------------------------------------------------------------------------

_EXIT = object()


class _Run:
    """One call of :func:`batch`: its workers, its budget check and its bookkeeping."""

    def __init__(self, *, items: list, keys: list[str], pending: list[int], task: Any, output: Output | None,
                 node: Convo, engine: Any, limit: Decimal | None, max_workers: int) -> None:
        self.items = items
        self.keys = keys
        self.pending = pending
        self.task = task
        self.output = output
        self.node = node
        self.engine = engine
        self.limit = limit
        self.max_workers = max_workers
        self.lock = threading.Lock()
        self.next = 0
        self.stopping = False
        self.stopped_by: BudgetExceeded | None = None
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.inflight: dict[int, Any] = {}
        self.above = {c.id for c in node._chain}  # the convos whose budgets every item shares

    # --- worker threads

    def take(self) -> int | None:
        """The next item to start, or None: all started, stopping, or a budget spent."""
        with self.lock:
            if self.stopping or self.next >= len(self.pending):
                return None
            blocked = self.blocked()
            if blocked is not None:
                self.stopping, self.stopped_by = True, blocked
                return None
            index = self.pending[self.next]
            self.next += 1
            return index

    def blocked(self) -> BudgetExceeded | None:
        if self.limit is not None:
            spent = self.node.cumulative_usage().total_cost_usd
            if spent >= self.limit:
                return BudgetExceeded(self.node.id, spent, self.limit)
        return self.node.over_budget()

    def work(self) -> None:
        try:
            while (index := self.take()) is not None:
                outcome = self.run_remote(index) if self.engine.remote else self.run_local(index)
                if isinstance(outcome.error, BudgetExceeded) and outcome.error.convo_id in self.above:
                    # A request refused by the budget of the batch or an ancestor: the next items would be too.
                    with self.lock:
                        self.stopping = True
                        self.stopped_by = self.stopped_by or outcome.error
                self.done.put(outcome)
        except BaseException as exc:  # KeyboardInterrupt or SystemExit from a task: the caller re-raises it
            with self.lock:
                self.stopping = True
            self.done.put(exc)
        finally:
            self.done.put(_EXIT)

    def run_local(self, index: int) -> ItemOutcome:
        c = self.node.sub_convo()
        started = time.perf_counter()
        try:
            value = _execute(self.task, self.output, self.items[index], c)
        except Exception as exc:
            return self.outcome(index, ItemStatus.FAILED, c, started, error=exc)
        return self.outcome(index, ItemStatus.DONE, c, started, value=value)

    def run_remote(self, index: int) -> ItemOutcome:
        c = self.node.sub_convo()
        started = time.perf_counter()
        try:
            handle = self.engine.submit((index, self.items[index], c.id))
        except Exception as exc:  # the item did not pickle, the client is closed...
            return self.outcome(index, ItemStatus.FAILED, c, started, error=exc)
        with self.lock:
            self.inflight[index] = handle
        try:
            ok, value, usage, _, tb = self.engine.result(handle)
        except Exception as exc:  # the worker died, or the task was cancelled: what it spent is unknown
            return self.outcome(index, ItemStatus.FAILED, c, started, error=exc)
        finally:
            with self.lock:
                self.inflight.pop(index, None)
        c._absorb_usage(usage)
        if ok:
            return self.outcome(index, ItemStatus.DONE, c, started, value=value)
        return self.outcome(index, ItemStatus.FAILED, c, started, error=value, tb=tb)

    def outcome(self, index: int, status: ItemStatus, c: Convo, started: float, *, value: Any = None,
                error: BaseException | None = None, tb: str | None = None) -> ItemOutcome:
        return ItemOutcome(index, self.items[index], self.keys[index], status, value, error, c.cumulative_usage(),
                           c.id, time.perf_counter() - started, tb)

    # --- the caller's thread

    def go(self, on_outcome: Callable[[ItemOutcome], None]) -> None:
        """Run the pending items; ``on_outcome`` sees each finished one, on this thread."""
        n = min(self.max_workers, len(self.pending))
        threads = []
        for _ in range(n):
            ctx = contextvars.copy_context()  # each thread carries the caller's context (a tool call's, say)
            threads.append(threading.Thread(target=ctx.run, args=(self.work,), name="convo-batch", daemon=True))
        for t in threads:
            t.start()
        exited = 0
        raised: BaseException | None = None
        try:
            while exited < n:
                message = self.done.get()
                if message is _EXIT:
                    exited += 1
                elif isinstance(message, BaseException):
                    raised = raised or message
                    self.interrupt("a task raised " + type(message).__name__)
                else:
                    on_outcome(message)
        except BaseException:
            self.interrupt("the batch was interrupted")
            self.drain(on_outcome, threads)
            raise
        if raised is not None:
            raise raised

    def interrupt(self, reason: str) -> None:
        """Start nothing more; cancel what is running (local convos, and remote tasks)."""
        with self.lock:
            self.stopping = True
            handles = list(self.inflight.values())
        self.node.cancel(reason)
        for handle in handles:
            try:
                self.engine.cancel(handle)
            except Exception:  # best effort: the task may have finished, or the cluster gone
                pass

    def drain(self, on_outcome: Callable[[ItemOutcome], None], threads: list, wait: float = 2.0) -> None:
        """After an interrupt: record what finishes within ``wait`` seconds (cancelled items finish fast)."""
        deadline = time.monotonic() + wait
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                message = self.done.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, ItemOutcome):
                try:
                    on_outcome(message)
                except Exception:
                    log.exception("batch_record_failed", index=message.index)


# --- the public function -------------------------------------------------------------------

def batch(items: Iterable[Any], task: Callable[[Any, Convo], Any] | str, *, max_workers: int = DEFAULT_MAX_WORKERS,
          budget: Any = None, parent: Convo | None = None, progress: bool = True, executor: Any = None,
          store: BatchStore | None = None, batch_id: str | None = None, output: Any = None) -> BatchResult:
    """Run ``task`` over every item, each on its own conversation; the results in input order.

    Args:
        items: the items (any iterable; it is read once, up front).
        task: what to do with each item: a callable ``task(item, convo)``
            whose return value is the item's result, or a prompt template
            (``"Label this review: {item}"``, formatted with ``item=``)
            whose result is the reply's text, or with ``output=`` the reply
            as that type.
        max_workers: how many items run at once.
        budget: dollars (a number, a Decimal or a :class:`~convo.Budget`)
            after which no more items start. Items already running finish,
            so the batch may spend more than ``budget``: at most what the
            items in flight when it was reached go on to spend, i.e. at most
            ``max_workers`` times the most one item costs. For a hard cap,
            give ``parent`` a budget too: each request of a local item then
            reserves its worst case against it and is refused when it might
            not fit (workers on Dask or Ray cannot reserve in this process:
            there an ancestor's budget, like ``budget``, is checked before
            each item starts). An item whose request a budget refused stops
            new items too. Counts this run only; resumed items cost nothing
            now.
        parent: the convo the items run under (as sub-convos of one batch
            convo below it), whose service, settings and budget they use and
            into which their usage rolls up. Default: a new ``Convo()``.
        progress: show a progress bar (``tqdm.auto``, so it renders in
            notebooks; on stderr in a terminal) with items, failures and
            dollars. Needs ``pip install 'convo[batch]'``; without tqdm
            there is no bar (and no error).
        executor: where items run: None (threads in this process), a Dask
            ``distributed.Client``, or ``"ray"`` (the cluster ``ray.init()``
            connected to). On Dask and Ray each item runs on a root convo of
            its own on a worker, given a copy of ``parent``'s service and
            request settings; listeners and MCP servers stay here. The task,
            the items, the output type and the results must pickle.
        store: where finished items are recorded (any object with
            :class:`BatchStore`'s two methods, such as ``convo.SQLiteStore``);
            a run with the same ``batch_id`` returns recorded results instead
            of running their items again. Results are stored as JSON (with
            ``output=``, or a task whose return annotation is a type ``@tool``
            understands, they are converted back); a result with no JSON form
            is not recorded, and its item runs again next time.
        batch_id: names the batch in the store. Default:
            :func:`default_batch_id`, a hash of the task (its name and code,
            or the template), the output type and the items.
        output: with a template ``task``, the type each reply is parsed into
            (anything ``Convo.run(output=...)`` takes).

    Returns:
        a :class:`BatchResult`: each slot holds the item's result or the
        exception that stopped it; failures never stop the other items.

    Raises:
        ConfigurationError: an argument that cannot work (checked before
            anything runs), or a parent's service that cannot be sent to
            the executor's workers.
        KeyboardInterrupt: raised again once running items are cancelled
            and what finished is recorded in the store.

    A record in the store is ``{"format", "status": "done" | "failed",
    "result", "usage", "error", "convo_id", "seconds", "finished_at"}``;
    only ``done`` records are reused.

    Thread-safe: batches may run from several threads at once, under one
    parent or several; each has its own batch convo.
    """
    items = list(items)
    _check(task, max_workers, parent, store, batch_id, output, progress)
    spec_output = Output.of(output) if output is not None else None
    limit = _budget_limit(budget)
    engine = _engine_for(executor)
    keys = _item_keys(items)
    if batch_id is None:
        batch_id = _batch_id(task, spec_output, keys)
    codec = _codec(task, spec_output)
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    if store is not None:
        for i, key in enumerate(keys):
            outcomes[i] = _resumed(store, batch_id, i, items[i], key, codec)
    pending = [i for i, o in enumerate(outcomes) if o is None]

    base = parent if parent is not None else Convo()
    node = base.sub_convo()
    spec = None
    if pending and engine.remote:
        spec = _Spec(task, spec_output, _shippable_service(node.service, engine.name), _request_settings(node),
                     {m: node.prices.lookup(m) for m in node.prices.models()})
    log.debug("batch_started", batch_id=batch_id, items=len(items), pending=len(pending), executor=engine.name,
              max_workers=max_workers, convo_id=node.id)
    bar = _progress_bar(len(items), len(items) - len(pending), progress)
    failed = 0
    unstored: list[int] = []

    def on_outcome(outcome: ItemOutcome) -> None:
        nonlocal failed
        outcomes[outcome.index] = outcome
        failed += outcome.status == ItemStatus.FAILED
        if store is not None:
            _record(store, batch_id, outcome, codec, unstored)
        if bar is not None:
            bar.set_postfix_str(f"failed={failed}, ${node.cumulative_usage().total_cost_usd:.4f}", refresh=False)
            bar.update(1)

    run = _Run(items=items, keys=keys, pending=pending, task=task, output=spec_output, node=node, engine=engine,
               limit=limit, max_workers=max_workers)
    try:
        if spec is not None:
            engine.start(spec, f"{batch_id}:{node.id}", max_workers)
        run.go(on_outcome)
    finally:
        engine.close()
        if bar is not None:
            bar.close()
    for i, o in enumerate(outcomes):
        if o is None:  # never started: a budget was spent
            stop = run.stopped_by or BudgetExceeded(node.id, node.cumulative_usage().total_cost_usd, limit or 0)
            outcomes[i] = ItemOutcome(i, items[i], keys[i], ItemStatus.NOT_STARTED, error=stop)
    if unstored:
        log.warning("batch_results_not_stored", batch_id=batch_id, items=unstored[:10], count=len(unstored),
                    hint="these results have no JSON form, so their items will run again")
    result = BatchResult(batch_id, outcomes, node.cumulative_usage())
    log.info("batch_done", batch_id=batch_id, convo_id=node.id, **result.counts(), cost_usd=str(result.cost_usd))
    return result


def _check(task: Any, max_workers: Any, parent: Any, store: Any, batch_id: Any, output: Any, progress: Any) -> None:
    if isinstance(task, str):
        if "item" not in _template_fields(task):
            raise ConfigurationError(f"a prompt template needs an {{item}} field, got {task!r}")
    elif not callable(task):
        raise ArgumentTypeError(f"task must be a callable task(item, convo) or a prompt template str, "
                                f"got {type(task).__name__}")
    elif output is not None:
        raise ConfigurationError("output= goes with a prompt template task; in a callable task, "
                                 "call convo.run(prompt, output=...) yourself")
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigurationError(f"max_workers must be a positive int, got {max_workers!r}")
    if parent is not None and not isinstance(parent, Convo):
        raise ArgumentTypeError(f"parent must be a convo.Convo, got {type(parent).__name__}")
    if store is not None and not (callable(getattr(store, "batch_get", None))
                                  and callable(getattr(store, "batch_put", None))):
        raise ArgumentTypeError(f"store must have batch_get() and batch_put() (convo.batch.BatchStore), "
                                f"got {type(store).__name__}")
    if batch_id is not None and (not isinstance(batch_id, str) or not batch_id):
        raise ConfigurationError(f"batch_id must be a non-empty str, got {batch_id!r}")
    if not isinstance(progress, bool):
        raise ArgumentTypeError(f"progress must be True or False, got {progress!r}")


def _budget_limit(budget: Any) -> Decimal | None:
    if budget is None:
        return None
    return (budget if isinstance(budget, Budget) else Budget(budget)).max_dollars


def _request_settings(c: Convo) -> dict:
    """The settings of ``c`` that shape a request, for a worker's convo."""
    return dict(max_tokens=c.max_tokens, temperature=c.temperature, thinking=c.thinking,
                prompt_caching=c.prompt_caching, max_tool_workers=c.max_tool_workers,
                max_tool_result_chars=c.max_tool_result_chars)


def _resumed(store: Any, batch_id: str, index: int, item: Any, key: str, codec: _Codec) -> ItemOutcome | None:
    record = store.batch_get(batch_id, key)
    if not isinstance(record, dict) or record.get("status") != "done" or "result" not in record:
        return None
    try:
        value = codec.from_json(record["result"])
        usage = CumulativeUsage.from_dict(record["usage"]) if record.get("usage") else None
    except Exception as exc:  # a record this code cannot read: run the item again
        log.warning("batch_record_unreadable", batch_id=batch_id, item_key=key, error=f"{type(exc).__name__}: {exc}")
        return None
    return ItemOutcome(index, item, key, ItemStatus.RESUMED, value, None, usage, record.get("convo_id"),
                       float(record.get("seconds") or 0.0))


def _record(store: Any, batch_id: str, outcome: ItemOutcome, codec: _Codec, unstored: list[int]) -> None:
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "status": str(outcome.status),
        "index": outcome.index,
        "result": None,
        "usage": outcome.usage.to_dict() if outcome.usage is not None else None,
        "error": None,
        "convo_id": outcome.convo_id,
        "seconds": round(outcome.seconds, 6),
        "finished_at": now().isoformat(),
    }
    if outcome.ok:
        try:
            data = codec.to_json(outcome.value)
            json.dumps(data)
            if data is _NO:
                raise TypeError("no JSON form")
        except (TypeError, ValueError, ConvoError):
            unstored.append(outcome.index)
            return
        record["result"] = data
    else:
        error = outcome.error
        record["error"] = {"type": f"{type(error).__module__}.{type(error).__qualname__}", "message": str(error)}
    try:
        store.batch_put(batch_id, outcome.key, record)
    except Exception as exc:  # losing a record costs a re-run of one item; losing the batch costs all of them
        log.warning("batch_store_failed", batch_id=batch_id, index=outcome.index,
                    error=f"{type(exc).__name__}: {exc}")
