"""convo.batch on threads: order, captured failures, budgets, resume from a store, the progress bar, load."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Literal

import attrs
import pytest

import convo
from convo import (
    ArgumentTypeError,
    BatchResult,
    Budget,
    BudgetExceeded,
    ConfigurationError,
    Convo,
    CumulativeUsage,
    ItemStatus,
    PRICES,
    Request,
    Usage,
    batch,
)
from convo.batch import default_batch_id
from convo.testing import FunctionService, ScriptedService, reply

# A test below imports Ray: set before it is, so a cluster would bind to 127.0.0.1 (see test_batch_ray.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

MODEL = "claude-haiku-4-5"
USAGE = Usage(input_tokens=100, output_tokens=20)
ITEM_COST = PRICES.lookup(MODEL).cost(USAGE)  # one request per item in these tests


def echo(request: Request):
    return reply("echo " + request.messages[-1].text(), model=MODEL, usage=USAGE)


@pytest.fixture
def lead() -> Convo:
    """A parent convo on a priced fake model that echoes each message."""
    return Convo(FunctionService(echo))


def send_item(item, c: Convo) -> str:
    """The plain task: one message per item."""
    return c.send(f"item {item}").text()


@attrs.frozen
class Score:
    item: int
    text: str


class SQLiteBatchStore:
    """The two methods batch() needs from a store, on a real sqlite3 file (a connection per call)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.puts: list[str] = []
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS batch_items (batch_id TEXT, item_key TEXT, record TEXT, "
                       "PRIMARY KEY (batch_id, item_key))")

    @contextlib.contextmanager
    def _db(self):
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            yield db

    def batch_get(self, batch_id: str, item_key: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT record FROM batch_items WHERE batch_id = ? AND item_key = ?",
                             (batch_id, item_key)).fetchone()
        return None if row is None else json.loads(row[0])

    def batch_put(self, batch_id: str, item_key: str, record: dict) -> None:
        self.puts.append(item_key)
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO batch_items VALUES (?, ?, ?)", (batch_id, item_key, json.dumps(record)))

    def records(self) -> list[dict]:
        with self._db() as db:
            return [json.loads(r[0]) for r in db.execute("SELECT record FROM batch_items")]


@pytest.fixture
def store(tmp_path) -> SQLiteBatchStore:
    return SQLiteBatchStore(tmp_path / "batches.sqlite3")


class TestOrderAndFailures:
    def test_results_come_back_in_input_order_whatever_order_they_finish_in(self, lead):
        def slow_first(item, c):
            time.sleep(0.02 * (10 - item))
            return item * 10

        result = batch(range(10), slow_first, parent=lead, max_workers=10, progress=False)
        assert list(result) == [i * 10 for i in range(10)]
        assert [o.index for o in result.outcomes] == list(range(10))

    def test_a_failing_item_leaves_its_error_in_its_slot_and_the_rest_run(self, lead):
        def task(item, c):
            if item in (2, 5):
                raise ValueError(f"bad item {item}")
            return send_item(item, c)

        result = batch(range(8), task, parent=lead, max_workers=3, progress=False)
        assert [type(r).__name__ for r in result] == ["str"] * 2 + ["ValueError"] + ["str"] * 2 + ["ValueError"] + \
            ["str"] * 2
        assert str(result[5]) == "bad item 5" and set(result.errors) == {2, 5}
        assert not result.ok and result.counts() == {"done": 6, "failed": 2, "not_started": 0, "resumed": 0}
        assert result.outcomes[2].status == ItemStatus.FAILED and result.outcomes[2].error.__traceback__ is not None

    def test_usage_rolls_up_into_the_parent_exactly(self, lead):
        result = batch(range(25), send_item, parent=lead, max_workers=8, progress=False)
        total = lead.cumulative_usage()
        assert total.responses == 25 and total.total_cost_usd == 25 * ITEM_COST
        assert result.cost_usd == 25 * ITEM_COST
        assert sum(o.usage.total_cost_usd for o in result.outcomes) == 25 * ITEM_COST
        assert all(o.usage.responses == 1 for o in result.outcomes)

    def test_each_item_runs_on_its_own_sub_convo_under_one_batch_convo(self, lead):
        seen = batch(range(4), lambda item, c: (c.id, c.parent.id, c.parent.parent is lead), parent=lead,
                     progress=False)
        assert len({s[0] for s in seen}) == 4 and len({s[1] for s in seen}) == 1
        assert all(s[2] for s in seen)

    def test_no_more_than_max_workers_items_run_at_once(self, lead):
        lock, running, peak = threading.Lock(), [0], [0]

        def task(item, c):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            with lock:
                running[0] -= 1

        started = time.monotonic()
        batch(range(12), task, parent=lead, max_workers=6, progress=False)
        assert peak[0] == 6
        assert time.monotonic() - started < 12 * 0.2 / 2  # generous: 6 at a time take 0.4 s, one at a time 2.4 s

    def test_without_a_parent_a_new_default_convo_is_the_root(self, monkeypatch):
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        result = batch([1, 2], lambda item, c: (c.depth(), type(c.service).__name__), progress=False)
        assert list(result) == [(2, "LocalService")] * 2  # the model is never loaded: nothing is sent

    def test_empty_items_give_an_empty_result(self, lead):
        result = batch([], send_item, parent=lead, progress=False)
        assert len(result) == 0 and result.ok and result.cost_usd == 0


