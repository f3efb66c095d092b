"""The offline examples run and say what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_subagents_fans_out_in_parallel_and_rolls_up(tmp_path):
    out = run_example("subagents.py", cwd=tmp_path)
    assert "Summary of 4 reports" in out
    assert "responses:     6" in out
    assert "tool calls:    {'research': 4}" in out
    wall = float(out.split("wall time:")[1].split("s")[0])
    assert wall < 1.0  # 4 sub-agents x 0.2 s would take > 1.2 s one after another


def test_audit_log_records_every_depth(tmp_path):
    out_file = tmp_path / "trail.jsonl"
    out = run_example("audit_log.py", "--out", str(out_file), cwd=tmp_path)
    assert "The experts agree" in out
    events = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert sorted({e["depth"] for e in events}) == [0, 1]
    assert [e["event"] for e in events].count("tool_result") == 2
    subs = {e["convo"] for e in events if e["depth"] == 1}
    assert len(subs) == 2 and all(e["parent"] for e in events if e["depth"] == 1)
