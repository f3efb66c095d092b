"""HTML views for notebooks: a conversation's transcript, a reply, and usage, as Jupyter shows them.

``Convo``, ``Response`` and ``CumulativeUsage`` have ``_repr_html_``
methods that call :func:`convo_html`, :func:`response_html` and
:func:`usage_html`, so a notebook cell ending in one of them shows:

- a conversation: its transcript (tool calls and results folded, the
  model's thinking behind a toggle), then the sub-convo tree with tokens
  and dollars per conversation;
- a reply: its content and a footer with model, stop reason, tokens,
  cost, duration, validations and calls held for approval;
- usage: the totals, by kind of token, and tool calls.

Plain HTML with inline styles and ``<details>`` toggles: no JavaScript, no
dependency (IPython is not imported), so it renders the same in Jupyter,
VS Code, GitHub and a browser. Everything taken from a conversation
(model text, tool input and output, ids) is HTML-escaped: a model that
writes ``<script>`` shows the text ``<script>``.

Pure functions of their argument, safe from any thread.
"""

from __future__ import annotations

import json
from decimal import Decimal
from html import escape
from typing import Any

__all__ = ["convo_html", "response_html", "usage_html"]

#: Characters of one block shown before the rest is cut (a notebook is not a log viewer).
MAX_BLOCK_CHARS = 20_000

_FONT = "font-family: -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; font-size: 13px; line-height: 1.45"
_MONO = "font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px"
_BOX = "margin: 6px 0; padding: 6px 10px; border-radius: 6px; color: #1f2328"
_STYLES = {
    "user": "background: #eef3ff; border-left: 3px solid #4c6ef5",
    "assistant": "background: #f6f8fa; border-left: 3px solid #8c959f",
    "tool": "background: #fff8e5; border-left: 3px solid #d4a72c",
    "error": "background: #ffebe9; border-left: 3px solid #cf222e",
}
_LABEL = "font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: #57606a"
_TABLE = "border-collapse: collapse; margin: 6px 0; color: #1f2328; background: #ffffff"
_CELL = "padding: 3px 10px; border-bottom: 1px solid #d0d7de; text-align: right; white-space: nowrap"
_CELL_L = "padding: 3px 10px; border-bottom: 1px solid #d0d7de; text-align: left; white-space: nowrap"


def _clip(text: str) -> str:
    if len(text) <= MAX_BLOCK_CHARS:
        return escape(text)
    return escape(text[:MAX_BLOCK_CHARS]) + f"<i> … {len(text) - MAX_BLOCK_CHARS} more characters</i>"


def _pre(text: str) -> str:
    return f'<div style="white-space: pre-wrap; word-break: break-word">{_clip(text)}</div>'


def _json(value: Any) -> str:
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return f'<pre style="{_MONO}; margin: 4px 0; white-space: pre-wrap">{_clip(text)}</pre>'


