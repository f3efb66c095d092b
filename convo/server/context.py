"""What every connection of one server shares: the store, the models, the server's tools, the limits.

A :class:`ServerContext` is made once per app by :func:`convo.server.create_app`
and handed to each API module (the Chucky endpoint now; other APIs later).
It holds no per-connection state except the per-user session slots.

Thread-safe: services are made once per model under a lock, slots are
counted under a lock, and everything else is immutable after construction.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from attrs import field, frozen

from .._workers import Workers
from ..errors import ArgumentTypeError, ConfigurationError
from ..tools import Tool
from .auth import Principal, check_secret, principal_from_token
from .chucky import MAX_FRAME_BYTES

__all__ = ["ServerContext", "ServerSettings", "UserSlots"]


def _positive(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{attribute.name} must be a positive number, got {value!r}")


@frozen
class ServerSettings:
    """The knobs of a server (every one has a default).

    Args:
        models: the model names sessions may ask for; the first is the
            default. None: any name the service factory accepts, and the
            service's own model by default.
        project_id: when set, tokens must have been issued for it (``iss``).
        max_sessions_per_user: open sessions one user may have on one
            server process (more get ``CONCURRENCY_LIMIT``).
        tool_timeout: seconds a client has to answer a ``tool_call``.
        max_turns: model replies per turn unless the client or token says fewer.
        max_frame_bytes: the largest frame accepted from, and sent to, a client.
        max_queued_turns: prompts a session holds while a turn runs.
        max_outbox_frames: frames waiting for a slow client before it is
            disconnected (so it cannot make the server hold its output forever).
    """

    models: tuple | None = field(default=None, converter=lambda v: tuple(v) if v is not None else None)
    project_id: str | None = None
    max_sessions_per_user: int = field(default=10, validator=_positive)
    tool_timeout: float = field(default=120.0, validator=_positive)
    max_turns: int = field(default=25, validator=_positive)
    max_frame_bytes: int = field(default=MAX_FRAME_BYTES, validator=_positive)
    max_queued_turns: int = field(default=8, validator=_positive)
    max_outbox_frames: int = field(default=5000, validator=_positive)


class UserSlots:
    """Open sessions per user, with a cap. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        with self._lock:
            n = self._open.get(key, 0)
            if n >= self.limit:
                return False
            self._open[key] = n + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def count(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class ServerContext:
    """The shared parts of one server: store, services by model, server-side tools, auth and limits.

    Args:
        service: a :class:`~convo.Service` every session uses, or a callable
            ``model_name -> Service`` (called once per model), or None for
            :func:`convo.default_service` by model name.
        store: the store sessions and budgets live in.
        tools: server-side :class:`~convo.Tool` objects sessions may offer.
        secret: the token signing key (kept private: never in a repr or log).
        settings: :class:`ServerSettings`.
    """

    def __init__(self, *, service: Any, store: Any, tools: Iterable[Tool], secret: str | bytes,
                 settings: ServerSettings) -> None:
        self._secret = check_secret(secret)
        if store is None or not callable(getattr(store, "counter_add", None)):
            raise ArgumentTypeError("store must be a convo store (convo.open_store(url)) with counters")
        self.store = store
        self.settings = settings
        tools = tuple(tools)
        for t in tools:
            if not isinstance(t, Tool):
                raise ArgumentTypeError(f"tools must be convo.Tool objects (use @convo.tool), got {type(t).__name__}")
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ConfigurationError("two server tools have the same name")
        self._lock = threading.Lock()
        self._services: dict[str | None, Any] = {}
        self._factory: Callable[[str | None], Any]
        models = settings.models
        if service is None:
            from ..providers.detect import default_service

            self._factory = default_service
        elif callable(getattr(service, "do", None)):
            self._factory = lambda model: service
            if models is None and getattr(service, "model", None):
                models = (service.model,)
        elif callable(service):
            self._factory = service
        else:
            raise ArgumentTypeError(f"service must be a convo Service, a callable model -> Service, or None; "
                                    f"got {type(service).__name__}")
        self.models: tuple | None = models
        self._owns_services = not callable(getattr(service, "do", None))
        self.slots = UserSlots(settings.max_sessions_per_user)
        self.workers = Workers(idle_timeout=30.0, name="convo-session")
        # Short blocking calls made for the event loop (a budget check on connect, a session read).
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="convo-io")

    def __repr__(self) -> str:
        return f"<ServerContext store={type(self.store).__name__} models={self.models}>"

    @property
    def default_model(self) -> str | None:
        return self.models[0] if self.models else None

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def service_for(self, model: str | None) -> Any:
        """The service for ``model`` (made once, then shared: services are thread-safe).

        Raises:
            ConfigurationError: the factory cannot make one.
        """
        with self._lock:
            service = self._services.get(model)
        if service is not None:
            return service
        made = self._factory(model)
        with self._lock:
            return self._services.setdefault(model, made)

    def principal(self, token: Any) -> Principal:
        """Who ``token`` speaks for.

        Raises:
            AuthError: the token is missing or refused.
        """
        return principal_from_token(token, self._secret, project_id=self.settings.project_id)

    def close(self) -> None:
        """Close the services this context made (not a service or store it was given)."""
        self.io.shutdown(wait=False)
        with self._lock:
            services = list(self._services.values())
            self._services.clear()
        for service in {id(s): s for s in services}.values():
            close = getattr(service, "close", None)
            if callable(close) and self._owns_services:
                try:
                    close()
                except Exception:  # closing must not fail shutdown
                    pass
