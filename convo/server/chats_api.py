"""The chats API: Coder's experimental chats routes under ``/api/experimental/chats``, served by ``convo serve``.

Handlers are thin: authenticate (:mod:`convo.server.auth`), parse
(:mod:`convo.server.chats_wire`), call :class:`~convo.server.chat_runs.Chats`
on a thread (the store blocks; the event loop never does), serialise.
Every chat route reads the chat through the owner's id, so someone else's
chat is "not found", exactly as a missing one (404, never 403).

Routes (the status codes of the protocol document, section 3)::

    GET    /                         200 [Chat]            POST /                 201 Chat
    GET    /models                   200 catalog           WS   /watch            the owner's lifecycle feed
    GET    /providers                200 (admin)           POST /providers        201 (admin)
    PATCH  /providers/{id}           200 (admin)           DELETE /providers/{id} 204 (admin)
    GET    /model-configs            200 (admin)           POST /model-configs    201 (admin)
    PATCH  /model-configs/{id}       200 (admin)           DELETE /model-configs/{id} 204 (admin)
    GET    /{chat}                   200 ChatWithMessages  DELETE /{chat}         204 (the whole subtree)
    POST   /{chat}/messages          200 (sent or queued)  PATCH /{chat}/messages/{id}  200 edited message
    POST   /{chat}/interrupt         200 Chat              WS   /{chat}/stream    snapshot, then live events
    GET    /{chat}/diff-status       200                   GET  /{chat}/diff      200
    DELETE /{chat}/queue/{id}        204                   POST /{chat}/queue/{id}/promote  200 message

Authentication: the server's tokens (:func:`convo.server.create_token`) as
``Authorization: Bearer``, the ``Coder-Session-Token`` header, or the
``coder_session_token`` cookie or query parameter (browsers cannot set
WebSocket headers); 401 otherwise. Admins are tokens whose permissions say
``admin`` (``create_token(..., permissions={"admin": True})``; ``convo serve
--dev`` prints one); other users get 403 on the provider and model-config
routes. The catalog (``/models``) is for everyone.

The stream (``/{chat}/stream``, a one-way WebSocket) sends envelopes
``{"type": "data"|"ping"|"error", "data": ...}``. First the snapshot: the
visible messages, the queue (if not empty), the chat's status (Coder sends
none; section 14.3), the parts of the step in progress when this process
runs the chat, and the error of a failed chat; at most 256 events a frame.
Then live events, batched: whatever waits when a frame goes out (up to
256). A ``ping`` envelope goes out after ``ping_interval`` seconds of
silence. A message edited after the snapshot is sent again (Coder sends
it to no open stream; section 14.5). A chat deleted while watched ends the
stream with an ``error`` envelope. A watcher whose socket takes no frame
for ``watcher_timeout`` seconds (it stopped reading), or that falls
``watcher_buffer`` events behind, is dropped (closed with 1011); the chat
and the other watchers never wait for it. A frame from the client closes the stream
with 1002, as Coder's does.

Where the protocol document (section 14) leaves a gap, what convo does:

- ``paused`` is a run that reached ``max_steps`` replies with the model
  still working; ``completed`` is a sub-chat whose task ended. A message
  sent to either runs it again, as for ``waiting``.
- The snapshot carries the status (and the saved error of a failed chat);
  the parts of the reply in progress come after the messages, and only
  those of the step not yet saved. ``ping`` and ``error`` envelopes are sent.
- Interrupt changes only a ``pending`` or ``running`` chat (others: 200,
  unchanged); a pending chat with a queue takes the next message up at once.
- Errors are saved (``last_error``) and sent to new watchers.
- Usage and dollars roll up: ``usage`` (the chat's) and ``total_usage``
  (with every sub-chat below it) on every chat.
- Stale runs are swept for on every heartbeat, not only at start; a server
  stopped with SIGTERM hands its runs back as ``pending`` at once.
- Promoting an unknown queued message is 404 (Coder: 500); an unknown
  ``model_config_id`` on a posted message is 400 (Coder: 500); a chat whose
  model config (or provider) was deleted runs on the default one.
- A tool call cut short by an interrupt keeps its streamed input as
  ``args_delta`` when it is not valid JSON (never invalid ``args``).
- Messages are ordered by id (ids only grow), not by ``created_at``.
- Every user message is shown to the model: a run sends all user messages
  after the model's last reply together (one text block each).
- Not served: workspaces (any ``workspace_id`` is "not found"), the
  experiment gate, rate limiting, model-written titles (chats keep the
  fallback title), and the per-provider ``provider_options`` (stored and
  returned; ``max_output_tokens`` and ``temperature`` are applied). The
  supported providers include convo's own ``local`` (the embedded model).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._log import log
from ..errors import ArgumentTypeError, StoreError
from ._loop import LoopBatch
from .auth import AuthError, owner_uuid, request_token
from .chat_runs import ChatRunner, Chats, ChatSettings, env_keys, seed_models
from .chat_store import (
    ChatEvents,
    ChatNotFound,
    ConfigConflict,
    ConfigNotFound,
    Event,
    InvalidConfig,
    MessageNotFound,
    NotUserMessage,
    QueueFull,
    open_chat_store,
)
from .chats_wire import (
    API_PREFIX,
    MAX_QUEUE_SIZE,
    METHOD_NOT_ALLOWED,
    NIL_UUID,
    PROVIDERS,
    QUEUE_FULL,
    ROUTE_NOT_FOUND,
    STREAM_BATCH,
    CatalogModel,
    CatalogProvider,
    ChatWithMessages,
    DiffContents,
    DiffStatus,
    MessagePosted,
    ModelCatalog,
    WireError,
    data_frame,
    error_event,
    error_frame,
    forbidden,
    message_event,
    not_found,
    parse_create_chat,
    parse_create_message,
    parse_edit_message,
    parse_id,
    parse_model_config_create,
    parse_model_config_update,
    parse_provider_create,
    parse_provider_update,
    parse_uuid,
    ping_frame,
    queue_event,
    signed_out,
    status_event,
)

__all__ = ["lifespan", "routes"]

#: The largest request body read (bigger: 413).
MAX_BODY_BYTES = 4 << 20

# WebSocket close codes.
NORMAL, PROTOCOL_ERROR, INTERNAL = 1000, 1002, 1011


class ChatsState:
    """What the chats API keeps on ``app.state.chats`` while the app runs."""

    def __init__(self, ctx: Any, store: Any, events: ChatEvents, chats: Chats, runner: ChatRunner,
                 fanout: "_Fanout", settings: ChatSettings) -> None:
        self.ctx = ctx
        self.store = store
        self.events = events
        self.chats = chats
        self.runner = runner
        self.fanout = fanout
        self.settings = settings


@contextlib.asynccontextmanager
async def lifespan(app: Any):
    """Open the chat store beside the server's, start the events hub and the runner; stop them at shutdown."""
    ctx = app.state.convo
    settings = getattr(app.state, "chat_settings", None) or ChatSettings()
    loop = asyncio.get_running_loop()

    def start() -> ChatsState | None:
        try:
            store = open_chat_store(ctx.store)
        except ArgumentTypeError as exc:  # a store of the application's own: the rest of the server still serves
            log.warning("chats_api_unavailable", reason=str(exc))
            return None
        try:
            store.seed(_seed(ctx), env_keys())
            events = ChatEvents(store)
            chats = Chats(store, events, settings)
            fanout = _Fanout(loop, settings)
            events.add_sink(fanout)
            events.on_control(fanout.control)
            events.start()
            runner = ChatRunner(ctx, chats, settings)
            runner.start()
        except BaseException:
            store.close()
            raise
        return ChatsState(ctx, store, events, chats, runner, fanout, settings)

    state = await loop.run_in_executor(None, start)
    app.state.chats = state
    try:
        yield
    finally:
        def stop() -> None:
            state.runner.stop()
            state.events.stop()
            state.store.close()

        if state is not None:
            await loop.run_in_executor(None, stop)


