"""The one HTTP seam every provider service goes through.

:func:`new_session` builds a ``requests.Session`` whose connections can be
aborted from another thread; :func:`post_json` and :func:`stream` perform
one logical request (a JSON reply, or a streamed one) with the shared
:class:`~convo.RetryPolicy`, typed errors and cooperative cancellation. A
provider supplies only its URL, body, headers, a function that turns an
error body into a typed error and, for a stream, one that reads the body.

Why the socket tracking: Python cannot interrupt a thread blocked in
``recv()``, but shutting the socket down from another thread wakes it at
once. Every connection used inside :func:`abortable` is recorded, and the
current :class:`~convo._cancel.CancelToken` shuts them down when it fires.

How an API key stays secret. A :class:`Secret` holds it and hands it out
only inside a header value (:meth:`Secret.header`) that is a ``str`` whose
``repr``, ``str`` and ``format`` hide it, so the headers dict shows
``'<redacted>'`` in a traceback's locals or a log. requests' exceptions
hold the prepared request (headers included) and a traceback whose frames
hold the raw request bytes, so an error raised here never chains to one:
its ``__cause__`` is a message-only copy and it is raised outside the
``except`` block, so its ``__context__`` is empty. Last, :func:`scrubbed`
and :func:`scrubbed_events` clean an error a server made out of the key (a
proxy echoing it in a message), for every provider alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
from typing import Any, Callable, Iterator, Mapping, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .._cancel import CancelToken, current_token
from .._log import log
from ..errors import (
    APIConnectionError,
    APITimeoutError,
    Cancelled,
    ProviderError,
    ResponseFormatError,
    error_for_status,
)
from ._retry import RetryPolicy

_T = TypeVar("_T")

_tracked: contextvars.ContextVar[list | None] = contextvars.ContextVar("convo_http_conns", default=None)


def environ(name: str) -> str | None:
    """The environment variable ``name``, or None when it is unset or blank."""
    return os.environ.get(name, "").strip() or None


# --- secrets ------------------------------------------------------------------------

_REDACTED = "<redacted>"


class _SecretHeader(str):
    """A header value that carries a secret: sent as it is, never shown."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_REDACTED)

    def __str__(self) -> str:
        return _REDACTED

    def __format__(self, spec: str) -> str:
        return format(_REDACTED, spec)


class Secret:
    """An API key that never shows itself in a repr, a str, a traceback's locals or a log.

    The key leaves it only inside a header value (:meth:`header`) that hides
    it in turn; :meth:`redact` takes it out of a text a server sent back.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def given_or_from_env(cls, value: str | None, env_var: str) -> "Secret | None":
        """The key given, else the one in ``env_var``; None when neither is set (blank is unset)."""
        if value is None:
            value = environ(env_var)
        return cls(value) if value else None

    def header(self, prefix: str = "") -> str:
        """The header value ``prefix + key``, built whole, as a str that never shows it."""
        return _SecretHeader(prefix + self._value)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds the key."""
        return self._value in text

    def redact(self, text: str) -> str:
        """``text`` with the key replaced by ``<redacted>``."""
        return text.replace(self._value, _REDACTED)

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def scrub(err: ProviderError, secret: Secret | None) -> ProviderError:
    """``err``, or a clean copy of it when it or its chain mentions ``secret``'s value.

    Providers never echo a key, but a proxy or gateway at the base URL may,
    in an error message or in a body an error quotes. The copy has the same
    type and attributes, with the key replaced by ``<redacted>`` in each of
    its texts, and neither a chain nor a traceback, which may hold the body.
    """
    if secret is None or not any(secret.found_in(text) for text in _texts_of_chain(err)):
        return err
    # Rebuilt by ConvoError's own recipe (its args and attributes: no chain, no traceback), not by
    # copy.copy: importing distributed (Dask) makes tblib register a reducer for every exception class
    # that copies the chain and the traceback too.
    rebuild, args = err.__reduce__()[:2]
    clean = rebuild(*args)
    for name, value in list(vars(clean).items()):
        if isinstance(value, str):
            setattr(clean, name, secret.redact(value))
    clean.args = tuple(secret.redact(a) if isinstance(a, str) else a for a in clean.args)
    return clean


