"""Checking a JSON-lines audit log's hash chain: :func:`verify`.

It reads every file of a log (rotated ones first) and recomputes the chain
described in :mod:`convo.audit.jsonl`, reporting each place it breaks, by
file and line:

- ``edited``: a line's content no longer matches its hash;
- ``removed``: ``seq`` jumps (records are missing before the line);
- ``reordered``: a line's ``seq`` is not the next one, or its ``prev`` is
  not the hash of the line before it;
- ``starts_late``: the log does not begin at ``seq`` 0 (its first lines,
  or its oldest rotated files, are gone);
- ``not_a_record``: a complete line that is not an audit record;
- ``newer_format``: a record of a format this convo does not know.

A line without its ``\\n`` at the end of a file, or a fragment the writer
ended after a crash, is a warning (``truncated``), not a break: the chain
skips it, and a record removed that way still shows as a break after it.

Pure reading: safe from any thread, and while the log is being written
(a line still being written is seen as truncated).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from attrs import frozen

from .events import FORMAT_VERSION, GENESIS
from .jsonl import _key_bytes, line_hash, log_files, split_line

__all__ = ["Finding", "VerifyReport", "verify"]


@frozen
class Finding:
    """One place where the chain breaks (or, for warnings, a line cut short). Immutable, so thread-safe."""

    file: str
    line: int
    kind: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "kind": self.kind, "seq": self.seq, "message": self.message}


@frozen
class VerifyReport:
    """What :func:`verify` found: the records checked, the chain's head, and every break. Immutable."""

    files: tuple
    records: int
    first_seq: int | None
    last_seq: int | None
    head: str | None
    problems: tuple
    warnings: tuple

    @property
    def ok(self) -> bool:
        """True when the chain is unbroken (warnings about truncated lines allowed)."""
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "files": list(self.files), "records": self.records, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "head": self.head, "problems": [p.to_dict() for p in self.problems],
                "warnings": [w.to_dict() for w in self.warnings]}


def verify(path: str | os.PathLike, *, key: str | bytes | None = None) -> VerifyReport:
    """Check the hash chain of the audit log at ``path`` (and its rotated files).

    Args:
        path: the log's file, as given to :class:`~convo.audit.JSONLAuditLog`.
        key: the key the log was written with, if any.

    Raises:
        FileNotFoundError: there is no such log.
    """
    key_bytes = _key_bytes(key)
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"no audit log at {str(path)!r}")
    problems: list[Finding] = []
    warnings: list[Finding] = []
    expected_seq: int | None = None  # None: before the first record
    prev = GENESIS
    first_seq = last_seq = None
    count = 0
    for file in files:
        name = str(file)
        with open(file, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        ends_open = lines[-1] != b""
        if not ends_open:
            lines.pop()
        for number, line in enumerate(lines, start=1):
            last_piece = ends_open and number == len(lines)

            def problem(kind: str, message: str, seq: int | None = None, name: str = name,
                        number: int = number) -> None:
                problems.append(Finding(name, number, kind, message, seq))

            parts = split_line(line)
            record = None
            if parts is not None:
                try:
                    record = json.loads(parts[0])
                except ValueError:
                    record = None
            if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
                if last_piece or (line.startswith(b'{"v":') and not line.endswith(b"}")):
                    warnings.append(Finding(name, number, "truncated",
                                            "a line cut short (a write interrupted by a crash); the chain skips it"))
                elif line.strip():
                    problem("not_a_record", "not an audit record (the line was edited, or is not from an audit log)")
                continue
            if last_piece:
                warnings.append(Finding(name, number, "truncated", "the last line has no newline yet "
                                        "(still being written, or cut off)"))
            body, digest = parts
            seq = record["seq"]
            if record.get("v") != FORMAT_VERSION:
                problem("newer_format" if isinstance(record.get("v"), int) and record["v"] > FORMAT_VERSION
                        else "not_a_record", f"record format {record.get('v')!r}; this convo checks format "
                        f"{FORMAT_VERSION}", seq)
                continue
            count += 1
            if first_seq is None:
                first_seq = seq
            if line_hash(body, key_bytes) != digest:
                hint = "" if key_bytes is not None or count > 1 else \
                    " (or the log was written with a key: give it)"
                problem("edited", f"seq {seq}: the line does not match its hash: it was edited after it was "
                        f"written{hint}", seq)
            if expected_seq is None:
                if seq != 0 or record.get("prev") != GENESIS:
                    problem("starts_late", f"the log starts at seq {seq}, not 0: its first records are missing "
                            "(lines removed, or older rotated files deleted)", seq)
            elif seq > expected_seq:
                missing = seq - expected_seq
                problem("removed", f"seq {seq} follows seq {expected_seq - 1}: {missing} record"
                        f"{'s' if missing != 1 else ''} removed before this line", seq)
            elif seq < expected_seq:
                problem("reordered", f"seq {seq} comes after seq {expected_seq - 1}: lines were reordered or "
                        "duplicated", seq)
            elif record.get("prev") != prev:
                problem("reordered", f"seq {seq}: its prev is not the hash of the record before it: a line "
                        "before it was edited, replaced or moved", seq)
            # Go on from this line, so one break is reported once rather than at every line after it.
            expected_seq = seq + 1
            prev = digest
            last_seq = seq
    return VerifyReport(files=tuple(str(f) for f in files), records=count, first_seq=first_seq, last_seq=last_seq,
                        head=prev if count else None, problems=tuple(problems), warnings=tuple(warnings))


def describe(report: VerifyReport, path: str | os.PathLike) -> str:
    """The report in a few lines for people (what ``convo logs verify`` prints)."""
    lines = [str(p) for p in report.problems] + [f"{w} (warning)" for w in report.warnings]
    n_files = len(report.files)
    where = f"{Path(path)}: {report.records} records"
    if report.records:
        where += f" (seq {report.first_seq}-{report.last_seq})"
    where += f" in {n_files} file{'s' if n_files != 1 else ''}"
    if report.ok:
        lines.append(f"{where}: chain intact; head {report.head}")
    else:
        n = len(report.problems)
        lines.append(f"{where}: {n} problem{'s' if n != 1 else ''}: the log was changed after it was written")
    return "\n".join(lines)
