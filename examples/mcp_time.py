"""A conversation that uses the tools of an MCP server, from plain blocking code.

convo starts the reference time server (``mcp-server-time`` from PyPI) as a
subprocess, offers its tools to the model as ``mcp__time__get_current_time``
and ``mcp__time__convert_time``, runs the call the model asks for, and stops
the server when the conversation closes. No asyncio in sight: the MCP SDK
runs on a thread convo owns.

Runs offline:

    pip install 'convo[mcp,local]' mcp-server-time
    python examples/mcp_time.py

The model is the embedded local one (SmolLM2-135M; it is told which tool
to call, as it is tiny); without it installed, a scripted stand-in plays the
model. ``--scripted`` picks the stand-in anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# llama.cpp's threads spin while they wait for each other, which is ruinous on a
# busy machine; a short spin costs nothing when idle (the convo command sets it too).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from convo import Convo, MCPServer, NoopListener, ToolChoice, ToolUse
from convo.testing import ScriptedService, reply

QUESTION = "What time is it in Tokyo? The IANA timezone is Asia/Tokyo."
TOOL = "mcp__time__get_current_time"


class ShowTools(NoopListener):
    """Prints each tool call and its result as they happen: the audit trail, MCP calls included."""

    def on_tool_call(self, c, tool_use):
        print(f"call:    {tool_use.name} {json.dumps(tool_use.input)}")

    def on_tool_result(self, c, tool_use, result, error):
        print(f"{'error:  ' if result.is_error else 'result: '} {result.text()}")


def model(scripted: bool):
    """The local model if it is installed (and wanted), else a stand-in that asks for the call."""
    if not scripted:
        try:
            from convo import LocalService

            service = LocalService(temperature=0.0, max_tokens=48, seed=7)
            service.load()
            return service, "the local model (SmolLM2-135M)"
        except Exception as exc:
            print(f"(local model unavailable: {exc}; using a scripted stand-in)", file=sys.stderr)
    service = ScriptedService([
        reply(tool_uses=[ToolUse("call_1", TOOL, {"timezone": "Asia/Tokyo"})]),
        lambda request: reply(f"Here is the time in Tokyo: {request.messages[-1].tool_results()[0].text()}"),
    ])
    return service, "a scripted stand-in"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripted", action="store_true", help="play the model with a ScriptedService")
    args = parser.parse_args()

    service, described = model(args.scripted)
    time_server = MCPServer.stdio("time", sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"])
    with Convo(service, mcp_servers=[time_server], listener=ShowTools()) as c:
        print(f"model:   {described}")
        print(f"tools:   {', '.join(sorted(t.name for t in c.available_tools()))}")
        # A tiny model needs telling which tool to call; tool_choice applies to the first request only.
        final = c.run(QUESTION, tool_choice=ToolChoice.tool(TOOL), max_turns=3)
        print(f"answer:  {final.text().strip()}")
    print(f"server stopped: {time_server.closed}")


if __name__ == "__main__":
    main()
