"""An audit trail: every request, response, tool call and tool result, at every depth, as JSON lines.

A listener set on the root conversation hears its sub-conversations too;
each line says which convo (id, parent, depth) the event belongs to.

    python examples/audit_log.py            # offline, with a stand-in model
    python examples/audit_log.py --real     # convo.default_service()

The trail is written to audit.jsonl (or --out PATH) and summarised on stdout.
"""

from __future__ import annotations

import argparse
import json
import threading
from datetime import datetime, timezone

import convo
from convo import Convo, NoopListener, ToolUse, Usage, tool, tool_call_info
from convo.testing import FunctionService, reply


class JsonlAudit(NoopListener):
    """Appends one JSON line per event. Thread-safe: tool events arrive from worker threads."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._file = open(path, "w", encoding="utf-8")

    def _write(self, c: Convo, event: str, **data) -> None:
        line = {"at": datetime.now(timezone.utc).isoformat(), "event": event, "convo": c.id,
                "parent": c.parent.id if c.parent else None, "depth": c.depth(), **data}
        with self._lock:
            self._file.write(json.dumps(line, default=str) + "\n")
            self._file.flush()

    def on_request(self, c, request):
        self._write(c, "request", messages=len(request.messages), last=request.messages[-1].to_dict())

    def on_response(self, c, response):
        self._write(c, "response", response=response.to_dict())

    def on_error(self, c, request, error):
        self._write(c, "error", error=f"{type(error).__name__}: {error}")

    def on_tool_call(self, c, tool_use):
        self._write(c, "tool_call", tool_use=tool_use.to_dict())

    def on_tool_result(self, c, tool_use, result, error):
        self._write(c, "tool_result", result=result.to_dict(), error=repr(error) if error else None)

    def close(self) -> None:
        self._file.close()


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
    parser = argparse.ArgumentParser(description="Write an audit trail of a small multi-agent run.")
    parser.add_argument("--real", action="store_true", help="use convo.default_service()")
    parser.add_argument("--out", default="audit.jsonl")
    args = parser.parse_args()

    audit = JsonlAudit(args.out)
    try:
        c = Convo(convo.default_service() if args.real else FunctionService(stand_in),
                  tools=[ask_expert], listener=audit)
        print(c.run("Ask the experts whether water is wet and fire is hot.", max_turns=4).text())
    finally:
        audit.close()
    with open(args.out, encoding="utf-8") as f:
        events = [json.loads(line) for line in f]
    print(f"\n{len(events)} events written to {args.out}:")
    for e in events:
        print(f"  depth {e['depth']}  {e['convo']}  {e['event']}")


if __name__ == "__main__":
    main()
