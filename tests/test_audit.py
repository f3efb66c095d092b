"""convo.audit: JSON-lines audit logs with a hash chain, verify, the store sink's table, and `convo logs`."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

import convo
from convo import Convo, ToolUse, Usage, ValidationResult, cli, combine_listeners, tool, tool_call_info
from convo.audit import AuditWriteFailed, JSONLAuditLog, StoreAuditLog, read_records, verify
from convo.audit.events import GENESIS, REDACTION_FAILED
from convo.testing import FunctionService, RecordingListener, ScriptedService, reply
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer

SECRET = "sk-ant-FAKE-audit-leak-canary-51d2"
PRICED = "claude-haiku-4-5"


# --- a sub-agent run to record ---------------------------------------------------------------

@tool
def ask_expert(question: str) -> str:
    """Ask a sub-agent.

    Args:
        question: the question.
    """
    return tool_call_info().convo.sub_convo(system_prompt="expert").send(question).text()


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: the key.
    """
    if key == "boom":
        raise RuntimeError("the lookup table is on fire")
    return f"value of {key}"


def agent(request: convo.Request) -> convo.Response:
    """Two expert calls and a failing lookup, then a summary; sub-convos answer at once."""
    usage = Usage(input_tokens=100, output_tokens=10)
    last = request.messages[-1]
    if last.tool_results():
        return reply("summary: " + "; ".join(r.text() for r in last.tool_results()), model=PRICED, usage=usage)
    if request.tools:
        return reply(tool_uses=[ToolUse("e1", "ask_expert", {"question": "water?"}),
                                ToolUse("e2", "ask_expert", {"question": "fire?"}),
                                ToolUse("l1", "lookup", {"key": "boom"})], model=PRICED, usage=usage)
    return reply(f"answer to {last.text()}", model=PRICED, usage=usage)