def _seed(ctx: Any) -> list:
    """The model configs a fresh server gets from the models it serves (``convo serve --model``), by provider:
    the name says it (``claude-*``...), else the kind of service the server made for it."""
    from ..providers.detect import provider_for_model
    from .chat_runs import CONTEXT_LIMITS

    kinds = {"AnthropicService": "anthropic", "OpenAIService": "openai", "LocalService": "local"}
    models = list(ctx.models or ())
    out = []
    for (provider, model, limit), name in zip(seed_models(models), models):
        if provider_for_model(name) is None:
            try:
                provider = kinds.get(type(ctx.service_for(name)).__name__, provider)
            except Exception:  # a model the server cannot make a service for: label it by its name alone
                pass
        out.append((provider, model, CONTEXT_LIMITS.get(provider, limit)))
    return out


# --- handlers --------------------------------------------------------------------------------------


def _state(conn: HTTPConnection) -> ChatsState:
    state = getattr(conn.app.state, "chats", None)
    if state is None:
        raise WireError(501, "The chats API is not available on this server.",
                        "it needs a SQLite, PostgreSQL, Redis or memory store")
    return state


def _principal(conn: HTTPConnection) -> Any:
    token = request_token(conn.headers, conn.query_params, conn.cookies)
    if not token:
        raise signed_out("no session token: send Authorization: Bearer <token> or Coder-Session-Token")
    try:
        return conn.app.state.convo.principal(token)
    except AuthError as exc:
        raise signed_out(str(exc)) from None


