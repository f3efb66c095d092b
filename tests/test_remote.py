"""convo.remote's client, and create_app embedded in-process (ServerThread) where a test needs a scripted model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import websocket

from convo import APITimeoutError, Response, StreamDone, Text, TextDelta, ToolUse, tool
from convo.remote import Client, RemoteError, RemoteTimeout, create_budget, create_token
from convo.server import ServerThread, create_app
from convo.testing import FunctionService, ScriptedService, reply

SECRET = "remote-test-secret-0123456789abcdef"


def tok(user: str = "u1", **kw) -> str:
    return create_token(user, "p", SECRET, create_budget(10, 10), **kw)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def slow_echo(text: str) -> str:
    """Echo after a pause."""
    time.sleep(0.3)
    return text


def _calls(*uses: tuple) -> Response:
    return reply(tool_uses=[ToolUse(f"t{i}", f"mcp__inline-tools__{name}", args) for i, (name, args) in enumerate(uses)])


def _final(request) -> Response:
    results = request.messages[-1].tool_results()
    return reply("results: " + " | ".join(r.text() + (" (error)" if r.is_error else "") for r in results))


def script(request):
    """A model driven by the prompt, like the fake Claude of tests/server_support.py, but in-process."""
    last = request.messages[-1]
    if last.tool_results():
        return _final(request)
    text = last.text()
    if text.startswith("SLOW "):
        n = int(text.split()[1])
        return _calls(*[("slow_echo", {"text": str(i)}) for i in range(n)])
    if text.startswith("ADD"):
        return _calls(("add", {"a": 2, "b": 3}))
    if text == "TIMEOUT":
        raise APITimeoutError("the provider did not answer in time")
    if text == "CRASH":
        raise KeyError("a bug")
    return reply("echo: " + text)


@pytest.fixture(scope="module")
def server():
    app = create_app(FunctionService(script), secret=SECRET, models=["scripted"], tool_timeout=5)
    with ServerThread(app) as s:
        yield s


class TestClient:
    def test_session_lifecycle_and_handlers(self, server):
        seen = []
        client = Client(server.ws_url, tok(), on_connect=lambda s: seen.append("connect"),
                        on_session_start=lambda s: seen.append(("start", s.session_id)),
                        on_disconnect=lambda s: seen.append("disconnect"),
                        on_session_end=lambda s: seen.append("end"))
        with client:
            session = client.create_session(system_prompt="Be nice.")
            assert seen == ["connect", ("start", session.session_id)]
            messages = list(session.send_and_stream("hello"))
            assert [type(m).__name__ for m in messages] == ["SystemMessage", "AssistantMessage", "ResultMessage"]
            assert session.info.session_id == session.session_id
            assert messages[1].text == "echo: hello" and messages[-1].result == "echo: hello"
        assert seen[-2:] == ["disconnect", "end"] and session.closed

    def test_tools_run_concurrently_on_the_client(self, server):
        with Client(server.ws_url, tok()) as client, client.create_session(tools=[slow_echo]) as session:
            began = time.monotonic()
            result = session.prompt("SLOW 4")
            assert result.result == "results: 0 | 1 | 2 | 3"
            assert time.monotonic() - began < 1.0  # four 0.3 s tools, at once

    def test_tool_choice_names_a_client_tool_bare(self, server):
        seen = []

        def spy(request):
            seen.append(request.tool_choice)
            return script(request)

        app = create_app(FunctionService(spy), secret=SECRET, models=["scripted"])
        with ServerThread(app) as s, Client(s.ws_url, tok()) as client:
            assert client.prompt("ADD", tools=[add], tool_choice="add").result == "results: 5"
            with pytest.raises(RemoteError, match="toolChoice"):
                client.create_session(tool_choice="nope")
        assert seen[0].name == "mcp__inline-tools__add" and seen[1].name is None

    def test_a_tool_error_is_a_result(self, server):
        @tool(name="add")
        def broken(a: int, b: int) -> int:
            """Add, badly."""
            raise ValueError("no adding today")

        with Client(server.ws_url, tok()) as client:
            result = client.prompt("ADD", tools=[broken])
        assert result.result == "results: Error: ValueError: no adding today (error)"

    def test_error_codes_of_failed_turns(self, server):
        with Client(server.ws_url, tok()) as client, client.create_session() as session:
            timeout = session.prompt("TIMEOUT")
            assert timeout.subtype == "error_during_execution" and timeout.error_code == "TIMEOUT"
            crash = session.prompt("CRASH")
            assert crash.error_code == "UNKNOWN_ERROR" and "KeyError" in crash.errors[0]
            assert "a bug" not in crash.errors[0]  # an internal error's text stays in the server's log
            assert session.prompt("fine").ok  # the session goes on

    def test_error_frames_raise_and_reach_on_error(self, server):
        errors = []
        with Client(server.ws_url, tok(), on_error=lambda s, e: errors.append(e.code)) as client:
            with client.create_session() as session:
                session.send("   ")
                with pytest.raises(RemoteError) as caught:
                    list(session.stream())
        assert caught.value.code == "VALIDATION_ERROR" and errors == ["VALIDATION_ERROR"]

    def test_stream_timeout(self, server):
        with Client(server.ws_url, tok(), timeout=0.2) as client, client.create_session() as session:
            with pytest.raises(RemoteTimeout) as caught:
                list(session.stream())  # no turn was started: nothing comes
        assert caught.value.code == "TIMEOUT" and isinstance(caught.value, TimeoutError)

    def test_the_token_never_shows(self, server):
        t = tok()
        client = Client(server.ws_url, t)
        with client, client.create_session() as session:
            assert t not in repr(client) and t not in repr(session)

    def test_many_threads_many_sessions(self):
        """Thread safety under load: 24 threads share one Client, each running sessions with client tools."""
        app = create_app(FunctionService(script), secret=SECRET, models=["scripted"], max_sessions_per_user=32)
        failures = []
        with ServerThread(app) as server, Client(server.ws_url, tok("load"), timeout=30) as client:
            def work(i: int) -> None:
                try:
                    with client.create_session(tools=[add]) as session:
                        for _ in range(3):
                            assert session.prompt("ADD").result == "results: 5"
                            assert session.prompt(f"n{i}").result == f"echo: n{i}"
                except BaseException as exc:  # collected and reported below
                    failures.append(repr(exc))

            threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert failures == []

    def test_the_per_user_session_limit(self, server):
        with Client(server.ws_url, tok("limited")) as client:
            sessions = [client.create_session() for _ in range(10)]
            with pytest.raises(RemoteError) as caught:
                client.create_session()
            assert caught.value.code == "CONCURRENCY_LIMIT"
            sessions[0].close()
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.create_session().close()
                    break
                except RemoteError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)


class TestEmbedding:
    def test_server_tools_and_a_service_per_model(self):
        made = []

        def factory(model):
            made.append(model)
            return FunctionService(lambda r: reply(tool_uses=[ToolUse("t1", "add", {"a": 40, "b": 2})])
                                   if not r.messages[-1].tool_results() else reply(r.messages[-1].tool_results()[0].text()))

        app = create_app(factory, tools=[add], secret=SECRET, models=["fast", "smart"])
        with ServerThread(app) as server, Client(server.ws_url, tok()) as client:
            assert client.prompt("hi").result == "42"
            assert client.prompt("hi", model="smart").result == "42"
            with pytest.raises(RemoteError, match="not served"):
                client.prompt("hi", model="other")
        assert made == ["fast", "smart"]

    def test_a_slow_reader_is_disconnected_and_others_are_not(self):
        def streaming(request):
            return reply("x" * 4000)

        class ManyDeltas(FunctionService):
            def stream(self, request):
                for i in range(3000):
                    yield TextDelta(0, "xy" * 50)
                yield StreamDone(Response("r", "scripted", [Text("xy" * 150000)]))

        app = create_app(ManyDeltas(streaming), secret=SECRET, models=["scripted"], max_outbox_frames=50)
        with ServerThread(app) as server:
            slow = websocket.create_connection(server.ws_url + "?token=" + tok("slow"))
            slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
            slow.recv()
            slow.send(json.dumps({"type": "init", "payload": {"includePartialMessages": True}}))
            slow.send(json.dumps({"type": "user", "message": {"role": "user", "content": "flood me"}}))
            with Client(server.ws_url, tok("fast")) as client:
                began = time.monotonic()
                assert client.prompt("hello").ok
                assert time.monotonic() - began < 3
            time.sleep(0.5)
            received = 0
            try:
                while slow.recv():
                    received += 1
            except (websocket.WebSocketConnectionClosedException, OSError):
                pass
            finally:
                slow.shutdown()
            assert received < 3000  # cut off long before the flood ended

    def test_app_without_a_secret_refuses_to_build(self):
        from convo import ConfigurationError

        with pytest.raises(ConfigurationError, match="secret"):
            create_app(ScriptedService(), secret=None)


def test_importing_convo_and_convo_remote_stays_light():
    code = ("import sys, convo, convo.remote, convo.server; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'jwt', 'websockets', 'websocket') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_names_of_convo_remote_and_convo_server():
    import convo.remote
    import convo.server

    for module in (convo.remote, convo.server):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            obj = getattr(module, name)
            assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"
