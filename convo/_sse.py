"""A small, strict Server-Sent Events parser (the WHATWG event-stream format).

It reads bytes as they arrive and yields one :class:`SSEEvent` per blank
line: ``event:`` names it, ``data:`` lines join with newlines, ``:`` lines
are comments. Lines may end in CRLF, LF or CR, and chunk boundaries may
fall anywhere, even inside a multi-byte character.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from attrs import frozen


@frozen
class SSEEvent:
    event: str
    data: str
    id: str | None = None


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    buf = b""
    for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        while True:
            cr = buf.find(b"\r")
            lf = buf.find(b"\n")
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr == len(buf) - 1:
                    break  # a CR at the end may be the first half of CRLF: wait for more
                end, skip = cr, 2 if buf[cr + 1:cr + 2] == b"\n" else 1
            else:
                end, skip = lf, 1
            yield buf[:end].decode("utf-8", errors="replace")
            buf = buf[end + skip:]
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


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
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event, seen = value, True
        elif name == "data":
            data.append(value)
            seen = True
        elif name == "id":
            last_id = value
        # "retry" and unknown fields are ignored, as the spec says
    if seen:
        yield SSEEvent(event or "message", "\n".join(data), last_id)
