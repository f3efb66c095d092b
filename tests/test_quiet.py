"""A library that does not print: convo's log events reach whichever logging the application set up, else nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from convo import Convo, ToolUse, tool
from convo.testing import ScriptedService, reply

# A run that logs at every level convo uses: a failing tool (warning), a raising
# listener (warning), an unpriced model (warning), a discarded tool result (info).
SCRIPT = textwrap.dedent("""
    import sys
    from convo import Convo, ToolUse, tool
    from convo.testing import reply

    class Unpriced:
        def __init__(self):
            self.replies = [reply(tool_uses=[ToolUse("t1", "boom", {})], model="mystery-1"),
                            reply("done", model="mystery-1")]
        def do(self, request):
            return self.replies.pop(0)
        def stream(self, request):
            raise NotImplementedError

    class Angry:
        def on_response(self, c, r):
            raise RuntimeError("listener bug")

    @tool
    def boom() -> str:
        \"\"\"Fail.\"\"\"
        raise ValueError("tool bug")

    {setup}
    Convo(Unpriced(), tools=[boom], listener=Angry()).run("go")
""")


def run_child(setup: str = "") -> subprocess.CompletedProcess:
    code = SCRIPT.replace("{setup}", setup)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


class TestNothingPrintedByDefault:
    def test_a_run_that_warns_prints_nothing(self):
        out = run_child()
        assert out.returncode == 0, out.stderr
        assert out.stdout == "" and out.stderr == ""

    def test_stdlib_logging_configured_by_the_application_gets_the_events(self):
        out = run_child("import logging; logging.basicConfig(level=logging.INFO, stream=sys.stdout, "
                        "format='%(name)s %(levelname)s %(message)s')")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any(line.startswith("convo WARNING tool_failed") for line in lines)
        assert any(line.startswith("convo WARNING listener_failed") for line in lines)
        assert any(line.startswith("convo WARNING unpriced_model") for line in lines)
        assert out.stderr == ""

    def test_the_convo_logger_level_controls_what_appears(self):
        out = run_child("import logging; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
                        "logging.getLogger('convo').setLevel(logging.ERROR)")
        assert out.stdout == "" and out.stderr == ""

    def test_structlog_configured_by_the_application_gets_the_events(self):
        out = run_child("import structlog; structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout),"
                        " processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])")
        assert out.returncode == 0, out.stderr
        assert '"event": "tool_failed"' in out.stdout and '"level": "warning"' in out.stdout
        assert out.stderr == ""


@pytest.fixture
def structlog_unconfigured():
    """structlog as a fresh process has it (conftest puts it back afterwards)."""
    import structlog

    structlog.reset_defaults()


class TestStdlibRecords:
    def test_records_carry_the_event_and_its_fields(self, caplog, structlog_unconfigured):
        @tool
        def boom() -> str:
            """Fail."""
            raise ValueError("tool bug")

        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "boom", {})]), reply("ok")])
        with caplog.at_level(logging.WARNING, logger="convo"):
            Convo(service, tools=[boom]).run("go")
        [record] = [r for r in caplog.records if getattr(r, "convo_event", None) == "tool_failed"]
        assert record.name == "convo" and record.levelno == logging.WARNING
        assert record.convo_fields["tool"] == "boom" and record.exc_info is not None
