"""AnthropicService over real sockets: headers, count_tokens, retries, cancellation, secrets, threads."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from structlog.testing import capture_logs

from convo import errors
from convo._cancel import CancelToken, cancel_scope, current_token
from convo.providers._retry import RetryPolicy
from convo.providers.anthropic import API_VERSION, DEFAULT_MODEL, AnthropicService
from convo.messages import Message, Request, Text, ThinkingConfig, ToolSpec
from convo.service import StreamDone, TextDelta, UsageUpdate
from convo.usage import Usage
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer, closed_port
from tests.test_anthropic_replay import sse_from_message

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=0)
SECRET = "sk-ant-test-SECRET-1234"


def svc(url: str, **kw) -> AnthropicService:
    kw.setdefault("retry", FAST)
    kw.setdefault("api_key", SECRET)
    return AnthropicService(base_url=url, **kw)


def req(text: str = "hello", **kw) -> Request:
    return Request(messages=[Message.user(text)], **kw)


def a_message(text: str = "hi there", **kw) -> dict:
    return {"id": "msg_ok", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 3}, **kw}


def ok_json() -> Reply:
    return Reply.json(a_message(), headers={"request-id": "req_ok"})


def ok_sse(chunk_size: int = 40, **kw) -> Reply:
    return Reply.sse(sse_from_message(a_message(), piece=2), chunk_size=chunk_size, **kw)


def api_error(status: int, kind: str, headers: dict | None = None) -> Reply:
    return Reply.json({"type": "error", "error": {"type": kind, "message": f"{kind} says no"}}, status,
                      headers={"request-id": "req_err", **(headers or {})})


def collect(events) -> list:
    return list(events)


class TestConstruction:
    def test_key_from_the_environment(self, monkeypatch):
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
        with ScriptedHTTPServer([ok_json()]) as server:
            AnthropicService(base_url=server.url).do(req())
        assert server.requests[0].headers["x-api-key"] == "sk-ant-from-env"

    @pytest.mark.parametrize("value", [None, ""])
    def test_missing_key_names_the_variable(self, monkeypatch, value):
        if value is None:
            monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        else:
            monkeypatch.setenv("ANTHROPIC_API_KEY", value)
        with pytest.raises(errors.MissingAPIKeyError, match="ANTHROPIC_API_KEY") as info:
            AnthropicService()
        assert isinstance(info.value, ValueError) and info.value.env_var == "ANTHROPIC_API_KEY"

    def test_defaults(self):
        s = AnthropicService(api_key="k")
        assert (s.model, s.max_tokens, s.base_url) == (DEFAULT_MODEL, 8192, "https://api.anthropic.com")
        assert repr(s) == "AnthropicService(model='claude-sonnet-4-5', max_tokens=8192, base_url='https://api.anthropic.com')"

    def test_bad_max_tokens(self):
        with pytest.raises(errors.ConfigurationError):
            AnthropicService(api_key="k", max_tokens=0)

    @pytest.mark.parametrize("model,betas,window", [
        ("claude-sonnet-4-5", (), 200_000),
        ("claude-haiku-4-5-20251001", ("context-1m-2025-08-07",), 200_000),
        ("claude-sonnet-4-5-20250929", ("context-1m-2025-08-07",), 1_000_000),
        ("claude-sonnet-4-20250514", ("context-1m-2025-08-07",), 1_000_000),
        ("claude-opus-4-6", ("context-1m-2025-08-07",), 1_000_000),
        ("claude-opus-4-1", ("context-1m-2025-08-07",), 200_000),
        ("claude-3-7-sonnet-20250219", (), 200_000),
    ])
    def test_context_window(self, model, betas, window):
        assert AnthropicService(api_key="k", model=model, betas=betas).token_context_window() == window

    def test_context_window_override(self):
        assert AnthropicService(api_key="k", context_window=123).token_context_window() == 123


class TestWhatIsSent:
    def test_do_headers_and_body(self):
        with ScriptedHTTPServer([ok_json()]) as server:
            s = svc(server.url + "/", model="claude-haiku-4-5", max_tokens=321,
                    betas=("prompt-caching-2024-07-31", "context-1m-2025-08-07"))
            r = s.do(req(system=[Text("be brief")]))
        sent = server.requests[0]
        assert (sent.method, sent.path) == ("POST", "/v1/messages")
        assert sent.headers["x-api-key"] == SECRET
        assert sent.headers["anthropic-version"] == API_VERSION == "2023-06-01"
        assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
        assert sent.headers["content-type"] == "application/json"
        assert sent.json() == {"model": "claude-haiku-4-5", "max_tokens": 321,
                               "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                               "system": [{"type": "text", "text": "be brief"}]}
        assert r.text() == "hi there"

    def test_stream_body_and_accept(self):
        with ScriptedHTTPServer([ok_sse()]) as server:
            collect(svc(server.url).stream(req()))
        sent = server.requests[0]
        assert sent.json()["stream"] is True
        assert sent.headers["accept"] == "text/event-stream"
        assert "anthropic-beta" not in sent.headers

    def test_service_thinking_default_is_sent(self):
        with ScriptedHTTPServer([ok_json()]) as server:
            svc(server.url, thinking=ThinkingConfig(adaptive=True)).do(req())
        assert server.requests[0].json()["thinking"] == {"type": "adaptive"}

    def test_stream_sends_nothing_until_iterated(self):
        with ScriptedHTTPServer([ok_sse()]) as server:
            events = svc(server.url).stream(req())
            time.sleep(0.05)
            assert server.requests == []
            assert isinstance(collect(events)[-1], StreamDone)

    def test_non_ascii_goes_as_utf8(self):
        with ScriptedHTTPServer([ok_json()]) as server:
            svc(server.url).do(req("naïve café ☕"))
        assert "naïve café ☕".encode() in server.requests[0].body


class TestCountTokens:
    def test_counts(self):
        spec = ToolSpec("f", "does f")
        with ScriptedHTTPServer([Reply.json({"input_tokens": 1234})]) as server:
            n = svc(server.url, model="claude-haiku-4-5", thinking=ThinkingConfig(budget_tokens=2000)).count_tokens(
                req(system=[Text("sys", cache=True)], tools=[spec], temperature=0.5, stop_sequences=["x"]))
        assert n == 1234
        sent = server.requests[0]
        assert sent.path == "/v1/messages/count_tokens"
        assert sent.json() == {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "f", "description": "does f", "input_schema": {"type": "object", "properties": {}}}],
            "thinking": {"type": "enabled", "budget_tokens": 2000},
        }

    def test_answer_without_a_count(self):
        with ScriptedHTTPServer([Reply.json({"tokens": 3})]) as server:
            with pytest.raises(errors.ResponseFormatError):
                svc(server.url).count_tokens(req())


class TestRetries:
    @pytest.mark.parametrize("streaming", [False, True], ids=["do", "stream"])
    def test_529_then_success(self, streaming):
        good = ok_sse() if streaming else ok_json()
        with ScriptedHTTPServer([api_error(529, "overloaded_error"), good]) as server:
            s = svc(server.url)
            r = collect(s.stream(req()))[-1].response if streaming else s.do(req())
        assert r.text() == "hi there"
        assert len(server.requests) == 2

    def test_429_retry_after_seconds_is_honoured(self):
        with ScriptedHTTPServer([api_error(429, "rate_limit_error", {"retry-after": "1"}), ok_json()]) as server:
            t0 = time.monotonic()
            svc(server.url).do(req())
            waited = time.monotonic() - t0
        assert len(server.requests) == 2
        assert 0.9 <= waited < 5  # the policy alone would have waited 0.01 s

    def test_429_retry_after_ms_is_honoured(self):
        slow_policy = RetryPolicy(max_attempts=2, initial_delay=5, jitter=0)
        with ScriptedHTTPServer([api_error(429, "rate_limit_error", {"retry-after-ms": "150"}), ok_json()]) as server:
            t0 = time.monotonic()
            svc(server.url, retry=slow_policy).do(req())
            waited = time.monotonic() - t0
        assert len(server.requests) == 2
        assert 0.14 <= waited < 3  # the header, not the policy's 5 s

    def test_429_without_retry_after_uses_the_backoff(self):
        with ScriptedHTTPServer([api_error(429, "rate_limit_error"), ok_json()]) as server:
            svc(server.url).do(req())
        assert len(server.requests) == 2

    def test_x_should_retry_false_stops_retries(self):
        with ScriptedHTTPServer([api_error(529, "overloaded_error", {"x-should-retry": "false"}), ok_json()]) as server:
            with pytest.raises(errors.OverloadedError) as info:
                svc(server.url).do(req())
        assert len(server.requests) == 1
        assert (info.value.status_code, info.value.error_type, info.value.request_id) == (
            529, "overloaded_error", "req_err")

    def test_x_should_retry_true_retries_even_a_400(self):
        with ScriptedHTTPServer([api_error(400, "invalid_request_error", {"x-should-retry": "true"}),
                                 ok_json()]) as server:
            svc(server.url).do(req())
        assert len(server.requests) == 2

    def test_gives_up_after_max_attempts(self):
        with ScriptedHTTPServer(default=api_error(500, "api_error")) as server:
            with pytest.raises(errors.ServerError):
                svc(server.url).do(req())
        assert len(server.requests) == 3

    def test_connection_refused(self):
        with capture_logs() as logs:
            with pytest.raises(errors.APIConnectionError):
                svc(f"http://127.0.0.1:{closed_port()}").do(req())
        assert [e["attempt"] for e in logs if e["event"] == "retrying_request"] == [1, 2]

    def test_connection_reset_before_headers_is_retried(self):
        with ScriptedHTTPServer([Reply(drop_after=0), ok_json()]) as server:
            assert svc(server.url).do(req()).text() == "hi there"
        assert len(server.requests) == 2

    def test_stream_dropped_before_its_first_event_is_retried(self):
        dropped = Reply(200, b"", {"content-type": "text/event-stream"}, chunks=(b"event: ping\n",), drop_after=0)
        with ScriptedHTTPServer([dropped, ok_sse()]) as server:
            events = collect(svc(server.url).stream(req()))
        assert events[-1].response.text() == "hi there"
        assert len(server.requests) == 2

    def test_stream_dropped_part_way_through_its_first_event_is_retried(self):
        half = sse_from_message(a_message()).encode()[:30]
        with ScriptedHTTPServer([Reply(200, b"", {}, chunks=(half,), drop_after=1), ok_sse()]) as server:
            assert collect(svc(server.url).stream(req()))[-1].response.text() == "hi there"
        assert len(server.requests) == 2

    def test_stream_dropped_after_its_first_event_is_not_retried(self):
        data = sse_from_message(a_message("a longer reply to cut"), piece=2).encode()
        first_events = data.index(b"content_block_delta")  # message_start, ping, block start
        cut = data.index(b"\n\n", data.index(b"text_delta")) + 2  # ...and one text delta
        chunks = (data[:first_events], data[first_events:cut], data[cut:])
        seen = []
        with ScriptedHTTPServer([Reply(200, b"", {"request-id": "req_cut"}, chunks=chunks, drop_after=2),
                                 ok_sse()]) as server:
            with pytest.raises(errors.APIConnectionError) as info:
                for event in svc(server.url).stream(req()):
                    seen.append(event)
        assert len(server.requests) == 1
        # message_start's usage, then the one delta that arrived
        assert seen == [UsageUpdate(Usage(input_tokens=5, output_tokens=1)), TextDelta(0, "a ")]
        assert info.value.request_id == "req_cut"

    def test_stream_drops_share_the_retry_budget(self):
        dropped = Reply(200, b"", {}, chunks=(b"event: ping\n",), drop_after=0)
        with ScriptedHTTPServer(default=dropped) as server:
            with pytest.raises(errors.APIConnectionError):
                collect(svc(server.url).stream(req()))
        assert len(server.requests) == 3

    def test_status_errors_and_drops_count_against_one_budget(self):
        """max_attempts is the number of requests in all, however the failures mix."""
        dropped = Reply(200, b"", {}, chunks=(b"event: ping\n",), drop_after=0)
        script = [api_error(529, "overloaded_error"), dropped, api_error(529, "overloaded_error"), ok_sse()]
        with ScriptedHTTPServer(script) as server:
            with pytest.raises(errors.OverloadedError):
                collect(svc(server.url).stream(req()))
        assert len(server.requests) == 3
        with ScriptedHTTPServer(script[:2] + [ok_sse()]) as server:
            assert collect(svc(server.url).stream(req()))[-1].response.text() == "hi there"
        assert len(server.requests) == 3

    def test_error_event_mid_stream(self):
        data = sse_from_message(a_message()).split("event: message_delta")[0]
        data += 'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
        with ScriptedHTTPServer([Reply.sse(data, chunk_size=9, headers={"request-id": "req_mid"}), ok_sse()]) as server:
            with pytest.raises(errors.OverloadedError) as info:
                collect(svc(server.url).stream(req()))
        assert len(server.requests) == 1
        e = info.value
        assert (e.status_code, e.error_type, e.message, e.request_id) == (None, "overloaded_error", "Overloaded",
                                                                          "req_mid")

    def test_stream_cut_cleanly_before_message_stop(self):
        data = sse_from_message(a_message()).split("event: message_delta")[0]
        with ScriptedHTTPServer([Reply.sse(data)]) as server:
            with pytest.raises(errors.ResponseFormatError, match="message_stop"):
                collect(svc(server.url).stream(req()))
        assert len(server.requests) == 1

    def test_malformed_json_body(self):
        with ScriptedHTTPServer([Reply(200, '{"id": "msg_x", "content": [', {"content-type": "application/json"})]
                                ) as server:
            with pytest.raises(errors.ResponseFormatError):
                svc(server.url).do(req())
        assert len(server.requests) == 1

    def test_read_timeout(self):
        with ScriptedHTTPServer([Reply(stall=3)]) as server:
            t0 = time.monotonic()
            with pytest.raises(errors.APITimeoutError):
                svc(server.url, retry=RetryPolicy.none(), timeout=(2, 0.2)).do(req())
        assert time.monotonic() - t0 < 2

    def test_the_connection_is_reused(self):
        with ScriptedHTTPServer([ok_json(), ok_sse(), ok_json()]) as server:
            s = svc(server.url)
            s.do(req())
            collect(s.stream(req()))
            s.do(req())
        pools = s._session.get_adapter(server.url).poolmanager.pools
        opened = sum(pools[key].num_connections for key in pools.keys())
        assert len(server.requests) == 3 and opened == 1


def in_thread(fn):
    """Run ``fn`` in a thread; return (thread, box) where box gets 'result' or 'error' and 'elapsed'."""
    box: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


class TestCancellation:
    def test_a_stalled_stream_is_aborted_promptly(self):
        token = CancelToken()
        first_delta = threading.Event()
        data = sse_from_message(a_message(), piece=2).encode()
        cut = data.index(b"\n\n", data.index(b"text_delta")) + 2
        stalled = Reply(200, b"", {}, chunks=(data[:cut], data[cut:]), chunk_delay=30)  # then nothing for 30 s

        def consume():
            with cancel_scope(token):
                for event in svc(server.url).stream(req()):
                    if isinstance(event, TextDelta):
                        first_delta.set()

        with ScriptedHTTPServer([stalled]) as server:
            thread, box = in_thread(consume)
            assert first_delta.wait(5)
            t0 = time.monotonic()
            token.cancel("user pressed stop")
            thread.join(5)
            took = time.monotonic() - t0
        assert isinstance(box.get("error"), errors.Cancelled), box
        assert took < 1.0

    def test_a_stalled_request_is_aborted_promptly(self):
        token = CancelToken()
        with ScriptedHTTPServer([Reply(stall=30)]) as server:
            s = svc(server.url)

            def call():
                with cancel_scope(token):
                    return s.do(req())

            thread, box = in_thread(call)
            while not server.requests:
                time.sleep(0.01)
            time.sleep(0.1)
            token.cancel()
            thread.join(5)
        assert isinstance(box.get("error"), errors.Cancelled)
        assert box["elapsed"] < 1.5

    @pytest.mark.parametrize("streaming", [False, True], ids=["do", "stream"])
    def test_the_wait_between_retries_ends_on_cancel(self, streaming):
        token = CancelToken()
        with ScriptedHTTPServer([api_error(529, "overloaded_error", {"retry-after": "30"}), ok_json()]) as server:
            s = svc(server.url)

            def call():
                with cancel_scope(token):
                    return collect(s.stream(req())) if streaming else s.do(req())

            thread, box = in_thread(call)
            while not server.requests:
                time.sleep(0.01)
            time.sleep(0.2)
            t0 = time.monotonic()
            token.cancel()
            thread.join(5)
            took = time.monotonic() - t0
        assert isinstance(box.get("error"), errors.Cancelled)
        assert took < 1.0 and len(server.requests) == 1

    def test_an_already_cancelled_token_sends_nothing(self):
        token = CancelToken()
        token.cancel()
        with ScriptedHTTPServer([ok_json()]) as server:
            with cancel_scope(token), pytest.raises(errors.Cancelled):
                svc(server.url).do(req())
        assert server.requests == []

    def test_the_service_works_after_a_cancel(self):
        token = CancelToken()
        with ScriptedHTTPServer([ok_sse(chunk_size=120, chunk_delay=30), ok_json()]) as server:
            s = svc(server.url)

            def consume():
                with cancel_scope(token):
                    collect(s.stream(req()))

            thread, box = in_thread(consume)
            while not server.requests:
                time.sleep(0.01)
            time.sleep(0.1)
            token.cancel()
            thread.join(5)
            assert isinstance(box.get("error"), errors.Cancelled)
            assert s.do(req()).text() == "hi there"

    def test_the_stream_leaves_no_context_behind_between_events(self):
        token = CancelToken()
        with ScriptedHTTPServer([ok_sse()]) as server:
            with cancel_scope(token):
                events = svc(server.url).stream(req())
                next(events)
            assert current_token() is not token
            seen = [current_token() is token for _ in events]
        assert seen and not any(seen)

    def test_closing_a_stream_early_releases_it(self):
        with ScriptedHTTPServer([ok_sse(chunk_size=20, chunk_delay=0.01), ok_json()]) as server:
            s = svc(server.url)
            events = s.stream(req())
            next(events)
            events.close()
            assert s.do(req()).text() == "hi there"


class TestSecrets:
    def test_the_key_never_shows(self):
        s_repr = []
        raised = []
        with capture_logs() as logs:
            with ScriptedHTTPServer([api_error(401, "authentication_error"), api_error(529, "overloaded_error"),
                                     api_error(529, "overloaded_error"), api_error(529, "overloaded_error"),
                                     Reply(200, "{broken", {"content-type": "application/json"})]) as server:
                s = svc(server.url)
                s_repr += [repr(s), str(s), repr(vars(s)), str(vars(s))]
                for _ in range(3):
                    try:
                        s.do(req())
                    except errors.ProviderError as exc:
                        raised.append(exc)
            refused = svc(f"http://127.0.0.1:{closed_port()}")
            try:
                collect(refused.stream(req()))
            except errors.ProviderError as exc:
                raised.append(exc)
        assert [type(e) for e in raised] == [errors.AuthenticationError, errors.OverloadedError,
                                             errors.ResponseFormatError, errors.APIConnectionError]
        assert server.requests[0].headers["x-api-key"] == SECRET  # it is used...
        from convo import Convo

        texts = s_repr + [str(e) for e in raised] + [repr(e) for e in raised] + [repr(e.args) for e in raised]
        texts += [Convo(s).debug_json(), repr(Convo(s))]
        texts += [json.dumps(entry, default=repr) for entry in logs]
        assert logs and texts
        for text in texts:  # ...and never shown
            assert SECRET not in text and "SECRET-1234" not in text


    @pytest.mark.parametrize("reply", [
        Reply.json({"type": "error", "error": {"type": "authentication_error",
                                               "message": f"invalid x-api-key: {SECRET}"}}, 401),
        Reply(200, f"<html>bad key {SECRET}</html>", {"content-type": "application/json"}),
        Reply.sse("event: message_start\ndata: " + json.dumps({"type": "message_start", "message": {
            "id": "m", "model": "x", "content": [], "usage": {}}}) + "\n\nevent: error\ndata: " + json.dumps(
            {"type": "error", "error": {"type": "api_error", "message": f"proxy: key {SECRET} refused"}}) + "\n\n"),
    ], ids=["status", "format", "stream-event"])
    def test_a_key_echoed_by_a_proxy_is_redacted(self, reply):
        streaming = reply.headers["content-type"] == "text/event-stream"
        with ScriptedHTTPServer([reply]) as server:
            s = svc(server.url, retry=RetryPolicy.none())
            with pytest.raises(errors.ProviderError) as info:
                collect(s.stream(req())) if streaming else s.do(req())
        e = info.value
        assert "<redacted>" in e.message
        for text in (str(e), repr(e), repr(e.args), repr(e.__cause__), repr(e.__context__)):
            assert SECRET not in text


class TestThreads:
    def test_one_service_many_threads(self):
        with ScriptedHTTPServer(default=ms.answer) as server:
            s = svc(server.url)

            def turn(i: int) -> str:
                if i % 2:
                    return collect(s.stream(req(f"q{i}")))[-1].response.text()
                return s.do(req(f"q{i}")).text()

            with ThreadPoolExecutor(8) as pool:
                texts = list(pool.map(turn, range(40)))
        assert texts == ["done after 0 results"] * 40
        assert len(server.requests) == 40
