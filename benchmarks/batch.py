"""Measure convo.batch against a bare thread pool and pydantic-ai, and the Dask executor's cost per item.

    python benchmarks/batch.py               # everything, about three minutes on 2 cores
    python benchmarks/batch.py --quick       # 200 items, one round: a smoke run, not figures to quote
    python benchmarks/batch.py --json out.json

1,000 items, one request each, against the fake Messages API server
(benchmarks/server.py, its own process) answering after 200 ms:

- ``ThreadPoolExecutor`` (the floor): 64 threads calling one shared
  ``AnthropicService.do`` with a one-message request, nothing else;
- ``convo.batch``: 64 workers, each item a sub-convo sending one message
  (history, pricing, usage rolled up into the parent, budget checks, results
  in order); once more with the progress bar drawn (to a buffer);
- pydantic-ai: 1,000 ``Agent.run`` coroutines under an ``asyncio.Semaphore(64)``
  in one ``asyncio.run``: its natural way to run many at once.

The ideal is 16 rounds of 200 ms, 3.2 s. Clients alternate, three rounds
each, median. Then the Dask executor on a LocalCluster (two worker processes)
against the same server: with the 200 ms latency, and with none (the server
answering at once), where the wall time per item is the executor's cost,
shown next to threads' for the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import logging
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This folder is sys.path[0] when the script runs, and its modules (mcp.py) would shadow
# packages of the same name that pydantic-ai imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import convo  # noqa: E402
from convo import AnthropicService, Convo, Message, Request  # noqa: E402

MODEL = "claude-haiku-4-5"
API_KEY = "sk-ant-bench-not-a-real-key"
MAX_TOKENS = 256
WORKERS = 64
LATENCY = 0.2


def _server_process():
    """benchmarks/run.py's ServerProcess (loaded by path: this folder is not importable as a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServerProcess


def service(url: str) -> AnthropicService:
    return AnthropicService(MODEL, api_key=API_KEY, base_url=url, max_tokens=MAX_TOKENS)


def send_item(item, c: Convo) -> str:
    return c.send(f"Item {item}: say hello.").text()


# --- the clients ---------------------------------------------------------------------

def floor(url: str, n: int) -> list:
    with service(url) as s, ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda i: s.do(Request([Message.user(f"Item {i}: say hello.")])).text(), range(n)))


def convo_batch(url: str, n: int, *, progress: bool = False, executor=None) -> list:
    with service(url) as s:
        lead = Convo(s)
        sink = io.StringIO()
        with contextlib.redirect_stderr(sink):  # the bar, when drawn, goes to the buffer
            result = convo.batch(range(n), send_item, parent=lead, max_workers=WORKERS, progress=progress,
                                 executor=executor)
        assert result.ok, result.errors
        assert lead.cumulative_usage().responses == n
        if progress:
            assert f"{n}/{n}" in sink.getvalue()
        return list(result)


def _dask_do(i: int, url: str) -> str:
    """One item as a bare Dask task: the worker's own AnthropicService, one request."""
    from distributed import get_worker, secede

    secede()  # as convo's executor does: the task waits on the network, not the CPU
    worker = get_worker()
    if not hasattr(worker, "_bench_services"):
        worker._bench_services = {}
    s = worker._bench_services.get(url)
    if s is None:
        s = worker._bench_services[url] = service(url)
    return s.do(Request([Message.user(f"Item {i}: say hello.")])).text()


def dask_floor(url: str, n: int, client) -> list:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda i: client.submit(_dask_do, i, url, pure=False).result(), range(n)))


def pydantic_ai(url: str, n: int) -> list:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    model = AnthropicModel(MODEL, provider=AnthropicProvider(api_key=API_KEY, base_url=url))
    agent = Agent(model, model_settings={"max_tokens": MAX_TOKENS})

    async def main() -> list:
        gate = asyncio.Semaphore(WORKERS)

        async def one(i: int) -> str:
            async with gate:
                return (await agent.run(f"Item {i}: say hello.")).output

        return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(main())


