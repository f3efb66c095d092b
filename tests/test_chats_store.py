"""The chat store's operations on every backend (memory, SQLite, Redis, PostgreSQL, the real servers of
tests/store_servers.py): the state machine, the queue, leases and fencing, configs, and the events bridge."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import pytest

from convo.server.chat_store import (
    ChatEvents,
    ChatNotFound,
    ConfigConflict,
    ConfigNotFound,
    InvalidConfig,
    MessageNotFound,
    NewMessage,
    NotUserMessage,
    QueueFull,
    open_chat_store,
)
from convo.server.chats_wire import (
    ChatStatus,
    ChatUsage,
    MessagePart,
    ModelConfigCreate,
    ModelConfigUpdate,
    ProviderCreate,
    ProviderUpdate,
    message_event,
    part_event,
    status_event,
)

OWNER, OTHER = "owner-1", "owner-2"


@pytest.fixture
def chats(store):
    """A chat store beside a fresh convo store of each backend."""
    cs = open_chat_store(store)
    yield cs
    cs.close()


@pytest.fixture
def twin(store_kind, store, chats):
    """A second chat store on the same database: what another replica would open."""
    again = store_kind.reopen(store)
    cs = open_chat_store(again)
    yield cs
    if cs is not chats:
        cs.close()


def new_chat(chats, text="hello", owner=OWNER, **kw):
    row, first = chats.create_chat(owner, [text], None, title=text, system_prompt="be brief", **kw)
    return row


def run_to_end(chats, status=ChatStatus.WAITING, **kw):
    row = chats.acquire("w")
    assert row is not None
    return chats.release(row.id, row.generation, status, **kw)


class TestStateMachine:
    def test_a_new_chat_is_pending_with_a_hidden_system_prompt(self, chats):
        row = new_chat(chats)
        assert row.status == ChatStatus.PENDING and row.generation == 0
        got, messages, queue = chats.snapshot(OWNER, row.id)
        assert [(m.role, m.visible, m.text()) for m in messages] == [("system", False, "be brief"),
                                                                      ("user", True, "hello")]
        assert queue == [] and messages[0].id < messages[1].id

    def test_posting_while_busy_queues_and_while_idle_sends(self, chats):
        row = new_chat(chats)
        posted = chats.post_message(OWNER, row.id, ["second"], None, max_queue=20)
        assert posted.queued is not None and posted.message is None and posted.chat.status == ChatStatus.PENDING
        released = run_to_end(chats)
        assert released.chat.status == ChatStatus.PENDING and released.promoted.text() == "second"
        assert released.queue == ()
        run_to_end(chats)
        posted = chats.post_message(OWNER, row.id, ["third"], None, max_queue=20)
        assert posted.message is not None and posted.chat.status == ChatStatus.PENDING

    def test_queued_messages_are_promoted_oldest_first(self, chats):
        row = new_chat(chats)
        for i in range(3):
            chats.post_message(OWNER, row.id, [f"q{i}"], None, max_queue=20)
        promoted = [run_to_end(chats).promoted.text() for _ in range(3)]
        assert promoted == ["q0", "q1", "q2"]
        assert run_to_end(chats).chat.status == ChatStatus.WAITING

    def test_an_error_keeps_the_queue_and_the_reason(self, chats):
        row = new_chat(chats)
        chats.post_message(OWNER, row.id, ["later"], None, max_queue=20)
        released = run_to_end(chats, ChatStatus.ERROR, error="provider said no")
        assert released.chat.status == ChatStatus.ERROR and released.promoted is None
        assert released.chat.last_error == "provider said no"
        assert len(chats.snapshot(OWNER, row.id)[2]) == 1
        posted = chats.post_message(OWNER, row.id, ["retry"], None, max_queue=20)
        assert posted.chat.status == ChatStatus.PENDING and posted.chat.last_error is None

    def test_a_chat_made_pending_during_its_run_stays_pending(self, chats):
        row = new_chat(chats)
        running = chats.acquire("w")
        chats.interrupt(OWNER, row.id)  # waiting, the worker not yet released
        chats.post_message(OWNER, row.id, ["after the interrupt"], None, max_queue=20)
        released = chats.release(row.id, running.generation, ChatStatus.WAITING)
        assert released.chat.status == ChatStatus.PENDING and released.promoted is None

    def test_a_run_handed_back_leaves_an_interrupted_chat_waiting(self, chats):
        row = new_chat(chats)
        running = chats.acquire("w")
        chats.interrupt(OWNER, row.id)
        assert chats.release(row.id, running.generation, ChatStatus.PENDING).chat.status == ChatStatus.WAITING

    def test_interrupt_stops_busy_chats_only(self, chats):
        row = new_chat(chats)
        run_to_end(chats)
        after, changed, _ = chats.interrupt(OWNER, row.id)
        assert not changed and after.status == ChatStatus.WAITING
        chats.post_message(OWNER, row.id, ["go"], None, max_queue=20)
        running = chats.acquire("w")
        after, changed, _ = chats.interrupt(OWNER, row.id)
        assert changed and after.status == ChatStatus.WAITING and after.worker_id is None
        assert after.generation == running.generation  # the run may still save its partial reply

    def test_interrupting_a_pending_chat_with_a_queue_takes_the_next_message_up(self, chats):
        row = new_chat(chats)
        chats.post_message(OWNER, row.id, ["queued"], None, max_queue=20)
        after, changed, released = chats.interrupt(OWNER, row.id)
        assert changed and after.status == ChatStatus.PENDING and released.promoted.text() == "queued"

    def test_edit_replaces_truncates_clears_the_queue_and_fences_the_run(self, chats):
        row = new_chat(chats)
        running = chats.acquire("w")
        chats.append(row.id, running.generation, [NewMessage("assistant", [MessagePart.text_part("reply")])])
        chats.post_message(OWNER, row.id, ["queued"], None, max_queue=20)
        user = [m for m in chats.snapshot(OWNER, row.id)[1] if m.role == "user"][0]
        after, edited = chats.edit_message(OWNER, row.id, user.id, ["edited"])
        assert edited.id == user.id and edited.text() == "edited" and after.status == ChatStatus.PENDING
        _, messages, queue = chats.snapshot(OWNER, row.id)
        assert [m.text() for m in messages] == ["be brief", "edited"] and queue == []
        assert chats.append(row.id, running.generation, [NewMessage("assistant", [])]) is None
        assert chats.release(row.id, running.generation, ChatStatus.WAITING) is None

    def test_only_user_messages_can_be_edited(self, chats):
        row = new_chat(chats)
        running = chats.acquire("w")
        [reply] = chats.append(row.id, running.generation, [NewMessage("assistant", [MessagePart.text_part("r")])])
        with pytest.raises(NotUserMessage):
            chats.edit_message(OWNER, row.id, reply.id, ["x"])
        system = chats.snapshot(OWNER, row.id)[1][0]
        with pytest.raises(MessageNotFound):  # hidden: not something the user can name
            chats.edit_message(OWNER, row.id, system.id, ["x"])
        with pytest.raises(MessageNotFound):
            chats.edit_message(OWNER, row.id, 10**12, ["x"])

    def test_promote_sends_a_queued_message_now_and_fences_the_run(self, chats):
        row = new_chat(chats)
        chats.post_message(OWNER, row.id, ["a"], None, max_queue=20)
        b = chats.post_message(OWNER, row.id, ["b"], None, max_queue=20).queued
        running = chats.acquire("w")
        after, message, queue = chats.promote_queued(OWNER, row.id, b.id)
        assert message.text() == "b" and [q.content[0].text for q in queue] == ["a"]
        assert after.status == ChatStatus.PENDING and after.generation == running.generation + 1
        with pytest.raises(MessageNotFound):
            chats.promote_queued(OWNER, row.id, b.id)
        assert [q.content[0].text for q in chats.delete_queued(OWNER, row.id, 10**12)] == ["a"]
        assert chats.delete_queued(OWNER, row.id, queue[0].id) == ()

    def test_someone_elses_chat_is_not_found(self, chats):
        row = new_chat(chats)
        for attempt in (lambda: chats.chat(OTHER, row.id), lambda: chats.snapshot(OTHER, row.id),
                        lambda: chats.post_message(OTHER, row.id, ["x"], None, max_queue=20),
                        lambda: chats.interrupt(OTHER, row.id), lambda: chats.delete_chat(OTHER, row.id),
                        lambda: chats.edit_message(OTHER, row.id, 1, ["x"]),
                        lambda: chats.promote_queued(OTHER, row.id, 1), lambda: chats.chat(OWNER, "missing")):
            with pytest.raises(ChatNotFound):
                attempt()
        assert [r.id for r, _ in chats.list_chats(OWNER)] == [row.id] and chats.list_chats(OTHER) == []


class TestQueueLimit:
    def test_the_queue_holds_twenty_even_with_threads_racing(self, chats):
        row = new_chat(chats)
        outcomes = []
        lock = threading.Lock()

        def post(i):
            try:
                chats.post_message(OWNER, row.id, [f"m{i}"], None, max_queue=20)
                result = "queued"
            except QueueFull:
                result = "full"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert outcomes.count("queued") == 20 and outcomes.count("full") == 10
        assert len(chats.snapshot(OWNER, row.id)[2]) == 20


class TestLeases:
    def test_each_chat_is_acquired_by_exactly_one_replica(self, chats, twin):
        ids = {new_chat(chats, f"c{i}").id for i in range(12)}
        taken: list = []
        lock = threading.Lock()

        def worker(store, name):
            while True:
                row = store.acquire(name)
                if row is None:
                    return
                with lock:
                    taken.append(row.id)

        threads = [threading.Thread(target=worker, args=(s, f"{n}{k}")) for k in range(3)
                   for n, s in (("a", chats), ("b", twin))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(taken) == sorted(ids)

    def test_oldest_pending_first(self, chats):
        first = new_chat(chats, "first")
        time.sleep(0.01)
        new_chat(chats, "second")
        assert chats.acquire("w").id == first.id

    def test_heartbeats_keep_runs_and_stale_ones_go_back_to_pending(self, chats, twin):
        row = new_chat(chats)
        running = chats.acquire("dead-replica")
        assert chats.heartbeat("dead-replica", [row.id]) == {row.id}
        assert twin.heartbeat("someone-else", [row.id]) == set()
        assert twin.recover_stale(stale_after=60) == []
        time.sleep(0.05)
        [recovered] = twin.recover_stale(stale_after=0.01)
        assert recovered.id == row.id and recovered.status == ChatStatus.PENDING and recovered.worker_id is None
        again = twin.acquire("live-replica")
        assert again.generation == running.generation + 1
        # The presumed-dead worker wakes up: nothing it writes lands.
        assert chats.append(row.id, running.generation, [NewMessage("assistant", [])]) is None
        assert chats.release(row.id, running.generation, ChatStatus.WAITING) is None
        assert chats.heartbeat("dead-replica", [row.id]) == set()

    def test_a_run_saves_steps_and_usage_while_it_holds_the_chat(self, chats):
        row = new_chat(chats)
        running = chats.acquire("w")
        added = chats.append(row.id, running.generation, [NewMessage("assistant", [MessagePart.text_part("r")],
                                                                     model={"role": "assistant", "content": []})],
                             ChatUsage(10, 5, cost_usd="0.01", responses=1))
        assert added[0].model == {"role": "assistant", "content": []}
        released = chats.release(row.id, running.generation, ChatStatus.WAITING,
                                 usage=ChatUsage(1, 1, cost_usd="0.001", responses=1))
        assert released.chat.usage == ChatUsage(11, 6, cost_usd=Decimal("0.011"), responses=2)


class TestTree:
    def test_sub_chats_roll_up_and_are_deleted_with_their_parent(self, chats):
        root = new_chat(chats, "root")
        child, _ = chats.create_chat(OWNER, ["child"], None, title="child", parent=root)
        grandchild, _ = chats.create_chat(OWNER, ["gc"], None, title="gc", parent=child)
        assert child.root_id == root.id and grandchild.root_id == root.id and grandchild.parent_id == child.id
        for r, usage in ((root, ChatUsage(1, 1, cost_usd="0.1")), (child, ChatUsage(10, 10, cost_usd="1")),
                         (grandchild, ChatUsage(100, 100, cost_usd="10"))):
            running = chats.acquire("w")
            while running.id != r.id:
                chats.release(running.id, running.generation, ChatStatus.WAITING)
                chats.post_message(OWNER, running.id, ["again"], None, max_queue=20)
                running = chats.acquire("w")
            chats.release(r.id, running.generation, ChatStatus.WAITING, usage=usage)
        totals = {r.id: total for r, total in chats.list_chats(OWNER)}
        assert totals[root.id].cost_usd == Decimal("11.1") and totals[child.id].cost_usd == Decimal("11")
        assert chats.total_usage(chats.chat(OWNER, root.id)).input_tokens == 111
        deleted = chats.delete_chat(OWNER, root.id)
        assert [d.id for d in deleted] == [grandchild.id, child.id, root.id]
        assert chats.list_chats(OWNER) == []


class TestConfigs:
    def test_the_first_config_is_the_default_and_the_default_moves(self, chats):
        chats.create_provider(ProviderCreate("anthropic", api_key="sk-test-key"))
        with pytest.raises(ConfigConflict):
            chats.create_provider(ProviderCreate("anthropic"))
        with pytest.raises(InvalidConfig):
            chats.create_model_config(ModelConfigCreate("openai", "gpt-x", 100))
        a = chats.create_model_config(ModelConfigCreate("anthropic", "a", 100))
        b = chats.create_model_config(ModelConfigCreate("anthropic", "b", 100))
        assert a.is_default and not b.is_default
        with pytest.raises(ConfigConflict):
            chats.create_model_config(ModelConfigCreate("anthropic", "a", 100))
        chats.update_model_config(b.id, ModelConfigUpdate(is_default=True))
        assert {c.model: c.is_default for c in chats.configs()[1]} == {"a": False, "b": True}
        chats.update_model_config(b.id, ModelConfigUpdate(is_default=False))
        assert {c.model: c.is_default for c in chats.configs()[1]} == {"a": True, "b": False}
        chats.delete_model_config(a.id)
        assert [(c.model, c.is_default) for c in chats.configs()[1]] == [("b", True)]
        assert chats.model_config(a.id).id == b.id  # a deleted config falls back to the default
        with pytest.raises(ConfigNotFound):
            chats.delete_model_config(a.id)

    def test_a_provider_keeps_its_key_until_told_and_deleting_it_cascades(self, chats):
        p = chats.create_provider(ProviderCreate("openai", api_key="sk-keep"))
        assert chats.update_provider(p.id, ProviderUpdate(display_name="Mine")).api_key == "sk-keep"
        assert chats.update_provider(p.id, ProviderUpdate(api_key="")).api_key == ""
        chats.create_model_config(ModelConfigCreate("openai", "gpt-x", 100))
        chats.delete_provider(p.id)
        assert chats.configs() == ([], [])
        with pytest.raises(ConfigNotFound):
            chats.update_provider(p.id, ProviderUpdate())

    def test_seeding_happens_once_on_a_fresh_store(self, chats, twin):
        chats.seed([("anthropic", "claude-x", 200000), ("anthropic", "claude-y", 200000)], {})
        twin.seed([("openai", "gpt-z", 1)], {})
        providers, configs = chats.configs()
        assert [p.provider for p in providers] == ["anthropic"]
        assert [(c.model, c.is_default) for c in configs] == [("claude-x", True), ("claude-y", False)]
        views = {v.provider: v for v in chats.provider_views({"openai": "sk-env"})}
        assert views["anthropic"].source == "database" and views["openai"].source == "env_preset"
        assert views["google"].source == "supported" and not views["google"].enabled


class Sink:
    def __init__(self):
        self.got: list = []
        self.owner: list = []
        self.event = threading.Event()

    def deliver(self, chat_id, events):
        self.got.extend((chat_id, e.text) for e in events)
        self.event.set()

    def deliver_owner(self, owner_id, frame):
        self.owner.append((owner_id, frame))
        self.event.set()


class TestEventsBridge:
    def test_events_reach_the_other_replica(self, store_kind, chats, twin):
        if store_kind.name in ("memory", "sqlite"):
            assert chats.bridge() is None  # one process only: documented
            return
        here, there = ChatEvents(chats), ChatEvents(twin)
        sink, controls = Sink(), []
        there.add_sink(sink)
        there.on_control(lambda chat_id, control: controls.append((chat_id, control)))
        here.start()
        there.start()
        try:
            row = new_chat(chats)
            running = chats.acquire("w")
            big = "x" * 30000
            [message] = chats.append(row.id, running.generation, [NewMessage("assistant", [MessagePart.text_part(big)])])
            here.publish(row.id, [part_event(row.id, "assistant", MessagePart.text_part(big)),
                                  message_event(message.public()), status_event(row.id, "waiting")],
                         control={"status": "waiting", "generation": 1}, owner_id=OWNER,
                         watch=("status_change", {"id": row.id}))
            deadline = time.monotonic() + 10
            while (len(sink.owner) < 1 or not any('"status"' in t for _, t in sink.got)) and time.monotonic() < deadline:
                sink.event.wait(0.1)
                sink.event.clear()
            events = [json.loads(t) for _, t in sink.got]
            parts = "".join(e["message_part"]["part"]["text"] for e in events if e["type"] == "message_part")
            assert parts == big  # a delta too long for a notice arrives cut in pieces, whole
            [got_message] = [e for e in events if e["type"] == "message"]
            assert got_message["message"]["content"][0]["text"] == big  # read back by reference if it had to be
            assert events[-1] == status_event(row.id, "waiting")
            assert controls == [(row.id, {"status": "waiting", "generation": 1})]
            assert json.loads(sink.owner[0][1]) == {"type": "data", "data": {"kind": "status_change",
                                                                             "chat": {"id": row.id}}}
            before = len(sink.got)
            here.publish(row.id, [status_event(row.id, "running")])
            there.publish(row.id, [status_event(row.id, "pending")])  # its own notices come back to nobody
            time.sleep(0.3)
            assert [json.loads(t)["status"]["status"] for _, t in sink.got[before:]] == ["pending", "running"] or \
                   [json.loads(t)["status"]["status"] for _, t in sink.got[before:]] == ["running", "pending"]
        finally:
            here.stop()
            there.stop()
