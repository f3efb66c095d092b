"""The chats API under load, side by side with its floor: the same model calls through local Convos.

    python benchmarks/chats.py            # about two minutes on 2 cores
    python benchmarks/chats.py --quick    # a smoke run, not figures to quote

Processes besides this one, all on 127.0.0.1:

- the fake Messages API (``benchmarks/server.py``), streaming a short text
  reply (first delta "Hello!" in its own send, stamped with the system-wide
  monotonic clock in the message id, then the rest);
- ``convo serve --model claude-sonnet-4-5 --store memory:// -v`` pointed at
  it (its debug log names each reply's id, so its first token's time);
- the watchers: this file run with ``--watch``, an asyncio ``websockets``
  client holding 1 or 100 streams of one chat, stamping each event as it
  arrives (so 100 watchers cost the measurement little).

What is measured:

1. **Token to watcher.** For each turn of one chat, the time from the
   model's first token leaving the fake to each watcher receiving that
   token's ``message_part`` event, with 1 and with 100 watchers; and, with
   100, how far behind the first watcher each other one is (the goal: every
   watcher within 20 ms of the first, p99). The floor: the same first token
   through a local streaming ``Convo`` (request, parse, event; no server).
2. **Chats per second.** Chats created and run to the end (one message, one
   streamed reply each) by 32 client threads over HTTP, against the same
   turns through local Convos on 32 threads (the floor); with a memory
   store and with SQLite (``convo serve``'s default).
3. **200 chats at once.** 200 chats created together against a fake that
   takes 1 s per reply, so all 200 run at the same time: wall time, the
   most seen running at once, and errors (the goal: none).

Results: printed, and written to benchmarks/results/chats-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "claude-sonnet-4-5"
API_KEY = "sk-ant-bench-not-a-real-key"
API = "/api/experimental/chats"
FIRST_PIECE = "Hello!"  # benchmarks/server.py's first text delta, sent alone


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": _pct(ms, 0.5), "p90_ms": _pct(ms, 0.9), "p99_ms": _pct(ms, 0.99),
            "max_ms": max(ms) if ms else float("nan"), "mean_ms": statistics.fmean(ms) if ms else float("nan")}


# --- the watchers (a separate process) --------------------------------------------------------------


async def _watch(config: dict) -> dict:
    from websockets.asyncio.client import connect

    url, token, n, turns = config["url"], config["token"], config["watchers"], config["turns"]
    hello: list[list[int]] = [[] for _ in range(n)]
    errors: list[str] = []
    opened = [0]
    all_open = asyncio.Event()

    async def watcher(i: int) -> None:
        try:
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                               ping_interval=None, max_size=2 ** 24, open_timeout=60) as ws:
                snapshot = json.loads(await ws.recv())["data"]
                seen = max((e["message"]["id"] for e in snapshot if e["type"] == "message"), default=0)
                opened[0] += 1
                if opened[0] == n:
                    all_open.set()
                    Path(config["out"] + ".ready").write_text(str(n))
                replies = 0
                while replies < turns:
                    text = await ws.recv()
                    now = time.monotonic_ns()
                    frame = json.loads(text)
                    if frame["type"] != "data":
                        continue
                    for e in frame["data"]:
                        if e["type"] == "message_part" and e["message_part"]["part"].get("text") == FIRST_PIECE:
                            hello[i].append(now)
                        elif e["type"] == "message" and e["message"]["role"] == "assistant" and \
                                e["message"]["id"] > seen:
                            seen = e["message"]["id"]
                            replies += 1
        except Exception as exc:  # counted, not fatal
            errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(watcher(i) for i in range(n)))
    return {"hello": hello, "errors": errors}


def watch_main(path: str) -> None:
    config = json.loads(Path(path).read_text())
    out = asyncio.run(_watch(config))
    Path(config["out"]).write_text(json.dumps(out))


# --- the runner ------------------------------------------------------------------------------------


def _start_fake(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), "--exit-with-stdin", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


class Serve:
    """``convo serve`` in its own process, its log in a file (``-v``: one debug line per model reply)."""

    def __init__(self, fake_port: int, secret: str, *extra: str, store: str = "memory://") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="convo-chats-bench-"))
        if store == "sqlite":
            store = f"sqlite:///{self.folder / 'chats.db'}"
        self.log = self.folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
        env.update(CONVO_SERVER_SECRET=secret, ANTHROPIC_API_KEY=API_KEY,
                   ANTHROPIC_BASE_URL=f"http://127.0.0.1:{fake_port}")
        self._err = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "convo.cli", "serve", "--port", "0", "--model", MODEL,
                                      "--store", store, "-v", *extra], stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        self.url = "http://" + line.split("listening on ws://", 1)[1].split("/", 1)[0]

    def sent_ns(self) -> list[int]:
        """The first-token times of every reply so far, in order (from the ids the fake stamped)."""
        return [int(m.group(2)) for m in re.finditer(r"response_id=msg_bench_(\d+)_(\d+)", self.log.read_text())]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._err.close()


class Http:
    """A thread-safe little client: one requests.Session per thread."""

    def __init__(self, url: str, token: str) -> None:
        import requests

        self.url = url + API
        self.headers = {"Authorization": f"Bearer {token}"}
        self._local = threading.local()
        self._requests = requests

    def _session(self):
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = self._requests.Session()
        return s

    def post(self, path: str, text: str) -> dict:
        r = self._session().post(self.url + path, json={"content": [{"type": "text", "text": text}]},
                                 headers=self.headers, timeout=120)
        r.raise_for_status()
        return r.json()

    def get(self, path: str = ""):
        r = self._session().get(self.url + path, headers=self.headers, timeout=120)
        r.raise_for_status()
        return r.json()

    def wait(self, chat_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            chat = self.get(f"/{chat_id}")["chat"]
            if chat["status"] in ("waiting", "error", "paused", "completed"):
                return chat
            if time.monotonic() > deadline:
                raise TimeoutError(chat_id)
            time.sleep(0.02)


def _token(secret: str, user: str) -> str:
    from convo.remote import create_token

    return create_token(user, "bench", secret, None)


def token_to_watcher(fake_port: int, watchers: int, turns: int) -> dict:
    secret = secrets.token_hex(32)
    serve = Serve(fake_port, secret)
    try:
        token = _token(secret, f"watched-{watchers}")
        http = Http(serve.url, token)
        chat = http.post("", "Say hello.")
        http.wait(chat["id"])
        folder = Path(tempfile.mkdtemp(prefix="convo-chats-watch-"))
        config = {"url": serve.url.replace("http://", "ws://") + f"{API}/{chat['id']}/stream", "token": token,
                  "watchers": watchers, "turns": turns, "out": str(folder / "out.json")}
        (folder / "config.json").write_text(json.dumps(config))
        proc = subprocess.Popen([sys.executable, __file__, "--watch", str(folder / "config.json")])
        deadline = time.monotonic() + 120
        while not Path(config["out"] + ".ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the watchers did not connect")
            time.sleep(0.02)
        before = len(serve.sent_ns())
        for _ in range(turns):
            http.post(f"/{chat['id']}/messages", "Say hello again.")
            http.wait(chat["id"])
            time.sleep(0.02)
        proc.wait(timeout=120)
        out = json.loads(Path(config["out"]).read_text())
        sent = serve.sent_ns()[before:]
        delays, behind = [], []
        complete = [h for h in out["hello"] if len(h) == turns]
        for k in range(min(turns, len(sent))):
            got = [h[k] for h in complete]
            delays.extend((t - sent[k]) / 1e6 for t in got)
            if got:
                first = min(got)
                behind.extend((t - first) / 1e6 for t in got)
        return {"watchers": watchers, "turns": turns, "delay": _summary(delays), "behind_first": _summary(behind),
                "errors": out["errors"] + ([f"{watchers - len(complete)} watchers missed events"]
                                           if len(complete) != watchers else [])}
    finally:
        serve.close()


def token_floor(fake_port: int, turns: int) -> dict:
    """The first token through a local streaming Convo: request, parse, event, with no server in between."""
    from convo import AnthropicService, Convo, TextDelta

    delays = []
    with AnthropicService(MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{fake_port}") as service:
        c = Convo(service)
        for _ in range(turns):
            seen = None
            with c.stream("Say hello again.") as s:
                for event in s:
                    if isinstance(event, TextDelta) and seen is None:
                        seen = time.monotonic_ns()
            sent = int(s.response.id.rsplit("_", 1)[1])
            delays.append((seen - sent) / 1e6)
    return {"delay": _summary(delays)}


class Feed:
    """The owner's ``/watch`` feed on a thread: which chats ended, and the most running at once (no polling)."""

    def __init__(self, url: str, token: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url.replace("http://", "ws://") + API + "/watch",
                                              header=[f"Authorization: Bearer {token}"], timeout=300)
        self.ws.recv()  # the first frame is a ping
        self.status: dict[str, str] = {}
        self.ended: dict[str, dict] = {}
        self.peak = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                frame = json.loads(self.ws.recv())
                if frame["type"] != "data":
                    continue
                chat = frame["data"]["chat"]
                with self.lock:
                    self.status[chat["id"]] = chat["status"]
                    self.peak = max(self.peak, sum(s == "running" for s in self.status.values()))
                    if chat["status"] in ("waiting", "error", "paused", "completed"):
                        self.ended[chat["id"]] = chat
                    self.changed.notify_all()
        except Exception:  # closed
            return

    def wait(self, ids: list[str], timeout: float = 600) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not all(i in self.ended for i in ids):
                if not self.changed.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{sum(i not in self.ended for i in ids)} chats still running")
            return [self.ended[i] for i in ids]

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def chats_per_second(fake_port: int, n: int, threads: int, store: str = "memory://") -> dict:
    secret = secrets.token_hex(32)
    serve = Serve(fake_port, secret, store=store)
    try:
        token = _token(secret, "throughput")
        http = Http(serve.url, token)
        http.wait(http.post("", "warm up")["id"])
        feed = Feed(serve.url, token)
        errors: list[str] = []
        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ids = [c["id"] for c in pool.map(lambda i: http.post("", f"Chat {i}: say hello."), range(n))]
        finals = feed.wait(ids)
        seconds = time.perf_counter() - began
        feed.close()
        errors = [f"{c['id']}: {c['status']} {c.get('last_error')}" for c in finals if c["status"] != "waiting"]
        return {"chats": n, "threads": threads, "seconds": seconds, "chats_per_second": n / seconds,
                "errors": errors[:5], "error_count": len(errors)}
    finally:
        serve.close()


