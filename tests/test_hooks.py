"""Hooks: shaping requests, checking replies and streams, and holding tool calls for approval."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

import convo
from convo import (
    Convo,
    Pending,
    PendingAlreadyResolved,
    Price,
    PriceTable,
    Text,
    ToolResult,
    ToolsPending,
    ToolUse,
    UnknownToolUseError,
    Usage,
    ValidationResult,
    tool,
)
from convo.testing import RecordingListener, ScriptedService, reply

ROOT = Path(__file__).resolve().parent.parent
PRICES = PriceTable({"test-model": Price(1, 2)})


class Refused(convo.ConvoError, ValueError):
    pass


class SystemFromVariables:
    def __init__(self):
        self.name = "Ada"

    def prepare_request(self, c, request):
        return attrs.evolve(request, system=(Text(f"Help {self.name}."),))


class NoSecrets:
    def check_response(self, c, response):
        ok = "password" not in response.text()
        result = ValidationResult("banned_words", ok, {"word": "password"} if not ok else {})
        if not ok:
            raise Refused("the reply mentioned a password")
        return attrs.evolve(response, validations=response.validations + (result,))


class StopAtPassword:
    def check_stream(self, c, event, text):
        if "password" in text:
            raise Refused(f"stopped at {len(text)} characters")


@tool
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount:.2f} on {order_id}"


class BigRefundsNeedApproval:
    def gate_tool_call(self, c, tool_use):
        if tool_use.name == "refund" and tool_use.input.get("amount", 0) > 100:
            return Pending("amount_over_limit", f"Refund of {tool_use.input['amount']} needs a manager")
        if tool_use.name == "forbidden":
            return ToolResult(tool_use.id, "blocked by policy", is_error=True)
        return None


def refund_calls(*amounts: float):
    return reply(tool_uses=[ToolUse(f"t{i}", "refund", {"order_id": f"o{i}", "amount": a})
                            for i, a in enumerate(amounts)])


class TestRequestsAndReplies:
    def test_prepare_request_shapes_every_request(self):
        hook = SystemFromVariables()
        service = ScriptedService([reply("a"), reply("b")])
        c = Convo(service, hooks=[hook], system_prompt="ignored")
        c.send("one")
        hook.name = "Grace"
        c.send("two")
        assert [r.system[0].text for r in service.requests] == ["Help Ada.", "Help Grace."]

    def test_prepare_request_can_refuse_before_anything_is_sent(self):
        class Deny:
            def prepare_request(self, c, request):
                raise Refused("no routing numbers")

        service = ScriptedService([reply("a")])
        with pytest.raises(Refused):
            Convo(service, hooks=[Deny()]).send("my routing number is 123")
        assert service.requests == []

    def test_check_response_annotates_and_rejects(self):
        service = ScriptedService([reply("hello", model="test-model", usage=Usage(input_tokens=1000)),
                                   reply("the password is x", model="test-model", usage=Usage(input_tokens=1000))])
        rec = RecordingListener()
        c = Convo(service, hooks=[NoSecrets()], prices=PRICES, listener=rec)
        assert c.send("hi").validations == (ValidationResult("banned_words", True),)
        with pytest.raises(Refused):
            c.send("tell me")
        assert [m.text() for m in c.messages] == ["hi", "hello"]
        assert c.cumulative_usage().total_cost_usd == Decimal("0.002"), "the rejected reply was paid for"
        assert rec.names()[-2:] == ["request", "error"]

    def test_check_stream_stops_at_the_first_chunk_that_breaks_it(self):
        service = ScriptedService([reply("fine so far, but the password is x")])
        c = Convo(service, hooks=[StopAtPassword()])
        seen = []
        with pytest.raises(Refused):
            with c.stream("go") as s:
                for event in s:
                    seen.append(event)
        assert seen == []  # the scripted stream sends the text in one delta, which already breaks it
        assert c.messages == []


class TestApproval:
    def test_a_held_call_returns_with_the_turn_and_others_run(self):
        rec = RecordingListener()
        service = ScriptedService([refund_calls(20, 500)])
        c = Convo(service, tools=[refund], hooks=[BigRefundsNeedApproval()], listener=rec)
        r = c.run("refund both")
        assert [(p.id, p.name, p.arguments["amount"], p.reason) for p in r.pending_tools] == [
            ("t1", "refund", 500, "amount_over_limit")]
        assert "needs a manager" in r.pending_tools[0].message
        assert c.pending_tools() == list(r.pending_tools)
        assert [e.args[1].text() for e in rec.of("tool_result")] == ["refunded 20.00 on o0"]
        assert len(rec.of("tool_pending")) == 1
        with pytest.raises(ToolsPending):
            c.send("something else")
        with pytest.raises(ToolsPending):
            c.continue_turn()

    def test_resolve_then_continue(self):
        service = ScriptedService([refund_calls(20, 500), reply("all refunded")])
        c = Convo(service, tools=[refund], hooks=[BigRefundsNeedApproval()])
        c.run("refund both")
        result = c.resolve_tool("t1", args={"order_id": "o1", "amount": 450})
        assert result.text() == "refunded 450.00 on o1"
        assert c.pending_tools() == []
        assert c.continue_turn().text() == "all refunded"
        sent = service.requests[1].messages[-1].tool_results()
        assert [(r.tool_use_id, r.text()) for r in sent] == [("t0", "refunded 20.00 on o0"),
                                                             ("t1", "refunded 450.00 on o1")]

    def test_reject_tells_the_model_why(self):
        service = ScriptedService([refund_calls(500), reply("understood")])
        c = Convo(service, tools=[refund], hooks=[BigRefundsNeedApproval()])
        c.run("refund")
        c.reject_tool("t0", "over the limit for this customer")
        c.continue_turn()
        [sent] = service.requests[1].messages[-1].tool_results()
        assert sent.is_error and sent.text() == "rejected by a person: over the limit for this customer"

    def test_a_call_is_resolved_once(self):
        c = Convo(ScriptedService([refund_calls(500)]), tools=[refund], hooks=[BigRefundsNeedApproval()])
        c.run("refund")
        c.reject_tool("t0", "no")
        with pytest.raises(PendingAlreadyResolved):
            c.resolve_tool("t0")
        with pytest.raises(PendingAlreadyResolved):
            c.reject_tool("t0")
        with pytest.raises(UnknownToolUseError):
            c.resolve_tool("never")

    def test_a_gate_can_answer_without_running(self):
        service = ScriptedService([reply(tool_uses=[ToolUse("t0", "forbidden", {})]), reply("ok")])
        Convo(service, hooks=[BigRefundsNeedApproval()]).run("try")
        [sent] = service.requests[1].messages[-1].tool_results()
        assert sent.is_error and sent.text() == "blocked by policy"


RESOLVER = textwrap.dedent("""
    import sys
    import convo
    from convo.testing import ScriptedService
    from tests.test_hooks import BigRefundsNeedApproval, refund

    store = convo.SQLiteStore(sys.argv[1])
    c = convo.resume(sys.argv[2], store=store, service=ScriptedService(), tools=[refund],
                     hooks=[BigRefundsNeedApproval()])
    try:
        print(c.resolve_tool(sys.argv[3]).text())
    except convo.PendingAlreadyResolved:
        print("already resolved")
