"""What every chat store backend shares: the rows, the transaction protocol, and every operation on them.

A backend (SQL for SQLite, memory and PostgreSQL; Redis) implements a few
primitives; :class:`ChatStore` writes the chats API's operations once on
top of them, so the state machine lives in one place:

- ``_chat_tx(chat_id, fn)``: run ``fn(tx)`` in one transaction in which
  the chat's row is locked (PostgreSQL ``SELECT ... FOR UPDATE``, SQLite
  ``BEGIN IMMEDIATE``, Redis ``WATCH``/``MULTI``, retried on conflict: so
  ``fn`` reads before it writes and may run more than once). ``tx`` is a
  :class:`ChatTx`.
- ``_config_tx(fn)``: the same for providers and model configs (one lock
  for all of them: they change rarely).
- reads without a lock: ``_chat``, ``_owner_chats``, ``_children``,
  ``_snapshot`` (a chat, its messages and its queue as of one moment).
- leases: ``_acquire(worker_id, now)`` (the oldest ``pending`` chat becomes
  ``running`` for this worker, its generation one higher; exactly one
  replica gets each), ``_heartbeat`` and ``_stale``.

Generations fence runs. Each acquisition raises a chat's ``generation``,
and so does every change that makes a run's work moot (an edit, a
promote, a delete). A run writes its steps only while the chat's
generation is still the one it acquired, so a run that lost its lease (a
replica presumed dead, an edited history) can never write into a history
that moved on; an interrupt keeps the generation, so the interrupted run
still saves its partial reply.

Times are Unix seconds written by the caller's clock.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Sequence

from attrs import evolve, field, frozen

from ...errors import ConvoError
from ..chats_wire import (
    DEFAULT_COMPRESSION_THRESHOLD,
    KEYLESS_PROVIDERS,
    NIL_UUID,
    PROVIDERS,
    Chat,
    ChatMessage,
    ChatStatus,
    ChatUsage,
    MessagePart,
    MessageUsage,
    ModelConfig,
    ModelConfigCreate,
    ModelConfigUpdate,
    ProviderConfig,
    ProviderCreate,
    ProviderUpdate,
    QueuedMessage,
)

__all__ = [
    "ChatNotFound",
    "ChatRow",
    "ChatStore",
    "ChatStoreError",
    "ChatTx",
    "ConfigConflict",
    "ConfigNotFound",
    "InvalidConfig",
    "MessageNotFound",
    "MessageRow",
    "ModelConfigRow",
    "NotUserMessage",
    "ProviderRow",
    "QueueFull",
    "QueuedRow",
    "Released",
]

#: Statuses in which a run is under way or about to be: a posted message is queued.
BUSY = (ChatStatus.PENDING, ChatStatus.RUNNING)


# --- errors ---------------------------------------------------------------------------------------


class ChatStoreError(ConvoError):
    """A chat store operation that cannot be done as asked (the API maps each to a status code)."""


class ChatNotFound(ChatStoreError, LookupError):
    """No such chat for this owner: it does not exist, or it is someone else's (one error for both)."""


class MessageNotFound(ChatStoreError, LookupError):
    """No such message (or queued message) in this chat."""


class NotUserMessage(ChatStoreError, ValueError):
    """Only user messages can be edited."""


class QueueFull(ChatStoreError, RuntimeError):
    """The chat already holds the most queued messages it may."""


class ConfigNotFound(ChatStoreError, LookupError):
    """No such provider or model config."""


class ConfigConflict(ChatStoreError, RuntimeError):
    """A provider or model config that already exists."""


class InvalidConfig(ChatStoreError, ValueError):
    """A model config that cannot be (its provider is not configured; no default exists)."""


# --- rows -----------------------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def _usage(value: Any) -> ChatUsage:
    return value if isinstance(value, ChatUsage) else ChatUsage.from_wire(value)


