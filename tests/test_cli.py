"""The convo command: run and chat, on the real local model and on a scripted OpenAI-compatible server."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from convo.cli import EXAMPLE_TOOLS, _Spinner, calculate, current_time, evaluate_arithmetic, main, word_count
from tests.servers import Reply, ScriptedHTTPServer

USAGE_LINE = re.compile(r"^\[local/SmolLM2-135M-Instruct\] (\d+) tokens in · (\d+) out · \$0 · \d+\.\d\ds$")
SECRET = "sk-test-never-print-me-0123456789"


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    """No API keys, so the command picks the embedded model unless told otherwise."""
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def feed_stdin(monkeypatch, text: str, tty: bool = False) -> None:
    class Stdin(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(sys, "stdin", Stdin(text))


# A test HTTP server thread elsewhere in the suite may report a dropped connection
# while this test captures stderr; that block is socketserver's, not the command's.
_SERVER_NOISE = re.compile(r"-{40}\nException occurred during processing of request.*?\n-{40}\n", re.DOTALL)


def lines(text: str) -> list[str]:
    return [line for line in _SERVER_NOISE.sub("", text).splitlines() if line]


# --- the example tools -------------------------------------------------------------

class TestArithmetic:
    @pytest.mark.parametrize("expression, value", [
        ("2 + 3 * 4", 14), ("(1 + 2) ** 3", 27), ("12.5 / 100 * 3480", 435.0), ("2^10", 1024),
        ("-7 // 2", -4), ("7 % 3", 1), ("sqrt(16) + abs(-1)", 5.0), ("round(pi, 2)", 3.14),
    ])
    def test_evaluates(self, expression, value):
        assert evaluate_arithmetic(expression) == value

    @pytest.mark.parametrize("expression", [
        "__import__('os').system('true')", "open('/etc/passwd')", "x + 1", "'a' * 3", "(1).real",
        "[1, 2]", "True + 1", "lambda: 1", "sqrt(x=4)", "9 ** 9 ** 9", "(10 ** 9000) ** 9000", "1 +",
    ])
    def test_refuses_anything_else(self, expression):
        with pytest.raises(ValueError):
            evaluate_arithmetic(expression)

    def test_division_by_zero(self):
        with pytest.raises(ZeroDivisionError):
            evaluate_arithmetic("1 / 0")


class TestExampleTools:
    def test_names_and_schemas(self):
        assert [t.name for t in EXAMPLE_TOOLS] == ["calculate", "current_time", "word_count"]
        assert calculate.input_schema["required"] == ["expression"]
        assert "required" not in current_time.input_schema

    def test_they_run(self):
        assert calculate(expression="6*7") == "42"
        assert word_count(text="one two  three\nfour") == 4
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", current_time())


class TestSpinner:
    def test_animates_on_a_terminal_and_clears_its_line(self):
        stream = io.StringIO()
        spinner = _Spinner(stream, enabled=True)
        spinner.start()
        spinner.start()  # a second start is harmless
        time.sleep(0.35)
        spinner.stop()
        spinner.stop()
        out = stream.getvalue()
        assert "thinking…" in out
        assert out.endswith("\r\033[K")

    def test_silent_when_not_a_terminal(self):
        stream = io.StringIO()
        spinner = _Spinner(stream, enabled=False)
        spinner.start()
        time.sleep(0.15)
        spinner.stop()
        assert stream.getvalue() == ""


# --- convo run ---------------------------------------------------------------------

class TestRun:
    def test_streams_an_answer_then_prints_usage(self, capsys):
        assert main(["run", "--max-tokens", "12", "Name three primary colours."]) == 0
        out, err = capsys.readouterr()
        assert out.strip() and out.endswith("\n")
        [usage] = lines(err)
        match = USAGE_LINE.match(usage)
        assert match, usage
        assert int(match.group(1)) > 10 and 1 <= int(match.group(2)) <= 12
        assert "\r" not in err  # no spinner when stderr is not a terminal

    def test_prompt_from_stdin(self, capsys, monkeypatch):
        feed_stdin(monkeypatch, "Say hello.\n")
        assert main(["run", "--model", "local", "--max-tokens", "4"]) == 0
        out, err = capsys.readouterr()
        assert out.strip()
        assert USAGE_LINE.match(lines(err)[-1])

    def test_system_prompt_counts_in_the_input(self, capsys):
        main(["run", "--max-tokens", "1", "Hi"])
        plain = int(USAGE_LINE.match(lines(capsys.readouterr().err)[-1]).group(1))
        main(["run", "--max-tokens", "1", "--system", "You answer every question like a pirate would.", "Hi"])
        with_system = int(USAGE_LINE.match(lines(capsys.readouterr().err)[-1]).group(1))
        assert with_system != plain

    def test_no_prompt_on_a_terminal_is_a_usage_error(self, capsys, monkeypatch):
        feed_stdin(monkeypatch, "", tty=True)
        assert main(["run"]) == 2
        assert "run needs a prompt" in capsys.readouterr().err

    def test_unknown_model_is_one_readable_line(self, capsys):
        assert main(["run", "--model", "nonsense-model-9", "hi"]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        [line] = lines(err)
        assert line.startswith("convo: error: cannot tell which provider serves the model 'nonsense-model-9'")

    def test_claude_without_a_key_says_what_to_set(self, capsys):
        assert main(["run", "--model", "claude-haiku-4-5", "hi"]) == 1
        [line] = lines(capsys.readouterr().err)
        assert line.startswith("convo: error: ") and "ANTHROPIC_API_KEY" in line

    def test_missing_gguf_is_one_line(self, capsys, tmp_path):
        assert main(["run", "--model", str(tmp_path / "nope.gguf"), "hi"]) == 1
        [line] = lines(capsys.readouterr().err)
        assert line == f"convo: error: no GGUF model file at {tmp_path / 'nope.gguf'}"

    def test_provider_errors_are_one_line_without_secrets(self, capsys, no_keys):
        body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                          "code": "invalid_api_key"}}
        with ScriptedHTTPServer([Reply.json(body, 401, {"x-request-id": "req_cli_1"})]) as server:
            no_keys.setenv("OPENAI_API_KEY", SECRET)
            no_keys.setenv("OPENAI_BASE_URL", server.url + "/v1")
            code = main(["run", "--model", "gpt-4.1-mini", "hi"])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""
        assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        [line] = lines(err)
        assert line.startswith("convo: error: 401") and "Incorrect API key provided" in line
        assert SECRET not in err

    @pytest.mark.parametrize("argv", [[], ["bogus"], ["run", "--max-tokens", "0", "x"], ["chat", "--nope"]])
    def test_usage_errors_exit_2(self, capsys, argv):
        assert main(argv) == 2
        assert "usage: convo" in capsys.readouterr().err

    def test_help_exits_0(self, capsys):
        assert main(["run", "--help"]) == 0
        assert "--tools" in capsys.readouterr().out


def chat_chunk(delta: dict, finish: str | None = None) -> str:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4.1-mini-2025-04-14",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def usage_chunk(prompt: int, completion: int) -> str:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4.1-mini-2025-04-14", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    return f"data: {json.dumps(body)}\n\n"


class TestRunWithTools:
    def test_tool_call_runs_and_the_answer_streams(self, capsys, no_keys):
        call = chat_chunk({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function",
             "function": {"name": "calculate", "arguments": ""}}]})
        args = chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"expression": "6*7"}'}}]})
        first = call + args + chat_chunk({}, "tool_calls") + usage_chunk(50, 10) + "data: [DONE]\n\n"
        second = (chat_chunk({"role": "assistant", "content": "The answer"}) + chat_chunk({"content": " is 42."})
                  + chat_chunk({}, "stop") + usage_chunk(70, 6) + "data: [DONE]\n\n")
        with ScriptedHTTPServer([Reply.sse(first), Reply.sse(second, chunk_size=40)]) as server:
            no_keys.setenv("OPENAI_BASE_URL", server.url + "/v1")
            code = main(["run", "--model", "gpt-4.1-mini", "--tools", "What is six times seven?"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out == "The answer is 42.\n"
        err_lines = lines(err)
        assert err_lines[0] == '[tool] calculate({"expression": "6*7"})'
        assert err_lines[1] == "[tool] calculate → 42"
        # gpt-4.1-mini: $0.40 in, $1.60 out per million: (120 * 0.40 + 16 * 1.60) / 1e6 = $0.0000736
        assert re.match(r"^\[gpt-4.1-mini\] 120 tokens in · 16 out · \$0.000074 · "
                        r"\d+\.\d\ds · tools: calculate×1$", err_lines[2]), err_lines[2]
        assert len(err_lines) == 3
        sent = server.requests[0].json()
        assert sorted(t["function"]["name"] for t in sent["tools"]) == ["calculate", "current_time", "word_count"]
        followup = server.requests[1].json()["messages"]
        assert followup[-1]["role"] == "tool" and followup[-1]["content"] == "42"

    def test_local_model_with_tools_finishes(self, capsys):
        """Whatever the small model does with the tools, the command ends cleanly."""
        code = main(["run", "--tools", "--max-tokens", "32", "--max-turns", "2", "What is 6 times 7?"])
        last = lines(capsys.readouterr().err)[-1]
        if code == 0:
            assert USAGE_LINE.match(last.split(" · tools:")[0]), last
        else:
            assert code == 1 and last.startswith("convo: error: the model was still calling tools"), last


# --- convo chat --------------------------------------------------------------------

class TestChat:
    def test_scripted_session(self, capsys, monkeypatch):
        feed_stdin(monkeypatch, "hello\n/usage\n/reset\n/usage\n/quit\nnever read\n")
        assert main(["chat", "--max-tokens", "8"]) == 0
        out, err = capsys.readouterr()
        assert err.startswith("convo chat with local/SmolLM2-135M-Instruct; commands: /usage")
        out_lines = lines(out)
        first_usage = next(i for i, line in enumerate(out_lines) if USAGE_LINE.match(line))
        assert first_usage >= 1  # the streamed reply came first
        assert int(USAGE_LINE.match(out_lines[first_usage]).group(2)) >= 1
        assert out_lines[first_usage + 1] == "(conversation reset)"
        assert USAGE_LINE.match(out_lines[first_usage + 2]).groups() == ("0", "0")
        assert len(out_lines) == first_usage + 3

    def test_history_carries_to_the_next_turn(self, capsys, monkeypatch):
        feed_stdin(monkeypatch, "My name is Ada.\nWhat is my name?\n/usage\n")
        assert main(["chat", "--max-tokens", "6"]) == 0  # EOF quits
        usage = [line for line in lines(capsys.readouterr().out) if USAGE_LINE.match(line)]
        tokens_in = int(USAGE_LINE.match(usage[-1]).group(1))
        assert tokens_in > 2 * 30  # both turns' prompts, the second holding the first

    def test_unknown_command_is_reported_and_the_chat_goes_on(self, capsys, monkeypatch):
        feed_stdin(monkeypatch, "/frobnicate\n/help\n")
        assert main(["chat"]) == 0
        out, err = capsys.readouterr()
        assert "convo: unknown command /frobnicate" in err
        assert out.startswith("commands: /usage")


# --- as a process ---------------------------------------------------------------------

def child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    return env


class TestProcess:
    def test_module_entry_point(self):
        proc = subprocess.run([sys.executable, "-m", "convo.cli", "run", "--max-tokens", "6", "Hi"],
                              capture_output=True, text=True, timeout=120, env=child_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()
        assert USAGE_LINE.match(proc.stderr.strip().splitlines()[-1])

    def test_console_script_reports_bad_model(self):
        script = shutil.which("convo")
        assert script, "the convo console script is not installed (pip install -e '.[local]')"
        proc = subprocess.run([script, "run", "--model", "nonsense-model-9", "hi"],
                              capture_output=True, text=True, timeout=60, env=child_env())
        assert proc.returncode == 1
        assert proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert line.startswith("convo: error: cannot tell which provider")

    def test_ctrl_c_exits_130_without_a_traceback(self):
        proc = subprocess.Popen([sys.executable, "-m", "convo.cli", "chat"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        try:
            banner = proc.stderr.readline()  # printed once the service is built: it is waiting for input
            assert banner.startswith("convo chat with")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130
        assert "Traceback" not in err

    def test_ctrl_c_while_streaming(self):
        proc = subprocess.Popen([sys.executable, "-m", "convo.cli", "run", "--max-tokens", "2000",
                                 "Write a very long story about a dragon."],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        try:
            first = proc.stdout.read(1)  # the answer has started streaming
            assert first
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130
        assert b"Traceback" not in err
