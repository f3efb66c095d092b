"""Running a server app on uvicorn: in the calling thread (``convo serve``) or on a thread convo owns.

uvicorn runs the asyncio event loop; conversations never run on it (see
:mod:`convo.server.sessions`). WebSockets use uvicorn's sans-I/O
``websockets`` protocol, with permessage-deflate off (a compressor per
connection costs hundreds of KiB; idle sessions must stay cheap), protocol
pings every 20 s (answered by every client; a client that stops answering
is dropped), uvicorn's access log off, and ``token=...`` redacted from the
lines uvicorn logs (it logs every WebSocket handshake with its query string).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from typing import Any

from ..errors import ConfigurationError
from .chucky import MAX_FRAME_BYTES

__all__ = ["ServerThread", "bind", "run"]


def _uvicorn():
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - part of the server extra
        raise ConfigurationError("convo serve needs the server extra: pip install 'convo[server]'") from None
    return uvicorn


class _RedactTokens(logging.Filter):
    """Cut ``token=...`` out of uvicorn's log lines (it logs each WebSocket handshake with its query string)."""

    _TOKEN = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = self._TOKEN.sub(r"\1[redacted]", message), ()
        return True


_REDACT = _RedactTokens()


def config(app: Any, *, log_level: str = "warning", max_frame_bytes: int = MAX_FRAME_BYTES) -> Any:
    """The uvicorn configuration convo runs its app with (tokens redacted from uvicorn's own log lines)."""
    uvicorn = _uvicorn()
    made = uvicorn.Config(app, ws="websockets-sansio", ws_per_message_deflate=False,
                          ws_max_size=max(4 * max_frame_bytes, 16 << 20), ws_ping_interval=20.0,
                          ws_ping_timeout=20.0, access_log=False, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=3, backlog=4096)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # after Config set logging up
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
    return made


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one; read it back from ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off only on sockets whose proto is IPPROTO_TCP, and
    # accepted sockets inherit it (with proto 0, each turn's second frame waited ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    return sock


