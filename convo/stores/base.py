"""What every store shares: the records, the errors' wording, and the logic above a backend's primitives.

A backend (memory, SQLite, Redis, PostgreSQL) implements five primitives
that each run in ONE transaction; :class:`BaseStore` builds the public
:class:`~convo.stores.Store` methods on them, so decoding, validation and
the sub-convo tree arithmetic are written once:

- ``_write(write: RawWrite) -> int``: check the conversation's version is
  ``write.expected_version`` (0: it must not exist yet), keep its first
  ``write.keep`` messages, drop the rest, append ``write.append``, store
  ``write.state`` and the new version; return the new version. Raise
  :class:`~convo.ConcurrentUpdate` on a version mismatch.
- ``_read(id) -> RawRecord | None``: one conversation, messages in order.
- ``_rows(root) -> list[RawRow]``: conversations (of one tree, or all),
  without their messages.
- ``_delete(ids)``: remove conversations and their messages.
- ``_kv(op, namespace, key, value)``: a small key-value table for
  bookkeeping beside the conversations (batches, approvals): ``get``,
  ``put``, ``claim`` (insert if absent, atomically) and ``delete``.
- ``_counter(namespace, key, delta, limit) -> (bool, str)``: add ``delta``
  (a decimal string) to a counter atomically, unless that takes it past
  ``limit`` (a decimal string, or None for no limit; a negative delta always
  applies); return whether it was added and the value after. Counters live
  in the key-value table, as decimal strings.

Every value crosses the primitives as JSON text, so every backend stores
exactly the same bytes, and a row that does not decode is reported with
the id of the conversation it belongs to.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Sequence

from attrs import field, frozen

from ..errors import ConcurrentUpdate, ConversationNotFound, ConversationUnreadable, ConfigurationError
from ..messages import Message
from ..usage import CumulativeUsage

__all__ = [
    "SCHEMA_VERSION",
    "BaseStore",
    "ConversationInfo",
    "RawRecord",
    "RawRow",
    "RawWrite",
    "StoredConversation",
]

#: The layout version every backend writes; opening a store written with a
#: newer layout is an :class:`~convo.IncompatibleStore` error.
SCHEMA_VERSION = 1

#: The version of the state JSON a Convo writes (see ``Convo.to_dict``).
STATE_FORMAT = 1


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, timezone.utc)


@frozen
class RawWrite:
    """One atomic change to a conversation, as a backend receives it (JSON already encoded)."""

    id: str
    expected_version: int
    parent_id: str | None
    root_id: str
    state: str
    keep: int
    append: tuple
    usage: str
    at: float


@frozen
class RawRecord:
    """A conversation as a backend read it: JSON text not yet decoded."""

    id: str
    parent_id: str | None
    root_id: str
    created: float
    updated: float
    version: int
    state: str
    messages: tuple


@frozen
class RawRow:
    """A conversation's listing row as a backend read it."""

    id: str
    parent_id: str | None
    root_id: str
    created: float
    updated: float
    version: int
    message_count: int
    usage: str


@frozen
class StoredConversation:
    """A stored conversation, read without a model: its history, state and place in the tree.

    ``state`` is what :meth:`convo.Convo.to_dict` wrote besides the messages
    (settings, usage, budget); ``usage`` is the conversation's own usage
    (its replies and tool calls, not its sub-convos'); ``cumulative_usage``
    (from :meth:`Store.load_tree`) includes every sub-convo below it.
    """

    id: str
    parent_id: str | None
    root_id: str
    created: datetime
    updated: datetime
    version: int
    state: dict
    messages: tuple = field(converter=tuple)

    @property
    def usage(self) -> CumulativeUsage:
        return CumulativeUsage.from_dict(self.state["own_usage"])


@frozen
class ConversationInfo:
    """One row of :meth:`Store.list`: a conversation without its messages.

    ``cost_usd`` and ``usage`` are cumulative: the conversation and every
    sub-convo below it.
    """

    id: str
    parent_id: str | None
    root_id: str
    created: datetime
    updated: datetime
    messages: int
    cost_usd: Decimal
    usage: CumulativeUsage
    version: int


