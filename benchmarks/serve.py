"""``convo serve`` under load, side by side with its floor: the same turn through a local Convo.

    python benchmarks/serve.py            # about two minutes on 2 cores
    python benchmarks/serve.py --quick    # a smoke run, not figures to quote

Three processes besides this one, all on 127.0.0.1:

- the fake Messages API (``benchmarks/server.py``), answering every request
  with a short text reply, as JSON;
- ``convo serve --model claude-sonnet-4-5 --store memory://`` (and, for one
  row, a SQLite store), pointed at the fake with ``ANTHROPIC_BASE_URL``;
- the load generator: this file run with ``--generate``, an asyncio
  ``websockets`` client (one connection per session, no compression, no
  pings), so the client side costs little. It speaks the protocol as the
  TypeScript SDK does: ``init``, then bare ``user`` frames, and times each
  turn from sending ``user`` to receiving ``result``.

The floor runs here: one local ``Convo`` per session on its own thread,
sharing one ``AnthropicService``, sending the same turn to the same fake
(one more row: the floor saving every turn to a MemoryStore, as the
server's sessions do).

A turn is one user message and one model reply. Sessions are paced: after
each turn a session waits a random think time (uniform, mean 20 ms for one
session, 1 s for 50, 2 s for 500: 50, 50 and 250 turns a second offered),
the same for the floor, so the figures are turn latency under a realistic
load, not a saturated queue. The saturated throughput (50 sessions, no
think time) is printed too. Every session has its
own user and a token with a budget, so every turn also reserves and settles
dollars in the store's counters.

Memory: 2,000 sessions connect, send ``init`` and stay idle; the server's
RSS (psutil) is read before and after.

Results: printed, and written to benchmarks/results/serve-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "claude-sonnet-4-5"
API_KEY = "sk-ant-bench-not-a-real-key"
PROMPT = "Say hello, please."


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _summary(latencies: list[float]) -> dict:
    ms = [x * 1000 for x in latencies]
    return {"n": len(ms), "p50_ms": _pct(ms, 0.5), "p90_ms": _pct(ms, 0.9), "p99_ms": _pct(ms, 0.99),
            "mean_ms": statistics.fmean(ms) if ms else float("nan")}


# --- the load generator (a separate process) ----------------------------------------------------


async def _generate(config: dict) -> dict:
    from websockets.asyncio.client import connect

    url, tokens = config["url"], config["tokens"]
    turns, think, idle = config["turns"], config["think"], config.get("idle", False)
    latencies: list[float] = []
    errors: list[str] = []
    ready = asyncio.Event()
    opened = [0]
    user = json.dumps({"type": "user", "session_id": "unknown", "message": {"role": "user", "content": PROMPT}})

    async def session(tok: str) -> None:
        try:
            async with connect(f"{url}?token={tok}", compression=None, ping_interval=None, max_size=2 ** 22,
                               open_timeout=60) as ws:
                await ws.recv()  # ready
                await ws.send('{"type":"init","payload":{}}')
                await ws.recv()  # session_info
                opened[0] += 1
                if opened[0] == len(tokens):
                    ready.set()
                    Path(config["out"] + ".ready").write_text(str(opened[0]))
                if idle:
                    await asyncio.sleep(config["hold"])
                    return
                await ready.wait()
                await asyncio.sleep(random.uniform(0, 2 * think))  # spread the starts
                for _ in range(turns):
                    began = time.perf_counter()
                    await ws.send(user)
                    while True:
                        text = await ws.recv()
                        if text.startswith('{"type":"result"'):
                            break
                        if text.startswith('{"type":"error"'):
                            errors.append(text[:200])
                            break
                    latencies.append(time.perf_counter() - began)
                    if '"subtype":"success"' not in text and text.startswith('{"type":"result"'):
                        errors.append(text[:200])
                    if think:
                        await asyncio.sleep(random.uniform(0, 2 * think))
        except Exception as exc:  # counted, not fatal: the figure to report is how many
            errors.append(f"{type(exc).__name__}: {exc}")

    began = time.perf_counter()
    await asyncio.gather(*(session(t) for t in tokens))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - began}


def generate_main(path: str) -> None:
    config = json.loads(Path(path).read_text())
    out = asyncio.run(_generate(config))
    Path(config["out"]).write_text(json.dumps(out))


# --- the runner ---------------------------------------------------------------------------------


def _start_fake() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), "--exit-with-stdin"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


class Serve:
    """``convo serve`` in its own process."""

    def __init__(self, fake_port: int, store: str, secret: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
        env.update(CONVO_SERVER_SECRET=secret, ANTHROPIC_API_KEY=API_KEY,
                   ANTHROPIC_BASE_URL=f"http://127.0.0.1:{fake_port}")
        self.proc = subprocess.Popen([sys.executable, "-m", "convo.cli", "serve", "--port", "0", "--model", MODEL,
                                      "--store", store, "--max-sessions-per-user", "100000"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        self.url = line.split("listening on ", 1)[1].split()[0]

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2 ** 20

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _tokens(n: int, secret: str, tag: str) -> list[str]:
    from convo.remote import create_budget, create_token

    return [create_token(f"{tag}-{i}", "bench", secret, create_budget(1000, 1000)) for i in range(n)]


def run_load(url: str, tokens: list[str], turns: int, think: float, *, idle: bool = False, hold: float = 0,
             on_idle=None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="convo-serve-bench-"))
    config = {"url": url, "tokens": tokens, "turns": turns, "think": think, "idle": idle, "hold": hold,
              "out": str(folder / "out.json")}
    (folder / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, __file__, "--generate", str(folder / "config.json")])
    if on_idle is not None:
        on_idle(proc, Path(config["out"] + ".ready"))
    proc.wait(timeout=600)
    return json.loads((folder / "out.json").read_text())


def run_floor(sessions: int, turns: int, think: float, fake_port: int, *, store: bool = False) -> dict:
    """The same turns through local Convos (one per session, each on its own thread), one shared service.

    ``store``: every Convo saves its turns to one shared MemoryStore, as the server's sessions do.
    """
    from convo import AnthropicService, Convo, MemoryStore

    shared = MemoryStore() if store else None

    service = AnthropicService(MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{fake_port}")
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(sessions)

    def work() -> None:
        c = Convo(service, store=shared)
        barrier.wait()
        time.sleep(random.uniform(0, 2 * think))
        mine = []
        for _ in range(turns):
            began = time.perf_counter()
            c.send(PROMPT)
            mine.append(time.perf_counter() - began)
            if think:
                time.sleep(random.uniform(0, 2 * think))
        with lock:
            latencies.extend(mine)

    Convo(service).send(PROMPT)  # warm the connection pool
    began = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {"latencies": latencies, "seconds": time.perf_counter() - began}
    service.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--generate", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_main(args.generate)
        return
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    secret = secrets.token_hex(32)
    fake, fake_port = _start_fake()
    quick = args.quick
    plan = [(1, 60 if quick else 300, 0.02), (50, 4 if quick else 12, 1.0), (500, 2 if quick else 4, 2.0)]
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(), "rows": []}
    try:
        serve = Serve(fake_port, "memory://", secret)
        try:
            run_load(serve.url, _tokens(4, secret, "warm"), 5, 0.0)  # warm up threads and imports
            for sessions, turns, think in plan:
                served = run_load(serve.url, _tokens(sessions, secret, f"s{sessions}"), turns, think)
                floor = run_floor(sessions, turns, think, fake_port)
                row = {"sessions": sessions, "turns_each": turns, "think_s": think,
                       "serve": _summary(served["latencies"]), "floor": _summary(floor["latencies"]),
                       "errors": len(served["errors"]), "error_samples": served["errors"][:3]}
                row["added_p50_ms"] = row["serve"]["p50_ms"] - row["floor"]["p50_ms"]
                results["rows"].append(row)
            n = 50
            saturated = run_load(serve.url, _tokens(n, secret, "sat"), 10 if quick else 40, 0.0)
            floor_sat = run_floor(n, 10 if quick else 40, 0.0, fake_port)
            stored = run_floor(50, 4 if quick else 12, 1.0, fake_port, store=True)
            results["floor_with_store_50"] = _summary(stored["latencies"])
            results["saturated"] = {"sessions": n, "serve_turns_per_s": len(saturated["latencies"]) / saturated["seconds"],
                                    "floor_turns_per_s": len(floor_sat["latencies"]) / floor_sat["seconds"],
                                    "errors": len(saturated["errors"])}
            before = serve.rss_mib()
            idle_n = 200 if quick else 2000
            measured = {}

            def measure(proc, ready: Path) -> None:
                deadline = time.monotonic() + 120
                while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(2.0)  # every session open, its init answered: let the server settle
                measured["rss"] = serve.rss_mib()
                measured["opened"] = int(ready.read_text()) if ready.exists() else 0

            idle = run_load(serve.url, _tokens(idle_n, secret, "idle"), 0, 0.0, idle=True, hold=20 if quick else 40,
                            on_idle=measure)
            results["idle"] = {"sessions": measured["opened"], "rss_before_mib": before,
                               "rss_with_idle_mib": measured["rss"],
                               "per_session_kib": (measured["rss"] - before) * 1024 / max(1, measured["opened"]),
                               "errors": len(idle["errors"])}
        finally:
            serve.close()
        serve = Serve(fake_port, f"sqlite:///{tempfile.mkdtemp(prefix='convo-serve-bench-')}/bench.db", secret)
        try:
            sessions, turns, think = 50, 4 if quick else 12, 1.0
            served = run_load(serve.url, _tokens(sessions, secret, "sq"), turns, think)
            results["sqlite_50"] = {"serve": _summary(served["latencies"]), "errors": len(served["errors"])}
        finally:
            serve.close()
    finally:
        fake.stdin.close()
        fake.wait(timeout=10)
    _print(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve-latest.json").write_text(json.dumps(results, indent=2))


def _print(results: dict) -> None:
    print(f"\nconvo serve against a local Convo (the floor), fake Messages API on 127.0.0.1, {results['cpus']} CPUs")
    print(f"{'sessions':>8} {'turns':>6} {'serve p50':>10} {'p90':>8} {'p99':>8} {'floor p50':>10} {'p90':>8} "
          f"{'added p50':>10} {'errors':>7}")
    for r in results["rows"]:
        s, f = r["serve"], r["floor"]
        print(f"{r['sessions']:>8} {s['n']:>6} {s['p50_ms']:>8.2f}ms {s['p90_ms']:>6.2f}ms {s['p99_ms']:>6.2f}ms "
              f"{f['p50_ms']:>8.2f}ms {f['p90_ms']:>6.2f}ms {r['added_p50_ms']:>8.2f}ms {r['errors']:>7}")
    sat = results["saturated"]
    print(f"saturated, {sat['sessions']} sessions, no think time: serve {sat['serve_turns_per_s']:.0f} turns/s, "
          f"floor {sat['floor_turns_per_s']:.0f} turns/s, errors {sat['errors']}")
    fs = results["floor_with_store_50"]
    print(f"floor with a MemoryStore saving every turn, 50 sessions: p50 {fs['p50_ms']:.2f} ms, p90 {fs['p90_ms']:.2f} ms")
    sq = results["sqlite_50"]["serve"]
    print(f"50 sessions with a SQLite store: p50 {sq['p50_ms']:.2f} ms, p90 {sq['p90_ms']:.2f} ms, "
          f"errors {results['sqlite_50']['errors']}")
    idle = results["idle"]
    print(f"{idle['sessions']} idle sessions: server RSS {idle['rss_before_mib']:.1f} MiB -> "
          f"{idle['rss_with_idle_mib']:.1f} MiB ({idle['per_session_kib']:.1f} KiB a session), errors {idle['errors']}")


if __name__ == "__main__":
    main()
