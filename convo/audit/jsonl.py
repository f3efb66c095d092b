"""A durable, tamper-evident audit log in JSON lines: :class:`JSONLAuditLog`, and reading one back.

The file
========

One record per line (UTF-8, ``\\n`` after each), in the format of
:mod:`convo.audit.events`, with three fields that make the lines a hash
chain::

    {"v":1,"seq":41,"prev":"<hash of line 40>", ...the record..., "hash":"<64 hex>"}

``hash`` is SHA-256 of the line's bytes up to ``,"hash"`` with ``}``
appended (the line as it would read without its hash), so it covers
``prev`` too: each hash vouches for every line before it. With ``key=``
it is HMAC-SHA256 under that key, so someone who can edit the file but
does not hold the key cannot recompute the chain either. The first
record of a log has ``seq`` 0 and a ``prev`` of 64 zeros.
:func:`convo.audit.verify` (``convo logs verify FILE``) recomputes it:
an edited line no longer matches its hash; a removed line leaves a gap in
``seq`` and a ``prev`` that matches nothing; reordered lines break both;
lines removed from the end are found by comparing the last hash with one
kept elsewhere (:attr:`JSONLAuditLog.head`).

Rotation
========

With ``rotate_bytes``, a line that would take the file past that size
first moves the file aside to ``<path>.1`` (then ``.2``, ``.3``...: the
number grows, older files keep theirs) and starts a new, empty ``<path>``.
The chain runs on across files: the first line of the new file has the
next ``seq`` and the ``prev`` of the last line of the one before, so
``verify(path)`` checks the numbered files in order, then ``path``, as one
chain, and a whole rotated file removed or swapped is found like a line.
Deleting the oldest rotated files (retention) is seen as a log that starts
late; ``verify`` says so.

Crashes and restarts
====================

Opening an existing log continues its chain from its last complete line.
A line cut short by a crash (no ``\\n``) is ended with one, so it stands
alone; ``verify`` reports it as truncated and ``convo logs`` skips it.

One writer per file: the file is locked (``flock``) while a log has it
open, and a second process opening it is refused. Many threads in one
process share one :class:`JSONLAuditLog`.

Who writes
==========

The thread on which an event happens writes its line (building the
record and hashing it outside the lock; numbering, hashing into the chain
and the ``write`` under it) before the conversation goes on, so a line is
in the operating system's hands, and survives the process being killed,
by the time the next step runs. With ``fsync=True`` it is on the disk too.
(Writing from a background thread instead was measured: on a busy
two-core machine the hand-off between threads cost more than the write.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .._log import log
from ..errors import ConfigurationError
from .events import FORMAT_VERSION, GENESIS, AuditListener, AuditWriteFailed, Redact, dumps, now_iso

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, one writer by convention
    fcntl = None  # type: ignore[assignment]

__all__ = ["JSONLAuditLog", "log_files", "read_records"]

#: ``,"hash":"<64 hex>"}``: how every line ends.
HASH_SUFFIX_LEN = len(',"hash":"') + 64 + len('"}')
_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_RETRY_OPEN_EVERY = 1.0  # seconds between attempts to reopen a file that could not be opened


def log_files(path: str | os.PathLike) -> list[Path]:
    """The files of a log, oldest first: ``<path>.1``, ``<path>.2``... then ``<path>`` (those that exist)."""
    path = Path(path)
    numbered = []
    if path.parent.is_dir():
        prefix = path.name + "."
        for entry in path.parent.iterdir():
            if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
                numbered.append((int(entry.name[len(prefix):]), entry))
    files = [p for _, p in sorted(numbered)]
    if path.exists():
        files.append(path)
    return files


def line_hash(body: bytes, key: bytes | None) -> str:
    """The hash of a line's body (the line without its hash, closed with ``}``)."""
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def split_line(line: bytes) -> tuple[bytes, str] | None:
    """``(body, hash)`` of a complete line (without its ``\\n``), or None when it has no hash suffix."""
    found = _SUFFIX.search(line)
    if found is None or found.start() != len(line) - HASH_SUFFIX_LEN:
        return None
    return line[:-HASH_SUFFIX_LEN] + b"}", found.group(1).decode()


def _key_bytes(key: Any) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ConfigurationError("key must be a non-empty str or bytes (it signs the hash chain)")
    return bytes(key)


