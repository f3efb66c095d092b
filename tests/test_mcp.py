"""MCP servers as tools, against real servers on this machine.

The servers are real processes: the reference ``mcp-server-time`` from PyPI
over stdio, and ``tests/mcp_servers/edge.py`` (written with the SDK's own
server framework) over stdio and over streamable HTTP on 127.0.0.1, for the
edge cases: slow calls, crashes, hangs, images, structured output, list changes.
The run end to end with the local model is ``examples/mcp_time.py``, which
tests/test_examples.py runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import convo
from convo import (
    ArgumentTypeError,
    Cancelled,
    ConfigurationError,
    Convo,
    Document,
    Image,
    Text,
    ToolChoice,
    ToolUse,
    tool,
)
from convo.mcp import MCPServer, MCPServerError
from convo.testing import RecordingListener, ScriptedService, reply

EDGE = str(Path(__file__).resolve().parent / "mcp_servers" / "edge.py")
TIME_ARGS = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
TOKEN = "tok-7f3a9c1e5b2d4e6f"


# --- helpers -------------------------------------------------------------------------

def edge(name: str = "edge", **options) -> MCPServer:
    env = options.pop("env", None)
    return MCPServer.stdio(name, sys.executable, [EDGE], env=env, **options)


def tool_named(server: MCPServer, name: str):
    tools = {t.name: t for t in server.tools()}
    return tools[f"mcp__{server.name}__{name}"]


def call(server: MCPServer, tool_name: str, /, **arguments):
    """Call a tool of ``server`` directly, as a worker thread of the engine would."""
    return tool_named(server, tool_name).run(arguments)


def text_of(out) -> str:
    content = out.content if isinstance(out.content, tuple) else (Text(out.content),)
    return "".join(b.text for b in content if isinstance(b, Text))


def pid_of(server: MCPServer) -> int:
    return json.loads(text_of(call(server, "where")))["pid"]


def children() -> set[int]:
    """Live (not zombie) processes whose parent is this test process."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def stderr_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "mcp_server_stderr" in r.getMessage()]


def results_sent(service: ScriptedService, request: int = -1) -> list:
    return service.requests[request].messages[-1].tool_results()


def start_http_edge(env: dict, port: int = 0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, EDGE, "--http"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, **env, "EDGE_PORT": str(port)})
    line = proc.stdout.readline()
    assert line.strip().isdigit(), "the HTTP server did not report its port"
    return proc, int(line)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def no_leaked_processes():
    """Every server process a test started is gone when the module ends."""
    before = children()
    yield
    wait_for(lambda: not (children() - before), timeout=10)


@pytest.fixture(scope="module")
def shared_edge():
    """One edge server over stdio for the tests that do not break it."""
    with edge() as server:
        server.start()
        yield server


@pytest.fixture(scope="module")
def impatient_edge():
    """An edge server whose calls time out after a second."""
    with edge(timeout=1) as server:
        yield server


@pytest.fixture(scope="module")
def time_server():
    """The reference time server from PyPI, over stdio."""
    with MCPServer.stdio("time", sys.executable, TIME_ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def http_edge():
    """The edge server over streamable HTTP on 127.0.0.1, behind a bearer token; yields its URL."""
    proc, port = start_http_edge({"EDGE_TOKEN": TOKEN})
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger="convo")
    return caplog


# --- the reference server ------------------------------------------------------------

