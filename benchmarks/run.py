"""Measure convo against its peers on a fake Messages API server, and print the figures.

    python benchmarks/run.py                 # everything, a few minutes
    python benchmarks/run.py --quick         # fewer iterations, for a smoke run
    python benchmarks/run.py --only per_turn,streaming
    python benchmarks/run.py --profile convo_turn   # cProfile one client's hot path

Every client talks to the same fake server (benchmarks/server.py, started
here as a separate process and always stopped), so what differs between
the rows is the client. Results go to benchmarks/results/<timestamp>.json
and benchmarks/results/latest.json; benchmarks/README.md explains each
figure.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import http.client
import io
import json
import logging
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

MODEL = "claude-sonnet-4-6"
SYSTEM = "You are a helpful assistant. Answer briefly."
PROMPT = "Say hello, please."
API_KEY = "sk-ant-bench-not-a-real-key"
MAX_TOKENS = 1024
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
TOOL_SLEEP = 0.2
N_TOOLS = 8
TOOLS_PROMPT = f"TOOLS:{N_TOOLS} Look up all eight things at once."
STREAM_CHUNK_DELAY = 0.010
THREADS = 64


# --- the fake server, in its own process ------------------------------------------

class ServerProcess:
    """benchmarks/server.py as a child process; stopped on exit, whatever happens."""

    def __init__(self, *args: str):
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "ServerProcess":
        # The server exits when the pipe on its stdin closes: when this process ends, however it ends.
        self.proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), "--exit-with-stdin", *self.args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = self.proc.stdout.readline()
            if not line.startswith("LISTENING "):
                raise RuntimeError(f"the benchmark server did not start: {line!r}")
            self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()

    def cpu_seconds(self) -> float:
        """User plus system CPU the server process has used so far (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stats(self) -> dict:
        return requests.get(self.url + "/bench/stats", timeout=5).json()

    def last_request(self) -> dict:
        return requests.get(self.url + "/bench/last-request", timeout=5).json()


# --- statistics --------------------------------------------------------------------

def summary(samples: list[float]) -> dict:
    """Median and spread of a list of seconds."""
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "median": statistics.median(ordered),
        "p10": ordered[int(n * 0.1)],
        "p90": ordered[min(n - 1, int(n * 0.9))],
        "n": n,
    }


def interleaved(factories: dict[str, Callable[[], Callable[[], object]]], *, rounds: int, per_round: int,
                warmup: int) -> dict[str, list[float]]:
    """Time each client's turn, alternating between clients so drift hits all alike.

    A factory builds what a turn needs (untimed) and returns the turn to time.
    """
    for factory in factories.values():
        for _ in range(warmup):
            factory()()
    samples: dict[str, list[float]] = {name: [] for name in factories}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, factory in factories.items():
            gc.collect()
            for _ in range(per_round):
                turn = factory()
                t0 = clock()
                turn()
                samples[name].append(clock() - t0)
    return samples


# --- the clients -------------------------------------------------------------------

def have_convo() -> bool:
    try:
        import convo.providers.anthropic  # noqa: F401
        import convo.conversation  # noqa: F401
    except ImportError:
        return False
    return True


def convo_service(url: str):
    from convo.providers.anthropic import AnthropicService

    return AnthropicService(MODEL, api_key=API_KEY, base_url=url, max_tokens=MAX_TOKENS)


def new_convo(service, **kw):
    from convo.conversation import Convo

    return Convo(service, system_prompt=SYSTEM, **kw)


def sdk_client(url: str):
    import anthropic

    return anthropic.Anthropic(api_key=API_KEY, base_url=url, max_retries=0)


def pydantic_agent(url: str, **kw):
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    model = AnthropicModel(MODEL, provider=AnthropicProvider(api_key=API_KEY, base_url=url))
    return Agent(model, instructions=SYSTEM, model_settings={"max_tokens": MAX_TOKENS}, **kw)


def default_body(prompt: str = PROMPT) -> dict:
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "system": SYSTEM,
            "messages": [{"role": "user", "content": prompt}]}


def sleepy_tool(i: int) -> str:
    """Look up thing number i (takes 200 ms)."""
    time.sleep(TOOL_SLEEP)
    return f"thing {i} is fine"