def run(app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` in this thread until SIGINT or SIGTERM (what ``convo serve`` does)."""
    server = _uvicorn().Server(config(app, log_level=log_level))
    server.run(sockets=[sock])


class ServerThread:
    """A server app running on a background thread with its own event loop: a context manager.

    ::

        app = convo.server.create_app(service=..., secret=...)
        with ServerThread(app) as server:
            client = convo.remote.Client(server.ws_url, token)

    ``url`` is ``http://host:port``, ``ws_url`` the Chucky endpoint. Leaving
    the block stops the server (open connections are closed) and joins the thread.

    Thread-safe: start and stop it from one thread; the properties may be read from any.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self._sock = bind(host, port)
        self.port = self._sock.getsockname()[1]
        self._server = _uvicorn().Server(config(app, log_level=log_level))
        self._server.config.install_signal_handlers = False  # only the main thread may; uvicorn checks too
        self._thread = threading.Thread(target=self._run, name="convo-server", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by __enter__ if it happens during startup
            self._error = exc

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                raise RuntimeError(f"the server did not start: {self._error!r}")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


# --- convo serve ------------------------------------------------------------------------------

#: Where ``convo serve`` keeps sessions and budgets unless told otherwise.
DEFAULT_STORE = "sqlite:///convo-server.db"
SECRET_ENV = "CONVO_SERVER_SECRET"


def add_arguments(parser: Any) -> None:
    """The ``convo serve`` options (the CLI's subcommand parser calls this)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="URL",
                        help=f"where sessions and budgets live: sqlite:///file.db, postgresql://..., redis://... "
                             f"(default {DEFAULT_STORE}); replicas sharing a store act as one server")
    parser.add_argument("-m", "--model", action="append", default=[], metavar="NAME",
                        help="a model sessions may use (repeat for more; the first is the default): claude-*, "
                             "gpt-*, local... (default: the one the environment picks)")
    parser.add_argument("--secret-file", metavar="FILE",
                        help=f"file holding the token signing secret (default: the {SECRET_ENV} variable)")
    parser.add_argument("--dev", action="store_true",
                        help="development: a throwaway secret, and print a ready token for user 'dev'")
    parser.add_argument("--tools", action="store_true",
                        help="offer sessions the example server-side tools of convo run --tools "
                             "(calculate, current_time, word_count)")
    parser.add_argument("--project", metavar="ID", help="accept only tokens issued for this project id (iss)")
    parser.add_argument("--max-sessions-per-user", type=int, default=10, metavar="N",
                        help="open sessions per user on this process (default 10)")
    parser.add_argument("--tool-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long a client has to answer a tool call (default 120)")
    parser.add_argument("--provider-timeout", type=float, default=None, metavar="SECONDS",
                        help="seconds to wait for the model provider to connect and for each read before a "
                             "turn fails with TIMEOUT (default: the provider's own, 10 s to connect, 600 s to read)")
    parser.add_argument("--max-turns", type=int, default=25, metavar="N",
                        help="model replies per turn unless the client or token says fewer (default 25)")
    parser.add_argument("--chat-heartbeat", type=float, default=10.0, metavar="SECONDS",
                        help="chats API: seconds between a replica's heartbeats for its runs (default 10)")
    parser.add_argument("--chat-stale-after", type=float, default=60.0, metavar="SECONDS",
                        help="chats API: seconds without a heartbeat before another replica retries a run "
                             "(default 60)")
    parser.add_argument("--chat-max-runs", type=int, default=256, metavar="N",
                        help="chats API: chats this process runs at once (default 256)")
    parser.add_argument("--chat-max-steps", type=int, default=1200, metavar="N",
                        help="chats API: model replies in one run before the chat is paused (default 1200)")
    parser.add_argument("--chat-watcher-buffer", type=int, default=20000, metavar="N",
                        help="chats API: stream events a watcher may leave unsent before it is dropped "
                             "(default 20000)")
    parser.add_argument("--chat-watcher-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="chats API: seconds a frame may wait for a watcher that stopped reading before it "
                             "is dropped (default 10)")
    parser.add_argument("--chat-ping-interval", type=float, default=15.0, metavar="SECONDS",
                        help="chats API: seconds of stream silence before a ping envelope (default 15)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log sessions and debug events to stderr")


def _secret(args: Any, environ: Any) -> bytes:
    from .auth import check_secret

    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as f:
                return check_secret(f.read().strip())
        except OSError as exc:
            raise ConfigurationError(f"cannot read --secret-file: {exc.strerror}") from None
    value = environ.get(SECRET_ENV)
    if value:
        return check_secret(value.strip())
    raise ConfigurationError(f"no signing secret: set {SECRET_ENV} or pass --secret-file FILE "
                             "(or --dev for a throwaway secret and a ready token)")


def serve_command(args: Any, out: Any, err: Any) -> int:
    """``convo serve``: run the server in this process until Ctrl-C or SIGTERM; the exit status."""
    import os
    import secrets

    from .app import create_app
    from .auth import create_budget, create_token

    if args.dev:
        secret = secrets.token_hex(32).encode()
    else:
        secret = _secret(args, os.environ)
    from ..providers.detect import default_service

    models = tuple(args.model) or None
    options: dict = {}
    if args.provider_timeout is not None:
        if not args.provider_timeout > 0:
            raise ConfigurationError(f"--provider-timeout must be a positive number of seconds, "
                                     f"got {args.provider_timeout}")
        options["timeout"] = args.provider_timeout
    if models is None:
        service = default_service(None, **options)
        models = (getattr(service, "model", None) or "default",)
        factory: Any = lambda model, _service=service: _service
    else:
        made = {m: default_service(m, **options) for m in models}  # fail now (a missing key), not at the first session
        factory = made.__getitem__
    from ..cli import EXAMPLE_TOOLS
    from .chat_runs import ChatSettings

    chats = ChatSettings(heartbeat=args.chat_heartbeat, stale_after=args.chat_stale_after,
                         max_runs=args.chat_max_runs, max_steps=args.chat_max_steps,
                         watcher_buffer=args.chat_watcher_buffer, watcher_timeout=args.chat_watcher_timeout,
                         ping_interval=args.chat_ping_interval)
    app = create_app(factory, store=args.store, tools=EXAMPLE_TOOLS if args.tools else (), secret=secret,
                     models=models, project_id=args.project,
                     max_sessions_per_user=args.max_sessions_per_user, tool_timeout=args.tool_timeout,
                     max_turns=args.max_turns, chats=chats)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    out.write(f"convo serve: listening on ws://{shown}:{port}/ws (models: {', '.join(models)}; "
              f"store: {args.store.split('://', 1)[0]})\n")
    out.write(f"convo serve: chats API on http://{shown}:{port}/api/experimental/chats\n")
    if args.dev:
        token = create_token("dev", "dev", secret, create_budget(10, 24, "day"), expires_in=86400,
                             permissions={"admin": True})
        out.write("convo serve: --dev: a throwaway secret; a token for user 'dev' ($10 and 24 compute hours a day, "
                  "valid 24 h, a chats API admin):\n" + token + "\n")
    out.flush()
    try:
        run(app, sock, log_level="info" if args.verbose else "warning")
    finally:
        sock.close()
    return 0