class TestReferenceTimeServer:
    def test_its_tools_join_with_their_input_schemas(self, time_server):
        tools = {t.name: t for t in time_server.tools()}
        assert set(tools) == {"mcp__time__get_current_time", "mcp__time__convert_time"}
        schema = tools["mcp__time__convert_time"].input_schema
        assert schema["type"] == "object"
        assert set(schema["required"]) == {"source_timezone", "time", "target_timezone"}
        assert "timezone" in tools["mcp__time__get_current_time"].description.lower()

    def test_run_calls_it_and_the_model_reads_the_result(self, time_server):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "mcp__time__convert_time",
                                     {"source_timezone": "Europe/Paris", "time": "12:00",
                                      "target_timezone": "Asia/Tokyo"})]),
            reply("It is 19:00 in Tokyo."),
        ])
        c = Convo(service, mcp_servers=[time_server])
        assert c.run("Noon in Paris is what in Tokyo?").text() == "It is 19:00 in Tokyo."
        (result,) = results_sent(service)
        assert not result.is_error
        converted = json.loads(result.text())
        assert converted["target"]["timezone"] == "Asia/Tokyo"
        assert converted["target"]["datetime"][11:16] in ("19:00", "20:00")  # 20:00 while Paris is on winter time

    def test_its_error_results_stay_errors_the_model_reads(self, time_server):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "mcp__time__get_current_time", {"timezone": "Mars/Olympus"})]),
            reply("Sorry."),
        ])
        Convo(service, mcp_servers=[time_server]).run("Time on Mars?")
        (result,) = results_sent(service)
        assert result.is_error
        assert "Mars/Olympus" in result.text()


# --- in a conversation ----------------------------------------------------------------

@tool
def local_echo(text: str) -> str:
    """Echo locally."""
    return text


class TestInAConvo:
    def test_server_tools_are_offered_beside_the_convos_own(self, shared_edge):
        service = ScriptedService([reply("hi")])
        Convo(service, tools=[local_echo], mcp_servers=[shared_edge]).send("hello")
        names = [t.name for t in service.requests[0].tools]
        assert names[0] == "local_echo"
        assert {"mcp__edge__echo", "mcp__edge__add", "mcp__edge__slow"} <= set(names)

    def test_local_and_mcp_tools_run_in_one_round(self, shared_edge):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "local_echo", {"text": "here"}),
                             ToolUse("t2", "mcp__edge__add", {"a": 2, "b": 3})]),
            reply("done"),
        ])
        Convo(service, tools=[local_echo], mcp_servers=[shared_edge]).run("go")
        assert [r.text() for r in results_sent(service)] == ["here", "5"]

    def test_input_failing_the_servers_schema_is_refused_before_the_call(self, shared_edge):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__add", {"a": "two"})]), reply("ok")])
        Convo(service, mcp_servers=[shared_edge]).run("go")
        (result,) = results_sent(service)
        assert result.is_error and "invalid input for tool 'mcp__edge__add'" in result.text()

    def test_sub_convos_inherit_the_servers_without_closing_them(self, shared_edge):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__echo", {"text": "from below"})]),
                                   reply("ok")])
        parent = Convo(ScriptedService([]), mcp_servers=[shared_edge])
        child = parent.sub_convo(service=service)
        child.run("go")
        assert results_sent(service)[0].text() == "from below"
        child.close()
        assert shared_edge.running and not shared_edge.closed

    def test_closing_the_convo_stops_its_servers_processes(self):
        server = edge()
        with Convo(ScriptedService([reply("hi")]), mcp_servers=[server]) as c:
            c.send("hello")
            pid = pid_of(server)
            assert alive(pid)
        assert server.closed and not alive(pid)
        assert server.tools() == []

    def test_a_server_you_started_serves_several_convos_and_outlives_them(self, shared_edge):
        for _ in range(2):
            with Convo(ScriptedService([reply("hi")]), mcp_servers=[shared_edge]) as c:
                c.send("hello")
        assert shared_edge.started_by_user and shared_edge.running and not shared_edge.closed

    def test_two_servers_with_one_name_are_refused(self):
        with pytest.raises(convo.ConfigurationError, match="same name"):
            Convo(ScriptedService([]), mcp_servers=[edge("twin"), edge("twin")])

    def test_listeners_see_mcp_calls_like_any_other(self, shared_edge):
        listener = RecordingListener()
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__add", {"a": 1, "b": 1})]),
                                   reply("2")])
        Convo(service, listener=listener, mcp_servers=[shared_edge]).run("1+1")
        (call_event,) = listener.of("tool_call")
        assert call_event.args[0] == ToolUse("t1", "mcp__edge__add", {"a": 1, "b": 1})
        (result_event,) = listener.of("tool_result")
        tool_use, result, error = result_event.args
        assert tool_use.name == "mcp__edge__add" and result.text() == "2" and error is None
        assert result.display == {"result": 2}

    def test_a_reply_asking_for_eight_slow_calls_takes_as_long_as_one(self, shared_edge):
        uses = [ToolUse(f"t{i}", "mcp__edge__slow", {"seconds": 0.5, "tag": f"par{i}"}) for i in range(8)]
        service = ScriptedService([reply(tool_uses=uses), reply("done")])
        started = time.monotonic()
        Convo(service, mcp_servers=[shared_edge]).run("go")
        elapsed = time.monotonic() - started
        assert [r.text() for r in results_sent(service)] == ["slept 0.5"] * 8
        assert elapsed < 2.5  # one after another would take 4 s

    def test_tool_choice_may_name_an_mcp_tool(self, shared_edge):
        service = ScriptedService([reply("ok")])
        Convo(service, mcp_servers=[shared_edge], tool_choice=ToolChoice.tool("mcp__edge__echo")).send("x")
        assert service.requests[0].tool_choice.name == "mcp__edge__echo"

    def test_a_pack_conversation_uses_mcp_tools(self, shared_edge):
        pack = Path(__file__).resolve().parent / "fixtures" / "packs" / "mcp-tools_mcp-tools.pack.json"
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__echo", {"text": "from a pack"})]),
                                   reply("done")])
        c = convo.open(pack, service=service, mcp_servers=[shared_edge])
        assert c.run("Echo this.").text() == "done"
        assert "MCP tools" in service.requests[0].system[0].text
        assert results_sent(service)[0].text() == "from a pack"

    def test_debug_json_names_the_servers(self, shared_edge):
        c = Convo(ScriptedService([]), mcp_servers=[shared_edge])
        assert json.loads(c.debug_json())["mcp_servers"] == ["edge"]