def _admin(principal: Any) -> None:
    if not principal.permissions.admin:
        raise forbidden()


def _store_errors(failure: str) -> Callable:
    """The store's refusals as the protocol's replies (``failure``: Coder's 500 message for the route)."""
    def convert(exc: BaseException) -> WireError | None:
        if isinstance(exc, WireError):
            return exc
        if isinstance(exc, (ChatNotFound, ConfigNotFound)):
            return not_found()
        if isinstance(exc, QueueFull):
            return WireError(429, QUEUE_FULL, f"Maximum {MAX_QUEUE_SIZE} messages can be queued.")
        if isinstance(exc, NotUserMessage):
            return WireError(400, "Only user messages can be edited.")
        if isinstance(exc, ConfigConflict):
            return WireError(409, str(exc))
        if isinstance(exc, InvalidConfig):
            return WireError(400, str(exc))
        if isinstance(exc, StoreError):
            log.warning("chats_store_failed", error=f"{type(exc).__name__}: {exc}")
            return WireError(500, failure, f"the chat store failed ({type(exc).__name__})")
        return None
    return convert


async def _respond(request: Request, work: Callable[[Any], Any], *, failure: str = "Internal error.",
                   status: int = 200, body: bool = False) -> Response:
    """Authenticate, read the body (if ``body``), run ``work(principal[, raw])`` on a thread, answer JSON."""
    convert = _store_errors(failure)
    try:
        principal = _principal(request)
        raw = None
        if body:
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                raise WireError(413, "Request body is too large.", f"the limit is {MAX_BODY_BYTES} bytes")
        ctx = request.app.state.convo
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(ctx.io, (lambda: work(principal, raw)) if body else (lambda: work(principal)))
    except Exception as exc:
        wire = convert(exc)
        if wire is None:
            log.error("chats_route_failed", path=request.url.path, exc_info=True)
            wire = WireError(500, failure, "internal error; see the server's log")
        return JSONResponse(wire.body(), status_code=wire.status)
    if status == 204:
        return Response(status_code=204)
    return JSONResponse(result, status_code=status)


def _route(handler: Callable) -> Callable:
    """A route's handler, answering the protocol's JSON for what is refused before it gets going."""
    import functools

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except WireError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    return wrapper


def _config_for(st: ChatsState, config_id: str | None) -> str:
    """The model config a new message uses: the one named (it must exist), else the default."""
    if config_id is not None:
        found = st.store.model_config(config_id) if config_id != NIL_UUID else None
        if found is None or found.id != config_id:
            raise WireError(400, "Invalid model config ID.")
        return config_id
    default = st.store.model_config(None)
    if default is None:
        raise WireError(400, "No default chat model config is configured.")
    return default.id


# -- chats --

