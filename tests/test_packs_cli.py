"""convo run --pack FILE --prompt ID --var name=value: on a scripted OpenAI-compatible server and the local model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from convo.cli import main
from tests.servers import Reply, ScriptedHTTPServer

PACKS = Path(__file__).resolve().parent / "fixtures" / "packs"
HELLO = str(PACKS / "hello_hello.pack.json")


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def streamed(text: str) -> Reply:
    def chunk(delta: dict, finish=None) -> str:
        body = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4.1-mini",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"
    usage = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4.1-mini", "choices": [],
             "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}}
    return Reply.sse(chunk({"role": "assistant", "content": text}) + chunk({}, "stop")
                     + f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n")


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("convo")]


class TestRunWithAPack:
    def test_the_pack_prompt_is_rendered_with_the_variables(self, capsys, no_keys):
        with ScriptedHTTPServer([streamed("Hello Ada!")]) as server:
            no_keys.setenv("OPENAI_BASE_URL", server.url + "/v1")
            code = main(["run", "--model", "gpt-4.1-mini", "--pack", HELLO, "--prompt", "chat",
                         "--var", "user_name=Ada", "hi there"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out == "Hello Ada!\n"
        messages = server.requests[0].json()["messages"]
        assert messages[0]["role"] == "system" and "The user's name is Ada." in messages[0]["content"]
        assert messages[-1] == {"role": "user", "content": "hi there"}

    def test_the_only_prompt_is_the_default_and_vars_may_repeat(self, capsys, no_keys):
        with ScriptedHTTPServer([streamed("A plan.")]) as server:
            no_keys.setenv("OPENAI_BASE_URL", server.url + "/v1")
            code = main(["run", "--model", "gpt-4.1-mini", "--pack", str(PACKS / "json-function_research.pack.json"),
                         "--var", "topic=tides", "--var", "audience=school", "--var", "input={\"q\": 1}", "plan"])
        assert code == 0, capsys.readouterr().err
        system = server.requests[0].json()["messages"][0]["content"]
        assert 'topic "tides" aimed at a school audience' in system and 'was: {"q": 1}.' in system

    def test_a_missing_variable_is_one_line_and_nothing_is_sent(self, capsys, no_keys):
        with ScriptedHTTPServer([streamed("never")]) as server:
            no_keys.setenv("OPENAI_BASE_URL", server.url + "/v1")
            code = main(["run", "--model", "gpt-4.1-mini", "--pack", HELLO, "hi"])
        out, err = capsys.readouterr()
        assert code == 1 and out == "" and server.requests == []
        assert errors(err) == ["convo: error: variable 'user_name': is required but has no value "
                               "(set it with set_var or variables=)"]

    @pytest.mark.parametrize("argv, message", [
        (["--pack", HELLO, "--var", "user_name", "hi"], "--var takes NAME=VALUE, got 'user_name'"),
        (["--prompt", "chat", "hi"], "--prompt and --var go with --pack FILE"),
        (["--var", "a=b", "hi"], "--prompt and --var go with --pack FILE"),
        (["--pack", HELLO, "--system", "Be terse.", "hi"], "--system and --pack do not go together"),
    ])
    def test_usage_errors_exit_2(self, capsys, argv, message):
        assert main(["run", *argv]) == 2
        assert message in capsys.readouterr().err

    def test_pack_errors_are_one_line(self, capsys, tmp_path):
        broken = tmp_path / "broken.pack.json"
        broken.write_text(json.dumps({"id": "Broken", "name": "x"}))
        assert main(["run", "--pack", str(broken), "hi"]) == 1
        [line] = errors(capsys.readouterr().err)
        assert line == (f"convo: error: pack {broken}: 4 problems: version: is required template_engine: is "
                        "required prompts: is required id: 'Broken' does not match ^[a-z][a-z0-9-]*$")
        assert main(["run", "--pack", HELLO, "--prompt", "nope", "hi"]) == 1
        [line] = errors(capsys.readouterr().err)
        assert line == f"convo: error: pack {HELLO}: 1 problem: prompts: no prompt 'nope'; the pack has ['chat']"
        assert main(["run", "--pack", str(tmp_path / "none.json"), "hi"]) == 1
        assert errors(capsys.readouterr().err) == [f"convo: error: no pack file at {tmp_path / 'none.json'}"]

    def test_on_the_local_model(self, capsys):
        code = main(["run", "--pack", HELLO, "--var", "user_name=Ada", "--max-tokens", "8", "Hello!"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out.strip()
        assert re.search(r"^\[local/SmolLM2-135M-Instruct\] \d+ tokens in · \d+ out · \$0 · ", err, re.M), err