def _texts_of_chain(err: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield str(exc)
        yield repr(exc)
        yield repr(exc.args)
        for value in vars(exc).values():  # a JSONDecodeError's doc is the whole body
            yield repr(value)
        todo += [exc.__cause__, exc.__context__]


def scrubbed(secret: Secret | None, call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)``, with a ProviderError it raises cleaned of ``secret`` by :func:`scrub`."""
    try:
        return call(*args)
    except ProviderError as err:
        failure = scrub(err, secret)
    raise failure  # outside the except block: a clean copy must not get the original as its context


def scrubbed_events(secret: Secret | None, events: Iterator[_T]) -> Iterator[_T]:
    """The items of ``events``, with a ProviderError it raises cleaned of ``secret`` by :func:`scrub`.

    Closing this iterator closes ``events``.
    """
    with contextlib.closing(events):
        while True:
            try:
                event = next(events)
            except StopIteration:
                return
            except ProviderError as err:
                failure = scrub(err, secret)
                break
            yield event
    raise failure


# --- sessions and abortable connections -----------------------------------------------

class _Tracking:
    """Records each connection that sends a request inside :func:`abortable`."""

    def request(self, *args, **kwargs):
        conns = _tracked.get()
        if conns is not None:
            conns.append(self)
        return super().request(*args, **kwargs)


class _TrackedHTTPConnection(_Tracking, urllib3.connection.HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracking, urllib3.connection.HTTPSConnection):
    pass


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


class SessionOwner:
    """The lifetime of an HTTP service: the session it sends through, closed when it is.

    Use as a context manager, or call :meth:`close`. A session passed in is
    the caller's and is left open.
    """

    _session: requests.Session
    _owns_session: bool

    def _use_session(self, session: requests.Session | None) -> None:
        self._owns_session = session is None
        self._session = session if session is not None else new_session()

    def close(self) -> None:
        """Close the connection pool (a ``session`` passed in is the caller's, and stays open)."""
        if self._owns_session:
            self._session.close()

    # A connection pool does not cross processes: a pickled service (sent to a Dask or Ray
    # worker, say) arrives with a session of its own. Its pickle carries its API key.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_session", None)
        state["_owns_session"] = True
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._session = new_session()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _shutdown(conns: list) -> None:
    for conn in list(conns):
        sock = getattr(conn, "sock", None)
        if sock is None:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _connection_of(resp: requests.Response) -> Any:
    # urllib3's response knows its connection; shutting that socket down
    # wakes a thread blocked reading the body.
    return getattr(resp.raw, "connection", None) or getattr(resp.raw, "_connection", None)


@contextlib.contextmanager
def abortable(token: CancelToken | None = None) -> Iterator[CancelToken]:
    """Within the block, firing ``token`` (default: the current one) shuts down the sockets in use.

    Outside the block nothing is touched, so a connection returned to the
    pool is never shut down under another call.
    """
    token = token or current_token()
    conns: list = []
    reset = _tracked.set(conns)
    try:
        with token.on_cancel(lambda: _shutdown(conns)):
            yield token
    finally:
        _tracked.reset(reset)


# --- requests ------------------------------------------------------------------------

def request_id_of(headers: Mapping[str, str]) -> str | None:
    for name in ("request-id", "x-request-id", "anthropic-request-id"):
        value = headers.get(name)
        if value:
            return value
    return None


ErrorFromBody = Callable[..., ProviderError]
"""``error_from_body(status_code, body, *, request_id=None)``: a provider's typed error for an error body."""


def _error_of(resp: requests.Response, error_from_body: ErrorFromBody) -> ProviderError:
    """The typed error for an error response, which is read and closed.

    A JSON body is the provider's to read; any other body's text is the message.
    """
    status, request_id = resp.status_code, request_id_of(resp.headers)
    try:
        try:
            body = resp.json()
        except ValueError:
            text = resp.text[:500].strip()
            return error_for_status(status, text or f"HTTP {status} error", request_id=request_id)
        return error_from_body(status, body, request_id=request_id)
    except Exception as exc:  # a broken error body must still give a typed error
        return error_for_status(status, f"HTTP {status} with an unreadable body: {_describe(exc)}",
                                request_id=request_id)
    finally:
        resp.close()


def _json_body(body: Any) -> bytes:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate in some text is not UTF-8: send everything as JSON \u escapes instead.
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def send(
    session: requests.Session,
    url: str,
    body: Any,
    *,
    headers: Mapping[str, str],
    timeout: float | tuple,
    retry: RetryPolicy,
    error_from_body: ErrorFromBody,
    stream: bool = False,
    method: str = "POST",
    provider: str = "",
    first_attempt: int = 1,
    on_attempt: Callable[[int], None] | None = None,
) -> requests.Response:
    """Send ``body`` as JSON and return the first successful response.

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
    data = _json_body(body) if body is not None else None
    attempt = first_attempt - 1
    while True:
        attempt += 1
        token.raise_if_cancelled()
        if on_attempt is not None:
            on_attempt(attempt)
        failure: BaseException | None = None
        try:
            resp = session.request(method, url, data=data, headers=headers, timeout=timeout, stream=stream)
        except requests.exceptions.RequestException as exc:
            failure = _transport_failure(exc, provider, token)
        if failure is not None:
            # Raised here, after the except block, so that it carries no
            # context: the requests exception holds the request's headers.
            if isinstance(failure, Cancelled) or not retry.should_retry(attempt, None):
                raise failure
            delay = retry.delay(attempt)
            log.info("retrying_request", provider=provider, attempt=attempt, delay=round(delay, 3),
                     error=type(failure).__name__)
        else:
            if resp.status_code < 400:
                return resp
            err = _error_of(resp, error_from_body)
            if not retry.should_retry(attempt, resp.status_code, resp.headers):
                raise err
            delay = retry.delay(attempt, resp.headers)
            log.info("retrying_request", provider=provider, attempt=attempt, delay=round(delay, 3),
                     status_code=resp.status_code, request_id=err.request_id)
        if token.wait(delay):
            raise Cancelled(token.reason or "cancelled")


def _transport_failure(exc: BaseException, provider: str, token: CancelToken) -> BaseException:
    """What to raise for a failure to reach, or keep talking to, the server.

    :class:`Cancelled` when the token fired (its callback broke the
    connection); else a typed error chained to a message-only copy of
    ``exc``. Raise it outside the ``except`` block that caught ``exc``.
    """
    if token.cancelled:
        return Cancelled(token.reason or "cancelled")
    where = f"{provider} " if provider else ""
    if isinstance(exc, (requests.exceptions.Timeout, socket.timeout, TimeoutError)):
        err: APIConnectionError = APITimeoutError(f"{where}request timed out: {type(exc).__name__}")
    else:
        err = APIConnectionError(f"could not talk to the {where}server: {_describe(exc)}")
    err.__cause__ = _detached(exc)
    return err


def _detached(exc: BaseException) -> BaseException:
    """A stand-in for a transport exception: its type and message, nothing it referenced.

    requests' exceptions hold the prepared request, whose headers carry the
    API key, and their tracebacks' frames hold the raw request bytes.
    """
    text = str(exc)
    try:
        return type(exc)(text)
    except Exception:  # a constructor that wants other arguments (a few of urllib3's)
        return RuntimeError(f"{type(exc).__name__}: {text}")


def _describe(exc: BaseException) -> str:
    # requests' messages can be long chains; keep the innermost, most specific reason.
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}"


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

    def after_drop(self, exc: APIConnectionError, *, provider: str = "") -> None:
        """Wait before the next attempt after ``exc``; raise ``exc`` if the budget is spent.

        Raises:
            APIConnectionError: ``exc``, when no attempt is left.
            Cancelled: the current cancel token fired during the wait.
        """
        if not self.retry.should_retry(self.count, None):
            raise exc
        delay = self.retry.delay(self.count)
        log.info("retrying_request", provider=provider, attempt=self.count, delay=round(delay, 3),
                 error=type(exc).__name__, request_id=exc.request_id, reason="body_dropped")
        token = current_token()
        if token.wait(delay):
            raise Cancelled(token.reason or "cancelled")


_BODY_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


def iter_body(resp: requests.Response, provider: str = "") -> Iterator[bytes]:
    """The body of a streamed response, chunk by chunk as it arrives.

    A dropped connection becomes :class:`APIConnectionError` (or
    :class:`Cancelled` if the current token fired, which is what dropped it).
    """
    token = current_token()
    chunks = resp.iter_content(chunk_size=None)
    while True:
        try:
            chunk = next(chunks, None)
        except _BODY_ERRORS as exc:
            failure = _transport_failure(exc, provider, token)
            break
        if chunk is None:
            if token.cancelled:
                raise Cancelled(token.reason or "cancelled")
            return
        yield chunk
    raise failure


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
        err = ResponseFormatError(
            f"{provider or 'provider'} sent a body that is not JSON ({exc}): {snippet(raw)!r}",
            status_code=resp.status_code,
            request_id=request_id_of(resp.headers),
        )
    # The body may quote the key (a proxy echoing it): raise with neither the
    # JSONDecodeError (its doc is the body) as context nor the body in a local.
    del raw
    raise err


def stream(session: requests.Session, url: str, body: Any, *, read: Callable[[requests.Response], Iterator[_T]],
           retry: RetryPolicy, provider: str = "", **send_kwargs: Any) -> Iterator[_T]:
    """POST ``body`` for a streamed reply and yield what ``read(response)`` makes of its body.

    Nothing is sent until the first item is asked for, under the cancel
    token current then. ``read`` reads the body through :func:`iter_body`.
    A failure before the reply's headers is retried as ``retry`` allows, and
    so is a body that drops before ``read`` yielded anything, from the same
    attempt budget; once an item was yielded, a drop raises
    :class:`APIConnectionError` (a reply cannot be resumed, and a retry
    would repeat what was yielded).

    Cancellation aborts the request and the body alike, without holding
    anything in the caller's context between items, so the iterator may be
    closed from any thread. Close it (or drain it) to release the connection.
    """
    token = current_token()
    attempts = Attempts(retry)
    while True:
        with abortable(token):
            resp = send(session, url, body, stream=True, retry=retry, provider=provider, **send_kwargs,
                        **attempts.send_kwargs())
        conn = _connection_of(resp)
        started = False
        try:
            # The request ran inside abortable(); while the body is read
            # across yields, a cancel shuts this one socket down.
            with token.on_cancel(lambda: _shutdown([conn])), contextlib.closing(read(resp)) as items:
                for item in items:
                    started = True
                    yield item
            return
        except APIConnectionError as exc:
            exc.request_id = exc.request_id or request_id_of(resp.headers)
            if started:
                raise
            drop = exc
        finally:
            resp.close()
        attempts.after_drop(drop, provider=provider)


# --- shared by the providers -------------------------------------------------------------

def snippet(value: Any, limit: int = 200) -> str:
    """The start of a body or value, for an error message."""
    if isinstance(value, bytes):
        value = value[:limit * 4].decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def log_response(provider: str, response: Any, request_id: str | None) -> None:
    """Log a provider's reply at debug level: its id, stop reason and tokens."""
    u = response.usage
    log.debug("model_response", provider=provider, model=response.model, response_id=response.id,
              stop_reason=str(response.stop_reason), input_tokens=u.input_tokens, output_tokens=u.output_tokens,
              cache_creation_input_tokens=u.cache_creation_input_tokens,
              cache_read_input_tokens=u.cache_read_input_tokens, request_id=request_id)