@_route
async def chats_root(request: Request) -> Response:
    st = _state(request)
    if request.method == "GET":
        def work(principal):
            return [row.public(total).to_wire(with_diff_status=True)
                    for row, total in st.store.list_chats(owner_uuid(principal))]

        return await _respond(request, work, failure="Failed to get chats.")
    if request.method == "POST":
        def create(principal, raw):
            req = parse_create_chat(raw)
            if req.workspace_id is not None:
                raise WireError(400, "Workspace not found or you do not have access to this resource")
            config = _config_for(st, req.model_config_id)
            row, _ = st.chats.create(owner_uuid(principal), req.content, config)
            return row.public().to_wire()

        return await _respond(request, create, failure="Failed to create chat.", status=201, body=True)
    return _method_not_allowed()


@_route
async def chat_item(request: Request) -> Response:
    st = _state(request)
    if request.method == "GET":
        def get(principal):
            chat_id = parse_uuid(request.path_params["chat"])
            row, messages, queue = st.store.snapshot(owner_uuid(principal), chat_id)
            return ChatWithMessages(row.public(st.store.total_usage(row)), [m.public() for m in messages if m.visible],
                                    [q.public() for q in queue]).to_wire()

        return await _respond(request, get, failure="Failed to get chat messages.")
    if request.method == "DELETE":
        def delete(principal):
            st.chats.delete(owner_uuid(principal), parse_uuid(request.path_params["chat"]))

        return await _respond(request, delete, failure="Failed to delete chat.", status=204)
    return _method_not_allowed()


@_route
async def chat_messages(request: Request) -> Response:
    st = _state(request)
    if request.method != "POST":
        return _method_not_allowed()

    def post(principal, raw):
        chat_id = parse_uuid(request.path_params["chat"])
        owner = owner_uuid(principal)
        st.store.chat(owner, chat_id)  # not found before a body error, as Coder's middleware does
        req = parse_create_message(raw)
        config = _config_for(st, req.model_config_id) if req.model_config_id is not None else None
        posted = st.chats.post(owner, chat_id, req.content, config)
        if posted.queued is not None:
            return MessagePosted(True, queued_message=posted.queued.public()).to_wire()
        return MessagePosted(False, message=posted.message.public()).to_wire()

    return await _respond(request, post, failure="Failed to create chat message.", body=True)


@_route
async def chat_message_item(request: Request) -> Response:
    st = _state(request)
    if request.method != "PATCH":
        return _method_not_allowed()

    def edit(principal, raw):
        chat_id = parse_uuid(request.path_params["chat"])
        owner = owner_uuid(principal)
        st.store.chat(owner, chat_id)
        message_id = parse_id(request.path_params["message"], "Invalid chat message ID.",
                              "Message ID must be a positive integer.")
        req = parse_edit_message(raw)
        try:
            _, message = st.chats.edit(owner, chat_id, message_id, req.content)
        except MessageNotFound:
            raise WireError(404, "Chat message not found.", "Message does not belong to this chat.") from None
        return message.public().to_wire()

    return await _respond(request, edit, failure="Failed to edit chat message.", body=True)


@_route
async def chat_interrupt(request: Request) -> Response:
    st = _state(request)
    if request.method != "POST":
        return _method_not_allowed()

    def interrupt(principal):
        row = st.chats.interrupt(owner_uuid(principal), parse_uuid(request.path_params["chat"]))
        return row.public(st.store.total_usage(row)).to_wire()

    return await _respond(request, interrupt, failure="Failed to interrupt chat.")


@_route
async def chat_diff_status(request: Request) -> Response:
    st = _state(request)
    if request.method != "GET":
        return _method_not_allowed()

    def get(principal):
        row = st.store.chat(owner_uuid(principal), parse_uuid(request.path_params["chat"]))
        return DiffStatus(row.id).to_wire()

    return await _respond(request, get, failure="Failed to get chat diff status.")


@_route
async def chat_diff(request: Request) -> Response:
    st = _state(request)
    if request.method != "GET":
        return _method_not_allowed()

    def get(principal):
        row = st.store.chat(owner_uuid(principal), parse_uuid(request.path_params["chat"]))
        return DiffContents(row.id).to_wire()

    return await _respond(request, get, failure="Failed to get chat diff.")


@_route
async def chat_queue_item(request: Request) -> Response:
    st = _state(request)
    if request.method != "DELETE":
        return _method_not_allowed()

    def delete(principal):
        chat_id = parse_uuid(request.path_params["chat"])
        owner = owner_uuid(principal)
        st.store.chat(owner, chat_id)
        queued_id = parse_id(request.path_params["queued"], "Invalid queued message ID.")
        st.chats.delete_queued(owner, chat_id, queued_id)

    return await _respond(request, delete, failure="Failed to delete queued message.", status=204)


