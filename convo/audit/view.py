"""Reading audit trails for people and programs: what ``convo logs`` prints.

- :func:`tree` folds records into the sub-convo tree, with turns, replies,
  tool calls, tokens and dollars per conversation (and per subtree);
- :func:`render_tree` and :func:`render_timeline` lay them out as text;
- :func:`open_source` reads a JSON-lines log or a store URL;
  :func:`follow` yields new records as they are written.

Pure functions over records, except :func:`follow`, which polls.
"""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from attrs import define, field

from ..errors import ConfigurationError

__all__ = ["Node", "follow", "format_event", "open_source", "render_timeline", "render_tree", "tree"]


# --- the tree ----------------------------------------------------------------------

@define
class Node:
    """One conversation of a trail, with what it did (its own) and its sub-convos.

    Built by :func:`tree` and not changed after; not meant to be shared while being built.
    """

    id: str
    parent: str | None = None
    depth: int = 0
    started: str | None = None
    last: str | None = None
    turns: int = 0
    replies: int = 0
    tool_calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0
    children: list = field(factory=list)

    def subtree_cost(self) -> Decimal:
        return self.cost_usd + sum((c.subtree_cost() for c in self.children), Decimal(0))

    def to_dict(self) -> dict:
        return {"convo": self.id, "parent": self.parent, "depth": self.depth, "started": self.started,
                "last": self.last, "turns": self.turns, "replies": self.replies, "tool_calls": self.tool_calls,
                "errors": self.errors, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": str(self.cost_usd), "unpriced_replies": self.unpriced,
                "subtree_cost_usd": str(self.subtree_cost()), "children": [c.to_dict() for c in self.children]}


def _count_usage(node: Node, usage: dict | None) -> None:
    if not usage:
        return
    node.input_tokens += (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) \
        + (usage.get("cache_read_input_tokens") or 0)
    node.output_tokens += usage.get("output_tokens") or 0
    if usage.get("cost_usd") is None:
        node.unpriced += 1
    else:
        node.cost_usd += Decimal(usage["cost_usd"])


def tree(records: Iterable[dict]) -> list[Node]:
    """The conversations the records speak of, as trees: the roots, each with its ``children``, oldest first."""
    nodes: dict[str, Node] = {}

    def node(id: str, parent: str | None = None, depth: int | None = None) -> Node:
        n = nodes.get(id)
        if n is None:
            n = nodes[id] = Node(id)
        if parent is not None:
            n.parent = parent
        if depth is not None:
            n.depth = depth
        return n

    for r in records:
        convo = r.get("convo")
        if not convo:
            continue
        n = node(convo, r.get("parent"), r.get("depth"))
        if r.get("parent"):
            node(r["parent"])
        at = r.get("at")
        if n.started is None or (at and at < n.started):
            n.started = at
        if n.last is None or (at and at > n.last):
            n.last = at
        data = r.get("data") or {}
        kind = r.get("event")
        if kind == "request" and data.get("kind") == "user":
            n.turns += 1
        elif kind == "response":
            n.replies += 1
            _count_usage(n, data.get("usage"))
        elif kind == "usage":
            _count_usage(n, data)
        elif kind == "tool_call":
            n.tool_calls += 1
        elif kind == "error":
            n.errors += 1
    roots = []
    for n in nodes.values():
        parent = nodes.get(n.parent) if n.parent else None
        if parent is None:
            roots.append(n)
        else:
            parent.children.append(n)
            if n.depth == 0:
                n.depth = parent.depth + 1
    for n in nodes.values():
        n.children.sort(key=lambda c: c.started or "")
    return sorted(roots, key=lambda c: c.started or "")


def _find(nodes: list[Node], id: str) -> Node | None:
    for n in nodes:
        if n.id == id:
            return n
        found = _find(n.children, id)
        if found is not None:
            return found
    return None


def subtree_ids(records: list[dict], id: str) -> set[str]:
    """The id of conversation ``id`` and of every conversation below it."""
    found = _find(tree(records), id)
    if found is None:
        return set()
    ids: set[str] = set()
    stack = [found]
    while stack:
        n = stack.pop()
        ids.add(n.id)
        stack.extend(n.children)
    return ids


# --- text ----------------------------------------------------------------------------

def _money(value: Decimal, unpriced: int = 0) -> str:
    if unpriced and not value:
        return "unpriced"
    text = "$0" if value == 0 else f"${value.quantize(Decimal('0.000001')).normalize():f}"
    return text + ("+?" if unpriced else "")


def _when(at: str | None, *, date: bool = True) -> str:
    if not at:
        return "-"
    day, _, clock = at.partition("T")
    clock = clock[:12]
    return f"{day} {clock[:8]}" if date else clock


