"""Real peers for the server tests: a fake Claude, ``convo serve`` as a process, and a raw WebSocket.

- :class:`FakeClaude`: a real HTTP server on 127.0.0.1 speaking the
  Anthropic Messages API (JSON, or SSE when asked to stream), whose replies
  follow directives in the prompt, so each test says what the model does:

  ``CALL add {"a": 1}; CALL add {"a": 2}``  parallel calls (a client tool
      ``add`` is found under its ``mcp__inline-tools__add`` name);
  ``LOOP add``        call ``add`` again after every result (max turns);
  ``USAGE 1000 200``  report these input and output tokens;
  ``SLEEP 0.5``       wait before answering;
  ``STATUS 429``      fail with this HTTP status (no retries);
  ``JSON {...}``      answer with this value (via the structured-output tool);
  ``BIG 300000``      a reply this many characters long;
  ``SYSTEM?``         answer with the system prompt;
  ``HISTORY?``        answer with every earlier user text of the conversation.

  After tool results it answers ``results: <text> | <text> (error)``.
  Anything else: ``echo: <text>``.
- :class:`ServeProcess`: ``python -m convo serve`` on a free port, with the
  fake's address in ``ANTHROPIC_BASE_URL``, output captured in files.
- :class:`Raw`: a websocket-client connection sending and reading exact JSON frames.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websocket

from convo.remote import create_budget, create_token
from tests.servers import Recorded, Reply, ScriptedHTTPServer

SECRET = "test-secret-" + secrets.token_hex(16)
API_KEY = "sk-ant-fake-" + secrets.token_hex(12)
MODEL = "claude-sonnet-4-5-20250929"
CHEAP = "claude-haiku-4-5"


# --- the fake model -----------------------------------------------------------------------------


def _texts(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or () if b.get("type") == "text")


def _prompt_of(messages: list) -> str:
    """The text of the last user message that is not only tool results: this turn's prompt."""
    for m in reversed(messages):
        if m["role"] == "user" and _texts(m).strip():
            return _texts(m)
    return ""


def _tool_name(body: dict, short: str) -> str:
    for t in body.get("tools") or ():
        if t["name"] == short or t["name"].endswith("__" + short):
            return t["name"]
    return short


def _directives(text: str) -> dict:
    found: dict[str, Any] = {"calls": []}
    for part in text.split(";"):
        part = part.strip()
        word, _, rest = part.partition(" ")
        if word == "CALL":
            name, _, arg = rest.partition(" ")
            found["calls"].append((name, json.loads(arg) if arg.strip() else {}))
        elif word in ("LOOP", "SLEEP", "STATUS", "JSON", "BIG", "USAGE"):
            found[word] = rest.strip()
    return found