class _ResultsSeen:
    """Counts tool results; placed after the listener under test, it shows that listener has had them too."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def on_tool_result(self, c, tool_use, result, error) -> None:
        with self.lock:
            self.n += 1


def run_agent(listener, prompt: str = "go") -> Convo:
    """One run of ``agent`` (14 events), returning once ``listener`` has heard all of them.

    The engine reports a tool's result to listeners from the tool's worker
    thread after it hands the result over, so the turn can end (and run()
    return) before that report is done: wait for it, or a log closed right
    after run() would miss it.
    """
    seen = _ResultsSeen()
    c = Convo(FunctionService(agent), tools=[ask_expert, lookup], listener=combine_listeners(listener, seen))
    c.run(prompt, max_turns=4)
    deadline = time.monotonic() + 10
    while seen.n < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    return c


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, raw: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in raw))


def event_keys(records) -> Counter:
    """What each record says happened, as a multiset to compare sinks with a RecordingListener."""
    keys = Counter()
    for r in records:
        d = r["data"]
        keys[(r["event"], r["convo"], d.get("id") if r["event"].startswith("tool") else None)] += 1
    return keys


def recorded_keys(recording: RecordingListener) -> Counter:
    keys = Counter()
    for e in recording.events:
        ident = e.args[0].id if e.name.startswith("tool") else None
        keys[(e.name, e.convo_id, ident)] += 1
    return keys


@pytest.fixture
def log_path(tmp_path) -> Path:
    return tmp_path / "audit" / "trail.jsonl"


# --- JSONLAuditLog -----------------------------------------------------------------------------

class TestJSONLAuditLog:
    def test_a_sub_agent_run_is_recorded_at_every_depth_with_costs_inputs_and_outputs(self, log_path):
        with JSONLAuditLog(log_path) as audit:
            c = run_agent(audit)
        records = list(read_records(log_path))
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert records[0]["prev"] == GENESIS
        root = c.id
        assert {r["root"] for r in records} == {root}
        subs = {r["convo"] for r in records if r["depth"] == 1}
        assert len(subs) == 2 and all(r["parent"] == root for r in records if r["depth"] == 1)
        calls = {r["data"]["id"]: r["data"] for r in records if r["event"] == "tool_call"}
        assert calls["e1"]["input"] == {"question": "water?"} and calls["l1"]["name"] == "lookup"
        results = {r["data"]["id"]: r["data"] for r in records if r["event"] == "tool_result"}
        assert results["e1"]["output"] == "answer to water?" and not results["e1"]["is_error"]
        assert results["l1"]["is_error"] and results["l1"]["error_type"] == "RuntimeError"
        assert "on fire" in results["l1"]["output"]
        responses = [r for r in records if r["event"] == "response"]
        assert len(responses) == 4
        assert all(Decimal(r["data"]["cost_usd"]) > 0 for r in responses)
        total = sum(Decimal(r["data"]["usage"]["cost_usd"]) for r in responses)
        assert total == c.cumulative_usage().total_cost_usd
        first = records[0]
        assert first["event"] == "request" and first["data"]["kind"] == "user"
        assert first["data"]["message"]["content"] == [{"type": "text", "text": "go"}]
        assert first["data"]["tools"] == ["ask_expert", "lookup"]
        back = [r for r in records if r["event"] == "request" and r["data"]["kind"] == "tool_results"]
        assert [b["output"] for b in back[0]["data"]["message"]["content"]][:2] == ["answer to water?",
                                                                                   "answer to fire?"]
        assert verify(log_path).ok

    def test_failed_requests_billed_usage_approvals_and_later_events_are_recorded(self, log_path):
        class Hold:
            def gate_tool_call(self, c, tool_use):
                return convo.Pending("needs_ok", "please approve")

        with JSONLAuditLog(log_path) as audit:
            boom = convo.RateLimitError("slow down", status_code=429, request_id="req_9")
            service = ScriptedService([boom, reply(tool_uses=[ToolUse("t1", "lookup", {"key": "k"})]), reply("ok")])
            c = Convo(service, tools=[lookup], listener=audit, hooks=[Hold()])
            with pytest.raises(convo.RateLimitError):
                c.send("first")
            reply_ = c.run("second")
            assert reply_.pending_tools
            c.resolve_tool("t1")
            c.continue_turn()
            audit.on_usage(c, Usage(input_tokens=5, cost_usd="0.01"))
            audit.on_validation(c, ValidationResult("banned_words", False, message="said a bad word"))
        records = list(read_records(log_path))
        kinds = [r["event"] for r in records]
        error = records[kinds.index("error")]["data"]
        assert error == {"error_type": "RateLimitError", "message": str(boom), "status_code": 429,
                         "request_id": "req_9"}
        pending = records[kinds.index("tool_pending")]["data"]
        assert pending == {"id": "t1", "name": "lookup", "input": {"key": "k"}, "reason": "needs_ok",
                           "message": "please approve"}
        assert records[kinds.index("tool_resolved")]["data"] == {"id": "t1", "name": "lookup", "approved": True}
        assert kinds.index("tool_resolved") < len(kinds) and "tool_result" in kinds
        assert records[kinds.index("usage")]["data"]["cost_usd"] == "0.01"
        validation = records[kinds.index("validation")]["data"]
        assert validation == {"args": [{"type": "banned_words", "passed": False, "message": "said a bad word"}]}
        assert verify(log_path).ok

    def test_a_thread_hammer_records_every_event_once_in_one_unbroken_chain(self, log_path):
        recording = RecordingListener()
        audit = JSONLAuditLog(log_path)
        listener = combine_listeners(recording, audit)
        errors = []

        def worker(i: int) -> None:
            try:
                for j in range(3):
                    run_agent(listener, f"go {i}.{j}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        audit.close()
        assert not errors
        records = list(read_records(log_path))
        assert len(records) == len(recording.events) == 36 * 14
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert event_keys(records) == recorded_keys(recording)
        report = verify(log_path)
        assert report.ok and report.records == len(records) and not report.warnings

    def test_rotation_under_load_keeps_one_chain_across_files(self, log_path):
        audit = JSONLAuditLog(log_path, rotate_bytes=8192)
        threads = [threading.Thread(target=run_agent, args=(audit,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        audit.close()
        files = sorted(p.name for p in log_path.parent.iterdir())
        assert len(files) > 5 and "trail.jsonl" in files and "trail.jsonl.1" in files
        assert all(p.stat().st_size <= 8192 for p in log_path.parent.iterdir())
        records = list(read_records(log_path))
        assert len(records) == 8 * 14 and [r["seq"] for r in records] == list(range(8 * 14))
        report = verify(log_path)
        assert report.ok and len(report.files) == len(files)
        # A rotated file removed from the middle is found where the chain resumes.
        (log_path.parent / "trail.jsonl.2").unlink()
        broken = verify(log_path)
        assert [p.kind for p in broken.problems] == ["removed"]
        assert broken.problems[0].file.endswith("trail.jsonl.3") and broken.problems[0].line == 1

    def test_reopening_a_log_continues_its_chain(self, log_path):
        with JSONLAuditLog(log_path) as audit:
            run_agent(audit)
            head = audit.head
        with JSONLAuditLog(log_path) as again:
            assert again.head == head
            run_agent(again)
        records = list(read_records(log_path))
        assert [r["seq"] for r in records] == list(range(28))
        assert verify(log_path).ok

    def test_a_line_cut_short_by_a_crash_is_reported_skipped_and_written_past(self, log_path):
        with JSONLAuditLog(log_path) as audit:
            run_agent(audit)
        whole = lines(log_path)
        log_path.write_bytes(b"\n".join(whole[:-1]) + b"\n" + whole[-1][:40])  # the last write cut off
        report = verify(log_path)
        assert report.ok and report.records == 13 and [w.kind for w in report.warnings] == ["truncated"]
        assert len(list(read_records(log_path))) == 13
        with JSONLAuditLog(log_path) as audit:  # a restart: the fragment stands alone, the chain goes on
            run_agent(audit)
        report = verify(log_path)
        assert report.ok and report.records == 27
        assert [(w.kind, w.line) for w in report.warnings] == [("truncated", 14)]
        assert [r["seq"] for r in read_records(log_path)] == list(range(27))

    def test_a_second_writer_is_refused(self, log_path):
        with JSONLAuditLog(log_path):
            with pytest.raises(AuditWriteFailed, match="another process is writing"):
                JSONLAuditLog(log_path, strict=True)

    def test_a_full_disk_is_logged_and_the_conversation_goes_on(self, caplog):
        audit = JSONLAuditLog("/dev/full")
        with caplog.at_level(logging.ERROR, logger="convo"):
            c = run_agent(audit)
        assert c.messages[-1].text().startswith("summary:")
        assert audit.dropped == 14
        failures = [r for r in caplog.records if "audit_write_failed" in r.getMessage()]
        assert len(failures) == 1 and "No space left" in failures[0].getMessage()
        audit.close()

    def test_strict_a_full_disk_fails_the_send_before_the_request_goes_out(self):
        service = ScriptedService([reply("never")])
        c = Convo(service, listener=JSONLAuditLog("/dev/full", strict=True))
        with pytest.raises(AuditWriteFailed, match="No space left"):
            c.send("hello")
        assert service.requests == [] and c.messages == []

    def test_strict_no_tool_runs_once_the_log_cannot_be_written(self, log_path):
        ran = []

        @tool
        def act(x: int) -> str:
            """Do something with side effects.

            Args:
                x: a number.
            """
            ran.append(x)
            return "done"

        audit = JSONLAuditLog(log_path, strict=True)

        def model(request):
            if request.messages[-1].tool_results():
                return reply("ok")
            audit.close()  # the log fails while the model is thinking
            return reply(tool_uses=[ToolUse("a1", "act", {"x": 1})])

        c = Convo(FunctionService(model), tools=[act], listener=audit)
        with pytest.raises(AuditWriteFailed, match="closed"):
            c.run("act")
        assert ran == []

    def test_an_unopenable_file_is_logged_and_a_gap_record_follows_recovery(self, tmp_path, monkeypatch, caplog):
        monkeypatch.setattr("convo.audit.jsonl._RETRY_OPEN_EVERY", 0.0)
        blocker = tmp_path / "logs"
        blocker.write_text("a file where the log's folder should be")
        path = blocker / "trail.jsonl"
        with caplog.at_level(logging.ERROR, logger="convo"):
            audit = JSONLAuditLog(path)
            c = Convo(ScriptedService([reply("one"), reply("two")]), listener=audit)
            c.send("first")
        assert audit.dropped == 2 and any("cannot open" in r.getMessage() for r in caplog.records)
        blocker.unlink()
        c.send("second")
        audit.close()
        records = list(read_records(path))
        assert [r["event"] for r in records] == ["audit_gap", "request", "response"]
        assert records[0]["data"]["dropped"] == 2 and "cannot open" in records[0]["data"]["error"]
        assert audit.dropped == 0 and verify(path).ok

    def test_redact_masks_tool_inputs_outputs_and_text_before_anything_is_written(self, log_path):
        seen = []

        def redact(what, name, value):
            seen.append((what, name))
            if what == "tool_input":
                return {k: "***" for k in value}
            if what == "tool_output":
                return "[output withheld]"
            if name == "user":
                raise ValueError("this hook has a bug")
            return value.replace("water", "w***r").replace("fire", "f**e")

        with JSONLAuditLog(log_path, redact=redact) as audit:
            run_agent(audit, "my card is 4111 1111 1111 1111")
        text = log_path.read_text()
        for secret in ("4111", "water", "fire", '"boom"'):
            assert secret not in text
        assert REDACTION_FAILED in text and "[output withheld]" in text and '"question":"***"' in text
        assert {"tool_input", "tool_output", "text"} == {w for w, _ in seen}
        assert ("tool_output", "ask_expert") in seen and ("tool_input", "lookup") in seen
        assert verify(log_path).ok

    def test_the_api_key_never_reaches_the_log(self, log_path):
        def answer(req):
            if "fail" in json.dumps(req.json()["messages"][-1]["content"]):
                return Reply.json({"type": "error", "error": {"type": "authentication_error",
                                                              "message": f"invalid x-api-key {SECRET}"}}, 401)
            return Reply.json(ms.message_for(req.json()))

        with ScriptedHTTPServer(default=answer) as server, JSONLAuditLog(log_path) as audit:
            service = convo.AnthropicService(PRICED, api_key=SECRET, base_url=server.url)
            c = Convo(service, listener=audit)
            c.send("hello")
            with pytest.raises(convo.AuthenticationError):
                c.send("fail")
            service.close()
        text = log_path.read_text()
        assert SECRET not in text and "<redacted>" in text  # the provider echoed the key; the error hides it
        assert [r["event"] for r in read_records(log_path)] == ["request", "response", "request", "error"]

    def test_a_keyed_chain_verifies_only_with_its_key(self, log_path):
        with JSONLAuditLog(log_path, key="audit-key-1") as audit:
            run_agent(audit)
        assert verify(log_path, key="audit-key-1").ok
        unkeyed = verify(log_path)
        assert not unkeyed.ok and "written with a key" in unkeyed.problems[0].message
        assert not verify(log_path, key="another key").ok

    def test_records_have_the_documented_fields_in_order(self, log_path):
        with JSONLAuditLog(log_path) as audit:
            Convo(ScriptedService([reply("hi")]), listener=audit).send("hello")
        first = json.loads(lines(log_path)[0])
        assert list(first) == ["v", "seq", "prev", "at", "event", "convo", "parent", "root", "depth", "data", "hash"]
        assert first["v"] == 1 and first["at"].endswith("+00:00") and len(first["at"]) == 32


# --- verify -----------------------------------------------------------------------------------

@pytest.fixture
def written(log_path) -> Path:
    with JSONLAuditLog(log_path) as audit:
        run_agent(audit)
    return log_path


class TestVerify:
    def test_an_untouched_log_is_intact(self, written):
        report = verify(written)
        assert report.ok and report.records == 14 and (report.first_seq, report.last_seq) == (0, 13)
        assert report.head == json.loads(lines(written)[-1])["hash"]

    def test_an_edited_line_is_found_where_it_is(self, written):
        raw = lines(written)
        raw[5] = raw[5].replace(b'"depth":', b'"depth": ', 1)
        write_lines(written, raw)
        report = verify(written)
        assert [(p.kind, p.line, p.seq) for p in report.problems] == [("edited", 6, 5)]
        assert f"{written}:6:" in str(report.problems[0])

    def test_an_edit_whose_hash_was_recomputed_breaks_the_next_line(self, written):
        from convo.audit.jsonl import line_hash, split_line

        raw = lines(written)
        body, _ = split_line(raw[2])
        body = body.replace(b'"question":"water?"', b'"question":"earth?"')
        assert b"earth" in body
        raw[2] = body[:-1] + b',"hash":"' + line_hash(body, None).encode() + b'"}'
        write_lines(written, raw)
        report = verify(written)
        assert [(p.kind, p.line) for p in report.problems] == [("reordered", 4)]

    def test_a_removed_line_leaves_a_gap(self, written):
        raw = lines(written)
        del raw[7]
        write_lines(written, raw)
        report = verify(written)
        assert [(p.kind, p.line) for p in report.problems] == [("removed", 8)]
        assert "1 record removed" in report.problems[0].message

    def test_swapped_lines_are_out_of_order(self, written):
        raw = lines(written)
        raw[4], raw[5] = raw[5], raw[4]
        write_lines(written, raw)
        report = verify(written)
        assert {p.kind for p in report.problems} == {"removed", "reordered"} and report.problems[0].line == 5

    def test_a_log_missing_its_first_lines_starts_late(self, written):
        write_lines(written, lines(written)[2:])
        report = verify(written)
        assert [(p.kind, p.line) for p in report.problems] == [("starts_late", 1)]

    def test_a_line_that_is_not_a_record(self, written):
        raw = lines(written)
        raw.insert(3, b'{"hello": "world"}')
        write_lines(written, raw)
        assert [(p.kind, p.line) for p in verify(written).problems] == [("not_a_record", 4)]

    def test_the_command_says_where_and_exits_1(self, written, capsys):
        raw = lines(written)
        raw[2] = raw[2].replace(b"tool_call", b"tool_kall", 1)
        write_lines(written, raw)
        assert cli.main(["logs", "verify", str(written)]) == 1
        out = capsys.readouterr().out
        assert f"{written}:3: seq 2: the line does not match its hash" in out
        assert "1 problem" in out

    def test_the_command_on_an_intact_log(self, written, capsys):
        assert cli.main(["logs", "verify", str(written), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["records"] == 14 and report["problems"] == []

    def test_the_command_reads_the_key_from_the_environment(self, log_path, capsys, monkeypatch):
        with JSONLAuditLog(log_path, key="k-123") as audit:
            run_agent(audit)
        monkeypatch.setenv("CONVO_AUDIT_KEY", "k-123")
        assert cli.main(["logs", "verify", str(log_path), "--key-env", "CONVO_AUDIT_KEY"]) == 0
        assert "chain intact" in capsys.readouterr().out


# --- StoreAuditLog -----------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def audit_store(request, tmp_path):
    """A fresh SQLite or PostgreSQL store to keep audit records in."""
    if request.param == "sqlite":
        store = convo.SQLiteStore(tmp_path / "convos.db", timeout=0.3)
        yield store
        store.close()
    else:
        from tests import store_kinds

        kind = store_kinds.KINDS["postgres"](request)
        store = kind.make()
        yield store
        store.close()
        kind.cleanup()


class TestStoreAuditLog:
    def test_a_thread_hammer_records_every_event_once_queryable_by_conversation_and_time(self, audit_store):
        recording = RecordingListener()
        audit = StoreAuditLog(audit_store)
        listener = combine_listeners(recording, audit)
        roots = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(2):
                c = run_agent(listener)
                with lock:
                    roots.append(c.id)

        threads = [threading.Thread(target=worker) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert audit.flush(10)
        records = audit.events()
        assert len(records) == len(recording.events) == 20 * 14
        assert event_keys(records) == recorded_keys(recording)
        one = roots[0]
        mine = audit.events(root=one)
        assert len(mine) == 14 and {r["root"] for r in mine} == {one}
        assert [r["event"] for r in audit.events(convo=one)][:2] == ["request", "response"]
        assert len(audit.events(convo=one, event="tool_call")) == 3
        middle = records[len(records) // 2]["at"]
        assert len(audit.events(since=middle)) + len(audit.events(until=middle)) == len(records)
        assert audit.events(after_seq=records[-2]["seq"]) == [records[-1]]
        assert audit.events(limit=3) == records[:3]
        audit.close()

    def test_the_same_store_keeps_conversations_and_their_audit_trail(self, audit_store):
        with StoreAuditLog(audit_store) as audit:
            c = Convo(ScriptedService([reply("hi")]), listener=audit, store=audit_store)
            c.send("hello")
            audit.flush()
            assert [r["event"] for r in audit.events(convo=c.id)] == ["request", "state_saved", "response"]
        assert convo.resume(c.id, store=audit_store, service=ScriptedService()).messages[-1].text() == "hi"

    def test_other_stores_are_refused(self):
        with pytest.raises(convo.ConfigurationError, match="SQLiteStore or a PostgresStore"):
            StoreAuditLog(convo.MemoryStore())


class TestStoreAuditLogOutages:
    """SQLite only: another connection holding the write lock stands for a database that is down."""

    @pytest.fixture
    def locked(self, tmp_path):
        import sqlite3

        store = convo.SQLiteStore(tmp_path / "convos.db", timeout=0.2)
        StoreAuditLog(store).close()  # the table exists before the lock is taken
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        yield store, blocker
        blocker.close()
        store.close()

    def test_events_wait_for_the_database_and_the_conversation_does_not(self, locked):
        store, blocker = locked
        audit = StoreAuditLog(store)
        c = Convo(ScriptedService([reply("a"), reply("b")]), listener=audit)
        c.send("one")
        c.send("two")  # not blocked by the database being locked
        assert not audit.flush(0.3)
        blocker.execute("ROLLBACK")
        assert audit.flush(10)
        assert [r["event"] for r in audit.events()] == ["request", "response"] * 2
        audit.close()

    def test_strict_fails_the_send_when_the_event_cannot_be_committed(self, locked):
        store, blocker = locked
        service = ScriptedService([reply("never")])
        audit = StoreAuditLog(store, strict=True)
        with pytest.raises(AuditWriteFailed, match="locked"):
            Convo(service, listener=audit).send("hello")
        assert service.requests == []
        blocker.execute("ROLLBACK")
        audit.close()

    def test_an_overflowing_queue_drops_the_oldest_and_says_so(self, locked):
        store, blocker = locked
        audit = StoreAuditLog(store, max_queue=4)
        c = Convo(ScriptedService(default=reply("x")), listener=audit)
        for _ in range(5):
            c.send("hi")  # 10 events for 4 places
        blocker.execute("ROLLBACK")
        assert audit.flush(10)
        records = audit.events()
        assert records[0]["event"] == "audit_gap" and records[0]["data"]["dropped"] == 6
        assert [r["event"] for r in records[1:]] == ["request", "response"] * 2
        audit.close()


# --- convo logs ---------------------------------------------------------------------------------

class TestLogsCommand:
    def test_the_tree_of_a_file(self, written, capsys):
        root = next(read_records(written))["convo"]
        assert cli.main(["logs", str(written)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == ["CONVERSATION", "STARTED", "(UTC)", "TURNS", "REPLIES", "TOOLS", "ERRORS",
                                  "TOKENS", "IN/OUT", "COST", "SUBTREE"]
        assert out[1].startswith(root) and out[1].split()[3:] == ["1", "2", "3", "0", "200/20", "$0.0003",
                                                                  "$0.0006"]
        assert out[2].startswith("├─ ") and out[3].startswith("└─ ")
        assert out[2].split()[4:] == ["1", "1", "0", "0", "100/10", "$0.00015"]

    def test_one_conversations_timeline(self, written, capsys):
        root = next(read_records(written))["convo"]
        assert cli.main(["logs", "--convo", root, str(written)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"conversation {root}: 1 turn, 2 replies, 3 tool calls")
        assert len(out) == 15
        assert "tool_call     ask_expert(" in out[3] and "[e1]" in out[3]
        assert any("lookup failed: tool 'lookup' failed: RuntimeError" in line for line in out)
        sub = [line for line in out if line[14:].startswith("  ")]  # depth 1, indented
        assert len(sub) == 4

    def test_json_for_machines(self, written, capsys):
        assert cli.main(["logs", "--json", str(written)]) == 0
        (root,) = json.loads(capsys.readouterr().out)
        assert root["replies"] == 2 and root["subtree_cost_usd"] == "0.00060" and len(root["children"]) == 2

    def test_a_store_url(self, tmp_path, capsys):
        store = convo.SQLiteStore(tmp_path / "convos.db")
        with StoreAuditLog(store) as audit:
            c = run_agent(audit)
        store.close()
        assert cli.main(["logs", f"sqlite:///{tmp_path}/convos.db".replace("///", "////", 1)]) == 0
        assert capsys.readouterr().out.splitlines()[1].startswith(c.id)
        assert cli.main(["logs", "--convo", c.id, "--json", str(tmp_path / "convos.db")]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 14

    def test_a_truncated_last_line_is_skipped(self, written, capsys):
        raw = written.read_bytes()
        written.write_bytes(raw + b'{"v":1,"seq":17,"prev":"ab')
        assert cli.main(["logs", "--json", str(written)]) == 0
        assert json.loads(capsys.readouterr().out)[0]["replies"] == 2

    def test_follow_prints_events_as_they_are_written(self, log_path):
        import subprocess
        import sys

        with JSONLAuditLog(log_path, rotate_bytes=4096) as audit:
            Convo(ScriptedService([reply("before")]), listener=audit).send("one")
            proc = subprocess.Popen([sys.executable, "-m", "convo.cli", "logs", "--follow", str(log_path)],
                                    stdout=subprocess.PIPE, text=True)
            lines_ = queue.Queue()
            threading.Thread(target=lambda: [lines_.put(line) for line in proc.stdout], daemon=True).start()
            try:
                assert "request" in lines_.get(timeout=20) and "response" in lines_.get(timeout=10)
                for _ in range(3):
                    run_agent(audit)  # rotates on the way, more than once between two looks
                got = [lines_.get(timeout=10) for _ in range(42)]
            finally:
                proc.terminate()
                proc.wait(5)
                proc.stdout.close()
        assert len(list(log_path.parent.iterdir())) > 3
        assert "summary:" in got[-1] and sum("tool_result" in line for line in got) == 9
        assert lines_.empty()

    def test_usage_errors_and_missing_logs(self, tmp_path, capsys):
        assert cli.main(["logs", "a", "b"]) == 2
        assert cli.main(["logs", str(tmp_path / "nothing.jsonl")]) == 1
        assert "no audit log at" in capsys.readouterr().err


def test_importing_convo_audit_needs_nothing_more():
    import subprocess
    import sys

    code = ("import sys, convo, convo.audit, convo.notebook; "
            "print(any(m.split('.')[0] in ('opentelemetry', 'IPython') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