def floor_per_second(fake_port: int, n: int, threads: int) -> dict:
    """The same turns through local Convos (a streamed reply each), one shared service, ``threads`` at once."""
    from convo import AnthropicService, Convo

    with AnthropicService(MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{fake_port}") as service:
        def one(i: int) -> None:
            c = Convo(service)
            with c.stream(f"Chat {i}: say hello.") as s:
                s.until_done()

        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n)))
        seconds = time.perf_counter() - began
    return {"turns": n, "threads": threads, "seconds": seconds, "turns_per_second": n / seconds}


def many_at_once(fake_port: int, n: int) -> dict:
    """``n`` chats created together against a fake that takes a second per reply: all run at once."""
    secret = secrets.token_hex(32)
    serve = Serve(fake_port, secret, "--chat-max-runs", str(max(256, n)))
    try:
        token = _token(secret, "crowd")
        http = Http(serve.url, token)
        feed = Feed(serve.url, token)
        began = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            ids = [c["id"] for c in pool.map(lambda i: http.post("", f"Crowd {i}: say hello."), range(n))]
        created = time.perf_counter() - began
        finals = feed.wait(ids)
        seconds = time.perf_counter() - began
        feed.close()
        errors = [f"{c['id']}: {c['status']} {c.get('last_error')}" for c in finals if c["status"] != "waiting"]
        return {"chats": n, "create_seconds": created, "seconds": seconds, "peak_running": feed.peak,
                "errors": errors[:5], "error_count": len(errors)}
    finally:
        serve.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer turns and chats")
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        watch_main(args.watch)
        return
    turns = 10 if args.quick else 60
    results: dict = {"quick": args.quick, "cpus": os.cpu_count()}
    fake, port = _start_fake("--chunk-delay", "0.05")
    try:
        results["token_floor"] = token_floor(port, turns)
        results["token_1"] = token_to_watcher(port, 1, turns)
        results["token_100"] = token_to_watcher(port, 100, turns)
    finally:
        fake.kill()
    fake, port = _start_fake()
    try:
        n = 100 if args.quick else 400
        results["floor"] = floor_per_second(port, n, 32)
        results["throughput"] = chats_per_second(port, n, 32)
        results["throughput_sqlite"] = chats_per_second(port, n, 32, store="sqlite")
    finally:
        fake.kill()
    fake, port = _start_fake("--latency", "1.0")
    try:
        results["crowd"] = many_at_once(port, 50 if args.quick else 200)
    finally:
        fake.kill()
    _print(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chats-latest.json").write_text(json.dumps(results, indent=2))


def _print(r: dict) -> None:
    def row(name: str, s: dict) -> str:
        return (f"  {name:<34} p50 {s['p50_ms']:7.2f} ms   p90 {s['p90_ms']:7.2f} ms   p99 {s['p99_ms']:7.2f} ms   "
                f"max {s['max_ms']:7.2f} ms")

    print(f"chats API benchmark ({r['cpus']} CPUs{', quick' if r['quick'] else ''})")
    print("first model token -> watcher event:")
    print(row("floor (local Convo, no server)", r["token_floor"]["delay"]))
    print(row("1 watcher", r["token_1"]["delay"]))
    print(row("100 watchers", r["token_100"]["delay"]))
    print(row("100 watchers, behind the first", r["token_100"]["behind_first"]) + "   (goal: p99 < 20 ms)")
    for key in ("token_1", "token_100"):
        if r[key]["errors"]:
            print(f"  {key} errors: {r[key]['errors'][:3]}")
    f, t, q = r["floor"], r["throughput"], r["throughput_sqlite"]
    print(f"chats created and run ({t['chats']} chats, {t['threads']} client threads):")
    print(f"  memory store  {t['chats_per_second']:7.1f} chats/s   {t['error_count']} errors")
    print(f"  SQLite store  {q['chats_per_second']:7.1f} chats/s   {q['error_count']} errors")
    print(f"  floor         {f['turns_per_second']:7.1f} turns/s through local Convos (no server, no store)")
    c = r["crowd"]
    print(f"{c['chats']} chats at once (1 s per reply): all done in {c['seconds']:.2f} s (created in "
          f"{c['create_seconds']:.2f} s), at most {c['peak_running']} running at once, {c['error_count']} errors "
          "(goal: none)")


if __name__ == "__main__":
    main()
