"""Measure what a store adds to a turn, and what resuming costs: convo's stores against openai-agents' SQLiteSession.

    python benchmarks/stores.py              # everything, about a minute
    python benchmarks/stores.py --quick      # fewer iterations, for a smoke run
    python benchmarks/stores.py --json out.json

For each store, side by side in one run: appending one turn (a user and an
assistant message of about 1.5 KB each) to a conversation of 10 messages
and to one of 1,000, and loading (resuming) a 1,000-message conversation.
convo's stores are measured through ``store.write`` / ``store.load`` (the
calls a Convo makes), and once more through a whole ``Convo.send`` with a
ScriptedService. Redis and PostgreSQL are real servers on 127.0.0.1, started
here as the tests start them (tests/store_servers.py) and removed at the end;
PostgreSQL keeps its durable defaults (fsync on, synchronous_commit on).

openai-agents' ``SQLiteSession`` is async: a sync caller drives it either
with ``asyncio.run`` per operation (a new loop, and a new worker thread with
a new SQLite connection, every time) or with one long-lived loop
(``loop.run_until_complete``, its executor one thread, so each session keeps
one connection); both are shown, and ratios are taken against the cheaper.
It ships with SQLite's default ``synchronous=FULL`` (an fsync per commit;
SQLiteStore uses ``NORMAL`` in WAL mode), so a third row shows it with
``NORMAL`` too. Its ``add_items`` / ``get_items`` get the same texts as
Responses API items. benchmarks/README.md has the figures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This folder is sys.path[0] when the script runs, and its modules (mcp.py) would shadow
# the packages of the same name that openai-agents imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import convo  # noqa: E402
from convo import Convo, CumulativeUsage, Message, MemoryStore, SQLiteStore, Usage  # noqa: E402
from convo.testing import ScriptedService, reply  # noqa: E402

MESSAGE_CHARS = 1500

_WORDS = ("the store keeps every turn of a conversation so that another process can resume it later with "
          "its history usage budget and settings exactly as they were while the model answers questions "
          "about invoices shipping dates refunds and the weather in several cities").split()


def text(seed: int) -> str:
    """About MESSAGE_CHARS characters of prose, different for each seed."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < MESSAGE_CHARS:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def turn_messages(seed: int) -> list[Message]:
    return [Message.user(text(2 * seed)), Message.assistant(text(2 * seed + 1))]


def turn_items(seed: int) -> list[dict]:
    """The same turn as Responses API input items, as an agents app would store them."""
    return [{"role": "user", "content": text(2 * seed)},
            {"type": "message", "role": "assistant", "status": "completed", "id": f"msg_{seed}",
             "content": [{"type": "output_text", "text": text(2 * seed + 1), "annotations": []}]}]


def realistic_state() -> tuple[dict, CumulativeUsage]:
    """The state dict and usage a Convo writes with each turn (about 1 KB), taken from a real Convo."""
    store = MemoryStore()
    c = Convo(ScriptedService(default=reply("ok", usage=Usage(input_tokens=1200, output_tokens=300))),
              store=store, system_prompt="You are a helpful support agent. Answer briefly.", max_tokens=1024)
    c.send("hello")
    stored = store.load(c.id)
    return stored.state, stored.usage


# --- subjects: one per store ----------------------------------------------------------------