def _preview(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def _money(value: Decimal | None) -> str:
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    return escape(f"${value.quantize(Decimal('0.000001')).normalize():f}")


def _details(summary: str, body: str, style: str = "") -> str:
    return (f'<details style="{_BOX}; {style}"><summary style="cursor: pointer">{summary}</summary>'
            f"{body}</details>")


def _blocks(content: Any, role: str, names: dict) -> str:
    """Content blocks as HTML: text shown, thinking and tools folded."""
    out = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            if block.text:
                out.append(_pre(block.text))
        elif kind == "thinking":
            out.append(_details(f'<span style="{_LABEL}">thinking</span> <span style="color: #57606a">'
                                f"({len(block.thinking)} characters)</span>",
                                f'<div style="color: #57606a; font-style: italic">{_pre(block.thinking)}</div>',
                                "background: #fbfbfc; border-left: 3px dashed #afb8c1"))
        elif kind == "redacted_thinking":
            out.append(f'<div style="{_LABEL}">thinking (redacted by the provider)</div>')
        elif kind == "tool_use":
            out.append(_details(f'<span style="{_LABEL}">tool call</span> <code>{escape(block.name)}</code>'
                                f' <span style="color: #57606a">{_preview(block.input)}</span>',
                                _json(block.input)
                                + f'<div style="{_LABEL}; text-transform: none">id {escape(block.id)}</div>',
                                _STYLES["tool"]))
        elif kind == "tool_result":
            name = names.get(block.tool_use_id, "")
            label = "tool error" if block.is_error else "tool result"
            out.append(_details(f'<span style="{_LABEL}">{label}</span> <code>{escape(name)}</code>'
                                f' <span style="color: #57606a">{_preview(block.text())}</span>',
                                _pre(block.text()) + _attachments(block.content)
                                + f'<div style="{_LABEL}; text-transform: none">for {escape(block.tool_use_id)}</div>',
                                _STYLES["error" if block.is_error else "tool"]))
        else:
            out.append(_attachments([block]))
    return "".join(out)


def _attachments(blocks: Any) -> str:
    out = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind in (None, "text"):
            continue
        bits = [escape(str(kind))]
        for name in ("media_type", "title", "url"):
            value = getattr(block, name, None)
            if value:
                bits.append(escape(str(value)))
        out.append(f'<div style="{_LABEL}">[{" · ".join(bits)}]</div>')
    return "".join(out)


def _message(message: Any, names: dict) -> str:
    role = str(message.role)
    results = [b for b in message.content if getattr(b, "type", None) == "tool_result"]
    body = _blocks(message.content, role, names)
    if not body:
        return ""
    if results and not any(getattr(b, "type", None) == "text" and b.text for b in message.content):
        return body  # a message of tool results only: the folded results are enough
    return f'<div style="{_BOX}; {_STYLES[role]}"><div style="{_LABEL}">{escape(role)}</div>{body}</div>'


def _transcript(messages: list) -> str:
    out, names = [], {}
    for message in messages:
        out.append(_message(message, names))
        if str(message.role) == "assistant":
            names = {b.id: b.name for b in message.content if getattr(b, "type", None) == "tool_use"}
    return "".join(out)


def _tokens(usage: Any) -> str:
    return f"{usage.total_input_tokens():,} in / {usage.output_tokens:,} out"


# --- the sub-convo tree --------------------------------------------------------------------

def _tree_rows(node: Any, models: dict, prefix: str, last: bool, top: bool, rows: list) -> None:
    own, total = node.own, node.total
    branch = "" if top else ("└─ " if last else "├─ ")
    tools = ", ".join(f"{escape(name)}×{n}" for name, n in sorted(own.tool_uses.items()))
    name = escape(node.id) if node.live else f"{escape(node.id)} <i>(no longer in memory)</i>"
    rows.append(
        f'<tr><td style="{_CELL_L}; {_MONO}; white-space: pre">{escape(prefix + branch)}{name}</td>'
        f'<td style="{_CELL_L}">{escape(models.get(node.id, ""))}</td>'
        f'<td style="{_CELL}">{own.responses}</td><td style="{_CELL}">{own.total_input_tokens():,}</td>'
        f'<td style="{_CELL}">{own.output_tokens:,}</td><td style="{_CELL}">{_money(own.total_cost_usd)}</td>'
        f'<td style="{_CELL}">{_money(total.total_cost_usd) if node.children else ""}</td>'
        f'<td style="{_CELL_L}; white-space: normal">{tools}</td></tr>')
    child_prefix = prefix + ("" if top else ("   " if last else "│  "))
    kids = sorted(node.children, key=lambda n: n.own.start_time)
    for i, child in enumerate(kids):
        _tree_rows(child, models, child_prefix, i == len(kids) - 1, False, rows)


def _models(convo: Any, out: dict) -> dict:
    out[convo.id] = str(convo.model or type(convo.service).__name__)
    for child in convo.sub_convos():
        _models(child, out)
    return out


def _tree(convo: Any) -> str:
    rows: list[str] = []
    _tree_rows(convo.usage_tree(), _models(convo, {}), "", True, True, rows)
    head = "".join(f'<th style="{_CELL if i not in (0, 1, 7) else _CELL_L}">{h}</th>' for i, h in enumerate(
        ["conversation", "model", "replies", "tokens in", "tokens out", "cost", "with sub-convos", "tools"]))
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# --- the views -----------------------------------------------------------------------------

def convo_html(convo: Any) -> str:
    """A conversation as HTML: header, system prompt (folded), transcript, and its sub-convo tree with costs."""
    usage = convo.cumulative_usage()
    messages = convo.messages
    parent = f" · sub-convo of <code>{escape(convo.parent.id)}</code>" if convo.parent is not None else ""
    header = (f'<div style="margin-bottom: 4px"><b>Convo</b> <code>{escape(convo.id)}</code> · '
              f"{escape(str(convo.model or type(convo.service).__name__))}{parent} · {len(messages)} messages · "
              f"{_tokens(usage)} tokens · {_money(usage.total_cost_usd)}</div>")
    system = ""
    if convo.system_prompt:
        system = _details(f'<span style="{_LABEL}">system prompt</span> <span style="color: #57606a">'
                          f"{_preview(convo.system_prompt)}</span>", _pre(convo.system_prompt),
                          "background: #f6f8fa")
    pending = ""
    held = convo.pending_tools() if callable(getattr(convo, "pending_tools", None)) else []
    if held:
        pending = "".join(f'<div style="{_BOX}; {_STYLES["tool"]}"><span style="{_LABEL}">waiting for approval'
                          f'</span> <code>{escape(p.name)}</code> {_preview(p.arguments)} '
                          f'<span style="color: #57606a">{escape(p.message or p.reason)}</span></div>' for p in held)
    tree = f'<div style="{_LABEL}; margin-top: 10px">usage by conversation</div>{_tree(convo)}'
    return (f'<div class="convo-view" style="{_FONT}; max-width: 900px; color: #1f2328; background: #ffffff; '
            f'padding: 8px">{header}{system}{_transcript(messages)}{pending}{tree}</div>')


def response_html(response: Any) -> str:
    """A reply as HTML: its content (tools and thinking folded) and a footer with usage and checks."""
    usage = response.usage
    bits = [f"<code>{escape(response.model)}</code>",
            escape(str(response.stop_reason)) if response.stop_reason is not None else "no stop reason",
            f"{_tokens(usage)} tokens", _money(usage.cost_usd)]
    if response.duration is not None:
        bits.append(f"{response.duration:.2f} s")
    footer = f'<div style="{_LABEL}; text-transform: none">{" · ".join(bits)}</div>'
    checks = "".join(
        f'<div style="{_LABEL}; color: {"#1a7f37" if v.passed else "#cf222e"}">{"passed" if v.passed else "failed"}'
        f" {escape(v.type)} {escape(v.message)}</div>" for v in response.validations)
    held = "".join(f'<div style="{_BOX}; {_STYLES["tool"]}"><span style="{_LABEL}">waiting for approval</span> '
                   f"<code>{escape(p.name)}</code> {_preview(p.arguments)}</div>" for p in response.pending_tools)
    return (f'<div class="convo-view" style="{_FONT}; max-width: 900px; color: #1f2328; background: #ffffff; '
            f'padding: 4px"><div style="{_BOX}; {_STYLES["assistant"]}">'
            f'{_blocks(response.content, "assistant", {})}</div>{checks}{held}{footer}</div>')


def usage_html(usage: Any) -> str:
    """Cumulative usage as a small table: replies, tokens by kind, dollars, tool calls."""
    rows = [("replies", f"{usage.responses:,}"),
            ("input tokens (uncached)", f"{usage.input_tokens:,}"),
            ("cache writes", f"{usage.cache_creation_input_tokens:,}"),
            ("cache reads", f"{usage.cache_read_input_tokens:,}"),
            ("output tokens", f"{usage.output_tokens:,}"),
            ("cost", _money(usage.total_cost_usd) + (f" (+{usage.unpriced_responses} unpriced replies)"
                                                     if usage.unpriced_responses else ""))]
    if usage.reasoning_tokens:
        rows.insert(5, ("of which reasoning", f"{usage.reasoning_tokens:,}"))
    if usage.tool_uses:
        rows.append(("tool calls", ", ".join(f"{escape(n)}×{c}" for n, c in sorted(usage.tool_uses.items()))))
    body = "".join(f'<tr><td style="{_CELL_L}">{k}</td><td style="{_CELL}">{v}</td></tr>' for k, v in rows)
    return f'<div class="convo-view" style="{_FONT}"><table style="{_TABLE}">{body}</table></div>'
