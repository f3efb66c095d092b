"""MCP servers as tools: :class:`MCPServer`, a Model Context Protocol client for blocking code.

The official ``mcp`` SDK is asyncio-only. Each :class:`MCPServer` runs the
SDK on an event loop in a thread of its own, which convo owns: nothing here
needs (or touches) an event loop of yours, so it works the same in a script,
in a service's threads and inside Jupyter's running loop. Tool calls cross
into that loop with :func:`asyncio.run_coroutine_threadsafe` and are waited
for with :mod:`concurrent.futures` timeouts on the calling thread. One loop
thread per server (not one shared by all) keeps servers independent: a
server that misbehaves, or is closed, never holds up another.

::

    time = convo.MCPServer.stdio("time", sys.executable, ["-m", "mcp_server_time"])
    with convo.Convo(tools=[weather], mcp_servers=[time]) as c:
        c.run("What time is it in Tokyo?")      # the model sees mcp__time__get_current_time

The server starts on first use (or :meth:`MCPServer.start`); its tools join
the convo named ``mcp__{server}__{tool}``; the convo's ``close()`` stops it.
One session serves every call, so a reply's calls run concurrently; each call
has a timeout, and ``Convo.cancel()`` / ``cancel_tool_use()`` send the server
MCP's cancellation. Whatever goes wrong (a server that will not start, dies
mid-call, stops answering or sends a malformed result) becomes an error
result naming the server, and the next call starts the server afresh. A
stdio server's stderr goes to convo's log (``mcp_server_stderr`` at info
level), never to your terminal.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import _mcp_wire as wire
from ._log import log
from .errors import ArgumentTypeError, ConfigurationError, ConvoError
from .tools import Tool, ToolOut, tool_call_info

__all__ = ["MCPServer", "MCPServerError"]

#: How long a call may take by default, in seconds.
DEFAULT_TIMEOUT = 60.0
#: How long starting a server (spawning or connecting, the handshake, listing its tools) may take by default.
DEFAULT_START_TIMEOUT = 30.0
#: After a call timed out, how long the server has to answer a tools/list before it is taken for hung.
_PROBE_TIMEOUT = 5.0
#: A failed start is not retried by tools() (which runs before every request) for this long; calls always retry.
_START_RETRY_SECONDS = 10.0
#: Slack on top of the loop-side timeouts for the thread waiting on them (they fire first).
_GRACE = 5.0
#: Stopping a stdio server takes at most ~6 s in the SDK (stdin closed, SIGTERM, SIGKILL, each waited for).
_CLOSE_TIMEOUT = 15.0
_MAX_PAGES = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_STDERR_LINE_MAX = 4000

try:
    _ExceptionGroup = BaseExceptionGroup
except NameError:  # Python 3.10: anyio depends on the backport
    from exceptiongroup import BaseExceptionGroup as _ExceptionGroup

_SDK: Any = None
_open_servers: weakref.WeakSet = weakref.WeakSet()


class MCPServerError(ConvoError, ConnectionError):
    """An MCP server could not be started or reached.

    :meth:`MCPServer.start` raises it; during a conversation the same
    message is what the model reads as the tool's error result.

    Attributes:
        server: the server's name.
        reason: what went wrong.
    """

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"MCP server {server!r} {reason}")


def _sdk() -> Any:
    """The parts of the ``mcp`` SDK convo uses, imported on first need."""
    global _SDK
    if _SDK is None:
        try:
            import httpx2
            import mcp
            import mcp_types
            import pydantic
            from mcp.client.stdio import StdioServerParameters, stdio_client
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared.exceptions import MCPError
            from mcp.shared.subscriptions import ToolsListChanged
            from mcp_types.version import MODERN_PROTOCOL_VERSIONS
        except ImportError as exc:
            raise ConfigurationError(
                f"MCP servers need the mcp package ({exc}); install it with: pip install 'convo[mcp]'"
            ) from None
        # The SDK logs through stdlib loggers without a handler of its own, so
        # an unconfigured application would get its warnings on stderr from
        # logging's last resort. A library never prints: give them a NullHandler
        # (they still propagate to whatever logging the application sets up).
        for name in ("mcp", "client"):
            logging.getLogger(name).addHandler(logging.NullHandler())
        # And they log request URLs (httpx2 at info) and errors quoting them:
        # blank out the secrets servers were given, in every record they make.
        scrub = _ScrubSecrets()
        for name in ("mcp", "client", "httpx2", *logging.root.manager.loggerDict):
            if name.split(".")[0] in ("mcp", "client", "httpx2", "httpcore2"):
                logging.getLogger(name).addFilter(scrub)
        from types import SimpleNamespace

        _SDK = SimpleNamespace(
            Client=mcp.Client, Implementation=mcp_types.Implementation, MCPError=MCPError,
            ToolListChangedNotification=mcp_types.ToolListChangedNotification,
            LoggingMessageNotification=mcp_types.LoggingMessageNotification,
            ToolsListChanged=ToolsListChanged, MODERN=MODERN_PROTOCOL_VERSIONS,
            CONNECTION_CLOSED=mcp_types.CONNECTION_CLOSED, REQUEST_TIMEOUT=mcp_types.REQUEST_TIMEOUT,
            ValidationError=pydantic.ValidationError, StdioServerParameters=StdioServerParameters,
            stdio_client=stdio_client, streamable_http_client=streamable_http_client, httpx=httpx2,
        )
    return _SDK


_secrets: set[str] = set()  # every secret any MCPServer was given; kept for the life of the process


class _ScrubSecrets(logging.Filter):
    """Blanks out secrets MCP servers were given (headers, env, URL tokens) in the SDK's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            scrubbed = message
            for secret in sorted(_secrets, key=len, reverse=True):
                scrubbed = scrubbed.replace(secret, "***")
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