def _decode(conversation_id: str, what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConversationUnreadable(conversation_id, f"its {what} is not JSON ({exc})") from None


def decode_state(conversation_id: str, text: str) -> dict:
    state = _decode(conversation_id, "state", text)
    if not isinstance(state, dict):
        raise ConversationUnreadable(conversation_id, "its state is not a JSON object")
    fmt = state.get("format")
    if not isinstance(fmt, int):
        raise ConversationUnreadable(conversation_id, "its state has no format version")
    if fmt > STATE_FORMAT:
        raise ConversationUnreadable(conversation_id, f"it was written by a newer convo (state format {fmt}, "
                                                      f"this convo reads up to {STATE_FORMAT}); upgrade convo")
    return state


def decode_usage(conversation_id: str, text: str) -> CumulativeUsage:
    try:
        return CumulativeUsage.from_dict(_decode(conversation_id, "usage", text))
    except ConversationUnreadable:
        raise
    except Exception as exc:
        raise ConversationUnreadable(conversation_id, f"its usage does not decode ({type(exc).__name__}: {exc})") from None


_raw_decode = json.JSONDecoder().raw_decode


def decode_messages(conversation_id: str, texts: Sequence[str]) -> list[Message]:
    """Messages from their stored JSON texts; the first that does not decode is named in the error.

    The fast path decodes everything in one loop; only when something fails
    is the history gone through again to say which message it was.
    """
    from_dict = Message.from_dict
    try:
        messages = []
        for text in texts:
            data, end = _raw_decode(text)
            if end != len(text):
                raise ValueError("extra data after the JSON value")
            messages.append(from_dict(data))
        return messages
    except Exception:
        pass
    for i, text in enumerate(texts):
        data = _decode(conversation_id, f"message {i}", text)
        try:
            from_dict(data)
        except Exception as exc:
            raise ConversationUnreadable(conversation_id, f"its message {i} does not decode "
                                                          f"({type(exc).__name__}: {exc})") from None
    raise ConversationUnreadable(conversation_id, "its messages do not decode")


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (text decoded with errors="surrogateescape", say) is not UTF-8:
            # escape it, and everything else, as JSON \u sequences, which read back exactly.
            text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
    return text


class BaseStore:
    """The public store methods, built on a backend's primitives (see the module docstring).

    Thread-safe when the backend's primitives are: every backend here is.
    """

    #: The URL scheme :func:`convo.open_store` maps to this store.
    scheme = ""

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    # --- the Store protocol -------------------------------------------------------

    def write(self, id: str, *, expected_version: int, parent_id: str | None, root_id: str, state: dict,
              usage: CumulativeUsage, keep: int, append: Iterable[Message] = ()) -> int:
        """Change one conversation atomically and return its new version.

        Keeps its first ``keep`` messages, appends ``append``, stores
        ``state`` and its own ``usage``; all or nothing.

        Raises:
            ConcurrentUpdate: the stored version is not ``expected_version``
                (another writer got there first; 0 means the id must be new).
            StoreUnavailable: the database could not be reached.
        """
        self._check_open()
        if not isinstance(expected_version, int) or expected_version < 0:
            raise ConfigurationError(f"expected_version must be an int >= 0, got {expected_version!r}")
        if not isinstance(keep, int) or keep < 0:
            raise ConfigurationError(f"keep must be an int >= 0, got {keep!r}")
        raw = RawWrite(id, expected_version, parent_id, root_id, _dumps(state), keep,
                       tuple(_dumps(m.to_dict()) for m in append), _dumps(usage.to_dict()), time.time())
        return self._write(raw)

    def load(self, id: str) -> StoredConversation:
        """One stored conversation with its messages, read without a model.

        Raises:
            ConversationNotFound: no conversation has that id.
            ConversationUnreadable: its stored data does not decode, or was
                written by a newer convo.
        """
        self._check_open()
        raw = self._read(id)
        if raw is None:
            raise ConversationNotFound(id)
        state = decode_state(id, raw.state)
        messages = decode_messages(id, raw.messages)
        return StoredConversation(raw.id, raw.parent_id, raw.root_id, _ts(raw.created), _ts(raw.updated),
                                  raw.version, state, messages)

    def list(self, *, root: str | None = None, parent: str | None = None, roots_only: bool = False,
             limit: int | None = None) -> list[ConversationInfo]:
        """Stored conversations, most recently updated first, without their messages.

        Args:
            root: only the tree of this root conversation (the root included).
            parent: only the direct sub-convos of this conversation.
            roots_only: only root conversations.
            limit: at most this many rows.

        Each row's usage and cost are cumulative over its subtree.
        """
        self._check_open()
        rows = self._rows(root)
        own = {r.id: decode_usage(r.id, r.usage) for r in rows}
        children = self._children(rows)
        cumulative: dict[str, CumulativeUsage] = {}

        def total(node: str) -> CumulativeUsage:
            # Iterative post-order: trees can be deep, recursion limits are not.
            stack = [(node, False)]
            while stack:
                n, expanded = stack.pop()
                if n in cumulative:
                    continue
                kids = [k.id for k in children.get(n, [])]
                if expanded or not kids:
                    u = own[n].copy()
                    for k in kids:
                        u.merge(cumulative[k])
                    cumulative[n] = u
                else:
                    stack.append((n, True))
                    stack.extend((k, False) for k in kids if k not in cumulative)
            return cumulative[node]

        chosen = [r for r in rows
                  if (parent is None or r.parent_id == parent) and (not roots_only or r.parent_id is None)]
        chosen.sort(key=lambda r: (r.updated, r.id), reverse=True)
        if limit is not None:
            chosen = chosen[:limit]
        out = []
        for r in chosen:
            u = total(r.id)
            out.append(ConversationInfo(r.id, r.parent_id, r.root_id, _ts(r.created), _ts(r.updated),
                                        r.message_count, u.total_cost_usd, u, r.version))
        return out

    def subtree_usage(self, id: str) -> CumulativeUsage:
        """The usage of everything stored below ``id`` (its sub-convos, at every depth), not its own."""
        self._check_open()
        raw = self._read(id)
        if raw is None:
            return CumulativeUsage()
        children = self._children(self._rows(raw.root_id))
        total = CumulativeUsage()
        todo = list(children.get(id, []))
        while todo:
            r = todo.pop()
            total.merge(decode_usage(r.id, r.usage))
            todo.extend(children.get(r.id, []))
        return total

    def delete(self, id: str) -> None:
        """Remove a conversation and every sub-convo below it. Unknown ids are ignored."""
        self._check_open()
        raw = self._read(id)
        if raw is None:
            return
        children = self._children(self._rows(raw.root_id))
        doomed, todo = [], [id]
        while todo:
            n = todo.pop()
            doomed.append(n)
            todo.extend(r.id for r in children.get(n, []))
        self._delete(doomed)

    @staticmethod
    def _children(rows: list[RawRow]) -> dict[str | None, list[RawRow]]:
        children: dict[str | None, list[RawRow]] = {}
        for r in rows:
            children.setdefault(r.parent_id, []).append(r)
        return children

    # --- bookkeeping beside conversations -------------------------------------------------

    def kv_get(self, namespace: str, key: str) -> Any:
        """The JSON value stored under ``(namespace, key)``, or None."""
        self._check_open()
        text = self._kv("get", namespace, key, None)
        return None if text is None else json.loads(text)

    def kv_put(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON value under ``(namespace, key)``, replacing any."""
        self._check_open()
        self._kv("put", namespace, key, _dumps(value))

    def kv_claim(self, namespace: str, key: str, value: Any) -> bool:
        """Store ``value`` only if ``(namespace, key)`` is free: True for the one caller that wins.

        Atomic across threads, processes and machines sharing the store.
        """
        self._check_open()
        return bool(self._kv("claim", namespace, key, _dumps(value)))

    def kv_delete(self, namespace: str, key: str) -> None:
        """Remove ``(namespace, key)`` if present."""
        self._check_open()
        self._kv("delete", namespace, key, None)

    def counter_add(self, namespace: str, key: str, delta: Decimal | int | str,
                    limit: Decimal | int | str | None = None) -> tuple[bool, Decimal]:
        """Add ``delta`` to a counter atomically, unless the sum would pass ``limit``.

        Returns ``(added, value)``: whether it was added, and the counter's
        value afterwards (unchanged when refused). A negative ``delta``
        always applies. Exact decimal arithmetic; atomic across threads,
        processes and machines sharing the store (budgets across replicas
        are kept with it).
        """
        self._check_open()
        added, value = self._counter(namespace, key, str(Decimal(delta)),
                                     None if limit is None else str(Decimal(limit)))
        return added, Decimal(value)

    def counter_get(self, namespace: str, key: str) -> Decimal:
        """A counter's value (0 if it was never added to)."""
        value = self.kv_get(namespace, key)
        return Decimal(value) if value is not None else Decimal(0)

    @staticmethod
    def _counter_step(current: str | None, delta: str, limit: str | None) -> tuple[bool, str]:
        """The arithmetic of :meth:`counter_add` for backends that lock and then compute in Python."""
        value = Decimal(current) if current is not None else Decimal(0)
        d = Decimal(delta)
        if d > 0 and limit is not None and value + d > Decimal(limit):
            return False, str(value)
        return True, str(value + d)

    def batch_get(self, batch_id: str, item_key: str) -> dict | None:
        """The record of a batch item already done, or None (see :func:`convo.batch`)."""
        return self.kv_get(f"batch:{batch_id}", item_key)

    def batch_put(self, batch_id: str, item_key: str, record: dict) -> None:
        """Record a finished batch item (see :func:`convo.batch`)."""
        self.kv_put(f"batch:{batch_id}", item_key, record)

    # --- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Release connections (and, for an embedded server, nothing else). Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            from ..errors import StoreError

            raise StoreError(f"{type(self).__name__} is closed")

    # --- for backends -------------------------------------------------------------------

    @staticmethod
    def _mismatch(id: str, expected: int, found: int | None) -> ConcurrentUpdate:
        return ConcurrentUpdate(id, expected, found)

    # --- primitives ----------------------------------------------------------------

    def _write(self, write: RawWrite) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, id: str) -> RawRecord | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows(self, root: str | None) -> list[RawRow]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _delete(self, ids: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _kv(self, op: str, namespace: str, key: str, value: str | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _counter(self, namespace: str, key: str, delta: str, limit: str | None) -> tuple[bool, str]:  # pragma: no cover
        raise NotImplementedError

    def _close(self) -> None:
        pass