SLEEPY_SCHEMA = {"type": "object", "properties": {"i": {"type": "integer"}}, "required": ["i"]}


# --- 1. per-turn overhead ------------------------------------------------------------

def quiet_logs() -> None:
    """What an application does with structlog: drop debug and info (this runner is that application)."""
    import structlog

    structlog.reset_defaults()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


_devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def default_logs() -> None:
    """structlog as it is out of the box (every level, pretty-printed), writing to /dev/null instead of stdout."""
    import structlog

    structlog.reset_defaults()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(_devnull))


def bench_per_turn(url: str, server: ServerProcess, quick: bool) -> dict:
    body = default_body()
    if have_convo():
        service = convo_service(url)
        new_convo(service).send_user_text_message(PROMPT)
        body = server.last_request()  # the floor and the SDK send exactly what convo sent
    data = json.dumps(body).encode()
    path = "/v1/messages"

    conn = http.client.HTTPConnection(url.split("//")[1])

    def http_client_turn():
        conn.request("POST", path, data, HEADERS)
        return json.loads(conn.getresponse().read())

    session = requests.Session()

    def requests_turn():
        resp = session.post(url + path, data=json.dumps(body), headers=HEADERS)
        return json.loads(resp.content)

    client = sdk_client(url)
    sdk_kwargs = {k: v for k, v in body.items() if k != "stream"}

    def sdk_turn():
        return client.messages.create(**sdk_kwargs)

    agent = pydantic_agent(url)

    def pydantic_turn():
        return agent.run_sync(PROMPT)

    factories = {
        "http.client (wire floor)": lambda: http_client_turn,
        "requests (floor)": lambda: requests_turn,
        "anthropic SDK": lambda: sdk_turn,
        "pydantic-ai": lambda: pydantic_turn,
    }
    if have_convo():
        def convo_factory(logs=quiet_logs):
            logs()  # untimed: the structlog set-up this row runs under
            return lambda c=new_convo(service): c.send_user_text_message(PROMPT)

        factories["convo"] = convo_factory
        factories["convo, structlog unconfigured"] = lambda: convo_factory(default_logs)
    rounds, per_round = (4, 10) if quick else (20, 25)
    try:
        raw = interleaved(factories, rounds=rounds, per_round=per_round, warmup=5 if quick else 30)
    finally:
        quiet_logs()  # the unconfigured row must not leak into the other benchmarks
        conn.close()
    return {"unit": "seconds per turn", "body_bytes": len(data),
            "results": {name: summary(s) for name, s in raw.items()}}


# --- 2. a turn with 8 slow tools --------------------------------------------------------

def bench_tools(url: str, quick: bool) -> dict:
    session = requests.Session()
    pool = ThreadPoolExecutor(N_TOOLS)
    tools_wire = [{"name": "sleepy_tool", "description": sleepy_tool.__doc__, "input_schema": SLEEPY_SCHEMA}]

    def floor_run():
        # What a hand-written loop with a thread pool does: the best any library can hope for.
        messages = [{"role": "user", "content": TOOLS_PROMPT}]
        while True:
            reply = session.post(url + "/v1/messages", headers=HEADERS, data=json.dumps(
                {"model": MODEL, "max_tokens": MAX_TOKENS, "system": SYSTEM, "messages": messages,
                 "tools": tools_wire})).json()
            messages.append({"role": "assistant", "content": reply["content"]})
            calls = [b for b in reply["content"] if b["type"] == "tool_use"]
            if not calls:
                return reply
            outs = pool.map(lambda b: sleepy_tool(**b["input"]), calls)
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": b["id"], "content": out} for b, out in zip(calls, outs)]})

    import anthropic

    client = sdk_client(url)
    sdk_tool = anthropic.beta_tool(sleepy_tool)

    def sdk_run():
        runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=MAX_TOKENS, system=SYSTEM,
                                                  messages=[{"role": "user", "content": TOOLS_PROMPT}],
                                                  tools=[sdk_tool])
        return runner.until_done()

    agent = pydantic_agent(url, tools=[sleepy_tool])

    def pydantic_run():
        return agent.run_sync(TOOLS_PROMPT)

    factories = {
        "requests + thread pool (floor)": lambda: floor_run,
        "anthropic SDK tool_runner": lambda: sdk_run,
        "pydantic-ai": lambda: pydantic_run,
    }
    if have_convo():
        from convo.tools import tool

        service = convo_service(url)
        convo_tool = tool(sleepy_tool)
        factories["convo"] = lambda: (lambda c=new_convo(service, tools=[convo_tool]): c.run(TOOLS_PROMPT))
    for factory in factories.values():
        factory()()  # warm up
    # Round-robin, so that load from elsewhere on the machine hits every client alike.
    rounds = 2 if quick else 9
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for i in range(rounds):
        for name, factory in factories.items():
            if "SDK" in name and i % 3:  # it runs tools one by one: 1.6 s a turn, a third as many samples
                continue
            turn = factory()
            t0 = time.perf_counter()
            turn()
            samples[name].append(time.perf_counter() - t0)
    pool.shutdown()
    return {"unit": "seconds for the whole turn (2 requests, 8 tools of 200 ms)",
            "ideal": TOOL_SLEEP, "results": {name: summary(s) for name, s in samples.items()}}


