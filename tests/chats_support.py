"""Real peers for the chats API tests: a fake Claude that streams slowly and delegates, and a raw HTTP/WS client.

:class:`FakeModel` is :class:`tests.server_support.FakeClaude`'s model
(``CALL``, ``USAGE``, ``SLEEP``, ``STATUS``, ``BIG``, ``HISTORY?``,
``SYSTEM?``; see there) plus:

``DRIP <n> <seconds>``   stream ``n`` words (``w1 w2 ...``), one delta every ``seconds``;
``DRIPTOOL <name> <n> <seconds>``  some text, then a call of ``name`` whose input streams in ``n`` pieces;
``SPAWN <task>``         call ``spawn_agent`` with ``<task>`` (``,`` becomes ``;`` so the task can hold
                         directives for the sub-chat), then ``wait_agent`` on it, then answer
                         ``report: <the sub-chat's report>``;
``FLOOD <n> <size>``     stream ``n`` text deltas of ``size`` characters each, at once;
a summary request        answers ``summary of: <earlier user texts>``.

Every request body is recorded (``requests``), so a test can read what the model was sent.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import requests

from tests.server_support import _directives, _prompt_of, _sse, _tool_name, answer, token
from tests.servers import Recorded, Reply, ScriptedHTTPServer

API = "/api/experimental/chats"


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def _message(body: dict, content: list, tokens: tuple = (10, 5)) -> dict:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {"id": f"msg_{secrets.token_hex(8)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1], "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def _drip(body: dict, n: int, delay: float, tool: str | None = None, size: int = 0) -> Reply:
    head = _message(body, [])
    head = dict(head, content=[], stop_reason=None, usage={**head["usage"], "output_tokens": 1})
    chunks = [_event("message_start", {"message": head}),
              _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    if tool is None:
        for i in range(n):
            text = f"w{i + 1} " if not size else "y" * size
            chunks.append(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}))
        chunks.append(_event("content_block_stop", {"index": 0}))
        stop = "end_turn"
    else:
        chunks.append(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "calling"}}))
        chunks.append(_event("content_block_stop", {"index": 0}))
        chunks.append(_event("content_block_start", {"index": 1, "content_block": {
            "type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}", "name": _tool_name(body, tool), "input": {}}}))
        whole = json.dumps({"expression": "1 + " + " + ".join(str(i) for i in range(n))})
        step = max(1, len(whole) // n)
        for i in range(0, len(whole), step):
            chunks.append(_event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                                             "partial_json": whole[i:i + step]}}))
        chunks.append(_event("content_block_stop", {"index": 1}))
        stop = "tool_use"
    chunks.append(_event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                           "usage": {"output_tokens": 5}}))
    chunks.append(_event("message_stop", {}))
    return Reply(200, b"", {"content-type": "text/event-stream"}, chunks=tuple(chunks), chunk_delay=delay)


def _last_results(messages: list) -> tuple[list, dict]:
    last = messages[-1]
    if last["role"] != "user" or not isinstance(last["content"], list):
        return [], {}
    results = [b for b in last["content"] if b.get("type") == "tool_result"]
    calls = {}
    if len(messages) >= 2 and isinstance(messages[-2]["content"], list):
        calls = {b["id"]: b["name"] for b in messages[-2]["content"] if b.get("type") == "tool_use"}
    return results, calls


def _text_of(result: dict) -> str:
    inner = result.get("content")
    return inner if isinstance(inner, str) else "".join(c.get("text", "") for c in inner or ())


def _latest_text_only(body: dict) -> dict:
    """The body with the last user message's text cut to its last block: a chat sends the user messages a run
    answers together (one text block each), and each test's directives are in the newest."""
    messages = list(body["messages"])
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user" and isinstance(m["content"], list):
            blocks = [b for b in m["content"] if b.get("type") == "text" and b.get("text", "").strip()]
            if blocks:
                others = [b for b in m["content"] if b.get("type") != "text"]
                messages[i] = dict(m, content=others + [blocks[-1]])
                break
    return dict(body, messages=messages)


def respond(req: Recorded) -> Reply:
    body = _latest_text_only(req.json())
    messages = body["messages"]
    prompt = _prompt_of(messages)
    directives = _directives(prompt)
    results, calls = _last_results(messages)
    if prompt.startswith("Summarize the conversation so far"):
        earlier = [m for m in messages[:-1] if m["role"] == "user"]
        texts = []
        for m in earlier:
            content = m["content"]
            texts.append(content if isinstance(content, str) else
                         "".join(b.get("text", "") for b in content if b.get("type") == "text"))
        got = _message(body, [{"type": "text", "text": "summary of: " + " | ".join(t for t in texts if t)}])
        return Reply.sse(_sse(got)) if body.get("stream") else Reply.json(got)
    spawn = next((part.strip()[6:] for part in prompt.split(";") if part.strip().startswith("SPAWN ")), None)
    if spawn is not None:
        tokens = tuple(int(x) for x in directives.get("USAGE", "10 5").split())
        if results:
            name = calls.get(results[0]["tool_use_id"], "")
            if name.endswith("spawn_agent") and not results[0].get("is_error"):
                child = json.loads(_text_of(results[0]))["chat_id"]
                content = [{"type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}",
                            "name": _tool_name(body, "wait_agent"), "input": {"chat_id": child}}]
            else:
                text = _text_of(results[0])
                try:
                    text = "report: " + json.loads(text)["report"]
                except (ValueError, KeyError, TypeError):
                    text = "failed: " + text
                content = [{"type": "text", "text": text}]
        else:
            content = [{"type": "tool_use", "id": f"toolu_{secrets.token_hex(6)}",
                        "name": _tool_name(body, "spawn_agent"), "input": {"prompt": spawn.replace(",", ";")}}]
        got = _message(body, content, tokens)
        return Reply.sse(_sse(got)) if body.get("stream") else Reply.json(got)
    for part in prompt.split(";"):
        word, _, rest = part.strip().partition(" ")
        if word == "DRIP" and not results:
            n, delay = rest.split()
            return _drip(body, int(n), float(delay))
        if word == "FLOOD" and not results:
            n, size = rest.split()
            return _drip(body, int(n), 0.0, size=int(size))
        if word == "DRIPTOOL" and not results:
            name, n, delay = rest.split()
            return _drip(body, int(n), float(delay), tool=name)
    got = answer(body)
    if isinstance(got, tuple):
        status, error = got
        return Reply.json(error, status, headers={"x-should-retry": "false"})
    return Reply.sse(_sse(got)) if body.get("stream") else Reply.json(got)