# --- measuring ------------------------------------------------------------------------

def timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    elapsed = time.perf_counter() - started
    assert len(out) == args[-1]
    return elapsed


def table(title: str, header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [title, "  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths)),
             "  " + "  ".join("-" * w for w in widths)]
    lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 items, one round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    n = 200 if args.quick else 1000
    rounds = 1 if args.quick else 3
    # As an application would: convo's debug and info events are dropped.
    logging.basicConfig(level=logging.WARNING)
    ServerProcess = _server_process()
    figures: dict = {"items": n, "workers": WORKERS, "latency_s": LATENCY, "python": platform.python_version()}
    started = time.perf_counter()

    clients = {
        "ThreadPoolExecutor + AnthropicService (floor)": lambda url: timed(floor, url, n),
        "convo.batch": lambda url: timed(convo_batch, url, n),
        "convo.batch, progress bar drawn": lambda url: timed(lambda u, k: convo_batch(u, k, progress=True), url, n),
        "pydantic-ai, asyncio.gather": lambda url: timed(pydantic_ai, url, n),
    }
    times: dict[str, list[float]] = {name: [] for name in clients}
    with ServerProcess("--latency", str(LATENCY)) as server:
        for name, run in clients.items():  # warm-up: imports, connection pools
            run(server.url)
        for _ in range(rounds):
            for name, run in clients.items():
                times[name].append(run(server.url))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["ThreadPoolExecutor + AnthropicService (floor)"]
    ours = medians["convo.batch"]
    rows = [(name, f"{m:.2f} s", f"{n / m:.0f} items/s", f"{m / base:.3f}x", f"{ours / m:.2f}x")
            for name, m in medians.items()]
    print(table(f"1. {n} items, one request each, 200 ms latency, {WORKERS} at once (ideal "
                f"{-(-n // WORKERS) * LATENCY:.1f} s; median of {rounds})",
                ("client", "wall", "throughput", "x floor", "convo / this"), rows))
    figures["latency_200ms"] = {name: {"median_s": m, "runs_s": times[name]} for name, m in medians.items()}

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)  # here: importing distributed sets its own
    dask_rows = []
    figures["dask"] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        for latency in (LATENCY, 0.0):
            with ServerProcess("--latency", str(latency)) as server:
                convo_batch(server.url, WORKERS, executor=client)  # warm-up: workers import convo
                dask_floor(server.url, WORKERS, client)
                runs: dict[str, list[float]] = {"threads": [], "bare": [], "dask": []}
                for _ in range(rounds):
                    runs["threads"].append(timed(convo_batch, server.url, n))
                    runs["bare"].append(timed(lambda u, k: dask_floor(u, k, client), server.url, n))
                    runs["dask"].append(timed(lambda u, k: convo_batch(u, k, executor=client), server.url, n))
            t, b, d = (statistics.median(runs[k]) for k in ("threads", "bare", "dask"))
            label = f"{latency * 1000:.0f} ms"
            dask_rows.append((label, f"{t:.2f} s", f"{b:.2f} s", f"{d:.2f} s", f"{t / n * 1e6:.0f} us",
                              f"{b / n * 1e6:.0f} us", f"{d / n * 1e6:.0f} us", f"{d / b:.2f}x"))
            figures["dask"][label] = runs
    print()
    print(table(f"2. Dask (LocalCluster, 2 worker processes), {n} items, {WORKERS} at once: convo.batch on threads, "
                f"bare Dask tasks (client.submit per item from {WORKERS} threads, AnthropicService.do on the "
                f"worker), and convo.batch(executor=client) (median of {rounds})",
                ("latency", "threads", "bare dask", "convo dask", "threads/item", "bare dask/item",
                 "convo dask/item", "convo dask / bare dask"),
                dask_rows))
    total = time.perf_counter() - started
    print(f"\nTotal {total:.0f} s; Python {platform.python_version()}, convo {convo.__version__}.")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
