"""Running one reply's tool calls: concurrently, each settled exactly once, results in the order asked.

A :class:`ToolCall` is settled once, by the thread that ran it or by a
cancel, whichever comes first; a late result of a cancelled call is dropped.
Calls run on :data:`convo._workers.TOOL_WORKERS`, at most
``max_tool_workers`` threads per round: that many drain tasks take the
round's calls one after another, so a round of 200 calls with a limit of 2
uses 2 threads.

Whatever a tool does becomes a result, never a crash or a hang: an unknown
tool, input failing the schema, an exception, ``SystemExit`` or any other
``BaseException`` is an error result the model reads. ``KeyboardInterrupt``
also settles its call with an error result, and is then raised again in the
thread that asked for the round, once every other call has settled.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from attrs import define, field

from ._log import log
from ._time import now
from ._workers import TOOL_WORKERS
from .errors import ArgumentTypeError
from .hooks import Pending, PendingTool
from .messages import Response, StopReason, Text, ToolResult, ToolUse
from .tools import DoNotRespond, Tool, ToolCallInfo, ToolInputError, ToolOut, _current_call, to_content

if TYPE_CHECKING:
    from .conversation import Convo

__all__ = ["ToolCall", "ToolRound", "run_tool_calls"]

#: What a result says for a call whose tool ran but asked for no result (DoNotRespond).
NO_RESPONSE_TEXT = "the tool ran and returned no result"


class ToolCall:
    """One tool call of a reply, settled exactly once: by its worker or by a cancel."""

    __slots__ = ("tool_use", "tool", "info", "lock", "settled", "announced", "result", "skip", "error", "start_time",
                 "held", "failure")

    def __init__(self, tool_use: ToolUse, tool: Tool | None, info: ToolCallInfo) -> None:
        self.tool_use = tool_use
        self.tool = tool
        self.info = info
        self.lock = threading.Lock()
        self.settled = threading.Event()
        self.announced = threading.Event()  # its outcome reached the listener (or needs not): the round may go on
        self.failure: BaseException | None = None  # a strict listener refused its result
        self.result: ToolResult | None = None
        self.skip = False
        self.error: BaseException | None = None
        self.start_time = now()
        self.held: PendingTool | None = None  # a gate held it for approval: it does not run now

    def settle(self, result: ToolResult | None, *, skip: bool = False, error: BaseException | None = None) -> bool:
        """Record the outcome; False if the call was already settled (the outcome is dropped)."""
        with self.lock:
            if self.settled.is_set():
                return False
            self.result, self.skip, self.error = result, skip, error
            self.settled.set()
            return True

    def announce(self, convo: "Convo") -> None:
        """Tell the listener the settled result (none for a skipped or held call); then the round may go on.

        The round waits for this, not just for the result: a result never
        reaches the listener after the turn moved on, and a strict listener
        that refuses it stops the turn.
        """
        try:
            if not self.skip and self.held is None and self.result is not None:
                convo._notify_result(self.tool_use, self.result, self.error)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.announced.set()


@define
class ToolRound:
    """What one reply's tool calls came to.

    ``results`` are the results to send, in the order the model asked
    (calls that asked for no result are left out); ``answers`` maps every
    call's id to the result the model should read for it, those included
    (so a later send can tell the model the truth about each). ``pending``
    lists the calls a hook held for approval (:class:`~convo.PendingTool`),
    which have no answer yet.
    """

    results: list = field(factory=list)
    answers: dict = field(factory=dict)
    ends_turn: bool = False
    pending: list = field(factory=list)


def run_tool_calls(convo: "Convo", response: Response, *, gate: bool = True, fresh: bool = True) -> ToolRound:
    """Run every tool call of ``response`` for ``convo`` and wait for all of them.

    With ``gate``, each call first passes the convo's ``gate_tool_call``
    hooks, which may hold it for approval or answer it without running.
    ``fresh=False`` runs calls already counted and announced (a held call,
    approved later).

    Raises:
        KeyboardInterrupt: a tool raised it (after every call settled).
    """
    tool_uses = response.tool_uses()
    if not tool_uses:
        return ToolRound()
    tools = convo.available_tools()
    by_name = {t.name: t for t in tools}
    calls = [ToolCall(tu, by_name.get(tu.name), ToolCallInfo(tu.id, convo)) for tu in tool_uses]
    names = ", ".join(sorted(by_name)) or "none"
    if response.stop_reason == StopReason.MAX_TOKENS:
        # The reply was cut off while the model wrote its last call: that
        # input is partial (providers keep it as {}), and running a tool on
        # a truncated argument list is never safe.
        cut = calls[-1]
        cut.settle(ToolResult(cut.tool_use.id,
                              f"your call to {cut.tool_use.name!r} was cut off by the max_tokens limit before "
                              "its input was complete, so it did not run; call it again with shorter input",
                              is_error=True, start_time=cut.start_time, end_time=cut.start_time))
    if gate:
        _gate(convo, calls)
    convo._register_calls(calls)
    interrupted: list[BaseException] = []
    try:
        for call in calls if fresh else ():
            convo._record_tool_use(call.tool_use.name)
            convo._notify("on_tool_call", call.tool_use)
            if call.held is not None:
                convo._notify("on_tool_pending", call.held)
            if call.settled.is_set():  # decided without running (cut off, gated, held): the audit trail sees it
                call.announce(convo)
        todo = deque((call, contextvars.copy_context()) for call in calls if not call.settled.is_set())
        if todo:
            lock = threading.Lock()

            def drain() -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        call, ctx = todo.popleft()
                    if not call.settled.is_set():  # not cancelled while it waited for a thread
                        ctx.run(_execute, convo, call, names, interrupted)

            for _ in range(min(len(todo), convo.max_tool_workers or len(todo))):
                TOOL_WORKERS.submit(drain)
        for call in calls:
            call.announced.wait()
    finally:
        convo._unregister_calls(calls)
    for call in calls:
        if call.failure is not None:
            raise call.failure
    round_ = ToolRound(ends_turn=any(c.tool is not None and c.tool.ends_turn for c in calls))
    for call in calls:
        if call.held is not None:
            round_.pending.append(call.held)
        elif call.skip:
            now_ = now()
            round_.answers[call.tool_use.id] = ToolResult(call.tool_use.id, NO_RESPONSE_TEXT,
                                                          start_time=call.start_time, end_time=now_)
        elif call.result is not None:
            round_.results.append(call.result)
            round_.answers[call.tool_use.id] = call.result
    if interrupted:
        convo._hold_answers(round_.answers)
        raise interrupted[0]
    return round_


def _gate(convo: "Convo", calls: list[ToolCall]) -> None:
    """Ask the convo's gates about each call: hold it, answer it, or let it run."""
    gates = convo._hook_methods("gate_tool_call")
    if not gates:
        return
    for call in calls:
        if call.settled.is_set():
            continue
        for gate in gates:
            decision = gate(convo, call.tool_use)
            if decision is None:
                continue
            tu = call.tool_use
            if isinstance(decision, Pending):
                call.held = PendingTool(tu.id, tu.name, tu.input if isinstance(tu.input, dict) else {},
                                        decision.reason, decision.message)
                call.settle(None, skip=True)
            elif isinstance(decision, ToolResult):
                if decision.tool_use_id != tu.id:
                    decision = ToolResult(tu.id, decision.content, is_error=decision.is_error,
                                          start_time=decision.start_time, end_time=decision.end_time,
                                          display=decision.display)
                call.settle(decision)
            else:
                raise ArgumentTypeError(f"gate_tool_call returned {type(decision).__name__}; expected None, "
                                "convo.Pending or convo.ToolResult")
            break


