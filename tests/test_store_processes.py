"""Stores across real processes: a writer killed with SIGKILL mid-run, and several processes on one SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import convo
from convo import SQLiteStore
from convo.testing import ScriptedService

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import sys
    import convo
    from convo.testing import ScriptedService, reply

    path, convo_id, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = convo.SQLiteStore(path)
    service = ScriptedService(default=lambda req: reply("answer to " + req.messages[-1].text() + " " + "z" * 5000))
    try:
        c = convo.resume(convo_id, store=store, service=service)
    except convo.ConversationNotFound:
        c = convo.Convo(service, store=store, id=convo_id)
    sub = c.sub_convo(id=convo_id + "-sub")
    i = start
    while True:
        target = sub if i % 3 == 0 else c
        try:
            target.send(f"turn {i} " + "y" * 3000)
        except convo.ConcurrentUpdate:
            print("conflict", i, flush=True)
            c = convo.resume(convo_id, store=store, service=service)
            sub = convo.resume(convo_id + "-sub", store=store, service=service)
            continue
        print("done", i, flush=True)
        i += 1
        if len(sys.argv) > 4 and i >= int(sys.argv[4]):
            break
""")


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, text=True, env=env)


def assert_whole_turns(messages, owner: str) -> list[int]:
    """Every stored turn is a user message and its reply; returns the turn numbers in order."""
    assert len(messages) % 2 == 0, f"{owner}: half a turn was stored"
    numbers = []
    for user, answer in zip(messages[::2], messages[1::2]):
        assert user.role == "user" and answer.role == "assistant"
        n = int(user.text().split()[1])
        assert answer.text().startswith(f"answer to turn {n} ")
        numbers.append(n)
    return numbers


class TestKilledWriter:
    @pytest.mark.parametrize("after", [5, 17, 29])
    def test_sigkill_mid_run_leaves_exactly_the_turns_that_returned(self, tmp_path, after):
        path = tmp_path / "crash.db"
        proc = spawn(str(path), "crash", "0")
        returned = -1
        for line in proc.stdout:
            returned = int(line.split()[1])
            if returned >= after:
                break
        time.sleep(0.003 * after)  # land the kill somewhere inside a later turn
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for line in proc.stdout.read().splitlines():  # printed before the kill, not yet read
            returned = int(line.split()[1])
        proc.stdout.close()
        with SQLiteStore(path) as store:
            main = assert_whole_turns(store.load("crash").messages, "crash")
            sub = assert_whole_turns(store.load("crash-sub").messages, "crash-sub")
            done = sorted(main + sub)
            assert done == list(range(len(done))), "a turn in the middle is missing"
            # Everything that returned is there; at most the one in flight when killed is extra.
            assert returned + 1 <= len(done) <= returned + 2
            back = convo.resume("crash-sub", store=store, service=ScriptedService())
            assert back.parent.id == "crash"
            assert back.root().cumulative_usage().responses == len(done)


class TestProcessesOnOneFile:
    def test_writers_of_different_conversations(self, tmp_path):
        path = tmp_path / "shared.db"
        SQLiteStore(path).close()
        procs = [spawn(str(path), f"c{i}", "0", "12") for i in range(3)]
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0 and out.count("done") == 12
        with SQLiteStore(path) as store:
            for i in range(3):
                turns = sorted(assert_whole_turns(store.load(f"c{i}").messages, f"c{i}")
                               + assert_whole_turns(store.load(f"c{i}-sub").messages, f"c{i}-sub"))
                assert turns == list(range(12))
            assert len(store.list(roots_only=True)) == 3

    def test_writers_of_one_conversation_conflict_but_never_interleave(self, tmp_path):
        path = tmp_path / "contended.db"
        SQLiteStore(path).close()
        procs = [spawn(str(path), "same", str(1000 * (i + 1)), str(1000 * (i + 1) + 10)) for i in range(2)]
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        with SQLiteStore(path) as store:
            for cid in ("same", "same-sub"):
                numbers = assert_whole_turns(store.load(cid).messages, cid)
                assert len(numbers) == len(set(numbers))
            stored = len(store.load("same").messages) // 2 + len(store.load("same-sub").messages) // 2
        assert stored == sum(out.count("done") for out in outputs) == 20
