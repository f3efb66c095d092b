"""convo.notebook: HTML views of conversations, replies and usage; checked as HTML, in a real kernel, in Chromium."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

import convo
from convo import Convo, CumulativeUsage, Thinking, ToolUse, Usage, tool, tool_call_info
from convo.notebook import convo_html, response_html, usage_html
from convo.testing import FunctionService, reply

ROOT = Path(__file__).resolve().parent.parent
EVIL = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
ALLOWED_TAGS = {"div", "details", "summary", "span", "code", "pre", "table", "thead", "tbody", "tr", "th", "td",
                "b", "i"}


class Tags(HTMLParser):
    """Every element and attribute in a piece of HTML, and the text inside closed <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.folded: list[str] = []
        self.text: list[str] = []
        self._details: list[bool] = []  # open?

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "details":
            self._details.append("open" in dict(attrs))

    def handle_endtag(self, tag):
        if tag == "details":
            self._details.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._details and not self._details[-1]:
            self.folded.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    return tags


KEPT: list = []  # sub-convos the tool made, kept alive (a Convo holds its sub-convos weakly)


@tool
def ask_expert(question: str) -> str:
    """Ask a sub-agent.

    Args:
        question: the question.
    """
    sub = tool_call_info().convo.sub_convo()
    KEPT.append(sub)
    return sub.send(question).text()


def evil_model(request):
    usage = Usage(input_tokens=1000, output_tokens=100)
    last = request.messages[-1]
    if last.tool_results():
        return reply("final " + EVIL, model="claude-haiku-4-5", usage=usage)
    if request.tools:
        return reply(content=[Thinking("secret plan " + EVIL, "sig")],
                     tool_uses=[ToolUse('x"><script>alert(1)</script>', "ask_expert", {EVIL: EVIL}),
                                ToolUse("t2", "ask_expert", {"question": "plain"})],
                     model="claude-haiku-4-5", usage=usage)
    return reply("sub says " + EVIL, model="claude-haiku-4-5", usage=Usage(input_tokens=10, output_tokens=1))


@pytest.fixture
def evil_convo() -> Convo:
    c = Convo(FunctionService(evil_model), tools=[ask_expert], system_prompt="system " + EVIL, id="lead<b>")
    c.run("user says " + EVIL)
    yield c
    KEPT.clear()


class TestHTML:
    def test_model_text_tool_data_and_ids_cannot_inject_html(self, evil_convo):
        last = evil_convo.messages[-1]
        response = reply("reply " + EVIL, usage=Usage(cost_usd="0.5"))
        for html in (convo_html(evil_convo), response_html(response), evil_convo._repr_html_(),
                     response._repr_html_()):
            tags = parse(html)
            assert {t for t, _ in tags.tags} <= ALLOWED_TAGS
            assert all(set(attrs) <= {"style", "class"} for _, attrs in tags.tags)
            assert "<script>" in "".join(tags.text)  # shown as text, exactly as the model wrote it
        text = "".join(parse(convo_html(evil_convo)).text)
        for part in ("system " + EVIL, "user says " + EVIL, "secret plan " + EVIL, "sub says " + EVIL,
                     "final " + EVIL, 'x"><script>alert(1)</script>', "lead<b>"):
            assert part in text
        assert last.text() == "final " + EVIL

    def test_thinking_and_tools_are_folded_and_the_answer_is_not(self, evil_convo):
        tags = parse(convo_html(evil_convo))
        folded = "".join(tags.folded)
        assert "secret plan" in folded and '"question": "plain"' in folded and "sub says" in folded
        assert "final <script>" not in folded and "user says" not in folded
        summaries = [t for t, _ in tags.tags].count("summary")
        assert summaries == 1 + 1 + 2 + 2  # system prompt, thinking, two calls, two results

    def test_the_usage_tree_shows_each_sub_convo_with_tokens_and_dollars(self, evil_convo):
        text = "".join(parse(convo_html(evil_convo)).text)
        subs = [c for c in evil_convo._children]
        assert len(subs) == 1  # the call with the evil input failed validation: it made none
        assert subs[0].id in text and "└─ " + subs[0].id in text
        total = evil_convo.cumulative_usage().total_cost_usd
        assert f"${total.normalize():f}" in text  # the lead's subtree, sub-agents included
        own = evil_convo._own_usage_copy().total_cost_usd
        assert f"${own.normalize():f}" in text and own < total
        assert "no longer in memory" not in text

    def test_sub_convos_already_collected_still_show_what_they_spent(self, evil_convo):
        import gc

        spent = {c.id: c.own_usage().total_cost_usd for c in KEPT}
        KEPT.clear()
        gc.collect()
        text = "".join(parse(convo_html(evil_convo)).text)
        for id, cost in spent.items():
            assert f"{id} (no longer in memory)" in text and f"${cost.normalize():f}" in text

    def test_the_reply_and_usage_views(self):
        r = reply("hello", tool_uses=[ToolUse("t1", "calc", {"x": 1})], usage=Usage(10, 5, cost_usd="0.25"))
        r = convo.Response.from_dict({**r.to_dict(), "validations": [{"type": "no_pii", "passed": False,
                                                                        "message": "a phone number"}]})
        text = "".join(parse(response_html(r)).text)
        assert "hello" in text and "$0.25" in text and "failed no_pii a phone number" in text
        usage = CumulativeUsage()
        usage.add(Usage(input_tokens=100, output_tokens=7, cache_read_input_tokens=30, cost_usd="0.001"))
        usage.count_tool("calc")
        text = "".join(parse(usage._repr_html_()).text)
        assert "cache reads30" in text and "$0.001" in text and "calc×1" in text
        assert usage_html(usage) == usage._repr_html_()

    def test_plain_reprs_stay_short(self):
        r = reply("word " * 5000, tool_uses=[ToolUse("t1", "calc", {"x": "y" * 5000})],
                  usage=Usage(1000, 50, cost_usd="0.012"))
        text = repr(r)
        assert len(text) < 200 and text.startswith("<Response id=") and "tool_uses=1" in text
        assert "tokens=1000/50" in text and "cost=$0.012" in text
        usage = CumulativeUsage()
        for _ in range(3):
            usage.add(r.usage)
        usage.count_tool("calc")
        assert repr(usage) == "<CumulativeUsage responses=3 tokens=3000/150 cost=$0.036 tool_uses=1>"