# --- 3. many conversations at once ----------------------------------------------------

def bench_concurrency(url: str, server: ServerProcess, quick: bool) -> dict:
    turns = 3 if quick else 10
    repeats = 1 if quick else 5

    def requests_worker():
        session = requests.Session()
        messages: list = []

        def run():
            for _ in range(turns):
                messages.append({"role": "user", "content": PROMPT})
                reply = session.post(url + "/v1/messages", headers=HEADERS, data=json.dumps(
                    {"model": MODEL, "max_tokens": MAX_TOKENS, "system": SYSTEM, "messages": messages})).json()
                messages.append({"role": "assistant", "content": reply["content"]})
        return run

    client = sdk_client(url)

    def sdk_worker():
        messages: list = []

        def run():
            for _ in range(turns):
                messages.append({"role": "user", "content": PROMPT})
                reply = client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, system=SYSTEM, messages=messages)
                messages.append({"role": "assistant", "content": reply.content})
        return run

    def pydantic_worker():
        # An async client belongs to one event loop, and run_sync gives each thread its own: one agent per thread.
        agent = pydantic_agent(url)

        def run():
            history = None
            for _ in range(turns):
                history = agent.run_sync(PROMPT, message_history=history).all_messages()
        return run

    workers = {"requests (floor)": requests_worker, "anthropic SDK": sdk_worker, "pydantic-ai": pydantic_worker}
    if have_convo():
        service = convo_service(url)

        def convo_worker():
            c = new_convo(service)

            def run():
                for _ in range(turns):
                    c.send_user_text_message(PROMPT)
            return run

        workers["convo"] = convo_worker

    def one_run(make) -> float:
        runs = [make() for _ in range(THREADS)]
        barrier = threading.Barrier(THREADS + 1)
        errors: list = []

        def body(run):
            barrier.wait()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report, don't hang
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]!r}") from errors[0]
        return elapsed

    for make in workers.values():
        one_run(make)  # warm up: connections, imports, caches
    # Round-robin over the clients, so that load from elsewhere on the machine hits them alike.
    times: dict[str, list[float]] = {name: [] for name in workers}
    cpu: dict[str, float] = {name: 0.0 for name in workers}
    served: dict[str, int] = {name: 0 for name in workers}
    for _ in range(repeats):
        for name, make in workers.items():
            cpu0, served0 = server.cpu_seconds(), server.stats()["requests"]
            times[name].append(one_run(make))
            cpu[name] += server.cpu_seconds() - cpu0
            served[name] += server.stats()["requests"] - served0
    results = {}
    for name in workers:
        rates = [THREADS * turns / t for t in times[name]]
        results[name] = {"median": statistics.median(rates), "runs": rates,
                         "server_cpu_share": cpu[name] / sum(times[name]), "requests": served[name]}
    return {"unit": "turns per second", "threads": THREADS, "turns_per_thread": turns, "results": results}


# --- 4. streaming: first byte to first text -------------------------------------------

def _sent_ns(message_id: str) -> int:
    return int(message_id.rsplit("_", 1)[1])