def _execute(convo: "Convo", call: ToolCall, names: str, interrupted: list) -> None:
    """Run one call in its own context (so ``tool_call_info()`` names it) and settle it."""
    tu = call.tool_use
    _current_call.set(call.info)
    call.start_time = now()
    error: BaseException | None = None
    skip = False
    display = None
    content: Any = ()
    is_error = False
    if call.tool is None:
        content, is_error = f"unknown tool {tu.name!r}; available tools: {names}", True
    else:
        problems = call.tool.validation_errors(tu.input)
        if problems:
            content, is_error = f"invalid input for tool {tu.name!r}: " + "; ".join(problems), True
        else:
            try:
                out = call.tool.run(tu.input)
                if isinstance(out, ToolOut):
                    display, is_error, out = out.display, out.error, out.content
                content = to_content(out)
                size = sum(len(b.text) for b in content if isinstance(b, Text))
                if size > convo.max_tool_result_chars:
                    content = (f"tool {tu.name!r} returned {size} characters, more than the "
                               f"limit of {convo.max_tool_result_chars}; ask for less")
                    is_error = True
            except DoNotRespond:
                skip = True
            except ToolInputError as exc:  # the model's input, not the tool, is at fault: say so as validation does
                error = exc
                content, is_error = f"invalid input for tool {tu.name!r}: {exc}", True
            except BaseException as exc:  # SystemExit and friends too: a tool never hangs or kills the loop
                error = exc
                content, is_error = f"tool {tu.name!r} failed: {type(exc).__name__}: {exc}", True
                if isinstance(exc, KeyboardInterrupt):
                    interrupted.append(exc)
                    content = f"tool {tu.name!r} was interrupted (KeyboardInterrupt)"
                log.warning("tool_failed", convo_id=convo.id, tool=tu.name, tool_use_id=tu.id,
                            error=f"{type(exc).__name__}: {exc}", exc_info=not isinstance(exc, KeyboardInterrupt))
    result = None if skip else ToolResult(tu.id, content, is_error=is_error, start_time=call.start_time,
                                          end_time=now(), display=display)
    if call.settle(result, skip=skip, error=error):
        call.announce(convo)
    else:
        log.info("tool_result_discarded", convo_id=convo.id, tool=tu.name, tool_use_id=tu.id, reason="cancelled")
