"""An audit trail of a sub-agent run: every request, reply, tool call and result, at every depth.

A ``JSONLAuditLog`` set on the root conversation hears its sub-conversations
too; each line says which convo (id, parent, root, depth) the event belongs
to, and carries the hash of the line before it, so ``verify`` (or
``convo logs verify audit.jsonl``) finds any line edited, removed or moved
afterwards.

    python examples/audit_log.py            # offline, with a stand-in model
    python examples/audit_log.py --real     # convo.default_service()

The trail is written to audit.jsonl (or --out PATH); then read it with
``convo logs audit.jsonl`` (the tree) or ``convo logs --convo ID audit.jsonl``.
"""

from __future__ import annotations

import argparse

import convo
from convo import Convo, ToolUse, Usage, tool, tool_call_info
from convo.audit import JSONLAuditLog, read_records, verify
from convo.testing import FunctionService, reply


@tool
def ask_expert(question: str) -> str:
    """Ask a specialist sub-agent a question.

    Args:
        question: the question, self-contained.
    """
    expert = tool_call_info().convo.sub_convo(system_prompt="You are a terse expert.")
    return expert.send_user_text_message(question).text()


def stand_in(request: convo.Request) -> convo.Response:
    usage = Usage(input_tokens=300, output_tokens=40)
    last = request.messages[-1]
    if last.tool_results():
        return reply("The experts agree: " + " / ".join(r.text() for r in last.tool_results()),
                     model="claude-haiku-4-5", usage=usage)
    if request.tools:
        return reply(tool_uses=[ToolUse("q1", "ask_expert", {"question": "Is water wet?"}),
                                ToolUse("q2", "ask_expert", {"question": "Is fire hot?"})],
                     model="claude-haiku-4-5", usage=usage)
    return reply("yes", model="claude-haiku-4-5", usage=usage)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write and verify an audit trail of a small multi-agent run.")
    parser.add_argument("--real", action="store_true", help="use convo.default_service()")
    parser.add_argument("--out", default="audit.jsonl")
    args = parser.parse_args()

    with JSONLAuditLog(args.out) as audit:
        c = Convo(convo.default_service() if args.real else FunctionService(stand_in),
                  tools=[ask_expert], listener=audit)
        print(c.run("Ask the experts whether water is wet and fire is hot.", max_turns=4).text())

    events = list(read_records(args.out))
    print(f"\n{len(events)} events written to {args.out}:")
    for e in events:
        print(f"  seq {e['seq']:>2}  depth {e['depth']}  {e['convo']}  {e['event']}")
    report = verify(args.out)
    print(f"\nverify: {'chain intact' if report.ok else 'BROKEN'}, {report.records} records, head {report.head[:16]}…")
    print(f"cost of the whole tree: ${c.cumulative_usage().total_cost_usd}")


if __name__ == "__main__":
    main()