def bench_streaming(url: str, quick: bool) -> dict:
    session = requests.Session()
    body = json.dumps({**default_body(), "stream": True})

    def raw_turn():
        t0 = time.monotonic_ns()
        first = msg_id = None
        resp = session.post(url + "/v1/messages", data=body, headers=HEADERS, stream=True)
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            buf += chunk
            while first is None:
                end = buf.find(b"\n")
                if end == -1:
                    break
                line, buf = buf[:end], buf[end + 1:]
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "message_start":
                        msg_id = event["message"]["id"]
                    elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                        first = time.monotonic_ns()
        return t0, first, msg_id

    client = sdk_client(url)

    def sdk_turn():
        t0 = time.monotonic_ns()
        first = None
        with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, system=SYSTEM,
                                    messages=[{"role": "user", "content": PROMPT}]) as stream:
            for event in stream:
                if first is None and event.type == "text":
                    first = time.monotonic_ns()
            msg_id = stream.get_final_message().id
        return t0, first, msg_id

    agent = pydantic_agent(url)

    def pydantic_turn():
        t0 = time.monotonic_ns()
        first = None
        with agent.run_stream_sync(PROMPT) as result:
            for _ in result.stream_text(delta=True, debounce_by=None):
                if first is None:
                    first = time.monotonic_ns()
            msg_id = result.all_messages()[-1].provider_response_id
        return t0, first, msg_id

    clients = {"requests iter_content (floor)": raw_turn, "anthropic SDK": sdk_turn, "pydantic-ai": pydantic_turn}
    if have_convo():
        from convo.service import StreamDone, TextDelta

        service = convo_service(url)

        def convo_turn():
            c = new_convo(service)
            t0 = time.monotonic_ns()
            first = msg_id = None
            for event in c.stream_user_text_message(PROMPT):
                if first is None and isinstance(event, TextDelta):
                    first = time.monotonic_ns()
                elif isinstance(event, StreamDone):
                    msg_id = event.response.id
            return t0, first, msg_id

        clients["convo"] = convo_turn

    n = 10 if quick else 60
    results = {}
    for fn in clients.values():
        for _ in range(3 if quick else 10):
            fn()
    samples = {name: ([], []) for name in clients}
    for _ in range(n // 10):
        for name, fn in clients.items():
            for _ in range(10):
                t0, first, msg_id = fn()
                samples[name][0].append((first - _sent_ns(msg_id)) / 1e9)
                samples[name][1].append((first - t0) / 1e9)
    for name, (wire, total) in samples.items():
        results[name] = {"first_byte_to_text": summary(wire), "request_to_text": summary(total)}
    return {"unit": "seconds", "chunk_delay": STREAM_CHUNK_DELAY, "results": results}


# --- 5. import time ---------------------------------------------------------------

IMPORTS = {
    "python -c pass (baseline)": "pass",
    "requests": "import requests",
    "convo": "import convo",
    "convo + AnthropicService": "import convo; from convo.providers.anthropic import AnthropicService",
    "anthropic": "import anthropic",
    "pydantic_ai": "import pydantic_ai",
    "pydantic_ai + Anthropic model": "import pydantic_ai; from pydantic_ai.models.anthropic import AnthropicModel",
}


def _child_env() -> dict:
    """The environment for child interpreters: this checkout importable, bytecode caching on.

    With PYTHONDONTWRITEBYTECODE set (some CI images and sandboxes set it),
    a package with no .pyc files yet is compiled from source on every
    import, which is not what an installed package costs.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _importtime(stderr: str, startup: set[str]) -> float:
    """Seconds the top-level imports took, from ``-X importtime`` output, minus the interpreter's own."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  ") or not cumulative.strip().isdigit():
            continue  # nested: counted in its parent's cumulative time
        if name.strip() not in startup:
            total += int(cumulative)
    return total / 1e6


def bench_imports(quick: bool) -> dict:
    runs = 3 if quick else 9
    env = _child_env()
    cases = dict(IMPORTS)
    if not have_convo():
        cases.pop("convo + AnthropicService")
    walls: dict[str, list[float]] = {name: [] for name in cases}
    selfreported: dict[str, list[float]] = {name: [] for name in cases}
    for name, code in cases.items():  # warm the disk cache and write the .pyc files
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    base_out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=True).stderr
    startup = {line.split("|")[2].strip() for line in base_out.splitlines() if line.count("|") == 2}
    for _ in range(runs):
        for name, code in cases.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
            walls[name].append(time.perf_counter() - t0)
            out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, cwd=ROOT,
                                 capture_output=True, text=True, check=True).stderr
            selfreported[name].append(_importtime(out, startup))
    base = statistics.median(walls.pop("python -c pass (baseline)"))
    selfreported.pop("python -c pass (baseline)")
    results = {}
    for name, samples in walls.items():
        results[name] = {"median": statistics.median(samples) - base, "wall_median": statistics.median(samples),
                         "importtime_median": statistics.median(selfreported[name])}
    return {"unit": "seconds (wall time of `python -c <import>` minus `python -c pass`)",
            "baseline": base, "results": results}