class FakeModel(ScriptedHTTPServer):
    """The fake Messages API of the chats tests (a context manager); see the module docstring."""

    def __init__(self) -> None:
        super().__init__(default=respond)

    def bodies(self) -> list[dict]:
        return [r.json() for r in self.requests if r.path.startswith("/v1/messages")]


# --- talking to the API as Coder's clients do -------------------------------------------------------


def admin_token(user: str = "root") -> str:
    return token(user, permissions={"admin": True})


class Api:
    """Exact requests to a chats API (a ``requests`` session; close it): ``api.post("", {...})``."""

    def __init__(self, url: str, tok: str | None, *, header: str = "authorization") -> None:
        self.url = url.rstrip("/") + API
        self.session = requests.Session()
        if tok is not None:
            if header == "authorization":
                self.session.headers["Authorization"] = f"Bearer {tok}"
            else:
                self.session.headers["Coder-Session-Token"] = tok

    def call(self, method: str, path: str = "", body: Any = None, *, raw: bytes | None = None) -> requests.Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        return self.session.request(method, self.url + path, data=data, timeout=30)

    def get(self, path: str = "") -> requests.Response:
        return self.call("GET", path)

    def post(self, path: str = "", body: Any = None, **kw: Any) -> requests.Response:
        return self.call("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.call("PATCH", path, body, **kw)

    def delete(self, path: str) -> requests.Response:
        return self.call("DELETE", path)

    def create(self, text: str, **extra: Any) -> dict:
        r = self.post("", {"content": [{"type": "text", "text": text}], **extra})
        assert r.status_code == 201, r.text
        return r.json()

    def send(self, chat_id: str, text: str) -> dict:
        r = self.post(f"/{chat_id}/messages", {"content": [{"type": "text", "text": text}]})
        assert r.status_code == 200, r.text
        return r.json()

    def chat(self, chat_id: str) -> dict:
        r = self.get(f"/{chat_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, chat_id: str, statuses: tuple = ("waiting", "error", "paused", "completed"),
             timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.chat(chat_id)
            if got["chat"]["status"] in statuses:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"chat still {got['chat']['status']} after {timeout} s: {got}")
            time.sleep(0.03)

    def wait_for(self, chat_id: str, check, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.chat(chat_id)
            if check(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met after {timeout} s: {got}")
            time.sleep(0.03)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Api":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def texts(chat: dict) -> list[tuple[str, str]]:
    """``(role, text)`` of each visible message (tool results as their JSON)."""
    out = []
    for m in chat["messages"]:
        parts = m.get("content") or []
        text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
        if not text:
            text = json.dumps([{k: v for k, v in p.items() if k != "type"} for p in parts])
        out.append((m["role"], text))
    return out


class Frames:
    """A raw stream WebSocket (websocket-client) reading Coder's envelopes; records every frame."""

    def __init__(self, ws_url: str, tok: str | None, *, timeout: float = 15.0, sockopt: tuple = (),
                 header: str = "authorization") -> None:
        import websocket

        headers = []
        if tok is not None:
            headers = [f"Authorization: Bearer {tok}"] if header == "authorization" else [f"Coder-Session-Token: {tok}"]
        self.ws = websocket.create_connection(ws_url, header=headers, timeout=timeout, sockopt=sockopt)
        self.frames: list[dict] = []
        self.events: list[dict] = []
        self._checked = 0  # events up to here were looked at by until()

    def recv(self) -> dict:
        frame = json.loads(self.ws.recv())
        self.frames.append(frame)
        if frame["type"] == "data" and isinstance(frame["data"], list):
            self.events.extend(frame["data"])
        return frame

    def until(self, check, limit: int = 100000) -> list[dict]:
        """Read until ``check(event)`` holds for an event not looked at before (events of a frame already read
        count); the events from the first one not looked at to that one."""
        start = self._checked
        for _ in range(limit):
            while self._checked < len(self.events):
                e = self.events[self._checked]
                self._checked += 1
                if check(e):
                    return self.events[start:self._checked]
            self.recv()
        raise AssertionError("the event never came")

    def until_status(self, *statuses: str) -> list[dict]:
        return self.until(lambda e: e["type"] == "status" and e["status"]["status"] in statuses)

    def closed_with(self) -> int | None:
        import websocket

        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.frames.append(json.loads(data))
        except (websocket.WebSocketConnectionClosedException, OSError):
            return None

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        self.ws.shutdown()

    def __enter__(self) -> "Frames":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://", 1).rstrip("/") + API + path


def part_text(events: list[dict]) -> str:
    return "".join(e["message_part"]["part"].get("text", "") for e in events
                   if e["type"] == "message_part" and e["message_part"]["part"]["type"] == "text")