@_route
async def chat_queue_promote(request: Request) -> Response:
    st = _state(request)
    if request.method != "POST":
        return _method_not_allowed()

    def promote(principal):
        chat_id = parse_uuid(request.path_params["chat"])
        owner = owner_uuid(principal)
        st.store.chat(owner, chat_id)
        queued_id = parse_id(request.path_params["queued"], "Invalid queued message ID.")
        try:
            return st.chats.promote(owner, chat_id, queued_id).public().to_wire()
        except MessageNotFound:
            # Coder answers 500 "Failed to promote queued message." here; a missing thing is a 404.
            raise WireError(404, "Queued message not found.", "queued message not found") from None

    return await _respond(request, promote, failure="Failed to promote queued message.")


# -- catalog, providers, model configs --

@_route
async def models_catalog(request: Request) -> Response:
    st = _state(request)
    if request.method != "GET":
        return _method_not_allowed()

    def catalog(principal):
        providers, configs = st.store.configs()
        keys = st.runner.env_keys
        rows = {p.provider: p for p in providers}
        views = {v.provider: v for v in st.store.provider_views(keys)}
        usable = [c for c in configs if c.enabled and rows.get(c.provider) is not None and rows[c.provider].enabled]
        names = [p for p in PROVIDERS if any(c.provider == p for c in usable)] if usable else list(PROVIDERS)
        out = []
        for name in names:
            models = sorted((c for c in usable if c.provider == name), key=lambda c: c.model)
            available = views[name].has_api_key
            out.append(CatalogProvider(name, available, [CatalogModel(f"{c.provider}:{c.model}", c.provider, c.model,
                                                                      c.display_name or c.model) for c in models],
                                       "" if available else "missing_api_key"))
        return ModelCatalog(out).to_wire()

    return await _respond(request, catalog, failure="Failed to list chat models.")


@_route
async def providers_root(request: Request) -> Response:
    st = _state(request)
    if request.method == "GET":
        def get(principal):
            _admin(principal)
            return [p.to_wire() for p in st.store.provider_views(st.runner.env_keys)]

        return await _respond(request, get, failure="Failed to list chat providers.")
    if request.method == "POST":
        def create(principal, raw):
            _admin(principal)
            row = st.store.create_provider(parse_provider_create(raw))
            return st.store.provider_view(row, st.runner.env_keys).to_wire()

        return await _respond(request, create, failure="Failed to create chat provider.", status=201, body=True)
    return _method_not_allowed()


def _config_id(raw: str, message: str) -> str:
    try:
        return parse_uuid(raw)
    except WireError:
        raise WireError(400, message) from None


@_route
async def provider_item(request: Request) -> Response:
    st = _state(request)
    if request.method == "PATCH":
        def update(principal, raw):
            _admin(principal)
            provider_id = _config_id(request.path_params["provider"], "Invalid chat provider ID.")
            row = st.store.update_provider(provider_id, parse_provider_update(raw))
            return st.store.provider_view(row, st.runner.env_keys).to_wire()

        return await _respond(request, update, failure="Failed to update chat provider.", body=True)
    if request.method == "DELETE":
        def delete(principal):
            _admin(principal)
            st.store.delete_provider(_config_id(request.path_params["provider"], "Invalid chat provider ID."))

        return await _respond(request, delete, failure="Failed to delete chat provider.", status=204)
    return _method_not_allowed()


@_route
async def model_configs_root(request: Request) -> Response:
    st = _state(request)
    if request.method == "GET":
        def get(principal):
            _admin(principal)
            return [c.public().to_wire() for c in st.store.configs()[1]]

        return await _respond(request, get, failure="Failed to list chat model configs.")
    if request.method == "POST":
        def create(principal, raw):
            _admin(principal)
            return st.store.create_model_config(parse_model_config_create(raw)).public().to_wire()

        return await _respond(request, create, failure="Failed to create chat model config.", status=201, body=True)
    return _method_not_allowed()


