"""Where the chats API keeps its chats: tables (or keys) of its own beside a convo store's, and the events hub.

:func:`open_chat_store` gives the backend that fits the server's store:

- :class:`~convo.MemoryStore`: an in-memory SQLite database (one process);
- :class:`~convo.SQLiteStore`: tables in the same file;
- :class:`~convo.PostgresStore`: tables in the same database and schema,
  acquisition with ``FOR UPDATE SKIP LOCKED``, events over ``LISTEN/NOTIFY``;
- :class:`~convo.RedisStore`: keys under the same prefix, events over pub/sub.

The operations (the state machine, the queue, leases) are written once in
:mod:`.base`; each backend module documents its layout.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ...errors import ArgumentTypeError
from .base import (
    ChatNotFound,
    ChatRow,
    ChatStore,
    ChatStoreError,
    ConfigConflict,
    ConfigNotFound,
    InvalidConfig,
    MessageNotFound,
    MessageRow,
    ModelConfigRow,
    NewMessage,
    NotUserMessage,
    ProviderRow,
    QueueFull,
    QueuedRow,
    Released,
)
from .events import ChatEvents, Event

__all__ = [
    "ChatEvents",
    "ChatNotFound",
    "ChatRow",
    "ChatStore",
    "ChatStoreError",
    "ConfigConflict",
    "ConfigNotFound",
    "Event",
    "InvalidConfig",
    "MessageNotFound",
    "MessageRow",
    "ModelConfigRow",
    "NewMessage",
    "NotUserMessage",
    "ProviderRow",
    "QueueFull",
    "QueuedRow",
    "Released",
    "open_chat_store",
]


_memory_lock = threading.Lock()
_memory: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def open_chat_store(store: Any, *, pool_size: int = 20) -> ChatStore:
    """The chat store living beside ``store`` (a convo store), made if missing.

    Raises:
        ArgumentTypeError: a store kind with no chat backend.
        StoreUnavailable: the database cannot be reached.
        IncompatibleStore: the chat layout is newer than this convo.
    """
    from ...stores import MemoryStore, SQLiteStore

    if isinstance(store, MemoryStore):
        from .sql import SQLiteChatStore

        # Chats of a memory store live as long as the store object: every opener shares them.
        with _memory_lock:
            found = _memory.get(store)
            if found is None or found.closed:
                found = _memory[store] = SQLiteChatStore(None)
            return found
    if isinstance(store, SQLiteStore):
        from .sql import SQLiteChatStore

        return SQLiteChatStore(store.path, timeout=store.timeout)
    kind = type(store).__name__
    if kind == "PostgresStore":
        from .sql import PostgresChatStore

        # The store's pool holds the connection settings (the DSN, with its password, is kept nowhere else).
        conninfo, kwargs = store.connection_settings()
        return PostgresChatStore(conninfo, kwargs, pool_size=pool_size, timeout=store.timeout)
    if kind == "RedisStore":
        from .redis import RedisChatStore

        return RedisChatStore(store.client, store.prefix, redact=store.redact)
    raise ArgumentTypeError(f"the chats API has no backend for a {kind}; use a SQLite, PostgreSQL, Redis or "
                            "memory store")
