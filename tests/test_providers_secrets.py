"""An API key never leaks from a provider: not in errors, their chains, their tracebacks' locals, pickles or logs.

Each test sends a recognisable fake key to a real server on 127.0.0.1 (or
to a closed port), makes the call fail in one way, and looks for the key
everywhere an error can show it: ``str``, ``repr``, tracebacks rendered
with local variables (as Sentry and rich render them) for every exception
in the chain, the chain's attributes (requests exceptions carry the
request, and its headers), ``pickle.dumps`` and the log records.
"""

from __future__ import annotations

import json
import logging
import pickle
import traceback

import pytest
import structlog
from structlog.testing import capture_logs

from convo import APIConnectionError, APITimeoutError, AuthenticationError, ProviderError, ResponseFormatError
from convo.messages import Message, Request
from convo.providers import _http
from convo.providers._retry import RetryPolicy
from convo.providers.anthropic import AnthropicService
from convo.providers.openai import OpenAIService
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer, closed_port

SECRET = "sk-FAKE-convo-leak-canary-7f3a9c"
FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02, jitter=0)
REQ = Request([Message.user("hello")])
PROVIDERS = ["anthropic", "openai"]


def service(provider: str, url: str, **kw):
    kw.setdefault("retry", FAST)
    if provider == "anthropic":
        return AnthropicService(api_key=SECRET, base_url=url, **kw)
    return OpenAIService("gpt-4o", api_key=SECRET, base_url=url + "/v1", **kw)


def key_sent(provider: str, server: ScriptedHTTPServer) -> bool:
    """Whether every request the server saw carried the real key."""
    want = {"anthropic": ("x-api-key", SECRET), "openai": ("authorization", f"Bearer {SECRET}")}[provider]
    return bool(server.requests) and all(r.headers.get(want[0]) == want[1] for r in server.requests)


def echo_error(provider: str, status: int) -> Reply:
    """An error body that quotes the key back, as a careless proxy might."""
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {SECRET}"}}
    else:
        body = {"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "invalid_request_error",
                          "code": "invalid_api_key"}}
    return Reply.json(body, status)