@_route
async def model_config_item(request: Request) -> Response:
    st = _state(request)
    if request.method == "PATCH":
        def update(principal, raw):
            _admin(principal)
            config_id = _config_id(request.path_params["config"], "Invalid chat model config ID.")
            return st.store.update_model_config(config_id, parse_model_config_update(raw)).public().to_wire()

        return await _respond(request, update, failure="Failed to update chat model config.", body=True)
    if request.method == "DELETE":
        def delete(principal):
            _admin(principal)
            st.store.delete_model_config(_config_id(request.path_params["config"], "Invalid chat model config ID."))

        return await _respond(request, delete, failure="Failed to delete chat model config.", status=204)
    return _method_not_allowed()


def _method_not_allowed() -> Response:
    return JSONResponse({"message": METHOD_NOT_ALLOWED}, status_code=405)


async def route_not_found(request: Request) -> Response:
    return JSONResponse({"message": ROUTE_NOT_FOUND}, status_code=404)


# --- the stream and the watch feed ----------------------------------------------------------------

class _Fanout:
    """Events from any thread to this event loop's watchers: one wake-up of the loop per burst, whatever the
    number of watchers; each watcher then sends on its own task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: ChatSettings) -> None:
        self.loop = loop
        self.settings = settings
        self._batch = LoopBatch(loop, self._dispatch)
        self.watchers: dict[str, set] = {}  # chat id -> watchers (changed on the loop only)
        self.owners: dict[str, set] = {}

    # -- any thread --

    def deliver(self, chat_id: str, events: list[Event]) -> None:
        if chat_id in self.watchers:
            self._post(("chat", chat_id, events))

    def deliver_owner(self, owner_id: str, frame: str) -> None:
        if owner_id in self.owners:
            self._post(("owner", owner_id, frame))

    def control(self, chat_id: str, control: dict) -> None:
        if control.get("deleted") and chat_id in self.watchers:
            self._post(("deleted", chat_id, None))

    def _post(self, item: tuple) -> None:
        self._batch.post(item)

    # -- the loop --

    def _dispatch(self, items: list) -> None:
        for kind, key, value in items:
            if kind == "chat":
                for w in tuple(self.watchers.get(key, ())):
                    w.push(value)
            elif kind == "owner":
                for w in tuple(self.owners.get(key, ())):
                    w.push_frame(value)
            else:
                for w in tuple(self.watchers.get(key, ())):
                    w.deleted()

    def subscribe(self, table: dict, key: str, watcher: Any) -> None:
        table.setdefault(key, set()).add(watcher)

    def unsubscribe(self, table: dict, key: str, watcher: Any) -> None:
        found = table.get(key)
        if found is not None:
            found.discard(watcher)
            if not found:
                del table[key]


class _Watcher:
    """One stream connection: its queue of events, the dedup state of its snapshot, and its sender."""

    def __init__(self, ws: WebSocket, st: ChatsState, chat_id: str, owner: str) -> None:
        self.ws = ws
        self.st = st
        self.chat_id = chat_id
        self.owner = owner
        self.queue: deque = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.close_code = NORMAL
        self.close_reason = ""
        self.final: str | None = None  # an envelope to send before closing
        self.seen: dict[int, int] = {}  # snapshot messages: id -> digest
        self.part_floor = 0
        self.live: asyncio.Task | None = None

    def push(self, events: list[Event]) -> None:
        if self.closing:
            return
        if len(self.queue) + len(events) > self.st.settings.watcher_buffer:
            log.warning("chat_watcher_too_slow", chat_id=self.chat_id, queued=len(self.queue))
            self.close(INTERNAL, "watcher too slow")
            return
        self.queue.extend(events)
        self.wake.set()

    def deleted(self) -> None:
        self.final = error_frame("Chat deleted.", "the chat was deleted while it was watched")
        self.close(NORMAL, "chat deleted")

    def close(self, code: int, reason: str = "") -> None:
        if not self.closing:
            self.closing = True
            self.close_code, self.close_reason = code, reason
            self.wake.set()
            if code == INTERNAL and self.live is not None:
                self.live.cancel()  # it may be stuck sending to a watcher that stopped reading

    async def run(self) -> None:
        st, fanout = self.st, self.st.fanout
        run = st.runner.run_of(self.chat_id)
        if run is not None:
            with run.lock:
                parts, last_id = run.snapshot_parts()
                fanout.subscribe(fanout.watchers, self.chat_id, self)
        else:
            parts, last_id = [], None
            fanout.subscribe(fanout.watchers, self.chat_id, self)
        receiver = asyncio.ensure_future(self._receive())
        try:
            loop = asyncio.get_running_loop()
            try:
                row, messages, queue = await loop.run_in_executor(st.ctx.io, st.store.snapshot, self.owner,
                                                                  self.chat_id)
            except ChatNotFound:
                await self._send(error_frame("Chat deleted.", "the chat was deleted while it was watched"))
                return
            except StoreError:
                await self._send(error_frame("Internal error reading the chat.", "the chat store failed"))
                self.close_code = INTERNAL
                return
            snapshot = []
            for m in messages:
                if m.visible:
                    event = Event.of(message_event(m.public()))
                    self.seen[m.id] = event.digest
                    snapshot.append(event)
            if queue:
                snapshot.append(Event.of(queue_event(self.chat_id, [q.public() for q in queue])))
            snapshot.append(Event.of(status_event(self.chat_id, row.status)))
            newest = max((m.id for m in messages), default=0)
            if parts and (last_id is None or newest <= last_id):
                snapshot.extend(parts)
            self.part_floor = max((p.seq for p in parts), default=0)
            if row.last_error and row.status.value == "error":
                snapshot.append(Event.of(error_event(self.chat_id, row.last_error)))
            self.live = asyncio.ensure_future(self._send_all(snapshot, receiver))
            # wait() rather than await: the sender may be cancelled on purpose (a watcher too slow), which
            # ends this stream and nothing else.
            await asyncio.wait({self.live})
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            fanout.unsubscribe(fanout.watchers, self.chat_id, self)
            receiver.cancel()
            if self.live is not None:
                self.live.cancel()
            await self._finish()

    async def _send_all(self, snapshot: list, receiver: asyncio.Future) -> None:
        try:
            for i in range(0, len(snapshot), STREAM_BATCH):
                await self._send(data_frame([e.text for e in snapshot[i:i + STREAM_BATCH]]))
            await self._live(receiver)
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            self.close(NORMAL)

    async def _live(self, receiver: asyncio.Future) -> None:
        ping = self.st.settings.ping_interval
        while True:
            if not self.queue and not self.closing:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=ping)
                except asyncio.TimeoutError:
                    if receiver.done():
                        return
                    await self._send(ping_frame())
                    continue
            if self.closing or receiver.done():
                return
            batch = []
            while self.queue and len(batch) < STREAM_BATCH:
                e = self.queue.popleft()
                if e.kind == "message" and self.seen.get(e.message_id) == e.digest:
                    continue  # already in the snapshot
                if e.seq and e.seq <= self.part_floor:
                    continue
                batch.append(e.text)
            if batch:
                await self._send(data_frame(batch))

    async def _send(self, text: str) -> None:
        # A watcher that stopped reading blocks the send once the socket's buffers are full: give it
        # watcher_timeout seconds (Coder's write timeout), then drop it.
        try:
            await asyncio.wait_for(self.ws.send_text(text), timeout=self.st.settings.watcher_timeout)
        except asyncio.TimeoutError:
            log.warning("chat_watcher_too_slow", chat_id=self.chat_id, queued=len(self.queue))
            self.close(INTERNAL, "watcher too slow")
            raise ConnectionError("the watcher stopped reading") from None

    async def _receive(self) -> None:
        """Read until the client leaves; a frame from it closes the stream (1002), as Coder's one-way sockets do."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.close(NORMAL)
                return
            self.close(PROTOCOL_ERROR, "Clients cannot send messages for one-way WebSockets")
            self.wake.set()
            return

    async def _finish(self) -> None:
        if self.final is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send(self.final), timeout=1.0)
        # A watcher too slow to read may never let a close frame out: give up on it after a second.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(self.close_code, self.close_reason), timeout=1.0)


