"""Stores: conversations that outlive the process.

A :class:`Store` keeps conversations (their history, settings, usage and
place in the sub-convo tree) and a little bookkeeping beside them. Four
backends pass one conformance suite:

- :class:`MemoryStore`: in-process, for tests and notebooks.
- :class:`SQLiteStore`: one file, the standard library only; the default.
- :class:`RedisStore`: Redis (extra ``redis``), with an optional time-to-live.
- :class:`PostgresStore`: PostgreSQL (extra ``postgres``), for several
  machines sharing conversations.

:func:`open_store` maps a URL to one of them. Use a store with
``Convo(store=...)`` (every successful turn is saved before the send
returns) and :func:`convo.resume`.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from ..messages import Message
from ..usage import CumulativeUsage
from .base import SCHEMA_VERSION, BaseStore, ConversationInfo, StoredConversation
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "BaseStore",
    "ConversationInfo",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoredConversation",
    "open_store",
]

_LAZY = {"RedisStore": ".redis", "PostgresStore": ".postgres"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convo.stores' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


@runtime_checkable
class Store(Protocol):
    """What a Convo needs from a store; every backend here implements it (see :class:`BaseStore`).

    Every method is thread-safe, and atomic across processes sharing the store.
    """

    def write(self, id: str, *, expected_version: int, parent_id: str | None, root_id: str, state: dict,
              usage: CumulativeUsage, keep: int, append: Iterable[Message] = ()) -> int:
        """Change one conversation atomically (keep ``keep`` messages, append, store state); the new version."""
        ...

    def load(self, id: str) -> StoredConversation:
        """One conversation with its messages."""
        ...

    def list(self, *, root: str | None = None, parent: str | None = None, roots_only: bool = False,
             limit: int | None = None) -> list[ConversationInfo]:
        """Conversations without their messages, most recently updated first."""
        ...

    def subtree_usage(self, id: str) -> CumulativeUsage:
        """The usage of everything below a conversation."""
        ...

    def delete(self, id: str) -> None:
        """Remove a conversation and its subtree."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def open_store(url: str, **options: Any) -> BaseStore:
    """The store a URL names.

    - ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db``
      (as SQLAlchemy writes them; a bare path ending in ``.db`` or
      ``.sqlite`` works too);
    - ``redis://[:password@]host:port/db`` (and ``rediss://``), with
      ``?ttl=SECONDS`` and ``?prefix=NAME``;
    - ``postgresql://user:password@host:port/dbname`` (or ``postgres://``);
    - ``memory://`` for a :class:`MemoryStore`.

    ``options`` go to the store's constructor.

    Raises:
        ConfigurationError: the URL names no store convo knows.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"a store URL is a non-empty str, got {url!r}")
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return SQLiteStore(url, **options)
        raise ConfigurationError(f"not a store URL: {url!r} (expected sqlite:///file.db, redis://..., "
                                 "postgresql://... or memory://)")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path in ("/", "/:memory:"):
            raise ConfigurationError(f"a SQLite URL names a file: sqlite:///relative.db or sqlite:////abs.db, "
                                     f"got {url!r}")
        return SQLiteStore(path[1:], **options)  # "/rel.db" is relative, "//abs.db" absolute
    if scheme in ("redis", "rediss", "unix"):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        for name in ("ttl", "prefix"):
            if name in query and name not in options:
                value = query[name][-1]
                options[name] = int(value) if name == "ttl" else value
        clean = parts._replace(query="&".join(f"{k}={v[-1]}" for k, v in query.items()
                                              if k not in ("ttl", "prefix"))).geturl()
        from .redis import RedisStore

        return RedisStore(clean, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ConfigurationError(f"no store for the URL scheme {scheme!r} (expected sqlite, redis, postgresql or memory)")

