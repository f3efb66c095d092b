"""One conformance suite that every store passes: memory, SQLite, Redis and PostgreSQL.

The ``store`` and ``store_kind`` fixtures (tests/conftest.py) run each test
against every backend, Redis and PostgreSQL as real servers on 127.0.0.1.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

import convo
from convo import (
    Budget,
    ConcurrentUpdate,
    ConversationClosed,
    ConversationNotFound,
    ConversationUnreadable,
    Convo,
    CumulativeUsage,
    IncompatibleStore,
    Message,
    Price,
    PriceTable,
    ToolUse,
    Usage,
    tool,
)
from convo.testing import ScriptedService, reply

PRICED = "test-model"
PRICES = PriceTable({PRICED: Price(1, 2)})


def msgs(*texts: str) -> list[Message]:
    return [Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts)]


def state(**extra) -> dict:
    return {"format": 1, "id": "x", **extra}


def write(store, id, expected, *, keep=0, append=(), parent=None, root=None, usage=None, **st):
    return store.write(id, expected_version=expected, parent_id=parent, root_id=root or id, state=state(**st),
                       usage=usage or CumulativeUsage(), keep=keep, append=list(append))


def spend(dollars: str, responses: int = 1) -> CumulativeUsage:
    u = CumulativeUsage()
    u.responses, u.total_cost_usd, u.input_tokens = responses, Decimal(dollars), 10 * responses
    return u


@tool
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


# --- the store protocol -----------------------------------------------------------------------


class TestWriteAndLoad:
    def test_a_new_conversation_is_saved_whole(self, store):
        assert write(store, "c1", 0, append=msgs("hi", "hello"), note="é ✓ 中文") == 1
        got = store.load("c1")
        assert [m.text() for m in got.messages] == ["hi", "hello"]
        assert got.version == 1 and got.state["note"] == "é ✓ 中文" and got.parent_id is None
        assert got.root_id == "c1" and got.created <= got.updated

    def test_appending_keeps_the_history(self, store):
        write(store, "c1", 0, append=msgs("a", "b"))
        assert write(store, "c1", 1, keep=2, append=msgs("c", "d")) == 2
        assert [m.text() for m in store.load("c1").messages] == ["a", "b", "c", "d"]

    def test_keep_drops_the_tail_before_appending(self, store):
        write(store, "c1", 0, append=msgs("a", "b", "c", "d"))
        write(store, "c1", 1, keep=1, append=[Message.assistant("B")])
        assert [m.text() for m in store.load("c1").messages] == ["a", "B"]
        write(store, "c1", 2, keep=0)
        assert store.load("c1").messages == ()

    def test_a_stale_version_is_refused_and_changes_nothing(self, store):
        write(store, "c1", 0, append=msgs("a", "b"))
        write(store, "c1", 1, keep=2, append=msgs("c", "d"), note="second")
        with pytest.raises(ConcurrentUpdate) as info:
            write(store, "c1", 1, keep=2, append=msgs("x", "y"), note="stale")
        assert (info.value.expected_version, info.value.found_version) == (1, 2)
        got = store.load("c1")
        assert [m.text() for m in got.messages] == ["a", "b", "c", "d"] and got.state["note"] == "second"

    def test_an_existing_id_cannot_be_created_again(self, store):
        write(store, "c1", 0, append=msgs("a", "b"))
        with pytest.raises(ConcurrentUpdate, match="already exists"):
            write(store, "c1", 0)

    def test_unknown_id(self, store):
        with pytest.raises(ConversationNotFound):
            store.load("nope")
        with pytest.raises(ConcurrentUpdate):
            write(store, "nope", 3)

    def test_a_lone_surrogate_round_trips(self, store):
        odd = "bad bytes: " + b"\xff\xfe".decode("utf-8", errors="surrogateescape")
        write(store, "c1", 0, append=[Message.user(odd)])
        assert store.load("c1").messages[0].text() == odd

    def test_large_and_unicode_content_round_trips(self, store):
        big = "x" * 300_000 + "\u2603\U0001f600\x00\n\t\"'\\"
        write(store, "c1", 0, append=[Message.user(big)])
        assert store.load("c1").messages[0].text() == big


class TestTreeAndListing:
    def make_tree(self, store):
        write(store, "root", 0, usage=spend("1.00"))
        write(store, "kid1", 0, parent="root", root="root", usage=spend("0.25"))
        write(store, "kid2", 0, parent="root", root="root", usage=spend("0.50"), append=msgs("a", "b"))
        write(store, "grandkid", 0, parent="kid1", root="root", usage=spend("0.125"))
        write(store, "other", 0, usage=spend("9"))

    def test_list_sums_usage_over_each_subtree(self, store):
        self.make_tree(store)
        by_id = {row.id: row for row in store.list()}
        assert by_id["root"].cost_usd == Decimal("1.875")
        assert by_id["kid1"].cost_usd == Decimal("0.375")
        assert by_id["kid2"].cost_usd == Decimal("0.50") and by_id["kid2"].messages == 2
        assert by_id["root"].usage.responses == 4
        assert by_id["grandkid"].parent_id == "kid1" and by_id["grandkid"].root_id == "root"

    def test_list_filters(self, store):
        self.make_tree(store)
        assert sorted(r.id for r in store.list(root="root")) == ["grandkid", "kid1", "kid2", "root"]
        assert sorted(r.id for r in store.list(parent="root")) == ["kid1", "kid2"]
        assert sorted(r.id for r in store.list(roots_only=True)) == ["other", "root"]
        assert [r.id for r in store.list(limit=1)] == ["other"]  # most recently updated first

    def test_subtree_usage(self, store):
        self.make_tree(store)
        assert store.subtree_usage("root").total_cost_usd == Decimal("0.875")
        assert store.subtree_usage("kid2").total_cost_usd == 0

    def test_delete_takes_the_subtree(self, store):
        self.make_tree(store)
        store.delete("kid1")
        assert sorted(r.id for r in store.list()) == ["kid2", "other", "root"]
        with pytest.raises(ConversationNotFound):
            store.load("grandkid")
        store.delete("never-was")


class TestBadData:
    def test_a_corrupt_message_names_the_conversation(self, store, store_kind):
        write(store, "c1", 0, append=msgs("a", "b", "c"))
        store_kind.corrupt_message(store, "c1", 1)
        with pytest.raises(ConversationUnreadable) as info:
            store.load("c1")
        assert info.value.conversation_id == "c1" and "message 1" in str(info.value)

    def test_corrupt_usage_names_the_conversation(self, store, store_kind):
        write(store, "c1", 0)
        store_kind.corrupt_usage(store, "c1")
        with pytest.raises(ConversationUnreadable, match="c1"):
            store.list()

    def test_state_written_by_a_newer_convo(self, store):
        store.write("c1", expected_version=0, parent_id=None, root_id="c1", state={"format": 99, "id": "c1"},
                    usage=CumulativeUsage(), keep=0)
        with pytest.raises(ConversationUnreadable, match="newer convo"):
            store.load("c1")

    def test_a_newer_layout_is_refused_when_opened(self, store, store_kind):
        if store_kind.name == "memory":
            return  # no layout: nothing to be newer than (asserted by MemoryKind.stamp_schema being a no-op)
        store_kind.stamp_schema(store, convo.stores.SCHEMA_VERSION + 1)
        with pytest.raises(IncompatibleStore):
            store_kind.reopen(store)

    def test_a_closed_store_refuses(self, store_kind):
        s = store_kind.make()
        s.close()
        s.close()
        with pytest.raises(convo.StoreError):
            s.load("x")


class TestKeyValue:
    def test_get_put_delete(self, store):
        assert store.kv_get("ns", "k") is None
        store.kv_put("ns", "k", {"a": [1, "é"]})
        assert store.kv_get("ns", "k") == {"a": [1, "é"]}
        store.kv_put("ns", "k", 2)
        assert store.kv_get("ns", "k") == 2 and store.kv_get("other", "k") is None
        store.kv_delete("ns", "k")
        assert store.kv_get("ns", "k") is None

    def test_claim_has_exactly_one_winner_among_threads(self, store):
        wins = []
        barrier = threading.Barrier(8)

        def claim(i):
            barrier.wait()
            if store.kv_claim("approvals", "call-1", {"by": i}):
                wins.append(i)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and store.kv_get("approvals", "call-1") == {"by": wins[0]}

    def test_counters_add_exactly_and_respect_a_limit(self, store):
        assert store.counter_get("spend", "u1") == 0
        assert store.counter_add("spend", "u1", Decimal("0.1")) == (True, Decimal("0.1"))
        assert store.counter_add("spend", "u1", "0.2", limit="0.3") == (True, Decimal("0.3"))
        assert store.counter_add("spend", "u1", "0.0001", limit="0.3") == (False, Decimal("0.3"))
        assert store.counter_add("spend", "u1", "-0.3", limit="0") == (True, Decimal("0.0"))
        assert store.counter_get("spend", "u1") == 0

    def test_a_counter_limit_holds_under_threads(self, store_kind):
        first = store_kind.make()
        stores = [first] + [store_kind.reopen(first) for _ in range(5)]
        added = []
        barrier = threading.Barrier(6)

        def spend(s):
            barrier.wait()
            for _ in range(10):
                ok, _ = s.counter_add("budget", "user", "0.07", limit="1")
                if ok:
                    added.append(1)

        threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(added) == 14 and first.counter_get("budget", "user") == Decimal("0.98")
        for s in {id(s): s for s in stores}.values():
            s.close()

    def test_batch_records(self, store):
        assert store.batch_get("b1", "item-0") is None
        store.batch_put("b1", "item-0", {"result": 1})
        assert store.batch_get("b1", "item-0") == {"result": 1}


class TestConcurrency:
    def test_writers_of_one_conversation_never_interleave(self, store_kind):
        """Eight threads (each with its own store object) race to append: each version is won exactly once."""
        first = store_kind.make()
        write(first, "c1", 0)
        stores = [first] + [store_kind.reopen(first) for _ in range(7)]
        won = []
        lock = threading.Lock()

        def race(s, i):
            for _ in range(10):
                current = s.load("c1")
                try:
                    write(s, "c1", current.version, keep=len(current.messages), append=msgs(f"u{i}", f"a{i}"))
                    with lock:
                        won.append(i)
                except ConcurrentUpdate:
                    pass

        threads = [threading.Thread(target=race, args=(s, i)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = first.load("c1")
        assert final.version == 1 + len(won) and len(final.messages) == 2 * len(won)
        texts = [m.text() for m in final.messages]
        assert all(texts[2 * k][1:] == texts[2 * k + 1][1:] for k in range(len(won))), "a turn was interleaved"
        for s in {id(s): s for s in stores}.values():
            s.close()


# --- conversations on a store ----------------------------------------------------------------------


class TestConvoOnAStore:
    def test_every_turn_is_saved_and_resumes_as_it_was(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=100, output_tokens=10)),
                                  model=PRICED)
        c = Convo(service, store=store, system_prompt="be kind", budget=Budget(5), prices=PRICES, max_tokens=50,
                  temperature=0.3, extra_data={"user": "ada"})
        c.send("one")
        c.send("two")
        back = convo.resume(c.id, store=store, service=service, prices=PRICES)
        assert [m.text() for m in back.messages] == ["one", "ok", "two", "ok"]
        assert back.cumulative_usage().total_cost_usd == c.cumulative_usage().total_cost_usd == Decimal("0.00024")
        assert (back.system_prompt, back.budget, back.max_tokens, back.temperature, back.extra_data) == (
            "be kind", Budget(5), 50, 0.3, {"user": "ada"})
        back.send("three")
        assert len(store.load(c.id).messages) == 6

    def test_a_failed_send_writes_nothing(self, store):
        service = ScriptedService([reply("ok"), convo.APIConnectionError("down")])
        c = Convo(service, store=store)
        c.send("one")
        with pytest.raises(convo.APIConnectionError):
            c.send("two")
        assert store.load(c.id).version == 1 and len(store.load(c.id).messages) == 2

    def test_sub_convos_are_stored_with_their_parent_and_roll_up(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        lead = Convo(service, store=store, prices=PRICES, budget=Budget(1))
        lead.send("plan")
        worker = lead.sub_convo(system_prompt="work", tools=[add])
        worker.send("do it")
        deep = worker.sub_convo()
        deep.send("deeper")
        back = convo.resume(deep.id, store=store, service=service, prices=PRICES)
        assert back.parent.id == worker.id and back.parent.parent.id == lead.id and back.depth() == 2
        assert back.root().cumulative_usage().total_cost_usd == Decimal("0.003")
        back.send("more")
        assert back.root().cumulative_usage().total_cost_usd == Decimal("0.004")
        assert back.parent.cumulative_usage().total_cost_usd == Decimal("0.003")
        with pytest.raises(convo.ConfigurationError, match="resume it by its own id"):
            back.parent.send("not like this")
        assert store.list(root=lead.id)[0].cost_usd > 0

    def test_budgets_survive(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=400_000)), model=PRICED,
                                  max_tokens=100)
        c = Convo(service, store=store, prices=PRICES, budget=Budget(1))
        c.send("a")
        c.send("b")
        back = convo.resume(c.id, store=store, service=service, prices=PRICES)
        with pytest.raises(convo.BudgetExceeded):
            back.send("c" * 400_000)

    def test_unknown_id(self, store):
        with pytest.raises(ConversationNotFound):
            convo.resume("missing", store=store, service=ScriptedService())

    def test_held_tool_results_survive(self, store):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "add", {"a": 2, "b": 3})]), reply("5")])
        c = Convo(service, store=store, tools=[add])
        with pytest.raises(convo.MaxTurnsExceeded):
            c.run("add", max_turns=1)
        back = convo.resume(c.id, store=store, service=service, tools=[add])
        assert back.continue_turn().text() == "5"
        assert service.requests[1].messages[-1].tool_results()[0].text() == "5"

    def test_fork_is_independent_and_saved(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        c = Convo(service, store=store, prices=PRICES)
        c.send("shared")
        f = c.fork()
        f.send("only in the fork")
        c.send("only in the original")
        assert [m.text() for m in store.load(f.id).messages][-2] == "only in the fork"
        assert len(store.load(c.id).messages) == 4 and len(store.load(f.id).messages) == 4
        assert f.cumulative_usage().responses == 1
        with pytest.raises(ConcurrentUpdate):
            c.fork(id=f.id)

    def test_clear_keeps_the_money(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        c = Convo(service, store=store, prices=PRICES, system_prompt="sys")
        c.send("a")
        c.clear()
        assert c.messages == [] and store.load(c.id).messages == ()
        back = convo.resume(c.id, store=store, service=service, prices=PRICES)
        assert back.cumulative_usage().total_cost_usd == Decimal("0.001") and back.system_prompt == "sys"

    def test_close_is_saved(self, store):
        c = Convo(ScriptedService([reply("ok")]), store=store)
        c.send("a")
        with c:
            pass
        with pytest.raises(ConversationClosed):
            c.send("b")
        with pytest.raises(ConversationClosed):
            convo.resume(c.id, store=store, service=ScriptedService()).send("b")

    def test_two_writers_on_one_conversation(self, store_kind):
        """Two processes resumed one id and both send: the stale one is refused and nothing is lost."""
        first = store_kind.make()
        service = ScriptedService(default=reply("ok"))
        c = Convo(service, store=first)
        c.send("start")
        a = convo.resume(c.id, store=first, service=service)
        b = convo.resume(c.id, store=store_kind.reopen(first), service=service)
        a.send("from a")
        with pytest.raises(ConcurrentUpdate):
            b.send("from b")
        assert [m.text() for m in first.load(c.id).messages] == ["start", "ok", "from a", "ok"]
        assert [m.text() for m in b.messages] == ["start", "ok"]
        again = convo.resume(c.id, store=first, service=service)
        again.send("from b, again")
        assert len(first.load(c.id).messages) == 6
        first.close()

    def test_many_threads_on_one_tree(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        root = Convo(service, store=store, prices=PRICES)
        subs = [root.sub_convo() for _ in range(6)]

        def talk(c):
            for i in range(5):
                c.send(f"turn {i}")

        threads = [threading.Thread(target=talk, args=(c,)) for c in subs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.list(root=root.id)[-1].cost_usd >= 0
        total = {r.id: r for r in store.list(root=root.id)}[root.id]
        assert total.cost_usd == root.cumulative_usage().total_cost_usd == Decimal("0.030")
        for c in subs:
            assert len(store.load(c.id).messages) == 10


class TestHistoryEdits:
    def test_rewind_drops_what_followed_and_keeps_the_money(self, store):
        service = ScriptedService(default=reply("ok", model=PRICED, usage=Usage(input_tokens=1000)), model=PRICED)
        c = Convo(service, store=store, prices=PRICES)
        c.send("one")
        c.send("two")
        c.rewind(2)
        assert [m.text() for m in c.messages] == ["one", "ok"]
        back = convo.resume(c.id, store=store, service=service, prices=PRICES)
        assert [m.text() for m in back.messages] == ["one", "ok"]
        assert back.cumulative_usage().total_cost_usd == Decimal("0.002")
        with pytest.raises(convo.ConfigurationError):
            c.rewind(3)

    def test_extend_keeps_a_partial_reply_and_closes_its_tool_calls(self, store):
        service = ScriptedService([reply("after")])
        c = Convo(service, store=store)
        partial = Message.assistant("I was saying", ToolUse("t1", "add", {"a": 1}))
        c.extend([Message.user("hello"), partial])
        assert [m.text() for m in store.load(c.id).messages] == ["hello", "I was saying"]
        c.send("go on")
        [closed] = service.requests[0].messages[-1].tool_results()
        assert closed.tool_use_id == "t1" and closed.is_error and "not executed" in closed.text()
        with pytest.raises(convo.ConfigurationError, match="alternate"):
            c.extend([Message.assistant("two assistants in a row")])