class _OwnerWatcher:
    """One ``/watch`` connection: the owner's chat lifecycle frames, unbatched."""

    def __init__(self, ws: WebSocket, st: ChatsState) -> None:
        self.ws = ws
        self.st = st
        self.frames: deque = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.close_code = NORMAL

    def push_frame(self, frame: str) -> None:
        if self.closing:
            return
        if len(self.frames) >= self.st.settings.watcher_buffer:
            self.closing, self.close_code = True, INTERNAL
        else:
            self.frames.append(frame)
        self.wake.set()

    async def run(self, owner: str) -> None:
        fanout = self.st.fanout
        fanout.subscribe(fanout.owners, owner, self)
        receiver = asyncio.ensure_future(self._receive())
        try:
            await self.ws.send_text(ping_frame())
            while True:
                if not self.frames and not self.closing:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), timeout=self.st.settings.ping_interval)
                    except asyncio.TimeoutError:
                        if receiver.done():
                            return
                        await self.ws.send_text(ping_frame())
                        continue
                if self.closing or receiver.done():
                    return
                await self.ws.send_text(self.frames.popleft())
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            fanout.unsubscribe(fanout.owners, owner, self)
            receiver.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(self.close_code), timeout=1.0)

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.closing = True
                self.wake.set()
                return
            self.closing, self.close_code = True, PROTOCOL_ERROR
            self.wake.set()
            return