def answer(body: dict) -> dict | tuple[int, dict]:
    """The Messages API reply the fake gives to a request body (or (status, error body))."""
    messages = body["messages"]
    last = messages[-1]
    prompt = _prompt_of(messages)
    d = _directives(prompt)
    if "SLEEP" in d:
        time.sleep(float(d["SLEEP"]))
    if "STATUS" in d:
        return int(d["STATUS"]), {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    content: list[dict] = []
    results = [b for b in last["content"] if b.get("type") == "tool_result"] if isinstance(last["content"], list) else []
    if results and "LOOP" not in d:
        parts = []
        for r in results:
            inner = r.get("content")
            text = inner if isinstance(inner, str) else "".join(c.get("text", "") for c in inner or ())
            parts.append(text + (" (error)" if r.get("is_error") else ""))
        content.append({"type": "text", "text": "results: " + " | ".join(parts)})
    elif "LOOP" in d:
        content.append({"type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}", "name": _tool_name(body, d["LOOP"]),
                        "input": {}})
    elif d["calls"]:
        for name, arg in d["calls"]:
            content.append({"type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}", "name": _tool_name(body, name),
                            "input": arg})
    elif "JSON" in d:
        value = json.loads(d["JSON"])
        if any(t["name"] == "final_output" for t in body.get("tools") or ()):
            content.append({"type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}", "name": "final_output",
                            "input": value})
        else:
            content.append({"type": "text", "text": json.dumps(value)})
    elif "BIG" in d:
        content.append({"type": "text", "text": "x" * int(d["BIG"])})
    elif prompt.strip() == "SYSTEM?":
        system = body.get("system") or ""
        content.append({"type": "text", "text": "system: " + (system if isinstance(system, str)
                                                                else "".join(b.get("text", "") for b in system))})
    elif prompt.strip() == "HISTORY?":
        earlier = [_texts(m) for m in messages[:-1] if m["role"] == "user" and _texts(m).strip()]
        content.append({"type": "text", "text": "history: " + " | ".join(earlier)})
    else:
        kinds = [b["type"] for b in last["content"] if b.get("type") != "text"] if isinstance(last["content"], list) else []
        content.append({"type": "text", "text": "echo: " + prompt + (f" [{', '.join(kinds)}]" if kinds else "")})
    tokens_in, tokens_out = (int(x) for x in d.get("USAGE", "10 5").split())
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {"id": f"msg_{secrets.token_hex(8)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def _sse(message: dict) -> str:
    def event(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    head = dict(message, content=[], stop_reason=None, usage={**message["usage"], "output_tokens": 1})
    out = [event("message_start", {"message": head})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append(event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}))
            text = block["text"]
            for j in range(0, len(text), 40):
                out.append(event("content_block_delta", {"index": i, "delta": {"type": "text_delta",
                                                                              "text": text[j:j + 40]}}))
        else:
            out.append(event("content_block_start", {"index": i, "content_block": {**block, "input": {}}}))
            out.append(event("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                                                                          "partial_json": json.dumps(block["input"])}}))
        out.append(event("content_block_stop", {"index": i}))
    out.append(event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                       "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    out.append(event("message_stop", {}))
    return "".join(out)


def _respond(req: Recorded) -> Reply:
    body = req.json()
    got = answer(body)
    if isinstance(got, tuple):
        status, error = got
        return Reply.json(error, status, headers={"x-should-retry": "false"})
    if body.get("stream"):
        return Reply.sse(_sse(got))
    return Reply.json(got)


class FakeClaude(ScriptedHTTPServer):
    """A fake Anthropic Messages API on 127.0.0.1 answering by the prompt's directives (a context manager)."""

    def __init__(self) -> None:
        super().__init__(default=_respond)


# --- tokens -------------------------------------------------------------------------------------


def token(user: str = "alice", *, project: str = "proj", ai: float = 100.0, hours: float = 100.0,
          window: str = "day", expires_in: int = 3600, permissions: Any = None, secret: str = SECRET) -> str:
    return create_token(user, project, secret, create_budget(ai, hours, window), expires_in=expires_in,
                        permissions=permissions)


# --- convo serve as a process ------------------------------------------------------------------


class ServeProcess:
    """``convo serve`` in its own process on 127.0.0.1 (a context manager); its output goes to files."""

    def __init__(self, folder: Path, fake_url: str, *, store: str | None = None, args: tuple = (),
                 models: tuple = (MODEL, CHEAP), name: str = "serve") -> None:
        self.folder = Path(folder)
        self.stdout_path = self.folder / f"{name}.out"
        self.stderr_path = self.folder / f"{name}.err"
        self.store = store or f"sqlite:///{self.folder / (name + '.db')}"
        command = [sys.executable, "-m", "convo.cli", "serve", "--port", "0", "--store", self.store, "-v", *args]
        for m in models:
            command += ["--model", m]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "CONVO_"))}
        env.update(CONVO_SERVER_SECRET=SECRET, ANTHROPIC_API_KEY=API_KEY, ANTHROPIC_BASE_URL=fake_url)
        self._out = open(self.stdout_path, "w")
        self._err = open(self.stderr_path, "w")
        self.process = subprocess.Popen(command, stdout=self._out, stderr=self._err, env=env,
                                        cwd=self.folder, stdin=subprocess.DEVNULL)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text()
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/ws", text)
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"convo serve exited {self.process.returncode}: {self.stderr_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("convo serve did not start within 60 s")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
        self._err.close()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- raw frames ---------------------------------------------------------------------------------

#: Every frame any Raw connection received in this process (the secret-leak test reads them).
RECEIVED: list[str] = []


class Raw:
    """A WebSocket sending and reading exact frames, as an SDK of another language would (a context manager)."""

    def __init__(self, ws_url: str, tok: str | None, *, query: str = "", timeout: float = 15.0,
                 read_ready: bool = True) -> None:
        url = ws_url + (f"?token={tok}" if tok is not None else "?") + (("&" + query) if query else "")
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.ready = self.recv() if read_ready else None

    def send(self, frame: Any) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self) -> dict:
        text = self.ws.recv()
        RECEIVED.append(text)
        return json.loads(text)

    def until(self, kind: str, *, answer_tools: dict | None = None) -> list[dict]:
        """Frames up to and including the first of type ``kind``; tool calls answered from ``answer_tools``."""
        frames = []
        while True:
            frame = self.recv()
            frames.append(frame)
            if frame["type"] == "tool_call" and answer_tools is not None:
                p = frame["payload"]
                text = answer_tools[p["toolName"]](p["input"])
                self.send({"type": "tool_result", "payload": {"callId": p["callId"],
                                                               "result": {"content": [{"type": "text", "text": text}]}}})
            if frame["type"] == kind:
                return frames

    def init(self, **payload: Any) -> dict:
        """Send an init; the session_info (or error) it gets."""
        self.send({"type": "init", "payload": payload})
        while True:
            frame = self.recv()
            if frame["type"] in ("control", "error"):
                return frame

    def closed_with(self) -> int | None:
        """Read until the server closes; the close code."""
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    RECEIVED.append(data.decode())
        except (websocket.WebSocketConnectionClosedException, OSError):
            return None

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        self.ws.shutdown()  # close() leaves the socket open when the server already closed the connection

    def __enter__(self) -> "Raw":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def user(text: Any, session_id: str = "unknown", **extra: Any) -> dict:
    """A bare ``user`` frame as TypeScript, Go and PHP send it."""
    return {"type": "user", "session_id": session_id, "parent_tool_use_id": None,
            "message": {"role": "user", "content": text}, **extra}


ADD_TOOL = {"name": "add", "description": "Add two integers",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                            "required": ["a", "b"]}, "executeIn": "browser"}


def inline(*tools: dict) -> list:
    return [{"name": "inline-tools", "version": "1.0.0", "tools": list(tools)}]