def render_tree(roots: list[Node]) -> str:
    """The conversation trees as an aligned table, sub-convos drawn under their parents."""
    rows: list[list[str]] = []

    def walk(n: Node, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        subtree = n.subtree_cost()
        rows.append([prefix + branch + n.id, _when(n.started), str(n.turns), str(n.replies), str(n.tool_calls),
                     str(n.errors), f"{n.input_tokens}/{n.output_tokens}", _money(n.cost_usd, n.unpriced),
                     _money(subtree) if n.children else ""])
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        for i, c in enumerate(n.children):
            walk(c, child_prefix, i == len(n.children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    header = ["CONVERSATION", "STARTED (UTC)", "TURNS", "REPLIES", "TOOLS", "ERRORS", "TOKENS IN/OUT", "COST",
              "SUBTREE"]
    if not rows:
        return "no conversations in this audit trail"
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tokens(usage: dict | None) -> str:
    if not usage:
        return ""
    n_in = sum(usage.get(k) or 0 for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    cost = usage.get("cost_usd")
    return f"{n_in} in/{usage.get('output_tokens') or 0} out, " + ("unpriced" if cost is None
                                                                    else _money(Decimal(cost)))


def summary(record: dict) -> str:
    """One line about what a record says happened."""
    kind = record.get("event")
    d = record.get("data") or {}
    if kind == "request":
        message = d.get("message") or {}
        if d.get("kind") == "continue":
            what = "continue the paused reply"
        elif d.get("kind") == "tool_results":
            parts = [f"{b.get('tool_use_id')}{' (error)' if b.get('is_error') else ''}"
                     for b in message.get("content", []) if b.get("type") == "tool_result"]
            what = "tool results: " + ", ".join(parts)
        else:
            text = " ".join(b.get("text", "") for b in message.get("content", []) if b.get("type") == "text")
            what = "user: " + _short(text, 70)
        return f"{what}  [{d.get('model') or '?'}, {_n(d.get('messages') or 0, 'message')}]"
    if kind == "response":
        blocks = d.get("content") or []
        calls = [f"{b.get('name')}" for b in blocks if b.get("type") == "tool_use"]
        text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        what = ("calls " + ", ".join(calls) + (f"; {_short(text, 40)}" if text else "")) if calls \
            else _short(text, 70)
        extra = f"  ({d.get('stop_reason')}, {_tokens(d.get('usage'))}"
        if d.get("duration_s") is not None:
            extra += f", {d['duration_s']:.2f}s"
        return what + extra + ")"
    if kind == "error":
        status = f" {d['status_code']}" if d.get("status_code") else ""
        return f"{d.get('error_type')}{status}: {_short(d.get('message', ''), 90)}"
    if kind == "usage":
        return f"billed for a failed request: {_tokens(d)}"
    if kind == "tool_call":
        return f"{d.get('name')}({_short(d.get('input'), 70)})  [{d.get('id')}]"
    if kind == "tool_result":
        mark = "failed: " if d.get("is_error") else "→ "
        took = f", {d['duration_s']:.2f}s" if d.get("duration_s") is not None else ""
        return f"{d.get('name')} {mark}{_short(d.get('output'), 70)}  [{d.get('id')}{took}]"
    if kind == "tool_pending":
        return f"{d.get('name')} held for approval: {_short(d.get('message') or d.get('reason') or '', 60)}"
    if kind == "tool_resolved":
        return f"{d.get('name')} {'approved' if d.get('approved') else 'rejected'}  [{d.get('id')}]"
    if kind in ("state_saved", "state_loaded"):
        return f"version {d.get('version')}"
    if kind == "audit_gap":
        return f"{d.get('dropped')} events were not recorded (since {d.get('since')}): {d.get('error')}"
    return _short(d, 100)


def format_event(record: dict, *, base_depth: int = 0) -> str:
    """One timeline line: time, conversation (indented by depth), event and what it says."""
    depth = record.get("depth")
    indent = "  " * max(0, (depth if isinstance(depth, int) else 0) - base_depth)
    convo = record.get("convo") or "-"
    return f"{_when(record.get('at'), date=False):<12}  {indent}{convo}  {record.get('event', '?'):<13} " \
           f"{summary(record)}".rstrip()


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def render_timeline(records: list[dict], convo: str) -> str:
    """Every event of conversation ``convo`` and of its sub-convos, in the order written."""
    ids = subtree_ids(records, convo)
    if not ids:
        raise ConfigurationError(f"no conversation {convo!r} in this audit trail")
    mine = [r for r in records if r.get("convo") in ids]
    roots = tree(mine)
    node = _find(roots, convo)
    base = node.depth if node is not None else 0
    head = (f"conversation {convo}: {_n(node.turns, 'turn')}, {_n(node.replies, 'reply', 'replies')}, "
            f"{_n(node.tool_calls, 'tool call')}, {_money(node.cost_usd, node.unpriced)}; with "
            f"{_n(len(ids) - 1, 'sub-convo')}: {_money(node.subtree_cost())}; from {_when(node.started)} UTC")
    return "\n".join([head] + [format_event(r, base_depth=base) for r in mine])


# --- sources --------------------------------------------------------------------------

def is_store_url(source: str) -> bool:
    return "://" in source or source.endswith((".db", ".sqlite", ".sqlite3"))


def open_source(source: str) -> tuple[Callable[[], list[dict]], Callable[[], Any]]:
    """``(read, close)`` for a JSON-lines log (a path) or a store (a URL); ``read()`` returns every record.

    Raises:
        ConfigurationError: no such log, or a store without audit events.
    """
    if is_store_url(source):
        from ..stores import open_store
        from .store import StoreAuditLog

        store = open_store(source)
        audit = StoreAuditLog(store)

        def close() -> None:
            audit.close()
            store.close()

        return audit.events, close
    from .jsonl import log_files, read_records

    if not log_files(source):
        raise ConfigurationError(f"no audit log at {source!r} (a JSON-lines file, or a store URL such as "
                                 "sqlite:///convos.db)")
    return (lambda: list(read_records(source))), (lambda: None)


def follow(source: str, *, interval: float = 0.2, stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Every record of ``source``, then each new one as it is written, until ``stop()`` is true.

    A JSON-lines log is followed across rotation (the file moved aside and
    a new one started); a line is yielded once it is complete.
    """
    if is_store_url(source):
        read, close = open_source(source)
        from .store import StoreAuditLog  # noqa: F401 - read is its events()

        last = None
        try:
            while True:
                for record in read(after_seq=last) if last is not None else read():
                    last = record["seq"]
                    yield record
                if stop():
                    return
                time.sleep(interval)
        finally:
            close()
    yield from _follow_file(Path(source), interval, stop)


def _follow_file(path: Path, interval: float, stop: Callable[[], bool]) -> Iterator[dict]:
    from .jsonl import log_files, parse_line

    def whole(file: Path) -> Iterator[dict]:
        try:
            with open(file, "rb") as f:
                for raw in f:
                    record = parse_line(raw)
                    if record is not None:
                        yield record
        except FileNotFoundError:
            return

    # What is there already: the rotated files whole, then the active file as it grows.
    for file in log_files(path)[:-1] if path.exists() else log_files(path):
        yield from whole(file)
    f = None
    inode = None
    pending = b""
    try:
        while True:
            if f is None and path.exists():
                f = open(path, "rb")
                inode = os.fstat(f.fileno()).st_ino
                pending = b""
            got = False
            if f is not None:
                chunk = f.read()
                if chunk:
                    got = True
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        record = parse_line(raw + b"\n")
                        if record is not None:
                            yield record
                else:
                    try:
                        moved = os.stat(path).st_ino != inode
                    except FileNotFoundError:
                        moved = True
                    if moved:
                        # Rotated (maybe more than once): finish the files moved aside after ours, in order.
                        f.close()
                        f = None
                        rotated = [p for p in log_files(path) if p != path]
                        inodes = [_inode(p) for p in rotated]
                        if inode in inodes:
                            for file in rotated[inodes.index(inode) + 1:]:
                                yield from whole(file)
                        continue
            if not got:
                if stop():
                    return
                time.sleep(interval)
    finally:
        if f is not None:
            f.close()


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


# --- the command ------------------------------------------------------------------------

def logs_command(words: list[str], *, convo: str | None, follow_: bool, as_json: bool, key_env: str | None,
                 out: Any, err: Any) -> int:
    """``convo logs``: the tree, a timeline, a live tail, or ``verify``; the exit status."""
    if words and words[0] == "verify":
        if len(words) != 2:
            raise ConfigurationError("usage: convo logs verify FILE")
        return _verify(words[1], key_env, as_json, out)
    if len(words) != 1:
        raise ConfigurationError("give one audit trail: convo logs FILE|STORE-URL (or: convo logs verify FILE)")
    source = words[0]
    if follow_:
        return _follow(source, convo, as_json, out)
    read, close = open_source(source)
    try:
        records = read()
    finally:
        close()
    if convo is not None:
        if as_json:
            ids = subtree_ids(records, convo)
            if not ids:
                raise ConfigurationError(f"no conversation {convo!r} in this audit trail")
            for r in records:
                if r.get("convo") in ids:
                    out.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            out.write(render_timeline(records, convo) + "\n")
        return 0
    roots = tree(records)
    if as_json:
        out.write(json.dumps([n.to_dict() for n in roots], ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(render_tree(roots) + "\n")
    return 0


def _verify(path: str, key_env: str | None, as_json: bool, out: Any) -> int:
    from .verify import describe, verify

    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise ConfigurationError(f"--key-env {key_env}: that environment variable is not set")
    try:
        report = verify(path, key=key)
    except FileNotFoundError:
        raise ConfigurationError(f"no audit log at {path!r}") from None
    if as_json:
        out.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        out.write(describe(report, path) + "\n")
    return 0 if report.ok else 1


def _follow(source: str, convo: str | None, as_json: bool, out: Any) -> int:
    if not is_store_url(source) and not Path(source).exists():
        raise ConfigurationError(f"no audit log at {source!r}")
    ids: set[str] | None = None if convo is None else {convo}
    for record in follow(source):
        cid = record.get("convo")
        if ids is not None:
            # A conversation's sub-convos appear as the log goes on: follow them by their parent links.
            if cid and cid not in ids and record.get("parent") in ids:
                ids.add(cid)
            if cid not in ids:
                continue
        out.write((json.dumps(record, ensure_ascii=False) if as_json else format_event(record)) + "\n")
        out.flush()
    return 0
