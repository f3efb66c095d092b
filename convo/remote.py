"""A synchronous client for ``convo serve`` (and any server speaking the Chucky protocol), and its tokens.

::

    from convo import tool
    from convo.remote import Client

    @tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    with Client("ws://127.0.0.1:8765/ws", token) as client:
        with client.create_session(tools=[add], max_turns=5) as session:
            result = session.prompt("What is 7 + 15? Use add.")
            print(result.result, result.total_cost_usd)
            for message in session.send_and_stream("And 1 + 1?"):
                ...                                  # AssistantMessage, UserMessage, ..., ResultMessage

No asyncio: each session is one WebSocket (websocket-client) with one
reader thread; client-side tools are ordinary :func:`convo.tool` functions,
run concurrently on a small thread pool when the server's model calls them,
and their results go back as ``tool_result`` frames.

Tokens: :func:`create_token`, :func:`create_budget` and :func:`verify_token`
make and check the tokens every Chucky SDK makes (HS256 JWTs with a budget
and optional permissions; see :mod:`convo.server.auth`). They need PyJWT
(``pip install 'convo[remote]'``); the client itself does not.

Thread safety: a :class:`Client` and its sessions may be used from any
thread; one session runs one turn at a time (a second ``send`` while a
turn runs is queued by the server), and one thread should read its
``stream()``. Handlers (``on_connect``...) run on a session's reader
thread: keep them short, and do not call a session's blocking methods
from them.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._log import log
from .errors import ArgumentTypeError, ConfigurationError, ConvoError
from .server.auth import AuthError, Permissions, TokenBudget, create_budget, create_token, verify_token
from .server.chucky import (
    AssistantMessage,
    ErrorMessage,
    Pong,
    ProtocolError,
    Ready,
    ResultMessage,
    SessionInfo,
    StreamEvent,
    SystemMessage,
    ToolCall,
    UserMessage,
    blocks_to_mcp,
    control_frame,
    init_frame,
    parse_server_frame,
    ping_frame,
    tool_result_frame,
    user_frame,
)
from .tools import Tool, ToolOut, to_content

__all__ = [
    "AssistantMessage",
    "AuthError",
    "Client",
    "ErrorMessage",
    "Permissions",
    "RemoteConnectionError",
    "RemoteError",
    "RemoteSession",
    "RemoteTimeout",
    "ResultMessage",
    "StreamEvent",
    "SystemMessage",
    "TokenBudget",
    "UserMessage",
    "create_budget",
    "create_token",
    "verify_token",
]


class RemoteError(ConvoError, RuntimeError):
    """The server sent an ``error`` frame (or the client hit a protocol failure of its own).

    Attributes:
        code: the protocol's error code (``AUTHENTICATION_ERROR``,
            ``BUDGET_EXCEEDED``, ``CONCURRENCY_LIMIT``, ``SESSION_ERROR``...).
        message: the server's message.
        details: the frame's ``details`` (may be empty).
    """

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        self.code = code
        self.message = message
        self.details = dict(details or {})
        super().__init__(f"{code}: {message}")


class RemoteConnectionError(RemoteError, ConnectionError):
    """The connection could not be opened, or closed before the server finished (code ``CONNECTION_ERROR``)."""

    def __init__(self, message: str) -> None:
        super().__init__("CONNECTION_ERROR", message)


class RemoteTimeout(RemoteConnectionError, TimeoutError):
    """The server did not answer in time (code ``TIMEOUT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "TIMEOUT"
        self.args = (f"TIMEOUT: {message}",)


_CLOSED = object()

Handler = Callable[..., Any] | None


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigurationError(f"the server URL must start with ws:// or wss://, got {url!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("token", "type")]
    query += [("token", token), ("type", "prompt")]  # the Go SDK's comment: the cloud server wants type=prompt
    return urlunsplit(parts._replace(query=urlencode(query)))


class Client:
    """A client of a Chucky-protocol server: makes sessions, each on its own WebSocket.

    Args:
        url: the endpoint, e.g. ``ws://127.0.0.1:8765/ws``.
        token: a token from :func:`create_token` (or any Chucky SDK's).
        timeout: seconds to wait for the connection, ``ready`` and the
            session's id; also the default wait between messages in
            :meth:`RemoteSession.stream` (None: wait for ever).
        tool_workers: client tools that run at once, per session.
        on_connect: ``on_connect(session)``, when the socket is open and the server ready.
        on_disconnect: ``on_disconnect(session)``, when the socket closed.
        on_session_start: ``on_session_start(session)``, when the server gave the session id.
        on_session_end: ``on_session_end(session)``, after the session's connection ended.
        on_error: ``on_error(session, error)`` for every ``error`` frame (a :class:`RemoteError`).

    Thread-safe. A context manager: leaving closes every session it made.
    """

    def __init__(self, url: str, token: str, *, timeout: float | None = 30.0, tool_workers: int = 8,
                 on_connect: Handler = None, on_disconnect: Handler = None, on_session_start: Handler = None,
                 on_session_end: Handler = None, on_error: Handler = None) -> None:
        if not isinstance(token, str) or not token:
            raise ArgumentTypeError("token must be a non-empty str (see convo.remote.create_token)")
        self._url = _with_token(url, token)
        self.url = url
        self.timeout = timeout
        self.tool_workers = tool_workers
        self.handlers = {"connect": on_connect, "disconnect": on_disconnect, "session_start": on_session_start,
                         "session_end": on_session_end, "error": on_error}
        self._lock = threading.Lock()
        self._sessions: list[RemoteSession] = []

    def __repr__(self) -> str:
        return f"<convo.remote.Client {self.url}>"  # never the token

    def create_session(self, *, model: str | None = None, system_prompt: str | None = None,
                       tools: Iterable[Tool] = (), max_turns: int | None = None, max_budget_usd: Any = None,
                       session_id: str | None = None, fork: bool = False, output_format: dict | None = None,
                       include_partial_messages: bool = False, tool_choice: str | None = None) -> "RemoteSession":
        """Open a session: connect, send ``init``, and wait for the server to name it.

        Args:
            model: the model to run (default: the server's).
            system_prompt: instructions for the model.
            tools: client-side :class:`~convo.Tool` objects the model may
                call; they run here, concurrently.
            max_turns: model replies per turn at most.
            max_budget_usd: dollars this session may spend (the server
                ends a turn that would pass it with ``error_max_budget_usd``).
            session_id: resume this earlier session (it must be yours).
            fork: with ``session_id``, continue a copy under a new id.
            output_format: a JSON Schema the final reply must fit
                (``result.structured_output`` holds the value).
            include_partial_messages: stream :class:`StreamEvent` messages too.
            tool_choice: ``"auto"``, ``"any"`` (the model must call a tool),
                ``"none"`` or a tool's name, for the first model request of
                each turn (convo serve's extension to the protocol).

        Raises:
            RemoteError: the server refused (a bad token, a spent budget,
                too many sessions, a session that is not found...).
            RemoteConnectionError: the server could not be reached.
        """
        tools = tuple(tools)
        for t in tools:
            if not isinstance(t, Tool):
                raise ArgumentTypeError(f"tools must be convo.Tool objects (use @convo.tool), got {type(t).__name__}")
        if fork and not session_id:
            raise ConfigurationError("fork=True needs the session_id to fork")
        init = init_frame(model=model, system_prompt=system_prompt, max_turns=max_turns,
                          max_budget_usd=max_budget_usd, tools=tools, session_id=session_id, fork=fork,
                          output_schema=output_format, include_partial_messages=include_partial_messages,
                          tool_choice=tool_choice)
        session = RemoteSession(self, tools)
        with self._lock:
            self._sessions.append(session)
        try:
            session._open(self._url, init)
        except BaseException:
            session.close()
            raise
        return session

    def prompt(self, text: str, **session_options: Any) -> ResultMessage:
        """One turn on a new session (closed afterwards); the result. ``session_options`` as for :meth:`create_session`."""
        with self.create_session(**session_options) as session:
            return session.prompt(text)

    def close(self) -> None:
        """Close every session this client made. Idempotent."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    def _forget(self, session: "RemoteSession") -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class RemoteSession:
    """One session on a server, over its own WebSocket; made by :meth:`Client.create_session`.

    Thread-safe (see the module docstring). A context manager: leaving closes it.
    """

    def __init__(self, client: Client, tools: tuple) -> None:
        self._client = client
        self._tools = {t.name: t for t in tools}
        self._ws: Any = None
        self._send_lock = threading.Lock()
        self._messages: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()
        self._named = threading.Event()
        self._setup_error: RemoteError | None = None
        self._reader: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._ended = threading.Event()
        self.session_id: str | None = None
        #: The last ``system``/``init`` message (tools, model).
        self.info: SystemMessage | None = None

    def __repr__(self) -> str:
        return f"<convo.remote.RemoteSession {self.session_id}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # --- opening ---------------------------------------------------------------------------------

    def _open(self, url: str, init: dict) -> None:
        import websocket

        timeout = self._client.timeout
        try:
            self._ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True,
                                                   skip_utf8_validation=True)
        except (OSError, websocket.WebSocketException) as exc:
            raise RemoteConnectionError(f"cannot connect to {self._client.url}: {type(exc).__name__}: {exc}") from None
        self._ws.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="convo-remote-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            raise RemoteTimeout("the server did not send ready")
        if self._setup_error is not None:
            raise self._setup_error
        self._handle("connect", self)
        self._send(init)
        if not self._named.wait(timeout):
            raise RemoteTimeout("the server did not name the session")
        if self._setup_error is not None:
            raise self._setup_error

    # --- the reader thread -----------------------------------------------------------------------

    def _read(self) -> None:
        import websocket

        try:
            while True:
                try:
                    text = self._ws.recv()
                except (websocket.WebSocketConnectionClosedException, OSError, AttributeError):
                    return
                if not text:
                    return
                try:
                    message = parse_server_frame(text)
                except ProtocolError as exc:
                    log.warning("remote_bad_frame", error=str(exc))
                    continue
                self._dispatch(message)
        finally:
            self._end()

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Ready):
            self._ready.set()
        elif isinstance(message, SessionInfo):
            self.session_id = message.session_id or self.session_id
            first = not self._named.is_set()
            self._named.set()
            if first:
                self._handle("session_start", self)
        elif isinstance(message, ToolCall):
            self._run_tool(message)
        elif isinstance(message, ErrorMessage):
            error = RemoteError(message.code, message.message, message.details)
            self._handle("error", self, error)
            if not self._named.is_set():
                self._setup_error = error
                self._ready.set()
                self._named.set()
            else:
                self._messages.put(error)
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, (SystemMessage, AssistantMessage, UserMessage, StreamEvent, ResultMessage)):
            if isinstance(message, SystemMessage) and message.subtype == "init":
                self.info = message
            if message.session_id and self.session_id is None:
                self.session_id = message.session_id
            self._messages.put(message)

    def _end(self) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        if self._setup_error is None and not self._named.is_set():
            self._setup_error = RemoteConnectionError("the server closed the connection before the session started")
        self._ready.set()
        self._named.set()
        self._messages.put(_CLOSED)
        self._handle("disconnect", self)
        self._handle("session_end", self)

    def _handle(self, name: str, *args: Any) -> None:
        handler = self._client.handlers.get(name)
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:  # a handler's bug must not kill the reader thread
            log.warning("remote_handler_failed", handler=name, exc_info=True)

    # --- client tools ----------------------------------------------------------------------------

    def _run_tool(self, call: ToolCall) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._client.tool_workers,
                                            thread_name_prefix="convo-remote-tool")
        self._pool.submit(self._answer, call)

    def _answer(self, call: ToolCall) -> None:
        content, is_error = self._execute(call)
        try:
            self._send(tool_result_frame(call.call_id, content, is_error))
        except RemoteConnectionError:
            pass  # the session ended while the tool ran; nobody waits for the result

    def _execute(self, call: ToolCall) -> tuple[list[dict], bool]:
        t = self._tools.get(call.tool_name)
        if t is None:
            return [{"type": "text", "text": f"Unknown tool: {call.tool_name}"}], True
        problems = t.validation_errors(call.input)
        if problems:
            return [{"type": "text", "text": f"invalid input for {t.name}: {'; '.join(problems)}"}], True
        try:
            out = t.run(call.input)
        except Exception as exc:
            return [{"type": "text", "text": f"Error: {type(exc).__name__}: {exc}"}], True
        error = False
        if isinstance(out, ToolOut):
            out, error = out.content, out.error
        try:
            blocks = to_content(out)
        except TypeError as exc:
            return [{"type": "text", "text": f"Error: {exc}"}], True
        return blocks_to_mcp(blocks), error

    # --- turns -----------------------------------------------------------------------------------

    def _send(self, frame: dict) -> None:
        if self._closed or self._ended.is_set():
            raise RemoteConnectionError("the session is closed")
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        import websocket

        try:
            with self._send_lock:
                self._ws.send(text)
        except (OSError, websocket.WebSocketException) as exc:
            raise RemoteConnectionError(f"the connection failed: {type(exc).__name__}") from None

    def send(self, text: str, *blocks: Any) -> None:
        """Start a turn with ``text`` (after image or document ``blocks``); read it with :meth:`stream`.

        Raises:
            RemoteConnectionError: the session is closed.
        """
        if not isinstance(text, str):
            raise ArgumentTypeError(f"text must be a str, got {type(text).__name__}")
        self._send(user_frame(text, self.session_id, blocks))

    def stream(self, timeout: float | None = ...) -> Iterator[Any]:
        """The turn's messages as they arrive; the last is the :class:`ResultMessage`.

        Messages: :class:`SystemMessage` (``init``), :class:`AssistantMessage`
        (each model reply), :class:`UserMessage` (tool results echoed),
        :class:`StreamEvent` (with ``include_partial_messages``), then
        :class:`ResultMessage`.

        Args:
            timeout: seconds to wait for each message (default: the
                client's ``timeout``; None for ever).

        Raises:
            RemoteError: the server sent an error frame (``.code`` says which).
            RemoteConnectionError: the connection closed before the result.
            RemoteTimeout: no message came in time.
        """
        wait = self._client.timeout if timeout is ... else timeout
        while True:
            try:
                item = self._messages.get(timeout=wait)
            except queue.Empty:
                raise RemoteTimeout(f"no message from the server within {wait} s") from None
            if item is _CLOSED:
                self._messages.put(_CLOSED)  # every later read sees the end too
                raise RemoteConnectionError("the connection closed before the turn's result")
            if isinstance(item, RemoteError):
                raise item
            yield item
            if isinstance(item, ResultMessage):
                return

    def send_and_stream(self, text: str, *blocks: Any, timeout: float | None = ...) -> Iterator[Any]:
        """:meth:`send` then :meth:`stream`."""
        self.send(text, *blocks)
        return self.stream(timeout)

    def prompt(self, text: str, *blocks: Any, timeout: float | None = ...) -> ResultMessage:
        """One blocking turn: send ``text``, wait for the result and return it.

        Raises:
            RemoteError: as :meth:`stream`.
        """
        result = None
        for message in self.send_and_stream(text, *blocks, timeout=timeout):
            result = message
        return result

    def ping(self) -> None:
        """Send an application-level ``ping`` (the server answers ``pong``; protocol pings are automatic)."""
        self._send(ping_frame())

    def close(self) -> None:
        """End the session: ``control``/``close``, then close the socket and join the reader. Idempotent."""
        if self._closed:
            return
        if self._ws is not None and not self._ended.is_set():
            try:
                self._send(control_frame("close"))
            except RemoteError:
                pass
        self._closed = True
        if self._ws is not None:
            try:
                self._ws.send_close()
            except Exception:  # already gone
                pass
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout=2)
            try:
                self._ws.shutdown()
            except Exception:
                pass
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout=2)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._end()
        self._client._forget(self)

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