# --- results ---------------------------------------------------------------------------

class TestResults:
    def test_text(self, shared_edge):
        out = call(shared_edge, "echo", text="héllo")
        assert text_of(out) == "héllo" and not out.error

    def test_structured_content_is_kept_as_display_and_sent_as_its_json(self, shared_edge):
        out = call(shared_edge, "weather", city="Oslo")
        assert out.display == {"city": "Oslo", "celsius": 21.5}
        assert json.loads(text_of(out)) == {"city": "Oslo", "celsius": 21.5}

    def test_structured_content_without_blocks_becomes_json_text(self, shared_edge):
        out = call(shared_edge, "structured_only")
        assert text_of(out) == '{"answer": 42}' and out.display == {"answer": 42}

    def test_images_become_image_blocks(self, shared_edge):
        text, image = call(shared_edge, "image").content
        assert text == Text("a pixel")
        assert isinstance(image, Image) and image.media_type == "image/png" and image.data.startswith("iVBOR")

    def test_an_image_reaches_the_model_in_the_tool_result(self, shared_edge):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__image", {})]), reply("a dot")])
        Convo(service, mcp_servers=[shared_edge]).run("draw")
        (result,) = results_sent(service)
        assert [type(b) for b in result.content] == [Text, Image]

    def test_embedded_resources_become_documents_and_the_rest_is_described(self, shared_edge):
        notes, pdf, blob, link = call(shared_edge, "resources").content
        assert notes == Document(media_type="text/plain", text="remember the milk", title="file:///notes.txt")
        assert pdf.media_type == "application/pdf" and pdf.title == "file:///report.pdf" and pdf.data
        assert "file:///data.bin" in blob.text and "not shown" in blob.text
        assert link.text == "[resource link: https://example.invalid/doc; name: doc]"

    def test_is_error_results_stay_error_results(self, shared_edge):
        out = call(shared_edge, "fail", reason="no disk")
        assert out.error and text_of(out) == "cannot: no disk"

    def test_a_tool_that_raises_on_the_server_is_an_error_result(self, shared_edge):
        out = call(shared_edge, "raises")
        assert out.error and "raises" in text_of(out)

    def test_a_json_rpc_error_names_the_server(self, time_server):
        # Only a tool the server does not have gets a JSON-RPC error from it (the
        # engine checks input first), and the model can only call listed tools:
        # pin the edge by calling the server's call path directly.
        out = time_server._invoke("no_such_tool", {})
        assert out.error
        assert text_of(out).startswith("MCP server 'time' refused the call to 'no_such_tool': ")


