"""The Redis store: conversations in a Redis server, on the official ``redis`` client (extra ``redis``).

Layout (schema version 1), every key under ``prefix`` (default ``convo``)::

    {prefix}:meta                 hash    schema_version -> "1"
    {prefix}:conversation:{id}    hash    root, parent (absent for a root), created, updated,
                                          version, state, usage (JSON texts), token
    {prefix}:messages:{id}        list    the messages' JSON texts, in order
    {prefix}:tree:{root}          set     the ids of every conversation in that root's tree
    {prefix}:conversations        zset    every id, scored by the server's clock at its last write
    {prefix}:kv:{namespace}:{key} string  a bookkeeping value or a counter (JSON text); ':' and '%'
                                          in the namespace are written %3A and %25

Times are Unix seconds (UTC), written by the client as in every store. A
turn is one Lua script (``EVALSHA``, which Redis runs atomically): check
the version, ``LTRIM`` the messages past ``keep`` (none, for a plain turn),
``RPUSH`` the new ones, update the conversation's hash and the two
indexes. Its cost does not depend on how long the history is. ``token`` is
a random id of the write that last changed the conversation: the client
retries a command whose reply was lost, and a retried write that had in
fact been applied recognises itself instead of reporting a conflict.
``claim`` is ``SET NX``; a counter is a ``WATCH``/``MULTI`` transaction
(exact decimals need Python; Lua has only doubles), retried when another
writer got in between.

``ttl`` (seconds): each write sets an expiry of ``ttl`` on the
conversation's keys, on its ancestors' (a sub-convo never outlives its
parent) and on its tree's index, and bookkeeping values and counters
expire ``ttl`` seconds after they were last set. So a conversation that is
not written for ``ttl`` seconds disappears whole: its messages, state and
usage together (a parent's listing then no longer counts that sub-convo's
cost). Without ``ttl`` nothing expires. Redis must not evict keys
(``maxmemory-policy noeviction``, its default): an eviction policy could
remove part of a conversation under memory pressure.

Durability is whatever the server is configured for (RDB snapshots, AOF
with ``appendfsync everysec`` or ``always``): a write acknowledged by a
server that crashes before persisting it is lost.

One Redis server (or a primary with replicas behind Sentinel), not Redis
Cluster: the script touches keys it computes from the data (the tree's,
the ancestors'). Several prefixes share one database without seeing each
other, as long as none is another followed by ``:`` (``app`` and
``app:test`` would overlap).

Migrating: the schema version is in ``{prefix}:meta``. A newer convo that
changes the layout migrates older data when it opens it; an older convo
refuses a newer layout with :class:`~convo.IncompatibleStore`.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigurationError, IncompatibleStore, StoreError, StoreUnavailable
from .base import SCHEMA_VERSION, BaseStore, RawRecord, RawRow, RawWrite

__all__ = ["RedisStore"]

# KEYS: conversation hash, messages list, all-ids zset.
# ARGV: id, expected version, has parent ("1"/"0"), parent, root, state, usage, keep, at, ttl, token,
#       key prefix ("{prefix}:"), then the messages to append.
# Returns the new version, or on a version mismatch -found (0: no such conversation).
# The parent and root are taken from the caller when the conversation is created, and
# from the conversation's hash afterwards.
_WRITE = """
local conv, msgs, all = KEYS[1], KEYS[2], KEYS[3]
local expected = tonumber(ARGV[2])
local current = redis.call('HMGET', conv, 'version', 'token')
local found = tonumber(current[1]) or 0
if found ~= expected then
  if found == expected + 1 and current[2] == ARGV[11] then
    return found  -- this very write, applied once already: its reply was lost and the client retried
  end
  return -found
end
local keep = tonumber(ARGV[8])
local count = redis.call('LLEN', msgs)
if keep == 0 and count > 0 then
  redis.call('DEL', msgs)
elseif keep < count then
  redis.call('LTRIM', msgs, 0, keep - 1)