class TestTemplates:
    def test_a_prompt_template_returns_each_reply_text(self, lead):
        result = batch(["a", "b"], "Say {item}", parent=lead, progress=False)
        assert list(result) == ["echo Say a", "echo Say b"]

    def test_a_template_with_output_returns_typed_values(self):
        @attrs.frozen
        class Tag:
            tag: Literal["x", "y"]

        service = FunctionService(lambda r: reply('{"tag": "y"}' if "y" in r.messages[-1].text() else '{"tag": "x"}'))
        result = batch(["x", "y", "x"], "Tag: {item}", output=Tag, parent=Convo(service), progress=False)
        assert list(result) == [Tag("x"), Tag("y"), Tag("x")]

    def test_an_item_whose_reply_never_fits_fails_alone(self):
        service = FunctionService(lambda r: reply("no" if "bad" in str(r.messages) else '{"n": 1}'))
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        result = batch(["ok", "bad"], "Count {item}", output=convo.Output(schema, attempts=2),
                       parent=Convo(service), progress=False)
        assert result[0] == {"n": 1} and isinstance(result[1], convo.OutputValidationError)

    def test_output_with_a_callable_task_is_refused(self, lead):
        with pytest.raises(ConfigurationError, match="prompt template"):
            batch([1], send_item, output=dict, parent=lead, progress=False)

    def test_a_template_without_an_item_field_is_refused(self, lead):
        with pytest.raises(ConfigurationError, match="{item}"):
            batch([1], "Say hello", parent=lead, progress=False)


class TestBudget:
    def test_no_item_starts_once_the_budget_is_spent_and_overshoot_is_bounded(self, lead):
        budget = 10 * ITEM_COST
        result = batch(range(60), send_item, parent=lead, max_workers=4, budget=budget, progress=False)
        counts = result.counts()
        assert counts["not_started"] > 0 and counts["failed"] == 0
        assert budget <= result.cost_usd <= budget + 4 * ITEM_COST  # the documented bound: items in flight
        assert lead.cumulative_usage().total_cost_usd == result.cost_usd
        skipped = [o for o in result.outcomes if o.status == ItemStatus.NOT_STARTED]
        assert all(isinstance(o.error, BudgetExceeded) for o in skipped)
        assert result[skipped[0].index] is skipped[0].error
        assert [o.index for o in skipped] == list(range(skipped[0].index, 60))  # items start in input order

    def test_a_budget_object_or_a_decimal_work_alike(self, lead):
        a = batch(range(20), send_item, parent=lead, max_workers=1, budget=Budget(3 * ITEM_COST), progress=False)
        b = batch(range(20), send_item, parent=lead, max_workers=1, budget=Decimal(3 * ITEM_COST), progress=False)
        assert a.counts() == b.counts() == {"done": 3, "failed": 0, "not_started": 17, "resumed": 0}

    def test_a_parent_budget_stays_a_hard_cap_and_its_refusal_stops_new_items(self):
        # Billing no more input than the budget's estimate (about one token per byte), as real models do.
        cheap = ScriptedService(default=lambda r: reply("ok", model=MODEL, usage=Usage(input_tokens=10, output_tokens=20)),
                                model=MODEL)
        parent = Convo(cheap, budget=Decimal("0.0105"), max_tokens=50)
        result = batch(range(200), send_item, parent=parent, max_workers=8, progress=False)
        assert parent.cumulative_usage().total_cost_usd <= Decimal("0.0105")
        counts = result.counts()
        assert counts["not_started"] > 100 and 1 <= counts["failed"] <= 8
        assert all(isinstance(e, BudgetExceeded) for e in result.errors.values())


    def test_a_budget_inside_one_item_stops_only_that_item(self):
        def task(item, c):
            if item == 0:
                return c.sub_convo(budget=0).send("nothing may be spent here")
            return send_item(item, c)

        result = batch(range(10), task, parent=Convo(ScriptedService(default=echo, model=MODEL)), max_workers=1,
                       progress=False)
        assert result.counts() == {"done": 9, "failed": 1, "not_started": 0, "resumed": 0}
        assert isinstance(result[0], BudgetExceeded)