class JSONLAuditLog(AuditListener):
    """A listener that appends one JSON line per event to ``path``, each chained to the one before by its hash.

    Every request, reply (with usage and cost), failed request, tool call
    (with its input), tool result (with its output or error), approval
    event and store event, at every depth of the sub-convo tree; the
    format and the chain are described in :mod:`convo.audit.events` and
    :mod:`convo.audit.jsonl`. Check a log with :func:`convo.audit.verify`.

    Args:
        path: the log file (created with its folder; an existing log is
            continued).
        fsync: flush every line to the disk before the event goes on
            (slower; without it a line is in the operating system's hands
            once written, and survives the process being killed).
        rotate_bytes: move the file aside (``<path>.1``, ``.2``...) before
            it would grow past this many bytes; the chain continues.
        redact: ``redact(what, name, value) -> value``, to mask tool
            inputs and outputs and message text before they are written
            (see :mod:`convo.audit.events`).
        strict: when a line cannot be written (a full disk, a file that
            cannot be opened), raise :class:`~convo.audit.AuditWriteFailed`
            from the listener, so the send or tool call fails before it
            happens. Otherwise the failure is logged (``audit_write_failed``),
            the conversation goes on, and once writing works again an
            ``audit_gap`` record says how many events are missing.
        key: a secret (str or bytes) that makes the chain's hashes
            HMAC-SHA256: only someone with the key can write a valid chain.

    Thread-safe: lines from many threads never interleave, and none goes
    missing; one lock is held only to number, hash and write a line (the
    record is built and encoded before it is taken). Use it as a context
    manager, or call :meth:`close`.

    Raises:
        AuditWriteFailed: with ``strict=True``, the file cannot be opened
            (also from the constructor).
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False, rotate_bytes: int | None = None,
                 redact: Redact | None = None, strict: bool = False, key: str | bytes | None = None) -> None:
        super().__init__(redact=redact, strict=strict)
        if rotate_bytes is not None and (isinstance(rotate_bytes, bool) or not isinstance(rotate_bytes, int)
                                         or rotate_bytes < 1024):
            raise ConfigurationError(f"rotate_bytes must be an int of at least 1024, or None; got {rotate_bytes!r}")
        self.path = Path(path)
        self.fsync = bool(fsync)
        self.rotate_bytes = rotate_bytes
        self._key = _key_bytes(key)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._seq = 0  # the next record's
        self._prev = GENESIS
        self._closed = False
        self._failing: str | None = None  # why writing fails, while it does
        self._dropped_since: str | None = None
        self._next_open = 0.0
        self._dropped = 0
        with self._lock:
            try:
                self._open()
            except OSError as exc:
                if self.strict:
                    raise AuditWriteFailed(f"cannot open the audit log {str(self.path)!r}: {exc}") from None
                self._fail(f"cannot open the audit log: {exc}")

    def __repr__(self) -> str:
        return f"JSONLAuditLog({str(self.path)!r})"

    def __enter__(self) -> "JSONLAuditLog":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last line written (``(-1, GENESIS)`` before the first).

        Keep it somewhere the log's writer cannot change (another system, a
        signed note): a log whose last lines were cut off ends before it.
        """
        with self._lock:
            return self._seq - 1, self._prev

    @property
    def dropped(self) -> int:
        """Events not written because writing failed (non-strict only) and not yet noted by an ``audit_gap`` record."""
        with self._lock:
            return self._dropped

    def flush(self, timeout: float | None = None) -> bool:
        """True: every event is written before its listener call returns (here for symmetry with StoreAuditLog)."""
        return True

    def close(self) -> None:
        """Close the file. Later events are refused (logged, or raised when strict). Idempotent."""
        with self._lock:
            self._closed = True
            self._close_fd()

    # --- the file ------------------------------------------------------------------

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # also releases the flock
            except OSError:
                pass
            self._fd = None

    def _open(self) -> None:
        """Open (or create) the active file, lock it, and find where the chain stands."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise OSError(f"another process is writing {str(self.path)!r} (one writer per audit log; "
                                  "give each process its own file)") from None
                except OSError:
                    pass  # a file system without locks: one writer by convention
            size = os.fstat(fd).st_size
            seq, prev, open_line = self._chain_state()
            if open_line:
                os.write(fd, b"\n")  # a line cut off by a crash stands alone; the chain skips it
                size += 1
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size
        self._seq, self._prev = seq, prev

    def _chain_state(self) -> tuple[int, str, bool]:
        """``(next seq, prev hash, whether the active file ends mid-line)`` from the log's last complete line."""
        open_line = False
        for i, file in enumerate(reversed(log_files(self.path))):
            last, ends_open = _last_record(file)
            if i == 0:
                open_line = ends_open
            if last is not None:
                return last[0] + 1, last[1], open_line
        return 0, GENESIS, open_line

    def _rotate(self) -> None:
        self._close_fd()
        files = log_files(self.path)
        numbers = [int(p.name.rsplit(".", 1)[1]) for p in files if p != self.path]
        target = self.path.with_name(f"{self.path.name}.{max(numbers, default=0) + 1}")
        os.rename(self.path, target)
        self._open()

    # --- writing -------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        """Remember that writing fails (lock held); log it once per outage."""
        if self._failing is None:
            log.error("audit_write_failed", path=str(self.path), error=why,
                      hint="the conversation goes on; events are dropped until writing works again "
                           "(strict=True stops the conversation instead)")
        self._failing = why

    def _line(self, record_json: str) -> tuple[bytes, str]:
        """The chain's next line for a record, and its hash (lock held)."""
        body = f'{{"v":{FORMAT_VERSION},"seq":{self._seq},"prev":"{self._prev}",{record_json[1:]}'.encode()
        digest = hashlib.sha256(body).hexdigest() if self._key is None else line_hash(body, self._key)
        return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest

    def _append(self, record_json: str) -> None:
        """Write one record as the chain's next line (lock held)."""
        if self._fd is None:
            if time.monotonic() < self._next_open:
                raise OSError(self._failing or "the audit log is not open")
            self._next_open = time.monotonic() + _RETRY_OPEN_EVERY
            try:
                self._open()
            except OSError as exc:
                raise OSError(f"cannot open the audit log: {exc}") from None
        line, digest = self._line(record_json)
        size = len(line)
        if self.rotate_bytes is not None and self._size > 0 and self._size + size > self.rotate_bytes:
            self._rotate()
            line, digest = self._line(record_json)
        try:
            n = os.write(self._fd, line)
            if n < size:  # a short write (rare on a regular file): write the rest
                view = memoryview(line)[n:]
                while view:
                    view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            # Part of the line may have reached the file: end it, so the next line starts clean.
            try:
                self._close_fd()
            finally:
                self._next_open = 0.0
            raise
        self._size += size
        self._seq += 1
        self._prev = digest

    def _emit(self, record: dict) -> None:
        text = dumps(record)  # the costly part, outside the lock
        with self._lock:
            if self._closed:
                error = f"the audit log {str(self.path)!r} is closed"
            else:
                try:
                    if self._dropped:
                        self._write_gap()
                    self._append(text)
                    if self._failing is not None:
                        log.warning("audit_write_recovered", path=str(self.path))
                        self._failing = None
                    return
                except OSError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            if self.strict:
                raise AuditWriteFailed(f"could not write to the audit log {str(self.path)!r}: {error}")
            self._fail(error)
            if not self._dropped:
                self._dropped_since = record["at"]
            self._dropped += 1

    def _write_gap(self) -> None:
        gap = {"at": now_iso(), "event": "audit_gap", "convo": None, "parent": None, "root": None, "depth": None,
               "data": {"dropped": self._dropped, "since": self._dropped_since, "error": self._failing}}
        self._append(dumps(gap))
        self._dropped = 0
        self._dropped_since = None