# --- 6. memory ------------------------------------------------------------------

MEMORY_CASES = ("convo history", "anthropic SDK MessageParam dicts", "pydantic-ai ModelMessage list",
                "convo 1,000 idle Convos")


def _history_texts(n: int) -> list[str]:
    return [f"message {i}: " + "lorem ipsum dolor sit amet " * 6 for i in range(n)]


def memory_child(case: str) -> None:
    """Run in a fresh interpreter: build one structure under tracemalloc, print its bytes as JSON."""
    import tracemalloc

    n = 1000
    texts = _history_texts(n)  # the same strings in every case: count the structure, not the prose
    # Every 4 messages: a question, a reply calling a tool, the tool's result, a final answer.
    if case == "convo history":
        from convo.messages import Message, ToolResult, ToolUse

        service = convo_service("http://127.0.0.1:9")
        convo = new_convo(service)
        tracemalloc.start()
        built = []
        for i, text in enumerate(texts):
            kind = i % 4
            if kind == 0:
                built.append(Message.user(text))
            elif kind == 1:
                built.append(Message.assistant(text, ToolUse(f"toolu_{i}", "lookup", {"q": i})))
            elif kind == 2:
                built.append(Message.user("", ToolResult(f"toolu_{i - 1}", text)))
            else:
                built.append(Message.assistant(text))
        _set_history(convo, built)
        del built
        keep = convo
    elif case == "anthropic SDK MessageParam dicts":
        import anthropic  # noqa: F401

        tracemalloc.start()
        keep = []
        for i, text in enumerate(texts):
            kind = i % 4
            if kind == 0:
                keep.append({"role": "user", "content": [{"type": "text", "text": text}]})
            elif kind == 1:
                keep.append({"role": "assistant", "content": [
                    {"type": "text", "text": text},
                    {"type": "tool_use", "id": f"toolu_{i}", "name": "lookup", "input": {"q": i}}]})
            elif kind == 2:
                keep.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": f"toolu_{i - 1}", "content": text}]})
            else:
                keep.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
    elif case == "pydantic-ai ModelMessage list":
        from pydantic_ai.messages import (ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart,
                                          UserPromptPart)

        tracemalloc.start()
        keep = []
        for i, text in enumerate(texts):
            kind = i % 4
            if kind == 0:
                keep.append(ModelRequest(parts=[UserPromptPart(text)]))
            elif kind == 1:
                keep.append(ModelResponse(parts=[TextPart(text), ToolCallPart("lookup", {"q": i}, f"toolu_{i}")]))
            elif kind == 2:
                keep.append(ModelRequest(parts=[ToolReturnPart("lookup", text, f"toolu_{i - 1}")]))
            else:
                keep.append(ModelResponse(parts=[TextPart(text)]))
    elif case == "convo 1,000 idle Convos":
        service = convo_service("http://127.0.0.1:9")
        new_convo(service)  # first-use caches are not per-convo cost
        tracemalloc.start()
        keep = [new_convo(service) for _ in range(n)]
    else:
        raise SystemExit(f"unknown memory case {case!r}")
    gc.collect()
    current, _peak = tracemalloc.get_traced_memory()
    print(json.dumps({"bytes": current, "items": n, "text_bytes": sum(sys.getsizeof(t) for t in texts)}))
    del keep


def _set_history(convo, messages) -> None:
    """Put a ready-made history in a Convo, as if its turns had happened.

    The only public way in is ``Convo.from_debug_json``, which would make new
    copies of every string; the history list is what each turn appends to.
    """
    convo._messages.extend(messages)