end
for i = 13, #ARGV, 500 do
  redis.call('RPUSH', msgs, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if found == 0 then
  redis.call('HSET', conv, 'root', ARGV[5], 'created', ARGV[9])
  if ARGV[3] == '1' then
    redis.call('HSET', conv, 'parent', ARGV[4])
  end
end
redis.call('HSET', conv, 'updated', ARGV[9], 'version', found + 1, 'state', ARGV[6], 'usage', ARGV[7],
           'token', ARGV[11])
local tree = ARGV[12] .. 'tree:' .. redis.call('HGET', conv, 'root')
redis.call('SADD', tree, ARGV[1])
local seconds = tonumber(redis.call('TIME')[1])
redis.call('ZADD', all, seconds, ARGV[1])
local ttl = tonumber(ARGV[10])
if ttl > 0 then
  redis.call('EXPIRE', conv, ttl)
  redis.call('EXPIRE', msgs, ttl)
  redis.call('EXPIRE', tree, ttl)
  redis.call('ZREMRANGEBYSCORE', all, '-inf', '(' .. (seconds - ttl))
  local parent = redis.call('HGET', conv, 'parent')
  local depth = 0
  while parent and depth < 10000 do
    local key = ARGV[12] .. 'conversation:' .. parent
    if redis.call('EXPIRE', key, ttl) == 0 then break end
    redis.call('EXPIRE', ARGV[12] .. 'messages:' .. parent, ttl)
    parent = redis.call('HGET', key, 'parent')
    depth = depth + 1
  end
end
return found + 1
"""

# ARGV: key prefix, then the ids to delete.
_DELETE = """
for i = 2, #ARGV do
  local id = ARGV[i]
  local conv = ARGV[1] .. 'conversation:' .. id
  local root = redis.call('HGET', conv, 'root')
  if root then
    redis.call('SREM', ARGV[1] .. 'tree:' .. root, id)
  end
  redis.call('DEL', conv, ARGV[1] .. 'messages:' .. id)
  redis.call('ZREM', ARGV[1] .. 'conversations', id)
end
return 0
"""

_ROW_FIELDS = ("parent", "root", "created", "updated", "version", "usage")


def _safe_url(url: str) -> str:
    """The URL without its password (in the authority or the query)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return parts._replace(netloc=netloc, query=query).geturl()
    except ValueError:
        return "<a Redis URL that does not parse>"


class RedisStore(BaseStore):
    """Conversations in a Redis server (see the module docstring for the keys and ``ttl``).

    Args:
        url: ``redis://[[user]:password@]host:port/db``, ``rediss://`` for
            TLS, or ``unix:///path/to/socket?db=0``; redis-py's URL options
            work too.
        ttl: seconds after its last write at which a conversation expires
            (None: never).
        prefix: the first part of every key; stores with different
            prefixes share a database without seeing each other.
        timeout: seconds to wait for the server to connect and to answer
            one command before :class:`~convo.StoreUnavailable`.

    Opening connects to the server (to read the layout version), so a
    server that is down makes the constructor raise
    :class:`~convo.StoreUnavailable`. A command that cannot reach the server
    is retried three times within about half a second, then raises
    :class:`~convo.StoreUnavailable`; once the server is back, the next
    call reconnects. Thread-safe (redis-py's connection pool), and safe for
    several processes and machines on one server.

    Raises:
        ConfigurationError: the ``redis`` package is missing, or an
            argument is invalid.
        IncompatibleStore: the data was laid out by a newer convo.
        StoreUnavailable: the server cannot be reached.
    """

    scheme = "redis"

    def __init__(self, url: str, *, ttl: int | None = None, prefix: str = "convo", timeout: float = 5.0) -> None:
        super().__init__()
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigurationError(f"RedisStore needs the redis package ({exc}); "
                                     "install it with: pip install 'convo[redis]'") from None
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise ConfigurationError(f"ttl is a number of seconds > 0 (an int) or None, got {ttl!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix is a non-empty str, got {prefix!r}")
        if not isinstance(url, str):
            raise ConfigurationError(f"a Redis URL is a str, got {type(url).__name__}")
        self.ttl = ttl
        self.prefix = prefix
        self.timeout = timeout
        self._url = _safe_url(url)
        self._secrets = _url_secrets(url)
        # Down, restarting (LOADING), timing out, or a replica after a failover (READONLY).
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ReadOnlyError)
        self._redis_error = redis.exceptions.RedisError
        logging.getLogger("redis").addHandler(logging.NullHandler())  # a library never prints
        try:
            self._redis = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
                socket_keepalive=True, health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), 3))
        except (ValueError, redis.exceptions.RedisError) as exc:
            raise ConfigurationError(f"not a Redis URL {self._url!r}: {self._scrub(exc)}") from None
        self._p = prefix + ":"
        self._write_script = self._redis.register_script(_WRITE)
        self._delete_script = self._redis.register_script(_DELETE)
        try:
            self._init_schema()
        except BaseException:
            self._redis.close()
            raise

    def __repr__(self) -> str:
        ttl = f", ttl={self.ttl}" if self.ttl is not None else ""
        return f"RedisStore({self._url!r}, prefix={self.prefix!r}{ttl})"

    # --- plumbing -----------------------------------------------------------------------

    # --- for modules that keep keys of their own under this prefix (the chats API) ------------

    @property
    def client(self) -> Any:
        """The ``redis.Redis`` client this store uses (thread-safe; its own connection pool)."""
        return self._redis

    def redact(self, text: str) -> str:
        """``text`` with the URL's password (and user) blanked, for errors and logs."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, fn, *args: Any) -> Any:
        """Run one client call; the client's errors become store errors (never with the URL's password)."""
        try:
            return fn(*args)
        except self._errors as exc:
            raise StoreUnavailable(f"the Redis store at {self._url} is unavailable: {self._scrub(exc)}") from None
        except self._redis_error as exc:
            raise StoreError(f"the Redis store at {self._url} failed: {type(exc).__name__}: "
                             f"{self._scrub(exc)}") from None

    def _key(self, kind: str, name: str) -> str:
        return f"{self._p}{kind}:{name}"

    def _init_schema(self) -> None:
        meta = self._p + "meta"

        def check():
            self._redis.hsetnx(meta, "schema_version", str(SCHEMA_VERSION))
            return self._redis.hget(meta, "schema_version")

        found = self._call(check)
        try:
            version = int(found)
        except (TypeError, ValueError):
            raise IncompatibleStore(f"the Redis store at {self._url} (prefix {self.prefix!r}) has an unreadable "
                                    f"schema version {found!r}") from None
        if version > SCHEMA_VERSION:
            raise IncompatibleStore(f"the Redis store at {self._url} (prefix {self.prefix!r}) was laid out by a "
                                    f"newer convo (schema version {version}; this convo knows up to "
                                    f"{SCHEMA_VERSION}); upgrade convo")

    def _close(self) -> None:
        try:
            self._redis.close()
        except self._redis_error:
            pass

    # --- primitives --------------------------------------------------------------------

    def _write(self, write: RawWrite) -> int:
        keys = [self._key("conversation", write.id), self._key("messages", write.id), self._p + "conversations"]
        args = [write.id, write.expected_version, "0" if write.parent_id is None else "1", write.parent_id or "",
                write.root_id, write.state, write.usage, write.keep, repr(write.at), self.ttl or 0,
                uuid.uuid4().hex, self._p, *write.append]
        result = int(self._call(self._write_script, keys, args))
        if result <= 0:
            raise self._mismatch(write.id, write.expected_version, -result or None)
        return result

    def _read(self, id: str) -> RawRecord | None:
        def read():
            pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: the hash and the list from one moment
            pipe.hmget(self._key("conversation", id), "parent", "root", "created", "updated", "version", "state")
            pipe.lrange(self._key("messages", id), 0, -1)
            return pipe.execute()

        (parent, root, created, updated, version, state), messages = self._call(read)
        if version is None:
            return None
        return RawRecord(id, parent, root, float(created), float(updated), int(version), state, tuple(messages))

    def _rows(self, root: str | None) -> list[RawRow]:
        def rows():
            ids = (self._redis.zrange(self._p + "conversations", 0, -1) if root is None
                   else sorted(self._redis.smembers(self._key("tree", root))))
            pipe = self._redis.pipeline(transaction=True)
            for i in ids:
                pipe.hmget(self._key("conversation", i), *_ROW_FIELDS)
                pipe.llen(self._key("messages", i))
            return ids, pipe.execute() if ids else []

        ids, replies = self._call(rows)
        out = []
        for n, i in enumerate(ids):
            (parent, root_id, created, updated, version, usage), count = replies[2 * n], replies[2 * n + 1]
            if version is None:
                continue  # expired (ttl) or deleted since the index was read
            out.append(RawRow(i, parent, root_id, float(created), float(updated), int(version), count, usage))
        return out

    def _delete(self, ids: list[str]) -> None:
        self._call(self._delete_script, [], [self._p, *ids])

    def _kv_key(self, namespace: str, key: str) -> str:
        return f"{self._p}kv:{namespace.replace('%', '%25').replace(':', '%3A')}:{key}"

    def _kv(self, op: str, namespace: str, key: str, value: str | None) -> Any:
        k = self._kv_key(namespace, key)
        if op == "get":
            return self._call(self._redis.get, k)
        if op == "put":
            self._call(lambda: self._redis.set(k, value, ex=self.ttl))
        elif op == "claim":
            return bool(self._call(lambda: self._redis.set(k, value, nx=True, ex=self.ttl)))
        elif op == "delete":
            self._call(self._redis.delete, k)
        return None

    def _counter(self, namespace: str, key: str, delta: str, limit: str | None) -> tuple[bool, str]:
        # Exact decimal arithmetic needs Python (Lua has only doubles): an optimistic
        # WATCH/MULTI transaction, which redis-py retries when another writer got in between.
        k = self._kv_key(namespace, key)

        def step(pipe):
            current = pipe.get(k)
            added, value = self._counter_step(None if current is None else json.loads(current), delta, limit)
            pipe.multi()
            if added:
                pipe.set(k, json.dumps(value), ex=self.ttl)
            return added, value

        return self._call(lambda: self._redis.transaction(step, k, value_from_callable=True))


def _url_secrets(url: str) -> list[str]:
    """The password(s) a Redis URL carries, as written and decoded, to keep out of messages."""
    found = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    except ValueError:
        pass
    return sorted({s for s in found if s}, key=len, reverse=True)
