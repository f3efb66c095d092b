"""Chats in Redis, beside a :class:`~convo.RedisStore`'s keys (on its connection pool).

Keys (chat layout version 1), under the store's prefix ``{p}``::

    {p}:chats:meta               hash    chat_schema_version -> "1"
    {p}:chat:{id}                hash    row (the chat as JSON), v (bumped by every change)
    {p}:chat:{id}:messages       hash    message id -> the message as JSON
    {p}:chat:{id}:queue          hash    queued id -> the queued message as JSON
    {p}:chats:owner:{owner}      set     the owner's chat ids
    {p}:chats:children:{id}      set     a chat's sub-chat ids
    {p}:chats:pending            zset    pending chat ids by updated_at
    {p}:chats:running            zset    running chat ids by heartbeat_at
    {p}:chats:seq:messages       string  the message id sequence (INCR); :seq:queue the queue's
    {p}:chats:providers          hash    provider id -> JSON;  {p}:chats:configs  model config id -> JSON
    {p}:chats:configs:v          string  bumped by every provider or config change
    {p}:chat-events              pub/sub channel of the replicas' events (see ``events.py``)

A chat's transaction is optimistic: ``WATCH`` its hash, read, then
``MULTI``/``EXEC`` the writes with ``v`` bumped, retried when another writer
changed the chat in between (every change to a chat's messages or queue
bumps its ``v``, so ``WATCH`` on the one key covers them). Acquisition
takes the oldest id of ``pending`` in such a transaction: of two replicas
racing for one chat, one commits and the other finds it running and takes
the next. Ids come from ``INCR`` (a retried transaction skips some: ids only
grow). Nothing here expires: the store's ``ttl`` is not applied to chats.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

from ...errors import IncompatibleStore, StoreError, StoreUnavailable
from ..chats_wire import ChatStatus, ChatUsage
from .base import (
    ChatRow,
    ChatStore,
    ChatTx,
    ConfigTx,
    MessageRow,
    ModelConfigRow,
    NewMessage,
    ProviderRow,
    QueuedRow,
    load_message_usage,
    load_parts,
)

__all__ = ["RedisChatStore"]

CHAT_SCHEMA_VERSION = 1


def _chat_json(row: ChatRow) -> str:
    return json.dumps({"id": row.id, "owner_id": row.owner_id, "title": row.title, "status": row.status.value,
                       "created_at": row.created_at, "updated_at": row.updated_at,
                       "last_model_config_id": row.last_model_config_id, "parent_id": row.parent_id,
                       "root_id": row.root_id, "workspace_id": row.workspace_id, "worker_id": row.worker_id,
                       "started_at": row.started_at, "heartbeat_at": row.heartbeat_at, "generation": row.generation,
                       "last_error": row.last_error, "usage": row.usage.to_wire()}, separators=(",", ":"))


def _chat_from(text: str | None) -> ChatRow | None:
    if text is None:
        return None
    d = json.loads(text)
    return ChatRow(d["id"], d["owner_id"], d["title"], d["status"], d["created_at"], d["updated_at"],
                   d.get("last_model_config_id"), d.get("parent_id"), d.get("root_id"), d.get("workspace_id"),
                   d.get("worker_id"), d.get("started_at"), d.get("heartbeat_at"), d.get("generation", 0),
                   d.get("last_error"), ChatUsage.from_wire(d.get("usage")))


def _message_json(m: MessageRow) -> str:
    return json.dumps({"id": m.id, "chat_id": m.chat_id, "created_at": m.created_at, "role": m.role,
                       "content": [p.to_wire() for p in m.content], "visibility": m.visibility,
                       "compressed": m.compressed, "model_config_id": m.model_config_id, "model": m.model,
                       "usage": m.usage.to_wire() if m.usage is not None else None},
                      separators=(",", ":"), ensure_ascii=False)


def _message_from(text: str) -> MessageRow:
    d = json.loads(text)
    return MessageRow(d["id"], d["chat_id"], d["created_at"], d["role"], load_parts(json.dumps(d["content"])),
                      d.get("visibility", "both"), bool(d.get("compressed")), d.get("model_config_id"), d.get("model"),
                      load_message_usage(json.dumps(d["usage"]) if d.get("usage") is not None else None))


def _queued_json(q: QueuedRow) -> str:
    return json.dumps({"id": q.id, "chat_id": q.chat_id, "content": [p.to_wire() for p in q.content],
                       "created_at": q.created_at}, separators=(",", ":"), ensure_ascii=False)


def _queued_from(text: str) -> QueuedRow:
    d = json.loads(text)
    return QueuedRow(d["id"], d["chat_id"], load_parts(json.dumps(d["content"])), d["created_at"])


def _provider_json(p: ProviderRow) -> str:
    return json.dumps({"id": p.id, "provider": p.provider, "display_name": p.display_name, "api_key": p.api_key,
                       "base_url": p.base_url, "enabled": p.enabled, "created_at": p.created_at,
                       "updated_at": p.updated_at})


def _provider_from(text: str) -> ProviderRow:
    d = json.loads(text)
    return ProviderRow(d["id"], d["provider"], d["display_name"], d["api_key"], d["base_url"], d["enabled"],
                       d["created_at"], d["updated_at"])


def _config_json(c: ModelConfigRow) -> str:
    return json.dumps({"id": c.id, "provider": c.provider, "model": c.model, "display_name": c.display_name,
                       "context_limit": c.context_limit, "compression_threshold": c.compression_threshold,
                       "enabled": c.enabled, "is_default": c.is_default, "options": c.options, "deleted": c.deleted,
                       "created_at": c.created_at, "updated_at": c.updated_at})


def _config_from(text: str) -> ModelConfigRow:
    d = json.loads(text)
    return ModelConfigRow(d["id"], d["provider"], d["model"], d["display_name"], d["context_limit"],
                          d["compression_threshold"], d["enabled"], d["is_default"], d.get("options") or {},
                          d["deleted"], d["created_at"], d["updated_at"])


class _Conflict(Exception):
    pass


class _RedisTx(ChatTx, ConfigTx):
    """Reads go to the server at once (the key is WATCHed); writes wait in ``ops`` for MULTI/EXEC."""

    def __init__(self, store: "RedisChatStore", pipe: Any, chat_id: str | None, now: float) -> None:
        self.s = store
        self.pipe = pipe
        self.chat_id = chat_id
        self.now = now
        self.ops: list[Callable[[Any], None]] = []
        self._row: ChatRow | None = None
        self._before: ChatRow | None = None

    # -- ChatTx --

    def chat(self) -> ChatRow | None:
        return self._row

    def messages(self) -> list[MessageRow]:
        raw = self.pipe.hgetall(self.s.k(f"chat:{self.chat_id}:messages"))
        return sorted((_message_from(v) for v in raw.values()), key=lambda m: m.id)

    def queue(self) -> list[QueuedRow]:
        raw = self.pipe.hgetall(self.s.k(f"chat:{self.chat_id}:queue"))
        return sorted((_queued_from(v) for v in raw.values()), key=lambda q: q.id)

    def save_chat(self, row: ChatRow) -> None:
        self._row = row
        self.ops.append(lambda p, row=row: self.s._index(p, row))

    def add_message(self, m: NewMessage) -> MessageRow:
        mid = int(self.s.r.incr(self.s.k("chats:seq:messages")))
        row = MessageRow(mid, self.chat_id, self.now, m.role, m.content, m.visibility, m.compressed,
                         m.model_config_id, m.model, m.usage)
        self.ops.append(lambda p: p.hset(self.s.k(f"chat:{self.chat_id}:messages"), str(mid), _message_json(row)))
        return row

    def set_content(self, row: MessageRow, content: tuple) -> None:
        from attrs import evolve

        new = evolve(row, content=content, model=None)
        self.ops.append(lambda p: p.hset(self.s.k(f"chat:{self.chat_id}:messages"), str(row.id), _message_json(new)))

    def drop_messages_after(self, message_id: int) -> None:
        key = self.s.k(f"chat:{self.chat_id}:messages")
        doomed = [f for f in self.pipe.hkeys(key) if int(f) > message_id]
        if doomed:
            self.ops.append(lambda p: p.hdel(key, *doomed))

    def enqueue(self, content: tuple) -> QueuedRow:
        qid = int(self.s.r.incr(self.s.k("chats:seq:queue")))
        row = QueuedRow(qid, self.chat_id, content, self.now)
        self.ops.append(lambda p: p.hset(self.s.k(f"chat:{self.chat_id}:queue"), str(qid), _queued_json(row)))
        return row

    def drop_queued(self, ids: Sequence[int]) -> None:
        if ids:
            fields = [str(i) for i in ids]
            self.ops.append(lambda p: p.hdel(self.s.k(f"chat:{self.chat_id}:queue"), *fields))

    def delete_chat(self) -> None:
        row = self._row
        self._row = None
        if row is not None:
            self.ops.append(lambda p: self.s._unindex(p, row))

    # -- ConfigTx --

    def providers(self) -> list[ProviderRow]:
        return [_provider_from(v) for v in self.pipe.hgetall(self.s.k("chats:providers")).values()]

    def model_configs(self) -> list[ModelConfigRow]:
        return [_config_from(v) for v in self.pipe.hgetall(self.s.k("chats:configs")).values()]

    def save_provider(self, row: ProviderRow) -> None:
        self.ops.append(lambda p: p.hset(self.s.k("chats:providers"), row.id, _provider_json(row)))

    def delete_provider(self, provider_id: str) -> None:
        self.ops.append(lambda p: p.hdel(self.s.k("chats:providers"), provider_id))

    def save_model_config(self, row: ModelConfigRow) -> None:
        self.ops.append(lambda p: p.hset(self.s.k("chats:configs"), row.id, _config_json(row)))

    def delete_model_config(self, config_id: str) -> None:
        self.ops.append(lambda p: p.hdel(self.s.k("chats:configs"), config_id))


class RedisChatStore(ChatStore):
    """Chats in Redis on the connection pool of a :class:`~convo.RedisStore` (see the module docstring).

    Thread-safe, and safe for several replicas on one server.
    """

    def __init__(self, client: Any, prefix: str, *, redact: Callable[[str], str] = lambda text: text) -> None:
        super().__init__()
        import redis

        self.r = client
        self.prefix = prefix
        self._p = prefix + ":"
        self._redact = redact
        self._watch_error = redis.exceptions.WatchError
        self._unavailable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                             redis.exceptions.ReadOnlyError)
        self._redis_error = redis.exceptions.RedisError
        self._call(self._init)

    def __repr__(self) -> str:
        return f"RedisChatStore(prefix={self.prefix!r})"

    def k(self, name: str) -> str:
        return self._p + name

    def _scrub(self, exc: BaseException) -> str:
        return self._redact(str(exc) or type(exc).__name__)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._unavailable as exc:
            raise StoreUnavailable(f"the Redis chat store is unavailable: {self._scrub(exc)}") from None
        except self._redis_error as exc:
            raise StoreError(f"the Redis chat store failed: {type(exc).__name__}: {self._scrub(exc)}") from None

    def _init(self) -> None:
        meta = self.k("chats:meta")
        self.r.hsetnx(meta, "chat_schema_version", str(CHAT_SCHEMA_VERSION))
        found = int(self.r.hget(meta, "chat_schema_version"))
        if found > CHAT_SCHEMA_VERSION:
            raise IncompatibleStore(f"the chat keys under {self.prefix!r} were laid out by a newer convo (version "
                                    f"{found}; this convo knows up to {CHAT_SCHEMA_VERSION}); upgrade convo")

    # -- indexes kept by every chat write --

    def _index(self, p: Any, row: ChatRow) -> None:
        key = self.k(f"chat:{row.id}")
        p.hset(key, "row", _chat_json(row))
        p.hincrby(key, "v", 1)
        p.sadd(self.k(f"chats:owner:{row.owner_id}"), row.id)
        if row.parent_id:
            p.sadd(self.k(f"chats:children:{row.parent_id}"), row.id)
        if row.status == ChatStatus.PENDING:
            p.zadd(self.k("chats:pending"), {row.id: row.updated_at})
        else:
            p.zrem(self.k("chats:pending"), row.id)
        if row.status == ChatStatus.RUNNING:
            p.zadd(self.k("chats:running"), {row.id: row.heartbeat_at or 0})
        else:
            p.zrem(self.k("chats:running"), row.id)

    def _unindex(self, p: Any, row: ChatRow) -> None:
        p.delete(self.k(f"chat:{row.id}"), self.k(f"chat:{row.id}:messages"), self.k(f"chat:{row.id}:queue"),
                 self.k(f"chats:children:{row.id}"))
        p.srem(self.k(f"chats:owner:{row.owner_id}"), row.id)
        if row.parent_id:
            p.srem(self.k(f"chats:children:{row.parent_id}"), row.id)
        p.zrem(self.k("chats:pending"), row.id)
        p.zrem(self.k("chats:running"), row.id)

    # -- transactions --

    def _transact(self, watched: str, begin: Callable[[_RedisTx], None], fn: Callable, chat_id: str | None,
                  bump: Callable[[Any], None] | None = None) -> Any:
        def attempt():
            for _ in range(1000):
                with self.r.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(watched)
                        tx = _RedisTx(self, pipe, chat_id, self.clock())
                        begin(tx)
                        result = fn(tx)
                        pipe.multi()
                        for op in tx.ops:
                            op(pipe)
                        if bump is not None:
                            bump(pipe)
                        pipe.execute()
                        return result
                    except self._watch_error:
                        time.sleep(0.001)
                        continue
            raise StoreError(f"the Redis chat store could not commit a change to {watched!r}: too much contention")

        return self._call(attempt)

    def _chat_tx(self, chat_id: str, fn: Callable[[ChatTx], Any]) -> Any:
        key = self.k(f"chat:{chat_id}")

        def begin(tx: _RedisTx) -> None:
            tx._row = tx._before = _chat_from(tx.pipe.hget(key, "row"))

        # Every operation that changes a chat's messages or queue saves its row too, which bumps ``v``.
        return self._transact(key, begin, fn, chat_id)

    def _config_tx(self, fn: Callable[[ConfigTx], Any]) -> Any:
        key = self.k("chats:configs:v")
        return self._transact(key, lambda tx: None, fn, None, bump=lambda p: p.incr(key))

    # -- reads --

    def _chat(self, chat_id: str) -> ChatRow | None:
        return self._call(lambda: _chat_from(self.r.hget(self.k(f"chat:{chat_id}"), "row")))

    def _rows(self, ids: Sequence[str]) -> list[ChatRow]:
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(self.k(f"chat:{i}"), "row")
        return [row for row in (_chat_from(t) for t in pipe.execute()) if row is not None]

    def _owner_chats(self, owner_id: str) -> list[ChatRow]:
        return self._call(lambda: self._rows(sorted(self.r.smembers(self.k(f"chats:owner:{owner_id}")))))

    def _children(self, chat_id: str) -> list[ChatRow]:
        rows = self._call(lambda: self._rows(sorted(self.r.smembers(self.k(f"chats:children:{chat_id}")))))
        return sorted(rows, key=lambda r: (r.created_at, r.id))

    def _snapshot(self, chat_id: str):
        def read():
            pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: the three keys as of one moment
            pipe.hget(self.k(f"chat:{chat_id}"), "row")
            pipe.hgetall(self.k(f"chat:{chat_id}:messages"))
            pipe.hgetall(self.k(f"chat:{chat_id}:queue"))
            return pipe.execute()

        row, messages, queue = self._call(read)
        chat = _chat_from(row)
        if chat is None:
            return None, [], []
        return (chat, sorted((_message_from(v) for v in messages.values()), key=lambda m: m.id),
                sorted((_queued_from(v) for v in queue.values()), key=lambda q: q.id))

    def _read_configs(self):
        def read():
            pipe = self.r.pipeline(transaction=True)
            pipe.hgetall(self.k("chats:providers"))
            pipe.hgetall(self.k("chats:configs"))
            return pipe.execute()

        providers, configs = self._call(read)
        return [_provider_from(v) for v in providers.values()], [_config_from(v) for v in configs.values()]

    # -- leases --

    def _acquire(self, worker_id: str, now: float) -> ChatRow | None:
        from attrs import evolve

        for _ in range(100):
            ids = self._call(lambda: self.r.zrange(self.k("chats:pending"), 0, 0))
            if not ids:
                return None
            chat_id = ids[0]

            def take(tx: ChatTx):
                row = tx.chat()
                if row is None or row.status != ChatStatus.PENDING:
                    if row is None:
                        tx.ops.append(lambda p: p.zrem(self.k("chats:pending"), chat_id))  # type: ignore[attr-defined]
                    return None
                row = evolve(row, status=ChatStatus.RUNNING, worker_id=worker_id, started_at=tx.now,
                             heartbeat_at=tx.now, updated_at=tx.now, generation=row.generation + 1)
                tx.save_chat(row)
                return row

            got = self._chat_tx(chat_id, take)
            if got is not None:
                return got
        return None

    def _heartbeat(self, worker_id: str, chat_ids: Sequence[str], now: float) -> set:
        from attrs import evolve

        alive = set()
        for chat_id in chat_ids:
            def beat(tx: ChatTx):
                row = tx.chat()
                if row is None or row.status != ChatStatus.RUNNING or row.worker_id != worker_id:
                    return False
                tx.save_chat(evolve(row, heartbeat_at=tx.now))
                return True

            if self._chat_tx(chat_id, beat):
                alive.add(chat_id)
        return alive

    def _stale(self, cutoff: float) -> list[str]:
        return list(self._call(lambda: self.r.zrangebyscore(self.k("chats:running"), "-inf", f"({cutoff!r}")))

    def bridge(self) -> Any:
        from .events import RedisBridge

        return RedisBridge(self)