async def _deny(ws: WebSocket, error: WireError) -> None:
    """Refuse an upgrade with an ordinary JSON reply (401, 400, 404), as Coder answers before upgrading."""
    await ws.send_denial_response(JSONResponse(error.body(), status_code=error.status))


async def chat_stream(ws: WebSocket) -> None:
    """``GET /{chat}/stream``: the chat's snapshot, then its live events."""
    try:
        st = _state(ws)
        principal = _principal(ws)
        chat_id = parse_uuid(ws.path_params["chat"])
        owner = owner_uuid(principal)
        await asyncio.get_running_loop().run_in_executor(st.ctx.io, st.store.chat, owner, chat_id)
    except WireError as exc:
        await _deny(ws, exc)
        return
    except ChatNotFound:
        await _deny(ws, not_found())
        return
    except StoreError:
        await _deny(ws, WireError(500, "Failed to get chat.", "the chat store failed"))
        return
    await ws.accept()
    await _Watcher(ws, st, chat_id, owner).run()


async def watch_chats(ws: WebSocket) -> None:
    """``GET /watch``: the caller's chats being created, changing status or title, and deleted."""
    try:
        st = _state(ws)
        principal = _principal(ws)
    except WireError as exc:
        await _deny(ws, exc)
        return
    await ws.accept()
    await _OwnerWatcher(ws, st).run(owner_uuid(principal))


#: Every route takes every method and answers one it does not serve with a JSON 405 (Starlette's is text).
_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def routes() -> list:
    """The chats API's routes, for :func:`convo.server.app.create_app` to mount."""
    p = API_PREFIX
    return [
        WebSocketRoute(p + "/watch", watch_chats),
        WebSocketRoute(p + "/{chat}/stream", chat_stream),
        Route(p, chats_root, methods=_ALL),
        Route(p + "/", chats_root, methods=_ALL),
        Route(p + "/models", models_catalog, methods=_ALL),
        Route(p + "/providers", providers_root, methods=_ALL),
        Route(p + "/providers/{provider}", provider_item, methods=_ALL),
        Route(p + "/model-configs", model_configs_root, methods=_ALL),
        Route(p + "/model-configs/{config}", model_config_item, methods=_ALL),
        Route(p + "/{chat}", chat_item, methods=_ALL),
        Route(p + "/{chat}/messages", chat_messages, methods=_ALL),
        Route(p + "/{chat}/messages/{message}", chat_message_item, methods=_ALL),
        Route(p + "/{chat}/interrupt", chat_interrupt, methods=_ALL),
        Route(p + "/{chat}/diff-status", chat_diff_status, methods=_ALL),
        Route(p + "/{chat}/diff", chat_diff, methods=_ALL),
        Route(p + "/{chat}/queue/{queued}", chat_queue_item, methods=_ALL),
        Route(p + "/{chat}/queue/{queued}/promote", chat_queue_promote, methods=_ALL),
        Route(p + "/{rest:path}", route_not_found, methods=_ALL),
    ]

