"""Human approval of tool calls, from a PromptPack: a refund agent whose large refunds wait for a manager.

Runs offline: the model is a ScriptedService playing what a model would
say, so the flow is the same every time. The pack is PromptKit's own HITL
example (``tests/fixtures/packs/hitl_hitl.pack.json``, Apache-2.0).

What happens:

1. ``convo.open`` turns the pack's ``refund_agent`` prompt into a Convo that
   saves every turn to a SQLite file.
2. ``on_tool`` gives the pack's ``process_refund`` tool its handler and an
   approval check: refunds over $100 wait for a person.
3. The customer asks for two refunds. The small one runs; the large one is
   held and the turn returns with it on ``response.pending_tools``.
4. Later (another process could do this hours later: it is all in the
   store), the conversation is resumed, the handler registered again, and a
   manager approves the refund with an edited amount. Approving twice is
   refused: resolving is an atomic claim.
5. ``continue_turn`` sends the results and the agent answers.

    python examples/pack_hitl.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import convo
from convo.testing import ScriptedService, reply

PACK = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "packs" / "hitl_hitl.pack.json"


def process_refund(order_id: str, amount: float, reason: str) -> str:
    """The real work: here, a message saying what was refunded."""
    return f"refunded ${amount:.2f} on {order_id} ({reason})"


def needs_a_manager(args: dict):
    """The approval check: None runs the call now; a Pending holds it for a person."""
    if args.get("amount", 0) > 100:
        return convo.Pending("amount_over_limit", f"Refund of ${args['amount']:.2f} on {args['order_id']} "
                                                  "needs a manager's approval")
    return None


def the_model() -> ScriptedService:
    """What the model says: two refund calls, then an answer built from their results."""
    calls = [convo.ToolUse("call_1", "process_refund", {"order_id": "A-1", "amount": 25, "reason": "damaged"}),
             convo.ToolUse("call_2", "process_refund", {"order_id": "B-7", "amount": 450, "reason": "never arrived"})]

    def answer(request: convo.Request) -> convo.Response:
        results = request.messages[-1].tool_results()
        return reply("All done: " + "; ".join(r.text() for r in results) + ".")

    return ScriptedService([reply(tool_uses=calls), answer])


class Audit(convo.NoopListener):
    """Prints the approval events as they happen."""

    def on_tool_pending(self, c, pending):
        print(f"  [event] pending: {pending.name} {pending.id} ({pending.reason})")

    def on_tool_resolved(self, c, pending, approved):
        print(f"  [event] resolved: {pending.id} {'approved' if approved else 'rejected'}")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = convo.SQLiteStore(Path(folder) / "support.db")
        model = the_model()

        # --- the agent's side: a customer asks for two refunds ---------------------------
        c = convo.open(PACK, "refund_agent", service=model, store=store, id="ticket-1042", listener=Audit())
        c.on_tool("process_refund", process_refund, approve=needs_a_manager)
        r = c.run("Please refund order A-1 ($25, it arrived damaged) and order B-7 ($450, it never arrived).")
        for pending in r.pending_tools:
            print(f"held: {pending.id} {pending.name} amount={pending.arguments['amount']} reason={pending.reason}")
            print(f"  for the manager: {pending.message}")
        del c  # the process could end here: the held call is in the store

        # --- the manager's side, later: resume, register the handler, approve --------------
        c = convo.resume("ticket-1042", store=store, service=model, listener=Audit())
        c.on_tool("process_refund", process_refund, approve=needs_a_manager)
        [pending] = c.pending_tools()
        result = c.resolve_tool(pending.id, args={**pending.arguments, "amount": 400})  # approved, capped at $400
        print(f"approved by the manager: {result.text()}")
        try:
            c.resolve_tool(pending.id)
        except convo.PendingAlreadyResolved as exc:
            print(f"a second approval is refused: {exc}")

        final = c.continue_turn()
        print(f"assistant: {final.text()}")
        usage = c.cumulative_usage()
        print(f"responses: {usage.responses}, tool calls: {dict(usage.tool_uses)}")
        store.close()


if __name__ == "__main__":
    main()