def stream_events(provider: str) -> list[str]:
    """A whole streamed reply, one SSE event a string."""
    if provider == "anthropic":
        return ms.sse_for(ms.message_for({"messages": [{"role": "user", "content": "hi"}]}))
    chunks = [{"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": word}}]}
              for word in ("one ", "two ", "three")]
    chunks.append({"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        exc = todo.pop()
        if exc is None or any(exc is s for s in seen):
            continue
        seen.append(exc)
        todo += [exc.__cause__, exc.__context__]
    return seen


def rendered(exc: BaseException) -> str:
    """``exc`` as a traceback with every frame's locals, from where convo's code starts.

    The test's own frames are left out: their locals hold the key on purpose.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.TracebackException(type(exc), exc, tb, capture_locals=True).format())


def assert_no_secret(err: BaseException) -> None:
    texts = [rendered(err)]
    for exc in chain(err):
        texts += [str(exc), repr(exc), repr(exc.args), repr(vars(exc)), rendered(exc)]
        for name in ("request", "response"):
            held = getattr(exc, name, None)
            if held is None:
                continue
            texts.append(repr(held))
            headers = getattr(held, "headers", None) or {}
            texts.append(repr(headers))
            texts += [str.__str__(v) for v in headers.values() if isinstance(v, str)]  # the raw values
    for text in texts:
        assert SECRET not in text
    assert SECRET.encode() not in pickle.dumps(err)
    assert type(pickle.loads(pickle.dumps(err))) is type(err)


@pytest.fixture(params=["stdlib", "structlog"])
def logs(request, caplog):
    """Every log line convo writes during the test, at DEBUG, through stdlib logging or structlog."""
    lines: list[str] = []
    structlog.reset_defaults()  # another test's capture_logs() leaves structlog "configured"
    if request.param == "stdlib":
        caplog.set_level(logging.DEBUG, logger="convo")
        yield lines
        lines += [r.getMessage() for r in caplog.records] + [repr(vars(r)) for r in caplog.records]
    else:
        with capture_logs() as entries:
            yield lines
        lines += [json.dumps(e, default=repr) for e in entries]
        structlog.reset_defaults()
    for line in lines:
        assert SECRET not in line


def call(svc, streaming: bool):
    return list(svc.stream(REQ)) if streaming else svc.do(REQ)


@pytest.mark.parametrize("streaming", [False, True], ids=["do", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
class TestTheKeyNeverLeaks:
    def test_connection_refused(self, provider, streaming, logs):
        svc = service(provider, f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(APIConnectionError) as info:
            call(svc, streaming)
        assert_no_secret(info.value)
        assert isinstance(info.value.__cause__, Exception)  # the cause is kept, as a message-only copy
        assert getattr(info.value.__cause__, "request", None) is None
        # The headers were in the traceback's locals, and showed as redacted.
        assert "'<redacted>'" in rendered(info.value)

    def test_401_echoing_the_key_after_a_retried_529(self, provider, streaming, logs):
        with ScriptedHTTPServer([echo_error(provider, 529), echo_error(provider, 401)]) as server:
            with pytest.raises(AuthenticationError) as info:
                call(service(provider, server.url), streaming)
        assert key_sent(provider, server) and len(server.requests) == 2
        assert "<redacted>" in info.value.message
        assert_no_secret(info.value)

    def test_drop_mid_stream(self, provider, streaming, logs):
        events = stream_events(provider)
        dropped = Reply(200, b"", {"content-type": "text/event-stream"}, chunks=tuple(events),
                        drop_after=len(events) // 2)
        if not streaming:  # a JSON body cut short, every attempt
            dropped = Reply(200, b"", {"content-type": "application/json"}, chunks=('{"id": "x", "cont', "ent"),
                            drop_after=1)
        with ScriptedHTTPServer(default=dropped) as server:
            with pytest.raises(APIConnectionError) as info:
                call(service(provider, server.url), streaming)
        assert key_sent(provider, server)
        assert_no_secret(info.value)

    def test_timeout(self, provider, streaming, logs):
        events = stream_events(provider)
        if streaming:  # headers and a first event, then silence longer than the read timeout
            slow = Reply(200, b"", {"content-type": "text/event-stream"}, chunks=(events[0], "".join(events[1:])),
                         chunk_delay=1.5)
        else:
            slow = Reply(stall=1.5)
        with ScriptedHTTPServer(default=slow) as server:
            with pytest.raises(APIConnectionError) as info:
                call(service(provider, server.url, timeout=(2, 0.2)), streaming)
        assert key_sent(provider, server)
        if not streaming:
            assert isinstance(info.value, APITimeoutError)
        assert_no_secret(info.value)


@pytest.mark.parametrize("provider", PROVIDERS)
class TestAKeyEchoedInTheBody:
    def test_error_event_mid_stream(self, provider, logs):
        events = stream_events(provider)
        if provider == "anthropic":
            error = {"type": "error", "error": {"type": "api_error", "message": f"proxy: key {SECRET} refused"}}
            bad = f"event: error\ndata: {json.dumps(error)}\n\n"
        else:
            bad = f"data: {json.dumps({'error': {'code': 502, 'message': f'proxy: key {SECRET} refused'}})}\n\n"
        with ScriptedHTTPServer([Reply(200, b"", {"content-type": "text/event-stream"},
                                       chunks=(events[0], events[1], bad))]) as server:
            with pytest.raises(ProviderError) as info:
                list(service(provider, server.url).stream(REQ))
        assert key_sent(provider, server)
        assert "proxy: key <redacted> refused" in info.value.message
        assert_no_secret(info.value)

    def test_body_that_is_not_json_quoting_the_key_past_the_snippet(self, provider, logs):
        page = "<html>" + "x" * 300 + f" your key: {SECRET}</html>"
        with ScriptedHTTPServer([Reply(200, page, {"content-type": "application/json"})]) as server:
            with pytest.raises(ResponseFormatError) as info:
                service(provider, server.url).do(REQ)
        assert key_sent(provider, server)
        assert_no_secret(info.value)

    def test_stream_data_that_is_not_json_quoting_the_key(self, provider, logs):
        bad = f"event: content_block_start\ndata: {{oops {SECRET}\n\n"
        with ScriptedHTTPServer([Reply.sse(stream_events(provider)[0] + bad)]) as server:
            with pytest.raises(ResponseFormatError) as info:
                list(service(provider, server.url).stream(REQ))
        assert_no_secret(info.value)


class TestTheSeam:
    def test_a_secret_header_is_sent_whole_and_never_shown(self):
        value = _http.Secret(SECRET).header("Bearer ")
        assert value.encode() == f"Bearer {SECRET}".encode()  # what http.client sends
        assert value == f"Bearer {SECRET}"
        for shown in (repr(value), str(value), f"{value}", "%s" % value, repr({"authorization": value})):
            assert SECRET not in shown
        with ScriptedHTTPServer([Reply(200, "{}")]) as server:
            resp = _http.send(_http.new_session(), server.url, {}, headers={"authorization": value}, timeout=5,
                              retry=RetryPolicy.none(), error_from_body=lambda *a, **k: ProviderError("x"))
        assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in repr(resp.request.headers)

    def test_one_scrubber_leaves_an_error_without_the_key_as_it_is(self):
        err = ProviderError("busy", status_code=529)
        err.__cause__ = ValueError("context worth keeping")
        assert _http.scrub(err, _http.Secret(SECRET)) is err

    def test_one_scrubber_copies_an_error_that_mentions_the_key(self):
        err = AuthenticationError(f"bad key {SECRET}", status_code=401, request_id=f"req {SECRET}")
        try:
            json.loads(f"{{{SECRET}")
        except ValueError as exc:  # a JSONDecodeError holds its whole document
            err.__cause__ = exc
        clean = _http.scrub(err, _http.Secret(SECRET))
        assert type(clean) is AuthenticationError and clean.status_code == 401
        assert (clean.message, clean.request_id) == ("bad key <redacted>", "req <redacted>")
        assert clean.__cause__ is None and clean.__context__ is None
        assert_no_secret(clean)

    def test_services_never_show_the_key(self):
        for provider in PROVIDERS:
            svc = service(provider, "http://127.0.0.1:9")
            for text in (repr(svc), str(svc), repr(vars(svc)), repr(svc._send_kwargs())):
                assert SECRET not in text
