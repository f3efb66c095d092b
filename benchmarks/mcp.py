"""MCP tool calls through convo against the same calls made directly with the official SDK.

    pip install -e '.[test]'          # mcp, and the test MCP server's needs
    python benchmarks/mcp.py          # about half a minute on 2 cores
    python benchmarks/mcp.py --quick  # a smoke run, not figures to quote

Both sides talk to their own copy of the same server process,
tests/mcp_servers/edge.py over stdio (the SDK's own server framework),
negotiating the same protocol version. Printed figures:

1. Per-call overhead: one ``echo`` call. convo is a tool from
   ``MCPServer.tools()`` called as the engine's worker threads call it
   (``tool.run(input)``: from a thread into convo's loop thread and back);
   the peers are the SDK's ``ClientSession.call_tool`` and ``Client.call_tool``
   awaited on an asyncio loop (the floor). Rounds of 25 calls alternate
   between the clients; median and p10..p90 of every call.
2. Eight 200 ms calls in one turn: ``Convo.run`` of a turn whose (scripted)
   model asks for 8 calls of a tool that sleeps 200 ms, against the same turn
   asking for one; and ``asyncio.gather`` of 8 direct SDK calls against one.
   The goal is 8 in at most 1.15x the time of one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named mcp.py, and Python puts its folder first on sys.path: left
# there, `import mcp` (here and in convo.mcp) would import this script again.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from convo import Convo, MCPServer, ToolUse  # noqa: E402
from convo.testing import ScriptedService, reply  # noqa: E402

SERVER = [str(ROOT / "tests" / "mcp_servers" / "edge.py")]
ROUND = 25
SLOW = 0.2
N_SLOW = 8
DEVNULL = open(os.devnull, "w")


def sdk_client() -> Client:
    """The SDK's client for its own copy of the server (whose stderr convo would have logged: discarded here)."""
    params = StdioServerParameters(command=sys.executable, args=SERVER)
    return Client(stdio_client(params, errlog=DEVNULL), cache=None)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return statistics.median(ordered), pick(0.1), pick(0.9)


def convo_round(echo, n: int) -> list[float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        echo.run({"text": "hi"})
        times.append(time.perf_counter() - began)
    return times


async def per_call(server: MCPServer, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    echo = {t.name: t for t in server.tools()}["mcp__edge__echo"]
    times: dict[str, list[float]] = {"ClientSession.call_tool (floor)": [], "Client.call_tool": [],
                                     "convo MCPServer tool": []}
    async with sdk_client() as client:
        await client.list_tools()  # both sides know the tools (the SDK validates results against them)
        for _ in range(3):  # warm-up
            await client.session.call_tool("echo", {"text": "hi"})
            await loop.run_in_executor(None, convo_round, echo, 1)
        for _ in range(rounds):
            for _ in range(ROUND):
                began = time.perf_counter()
                await client.session.call_tool("echo", {"text": "hi"})
                times["ClientSession.call_tool (floor)"].append(time.perf_counter() - began)
            for _ in range(ROUND):
                began = time.perf_counter()
                await client.call_tool("echo", {"text": "hi"})
                times["Client.call_tool"].append(time.perf_counter() - began)
            # convo's side runs on a thread (as in the engine); the loop only waits meanwhile.
            times["convo MCPServer tool"] += await loop.run_in_executor(None, convo_round, echo, ROUND)
    return times


def convo_turn(server: MCPServer, calls: int) -> float:
    uses = [ToolUse(f"t{i}", "mcp__edge__slow", {"seconds": SLOW}) for i in range(calls)]
    service = ScriptedService([reply(tool_uses=uses), reply("done")])
    began = time.perf_counter()
    Convo(service, mcp_servers=[server]).run("go")
    return time.perf_counter() - began


async def sdk_gather(calls: int, repeats: int) -> list[float]:
    async with sdk_client() as client:
        await client.list_tools()
        out = []
        for _ in range(repeats):
            began = time.perf_counter()
            await asyncio.gather(*(client.call_tool("slow", {"seconds": SLOW}) for _ in range(calls)))
            out.append(time.perf_counter() - began)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations: a smoke run")
    args = parser.parse_args()
    rounds, repeats = (4, 3) if args.quick else (20, 7)
    started = time.perf_counter()

    with MCPServer.stdio("edge", sys.executable, SERVER) as server:
        server.start()
        times = asyncio.run(per_call(server, rounds))
        floor = statistics.median(times["ClientSession.call_tool (floor)"])
        print(f"1. Per-call overhead (one echo call over stdio, median of {rounds * ROUND})")
        print(f"  {'client':<32}  {'median':<9}  {'p10 .. p90':<20}  {'x floor':<7}  {'over floor':<10}")
        print(f"  {'-' * 32}  {'-' * 9}  {'-' * 20}  {'-' * 7}  {'-' * 10}")
        for name, samples in times.items():
            median, p10, p90 = percentiles(samples)
            spread = f"{p10 * 1e3:.3f} ms .. {p90 * 1e3:.3f} ms"
            print(f"  {name:<32}  {median * 1e3:.3f} ms   {spread:<20}  {median / floor:.2f}x    "
                  f"{(median - floor) * 1e6:+.0f} us")

        convo_turn(server, 1)  # warm-up
        one, eight = [], []
        for _ in range(repeats):  # alternate, so a busy moment hits both
            one.append(convo_turn(server, 1))
            eight.append(convo_turn(server, N_SLOW))
    sdk_one = asyncio.run(sdk_gather(1, repeats))
    sdk_eight = asyncio.run(sdk_gather(N_SLOW, repeats))

    print(f"\n2. {N_SLOW} calls of a tool that sleeps {SLOW * 1e3:.0f} ms, in one turn (median of {repeats})")
    print(f"  {'client':<44}  {'1 call':<8}  {f'{N_SLOW} calls':<8}  {f'{N_SLOW} / 1':<5}")
    print(f"  {'-' * 44}  {'-' * 8}  {'-' * 8}  {'-' * 5}")
    rows = [("convo Convo.run (scripted model, 2 requests)", one, eight),
            ("SDK asyncio.gather of Client.call_tool", sdk_one, sdk_eight)]
    for name, a, b in rows:
        a_med, b_med = statistics.median(a), statistics.median(b)
        print(f"  {name:<44}  {a_med * 1e3:.1f} ms  {b_med * 1e3:.1f} ms  {b_med / a_med:.2f}x")

    print(f"\nTotal {time.perf_counter() - started:.0f} s; Python {platform.python_version()}, "
          f"{len(os.sched_getaffinity(0))} CPUs.")


if __name__ == "__main__":
    main()