# --- cancellation and timeouts ------------------------------------------------------------

def started(caplog, tag: str) -> bool:
    return any(f"slow call '{tag}' started" in line for line in stderr_lines(caplog))


def server_cancellations(server: MCPServer) -> list[str]:
    return json.loads(text_of(call(server, "cancellations")))


class TestCancellation:
    def test_convo_cancel_sends_mcp_cancellation(self, shared_edge, info_log):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__slow",
                                                            {"seconds": 30, "tag": "whole"})])])
        c = Convo(service, mcp_servers=[shared_edge])
        outcome = []
        runner = threading.Thread(target=lambda: outcome.append(_run_catching(c)))
        runner.start()
        wait_for(lambda: started(info_log, "whole"))
        began = time.monotonic()
        c.cancel()
        runner.join(10)
        assert time.monotonic() - began < 2
        assert isinstance(outcome[0], Cancelled)
        wait_for(lambda: "whole" in server_cancellations(shared_edge))

    def test_cancel_tool_use_cancels_that_call_on_the_server_only(self, shared_edge, info_log):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "mcp__edge__slow", {"seconds": 30, "tag": "one"}),
                             ToolUse("t2", "mcp__edge__slow", {"seconds": 0.5, "tag": "two"})]),
            reply("done"),
        ])
        c = Convo(service, mcp_servers=[shared_edge])
        runner = threading.Thread(target=c.run, args=("go",))
        runner.start()
        wait_for(lambda: started(info_log, "one") and started(info_log, "two"))
        c.cancel_tool_use("t1", "not needed")
        runner.join(10)
        first, second = results_sent(service)
        assert first.is_error and second.text() == "slept 0.5"
        wait_for(lambda: "one" in server_cancellations(shared_edge))
        assert "two" not in server_cancellations(shared_edge)

    def test_a_call_over_its_timeout_is_cancelled_and_the_model_told(self, impatient_edge):
        pid = pid_of(impatient_edge)
        began = time.monotonic()
        out = call(impatient_edge, "slow", seconds=30, tag="late")
        assert time.monotonic() - began < 5
        assert out.error
        assert text_of(out) == "MCP server 'edge' did not answer the call to 'slow' within 1s; the call was cancelled"
        wait_for(lambda: "late" in server_cancellations(impatient_edge))
        assert pid_of(impatient_edge) == pid  # slow, not hung: the same server goes on


def _run_catching(c: Convo):
    try:
        return c.run("go")
    except BaseException as exc:
        return exc


# --- faults ---------------------------------------------------------------------------------

