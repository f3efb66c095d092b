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
    assert [e["seq"] for e in events] == list(range(len(events)))  # one hash chain...
    assert f"verify: chain intact, {len(events)} records" in out  # ...that the example verified
    from convo.audit import verify

    lines = out_file.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b'"depth":1', b'"depth":0')  # and that breaks where it was edited
    out_file.write_bytes(b"\n".join(lines))
    assert [(p.kind, p.line) for p in verify(out_file).problems] == [("edited", 5)]


def test_resume_carries_a_conversation_to_a_second_process(tmp_path):
    out = run_example("resume.py", cwd=tmp_path)
    assert "user      I am going to Lisbon for 3 days in May." in out
    assert "assistant Day 1: Alfama" in out
    assert "rolled-up usage: 3 responses" in out  # the sub-agent's reply is in the lead's totals
    assert "sub-agent 'weather-desk' (parent 'trip-planner') said: Lisbon in May" in out


def test_mcp_time_calls_the_reference_time_server_through_the_local_model(tmp_path):
    out = run_example("mcp_time.py", cwd=tmp_path)
    assert "model:   the local model (SmolLM2-135M)" in out
    assert "tools:   mcp__time__convert_time, mcp__time__get_current_time" in out
    assert "call:    mcp__time__get_current_time {\"timezone\": " in out
    assert "result:  {" in out and '"datetime": ' in out  # what mcp-server-time answered
    assert "server stopped: True" in out


def test_batch_eval_labels_twenty_reviews_offline_with_typed_results(tmp_path):
    out = run_example("batch_eval.py", cwd=tmp_path)
    rows = [line for line in out.splitlines() if line[:2].strip().isdigit()]
    assert len(rows) == 20 and [int(r[:2]) for r in rows] == list(range(20))  # in input order
    assert all(r.split()[-2] in ("positive", "negative") for r in rows)  # every reply parsed into a Verdict
    assert "items:      20 done, 0 failed, 0 not started" in out
    assert "total cost: $0" in out


def test_pack_hitl_holds_a_large_refund_until_a_manager_approves(tmp_path):
    out = run_example("pack_hitl.py", cwd=tmp_path)
    assert "held: call_2 process_refund amount=450 reason=amount_over_limit" in out
    assert "approved by the manager: refunded $400.00 on B-7 (never arrived)" in out
    assert "a second approval is refused" in out
    assert "assistant: All done: refunded $25.00 on A-1 (damaged); refunded $400.00 on B-7" in out


def test_remote_session_runs_a_client_tool_through_convo_serve(tmp_path):
    out = run_example("remote_session.py", cwd=tmp_path)
    assert "server: ws://127.0.0.1:" in out
    assert "[client] running order_status('A-1234')" in out  # the model on the server called the client's tool
    assert "[server] tool result: 'shipped on 2 March, arriving 5 March'" in out
    assert "result (success, 2 model replies):" in out
    assert "cost: $0" in out  # the local model is free


def test_chats_queues_a_message_while_the_first_runs_and_streams_both_replies(tmp_path):
    out = run_example("chats.py", cwd=tmp_path)
    assert "chats API: http://127.0.0.1:" in out
    assert "second message queued: True" in out  # posted while the first message's run was under way
    assert "[queue: 1 waiting]" in out and "[queue: 0 waiting]" in out  # taken up when the first run ended
    listed = out.split("messages:", 1)[1].splitlines()
    roles = [line.split()[0] for line in listed if line.startswith("  ")]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert "  user      Name three primary colours." in out and "  user      Now name three secondary colours." in out
    assert "cost: $0 for " in out and "(2 model replies)" in out