class TestResume:
    def test_a_run_again_skips_the_items_already_done(self, lead, store):
        calls: list[int] = []
        flaky = [True]

        def task(item, c):
            calls.append(item)
            if item == 3 and flaky and flaky.pop():
                raise RuntimeError("flaky")
            return send_item(item, c)

        first = batch(range(6), task, parent=lead, store=store, progress=False)
        assert set(first.errors) == {3}
        calls.clear()
        second = batch(range(6), task, parent=lead, store=store, progress=False)
        assert calls == [3]  # only the failed item ran again
        assert second.ok and list(second) == [f"echo item {i}" for i in range(6)]
        assert [o.status for o in second.outcomes].count(ItemStatus.RESUMED) == 5
        assert second.cost_usd == ITEM_COST  # resumed items cost nothing now
        assert second.outcomes[0].usage.total_cost_usd == ITEM_COST  # what they cost when they ran
        assert first.batch_id == second.batch_id

    def test_records_are_json_with_status_result_usage_and_error(self, lead, store):
        def task(item, c):
            if item:
                raise KeyError("missing")
            return send_item(item, c)

        batch([0, 1], task, parent=lead, store=store, progress=False)
        done, failed = sorted(store.records(), key=lambda r: r["index"])
        assert done["status"] == "done" and done["result"] == "echo item 0" and done["error"] is None
        assert CumulativeUsage.from_dict(done["usage"]).total_cost_usd == ITEM_COST
        assert failed["status"] == "failed" and failed["result"] is None
        assert failed["error"] == {"type": "builtins.KeyError", "message": "'missing'"}

    def test_a_typed_result_comes_back_as_its_type(self, lead, store):
        def task(item, c) -> Score:
            return Score(item, send_item(item, c))

        first = batch(range(3), task, parent=lead, store=store, progress=False)
        second = batch(range(3), task, parent=lead, store=store, progress=False)
        assert list(second) == list(first) == [Score(i, f"echo item {i}") for i in range(3)]
        assert second.counts()["resumed"] == 3

    def test_a_result_with_no_json_form_is_not_recorded_and_runs_again(self, lead, store):
        calls = []

        def task(item, c):
            calls.append(item)
            return object()

        batch([1, 2], task, parent=lead, store=store, progress=False)
        batch([1, 2], task, parent=lead, store=store, progress=False)
        assert sorted(calls) == [1, 1, 2, 2] and store.puts == []

    def test_a_different_batch_id_finds_nothing(self, lead, store):
        batch(range(3), send_item, parent=lead, store=store, progress=False)
        again = batch(range(3), send_item, parent=lead, store=store, batch_id="another", progress=False)
        assert again.counts()["done"] == 3

    def test_a_keyboard_interrupt_in_a_task_is_raised_after_finished_items_are_recorded(self, lead, store):
        def task(item, c):
            if item == 4:
                raise KeyboardInterrupt
            return send_item(item, c)

        with pytest.raises(KeyboardInterrupt):
            batch(range(10), task, parent=lead, store=store, max_workers=1, progress=False)
        assert sorted(r["index"] for r in store.records()) == [0, 1, 2, 3]


class TestBatchId:
    def test_the_default_id_is_stable_and_depends_on_task_items_and_output(self):
        assert default_batch_id(send_item, [1, 2]) == default_batch_id(send_item, [1, 2])
        assert default_batch_id(send_item, [1, 2]) != default_batch_id(send_item, [2, 1])
        assert default_batch_id(send_item, [1, 2]) != default_batch_id(echo, [1, 2])
        assert default_batch_id("Say {item}", [1]) != default_batch_id("Say {item}", [1], output=dict[str, int])
        assert default_batch_id(lambda i, c: 1, [1]) != default_batch_id(lambda i, c: 2, [1])

    def test_repeated_items_get_their_own_keys(self, lead):
        result = batch(["a", "a", "b"], send_item, parent=lead, progress=False)
        keys = [o.key for o in result.outcomes]
        assert len(set(keys)) == 3 and keys[1] == keys[0] + "#2"