def _last_record(file: Path) -> tuple[tuple[int, str] | None, bool]:
    """``((seq, hash) of the file's last complete, hashed line, or None), whether the file ends mid-line``."""
    try:
        with open(file, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end == 0:
                return None, False
            f.seek(end - 1)
            ends_open = f.read(1) != b"\n"
            # Read backwards in growing chunks until a complete line that carries a hash is found.
            chunk = 1 << 16
            while True:
                start = max(0, end - chunk)
                f.seek(start)
                data = f.read(end - start)
                lines = data.split(b"\n")
                if ends_open:
                    lines = lines[:-1]
                elif lines and lines[-1] == b"":
                    lines = lines[:-1]
                complete = lines if start == 0 else lines[1:]  # the first piece may be cut
                for line in reversed(complete):
                    parts = split_line(line)
                    if parts is None:
                        continue
                    try:
                        seq = json.loads(parts[0])["seq"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(seq, int):
                        return (seq, parts[1]), ends_open
                if start == 0:
                    return None, ends_open
                chunk *= 4
    except FileNotFoundError:
        return None, False


def read_records(path: str | os.PathLike, *, skip_bad: bool = True) -> Iterator[dict]:
    """Every record of a log (rotated files first), in order; lines that do not parse are skipped.

    Reads records only: it checks no hash (that is :func:`convo.audit.verify`'s
    job). A record of a newer format than this convo reads raises
    :class:`~convo.ConfigurationError`.
    """
    for file in log_files(path):
        with open(file, "rb") as f:
            for raw in f:
                record = parse_line(raw)
                if record is None:
                    if skip_bad:
                        continue
                    raise ConfigurationError(f"{file}: a line that is not an audit record")
                yield record


def parse_line(raw: bytes) -> dict | None:
    """The record on one line, or None for a line that is cut short or not a record."""
    if not raw.endswith(b"\n"):
        return None  # a line still being written, or cut off by a crash
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or "v" not in record:
        return None
    if record["v"] > FORMAT_VERSION:
        raise ConfigurationError(f"audit record of format {record['v']}, newer than this convo reads "
                                 f"({FORMAT_VERSION}); upgrade convo")
    return record