class TestFaults:
    def test_start_raises_a_typed_error_naming_the_server(self):
        with MCPServer.stdio("ghost", "/nonexistent/mcp-server") as server:
            with pytest.raises(MCPServerError) as caught:
                server.start()
        assert isinstance(caught.value, convo.ConvoError) and isinstance(caught.value, ConnectionError)
        assert caught.value.server == "ghost"
        assert str(caught.value).startswith("MCP server 'ghost' failed to start: FileNotFoundError")

    def test_a_server_that_will_not_start_lends_no_tools_and_the_convo_goes_on(self, tmp_path, info_log):
        flag = tmp_path / "fail"
        flag.touch()
        server = edge(env={"EDGE_FAIL_FLAG": str(flag)})
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "local_echo", {"text": "still here"})]),
                                   reply("ok")])
        with Convo(service, tools=[local_echo], mcp_servers=[server]) as c:
            c.run("go")
        assert [t.name for t in service.requests[0].tools] == ["local_echo"]
        assert results_sent(service)[0].text() == "still here"
        failures = [r.getMessage() for r in info_log.records if "mcp_server_start_failed" in r.getMessage()]
        assert len(failures) == 1  # not retried before every request
        assert "edge: refusing to start" in " ".join(stderr_lines(info_log))

    def test_a_crash_mid_call_is_an_error_result_and_the_next_call_restarts_it(self):
        with edge() as server:
            first = pid_of(server)
            service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__crash", {})]),
                                       reply(tool_uses=[ToolUse("t2", "mcp__edge__add", {"a": 1, "b": 2})]),
                                       reply("ok")])
            Convo(service, mcp_servers=[server]).run("go")
            (crashed,) = results_sent(service, 1)
            assert crashed.is_error
            assert crashed.text().startswith("MCP server 'edge' stopped during the call to 'crash'")
            assert "restarted on the next call" in crashed.text()
            assert results_sent(service, 2)[0].text() == "3"
            assert pid_of(server) != first and not alive(first)

    def test_a_failed_restart_is_an_error_result_and_a_later_call_recovers(self, tmp_path):
        flag = tmp_path / "fail"
        with edge(env={"EDGE_FAIL_FLAG": str(flag)}) as server:
            server.start()
            flag.touch()
            assert call(server, "crash").error
            out = call(server, "add", a=1, b=2)
            assert out.error
            assert text_of(out).startswith("MCP server 'edge' failed to start:")
            assert len(server.tools()) > 0  # the last list it knew
            flag.unlink()
            assert text_of(call(server, "add", a=1, b=2)) == "3"

    def test_a_hung_server_is_restarted_on_the_next_call(self, impatient_edge):
        first = pid_of(impatient_edge)
        out = call(impatient_edge, "hang")
        assert out.error
        assert text_of(out) == ("MCP server 'edge' did not answer the call to 'hang' within 1s, nor a tools/list "
                                "after it; it will be restarted on the next call")
        assert pid_of(impatient_edge) != first

    def test_a_malformed_result_is_an_error_result_and_the_server_restarts(self):
        with edge() as server:
            first = pid_of(server)
            out = call(server, "malformed")
            assert out.error
            assert text_of(out).startswith("MCP server 'edge' sent a malformed result for 'malformed'")
            assert pid_of(server) != first

    @pytest.mark.parametrize("protocol", ["auto", "legacy"])
    def test_a_changed_tool_list_is_offered_from_the_next_turn(self, protocol):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "mcp__edge__grow", {"name": "fresh"})]),
            reply(tool_uses=[ToolUse("t2", "mcp__edge__fresh", {})]),
            reply("done"),
        ])
        with edge(protocol=protocol) as server:
            Convo(service, mcp_servers=[server]).run("go")
        before, after = ({t.name for t in r.tools} for r in service.requests[:2])
        assert "mcp__edge__fresh" not in before and "mcp__edge__fresh" in after
        assert results_sent(service)[0].text() == "I am fresh"

    def test_stderr_goes_to_the_log_and_nowhere_else(self, shared_edge, info_log, capfd):
        call(shared_edge, "noisy", text="a line for the log")
        wait_for(lambda: "a line for the log" in stderr_lines(info_log)[-1] if stderr_lines(info_log) else False)
        out, err = capfd.readouterr()
        assert out == "" and err == ""


class TestQuiet:
    def test_nothing_is_printed_whatever_happens(self, tmp_path):
        script = textwrap.dedent(f"""
            import sys
            from convo.mcp import MCPServer
            with MCPServer.stdio("edge", sys.executable, [{EDGE!r}], timeout=1) as s:
                tools = {{t.name: t for t in s.tools()}}
                tools["mcp__edge__noisy"].run({{"text": "noise"}})
                tools["mcp__edge__raises"].run({{}})
                tools["mcp__edge__crash"].run({{}})
            with MCPServer.stdio("ghost", "/nonexistent/server") as g:
                g.tools()
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == ""


class TestProcessLifetime:
    def test_importing_convo_loads_no_mcp_sdk(self):
        script = ("import sys, convo; "
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types', 'anyio', 'httpx2') "
                  "or m == 'convo.mcp'))")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "[]", proc.stderr

    def test_a_server_left_open_is_stopped_when_the_program_exits(self, tmp_path):
        # A hung server ignores its stdin closing, so only convo's exit hook can stop it.
        script = textwrap.dedent(f"""
            import json, sys, threading, time
            from convo.mcp import MCPServer
            s = MCPServer.stdio("edge", sys.executable, [{EDGE!r}])
            tools = {{t.name: t for t in s.tools()}}
            print(json.loads(tools["mcp__edge__where"].run({{}}).content[0].text)["pid"], flush=True)
            threading.Thread(target=tools["mcp__edge__hang"].run, args=({{}},), daemon=True).start()
            time.sleep(0.5)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        pid = int(proc.stdout)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)


