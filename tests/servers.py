"""Real HTTP servers on 127.0.0.1 for the test suite.

:class:`ScriptedHTTPServer` answers each request with the next scripted
:class:`Reply` (or a callable that builds one from the request), and records
every request it received. Replies can stream their body in chunks with
pauses, stall, or drop the connection part-way, which is how the tests
exercise streaming, retries and failures against a real socket.

Per the developers' notes: Nagle is off and headers plus body go out in one
send, or delayed ACKs add ~40 ms to every request.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from attrs import field, frozen


@frozen
class Reply:
    """One scripted HTTP answer.

    ``body`` is sent whole; ``chunks`` instead sends each piece separately
    (with ``chunk_delay`` seconds between them) as a chunked response.
    ``drop_after`` closes the socket after that many chunks (or before
    headers, with 0 and no chunks sent). ``stall`` sleeps that long
    before the first byte.
    """

    status: int = 200
    body: str | bytes = ""
    headers: dict = field(factory=dict)
    chunks: tuple | None = None
    chunk_delay: float = 0.0
    drop_after: int | None = None
    stall: float = 0.0

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict | None = None) -> "Reply":
        return cls(status, json.dumps(obj), {"content-type": "application/json", **(headers or {})})

    @classmethod
    def sse(cls, text: str, *, chunk_size: int | None = None, **kw) -> "Reply":
        headers = {"content-type": "text/event-stream", **kw.pop("headers", {})}
        if chunk_size:
            data = text.encode()
            chunks = tuple(data[i:i + chunk_size] for i in range(0, len(data), chunk_size))
            return cls(200, b"", headers, chunks=chunks, **kw)
        return cls(200, text, headers, **kw)


@frozen
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):  # keep test output clean
        pass

    def _serve(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        server: ScriptedHTTPServer = self.server.owner  # type: ignore[attr-defined]
        reply = server._next(req)
        if reply.stall:
            time.sleep(reply.stall)
        if reply.drop_after == 0 and reply.chunks is None:
            self._drop()
            return
        head = [f"HTTP/1.1 {reply.status} X"]
        headers = {k.lower(): v for k, v in reply.headers.items()}
        if reply.chunks is None:
            payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
            headers["content-length"] = str(len(payload))
            head += [f"{k}: {v}" for k, v in headers.items()]
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            self.wfile.flush()
            return
        headers["transfer-encoding"] = "chunked"
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
        self.wfile.flush()
        for i, chunk in enumerate(reply.chunks):
            if reply.drop_after is not None and i >= reply.drop_after:
                self._drop()
                return
            if i and reply.chunk_delay:
                time.sleep(reply.chunk_delay)
            data = chunk.encode() if isinstance(chunk, str) else chunk
            try:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            except OSError:
                return
        if reply.drop_after is not None and reply.drop_after >= len(reply.chunks):
            self._drop()
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_POST = _serve
    do_GET = _serve


Script = Iterable["Reply | Callable[[Recorded], Reply]"]


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Clients that hang up early (cancellation and fault tests do it on
        # purpose) are normal here, not tracebacks in another test's output.
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class ScriptedHTTPServer:
    """A threaded HTTP server on 127.0.0.1 playing back replies in order.

    Use as a context manager; ``url`` is its base address. When the script
    runs out, ``default`` answers (a 500 unless set). Thread-safe.
    """

    def __init__(self, script: Script = (), default: "Reply | Callable[[Recorded], Reply] | None" = None):
        self._lock = threading.Lock()
        self._script = list(script)
        self.default = default
        self.requests: list[Recorded] = []
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *replies) -> None:
        with self._lock:
            self._script.extend(replies)

    def _next(self, req: Recorded) -> Reply:
        with self._lock:
            self.requests.append(req)
            item = self._script.pop(0) if self._script else self.default
        if item is None:
            return Reply.json({"error": {"type": "test_error", "message": "script exhausted"}}, 500)
        return item(req) if callable(item) else item

    def __enter__(self) -> "ScriptedHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