class StoreSubject:
    """A convo store, driven through store.write / store.load."""

    def __init__(self, name: str, store: Any) -> None:
        self.name = name
        self.store = store
        self.state, self.usage = realistic_state()
        self.versions: dict[str, tuple[int, int]] = {}

    def create(self, cid: str, messages: int, seed: int) -> None:
        history = [m for k in range(messages // 2) for m in turn_messages(seed * 10_000 + k)]
        for start in range(0, len(history), 200):  # a long history is written in a few big steps
            version, count = self.versions.get(cid, (0, 0))
            chunk = history[start:start + 200]
            self.versions[cid] = (self._write(cid, version, count, chunk), count + len(chunk))

    def _write(self, cid: str, version: int, keep: int, append: list[Message]) -> int:
        return self.store.write(cid, expected_version=version, parent_id=None, root_id=cid, state=self.state,
                                usage=self.usage, keep=keep, append=append)

    def append(self, cid: str, turn: list[Message], items: list[dict]) -> None:
        version, count = self.versions[cid]
        self.versions[cid] = (self._write(cid, version, count, turn), count + 2)

    def load(self, cid: str) -> int:
        return len(self.store.load(cid).messages)

    def close(self) -> None:
        self.store.close()


class SessionSubject:
    """openai-agents' SQLiteSession on a file, driven from sync code by ``run`` (asyncio.run or one loop)."""

    def __init__(self, name: str, path: Path, mode: str, synchronous_normal: bool = False) -> None:
        from agents import SQLiteSession

        self.name = name
        self.path = path
        self.mode = mode
        self.sessions: dict[str, Any] = {}
        self.loop = None
        if mode == "loop":
            # One worker thread: SQLiteSession keeps a connection per session per thread, so
            # with the default pool of several threads an append could pay for opening one.
            self.loop = asyncio.new_event_loop()
            self.loop.set_default_executor(ThreadPoolExecutor(1))
        self.cls = SQLiteSession
        if synchronous_normal:
            class NormalSync(SQLiteSession):
                @staticmethod
                def _configure_connection(conn):
                    SQLiteSession._configure_connection(conn)
                    conn.execute("PRAGMA synchronous=NORMAL")

            self.cls = NormalSync

    def run(self, coroutine):
        if self.loop is not None:
            return self.loop.run_until_complete(coroutine)
        return asyncio.run(coroutine)

    def session(self, cid: str):
        if cid not in self.sessions:
            self.sessions[cid] = self.cls(cid, self.path)
        return self.sessions[cid]

    def create(self, cid: str, messages: int, seed: int) -> None:
        items = [i for k in range(messages // 2) for i in turn_items(seed * 10_000 + k)]
        self.run(self.session(cid).add_items(items))

    def append(self, cid: str, turn: list[Message], items: list[dict]) -> None:
        self.run(self.session(cid).add_items(items))

    def load(self, cid: str) -> int:
        return len(self.run(self.session(cid).get_items()))

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()
        if self.loop is not None:
            self.loop.close()


# --- measuring ----------------------------------------------------------------------------------


def summarise(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    q = statistics.quantiles(s, n=10)
    return {"median_us": statistics.median(s) / 1000, "p10_us": q[0] / 1000, "p90_us": q[-1] / 1000, "n": len(s)}


def interleaved(subjects: list, op: Callable[[Any, int], Callable[[], Any]], n: int, chunk: int = 10) -> dict:
    """Run ``op(subject, i)`` n times per subject, the subjects taking turns in chunks; per-call times."""
    times: dict[str, list[int]] = {s.name: [] for s in subjects}
    for start in range(0, n, chunk):
        for s in subjects:
            for i in range(start, min(start + chunk, n)):
                call = op(s, i)
                t0 = time.perf_counter_ns()
                call()
                times[s.name].append(time.perf_counter_ns() - t0)
    return {name: summarise(t) for name, t in times.items()}


def bench_append(subjects: list, size: int, conversations: int, appends_each: int) -> dict:
    """Append one turn to conversations of ``size`` messages (each gets ``appends_each`` turns)."""
    ids = [f"append-{size}-{k}" for k in range(conversations)]
    for s in subjects:
        for k, cid in enumerate(ids):
            s.create(cid, size, seed=size + k)
    n = conversations * appends_each
    turns = [(turn_messages(500_000 + i), turn_items(500_000 + i)) for i in range(n)]

    def op(s, i):
        cid = ids[i % conversations]
        messages, items = turns[i]
        return lambda: s.append(cid, messages, items)

    return interleaved(subjects, op, n)


def bench_load(subjects: list, size: int, n: int) -> dict:
    cid = f"load-{size}"
    for s in subjects:
        s.create(cid, size, seed=7)
        assert s.load(cid) == size, s.name
    return interleaved(subjects, lambda s, i: (lambda: s.load(cid)), n, chunk=5)


def bench_convo_send(stores: list[tuple[str, Any]], size: int, n: int) -> dict:
    """A whole Convo.send with a ScriptedService, with each store and without one.

    Each measured send is the second turn of a fresh Convo whose history was
    ``size`` messages before its first (unmeasured) turn saved it all.
    """
    service = ScriptedService(default=reply(text(99), usage=Usage(input_tokens=1200, output_tokens=300)))
    history = [m for k in range(size // 2) for m in turn_messages(900_000 + k)]

    class Sender:
        def __init__(self, name, store):
            self.name, self.store = name, store

    subjects = [Sender("no store", None)] + [Sender(name, store) for name, store in stores]

    def op(s, i):
        c = Convo(service, store=s.store, system_prompt="You are a helpful support agent.", id=f"send-{size}-{i}")
        c._messages.extend(history)  # benchmark-only shortcut to a history of the wanted length
        c.send(text(1000 + i))
        prompt = text(2000 + i)
        return lambda: c.send(prompt)

    return interleaved(subjects, op, n)


# --- the servers --------------------------------------------------------------------------------


def start_servers(want: set[str]):
    from tests.store_servers import PostgresServer, RedisServer

    servers = {}
    if "redis" in want:
        servers["redis"] = RedisServer()
        servers["redis"].start()
    if "postgres" in want:
        servers["postgres"] = PostgresServer(durable=True)
        servers["postgres"].start()
        servers["postgres"].create_database()
    return servers


# --- printing -----------------------------------------------------------------------------------


def table(title: str, result: dict, references: list[tuple[str, str]]) -> list[str]:
    """Rows of medians, with each row's ratio to every reference row present (label, row name)."""
    references = [(label, ref) for label, ref in references if ref in result]
    lines = [title]
    header = f"  {'store':<44}  {'median':>9}  {'p10 .. p90':>21}"
    for label, _ in references:
        header += f"  {label:>10}"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for name, r in result.items():
        row = (f"  {name:<44}  {r['median_us'] / 1000:>7.3f}ms  "
               f"{r['p10_us'] / 1000:>8.3f} .. {r['p90_us'] / 1000:>6.3f}ms")
        for _, ref in references:
            row += f"  {r['median_us'] / result[ref]['median_us']:>9.2f}x"
        lines.append(row)
    return lines


SESSION = "SQLiteSession, one loop"
SESSION_NORMAL = "SQLiteSession, one loop, synchronous=NORMAL"
VERSUS = [("/ Session", SESSION), ("/ NORMAL", SESSION_NORMAL)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not figures)")
    parser.add_argument("--only", default="memory,sqlite,redis,postgres,agents",
                        help="comma-separated subset of memory,sqlite,redis,postgres,agents")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    want = set(args.only.split(","))
    scale = 0.2 if args.quick else 1.0
    started = time.monotonic()

    folder = Path(tempfile.mkdtemp(prefix="convo-store-bench-"))
    servers = start_servers(want)
    subjects: list = []
    try:
        if "memory" in want:
            subjects.append(StoreSubject("MemoryStore", MemoryStore()))
        if "sqlite" in want:
            subjects.append(StoreSubject("SQLiteStore", SQLiteStore(folder / "convo.db")))
        if "redis" in want:
            subjects.append(StoreSubject("RedisStore", convo.RedisStore(servers["redis"].url)))
        if "postgres" in want:
            subjects.append(StoreSubject("PostgresStore", convo.PostgresStore(servers["postgres"].dsn())))
        if "agents" in want:
            subjects.append(SessionSubject(SESSION, folder / "agents.db", "loop"))
            subjects.append(SessionSubject("SQLiteSession, asyncio.run per call", folder / "agents-run.db", "run"))
            subjects.append(SessionSubject(SESSION_NORMAL, folder / "agents-normal.db", "loop",
                                           synchronous_normal=True))

        results = {
            "append_10": bench_append(subjects, 10, conversations=max(20, int(200 * scale)), appends_each=1),
            "append_1000": bench_append(subjects, 1000, conversations=max(2, int(10 * scale)),
                                        appends_each=20),
            "load_1000": bench_load(subjects, 1000, n=max(10, int(100 * scale))),
        }
        stores = [(s.name, s.store) for s in subjects if isinstance(s, StoreSubject)]
        if stores:
            results["send_10"] = bench_convo_send(stores, 10, n=max(20, int(200 * scale)))
    finally:
        for s in subjects:
            s.close()
        for server in servers.values():
            server.close()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    out = []
    out += table("1. Append one turn (2 messages of ~1.5 KB) to a 10-message conversation "
                 f"(median of {results['append_10'][subjects[0].name]['n']})", results["append_10"], VERSUS)
    out.append("")
    out += table("2. Append one turn to a 1,000-message conversation "
                 f"(median of {results['append_1000'][subjects[0].name]['n']}; it grows to 1,040)",
                 results["append_1000"], VERSUS)
    out.append("")
    out += table("3. Load (resume) a 1,000-message conversation, decoded "
                 f"(median of {results['load_1000'][subjects[0].name]['n']})", results["load_1000"], VERSUS)
    out.append("")
    growth = ["4. Does a turn cost more on a long conversation? (1,000-message append / 10-message append)"]
    for name in results["append_10"]:
        flat = results["append_1000"][name]["median_us"] / results["append_10"][name]["median_us"]
        growth.append(f"  {name:<44}  {flat:>6.2f}x")
    out += growth
    if "send_10" in results:
        out.append("")
        out += table("5. A whole Convo.send (ScriptedService, 10-message conversation, ~1.5 KB reply), by store",
                     results["send_10"], [("/ no store", "no store")])
        base = results["send_10"]["no store"]["median_us"]
        added = [f"{name} +{r['median_us'] - base:.0f} us" for name, r in results["send_10"].items()
                 if name != "no store"]
        out.append("  what the store adds to a turn: " + ", ".join(added))
    if "SQLiteStore" in results["append_10"] and SESSION in results["append_10"]:
        out.append("")
        out.append("6. The issue's goals: SQLiteStore at most half of SQLiteSession's cost; "
                   "a turn's cost flat in history")
        for key, what in (("append_10", "append, 10 messages"), ("append_1000", "append, 1,000 messages"),
                          ("load_1000", "resume, 1,000 messages")):
            r = results[key]
            ratio = r["SQLiteStore"]["median_us"] / r[SESSION]["median_us"]
            like = r["SQLiteStore"]["median_us"] / r[SESSION_NORMAL]["median_us"]
            out.append(f"  {what:<24} {ratio:.2f}x SQLiteSession ({'met' if ratio <= 0.5 else 'missed'}); "
                       f"{like:.2f}x it with synchronous=NORMAL")
        for name in results["append_10"]:
            if not name.startswith("SQLiteSession"):
                flat = results["append_1000"][name]["median_us"] / results["append_10"][name]["median_us"]
                out.append(f"  {name:<24} 1,000 vs 10 messages: {flat:.2f}x "
                           f"({'flat' if flat <= 1.2 else 'grows'})")
    out.append("")
    out.append(f"Total {time.monotonic() - started:.0f} s; Python {platform.python_version()}, "
               f"{__import__('os').cpu_count()} CPUs; SQLiteSession from openai-agents "
               f"{_version('openai-agents')}.")
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
