"""A conversation that outlives its process: saved to SQLite, resumed by a second process.

The first process runs a lead conversation that hands a question to a
sub-agent (a sub-convo), on a SQLite store: every turn is saved before the
send returns. Then it exits. A second process resumes the lead by its id and
prints the history and the usage rolled up from the whole tree, then the
sub-agent, which comes back with its parent.

Runs offline (a stand-in model that answers from a script):

    python examples/resume.py                    # both steps, each in its own process
    python examples/resume.py save convo.db      # just the first
    python examples/resume.py show convo.db      # just the second
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import convo
from convo import Usage
from convo.testing import FunctionService, reply

LEAD_ID = "trip-planner"


def stand_in_model(request: convo.Request) -> convo.Response:
    """Answers like a model would, priced as claude-haiku-4-5 so the usage means something."""
    question = request.messages[-1].text()
    usage = Usage(input_tokens=900 + 50 * len(request.messages), output_tokens=120)
    if "weather" in question:
        text = "Lisbon in May: sunny, 22 °C by day, a light jacket at night."
    elif question.startswith("Plan"):
        text = "Day 1: Alfama and the castle. Day 2: Belém. Day 3: Sintra."
    else:
        text = "Noted: a 3-day trip in May."
    return reply(text, model="claude-haiku-4-5", usage=usage)


def save(path: str) -> None:
    """Step one: talk, delegate to a sub-agent, exit. Everything is already in the store."""
    service = FunctionService(stand_in_model)
    with convo.SQLiteStore(path) as store:
        lead = convo.Convo(service, store=store, id=LEAD_ID, system_prompt="You are a trip planner.")
        lead.send("I am going to Lisbon for 3 days in May.")
        weather = lead.sub_convo(id="weather-desk", system_prompt="You report the weather.")
        weather.send("What is the weather like in Lisbon in May?")
        lead.send("Plan the three days.")
    print(f"saved {LEAD_ID!r} and its sub-agent to {path}")


def show(path: str) -> None:
    """Step two, in a new process: resume and print what was saved."""
    service = FunctionService(stand_in_model)
    with convo.SQLiteStore(path) as store:
        lead = convo.resume(LEAD_ID, store=store, service=service)
        print(f"history of {lead.id!r}:")
        for message in lead.messages:
            print(f"  {message.role:9} {message.text()}")
        usage = lead.cumulative_usage()
        print(f"rolled-up usage: {usage.responses} responses, {usage.input_tokens} input and "
              f"{usage.output_tokens} output tokens, ${usage.total_cost_usd}")
        weather = convo.resume("weather-desk", store=store, service=service)
        print(f"sub-agent {weather.id!r} (parent {weather.parent.id!r}) said: {weather.messages[-1].text()}")
        for row in store.list(root=LEAD_ID):
            print(f"  stored: {row.id:14} parent={row.parent_id!s:14} messages={row.messages} cost=${row.cost_usd}")


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] in ("save", "show"):
        (save if argv[0] == "save" else show)(argv[1])
        return
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "convo.db")
        for step in ("save", "show"):  # two processes: nothing but the file carries over
            subprocess.run([sys.executable, __file__, step, path], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