# --- a real Jupyter kernel ------------------------------------------------------------------------

def test_the_views_in_a_real_jupyter_kernel():
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "import convo\nfrom convo.testing import ScriptedService, reply\n"
        "c = convo.Convo(ScriptedService([reply('<script>alert(1)</script> hi there', model='claude-haiku-4-5', "
        "usage=convo.Usage(1000, 50))]), id='nb-demo')\nr = c.send('hello')",
        "c", "r", "c.cumulative_usage()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [cell.outputs for cell in nb.cells]
    assert outputs[0] == []
    convo_out, reply_out, usage_out = (o[0]["data"] for o in outputs[1:])
    assert convo_out["text/plain"] == "<Convo id=nb-demo depth=0 messages=2 service=ScriptedService>"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; hi there" in convo_out["text/html"]
    assert "<script>" not in convo_out["text/html"] and "nb-demo" in convo_out["text/html"]
    assert reply_out["text/plain"].startswith("<Response id=msg_scripted_") and len(reply_out["text/plain"]) < 200
    assert "&lt;script&gt;" in reply_out["text/html"] and "$0.00125" in reply_out["text/html"]
    assert usage_out["text/plain"] == "<CumulativeUsage responses=1 tokens=1000/50 cost=$0.00125>"
    assert "output tokens" in usage_out["text/html"]


# --- what a person sees: headless Chromium -------------------------------------------------------

def chromium(*args: str) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from notebook_screenshot import run_chromium
    finally:
        sys.path.remove(str(ROOT / "docs"))
    return run_chromium(*args)


def test_a_browser_runs_none_of_the_model_s_markup(tmp_path, evil_convo):
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>clean</title></head><body>"
                    + convo_html(evil_convo) + "</body></html>", encoding="utf-8")
    done = chromium("--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>clean</title>" in dom  # no injected script ran
    assert "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom


def png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and how many distinct bytes its pixel rows hold (a blank page has very few)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    pixels = zlib.decompress(b"".join(chunks))
    return width, height, len(set(pixels))


def test_the_readme_screenshot_renders_from_the_notebook_view(tmp_path):
    out = tmp_path / "notebook.png"
    html = tmp_path / "notebook.html"
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "notebook_screenshot.py"), "--out", str(out),
                           "--html", str(html)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    width, height, colours = png_size_and_colours(out)
    assert (width, height) == (980, 760) and colours > 50
    text = "".join(parse(html.read_text()).text)
    assert "What should I pack for Lisbon in May? <b>not bold</b>" in text and "trip-planner" in text
    assert (ROOT / "docs" / "notebook.png").exists() and png_size_and_colours(ROOT / "docs" / "notebook.png")[:2] \
        == (980, 760)
