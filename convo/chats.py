"""A synchronous client for the chats API (Coder's experimental chats API, as ``convo serve`` serves it).

::

    from convo.chats import ChatsClient

    with ChatsClient("http://127.0.0.1:8765", token) as client:
        chat = client.create_chat("Plan a 3-day trip to Lisbon")
        client.create_message(chat.id, "Keep it cheap")          # queued while the first runs
        with client.stream(chat.id) as events:
            for event in events:                               # snapshot first, then live events
                if event.type == "message_part" and event.part.type == "text":
                    print(event.part.text, end="")
                elif event.type == "status" and event.status == "waiting":
                    break
        print(client.get_chat(chat.id).messages[-1].text())

One method per route, each returning the attrs values of
:mod:`convo.server.chats_wire` (``Chat``, ``ChatWithMessages``,
``MessagePosted``, ``ChatMessage``, ``ModelCatalog``, ``ProviderConfig``,
``ModelConfig``...). A refusal raises a :class:`ChatsError` subclass with
the status code and the server's ``message`` and ``detail``. The token goes
in ``Authorization: Bearer`` (tokens come from
:func:`convo.server.create_token`; an admin's has ``permissions={"admin": True}``).

:meth:`ChatsClient.stream` is a WebSocket (websocket-client, no asyncio):
an iterator of :class:`~convo.server.chats_wire.StreamEvent`, a context
manager; ``ping`` envelopes are skipped and an ``error`` envelope raises
:class:`ChatsStreamError`. :meth:`ChatsClient.watch` follows the owner's
chats being created, changing status and deleted.

Thread safety: a :class:`ChatsClient` may be used from several threads at
once (requests' session is shared; each call is one request). Read a
stream from one thread; :meth:`ChatStream.close` may be called from any.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import requests

from .errors import ConfigurationError, ConvoError
from .server.chats_wire import (
    API_PREFIX,
    Chat,
    ChatMessage,
    ChatStatus,
    ChatUsage,
    ChatWithMessages,
    CreateChat,
    CreateMessage,
    DiffContents,
    DiffStatus,
    EditMessage,
    MessagePart,
    MessagePosted,
    ModelCatalog,
    ModelConfig,
    ModelConfigCreate,
    ModelConfigUpdate,
    ProviderConfig,
    ProviderCreate,
    ProviderUpdate,
    QueuedMessage,
    StreamEvent,
    WatchEvent,
    parse_envelope,
)

__all__ = [
    "Chat",
    "ChatMessage",
    "ChatStatus",
    "ChatStream",
    "ChatUsage",
    "ChatWatch",
    "ChatWithMessages",
    "ChatsBadRequest",
    "ChatsClient",
    "ChatsConflict",
    "ChatsConnectionError",
    "ChatsError",
    "ChatsForbidden",
    "ChatsNotFound",
    "ChatsQueueFull",
    "ChatsServerError",
    "ChatsStreamError",
    "ChatsUnauthorized",
    "MessagePart",
    "MessagePosted",
    "ModelCatalog",
    "ModelConfig",
    "ProviderConfig",
    "QueuedMessage",
    "StreamEvent",
    "WatchEvent",
]

#: Statuses in which a chat has no run under way or waiting to start.
IDLE = (ChatStatus.WAITING, ChatStatus.ERROR, ChatStatus.PAUSED, ChatStatus.COMPLETED)


class ChatsError(ConvoError):
    """The server refused a request: ``status_code``, and its ``message``, ``detail`` and ``validations``.

    The tree::

        ChatsError
        ├── ChatsBadRequest (ValueError)      400
        ├── ChatsUnauthorized (PermissionError)  401: no token, or a refused one
        ├── ChatsForbidden (PermissionError)  403: an admin route, without admin
        ├── ChatsNotFound (LookupError)       404: missing, or someone else's
        ├── ChatsConflict                     409
        ├── ChatsQueueFull                    429: 20 messages already queued
        ├── ChatsServerError                  5xx
        ├── ChatsConnectionError (ConnectionError)  no answer at all
        └── ChatsStreamError                  an ``error`` envelope on a stream
    """

    def __init__(self, status_code: int, message: str, detail: str = "", validations: Sequence[dict] = ()) -> None:
        self.status_code = status_code
        self.message = message
        self.detail = detail
        self.validations = tuple(validations)
        super().__init__(f"{status_code}: {message}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        return (type(self), (self.status_code, self.message, self.detail, self.validations))


class ChatsBadRequest(ChatsError, ValueError):
    """400: the request was malformed or invalid."""


class ChatsUnauthorized(ChatsError, PermissionError):
    """401: no token, or one the server refused."""


class ChatsForbidden(ChatsError, PermissionError):
    """403: the token may not do this (the admin routes)."""


class ChatsNotFound(ChatsError, LookupError):
    """404: no such chat, message or config for this user (someone else's is not found too)."""


class ChatsConflict(ChatsError):
    """409: it exists already."""


class ChatsQueueFull(ChatsError):
    """429: the chat's queue is full; wait for its run to take messages up."""


class ChatsServerError(ChatsError):
    """5xx: the server failed."""


class ChatsConnectionError(ChatsError, ConnectionError):
    """The server could not be reached, or the connection broke (``status_code`` 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class ChatsStreamError(ChatsError):
    """The stream sent an ``error`` envelope (``status_code`` 0), e.g. the chat was deleted."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(0, message, detail)


_BY_STATUS = {400: ChatsBadRequest, 401: ChatsUnauthorized, 403: ChatsForbidden, 404: ChatsNotFound,
              409: ChatsConflict, 429: ChatsQueueFull}


def error_for(status: int, body: Any) -> ChatsError:
    """The error for a refusal: its status and Coder's error body (anything else becomes the message)."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = {"message": body.strip()[:500] or f"HTTP {status}"}
    if not isinstance(body, dict):
        body = {"message": f"HTTP {status}"}
    cls = _BY_STATUS.get(status) or (ChatsServerError if status >= 500 else ChatsError)
    return cls(status, str(body.get("message") or f"HTTP {status}"), str(body.get("detail") or ""),
               [v for v in body.get("validations") or () if isinstance(v, dict)])


def _texts(content: Any) -> tuple:
    if isinstance(content, str):
        return (content,)
    try:
        texts = tuple(content)
    except TypeError:
        raise ConfigurationError(f"content is a str or a list of str, got {type(content).__name__}") from None
    if not all(isinstance(t, str) for t in texts):
        raise ConfigurationError("content is a str or a list of str")
    return texts


class ChatsClient:
    """The chats API of one server, for one user (their token). A context manager; see the module docstring.

    Args:
        url: the server, ``http://host:port`` (the API's prefix is added),
            or the API's own URL ending in ``/api/experimental/chats``.
        token: the user's token (kept out of the repr).
        timeout: seconds to wait for each answer.
        session: a ``requests.Session`` to send with (default: one of its own, closed by :meth:`close`).
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"url must be an http:// or https:// URL, got {url!r}")
        if not isinstance(token, str) or not token:
            raise ConfigurationError("token must be a non-empty str")
        base = url.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        self.base_url = base
        self.api_url = base + API_PREFIX
        self.timeout = timeout
        self._token = token
        self._owns_session = session is None
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"ChatsClient({self.base_url!r})"

    def __enter__(self) -> "ChatsClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections (streams opened from this client stay open until closed)."""
        if self._owns_session:
            self._session.close()

    # -- plumbing --

    def _call(self, method: str, path: str, body: Any = None, *, ok: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = self._session.request(method, self.api_url + path, data=data, headers=headers,
                                             timeout=self.timeout)
        except requests.RequestException as exc:
            raise ChatsConnectionError(f"{method} {API_PREFIX}{path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != ok:
            raise error_for(response.status_code, response.content)
        if ok == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ChatsServerError(response.status_code, "the server's answer is not JSON") from None

    # -- chats --

    def list_chats(self) -> list[Chat]:
        """The user's chats (sub-chats included), most recently updated first."""
        return [Chat.from_wire(c) for c in self._call("GET", "")]

    def create_chat(self, content: str | Sequence[str], *, model_config_id: str | None = None,
                    workspace_id: str | None = None) -> Chat:
        """Start a chat with a first message (``pending``: a run starts at once)."""
        body = CreateChat(_texts(content), workspace_id, model_config_id).to_wire()
        return Chat.from_wire(self._call("POST", "", body, ok=201))

    def get_chat(self, chat_id: str) -> ChatWithMessages:
        """The chat, its visible messages and its queue."""
        return ChatWithMessages.from_wire(self._call("GET", f"/{chat_id}"))

    def delete_chat(self, chat_id: str) -> None:
        """Delete the chat and its sub-chats."""
        self._call("DELETE", f"/{chat_id}", ok=204)

    def create_message(self, chat_id: str, content: str | Sequence[str], *,
                       model_config_id: str | None = None) -> MessagePosted:
        """Post a user message: sent now (``queued`` False) or queued while a run is under way."""
        body = CreateMessage(_texts(content), model_config_id).to_wire()
        return MessagePosted.from_wire(self._call("POST", f"/{chat_id}/messages", body))

    def edit_message(self, chat_id: str, message_id: int, content: str | Sequence[str]) -> ChatMessage:
        """Replace a user message; every message after it and the queue are dropped, and the chat runs again."""
        body = EditMessage(_texts(content)).to_wire()
        return ChatMessage.from_wire(self._call("PATCH", f"/{chat_id}/messages/{message_id}", body))

    def interrupt(self, chat_id: str) -> Chat:
        """Stop the chat's run (its partial reply is kept); the chat is ``waiting``."""
        return Chat.from_wire(self._call("POST", f"/{chat_id}/interrupt"))

    def delete_queued_message(self, chat_id: str, queued_id: int) -> None:
        self._call("DELETE", f"/{chat_id}/queue/{queued_id}", ok=204)

    def promote_queued_message(self, chat_id: str, queued_id: int) -> ChatMessage:
        """Send a queued message now, ahead of the queue (a run under way stops)."""
        return ChatMessage.from_wire(self._call("POST", f"/{chat_id}/queue/{queued_id}/promote"))

    def diff_status(self, chat_id: str) -> DiffStatus:
        return DiffStatus.from_wire(self._call("GET", f"/{chat_id}/diff-status"))

    def diff(self, chat_id: str) -> DiffContents:
        return DiffContents.from_wire(self._call("GET", f"/{chat_id}/diff"))

    def wait(self, chat_id: str, *, timeout: float = 60.0, poll: float = 0.05) -> Chat:
        """Poll until the chat has no run under way or waiting (``waiting``, ``error``, ``paused``, ``completed``).

        Raises:
            TimeoutError: it was still pending or running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            chat = self.get_chat(chat_id).chat
            if chat.status in IDLE:
                return chat
            if time.monotonic() > deadline:
                raise TimeoutError(f"chat {chat_id} is still {chat.status.value} after {timeout} s")
            time.sleep(poll)

    # -- models, providers, model configs --

    def list_models(self) -> ModelCatalog:
        """The model catalog (any user)."""
        return ModelCatalog.from_wire(self._call("GET", "/models"))

    def list_providers(self) -> list[ProviderConfig]:
        """Every supported provider and its configuration (admin). Keys are never returned: ``has_api_key``."""
        return [ProviderConfig.from_wire(p) for p in self._call("GET", "/providers")]

    def create_provider(self, provider: str, *, display_name: str = "", api_key: str = "", base_url: str = "",
                        enabled: bool = True) -> ProviderConfig:
        body = ProviderCreate(provider, display_name, api_key, base_url, enabled).to_wire()
        return ProviderConfig.from_wire(self._call("POST", "/providers", body, ok=201))

    def update_provider(self, provider_id: str, *, display_name: str = "", api_key: str | None = None,
                        base_url: str | None = None, enabled: bool | None = None) -> ProviderConfig:
        """Change a provider (``api_key=""`` clears the key; None keeps a value)."""
        body = ProviderUpdate(display_name, api_key, base_url, enabled).to_wire()
        return ProviderConfig.from_wire(self._call("PATCH", f"/providers/{provider_id}", body))

    def delete_provider(self, provider_id: str) -> None:
        """Delete a provider and its model configs."""
        self._call("DELETE", f"/providers/{provider_id}", ok=204)

    def list_model_configs(self) -> list[ModelConfig]:
        return [ModelConfig.from_wire(c) for c in self._call("GET", "/model-configs")]

    def create_model_config(self, provider: str, model: str, context_limit: int, *, display_name: str = "",
                            enabled: bool = True, is_default: bool = False, compression_threshold: int = 70,
                            model_config: dict | None = None) -> ModelConfig:
        body = ModelConfigCreate(provider, model, context_limit, display_name, enabled, is_default,
                                 compression_threshold, model_config).to_wire()
        return ModelConfig.from_wire(self._call("POST", "/model-configs", body, ok=201))

    def update_model_config(self, config_id: str, **changes: Any) -> ModelConfig:
        """Change a model config: ``provider``, ``model``, ``display_name``, ``enabled``, ``is_default``,
        ``context_limit``, ``compression_threshold``, ``model_config``."""
        try:
            body = ModelConfigUpdate(**changes).to_wire()
        except TypeError as exc:
            raise ConfigurationError(f"unknown model config field: {exc}") from None
        return ModelConfig.from_wire(self._call("PATCH", f"/model-configs/{config_id}", body))

    def delete_model_config(self, config_id: str) -> None:
        self._call("DELETE", f"/model-configs/{config_id}", ok=204)

    # -- WebSockets --

    def _ws_url(self, path: str) -> str:
        parts = urlsplit(self.api_url + path)
        return urlunsplit(parts._replace(scheme="wss" if parts.scheme == "https" else "ws"))

    def stream(self, chat_id: str, *, timeout: float | None = None) -> "ChatStream":
        """Follow a chat: its snapshot, then its live events (see :class:`ChatStream`).

        Raises:
            ChatsError: the server refused (401, 404...).
        """
        return ChatStream(self._ws_url(f"/{chat_id}/stream"), self._token, timeout=timeout)

    def watch(self, *, timeout: float | None = None) -> "ChatWatch":
        """Follow the user's chats being created, changing status or title, and deleted."""
        return ChatWatch(self._ws_url("/watch"), self._token, timeout=timeout)


class _Socket:
    """A one-way WebSocket reading Coder's envelopes. Close it (or use it as a context manager)."""

    def __init__(self, url: str, token: str, *, timeout: float | None) -> None:
        import websocket

        self._websocket = websocket
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._ws = websocket.create_connection(url, header=[f"Authorization: Bearer {token}"], timeout=timeout,
                                                   enable_multithread=True)
        except websocket.WebSocketBadStatusException as exc:
            raise error_for(exc.status_code, exc.resp_body or b"") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ChatsConnectionError(f"cannot open {urlsplit(url).path}: {type(exc).__name__}: {exc}") from None
        self.close_code: int | None = None

    def _next_envelope(self) -> tuple[str, Any] | None:
        """The next envelope, or None when the server closed the stream."""
        websocket = self._websocket
        while True:
            try:
                opcode, data = self._ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise TimeoutError("no stream event within the timeout") from None
            except (websocket.WebSocketConnectionClosedException, OSError) as exc:
                if self._closed:
                    return None
                raise ChatsConnectionError(f"the stream broke: {type(exc).__name__}: {exc}") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                self.close()
                return None
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                kind, payload = parse_envelope(data)
                if kind == "ping":
                    continue
                if kind == "error":
                    payload = payload if isinstance(payload, dict) else {}
                    raise ChatsStreamError(str(payload.get("message") or "stream error"),
                                           str(payload.get("detail") or ""))
                return kind, payload

    def close(self) -> None:
        """Close the connection. Idempotent; any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._ws.close(timeout=1)
        except Exception:
            pass
        try:
            self._ws.shutdown()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ChatStream(_Socket):
    """A chat's events: an iterator of :class:`~convo.server.chats_wire.StreamEvent` and a context manager.

    It ends when the server closes the stream (the chat never ends it:
    stop when you have what you wanted, and close it). ``ping`` envelopes
    are skipped.

    Raises (while iterating):
        ChatsStreamError: an ``error`` envelope (the chat was deleted...).
        ChatsConnectionError: the connection broke.
        TimeoutError: nothing arrived within the ``timeout`` given.
    """

    def __init__(self, url: str, token: str, *, timeout: float | None = None) -> None:
        super().__init__(url, token, timeout=timeout)
        self._pending: list[StreamEvent] = []

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        while not self._pending:
            got = self._next_envelope()
            if got is None:
                raise StopIteration
            _, data = got
            self._pending = [StreamEvent.from_wire(e) for e in data or ()]
        return self._pending.pop(0)


class ChatWatch(_Socket):
    """The user's chat lifecycle events (:class:`~convo.server.chats_wire.WatchEvent`): an iterator."""

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        got = self._next_envelope()
        if got is None:
            raise StopIteration
        return WatchEvent.from_wire(got[1])
