"""A small, strict Server-Sent Events parser (the WHATWG event-stream format).

It reads bytes as they arrive and yields one :class:`SSEEvent` per blank
line: ``event:`` names it, ``data:`` lines join with newlines, ``:`` lines
are comments. Lines may end in CRLF, LF or CR, and chunk boundaries may
fall anywhere, even inside a multi-byte character or between the CR and
the LF of one line ending.

The work is linear in the input: each chunk is split into lines once, and
a line that spans chunks is kept as a list of pieces joined once, when it
ends (re-slicing a buffer per line made a 5 MB chunk take half a minute).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from attrs import frozen


@frozen
class SSEEvent:
    event: str
    data: str
    id: str | None = None


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a byte stream, without their line endings, decoded as UTF-8."""
    pending: list[bytes] = []  # the start of a line that has not ended yet
    after_cr = False  # the last chunk ended in CR: a LF starting the next one belongs to it
    for chunk in chunks:
        if not chunk:
            continue
        if after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        after_cr = False
        # bytes.splitlines splits on exactly CR, LF and CRLF, as SSE does.
        lines = chunk.splitlines(keepends=True)
        if not lines:
            continue
        tail = b""
        if lines[-1][-1:] not in (b"\n", b"\r"):
            tail = lines.pop()  # unfinished: it continues in the next chunk
        else:
            after_cr = lines[-1][-1:] == b"\r"
        for line in lines:
            cut = 2 if line[-2:] == b"\r\n" else 1
            if pending:
                pending.append(line[:-cut])
                yield _decode(b"".join(pending))
                pending = []
            else:
                yield _decode(line[:-cut])
        if tail:
            pending.append(tail)
    if pending:
        yield _decode(b"".join(pending))


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    """Parse an event stream. A final event without its blank line is still yielded."""
    event = ""
    data: list[str] = []
    last_id: str | None = None
    seen = False
    for line in iter_lines(chunks):
        if not line:
            if seen:
                yield SSEEvent(event or "message", "\n".join(data), last_id)
            event, data, seen = "", [], False
            continue
        if line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
            seen = True
        elif name == "event":
            event, seen = value, True
        elif name == "id":
            last_id = value
        # "retry" and unknown fields are ignored, as the spec says
    if seen:
        yield SSEEvent(event or "message", "\n".join(data), last_id)