class TestProgressBar:
    def test_the_bar_shows_items_failures_and_dollars_on_stderr(self, lead, capsys):
        def task(item, c):
            if item == 1:
                raise ValueError("no")
            return send_item(item, c)

        batch(range(3), task, parent=lead, progress=True)
        out, err = capsys.readouterr()
        assert out == ""
        last = err.replace("\r", "\n").strip().splitlines()[-1]
        assert "batch" in last and "3/3" in last and "failed=1" in last and f"${2 * ITEM_COST:.4f}" in last

    def test_a_resumed_batch_starts_the_bar_where_it_stands(self, lead, store, capsys):
        batch(range(4), send_item, parent=lead, store=store, progress=False)
        batch(range(5), send_item, parent=lead, store=store, batch_id=default_batch_id(send_item, range(4)),
              progress=True)
        err = capsys.readouterr().err.replace("\r", "\n")
        assert "4/5" in err and "5/5" in err

    def test_progress_false_prints_nothing(self, lead, capsys):
        batch(range(3), send_item, parent=lead, progress=False)
        assert capsys.readouterr() == ("", "")


class TestArguments:
    @pytest.mark.parametrize("kwargs, error", [
        ({"max_workers": 0}, ConfigurationError),
        ({"max_workers": True}, ConfigurationError),
        ({"parent": "lead"}, ArgumentTypeError),
        ({"store": object()}, ArgumentTypeError),
        ({"executor": "spark"}, ConfigurationError),
        ({"batch_id": ""}, ConfigurationError),
        ({"budget": -1}, ConfigurationError),
        ({"progress": "yes"}, ArgumentTypeError),
    ])
    def test_bad_arguments_are_refused_before_anything_runs(self, lead, kwargs, error):
        kwargs.setdefault("parent", lead)
        with pytest.raises(error):
            batch([1], send_item, **kwargs)
        assert lead.cumulative_usage().responses == 0

    def test_a_task_that_is_neither_callable_nor_a_template(self, lead):
        with pytest.raises(ArgumentTypeError, match="task"):
            batch([1], 42, parent=lead)

    def test_ray_without_ray_init_says_so(self, lead):
        import ray

        assert not ray.is_initialized()
        with pytest.raises(ConfigurationError, match="ray.init"):
            batch([1], send_item, parent=lead, executor="ray", progress=False)


class TestThreadSafety:
    def test_batches_from_several_threads_on_one_parent_add_up_exactly(self, lead):
        results: dict[int, BatchResult] = {}

        def run(n: int) -> None:
            results[n] = batch(range(50), lambda item, c: send_item((n, item), c), parent=lead, max_workers=8,
                               progress=False)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert lead.cumulative_usage().total_cost_usd == 200 * ITEM_COST
        assert lead.cumulative_usage().responses == 200
        for n, result in results.items():
            assert list(result) == [f"echo item {(n, i)}" for i in range(50)]

    def test_items_run_in_the_callers_context(self, lead):
        import contextvars

        var = contextvars.ContextVar("who", default="nobody")
        var.set("caller")
        assert set(batch(range(4), lambda item, c: var.get(), parent=lead, progress=False)) == {"caller"}


def test_importing_convo_imports_neither_tqdm_nor_dask_nor_ray():
    code = "import sys, convo; print(sorted(m for m in ('tqdm', 'dask', 'distributed', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]"


def test_a_local_service_is_sent_to_workers_as_its_settings():
    from convo import LocalService
    from convo.batch import _Rebuild, _shippable_service

    recipe = _shippable_service(LocalService(n_ctx=1024, max_tokens=9, seed=3), "ray")
    assert isinstance(recipe, _Rebuild)
    rebuilt = pickle.loads(pickle.dumps(recipe))()
    assert (rebuilt.n_ctx, rebuilt.max_tokens, rebuilt.seed) == (1024, 9, 3) and rebuilt.load_seconds is None


def test_a_scripted_service_cannot_be_sent_to_workers(lead):
    from convo.batch import _shippable_service

    with pytest.raises(ConfigurationError, match="cannot be sent to dask workers"):
        _shippable_service(ScriptedService(), "dask")


def test_remote_item_errors_pickle_with_their_attributes():
    back = pickle.loads(pickle.dumps(convo.RemoteItemError("pkg.Odd", "1/2")))
    assert (back.type_name, back.message, str(back)) == ("pkg.Odd", "1/2", "pkg.Odd: 1/2")
    assert isinstance(back, RuntimeError) and isinstance(back, convo.ConvoError)
