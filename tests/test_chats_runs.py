"""Chats running on ``convo serve`` (a real process): the state machine, the queue, interrupt, edit, sub-chats,
compression, provider errors, the live stream and its watchers, and what a killed or stopped server leaves."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from decimal import Decimal

import pytest

from tests.chats_support import Api, FakeModel, Frames, part_text, texts, token, ws_url
from tests.server_support import ServeProcess

ARGS = ("--chat-heartbeat", "0.3", "--chat-stale-after", "1.5", "--chat-max-steps", "3", "--chat-watcher-timeout",
        "1", "--chat-ping-interval", "0.5", "--tools")


@pytest.fixture(scope="module")
def fake():
    with FakeModel() as server:
        yield server


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("chats-runs"), fake.url, args=ARGS) as p:
        yield p


@pytest.fixture
def user():
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(served, user):
    with Api(served.url, token(user)) as a:
        yield a


def stream(served, user, chat_id: str, **kw) -> Frames:
    return Frames(ws_url(served.url, f"/{chat_id}/stream"), token(user), **kw)


def statuses(events: list[dict]) -> list[str]:
    return [e["status"]["status"] for e in events if e["type"] == "status"]


class TestRuns:
    def test_a_chat_streams_its_reply_and_ends_waiting(self, served, api, user):
        chat = api.create("DRIP 10 0.02")
        with stream(served, user, chat["id"]) as f:
            first = f.recv()
            assert first["type"] == "data" and first["data"][0]["type"] == "message"  # the snapshot
            events = f.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
            f.until_status("waiting")
        assert part_text(f.events) == "".join(f"w{i} " for i in range(1, 11))
        reply = [e for e in events if e["type"] == "message"][-1]["message"]
        assert reply["content"] == [{"type": "text", "text": part_text(f.events)}]
        assert reply["usage"]["output_tokens"] == 5
        assert "running" in statuses(f.events) and statuses(f.events)[-1] == "waiting"
        snapshot_status = [e for e in f.frames[0]["data"] if e["type"] == "status"]
        assert len(snapshot_status) == 1  # convo sends the status in the snapshot

    def test_messages_posted_during_a_run_are_queued_and_answered_in_order(self, served, api, user):
        chat = api.create("DRIP 10 0.05")
        with stream(served, user, chat["id"]) as f:
            f.until(lambda e: e["type"] == "message_part")
            for text in ("second", "third"):
                assert api.send(chat["id"], text)["queued"] is True
            got = api.wait_for(chat["id"], lambda g: len(g["messages"]) == 6 and g["chat"]["status"] == "waiting")
            f.until(lambda e: e["type"] == "queue_update" and "queued_messages" not in e)
        assert texts(got)[2:] == [("user", "second"), ("assistant", "echo: second"), ("user", "third"),
                                  ("assistant", "echo: third")]
        updates = [e for e in f.events if e["type"] == "queue_update"]
        assert [len(u.get("queued_messages", [])) for u in updates] == [1, 2, 1, 0]

    def test_interrupt_keeps_the_partial_reply(self, served, api, user):
        chat = api.create("DRIP 100 0.03")
        with stream(served, user, chat["id"]) as f:
            f.until(lambda e: e["type"] == "message_part" and e["message_part"]["part"].get("text") == "w5 ")
            r = api.post(f"/{chat['id']}/interrupt")
            assert r.status_code == 200 and r.json()["status"] == "waiting"
            got = api.wait_for(chat["id"], lambda g: len(g["messages"]) == 2)
        partial = got["messages"][1]
        assert partial["role"] == "assistant" and "usage" not in partial
        said = partial["content"][0]["text"]
        assert said.startswith("w1 w2 w3 w4 w5 ") and len(said.split()) < 100
        assert got["chat"]["status"] == "waiting"
        api.send(chat["id"], "HISTORY?")
        assert api.wait(chat["id"])["messages"][-1]["content"][0]["text"] == "history: DRIP 100 0.03"

    def test_interrupt_closes_the_tool_calls_that_did_not_finish(self, served, api):
        chat = api.create("DRIPTOOL calculate 40 0.05")
        api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
        time.sleep(0.5)
        api.post(f"/{chat['id']}/interrupt")
        got = api.wait_for(chat["id"], lambda g: len(g["messages"]) == 3)
        call, result = got["messages"][1]["content"][1], got["messages"][2]["content"][0]
        assert call["type"] == "tool-call" and call["tool_name"] == "calculate"
        assert "args_delta" in call or "args" in call  # what had streamed of the input, cut short
        assert result == {"type": "tool-result", "tool_call_id": call["tool_call_id"], "tool_name": "calculate",
                          "result": {"error": "tool call was interrupted before it produced a result"},
                          "is_error": True}
        api.send(chat["id"], "go on")
        got = api.wait(chat["id"])
        # The model reads the closed call's result along with the new message.
        assert got["chat"]["status"] == "waiting"
        assert texts(got)[-1] == ("assistant", "results: tool call was interrupted before it produced a result (error)")

    def test_an_interrupt_with_a_queue_takes_the_next_message_up(self, served, api):
        chat = api.create("DRIP 100 0.03")
        api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
        api.send(chat["id"], "next")
        api.post(f"/{chat['id']}/interrupt")
        got = api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "waiting"
                           and g["messages"][-1]["role"] == "assistant")
        # Whatever of the first reply had streamed is kept; the queued message was taken up and answered.
        assert texts(got)[-2:] == [("user", "next"), ("assistant", "echo: next")]
        assert got["queued_messages"] == []

    def test_an_edit_during_a_run_drops_what_followed_and_runs_again(self, served, api, fake):
        chat = api.create("DRIP 100 0.03")
        api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
        api.send(chat["id"], "queued, then dropped")
        user_id = api.chat(chat["id"])["messages"][0]["id"]
        r = api.patch(f"/{chat['id']}/messages/{user_id}", {"content": [{"type": "text", "text": "instead this"}]})
        assert r.status_code == 200
        got = api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "waiting" and len(g["messages"]) == 2)
        assert texts(got) == [("user", "instead this"), ("assistant", "echo: instead this")]
        assert got["queued_messages"] == []
        last = fake.bodies()[-1]["messages"]
        assert len(last) == 1 and last[0]["content"][-1]["text"] == "instead this"

    def test_a_provider_error_is_streamed_and_saved_and_a_new_message_recovers(self, served, api, user):
        chat = api.create("STATUS 500")
        with stream(served, user, chat["id"]) as f:
            f.until_status("error")
            errors = [e for e in f.events if e["type"] == "error"]
        got = api.wait(chat["id"])
        assert got["chat"]["status"] == "error" and "500" in got["chat"]["last_error"]
        assert errors and errors[0]["error"]["message"] == got["chat"]["last_error"]
        with stream(served, user, chat["id"]) as again:  # a new watcher is told why
            snapshot = again.recv()["data"]
            assert snapshot[-1] == {"type": "error", "chat_id": chat["id"], "error": {
                "message": got["chat"]["last_error"]}}
        api.send(chat["id"], "all good now")
        got = api.wait(chat["id"])
        assert got["chat"]["status"] == "waiting" and "last_error" not in got["chat"]
        assert got["messages"][-1]["content"][0]["text"] == "echo: all good now"

    def test_a_run_that_reaches_its_step_limit_is_paused_and_resumes(self, served, api):
        chat = api.create("LOOP calculate")
        got = api.wait(chat["id"])
        assert got["chat"]["status"] == "paused"
        assert [m["role"] for m in got["messages"]] == ["user", "assistant", "tool", "assistant", "tool",
                                                        "assistant", "tool"]
        api.send(chat["id"], "stop now")  # sent with the last call's result: the model carries on from there
        got = api.wait(chat["id"])
        assert got["chat"]["status"] == "waiting" and texts(got)[-2][1] == "stop now"
        assert texts(got)[-1][1].startswith("results: ")

    def test_sub_chats_complete_and_roll_their_cost_up_to_the_root(self, served, api):
        chat = api.create("SPAWN count, USAGE 1000 100; USAGE 10 5")
        got = api.wait(chat["id"])
        assert texts(got)[-1] == ("assistant", "report: echo: count; USAGE 1000 100")
        listed = {c["id"]: c for c in api.get("").json()}
        [child] = [c for c in listed.values() if c.get("parent_chat_id") == chat["id"]]
        assert child["status"] == "completed" and child["root_chat_id"] == chat["id"]
        root = listed[chat["id"]]
        assert child["usage"]["input_tokens"] == 1000 and root["usage"]["input_tokens"] == 30
        assert root["total_usage"]["input_tokens"] == 1030 and root["total_usage"]["responses"] == 4
        assert Decimal(root["total_usage"]["cost_usd"]) == Decimal(root["usage"]["cost_usd"]) + \
            Decimal(child["usage"]["cost_usd"])
        assert Decimal(child["usage"]["cost_usd"]) > 0
        sub = api.chat(child["id"])
        assert [m["role"] for m in sub["messages"]] == ["user", "assistant"]  # no stored system prompt

    def test_a_sub_chat_cannot_spawn_its_own(self, served, api):
        chat = api.create("SPAWN SPAWN deeper")
        got = api.wait(chat["id"])
        child = [c for c in api.get("").json() if c.get("parent_chat_id") == chat["id"]][0]
        report = api.wait(child["id"])
        assert "delegated chats cannot create child subagents" in json.dumps(report["messages"])
        assert got["chat"]["status"] == "waiting"

    def test_a_long_context_is_compressed_into_a_summary(self, served, api, fake):
        with Api(served.url, token("root", permissions={"admin": True})) as admin:
            r = admin.post("/model-configs", {"provider": "anthropic", "model": f"claude-haiku-4-5-{uuid.uuid4().hex[:6]}",
                                              "context_limit": 1000, "compression_threshold": 50})
            config = r.json()["id"]
        chat = api.create("remember the number 7; USAGE 600 10", model_config_id=config)
        got = api.wait(chat["id"])
        assert [m["role"] for m in got["messages"]] == ["user", "assistant", "assistant", "tool"]
        call, result = got["messages"][2]["content"][0], got["messages"][3]["content"][0]
        assert call["tool_name"] == "chat_summarized" and call["args"] == {"source": "automatic",
                                                                          "threshold_percent": 50}
        assert result["result"]["summary"] == "summary of: remember the number 7; USAGE 600 10"
        assert result["result"]["usage_percent"] == 60 and result["result"]["context_limit_tokens"] == 1000
        api.send(chat["id"], "HISTORY?")
        got = api.wait(chat["id"])
        body = fake.bodies()[-1]
        assert len(body["messages"]) == 1  # the earlier exchange is in the summary, not the prompt
        assert "Summary of earlier chat context:\n\nsummary of: remember the number 7" in body["system"][0]["text"]
        assert texts(got)[-1] == ("assistant", "history: ")
        assert got["chat"]["usage"]["responses"] == 3  # the summary's cost is the chat's too


class TestStream:
    def test_every_watcher_gets_every_event(self, served, api, user):
        chat = api.create("DRIP 30 0.02")
        watchers = [stream(served, user, chat["id"]) for _ in range(8)]
        try:
            for w in watchers:
                w.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
            assert {part_text(w.events) for w in watchers} == {"".join(f"w{i} " for i in range(1, 31))}
        finally:
            for w in watchers:
                w.close()

    def test_a_watcher_joining_mid_run_sees_no_part_twice(self, served, api, user):
        chat = api.create("DRIP 40 0.03")
        api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
        time.sleep(0.3)
        with stream(served, user, chat["id"]) as late:
            late.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
        assert part_text(late.events) == "".join(f"w{i} " for i in range(1, 41))

    def test_pings_keep_an_idle_stream_alive(self, served, api, user):
        chat = api.create("hi")
        api.wait(chat["id"])
        with stream(served, user, chat["id"]) as f:
            f.recv()
            assert f.recv() == {"type": "ping", "data": None}

    def test_a_slow_watcher_is_dropped_and_slows_nobody(self, served, api, user):
        chat = api.create("hi")
        api.wait(chat["id"])
        slow = stream(served, user, chat["id"], sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        fast = stream(served, user, chat["id"])
        size = 300 * 50_000  # more than the kernel buffers between the server and a watcher that reads nothing
        try:
            slow.recv()
            api.send(chat["id"], "FLOOD 300 50000")
            started = time.monotonic()
            fast.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant"
                       and len(e["message"]["content"][0]["text"]) == size)
            assert time.monotonic() - started < 20
            assert len(part_text(fast.events)) == size
            api.wait(chat["id"])
            time.sleep(1.5)  # the slow watcher's frames waited more than --chat-watcher-timeout
            assert slow.closed_with() in (1011, None)  # dropped: what it had not read is gone
            got = [e for fr in slow.frames if fr.get("type") == "data" for e in fr["data"]]
            assert len(part_text(got)) < size
            assert "chat_watcher_too_slow" in served.output()
        finally:
            slow.close()
            fast.close()

    def test_a_watcher_that_disconnects_mid_batch_leaves_the_chat_running(self, served, api, user):
        chat = api.create("DRIP 60 0.01")
        w = stream(served, user, chat["id"])
        w.until(lambda e: e["type"] == "message_part")
        w.ws.sock.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        w.ws.sock.close()
        got = api.wait(chat["id"])
        assert got["chat"]["status"] == "waiting" and len(got["messages"][1]["content"][0]["text"].split()) == 60

    def test_a_frame_from_the_client_closes_the_stream_with_1002(self, served, api, user):
        chat = api.create("hi")
        with stream(served, user, chat["id"]) as f:
            f.recv()
            f.ws.send("hello?")
            assert f.closed_with() == 1002

    def test_deleting_a_watched_chat_ends_its_stream_with_an_error(self, served, api, user):
        chat = api.create("hi")
        api.wait(chat["id"])
        with stream(served, user, chat["id"]) as f:
            f.recv()
            api.delete(f"/{chat['id']}")
            frame = f.recv()
            while frame["type"] == "ping":
                frame = f.recv()
            assert frame == {"type": "error", "data": {"message": "Chat deleted.",
                                                       "detail": "the chat was deleted while it was watched"}}
            assert f.closed_with() == 1000

    def test_the_watch_feed_follows_the_owners_chats(self, served, api, user):
        with Frames(ws_url(served.url, "/watch"), token(user)) as feed:
            assert feed.recv() == {"type": "ping", "data": None}
            chat = api.create("hi")
            api.wait(chat["id"])
            with Api(served.url, token("someone-else")) as other:
                other.create("not for this feed")
            api.delete(f"/{chat['id']}")
            kinds = []
            while "deleted" not in kinds:
                frame = feed.recv()
                if frame["type"] == "data":
                    assert frame["data"]["chat"]["id"] == chat["id"]
                    kinds.append(frame["data"]["kind"])
        assert kinds[0] == "created" and "status_change" in kinds and kinds[-1] == "deleted"


class TestLoad:
    def test_many_chats_at_once_each_answered_in_order(self, served, user):
        errors: list = []

        def one(i: int) -> None:
            try:
                with Api(served.url, token(f"{user}-{i % 5}")) as a:
                    chat = a.create(f"first {i}")
                    a.send(chat["id"], f"second {i}")
                    got = a.wait_for(chat["id"], lambda g: g["chat"]["status"] == "waiting"
                                     and len(g["messages"]) == 4, timeout=60)
                    assert texts(got) == [("user", f"first {i}"), ("assistant", f"echo: first {i}"),
                                          ("user", f"second {i}"), ("assistant", f"echo: second {i}")]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []


class TestRestarts:
    """A server killed or stopped mid-run: every chat comes back consistent, nothing acknowledged is lost."""

    def test_a_killed_server_leaves_its_runs_to_be_retried(self, fake, tmp_path):
        store = f"sqlite:///{tmp_path / 'chats.db'}"
        with ServeProcess(tmp_path, fake.url, store=store, args=ARGS, name="first") as first:
            with Api(first.url, token("kim")) as api:
                chat = api.create("DRIP 100 0.02")
                api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
                assert api.send(chat["id"], "queued before the crash")["queued"] is True
                time.sleep(0.3)
            first.process.kill()
            first.process.wait()
        assert stored_status(tmp_path, chat["id"]) == "running"  # nobody is left to say otherwise
        with ServeProcess(tmp_path, fake.url, store=store, args=ARGS, name="second") as second:
            with Api(second.url, token("kim")) as api:
                got = api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "waiting"
                                   and len(g["messages"]) == 4, timeout=60)
        assert [m["role"] for m in got["messages"]] == ["user", "assistant", "user", "assistant"]
        assert len(got["messages"][1]["content"][0]["text"].split()) == 100  # retried whole, not half
        assert texts(got)[2:] == [("user", "queued before the crash"), ("assistant", "echo: queued before the crash")]

    def test_a_stopped_server_hands_its_runs_back_at_once(self, fake, tmp_path):
        store = f"sqlite:///{tmp_path / 'chats.db'}"
        with ServeProcess(tmp_path, fake.url, store=store, args=ARGS, name="first") as first:
            with Api(first.url, token("lee")) as api:
                chat = api.create("DRIP 100 0.02")
                api.wait_for(chat["id"], lambda g: g["chat"]["status"] == "running")
        assert stored_status(tmp_path, chat["id"]) == "pending"  # SIGTERM: handed back, for anyone to retry
        with ServeProcess(tmp_path, fake.url, store=store, args=ARGS, name="again") as again:
            with Api(again.url, token("lee")) as api:
                got = api.wait(chat["id"], timeout=60)
        assert got["chat"]["status"] == "waiting" and len(got["messages"]) == 2
        assert len(got["messages"][1]["content"][0]["text"].split()) == 100


def stored_status(folder, chat_id: str) -> str:
    """A chat's status as the SQLite file has it (read behind the server's back, with no server running)."""
    import sqlite3

    with sqlite3.connect(folder / "chats.db") as conn:
        return conn.execute("SELECT status FROM convo_chats WHERE id = ?", (chat_id,)).fetchone()[0]