def bench_memory() -> dict:
    results = {}
    env = _child_env()
    for case in MEMORY_CASES:
        if case.startswith("convo") and not have_convo():
            continue
        out = subprocess.run([sys.executable, __file__, "--memory-child", case], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            results[case] = {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
            continue
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"unit": "bytes allocated and still held (tracemalloc), message text itself excluded",
            "results": results}


# --- profiling ------------------------------------------------------------------

def profile(target: str, url: str) -> None:
    """cProfile a client's hot path and print where the time goes."""
    if target == "convo_turn":
        service = convo_service(url)
        work = [lambda c=new_convo(service): c.send_user_text_message(PROMPT) for _ in range(2000)]
    elif target == "convo_stream":
        service = convo_service(url)
        work = [lambda c=new_convo(service): list(c.stream_user_text_message(PROMPT)) for _ in range(1000)]
    elif target == "sdk_turn":
        client = sdk_client(url)
        work = [lambda: client.messages.create(**default_body())] * 2000
    elif target == "requests_turn":
        session = requests.Session()
        data = json.dumps(default_body())
        work = [lambda: session.post(url + "/v1/messages", data=data, headers=HEADERS).json()] * 2000
    else:
        raise SystemExit(f"unknown profile target {target!r}")
    for w in work[:50]:
        w()
    prof = cProfile.Profile()
    prof.enable()
    for w in work[50:]:
        w()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    print(out.getvalue())


# --- the report ---------------------------------------------------------------

def _ms(s: float) -> str:
    return f"{s * 1000:.3f} ms" if s < 0.01 else f"{s * 1000:.1f} ms"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(results: dict) -> str:
    lines: list[str] = []

    def table(title: str, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        lines.append(title)
        lines.append(("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))).rstrip())
        lines.append("  " + "  ".join("-" * w for w in widths))
        for r in rows:
            lines.append(("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip())

    sec = results.get("per_turn")
    if sec:
        res = sec["results"]
        floor = res["requests (floor)"]["median"]
        conv = res.get("convo", {}).get("median")
        rows = []
        for name, r in res.items():
            m = r["median"]
            rows.append([name, _ms(m), f"{_ms(r['p10'])} .. {_ms(r['p90'])}", _ratio(m, floor),
                         f"{(m - floor) * 1e6:+.0f} us", _ratio(conv, m) if conv else "-"])
        table(f"1. Per-turn overhead (one non-streaming turn, {sec['body_bytes']} B body, median of "
              f"{next(iter(res.values()))['n']})",
              ["client", "median", "p10 .. p90", "x floor", "over floor", "convo / this"], rows)

    sec = results.get("tools")
    if sec:
        res = sec["results"]
        floor = res["requests + thread pool (floor)"]["median"]
        conv = res.get("convo", {}).get("median")
        rows = [[name, _ms(r["median"]), _ratio(r["median"], floor), _ratio(conv, r["median"]) if conv else "-"]
                for name, r in res.items()]
        table("2. One turn with 8 tools that each block 200 ms (ideal 200 ms + 2 requests)",
              ["client", "median", "x floor", "convo / this"], rows)

    sec = results.get("concurrency")
    if sec:
        res = sec["results"]
        floor = res["requests (floor)"]["median"]
        conv = res.get("convo", {}).get("median")
        rows = [[name, f"{r['median']:.0f} turns/s", _ratio(r["median"], floor),
                 _ratio(conv, r["median"]) if conv else "-", f"{r['server_cpu_share'] * 100:.0f}%"]
                for name, r in res.items()]
        table(f"3. {sec['threads']} threads x {sec['turns_per_thread']} turns, each its own conversation "
              "(higher is better)", ["client", "throughput", "of floor", "convo / this", "server CPU"], rows)

    sec = results.get("streaming")
    if sec:
        res = sec["results"]
        floor = res["requests iter_content (floor)"]["first_byte_to_text"]["median"]
        conv = res.get("convo", {}).get("first_byte_to_text", {}).get("median")
        rows = []
        for name, r in res.items():
            m = r["first_byte_to_text"]["median"]
            rows.append([name, _ms(m), _ratio(m, floor), f"{(m - floor) * 1e6:+.0f} us",
                         _ms(r["request_to_text"]["median"]), _ratio(conv, m) if conv else "-"])
        table("4. Streaming: first byte on the wire to first text event",
              ["client", "median", "x floor", "over floor", "request to text", "convo / this"], rows)

    sec = results.get("imports")
    if sec:
        res = sec["results"]
        conv = res.get("convo", {}).get("median")
        conv_it = res.get("convo", {}).get("importtime_median")
        rows = [[name, _ms(r["median"]), _ratio(conv, r["median"]) if conv else "-", _ms(r["importtime_median"]),
                 _ratio(conv_it, r["importtime_median"]) if conv_it else "-"] for name, r in res.items()]
        table(f"5. Import time (wall minus a bare interpreter's {_ms(sec['baseline'])}; and as -X importtime reports)",
              ["import", "wall", "convo / this", "-X importtime", "convo / this"], rows)

    sec = results.get("memory")
    if sec:
        res = sec["results"]
        rows = []
        for name, r in res.items():
            if "error" in r:
                rows.append([name, "error: " + r["error"][:70], "-"])
            else:
                rows.append([name, f"{r['bytes'] / 1024:.0f} KiB", f"{r['bytes'] / r['items']:.0f} B"])
        table("6. Memory held (tracemalloc; the 1,000 message texts themselves excluded)",
              ["structure", "total", "per item"], rows)
    return "\n".join(lines)


def meta() -> dict:
    versions = {}
    for dist in ("requests", "anthropic", "pydantic-ai-slim", "httpx2", "urllib3", "attrs", "structlog"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing package is just absent from the list
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "versions": versions, "commit": commit, "convo": have_convo()}


SECTIONS = ("per_turn", "tools", "concurrency", "streaming", "imports", "memory")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not figures)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--profile", help="convo_turn | convo_stream | sdk_turn | requests_turn")
    parser.add_argument("--no-save", action="store_true", help="print only, write no results file")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A terminated run still stops its servers: SIGTERM unwinds like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.profile:
        quiet_logs()
        with ServerProcess() as server:
            profile(args.profile, server.url)
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    quiet_logs()
    if not have_convo():
        print("convo's Convo or AnthropicService is not importable yet: measuring the peers only.", file=sys.stderr)
    started = time.perf_counter()
    results: dict = {"meta": meta(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with ServerProcess() as server, ServerProcess("--chunk-delay", str(STREAM_CHUNK_DELAY)) as stream_server:
        for section in only:
            t0 = time.perf_counter()
            print(f"[{section}] ...", file=sys.stderr, flush=True)
            cpu0, stats0 = server.cpu_seconds(), server.stats()
            if section == "per_turn":
                results[section] = bench_per_turn(server.url, server, args.quick)
            elif section == "tools":
                results[section] = bench_tools(server.url, args.quick)
            elif section == "concurrency":
                results[section] = bench_concurrency(server.url, server, args.quick)
            elif section == "streaming":
                results[section] = bench_streaming(stream_server.url, args.quick)
            elif section == "imports":
                results[section] = bench_imports(args.quick)
            elif section == "memory":
                results[section] = bench_memory()
            stats1 = server.stats()
            served = stats1["requests"] - stats0["requests"]
            results[section]["seconds"] = time.perf_counter() - t0
            if served:
                results[section]["server"] = {
                    "requests": served,
                    "handler_us_per_request": (stats1["handler_seconds"] - stats0["handler_seconds"]) / served * 1e6,
                    "process_cpu_us_per_request": (server.cpu_seconds() - cpu0) / served * 1e6,
                }
    results["seconds"] = time.perf_counter() - started
    text = report(results)
    print(text)
    server_lines = [f"  {s}: {r['server']['process_cpu_us_per_request']:.0f} us of server CPU per request "
                    f"({r['server']['requests']} requests)"
                    for s, r in results.items() if isinstance(r, dict) and "server" in r]
    if server_lines:
        print("\nThe fake server's own cost, which every client pays alike (its process CPU time over the requests):")
        print("\n".join(server_lines))
    print(f"\nTotal {results['seconds']:.0f} s; Python {results['meta']['python']}, {results['meta']['cpus']} CPUs.")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        payload = json.dumps(results, indent=2)
        (RESULTS / f"{stamp}.json").write_text(payload)
        (RESULTS / "latest.json").write_text(payload)
        print(f"Results: {RESULTS / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
