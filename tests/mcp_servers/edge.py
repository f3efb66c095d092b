"""An MCP server for convo's tests, built on the SDK's own server framework (MCPServer, once FastMCP).

Run as ``python edge.py`` (stdio) or ``python edge.py --http`` (streamable
HTTP on a free port of 127.0.0.1, which it prints as its first stdout line).
Its tools are the edge cases: slow calls, a crash, a hang, images, resources,
structured output, errors, a malformed result and a changing tool list.

Environment:
    EDGE_FAIL_FLAG: a path; while that file exists, the server exits at start.
    EDGE_TOKEN: with --http, the bearer token every request must carry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)
from typing_extensions import TypedDict

# The smallest valid PNG: one transparent pixel.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

server = MCPServer("edge")
cancelled: list[str] = []
# The SDK points fd 1 at stderr while it serves (stray prints must not corrupt
# the protocol); a copy taken first still reaches the client, for `malformed`.
WIRE = os.dup(1)


class Weather(TypedDict):
    city: str
    celsius: float


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(seconds: float, tag: str = "") -> str:
    """Sleep, then say so; a cancelled call is remembered under its tag."""
    print(f"slow call {tag!r} started", file=sys.stderr, flush=True)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.append(tag)
        print(f"slow call {tag!r} cancelled", file=sys.stderr, flush=True)
        raise
    return f"slept {seconds}"


@server.tool()
def cancellations() -> str:
    """The tags of the slow calls that were cancelled, as a JSON list."""
    return json.dumps(cancelled)


@server.tool()
def crash() -> str:
    """Exit the server process at once, mid-call."""
    print("edge: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Block the server's event loop: it stops answering anything."""
    time.sleep(3600)
    return "never"


@server.tool()
async def malformed(ctx: Context) -> str:
    """Answer this call with a result whose content is not a list, then never answer properly."""
    request_id = int(ctx.request_id) if ctx.request_id.isdigit() else ctx.request_id
    line = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"content": "not a list"}}) + "\n"
    os.write(WIRE, line.encode())
    await asyncio.sleep(3600)
    return "never"


@server.tool()
def image() -> CallToolResult:
    """A one-pixel PNG and a caption."""
    return CallToolResult(content=[
        TextContent(type="text", text="a pixel"),
        ImageContent(type="image", data=base64.b64encode(PIXEL).decode(), mime_type="image/png"),
    ])


@server.tool()
def resources() -> CallToolResult:
    """A text resource, a PDF, an opaque blob and a link."""
    return CallToolResult(content=[
        EmbeddedResource(type="resource", resource=TextResourceContents(
            uri="file:///notes.txt", mime_type="text/plain", text="remember the milk")),
        EmbeddedResource(type="resource", resource=BlobResourceContents(
            uri="file:///report.pdf", mime_type="application/pdf", blob=base64.b64encode(b"%PDF-1.4").decode())),
        EmbeddedResource(type="resource", resource=BlobResourceContents(
            uri="file:///data.bin", mime_type="application/octet-stream", blob=base64.b64encode(b"\0" * 30).decode())),
        ResourceLink(type="resource_link", uri="https://example.invalid/doc", name="doc"),
    ])


@server.tool()
def weather(city: str) -> Weather:
    """Structured weather for a city."""
    return {"city": city, "celsius": 21.5}


@server.tool()
def structured_only() -> CallToolResult:
    """Structured content with no content blocks at all."""
    return CallToolResult(content=[], structured_content={"answer": 42})


@server.tool()
def fail(reason: str) -> CallToolResult:
    """An error result the model should read."""
    return CallToolResult(content=[TextContent(type="text", text=f"cannot: {reason}")], is_error=True)


@server.tool()
def raises() -> str:
    """Raise inside the tool (the framework makes it an error result)."""
    raise ValueError("the tool broke")


@server.tool()
def getenv(name: str) -> str:
    """An environment variable of the server process ("" if unset)."""
    return os.environ.get(name, "")


@server.tool()
def where() -> str:
    """The server's working directory and process id, as JSON."""
    return json.dumps({"cwd": os.getcwd(), "pid": os.getpid()})


@server.tool()
def noisy(text: str) -> str:
    """Write text to the server's stderr (and nothing to the protocol)."""
    print(text, file=sys.stderr, flush=True)
    return "written"


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called name and announce that the tool list changed."""
    server.add_tool(lambda: f"I am {name}", name=name, description=f"A tool added at run time: {name}")
    if ctx.protocol_version == "2026-07-28":
        await ctx.notify_tools_changed()
    else:
        await ctx.session.send_tool_list_changed()
    return f"added {name}"


def serve_http() -> None:
    import socket

    import uvicorn
    from starlette.responses import JSONResponse

    app = server.streamable_http_app()
    token = os.environ.get("EDGE_TOKEN")
    if token:
        inner = app

        async def app(scope, receive, send):
            headers = dict(scope.get("headers") or [])
            if scope["type"] == "http" and headers.get(b"authorization") != f"Bearer {token}".encode():
                await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
                return
            await inner(scope, receive, send)

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may take the port back at once
    sock.bind(("127.0.0.1", int(os.environ.get("EDGE_PORT", "0"))))
    sock.listen(128)  # connections queue from now on, before uvicorn is up
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    flag = os.environ.get("EDGE_FAIL_FLAG")
    if flag and os.path.exists(flag):
        print("edge: refusing to start (EDGE_FAIL_FLAG exists)", file=sys.stderr, flush=True)
        sys.exit(2)
    print("edge: starting", file=sys.stderr, flush=True)
    if "--http" in sys.argv:
        serve_http()
    else:
        server.run()
