"""The one HTTP seam every provider service goes through.

:func:`new_session` builds a ``requests.Session`` whose connections can be
aborted from another thread; :func:`send` performs one logical request with
the shared :class:`~convo.RetryPolicy`, typed errors and cooperative
cancellation. A provider supplies only its URL, body, headers and a
function that turns an error response into a typed error.

Why the socket tracking: Python cannot interrupt a thread blocked in
``recv()``, but shutting the socket down from another thread wakes it at
once. Every connection used inside :func:`abortable` is recorded, and the
current :class:`~convo._cancel.CancelToken` shuts them down when it fires.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
from typing import Any, Callable, Iterator, Mapping

import requests
import structlog
import urllib3
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ._cancel import CancelToken, current_token
from ._retry import RetryPolicy
from .errors import (
    APIConnectionError,
    APITimeoutError,
    Cancelled,
    ProviderError,
    ResponseFormatError,
)

log = structlog.get_logger("convo")

_tracked: contextvars.ContextVar[list | None] = contextvars.ContextVar("convo_http_conns", default=None)


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args, **kwargs):
        conns = _tracked.get()
        if conns is not None:
            conns.append(self)
        return super().request(*args, **kwargs)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args, **kwargs):
        conns = _tracked.get()
        if conns is not None:
            conns.append(self)
        return super().request(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _AbortableAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


# What requests reads from the environment to route and verify a request to
# an http(s) URL (urllib's getproxies() also honours REQUEST_METHOD, for CGI).
_ENV_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "NO_PROXY", "REQUEST_METHOD", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class _Session(requests.Session):
    """A ``requests.Session`` that looks the environment up once per origin.

    requests works out proxies from the environment on every request, by
    walking all of ``os.environ`` twice: ~80 us a request with a small
    environment, more with a large one, 15% of a whole turn against a local
    server. The answer depends only on the origin and a few variables, so it
    is kept per origin and worked out again whenever one of those variables
    changes. (On macOS and Windows, a system proxy setting changed while the
    process runs is not seen; an environment variable change still is.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._env_proxies: dict = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if not self.trust_env or proxies is None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        # The same steps as requests.Session.merge_environment_settings, with the lookup cached.
        env = tuple(os.environ.get(name) for name in _ENV_NAMES)
        no_proxy = proxies.get("no_proxy")
        slash = url.find("/", url.find("//") + 2)
        key = (url if slash == -1 else url[:slash], no_proxy, env)
        env_proxies = self._env_proxies.get(key)
        if env_proxies is None:
            env_proxies = get_environ_proxies(url, no_proxy=no_proxy)
            if len(self._env_proxies) > 64:  # origins, or environments, churning: don't grow without bound
                self._env_proxies.clear()
            self._env_proxies[key] = env_proxies
        for k, v in env_proxies.items():
            proxies.setdefault(k, v)
        if verify is True or verify is None:
            verify = env[-2] or env[-1] or verify
        return {
            "proxies": merge_setting(proxies, self.proxies),
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }


class Secret:
    """An API key that never shows itself in a repr, a str, a traceback's locals or a log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def new_session(pool_maxsize: int = 64) -> requests.Session:
    """A ``requests.Session`` whose in-flight requests :func:`abortable` can abort.

    ``pool_maxsize`` keep-alive connections per host: convo is used from many
    threads at once, and requests' default of 10 would open and drop
    connections under load.
    """
    session = _Session()
    adapter = _AbortableAdapter(pool_connections=4, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _shutdown(conns: list) -> None:
    for conn in list(conns):
        sock = getattr(conn, "sock", None)
        if sock is None:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@contextlib.contextmanager
def abortable(token: CancelToken | None = None) -> Iterator[CancelToken]:
    """Within the block, firing ``token`` (default: the current one) shuts down the sockets in use.

    Wrap the whole request *and* the reading of its body, so that a stalled
    stream is woken too. Outside the block nothing is touched, so a
    connection returned to the pool is never shut down under another call.
    """
    token = token or current_token()
    conns: list = []
    reset = _tracked.set(conns)
    try:
        with token.on_cancel(lambda: _shutdown(conns)):
            yield token
    finally:
        _tracked.reset(reset)


def request_id_of(headers: Mapping[str, str]) -> str | None:
    for name in ("request-id", "x-request-id", "anthropic-request-id"):
        value = headers.get(name)
        if value:
            return value
    return None


ErrorFactory = Callable[[requests.Response], ProviderError]


def send(
    session: requests.Session,
    url: str,
    body: Any,
    *,
    headers: Mapping[str, str],
    timeout: float | tuple,
    retry: RetryPolicy,
    error_from_response: ErrorFactory,
    stream: bool = False,
    method: str = "POST",
    provider: str = "",
    first_attempt: int = 1,
    on_attempt: Callable[[int], None] | None = None,
) -> requests.Response:
    """POST ``body`` as JSON and return the first successful response.

    Retries what ``retry`` allows; the wait between attempts ends early, with
    :class:`~convo.errors.Cancelled`, when the current token fires. Must be
    called inside :func:`abortable` for an in-flight request to be abortable.

    ``first_attempt`` numbers the attempts of a call that already made some
    (a stream retried after its connection dropped), so that ``retry``
    counts and backs off over the whole call; ``on_attempt`` is told each
    attempt's number as it starts.

    Raises:
        ProviderError: a typed error for an error status (after retries).
        APIConnectionError / APITimeoutError: the server could not be reached.
        Cancelled: the current cancel token fired.
    """
    token = current_token()
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") if body is not None else None
    attempt = first_attempt - 1
    while True:
        attempt += 1
        token.raise_if_cancelled()
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            resp = session.request(method, url, data=data, headers=headers, timeout=timeout, stream=stream)
        except requests.exceptions.RequestException as exc:
            if token.cancelled:
                raise Cancelled(token.reason or "cancelled") from None
            err = connection_error(exc, provider)
            if not retry.should_retry(attempt, None):
                raise err from exc
            delay = retry.delay(attempt)
            log.info("retrying_request", provider=provider, attempt=attempt, delay=round(delay, 3),
                     error=type(err).__name__)
        else:
            if resp.status_code < 400:
                return resp
            try:
                err = error_from_response(resp)
            except Exception as exc:  # a broken error body must still give a typed error
                err = ProviderError(f"HTTP {resp.status_code} with an unreadable body: {exc}",
                                    status_code=resp.status_code, request_id=request_id_of(resp.headers))
            finally:
                resp.close()
            if not retry.should_retry(attempt, resp.status_code, resp.headers):
                raise err
            delay = retry.delay(attempt, resp.headers)
            log.info("retrying_request", provider=provider, attempt=attempt, delay=round(delay, 3),
                     status_code=resp.status_code, request_id=err.request_id)
        if token.wait(delay):
            raise Cancelled(token.reason or "cancelled")


class Attempts:
    """The attempt count of one logical call whose reply body may drop and be retried.

    :func:`send` retries failures up to the response headers; a body that
    drops before anything of it was used is worth retrying too, from the
    same budget. Pass ``**attempts.send_kwargs()`` to every :func:`send` of
    the call and call :meth:`after_drop` when a body drops: it waits and
    returns if another attempt is allowed, or raises. Not thread-safe: one
    per call.
    """

    __slots__ = ("retry", "count")

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self.count = 0

    def _note(self, n: int) -> None:
        self.count = n

    def send_kwargs(self) -> dict:
        return {"first_attempt": self.count + 1, "on_attempt": self._note}

    def after_drop(self, exc: APIConnectionError, *, provider: str = "", request_id: str | None = None) -> None:
        """Wait before the next attempt after ``exc``; raise ``exc`` if the budget is spent.

        Raises:
            APIConnectionError: ``exc``, when no attempt is left.
            Cancelled: the current cancel token fired during the wait.
        """
        exc.request_id = exc.request_id or request_id
        if not self.retry.should_retry(self.count, None):
            raise exc
        delay = self.retry.delay(self.count)
        log.info("retrying_request", provider=provider, attempt=self.count, delay=round(delay, 3),
                 error=type(exc).__name__, request_id=request_id, reason="body_dropped")
        token = current_token()
        if token.wait(delay):
            raise Cancelled(token.reason or "cancelled") from None


def connection_error(exc: BaseException, provider: str = "") -> APIConnectionError:
    """The typed error for a failure to reach (or keep talking to) the server."""
    where = f"{provider} " if provider else ""
    if isinstance(exc, (requests.exceptions.Timeout, socket.timeout, TimeoutError)):
        return APITimeoutError(f"{where}request timed out: {type(exc).__name__}")
    return APIConnectionError(f"could not talk to the {where}server: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    # requests' messages can be long chains; keep the innermost, most specific reason.
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}"


def iter_body(resp: requests.Response, provider: str = "") -> Iterator[bytes]:
    """The body of a streamed response, chunk by chunk as it arrives.

    A dropped connection becomes :class:`APIConnectionError` (or
    :class:`Cancelled` if the current token fired, which is what dropped it).
    """
    token = current_token()
    try:
        for chunk in resp.iter_content(chunk_size=None):
            yield chunk
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if token.cancelled:
            raise Cancelled(token.reason or "cancelled") from None
        raise connection_error(exc, provider) from exc
    if token.cancelled:
        raise Cancelled(token.reason or "cancelled")


def post_json(session: requests.Session, url: str, body: Any, *, provider: str = "",
              **send_kwargs: Any) -> tuple[Any, requests.Response]:
    """POST ``body`` and return the reply's parsed JSON and the (closed) response.

    The whole body is read inside :func:`send` (requests does so when not
    streaming), so a connection that drops mid-body is retried there like any
    other connection error, from the same budget. Abortable by the current
    cancel token throughout.
    """
    with abortable():
        resp = send(session, url, body, stream=False, provider=provider, **send_kwargs)
        try:
            return read_json(resp, provider), resp
        finally:
            resp.close()


def read_json(resp: requests.Response, provider: str = "") -> Any:
    """The body of a JSON response, with typed errors for a dropped or malformed body."""
    raw = b"".join(iter_body(resp, provider))
    try:
        return json.loads(raw)
    except ValueError as exc:
        snippet = raw[:200].decode("utf-8", errors="replace")
        raise ResponseFormatError(
            f"{provider or 'provider'} sent a body that is not JSON ({exc}): {snippet!r}",
            status_code=resp.status_code,
            request_id=request_id_of(resp.headers),
        ) from None