# --- streamable HTTP --------------------------------------------------------------------------

class TestHTTP:
    def test_tools_and_calls_over_streamable_http(self, http_edge):
        with MCPServer.http("web", http_edge, headers={"Authorization": f"Bearer {TOKEN}"}) as server:
            service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__web__add", {"a": 20, "b": 22})]),
                                       reply("42")])
            Convo(service, mcp_servers=[server]).run("go")
            assert results_sent(service)[0].text() == "42"

    def test_parallel_calls_share_one_session(self, http_edge):
        with MCPServer.http("web", http_edge, headers={"Authorization": f"Bearer {TOKEN}"}) as server:
            slow = tool_named(server, "slow")
            began = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda i: slow.run({"seconds": 0.5}), range(8)))
            assert time.monotonic() - began < 2.5
            assert [text_of(o) for o in outs] == ["slept 0.5"] * 8

    def test_cancellation_reaches_an_http_server(self, http_edge):
        with MCPServer.http("web", http_edge, headers={"Authorization": f"Bearer {TOKEN}"}) as server:
            service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__web__slow",
                                                                {"seconds": 30, "tag": "over-http"})])])
            c = Convo(service, mcp_servers=[server])
            runner = threading.Thread(target=_run_catching, args=(c,))
            runner.start()
            time.sleep(0.5)
            c.cancel()
            runner.join(10)
            wait_for(lambda: "over-http" in server_cancellations(server))

    def test_a_refused_connection_never_shows_the_headers(self, http_edge, info_log):
        info_log.set_level(logging.DEBUG)  # everything the SDK and the HTTP library log, too
        secret = "Bearer not-the-right-token-123"
        server = MCPServer.http("web", http_edge + "?key=query-secret-456", headers={"Authorization": secret})
        with server:
            with pytest.raises(MCPServerError) as caught:
                server.start()
            shown = [repr(server), str(caught.value), repr(caught.value), *(r.getMessage() for r in info_log.records)]
        assert str(caught.value).startswith("MCP server 'web' failed to connect")
        for text in shown:
            assert "not-the-right-token-123" not in text and "query-secret-456" not in text
        assert "?key" not in repr(server)

    def test_a_server_that_went_away_is_an_error_then_reconnected(self):
        proc, port = start_http_edge({})
        try:
            with MCPServer.http("web", f"http://127.0.0.1:{port}/mcp") as server:
                assert call(server, "crash").error  # the HTTP server process exits
                proc.wait(10)
                out = call(server, "add", a=1, b=1)
                assert out.error and text_of(out).startswith("MCP server 'web' failed to connect")
                stop(proc)
                proc, _ = start_http_edge({}, port=port)
                assert text_of(call(server, "add", a=1, b=1)) == "2"
        finally:
            stop(proc)


# --- the object itself ---------------------------------------------------------------------

