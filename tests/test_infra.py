"""The private building blocks: SSE parsing, retry policy, cancel tokens."""

from __future__ import annotations

import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from convo import Cancelled, RetryPolicy
from convo._cancel import CancelToken, cancel_scope, current_token
from convo.providers._sse import SSEEvent, iter_sse

STREAM = (
    b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
    b": a comment\n\n"
    b"event: content_block_delta\ndata: line one\ndata:line two\n\n"
    b"data: caf\xc3\xa9\r\r"
    b"event: ping\ndata: {}\n\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"a": 1}'),
    SSEEvent("content_block_delta", "line one\nline two"),
    SSEEvent("message", "café"),
    SSEEvent("ping", "{}"),
]


class TestSSE:
    def test_parses_events_comments_and_line_endings(self):
        assert list(iter_sse([STREAM])) == EXPECTED

    @given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
    def test_any_chunking_gives_the_same_events(self, cuts):
        cuts = sorted(set(cuts))
        pieces = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
        assert list(iter_sse(pieces)) == EXPECTED

    def test_unterminated_final_event_is_kept(self):
        assert list(iter_sse([b"data: tail"])) == [SSEEvent("message", "tail")]

    def test_cr_at_a_chunk_end_then_lf_is_one_line_ending(self):
        assert list(iter_sse([b"data: a\r", b"\ndata: b\r", b"\r", b"\n"])) == [SSEEvent("message", "a\nb")]

    def test_a_line_split_over_many_chunks(self):
        data = "é" * 1000
        raw = f"data: {data}\n\n".encode()
        assert list(iter_sse(raw[i:i + 1] for i in range(len(raw)))) == [SSEEvent("message", data)]

    def test_five_megabytes_in_one_chunk_parse_in_linear_time(self):
        """Re-slicing a buffer per line made this take half a minute; scanning once takes a fraction of a second."""
        raw = b"".join(b'event: content_block_delta\ndata: {"i": %d}\n\n' % i for i in range(120_000))
        assert len(raw) > 5_000_000
        start = time.perf_counter()
        events = list(iter_sse([raw]))
        took = time.perf_counter() - start
        assert len(events) == 120_000 and events[-1] == SSEEvent("content_block_delta", '{"i": 119999}')
        assert took < 2.0

    @given(st.data())
    def test_any_stream_in_any_chunks_gives_its_events(self, data):
        """Events written with any mix of CR, LF and CRLF, cut anywhere, come back as written."""
        text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=8)
        written = data.draw(st.lists(st.tuples(st.sampled_from(["", "ping", "délta"]),
                                               st.lists(text, min_size=1, max_size=3)), max_size=5))
        raw = b""

        def line(text: str = "") -> bytes:
            end = data.draw(st.sampled_from([b"\n", b"\r", b"\r\n"]))
            if raw.endswith(b"\r") and not text and end == b"\n":
                end = b"\r\n"  # a CR then a LF would be one CRLF, not two line endings
            return text.encode() + end

        for name, lines in written:
            if data.draw(st.booleans()):
                raw += line(": comment")
            if name:
                raw += line(f"event: {name}")
            for text_line in lines:
                raw += line(f"data: {text_line}")
            raw += line()
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(raw)), max_size=10))))
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        expected = [SSEEvent(name or "message", "\n".join(lines)) for name, lines in written]
        assert list(iter_sse(pieces)) == expected


class TestRetryPolicy:
    def test_statuses_and_attempts(self):
        p = RetryPolicy(max_attempts=3)
        assert p.should_retry(1, 529) and p.should_retry(2, 429) and p.should_retry(1, None)
        assert not p.should_retry(3, 529)
        assert not p.should_retry(1, 400)

    def test_x_should_retry_overrides(self):
        p = RetryPolicy()
        assert not p.should_retry(1, 529, {"x-should-retry": "false"})
        assert p.should_retry(1, 400, {"X-Should-Retry": "true"})

    def test_retry_after_headers(self):
        p = RetryPolicy()
        assert p.delay(1, {"retry-after-ms": "250"}) == 0.25
        assert p.delay(1, {"Retry-After": "2"}) == 2.0
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=5), usegmt=True)
        assert 3.5 < p.delay(1, {"retry-after": when}) <= 5.0
        # absurd waits fall back to backoff
        assert p.delay(1, {"retry-after": "3600"}) <= p.initial_delay

    def test_backoff_grows_with_jitter_and_cap(self):
        p = RetryPolicy(initial_delay=1, max_delay=4, jitter=0.25)
        for attempt, base in [(1, 1), (2, 2), (3, 4), (6, 4)]:
            d = p.delay(attempt)
            assert base * 0.75 <= d <= base

    def test_validation(self):
        with pytest.raises(ValueError):
            RetryPolicy(max_attempts=0)
        with pytest.raises(ValueError):
            RetryPolicy(jitter=2)


class TestCancelToken:
    def test_wait_ends_early_when_cancelled(self):
        token = CancelToken()
        threading.Timer(0.05, token.cancel, args=("stop",)).start()
        start = time.monotonic()
        assert token.wait(5) is True
        assert time.monotonic() - start < 1
        with pytest.raises(Cancelled, match="stop"):
            token.raise_if_cancelled()

    def test_callbacks_run_once_and_only_inside_the_block(self):
        token = CancelToken()
        calls = []
        with token.on_cancel(lambda: calls.append("a")):
            pass
        with token.on_cancel(lambda: calls.append("b")):
            token.cancel()
            token.cancel()
        assert calls == ["b"]
        with token.on_cancel(lambda: calls.append("late")):
            pass
        assert calls == ["b", "late"]

    def test_scope_sets_the_current_token(self):
        token = CancelToken()
        assert current_token() is not token
        with cancel_scope(token):
            assert current_token() is token
        assert current_token() is not token


class TestWorkers:
    def test_reuses_idle_threads_and_grows_when_busy(self):
        from convo._workers import Workers

        pool = Workers(idle_timeout=5)
        seen: list[int] = []
        done = threading.Event()
        pool.submit(lambda: (seen.append(threading.get_ident()), done.set()))
        assert done.wait(2)
        deadline = time.monotonic() + 2
        while pool.idle != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        done.clear()
        pool.submit(lambda: (seen.append(threading.get_ident()), done.set()))
        assert done.wait(2)
        assert seen[0] == seen[1]  # the idle worker took it

        # a blocked task never makes another wait: the pool grows
        gate = threading.Event()
        ran = threading.Event()
        pool.submit(gate.wait)
        pool.submit(ran.set)
        assert ran.wait(2)
        gate.set()

    def test_idle_workers_exit_and_claimed_tasks_still_run(self):
        from convo._workers import Workers

        pool = Workers(idle_timeout=0.01)
        results = []
        for i in range(200):  # submits racing the idle timeout must all run
            ev = threading.Event()
            pool.submit(lambda i=i, ev=ev: (results.append(i), ev.set()))
            assert ev.wait(2), f"task {i} was lost"
            time.sleep(0.0005 * (i % 30))
        assert results == list(range(200))
        time.sleep(0.1)
        assert pool.idle == 0
