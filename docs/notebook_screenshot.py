"""Render convo's notebook view of a small sub-agent run to a PNG with headless Chromium (docs/notebook.png).

    python docs/notebook_screenshot.py                  # writes docs/notebook.png
    python docs/notebook_screenshot.py --out /tmp/x.png --html /tmp/x.html

Offline: the conversation runs against a stand-in model, and Chromium is
started with everything that would reach the network turned off. Needs
the ``chromium`` command (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import convo  # noqa: E402
from convo import Convo, Thinking, ToolUse, Usage, tool, tool_call_info  # noqa: E402
from convo.notebook import convo_html  # noqa: E402
from convo.testing import FunctionService, reply  # noqa: E402

#: Chromium flags for a headless render that touches no network and leaves nothing behind.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
                  "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
                  "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")


def run_chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Chromium headless with a throwaway profile; its chatter on stderr is kept for errors only."""
    with tempfile.TemporaryDirectory(prefix="convo-chromium-") as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


EXPERTS: list = []


@tool
def ask_expert(question: str) -> str:
    """Ask a specialist sub-agent.

    Args:
        question: the question, self-contained.
    """
    expert = tool_call_info().convo.sub_convo(system_prompt="You are a terse expert.")
    EXPERTS.append(expert)  # kept, so the usage tree shows it by id (a convo holds its sub-convos weakly)
    return expert.send(question).text()


@tool
def fetch_forecast(city: str) -> str:
    """Today's forecast.

    Args:
        city: the city.
    """
    raise TimeoutError("the weather service did not answer in 5 s")


def model(request: convo.Request) -> convo.Response:
    usage = Usage(input_tokens=1200, output_tokens=180, cache_read_input_tokens=800)
    last = request.messages[-1]
    if last.tool_results():
        return reply("Pack light layers and an umbrella: Lisbon is mild (18 °C) but May showers are common. "
                     "The forecast service was down, so check again the day before you go.",
                     model="claude-sonnet-4-5", usage=usage)
    if request.tools:
        return reply(content=[Thinking("The user wants packing advice. I should ask the climate expert and "
                                       "check today's forecast in parallel, then combine.", "sig")],
                     tool_uses=[ToolUse("toolu_01", "ask_expert", {"question": "Typical May weather in Lisbon?"}),
                                ToolUse("toolu_02", "fetch_forecast", {"city": "Lisbon"})],
                     model="claude-sonnet-4-5", usage=usage)
    return reply("Mild, 15–22 °C, with occasional showers <and no snow>.", model="claude-haiku-4-5",
                 usage=Usage(input_tokens=300, output_tokens=25))


def sample() -> Convo:
    """A small lead/sub-agent run with thinking, a failing tool and text that needs escaping."""
    service = FunctionService(model)
    service.model = "claude-sonnet-4-5"
    c = Convo(service, tools=[ask_expert, fetch_forecast], id="trip-planner",
              system_prompt="You plan trips. Use the tools; be concise.")
    c.run("What should I pack for Lisbon in May? <b>not bold</b>")
    return c


def page(body: str) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>convo notebook view</title></head>"
            "<body style='margin: 16px; background: #ffffff'>"
            "<div style=\"font-family: 'DejaVu Sans Mono', monospace; font-size: 12px; color: #57606a; "
            "margin-bottom: 6px\">In [3]: lead</div>" + body + "</body></html>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "notebook.png"))
    parser.add_argument("--html", help="also keep the HTML page here")
    parser.add_argument("--size", default="980,760", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args()
    # One tool call shown unfolded, to show what a fold holds; the rest as a notebook first shows them.
    html = page(convo_html(sample()).replace("<details", "<details open", 3).replace("<details open", "<details", 2))
    with tempfile.TemporaryDirectory(prefix="convo-page-") as folder:
        path = Path(args.html) if args.html else Path(folder) / "page.html"
        path.write_text(html, encoding="utf-8")
        done = run_chromium(f"--window-size={args.size}", f"--screenshot={Path(args.out).resolve()}",
                            path.resolve().as_uri())
    if done.returncode != 0 or not Path(args.out).exists():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")
    print(args.out)


if __name__ == "__main__":
    main()