@frozen
class ChatRow:
    """A chat as stored: what the API shows, plus the run lease (worker, heartbeat, generation)."""

    id: str
    owner_id: str
    title: str
    status: ChatStatus = field(converter=ChatStatus)
    created_at: float
    updated_at: float
    last_model_config_id: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    workspace_id: str | None = None
    worker_id: str | None = None
    started_at: float | None = None
    heartbeat_at: float | None = None
    generation: int = 0
    last_error: str | None = None
    usage: ChatUsage = field(factory=ChatUsage, converter=_usage)

    def public(self, total_usage: ChatUsage | None = None) -> Chat:
        return Chat(id=self.id, owner_id=self.owner_id, last_model_config_id=self.last_model_config_id or NIL_UUID,
                    title=self.title, status=self.status, created_at=_dt(self.created_at),
                    updated_at=_dt(self.updated_at), parent_chat_id=self.parent_id, root_chat_id=self.root_id,
                    workspace_id=self.workspace_id, usage=self.usage,
                    total_usage=total_usage if total_usage is not None else self.usage,
                    last_error=self.last_error if self.status == ChatStatus.ERROR else None)

    def idle(self, now: float, **changes: Any) -> "ChatRow":
        """This row with no run: worker fields cleared, ``changes`` applied, touched at ``now``."""
        return evolve(self, worker_id=None, started_at=None, heartbeat_at=None, updated_at=now, **changes)


