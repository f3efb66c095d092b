"""The ASGI application: one Starlette app with every API's routes mounted, WebSocket and HTTP on one port.

Each API is a module that exports ``routes()`` (the Chucky API is
:mod:`convo.server.chucky_api`); :func:`create_app` builds the shared
:class:`~convo.server.context.ServerContext`, puts it on ``app.state.convo``
and mounts every API listed in :data:`API_MODULES`. Adding an API is adding
its module there. Authorisation for every API is :mod:`convo.server.auth`.

The app is asyncio (Starlette, run by uvicorn); conversations never run on
its event loop: each session's work runs on worker threads
(:mod:`convo.server.sessions`), and the loop only moves frames.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import ArgumentTypeError
from ..tools import Tool
from .chucky import MAX_FRAME_BYTES
from .context import ServerContext, ServerSettings

__all__ = ["API_MODULES", "create_app"]

#: The API modules mounted in every app, each exporting ``routes()`` (and, if it has work to start and
#: stop with the app, ``lifespan(app)``: an async context manager entered at startup, in this order).
API_MODULES = ("convo.server.chucky_api", "convo.server.chats_api")


async def health(request: Request) -> JSONResponse:
    """``GET /health``: the server is up."""
    from .. import __version__

    return JSONResponse({"status": "ok", "version": __version__})


def create_app(service: Any = None, store: Any = None, tools: Iterable[Tool] = (), secret: str | bytes | None = None,
               *, models: Iterable[str] | None = None, project_id: str | None = None,
               max_sessions_per_user: int = 10, tool_timeout: float = 120.0, max_turns: int = 25,
               max_frame_bytes: int = MAX_FRAME_BYTES, max_outbox_frames: int = 5000, chats: Any = None) -> Starlette:
    """The ASGI app of a convo server: the Chucky endpoint ``/ws``, ``GET /v1/sessions/{id}``, the chats API
    (``/api/experimental/chats``, see :mod:`convo.server.chats_api`) and ``/health``.

    Embed it in your own application (mount it, or run it with
    :class:`convo.server.ServerThread` or any ASGI server) to serve
    sessions with your own server-side tools.

    Args:
        service: a :class:`~convo.Service` for every session, a callable
            ``model_name -> Service``, or None (:func:`convo.default_service`
            picks one per model name).
        store: a :class:`~convo.Store`, a store URL (``sqlite:///file.db``,
            ``postgresql://...``, ``redis://...``), or None for an in-memory
            store. Sessions and budgets live in it; replicas sharing it act
            as one server. A store given as a URL is closed with the app.
        tools: server-side tools sessions may offer the model (a session's
            ``tools`` and the token's permissions choose among them).
        secret: the key tokens are signed with (at least 32 bytes). Required.
        models: the model names sessions may ask for, the first being the
            default (None: the service's model, or any name for a factory).
        project_id: when set, only tokens issued for it (``iss``) are accepted.
        max_sessions_per_user: open sessions per user on this process.
        tool_timeout: seconds a client has to answer a tool call.
        max_turns: model replies per turn unless the client or the token says fewer.
        max_frame_bytes: the largest frame accepted or sent.
        max_outbox_frames: frames a slow client may leave unread before it is disconnected.
        chats: the chats API's settings, a :class:`convo.server.chat_runs.ChatSettings` (None: the defaults).

    Raises:
        ConfigurationError: no secret, a short secret, or a bad setting.
    """
    from ..stores import MemoryStore, open_store

    settings = ServerSettings(models=models, project_id=project_id, max_sessions_per_user=max_sessions_per_user,
                              tool_timeout=tool_timeout, max_turns=max_turns, max_frame_bytes=max_frame_bytes,
                              max_outbox_frames=max_outbox_frames)
    owned_store = None
    if store is None:
        store = owned_store = MemoryStore()
    elif isinstance(store, str):
        store = owned_store = open_store(store)
    elif not callable(getattr(store, "counter_add", None)):
        raise ArgumentTypeError(f"store must be a convo store or a store URL, got {type(store).__name__}")
    try:
        ctx = ServerContext(service=service, store=store, tools=tools, secret=secret, settings=settings)
    except BaseException:
        if owned_store is not None:
            owned_store.close()
        raise

    modules = [importlib.import_module(name) for name in API_MODULES]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            async with contextlib.AsyncExitStack() as stack:
                for module in modules:
                    if hasattr(module, "lifespan"):
                        await stack.enter_async_context(module.lifespan(app))
                yield
        finally:
            ctx.close()
            if owned_store is not None:
                owned_store.close()

    routes: list = [Route("/health", health, methods=["GET"])]
    for module in modules:
        routes.extend(module.routes())
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.convo = ctx
    app.state.chat_settings = chats
    return app
