"""A fake Anthropic Messages API server for the benchmarks, run as its own process.

    python benchmarks/server.py [--port 0] [--latency SECONDS] [--chunk-delay SECONDS] [--exit-with-stdin]

It prints ``LISTENING <port>`` on stdout once it accepts connections, then
answers ``POST /v1/messages`` with a reply shaped like the real API's (id,
model, content, stop_reason, usage), as JSON or, when the body says
``"stream": true``, as Server-Sent Events. Every client under test talks to
the same server, so the only difference between them is the client.

What it answers is chosen per request, so one server serves every peer:

- the last user message holds ``tool_result`` blocks: a short text reply
  ending the turn (the model read the results);
- the last user message's text contains ``TOOLS:<n>``: ``n`` parallel calls
  of the first tool in the request, inputs ``{"i": 0}`` ... ``{"i": n-1}``;
- anything else: a plain text reply.

Headers may override: ``x-bench-scenario: text|tools`` (with
``x-bench-tools: <n>``), ``x-bench-latency: <seconds>`` before answering,
``x-bench-chunk-delay: <seconds>`` between the two halves of a stream.

Timing hooks. The message id is ``msg_bench_<n>_<ns>`` where ``<ns>`` is
``time.monotonic_ns()`` just before the first byte of the reply is
written: the system-wide monotonic clock, so a client on this machine can
compute "first byte on the wire to first event" from the id alone. A stream
goes out in two sends: headers plus ``message_start``, ``content_block_start``
and the first delta, then (after the chunk delay) the rest. A client that
buffers instead of yielding what it has is thus caught by the delay.

``GET /bench/stats`` returns requests served and the handler time they
took; ``GET /bench/last-request`` the last request body received (so the
runner can replay exactly what a client sent).

Why it is written the way it is: the standard handler parses headers with
the email package, which costs more than some clients under test, so
requests are parsed by hand; Nagle is off and each reply goes out in one
``sendall``, or delayed ACKs add ~40 ms to every request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = ("Hello! This is the benchmark server answering. The quick brown fox jumps over the lazy dog, "
        "and the reply is long enough to look like a real, short answer from a model.")
FINAL_TEXT = "All the tool calls came back; here is the summary of what they returned."
# The real API sends the text in many small deltas; the first is what "time to first text" waits for.
TEXT_PIECES = ("Hello!", " This is the benchmark server answering.", " The quick brown fox jumps over",
               " the lazy dog, and the reply is long enough to look like", " a real, short answer from a model.")
FINAL_PIECES = ("All the tool calls came back;", " here is the summary of what they returned.")
assert "".join(TEXT_PIECES) == TEXT and "".join(FINAL_PIECES) == FINAL_TEXT

_counter_lock = threading.Lock()
_stats = {"requests": 0, "handler_seconds": 0.0}
_last_request = [b"{}"]
_ids = iter(range(1, 1 << 62))


def _usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _scenario(body: dict, headers: dict) -> tuple[str, int]:
    """("text" | "final" | "tools", number of tool calls)."""
    forced = headers.get("x-bench-scenario")
    if forced:
        return forced, int(headers.get("x-bench-tools", "8"))
    messages = body.get("messages") or ()
    last = messages[-1] if messages else {}
    content = last.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = ""
        for block in content or ():
            kind = block.get("type")
            if kind == "tool_result":
                return "final", 0
            if kind == "text":
                text += block.get("text", "")
    at = text.find("TOOLS:")
    if at != -1 and body.get("tools"):
        digits = ""
        for ch in text[at + 6:]:
            if not ch.isdigit():
                break
            digits += ch
        return "tools", int(digits or 8)
    return "text", 0


def _content(scenario: str, n_tools: int, body: dict, msg_id: str) -> tuple[list, str, tuple]:
    """(content blocks, stop reason, text pieces for streaming)."""
    if scenario == "tools":
        name = body["tools"][0]["name"]
        blocks = [{"type": "tool_use", "id": f"toolu_{msg_id[10:]}_{i}", "name": name, "input": {"i": i}}
                  for i in range(n_tools)]
        return [{"type": "text", "text": "Let me call the tools."}] + blocks, "tool_use", ("Let me call the tools.",)
    pieces = FINAL_PIECES if scenario == "final" else TEXT_PIECES
    return [{"type": "text", "text": "".join(pieces)}], "end_turn", pieces


def _sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_JSON_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\n"
              b"content-length: %d\r\n\r\n")
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
             b"request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def handle_one_request(self):
        # A hand-rolled parse: the stock one (email.parser) is slower than some of the clients measured.
        line = self.rfile.readline(65537)
        if not line:
            self.close_connection = True
            return
        started = time.perf_counter()
        try:
            method, path, _ = line.decode("latin-1").split(" ", 2)
        except ValueError:
            self.close_connection = True
            return
        headers = {}
        while True:
            h = self.rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        # BaseHTTPRequestHandler.handle() keeps reading requests until this is set.
        self.close_connection = headers.get("connection", "").lower() == "close"
        if method == "POST" and path.split("?", 1)[0].endswith("/v1/messages"):
            self._messages(raw, headers, started)
        elif method == "GET" and path == "/bench/stats":
            with _counter_lock:
                payload = json.dumps(_stats).encode()
            self._send_json(payload)
        elif method == "GET" and path == "/bench/last-request":
            self._send_json(_last_request[0])
        else:
            payload = b'{"type":"error","error":{"type":"not_found_error","message":"no such path"}}'
            self.connection.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                                    b"content-length: %d\r\n\r\n%s" % (len(payload), payload))

    def _send_json(self, payload: bytes) -> None:
        self.connection.sendall(_JSON_HEAD % len(payload) + payload)

    def _messages(self, raw: bytes, headers: dict, started: float) -> None:
        _last_request[0] = raw
        body = json.loads(raw)
        scenario, n_tools = _scenario(body, headers)
        latency = float(headers.get("x-bench-latency") or self.server.latency)  # type: ignore[attr-defined]
        input_tokens = len(raw) // 4
        model = body.get("model", "claude-bench")
        if latency:
            # Sleeping is not work: keep it out of the handler time so the stats stay "CPU spent".
            spent = time.perf_counter() - started
            time.sleep(latency)
            started = time.perf_counter() - spent
        sent_ns = time.monotonic_ns()
        msg_id = f"msg_bench_{next(_ids)}_{sent_ns}"
        content, stop_reason, pieces = _content(scenario, n_tools, body, msg_id)
        output_tokens = 12 + 20 * n_tools
        if not body.get("stream"):
            payload = json.dumps({
                "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": None, "usage": _usage(input_tokens, output_tokens),
            }, separators=(",", ":")).encode()
            self.connection.sendall(_JSON_HEAD % len(payload) + payload)
            self._count(started)
            return
        first = [
            _sse("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": _usage(input_tokens, 1)}}),
            _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
            _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": pieces[0]}}),
        ]
        rest = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": p}}) for p in pieces[1:]]
        rest.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        for index, block in enumerate(content[1:], start=1):
            rest.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": {**block, "input": {}}}))
            rest.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
            rest.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        rest.append(_sse("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                           "usage": {"output_tokens": output_tokens}}))
        rest.append(_sse("message_stop", {"type": "message_stop"}))
        try:
            self.connection.sendall(_SSE_HEAD + _chunk(b"".join(first)))
            delay = float(headers.get("x-bench-chunk-delay") or self.server.chunk_delay)  # type: ignore[attr-defined]
            if delay:
                spent = time.perf_counter() - started
                time.sleep(delay)
                started = time.perf_counter() - spent
            self.connection.sendall(_chunk(b"".join(rest)) + b"0\r\n\r\n")
        except OSError:  # the client hung up after its first event: that is allowed
            self.close_connection = True
        self._count(started)

    @staticmethod
    def _count(started: float) -> None:
        spent = time.perf_counter() - started
        with _counter_lock:
            _stats["requests"] += 1
            _stats["handler_seconds"] += spent


class BenchServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64 clients connect at once in the concurrency benchmark

    def __init__(self, port: int = 0, latency: float = 0.0, chunk_delay: float = 0.0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.latency = latency
        self.chunk_delay = chunk_delay


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between the two halves of a stream")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop when stdin closes (the runner holds it open: its death, even by SIGKILL, ends us)")
    args = parser.parse_args(argv)
    server = BenchServer(args.port, args.latency, args.chunk_delay)
    if args.exit_with_stdin:
        def watch() -> None:
            sys.stdin.buffer.read()  # returns at EOF, when the parent is gone
            os._exit(0)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    sys.stdout.write(f"LISTENING {server.server_address[1]}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