def _dt(value: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(value, timezone.utc)


@frozen
class MessageRow:
    """A chat message as stored.

    ``visibility`` is ``user`` (the API shows it), ``model`` (only the model
    sees it: the system prompt, a summary) or ``both``. ``model`` is what
    the model saw, exactly (a :meth:`convo.Message.to_dict` for assistant
    messages, a :meth:`convo.ToolResult.to_dict` for tool results): thinking
    signatures and tool inputs survive to the next run, whatever the API
    shows. ``compressed`` marks the rows of a summary.
    """

    id: int
    chat_id: str
    created_at: float
    role: str
    content: tuple = field(converter=tuple)
    visibility: str = "both"
    compressed: bool = False
    model_config_id: str | None = None
    model: Any = None
    usage: MessageUsage | None = None

    @property
    def visible(self) -> bool:
        return self.visibility in ("user", "both")

    def public(self) -> ChatMessage:
        return ChatMessage(self.id, self.chat_id, _dt(self.created_at), self.role, self.content, self.model_config_id,
                           self.usage)

    def text(self) -> str:
        return "".join(p.text for p in self.content if p.type == "text")


@frozen
class NewMessage:
    """A message to insert (the store gives it its id and time)."""

    role: str
    content: tuple = field(converter=tuple)
    visibility: str = "both"
    compressed: bool = False
    model_config_id: str | None = None
    model: Any = None
    usage: MessageUsage | None = None


@frozen
class QueuedRow:
    id: int
    chat_id: str
    content: tuple = field(converter=tuple)
    created_at: float

    def public(self) -> QueuedMessage:
        return QueuedMessage(self.id, self.chat_id, self.content, _dt(self.created_at))


@frozen
class ProviderRow:
    """A provider as stored. The key is kept out of the repr."""

    id: str
    provider: str
    display_name: str
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    enabled: bool = True
    created_at: float = 0.0
    updated_at: float = 0.0


@frozen
class ModelConfigRow:
    id: str
    provider: str
    model: str
    display_name: str
    context_limit: int
    compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD
    enabled: bool = True
    is_default: bool = False
    options: dict = field(factory=dict)
    deleted: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> ModelConfig:
        return ModelConfig(self.id, self.provider, self.model, self.display_name or self.model, self.enabled,
                           self.is_default, self.context_limit, self.compression_threshold, _dt(self.created_at),
                           _dt(self.updated_at), dict(self.options) or None)


# --- JSON columns ------------------------------------------------------------------------------------


def dump_parts(parts: Sequence[MessagePart]) -> str:
    return json.dumps([p.to_wire() for p in parts], separators=(",", ":"), ensure_ascii=False)


def load_parts(text: str | None) -> tuple:
    return tuple(MessagePart.from_wire(p) for p in json.loads(text or "[]"))


def dump_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def load_json(text: str | None) -> Any:
    return None if text is None or text == "" else json.loads(text)


def dump_usage(usage: ChatUsage) -> str:
    return dump_json(usage.to_wire())


def dump_message_usage(usage: MessageUsage | None) -> str | None:
    return None if usage is None else dump_json(usage.to_wire())


def load_message_usage(text: str | None) -> MessageUsage | None:
    return MessageUsage.from_wire(load_json(text))


# --- the transaction a backend hands to an operation ---------------------------------------------------


class ChatTx:
    """One chat's data inside one transaction (the chat's row is locked while it lasts).

    Reads come before writes (Redis queues writes until the transaction
    commits). Methods a backend implements:
    """

    chat_id: str
    now: float

    def chat(self) -> ChatRow | None:  # pragma: no cover - interface
        raise NotImplementedError

    def messages(self) -> list[MessageRow]:  # pragma: no cover - interface
        """Every message of the chat (hidden ones too), oldest first."""
        raise NotImplementedError

    def queue(self) -> list[QueuedRow]:  # pragma: no cover - interface
        raise NotImplementedError

    def save_chat(self, row: ChatRow) -> None:  # pragma: no cover - interface
        """Insert or replace the chat's row."""
        raise NotImplementedError

    def add_message(self, message: NewMessage) -> MessageRow:  # pragma: no cover - interface
        raise NotImplementedError

    def set_content(self, row: MessageRow, content: tuple) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def drop_messages_after(self, message_id: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def enqueue(self, content: tuple) -> QueuedRow:  # pragma: no cover - interface
        raise NotImplementedError

    def drop_queued(self, ids: Sequence[int]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def delete_chat(self) -> None:  # pragma: no cover - interface
        """Remove the chat, its messages and its queue."""
        raise NotImplementedError


class ConfigTx:
    """Providers and model configs inside one transaction. Reads before writes, as for :class:`ChatTx`."""

    now: float

    def providers(self) -> list[ProviderRow]:  # pragma: no cover - interface
        raise NotImplementedError

    def model_configs(self) -> list[ModelConfigRow]:  # pragma: no cover - interface
        """Every model config, deleted ones too."""
        raise NotImplementedError

    def save_provider(self, row: ProviderRow) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def delete_provider(self, provider_id: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def save_model_config(self, row: ModelConfigRow) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def delete_model_config(self, config_id: str) -> None:  # pragma: no cover - interface
        """Remove a model config row for good (a provider's delete cascades)."""
        raise NotImplementedError


@frozen
class Released:
    """What a run's release did: the chat after it, and the queued message it promoted, if any."""

    chat: ChatRow
    promoted: MessageRow | None = None
    queue: tuple | None = None  # the queue after a promotion


@frozen
class Posted:
    """What posting a message did: sent at once (``message``, the chat now pending) or ``queued``."""

    chat: ChatRow
    message: MessageRow | None = None
    queued: QueuedRow | None = None
    queue: tuple = ()


# --- the operations ----------------------------------------------------------------------------------


class ChatStore:
    """Chats, their messages, queues, run leases, providers and model configs, in a convo store's database.

    Every method is thread-safe, and atomic across processes sharing the
    database. Each backend's module documents its tables or keys.
    """

    #: Whether several processes can share this store (an in-memory one cannot).
    shared = True

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.time

    # -- primitives (a backend implements these) --

    def _chat_tx(self, chat_id: str, fn: Callable[[ChatTx], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _config_tx(self, fn: Callable[[ConfigTx], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _chat(self, chat_id: str) -> ChatRow | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _owner_chats(self, owner_id: str) -> list[ChatRow]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _children(self, chat_id: str) -> list[ChatRow]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _snapshot(self, chat_id: str) -> tuple[ChatRow | None, list[MessageRow], list[QueuedRow]]:  # pragma: no cover
        raise NotImplementedError

    def _acquire(self, worker_id: str, now: float) -> ChatRow | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _heartbeat(self, worker_id: str, chat_ids: Sequence[str], now: float) -> set:  # pragma: no cover
        raise NotImplementedError

    def _stale(self, cutoff: float) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_configs(self) -> tuple[list[ProviderRow], list[ModelConfigRow]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> "ChatStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def bridge(self) -> Any:
        """The cross-process event channel of this backend (see :mod:`.events`); none by default."""
        return None

    # -- reading chats --

    def chat(self, owner_id: str | None, chat_id: str) -> ChatRow:
        """A chat of ``owner_id`` (None: anyone's, for the server's own use).

        Raises:
            ChatNotFound: it does not exist or is not the owner's.
        """
        row = self._chat(chat_id)
        if row is None or (owner_id is not None and row.owner_id != owner_id):
            raise ChatNotFound(chat_id)
        return row

    def list_chats(self, owner_id: str) -> list[tuple[ChatRow, ChatUsage]]:
        """The owner's chats (sub-chats included), most recently updated first, each with its tree's usage."""
        rows = self._owner_chats(owner_id)
        totals = tree_totals(rows)
        rows.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return [(r, totals[r.id]) for r in rows]

    def total_usage(self, row: ChatRow) -> ChatUsage:
        """A chat's usage plus every sub-chat's below it."""
        total, todo = row.usage, [row.id]
        seen = {row.id}
        while todo:
            for child in self._children(todo.pop()):
                if child.id not in seen:
                    seen.add(child.id)
                    total = total + child.usage
                    todo.append(child.id)
        return total

    def snapshot(self, owner_id: str | None, chat_id: str) -> tuple[ChatRow, list[MessageRow], list[QueuedRow]]:
        """A chat with every message (hidden ones too) and its queue, as of one moment.

        Raises:
            ChatNotFound: as :meth:`chat`.
        """
        row, messages, queue = self._snapshot(chat_id)
        if row is None or (owner_id is not None and row.owner_id != owner_id):
            raise ChatNotFound(chat_id)
        return row, messages, queue

    def children(self, chat_id: str) -> list[ChatRow]:
        return self._children(chat_id)

    # -- changing chats --

    def create_chat(self, owner_id: str, texts: Sequence[str], model_config_id: str | None, *, title: str,
                    system_prompt: str | None = None, parent: ChatRow | None = None,
                    workspace_id: str | None = None) -> tuple[ChatRow, MessageRow]:
        """A new chat, ``pending``, with its hidden system prompt and its first user message (one transaction)."""
        chat_id = new_id()

        def work(tx: ChatTx):
            now = tx.now
            row = ChatRow(chat_id, owner_id, title, ChatStatus.PENDING, now, now, model_config_id,
                          parent.id if parent else None, (parent.root_id or parent.id) if parent else None,
                          workspace_id)
            tx.save_chat(row)
            if system_prompt:
                tx.add_message(NewMessage("system", (MessagePart.text_part(system_prompt),), visibility="model"))
            first = tx.add_message(NewMessage("user", _text_parts(texts), model_config_id=model_config_id))
            return row, first

        return self._chat_tx(chat_id, work)

    def post_message(self, owner_id: str | None, chat_id: str, texts: Sequence[str], model_config_id: str | None,
                     *, max_queue: int, interrupt: bool = False) -> Posted:
        """Post a user message: queued while a run is pending or running, else sent (the chat becomes pending).

        ``interrupt`` (the ``message_agent`` tool's) sends it at once even
        while a run is under way, which ends that run.

        Raises:
            ChatNotFound: as :meth:`chat`.
            QueueFull: ``max_queue`` messages are already queued.
        """
        def work(tx: ChatTx):
            row = _owned(tx, owner_id)
            if row.status in BUSY and not interrupt:
                queue = tx.queue()
                if len(queue) >= max_queue:
                    raise QueueFull(chat_id)
                queued = tx.enqueue(_text_parts(texts))
                tx.save_chat(row)
                return Posted(row, queued=queued, queue=tuple(queue) + (queued,))
            config = model_config_id or row.last_model_config_id
            message = tx.add_message(NewMessage("user", _text_parts(texts), model_config_id=config))
            generation = row.generation + 1 if row.status == ChatStatus.RUNNING else row.generation
            row = row.idle(tx.now, status=ChatStatus.PENDING, last_model_config_id=config, last_error=None,
                           generation=generation)
            tx.save_chat(row)
            return Posted(row, message=message)

        return self._chat_tx(chat_id, work)

    def edit_message(self, owner_id: str, chat_id: str, message_id: int, texts: Sequence[str]) -> tuple[ChatRow, MessageRow]:
        """Replace a user message's content, drop every message after it and the queue; the chat runs again.

        Raises:
            ChatNotFound: as :meth:`chat`.
            MessageNotFound: no such message in this chat.
            NotUserMessage: it is not a user message.
        """
        def work(tx: ChatTx):
            row = _owned(tx, owner_id)
            messages = tx.messages()
            queue = tx.queue()
            target = next((m for m in messages if m.id == message_id), None)
            if target is None or not target.visible:
                raise MessageNotFound(message_id)
            if target.role != "user":
                raise NotUserMessage(message_id)
            content = _text_parts(texts)
            tx.set_content(target, content)
            tx.drop_messages_after(message_id)
            if queue:
                tx.drop_queued([q.id for q in queue])
            row = row.idle(tx.now, status=ChatStatus.PENDING, generation=row.generation + 1, last_error=None)
            tx.save_chat(row)
            return row, evolve(target, content=content)

        return self._chat_tx(chat_id, work)

    def interrupt(self, owner_id: str, chat_id: str) -> tuple[ChatRow, bool, Released | None]:
        """Stop a pending or running chat: it becomes ``waiting`` (a running worker then saves its partial reply).

        A chat that is not pending or running is left as it is. A pending
        chat with queued messages takes the next one up at once (no worker
        would release it); a running one does so when its worker releases.

        Returns ``(chat, changed, released)``.
        """
        def work(tx: ChatTx):
            row = _owned(tx, owner_id)
            if row.status not in BUSY:
                return row, False, None
            was = row.status
            queue = tx.queue() if was == ChatStatus.PENDING else []
            row = row.idle(tx.now, status=ChatStatus.WAITING)
            released = None
            if queue:
                head, rest = queue[0], tuple(queue[1:])
                tx.drop_queued([head.id])
                promoted = tx.add_message(NewMessage("user", head.content, model_config_id=row.last_model_config_id))
                row = evolve(row, status=ChatStatus.PENDING)
                released = Released(row, promoted, rest)
            tx.save_chat(row)
            return row, True, released

        return self._chat_tx(chat_id, work)

    def delete_chat(self, owner_id: str, chat_id: str) -> list[ChatRow]:
        """Delete a chat and every sub-chat below it (leaves first); the rows deleted, the chat last.

        Raises:
            ChatNotFound: as :meth:`chat`.
        """
        top = self.chat(owner_id, chat_id)
        order, todo = [], [top]
        while todo:
            row = todo.pop(0)
            order.append(row)
            todo.extend(self._children(row.id))
        deleted = []
        for row in reversed(order):
            def work(tx: ChatTx, _row=row):
                found = tx.chat()
                if found is None:
                    return None
                tx.delete_chat()
                return found

            gone = self._chat_tx(row.id, work)
            if gone is not None:
                deleted.append(gone)
        return deleted

    def delete_queued(self, owner_id: str, chat_id: str, queued_id: int) -> tuple:
        """Remove a queued message (an unknown id changes nothing); the queue after."""
        def work(tx: ChatTx):
            row = _owned(tx, owner_id)
            queue = tx.queue()
            if any(q.id == queued_id for q in queue):
                tx.drop_queued([queued_id])
            tx.save_chat(row)
            return tuple(q for q in queue if q.id != queued_id)

        return self._chat_tx(chat_id, work)

    def promote_queued(self, owner_id: str, chat_id: str, queued_id: int) -> tuple[ChatRow, MessageRow, tuple]:
        """Send a queued message now, ahead of the others; a run under way ends (its partial reply is dropped).

        Raises:
            ChatNotFound: as :meth:`chat`.
            MessageNotFound: no such queued message.
        """
        def work(tx: ChatTx):
            row = _owned(tx, owner_id)
            queue = tx.queue()
            target = next((q for q in queue if q.id == queued_id), None)
            if target is None:
                raise MessageNotFound(queued_id)
            tx.drop_queued([queued_id])
            message = tx.add_message(NewMessage("user", target.content, model_config_id=row.last_model_config_id))
            generation = row.generation + 1 if row.status == ChatStatus.RUNNING else row.generation
            row = row.idle(tx.now, status=ChatStatus.PENDING, generation=generation, last_error=None)
            tx.save_chat(row)
            return row, message, tuple(q for q in queue if q.id != queued_id)

        return self._chat_tx(chat_id, work)

    def set_title(self, chat_id: str, title: str) -> ChatRow | None:
        def work(tx: ChatTx):
            row = tx.chat()
            if row is None:
                return None
            row = evolve(row, title=title)
            tx.save_chat(row)
            return row

        return self._chat_tx(chat_id, work)

    # -- runs --

    def acquire(self, worker_id: str) -> ChatRow | None:
        """Take the oldest pending chat for ``worker_id``: it is ``running`` with a new generation; None if none."""
        return self._acquire(worker_id, self.clock())

    def heartbeat(self, worker_id: str, chat_ids: Sequence[str]) -> set:
        """Mark this worker's runs alive; the ids it still holds (a run missing from it lost its lease)."""
        if not chat_ids:
            return set()
        return self._heartbeat(worker_id, list(chat_ids), self.clock())

    def recover_stale(self, stale_after: float) -> list[ChatRow]:
        """Runs whose worker stopped beating for ``stale_after`` seconds go back to ``pending``; those chats."""
        now = self.clock()
        cutoff = now - stale_after
        recovered = []
        for chat_id in self._stale(cutoff):
            def work(tx: ChatTx):
                row = tx.chat()
                if row is None or row.status != ChatStatus.RUNNING or (row.heartbeat_at or 0) >= cutoff:
                    return None
                row = row.idle(tx.now, status=ChatStatus.PENDING)
                tx.save_chat(row)
                return row

            row = self._chat_tx(chat_id, work)
            if row is not None:
                recovered.append(row)
        return recovered

    def append(self, chat_id: str, generation: int, messages: Sequence[NewMessage],
               usage: ChatUsage | None = None) -> list[MessageRow] | None:
        """A run's step: its messages and the usage it added, in one transaction; None if the run was fenced off."""
        def work(tx: ChatTx):
            row = tx.chat()
            if row is None or row.generation != generation:
                return None
            added = [tx.add_message(m) for m in messages]
            tx.save_chat(evolve(row, updated_at=tx.now, usage=row.usage + usage) if usage is not None
                         else evolve(row, updated_at=tx.now))
            return added

        return self._chat_tx(chat_id, work)

    def release(self, chat_id: str, generation: int, status: ChatStatus, *, error: str | None = None,
                usage: ChatUsage | None = None) -> Released | None:
        """End a run: the chat takes ``status`` (with the rules of the protocol), the next queued message is taken
        up when the chat would go idle, and the run's last usage is added. None if the run was fenced off.

        - A chat someone set ``pending`` during the run stays pending
          (a message arrived after an interrupt); a run handed back
          (``pending``: the server is stopping) leaves a chat interrupted
          meanwhile as the interrupt left it.
        - Idle (``waiting``, ``completed``, ``paused``) with a queue: the
          oldest queued message becomes a user message and the chat is
          ``pending`` again. Never after an ``error``.
        """
        def work(tx: ChatTx):
            row = tx.chat()
            if row is None or row.generation != generation:
                return None
            queue = tx.queue()
            final = ChatStatus(status)
            promoted = None
            rest = None
            if row.status == ChatStatus.PENDING and final in (ChatStatus.WAITING, ChatStatus.COMPLETED,
                                                              ChatStatus.PAUSED):
                final = ChatStatus.PENDING
            elif final == ChatStatus.PENDING and row.status != ChatStatus.RUNNING:
                final = row.status  # handed back, but interrupted meanwhile: the interrupt stands
            elif final in (ChatStatus.WAITING, ChatStatus.COMPLETED, ChatStatus.PAUSED) and queue:
                head = queue[0]
                tx.drop_queued([head.id])
                promoted = tx.add_message(NewMessage("user", head.content, model_config_id=row.last_model_config_id))
                rest = tuple(queue[1:])
                final = ChatStatus.PENDING
            new = row.idle(tx.now, status=final, last_error=error if final == ChatStatus.ERROR else None,
                           usage=row.usage + usage if usage is not None else row.usage)
            tx.save_chat(new)
            return Released(new, promoted, rest)

        return self._chat_tx(chat_id, work)

    # -- providers and model configs --

    def configs(self) -> tuple[list[ProviderRow], list[ModelConfigRow]]:
        """Every provider row, and every model config that is not deleted (by provider, then model)."""
        providers, configs = self._read_configs()
        live = sorted((c for c in configs if not c.deleted), key=lambda c: (c.provider, c.model, c.id))
        return providers, live

    def model_config(self, config_id: str | None) -> ModelConfigRow | None:
        """A live model config by id, else the default one, else None."""
        _, configs = self.configs()
        if config_id:
            for c in configs:
                if c.id == config_id:
                    return c
        for c in configs:
            if c.is_default:
                return c
        return None

    def create_provider(self, request: ProviderCreate) -> ProviderRow:
        """Raises: ConfigConflict: the provider has a row already."""
        def work(tx: ConfigTx):
            if any(p.provider == request.provider for p in tx.providers()):
                raise ConfigConflict("Chat provider already exists.")
            row = ProviderRow(new_id(), request.provider, request.display_name or PROVIDERS[request.provider],
                              request.api_key, request.base_url, request.enabled, tx.now, tx.now)
            tx.save_provider(row)
            return row

        return self._config_tx(work)

    def update_provider(self, provider_id: str, request: ProviderUpdate) -> ProviderRow:
        """Raises: ConfigNotFound."""
        def work(tx: ConfigTx):
            row = next((p for p in tx.providers() if p.id == provider_id), None)
            if row is None:
                raise ConfigNotFound(provider_id)
            row = evolve(row, display_name=request.display_name or row.display_name,
                         api_key=row.api_key if request.api_key is None else request.api_key,
                         base_url=row.base_url if request.base_url is None else request.base_url,
                         enabled=row.enabled if request.enabled is None else request.enabled, updated_at=tx.now)
            tx.save_provider(row)
            return row

        return self._config_tx(work)

    def delete_provider(self, provider_id: str) -> None:
        """Delete a provider and (a cascade, as Coder's foreign key does) its model configs.

        Raises: ConfigNotFound.
        """
        def work(tx: ConfigTx):
            providers = tx.providers()
            configs = tx.model_configs()
            row = next((p for p in providers if p.id == provider_id), None)
            if row is None:
                raise ConfigNotFound(provider_id)
            doomed = [c for c in configs if c.provider == row.provider]
            for c in doomed:
                tx.delete_model_config(c.id)
            tx.delete_provider(provider_id)
            if any(c.is_default and not c.deleted for c in doomed):
                _move_default(tx, [c for c in configs if c not in doomed])

        self._config_tx(work)

    def create_model_config(self, request: ModelConfigCreate) -> ModelConfigRow:
        """Raises: InvalidConfig (no provider row), ConfigConflict (the provider and model exist already)."""
        def work(tx: ConfigTx):
            providers = tx.providers()
            configs = [c for c in tx.model_configs() if not c.deleted]
            if not any(p.provider == request.provider for p in providers):
                raise InvalidConfig("Chat provider is not configured.")
            if any(c.provider == request.provider and c.model == request.model for c in configs):
                raise ConfigConflict("Chat model config already exists.")
            default = request.is_default or not any(c.is_default for c in configs)
            row = ModelConfigRow(new_id(), request.provider, request.model, request.display_name,
                                 request.context_limit, request.compression_threshold, request.enabled, default,
                                 dict(request.model_config or {}), False, tx.now, tx.now)
            if default:
                _unset_defaults(tx, configs)
            tx.save_model_config(row)
            return row

        return self._config_tx(work)

    def update_model_config(self, config_id: str, request: ModelConfigUpdate) -> ModelConfigRow:
        """Raises: ConfigNotFound, InvalidConfig, ConfigConflict."""
        def work(tx: ConfigTx):
            providers = tx.providers()
            configs = [c for c in tx.model_configs() if not c.deleted]
            row = next((c for c in configs if c.id == config_id), None)
            if row is None:
                raise ConfigNotFound(config_id)
            provider = request.provider or row.provider
            model = request.model or row.model
            if provider != row.provider and not any(p.provider == provider for p in providers):
                raise InvalidConfig("Chat provider is not configured.")
            if (provider, model) != (row.provider, row.model) and any(
                    c.provider == provider and c.model == model for c in configs if c.id != row.id):
                raise ConfigConflict("Chat model config already exists.")
            new = evolve(row, provider=provider, model=model, display_name=request.display_name or row.display_name,
                         enabled=row.enabled if request.enabled is None else request.enabled,
                         context_limit=request.context_limit or row.context_limit,
                         compression_threshold=(row.compression_threshold if request.compression_threshold is None
                                                else request.compression_threshold),
                         options=row.options if request.model_config is None else dict(request.model_config),
                         is_default=row.is_default if request.is_default is None else request.is_default,
                         updated_at=tx.now)
            others = [c for c in configs if c.id != row.id]
            if new.is_default and not row.is_default:
                _unset_defaults(tx, others)
            tx.save_model_config(new)
            if row.is_default and not new.is_default:
                _move_default(tx, others)
            return new

        return self._config_tx(work)

    def delete_model_config(self, config_id: str) -> None:
        """Soft-delete a model config; the default moves to another one. Raises: ConfigNotFound."""
        def work(tx: ConfigTx):
            configs = [c for c in tx.model_configs() if not c.deleted]
            row = next((c for c in configs if c.id == config_id), None)
            if row is None:
                raise ConfigNotFound(config_id)
            tx.save_model_config(evolve(row, deleted=True, is_default=False, updated_at=tx.now))
            if row.is_default:
                _move_default(tx, [c for c in configs if c.id != row.id])

        self._config_tx(work)

    def seed(self, models: Sequence[tuple[str, str, int]], env_keys: dict) -> None:
        """Give a fresh server what ``convo serve --model`` names: a provider row and a model config each
        (the first the default), only while no model config exists at all.

        ``models`` are ``(provider, model, context_limit)``. Idempotent, and
        safe when replicas start together.
        """
        def work(tx: ConfigTx):
            providers = tx.providers()
            if tx.model_configs():
                return
            have = {p.provider for p in providers}
            for i, (provider, model, limit) in enumerate(models):
                if provider not in have:
                    tx.save_provider(ProviderRow(new_id(), provider, PROVIDERS.get(provider, provider), "", "", True,
                                                 tx.now, tx.now))
                    have.add(provider)
                tx.save_model_config(ModelConfigRow(new_id(), provider, model, "", limit,
                                                    DEFAULT_COMPRESSION_THRESHOLD, True, i == 0, {}, False, tx.now,
                                                    tx.now))

        self._config_tx(work)

    def provider_views(self, env_keys: dict) -> list[ProviderConfig]:
        """``GET /providers``: one entry per supported provider (database rows, presets from the environment)."""
        providers, _ = self.configs()
        by_name = {p.provider: p for p in providers}
        out = []
        for name, display in PROVIDERS.items():
            row = by_name.get(name)
            if row is not None:
                out.append(ProviderConfig(row.id, name, row.display_name, row.enabled,
                                          bool(row.api_key) or bool(env_keys.get(name)) or name in KEYLESS_PROVIDERS,
                                          "database", row.base_url or None, _dt(row.created_at), _dt(row.updated_at)))
            elif env_keys.get(name):
                out.append(ProviderConfig(NIL_UUID, name, display, True, True, "env_preset"))
            else:
                out.append(ProviderConfig(NIL_UUID, name, display, False, name in KEYLESS_PROVIDERS, "supported"))
        return out

    def provider_view(self, row: ProviderRow, env_keys: dict) -> ProviderConfig:
        return ProviderConfig(row.id, row.provider, row.display_name, row.enabled,
                              bool(row.api_key) or bool(env_keys.get(row.provider))
                              or row.provider in KEYLESS_PROVIDERS, "database", row.base_url or None,
                              _dt(row.created_at), _dt(row.updated_at))


def _owned(tx: ChatTx, owner_id: str | None) -> ChatRow:
    row = tx.chat()
    if row is None or (owner_id is not None and row.owner_id != owner_id):
        raise ChatNotFound(tx.chat_id)
    return row


def _text_parts(texts: Sequence[Any]) -> tuple:
    return tuple(t if isinstance(t, MessagePart) else MessagePart.text_part(t) for t in texts)


def _unset_defaults(tx: ConfigTx, configs: list[ModelConfigRow]) -> None:
    for c in configs:
        if c.is_default:
            tx.save_model_config(evolve(c, is_default=False, updated_at=tx.now))


def _move_default(tx: ConfigTx, candidates: list[ModelConfigRow]) -> None:
    live = sorted((c for c in candidates if not c.deleted), key=lambda c: (c.provider, c.model, c.id))
    if live and not any(c.is_default for c in live):
        tx.save_model_config(evolve(live[0], is_default=True, updated_at=tx.now))


def tree_totals(rows: Sequence[ChatRow]) -> dict:
    """Each chat's usage plus its descendants' among ``rows``."""
    children: dict = {}
    for r in rows:
        if r.parent_id:
            children.setdefault(r.parent_id, []).append(r)
    totals: dict = {}
    for r in rows:
        if r.id in totals:
            continue
        stack = [(r, False)]
        while stack:
            node, expanded = stack.pop()
            if node.id in totals:
                continue
            kids = children.get(node.id, [])
            if expanded or not kids:
                totals[node.id] = node.usage + sum((totals[k.id] for k in kids), ChatUsage())
            else:
                stack.append((node, True))
                stack.extend((k, False) for k in kids if k.id not in totals)
    return totals