class MCPServer:
    """An MCP server whose tools a :class:`convo.Convo` can call, from ordinary blocking code.

    Make one with :meth:`stdio` (a command convo runs) or :meth:`http` (a
    streamable HTTP endpoint), and give it to ``Convo(mcp_servers=[...])``,
    or use it on its own: ``with MCPServer.stdio(...) as s: s.tools()``.

    The server starts on first use; :meth:`start` starts it now and raises
    :class:`MCPServerError` if it cannot. :meth:`tools` lists its tools as
    :class:`convo.Tool` objects named ``mcp__{name}__{tool}``, whose ``run``
    makes the call (they may be called directly too). :meth:`close` (or
    leaving the ``with`` block, or closing the convo it was given to) stops
    it; a closed server has no tools and cannot be started again.

    Faults are results, not exceptions: a call to a server that cannot be
    (re)started, that dies during the call, that does not answer within
    ``timeout`` (the call is cancelled on the server; a server that then
    does not answer a tools/list either is taken for hung) or that sends a
    malformed result returns an error result naming the server, and the next
    call starts the server afresh. ``tools()`` never raises: it returns the
    last list it knew (empty if none) and logs why.

    The tool list is fetched when the server starts and again, between
    turns, after the server says it changed (``notifications/tools/list_changed``,
    or a ``subscriptions/listen`` event on 2026-07-28 servers).

    Thread-safe: every method, and every tool's ``run``, may be called from
    any number of threads at once. One session serves concurrent calls; the
    SDK runs on an event loop in a thread this object owns (started with the
    server, stopped by :meth:`close`, and closed at interpreter exit if you
    forgot). Secrets you give (``headers``, ``env``) never appear in its
    repr, its errors or convo's log.
    """

    def __init__(self, name: str, *, transport: str, target: dict, timeout: float = DEFAULT_TIMEOUT,
                 start_timeout: float = DEFAULT_START_TIMEOUT, protocol: str = "auto") -> None:
        """Use :meth:`stdio` or :meth:`http`."""
        if not isinstance(name, str):
            raise ArgumentTypeError(f"an MCP server's name must be a str, got {type(name).__name__}")
        if not _NAME_RE.match(name):
            raise ConfigurationError(f"MCP server name {name!r} must be 1-40 letters, digits, '_' or '-' "
                                     "(its tools are named mcp__{name}__{tool})")
        for what, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ConfigurationError(f"{what} must be a positive number of seconds, got {value!r}")
        if protocol not in ("auto", "legacy"):
            raise ConfigurationError(f"protocol must be 'auto' or 'legacy', got {protocol!r}")
        _sdk()  # fail here, with the install hint, rather than on first use
        self.name = name
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.protocol = protocol
        self._list_timeout = min(self.timeout, 2 * _PROBE_TIMEOUT)
        self._kind = transport
        self._target = target
        self._secrets = tuple(sorted(target.get("secrets", ()), key=len, reverse=True))
        _secrets.update(self._secrets)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: _Connection | None = None
        self._live: set[_Connection] = set()  # touched on the loop thread only
        self._starting: concurrent.futures.Future | None = None
        self._refreshing: concurrent.futures.Future | None = None
        self._tools: tuple | None = None
        self._stale = False
        self._start_failed_at: float | None = None
        self._closed = False
        self._started_by_user = False
        self._generations = itertools.count(1)

    # --- construction ----------------------------------------------------------------

    @classmethod
    def stdio(cls, name: str, command: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None, *, timeout: float = DEFAULT_TIMEOUT,
              start_timeout: float = DEFAULT_START_TIMEOUT, protocol: str = "auto") -> MCPServer:
        """A server convo runs as a subprocess and talks to over its stdin and stdout.

        Args:
            name: what its tools are prefixed with (``mcp__{name}__{tool}``).
            command: the program, e.g. ``"npx"`` or ``sys.executable``.
            args: its arguments.
            env: environment variables for it, on top of a safe few of yours
                (``PATH``, ``HOME``, ``USER``, ``SHELL``, ``TERM``, ``LOGNAME``:
                the rest of your environment, API keys included, is not passed).
            cwd: the directory it runs in (default: yours).
            timeout: seconds a call may take before it is cancelled.
            start_timeout: seconds starting it (with the handshake and the
                first tool list) may take.
            protocol: ``"auto"`` (ask for the 2026-07-28 protocol, falling
                back to the initialize handshake) or ``"legacy"`` (the
                handshake only, for servers that choke on the question).

        Its stderr goes to convo's log, a line per event (``mcp_server_stderr``).
        The whole process tree is stopped by :meth:`close`.
        """
        if not isinstance(command, str) or not command:
            raise ArgumentTypeError(f"command must be a non-empty str, got {command!r}")
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) \
                or not all(isinstance(a, str) for a in args):
            raise ArgumentTypeError("args must be a list of str (not one string: split it into its arguments)")
        if env is not None and (not isinstance(env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise ArgumentTypeError("env must be a mapping of str to str")
        if cwd is not None and not isinstance(cwd, (str, os.PathLike)):
            raise ArgumentTypeError(f"cwd must be a path, got {type(cwd).__name__}")
        target = {"command": command, "args": list(args), "env": dict(env) if env else None,
                  "cwd": os.fspath(cwd) if cwd is not None else None,
                  "secrets": [v for v in (env or {}).values() if len(v) >= 8]}
        return cls(name, transport="stdio", target=target, timeout=timeout, start_timeout=start_timeout,
                   protocol=protocol)

    @classmethod
    def http(cls, name: str, url: str, headers: Mapping[str, str] | None = None, *,
             timeout: float = DEFAULT_TIMEOUT, start_timeout: float = DEFAULT_START_TIMEOUT,
             protocol: str = "auto") -> MCPServer:
        """A server at a streamable HTTP endpoint, e.g. ``http://127.0.0.1:8000/mcp``.

        Args:
            name: what its tools are prefixed with (``mcp__{name}__{tool}``).
            url: the endpoint.
            headers: sent with every request (``{"Authorization": "Bearer ..."}``);
                they never appear in reprs, errors or logs.
            timeout, start_timeout, protocol: as for :meth:`stdio`.

        Starting connects and opens an MCP session; a server that went away
        is reconnected to by the next call.
        """
        if not isinstance(url, str):
            raise ArgumentTypeError(f"url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"url must be an http:// or https:// URL, got {_safe_url(url)!r}")
        if headers is not None and (not isinstance(headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise ArgumentTypeError("headers must be a mapping of str to str")
        secrets = [v for v in (headers or {}).values() if len(v) >= 4]
        secrets += [s for s in (parts.password, parts.query) if s and len(s) >= 4]
        target = {"url": url, "headers": dict(headers or {}), "secrets": secrets}
        return cls(name, transport="http", target=target, timeout=timeout, start_timeout=start_timeout,
                   protocol=protocol)

    def __repr__(self) -> str:
        if self._kind == "stdio":
            where = f"stdio {os.path.basename(self._target['command'])!r}"
        else:
            where = f"http {_safe_url(self._target['url'])!r}"
        state = "closed" if self._closed else "running" if self.running else "not running"
        return f"<MCPServer {self.name!r} {where} {state}>"

    # --- lifetime --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a session with the server is open now."""
        conn = self._conn
        return conn is not None and conn.alive

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> MCPServer:
        """Start the server now, if it is not running (it starts on first use otherwise).

        Returns the server, so ``server = MCPServer.stdio(...).start()`` works.

        A server you start yourself (this, or ``with server:``) is yours to
        stop: convos that use it leave it running when they close, so one
        server can serve many convos. A server that a convo started on first
        use stops when that convo closes.

        Raises:
            MCPServerError: it could not be started (the reason says why), or
                it was closed.
        """
        self._started_by_user = True
        self._connect()
        return self

    @property
    def started_by_user(self) -> bool:
        """Whether you started it (``start()`` or ``with``): then closing a convo leaves it running."""
        return self._started_by_user

    def close(self) -> None:
        """Stop the server (a stdio server's whole process tree) and the thread that talks to it. Idempotent.

        Calls still running get error results. Waits (a few seconds at most)
        until the process is gone.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        _open_servers.discard(self)
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CLOSE_TIMEOUT)
        except Exception as exc:  # closing goes on whatever happened
            log.warning("mcp_server_close_failed", server=self.name, error=self._describe(exc))
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join(_CLOSE_TIMEOUT)
        log.info("mcp_server_closed", server=self.name)

    def __enter__(self) -> MCPServer:
        self._started_by_user = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- tools -----------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        """The server's tools, as :class:`convo.Tool` objects named ``mcp__{name}__{tool}``.

        Starts the server if it never ran (blocking until it has listed its
        tools). Cheap otherwise: the list is kept, and fetched again only
        after the server said it changed. Never raises: when the server
        cannot be reached it returns the last list it knew (empty if none)
        and logs why; a failed first start is retried by ``tools()`` at most
        every few seconds (a call always retries).
        """
        try:
            return list(self._current_tools())
        except Exception as exc:  # tools() runs before every request: it must not break one
            log.warning("mcp_tools_failed", server=self.name, error=self._describe(exc))
            return list(self._tools or ())

    def _current_tools(self) -> tuple:
        with self._lock:
            if self._closed:
                return ()
            conn, known, stale = self._conn, self._tools, self._stale
            failed_at = self._start_failed_at
        if conn is None or not conn.alive:
            if known is not None:
                return known  # it ran and stopped: the next call restarts it
            if failed_at is not None and time.monotonic() - failed_at < _START_RETRY_SECONDS:
                return ()
            try:
                self._connect()
            except MCPServerError:
                return ()  # logged by _open
            return self._tools or ()
        if stale:
            self._refresh(conn)
        return self._tools or ()

    def _refresh(self, conn: _Connection) -> None:
        with self._lock:
            future = self._refreshing
            if future is None:
                self._stale = False  # cleared first: a change announced during the listing marks it again
                future = self._submit(self._relist(conn))
                self._refreshing = future
        try:
            future.result(self._list_timeout + _GRACE)
        except Exception as exc:  # the last list stands
            log.warning("mcp_tools_refresh_failed", server=self.name, error=self._describe(exc))

    async def _relist(self, conn: _Connection) -> None:
        try:
            try:
                listing = await asyncio.wait_for(_list_tools(conn.client), self._list_timeout)
            except asyncio.TimeoutError:
                # A server that cannot list its tools in that time is taken for hung (see _call).
                conn.lose("did not answer tools/list")
                raise MCPServerError(self.name, f"did not list its tools within {self._list_timeout:g}s; "
                                     "it will be restarted on the next call") from None
            tools = self._build_tools(listing)
            with self._lock:
                if self._conn is not conn:
                    return  # restarted meanwhile, with a fresh list
                old, self._tools = {t.name for t in self._tools or ()}, tools
            new = {t.name for t in tools}
            log.info("mcp_tools_changed", server=self.name, added=sorted(new - old), removed=sorted(old - new))
        finally:
            with self._lock:
                self._refreshing = None

    def _build_tools(self, listing: list) -> tuple:
        tools: dict[str, Tool] = {}
        for entry in listing:
            try:
                mcp_name, description, schema = wire.tool_parts(entry)
                name = wire.convo_tool_name(self.name, mcp_name)
                if name in tools:
                    raise wire.UnusableTool(f"tool {mcp_name!r}: its name {name!r} is taken by another of its tools")
                tools[name] = Tool(name, description, schema, functools.partial(self._invoke, mcp_name))
            except (wire.UnusableTool, ConvoError) as exc:
                log.warning("mcp_tool_skipped", server=self.name, reason=str(exc))
        return tuple(tools.values())

    def _mark_stale(self, conn: _Connection) -> None:
        with self._lock:
            if self._conn is conn:
                self._stale = True
        log.debug("mcp_tools_list_changed", server=self.name)

    # --- calls -----------------------------------------------------------------------

    def _invoke(self, tool: str, arguments: dict) -> ToolOut:
        """Call ``tool`` with ``arguments`` and wait (a tool's ``run``, on a worker thread)."""
        info = tool_call_info()
        cancelled = info.cancelled if info is not None else None
        if cancelled is not None and cancelled.is_set():
            return self._error(f"call to {tool!r} was cancelled before it started")
        try:
            conn = self._connect()
            future = self._submit(self._call(conn, tool, arguments))
        except MCPServerError as exc:
            return ToolOut(str(exc), error=True)
        remove = cancelled.add_callback(future.cancel) if cancelled is not None else None
        try:
            return future.result(self.timeout + min(_PROBE_TIMEOUT, self.timeout) + _GRACE)
        except concurrent.futures.CancelledError:
            if cancelled is not None and cancelled.is_set():
                return self._error(f"call to {tool!r} was cancelled")
            return self._error(f"was closed during the call to {tool!r}")
        except concurrent.futures.TimeoutError:
            future.cancel()
            return self._error(f"did not answer the call to {tool!r} within {self.timeout:g}s")
        finally:
            if remove is not None:
                remove()

    async def _call(self, conn: _Connection, tool: str, arguments: dict) -> ToolOut:
        sdk = _sdk()
        conn.inflight += 1
        try:
            result = await conn.client.call_tool(tool, arguments, read_timeout_seconds=self.timeout)
            # Notifications the server sent before its result (tools/list_changed)
            # are handled in tasks of their own: let them run, so the next
            # request's tools() already knows.
            await asyncio.sleep(0)
            raw = result.model_dump(mode="json", by_alias=True, exclude_none=True)
            return wire.result_out(self.name, tool, raw)
        except sdk.MCPError as exc:
            if exc.code == sdk.REQUEST_TIMEOUT:
                if await conn.responsive(min(_PROBE_TIMEOUT, self.timeout)):
                    return self._error(f"did not answer the call to {tool!r} within {self.timeout:g}s; "
                                       "the call was cancelled")
                conn.lose("stopped answering")
                return self._error(f"did not answer the call to {tool!r} within {self.timeout:g}s, nor a "
                                   "tools/list after it; it will be restarted on the next call")
            if exc.code == sdk.CONNECTION_CLOSED or conn.lost is not None:
                reason = conn.lost or "closed the connection"
                conn.lose(reason)
                return self._error(f"stopped during the call to {tool!r} ({reason}); "
                                   "it will be restarted on the next call")
            return self._error(f"refused the call to {tool!r}: {self._scrub(exc.error.message)} "
                               f"(error {exc.code})")
        except (sdk.ValidationError, wire.MalformedResult, RuntimeError) as exc:
            # Malformed: the session may be out of step with the server; finish the
            # calls in flight and start afresh for the next one.
            conn.retire("sent a malformed result")
            return self._error(f"sent a malformed result for {tool!r} ({self._describe(exc)}); "
                               "it will be restarted on the next call")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport failure (connection refused, reset...)
            reason = self._describe(exc)
            conn.lose(reason)
            return self._error(f"failed during the call to {tool!r} ({reason}); "
                               "it will be restarted on the next call")
        finally:
            conn.inflight -= 1
            if conn.inflight == 0 and conn.lost is not None:
                conn.stop.set()

    def _error(self, reason: str) -> ToolOut:
        return ToolOut(f"MCP server {self.name!r} {reason}", error=True)

    # --- connections (the loop thread) ------------------------------------------------

    def _connect(self) -> _Connection:
        """The open connection, starting the server (once, whoever asks) if there is none."""
        with self._lock:
            if self._closed:
                raise MCPServerError(self.name, "is closed")
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            future = self._starting
            if future is None:
                future = self._submit(self._open())
                self._starting = future
        try:
            return future.result(self.start_timeout + _GRACE)
        except MCPServerError:
            raise
        except concurrent.futures.TimeoutError:
            raise MCPServerError(self.name, f"did not start within {self.start_timeout:g}s") from None
        except concurrent.futures.CancelledError:
            raise MCPServerError(self.name, "was closed while it started") from None

    def _submit(self, coro: Any) -> concurrent.futures.Future:
        """Run ``coro`` on this server's loop (started on first use). Call with or without the lock."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_run_loop, args=(loop,), name=f"convo-mcp-{self.name}", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            _open_servers.add(self)
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop stopped: closed under us
            coro.close()
            raise MCPServerError(self.name, "is closed") from None

    async def _open(self) -> _Connection:
        conn = _Connection(self, next(self._generations))
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._live.add(conn)
        conn.task = asyncio.create_task(conn.run(ready))
        try:
            try:
                listing = await asyncio.wait_for(asyncio.shield(ready), self.start_timeout)
            except asyncio.TimeoutError:
                conn.lose("did not start in time")
                raise MCPServerError(self.name, f"did not start within {self.start_timeout:g}s") from None
            except asyncio.CancelledError:
                conn.lose("closed while it started")
                raise
            except Exception as exc:
                verb = "start" if self._kind == "stdio" else "connect"
                raise MCPServerError(self.name, f"failed to {verb}: {conn.closed_early or self._describe(exc)}") from None
            tools = self._build_tools(listing)
            with self._lock:
                if self._closed:
                    conn.lose("closed")
                    raise MCPServerError(self.name, "is closed")
                self._conn, self._tools, self._stale = conn, tools, False
                self._start_failed_at = None
            log.info("mcp_server_started", server=self.name, protocol=conn.client.protocol_version,
                     tools=len(tools), generation=conn.generation)
            return conn
        except MCPServerError as exc:
            with self._lock:
                self._start_failed_at = time.monotonic()
            log.warning("mcp_server_start_failed", server=self.name, error=exc.reason)
            raise
        finally:
            with self._lock:
                self._starting = None

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None

    async def _shutdown(self) -> None:
        live = list(self._live)
        for conn in live:
            conn.lose("closed")
        tasks = [c.task for c in live if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT - 1)

    async def _transport(self, stack: contextlib.AsyncExitStack, conn: _Connection) -> Any:
        """The SDK transport for a new connection, its resources entered on ``stack``."""
        sdk = _sdk()
        if self._kind == "http":
            http = sdk.httpx.AsyncClient(headers=self._target["headers"],
                                         timeout=sdk.httpx.Timeout(30.0, read=300.0))
            await stack.enter_async_context(http)
            return _watched(sdk.streamable_http_client(self._target["url"], http_client=http), conn)
        params = sdk.StdioServerParameters(command=self._target["command"], args=self._target["args"],
                                           env=self._target["env"], cwd=self._target["cwd"])
        read_fd, write_fd = os.pipe()
        try:
            stderr = await _StderrLog.open(read_fd, self)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        stack.push_async_callback(stderr.aclose)
        return _watched(_stdio_with_stderr(sdk, params, write_fd), conn)

    # --- secrets ---------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if self._kind == "http":
            text = text.replace(self._target["url"], _safe_url(self._target["url"]))
        return text

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(_describe(exc))


class _Connection:
    """One session with the server (one process, for stdio), from start to stop. Lives on the loop thread.

    ``lost`` is None while it serves calls; once set (it died, was closed,
    or was retired after a malformed result) new calls go to a fresh
    connection, and this one stops when its last call in flight returns.
    """

    def __init__(self, server: MCPServer, generation: int) -> None:
        self.server = server
        self.generation = generation
        self.client: Any = None
        self.task: asyncio.Task | None = None
        self.stop = asyncio.Event()
        self.lost: str | None = None
        self.inflight = 0
        self.ready = False
        self.closed_early: str | None = None  # why the server went away before the session was open

    @property
    def alive(self) -> bool:
        return self.lost is None

    def lose(self, reason: str) -> None:
        """Stop at once: calls in flight end with an error."""
        if self.lost is None:
            self.lost = reason
            log.info("mcp_server_lost", server=self.server.name, reason=reason, generation=self.generation)
        self.server._forget(self)
        if self.ready:
            self.stop.set()
        elif self.task is not None:
            self.task.cancel()  # still starting: nothing to finish

    def retire(self, reason: str) -> None:
        """Take no new calls; stop when the calls in flight have returned."""
        if self.lost is None:
            self.lost = reason
            log.info("mcp_server_retired", server=self.server.name, reason=reason, generation=self.generation)
        self.server._forget(self)
        if self.inflight == 0:
            self.stop.set()

    async def responsive(self, timeout: float) -> bool:
        """Whether the server answers a tools/list within ``timeout`` (ping is gone from the 2026 protocol)."""
        try:
            await asyncio.wait_for(self.client.session.list_tools(), timeout)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure to answer counts as not answering
            return False

    async def run(self, ready: asyncio.Future) -> None:
        """Open the session, report the tool list through ``ready``, serve until stopped, then tear down."""
        server, sdk = self.server, _sdk()
        watcher: asyncio.Task | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await server._transport(stack, self)
                client = sdk.Client(transport, mode=server.protocol, cache=None,
                                    message_handler=self._on_message, logging_callback=self._on_log,
                                    client_info=sdk.Implementation(name="convo", version=_version()))
                await stack.enter_async_context(client)
                self.client = client
                listing = await _list_tools(client)
                caps = client.server_capabilities
                if client.protocol_version in sdk.MODERN and caps.tools is not None and caps.tools.list_changed:
                    watcher = asyncio.create_task(self._watch_tool_changes())
                self.ready = True
                ready.set_result(listing)
                if self.lost is None:
                    await self.stop.wait()
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
        except BaseException as exc:  # whatever ends the session ends this connection
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            elif self.lost is None:
                log.warning("mcp_session_failed", server=server.name, error=server._describe(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            if self.lost is None:
                self.lost = "the session ended"
            server._forget(self)
            server._live.discard(self)

    async def _on_message(self, message: Any) -> None:
        sdk = _sdk()
        if isinstance(message, sdk.ToolListChangedNotification):
            self.server._mark_stale(self)
        elif isinstance(message, Exception):
            log.debug("mcp_transport_error", server=self.server.name, error=self.server._describe(message))

    async def _on_log(self, params: Any) -> None:
        log.debug("mcp_server_log", server=self.server.name, level=str(params.level),
                  logger=params.logger, data=self.server._scrub(str(params.data)))

    async def _watch_tool_changes(self) -> None:
        """2026-07-28 servers announce list changes on a subscriptions/listen stream, not as notifications."""
        sdk = _sdk()
        try:
            async with self.client.listen(tools_list_changed=True) as subscription:
                async for event in subscription:
                    if isinstance(event, sdk.ToolsListChanged):
                        self.server._mark_stale(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # without the stream the list is refreshed on restart only
            log.debug("mcp_listen_ended", server=self.server.name, error=self.server._describe(exc))


async def _list_tools(client: Any) -> list:
    """Every tool the server lists, as wire JSON, following pagination."""
    tools: list = []
    cursor = None
    for _ in range(_MAX_PAGES):
        page = await client.session.list_tools(params=_page(cursor))
        tools.extend(t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _page(cursor: str | None) -> Any:
    if cursor is None:
        return None
    import mcp_types

    return mcp_types.PaginatedRequestParams(cursor=cursor)


@contextlib.asynccontextmanager
async def _stdio_with_stderr(sdk: Any, params: Any, write_fd: int):
    """The SDK's stdio transport with the server's stderr on our pipe; our copy of its write end closed once spawned."""
    try:
        async with sdk.stdio_client(params, errlog=write_fd) as streams:
            os.close(write_fd)
            write_fd = -1
            yield streams
    finally:
        if write_fd >= 0:
            os.close(write_fd)


@contextlib.asynccontextmanager
async def _watched(transport: Any, conn: _Connection):
    """``transport``, noticing when the server's side of it ends (a stdio server exiting, say)."""
    async with transport as (read_stream, write_stream):
        yield _EndWatch(read_stream, conn), write_stream


class _EndWatch:
    """A transport's read stream that marks its connection lost when the stream ends."""

    def __init__(self, stream: Any, conn: _Connection) -> None:
        self._stream = stream
        self._conn = conn

    def __getattr__(self, name: str) -> Any:  # last_context and whatever else the SDK looks for
        return getattr(self._stream, name)

    def _ended(self) -> None:
        conn = self._conn
        if conn.lost is not None:
            return
        reason = "the server closed the connection (it may have exited; its stderr is in convo's log)"
        if conn.ready:
            conn.lose(reason)
        else:
            conn.lost = conn.closed_early = reason  # the handshake in flight fails on its own; this says why

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except Exception as exc:
            if type(exc).__name__ in ("EndOfStream", "ClosedResourceError", "BrokenResourceError"):
                self._ended()
            raise

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._ended()
            raise
        except Exception as exc:
            if type(exc).__name__ in ("ClosedResourceError", "BrokenResourceError"):
                self._ended()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> _EndWatch:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._stream.__aexit__(*exc_info)


class _StderrLog(asyncio.Protocol):
    """Reads a stdio server's stderr on the loop and logs it a line at a time."""

    def __init__(self, server: MCPServer) -> None:
        self._server = server
        self._buffer = b""
        self._transport: Any = None
        self._done: asyncio.Future = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, fd: int, server: MCPServer) -> _StderrLog:
        protocol = cls(server)
        pipe = os.fdopen(fd, "rb", buffering=0)
        try:
            await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, pipe)
        except BaseException:
            pipe.close()
            raise
        return protocol

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _STDERR_LINE_MAX:  # a "line" that never ends: log it in pieces
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._emit(line)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = b""
        if not self._done.done():
            self._done.set_result(None)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.strip():
            log.info("mcp_server_stderr", server=self._server.name, line=self._server._scrub(line[:_STDERR_LINE_MAX]))

    async def aclose(self) -> None:
        """Read what the (now stopped) server still wrote, then close the pipe."""
        try:
            await asyncio.wait_for(asyncio.shield(self._done), 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass  # a grandchild still holds the pipe open; stop listening to it
        finally:
            if self._transport is not None:
                self._transport.close()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The body of a server's loop thread: run until stopped, then leave nothing behind."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _describe(exc: BaseException) -> str:
    """One line for an exception, looking through the exception groups anyio wraps errors in."""
    while isinstance(exc, _ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, _ExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    message = getattr(getattr(exc, "error", None), "message", None) or str(exc)
    if type(exc).__name__ == "ValidationError" and callable(getattr(exc, "errors", None)):
        first = exc.errors()[0]  # pydantic's full text runs to a dozen lines
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{exc.error_count()} problem(s), first {where}: {first.get('msg')}"
    message = " ".join(message.split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."


def _safe_url(url: str) -> str:
    """``url`` without its user, password, query and fragment (where tokens hide)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


@functools.lru_cache(maxsize=1)
def _version() -> str:
    from . import __version__

    return __version__


@atexit.register
def _close_all() -> None:
    """Stop servers the application forgot to close, so no server process outlives it."""
    for server in list(_open_servers):
        try:
            server.close()
        except Exception:  # one server failing to stop must not keep the others running
            pass