""")


class TestApprovalAcrossProcesses:
    def resolve_elsewhere(self, path, convo_id, call_id) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", RESOLVER, str(path), convo_id, call_id], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def test_approval_from_another_process_after_resume(self, tmp_path):
        path = tmp_path / "approvals.db"
        store = convo.SQLiteStore(path)
        service = ScriptedService([refund_calls(500), reply("done")])
        c = Convo(service, tools=[refund], hooks=[BigRefundsNeedApproval()], store=store, id="refunds")
        c.run("refund")
        del c
        assert self.resolve_elsewhere(path, "refunds", "t0") == "refunded 500.00 on o0"
        assert self.resolve_elsewhere(path, "refunds", "t0") == "already resolved"
        back = convo.resume("refunds", store=store, service=service, tools=[refund],
                            hooks=[BigRefundsNeedApproval()])
        assert back.pending_tools() == []
        assert back.continue_turn().text() == "done"
        assert service.requests[1].messages[-1].tool_results()[0].text() == "refunded 500.00 on o0"
        store.close()

    def test_a_stale_copy_cannot_resolve_again(self, tmp_path):
        path = tmp_path / "approvals.db"
        store = convo.SQLiteStore(path)
        c = Convo(ScriptedService([refund_calls(500)]), tools=[refund], hooks=[BigRefundsNeedApproval()],
                  store=store, id="refunds")
        c.run("refund")
        assert self.resolve_elsewhere(path, "refunds", "t0") == "refunded 500.00 on o0"
        with pytest.raises(PendingAlreadyResolved):
            c.resolve_tool("t0")  # this process still thinks it is pending: the claim says otherwise
        store.close()