class TestServerObject:
    def test_env_and_cwd_reach_the_process_and_the_rest_of_the_environment_does_not(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CONVO_SECRET_FOR_TEST", "leak")
        with edge(env={"EDGE_GREETING": "bonjour"}, cwd=tmp_path) as server:
            assert text_of(call(server, "getenv", name="EDGE_GREETING")) == "bonjour"
            assert json.loads(text_of(call(server, "where")))["cwd"] == str(tmp_path)
            assert text_of(call(server, "getenv", name="CONVO_SECRET_FOR_TEST")) == ""

    def test_secrets_stay_out_of_repr_errors_and_logs(self, info_log):
        key = "sk-very-secret-key-000"
        with edge(env={"API_KEY": key}) as server:
            call(server, "noisy", text=f"my key is {key}")
            wait_for(lambda: any("my key is" in line for line in stderr_lines(info_log)))
            c = Convo(ScriptedService([]), mcp_servers=[server])
            shown = [repr(server), c.debug_json(), *(r.getMessage() for r in info_log.records)]
        assert all(key not in text for text in shown)
        assert any("my key is ***" in line for line in stderr_lines(info_log))

    def test_start_is_explicit_and_idempotent(self):
        with edge() as server:
            assert not server.running
            assert server.start() is server and server.running
            pid = pid_of(server)
            server.start()
            assert pid_of(server) == pid

    def test_a_closed_server_refuses_to_start_and_has_no_tools(self):
        server = edge()
        server.close()
        server.close()
        assert server.tools() == []
        with pytest.raises(MCPServerError, match="is closed"):
            server.start()

    def test_repr_names_the_server_and_its_state(self):
        server = edge()
        assert repr(server) == f"<MCPServer 'edge' stdio {os.path.basename(sys.executable)!r} not running>"
        server.close()
        assert "closed" in repr(server)

    def test_the_error_pickles(self):
        error = pickle.loads(pickle.dumps(MCPServerError("edge", "failed to start: boom")))
        assert (error.server, error.reason, str(error)) == ("edge", "failed to start: boom",
                                                            "MCP server 'edge' failed to start: boom")

    @pytest.mark.parametrize("build, error", [
        (lambda: MCPServer.stdio("has space", "x"), ConfigurationError),
        (lambda: MCPServer.stdio("", "x"), ConfigurationError),
        (lambda: MCPServer.stdio(7, "x"), ArgumentTypeError),
        (lambda: MCPServer.stdio("ok", ""), ArgumentTypeError),
        (lambda: MCPServer.stdio("ok", "npx", "-y server"), ArgumentTypeError),
        (lambda: MCPServer.stdio("ok", "x", env={"A": 1}), ArgumentTypeError),
        (lambda: MCPServer.stdio("ok", "x", timeout=0), ConfigurationError),
        (lambda: MCPServer.stdio("ok", "x", protocol="2099"), ConfigurationError),
        (lambda: MCPServer.http("ok", "ftp://host/mcp"), ConfigurationError),
        (lambda: MCPServer.http("ok", "http://host/mcp", headers={"A": None}), ArgumentTypeError),
    ])
    def test_bad_arguments_are_typed_errors(self, build, error):
        with pytest.raises(error):
            build()

    def test_a_convo_refuses_what_is_not_a_server(self):
        with pytest.raises(ArgumentTypeError):
            Convo(ScriptedService([]), mcp_servers=["time"])


# --- threads -----------------------------------------------------------------------------------

class TestThreads:
    def test_many_threads_call_one_server_at_once(self, shared_edge):
        add = tool_named(shared_edge, "add")
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: add.run({"a": i, "b": 1}), range(200)))
        assert [text_of(o) for o in outs] == [str(i + 1) for i in range(200)]

    def test_threads_asking_for_tools_at_once_start_the_server_once(self, info_log):
        with edge() as server:
            barrier = threading.Barrier(8)

            def ask():
                barrier.wait()
                return sorted(t.name for t in server.tools())

            with ThreadPoolExecutor(8) as pool:
                lists = list(pool.map(lambda i: ask(), range(8)))
        assert all(names == lists[0] for names in lists) and "mcp__edge__echo" in lists[0]
        assert sum("mcp_server_started" in r.getMessage() for r in info_log.records) == 1

    def test_it_works_inside_a_running_event_loop_as_in_jupyter(self, shared_edge):
        async def cell():
            # Blocking calls from code running on a loop, as a notebook cell does.
            return text_of(call(shared_edge, "echo", text="from a notebook"))

        assert asyncio.run(cell()) == "from a notebook"

    def test_close_from_another_thread_during_a_call_gives_an_error_result(self, info_log):
        server = edge()
        slow = tool_named(server, "slow")
        outcome = []
        caller = threading.Thread(target=lambda: outcome.append(slow.run({"seconds": 30, "tag": "closing"})))
        caller.start()
        wait_for(lambda: started(info_log, "closing"))
        server.close()
        caller.join(10)
        assert outcome[0].error and "edge" in text_of(outcome[0])
