"""Running a Chucky session: one Convo per session, its work on worker threads, client tools bridged.

A :class:`Session` belongs to one WebSocket connection. The connection
(:mod:`convo.server.chucky_api`) parses frames and hands them over; this
module does everything that blocks.

Threads:

- The connection runs on the server's event loop and never blocks: it calls
  :meth:`Session.submit` (an ``init`` or a turn: queued), and
  :meth:`Session.deliver_tool_result` and :meth:`Session.shutdown`, which
  return at once.
- A session's queued work (its init, then each turn, in order) runs on a
  thread from the server's elastic worker pool, one task at a time per
  session: the Convo, store reads and writes, budget counters. A session
  with nothing to do holds no thread; no session ever waits for another.
- A client-side tool call runs on one of the Convo's tool threads (several
  at once when the model asks for several): it sends ``tool_call`` and
  waits for the client's ``tool_result``, which the connection delivers,
  until a timeout, a disconnect or a cancel wakes it with an error result
  the model reads.
- Frames leave through the ``send`` callable the connection gives, which
  any thread may call.

Persistence: a session is a root :class:`~convo.Convo` in the server's
store, with its id as the session id and its owner stamped in
``extra_data`` (see :func:`convo.server.auth.owner_of`); every turn is saved
before its ``result`` goes out, so any replica sharing the store can resume
or fork it. Sessions are never ``close()``\\ d (that would be saved, and
refuse a later resume): a connection ending just drops the Convo.

Budgets: a hook reserves each request's worst case against the token's
window budget and a listener settles it with the reply's cost (see
:mod:`convo.server.budgets`); ``maxBudgetUsd`` is the Convo's own budget.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
import uuid
from collections import deque
from decimal import Decimal
from typing import Any, Callable

import attrs

from .._log import log
from ..pricing import price_for
from ..conversation import Convo, resume
from ..errors import (
    APITimeoutError,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConvoError,
    MaxTurnsExceeded,
    ProviderError,
    RateLimitError,
    StoreError,
    ToolDefinitionError,
)
from ..messages import ThinkingConfig
from ..tools import Tool, ToolOut, tool_call_info
from ..usage import Usage
from .auth import Principal, SessionNotFound, load_owned, owner_of
from .budgets import UserBudget, WindowExhausted
from .chucky import (
    ErrorCode,
    Init,
    ResultSubtype,
    StreamEncoder,
    ToolResultFrame,
    Turn,
    assistant_frame,
    error_frame,
    result_frame,
    session_info_frame,
    stream_event_frame,
    system_init_frame,
    tool_call_frame,
    tool_result_user_frame,
)
from .context import ServerContext

__all__ = ["LATEST_NAMESPACE", "Session"]

#: Where each user's latest session id is kept (for ``continue: true`` without an id): the session
#: they most recently started or resumed (written at its first turn).
LATEST_NAMESPACE = "convo.server.latest"


def _uuid() -> str:
    """A message's uuid. Not a secret: from ``random``, because ``uuid4()`` reads ``os.urandom``, a system
    call that lets go of the GIL, and under load each one cost a worker thread a millisecond getting it back."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _session_id() -> str:
    return str(uuid.uuid4())


class _Waiter:
    """One tool call's answer, set once from another thread."""

    __slots__ = ("_event", "value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.value: tuple | None = None

    def set(self, value: tuple) -> None:
        if self.value is None:
            self.value = value
            self._event.set()

    def cancel(self) -> None:
        self.set(("cancelled", None))

    def wait(self, timeout: float) -> tuple | None:
        self._event.wait(timeout)
        return self.value


@attrs.define
class _TurnStats:
    replies: int = 0
    api_seconds: float = 0.0
    last: Any = None


class _Refused(Exception):
    """An init that cannot be carried out: the error frame to send, and whether the session ends."""

    def __init__(self, code: ErrorCode, message: str, details: dict | None = None) -> None:
        self.code, self.message, self.details = code, message, details
        super().__init__(message)


class Session:
    """One Chucky session on one connection.

    Args:
        ctx: the server's shared context.
        principal: who the connection's token speaks for.
        send: ``send(frame_dict)``, callable from any thread, queues a frame for the client.
        fatal: ``fatal(code, message, details)`` sends an error frame and closes the connection.

    Thread-safe: the methods the connection calls (:meth:`submit`,
    :meth:`deliver_tool_result`, :meth:`shutdown`) may be called from any
    thread and never block; the session's own work runs on worker threads.
    """

    def __init__(self, ctx: ServerContext, principal: Principal, send: Callable[[dict], None],
                 fatal: Callable[[ErrorCode, str, dict | None], None]) -> None:
        self.ctx = ctx
        self.principal = principal
        self.budget = UserBudget(ctx.store, principal)
        self._send = send
        self._fatal = fatal
        self._lock = threading.Lock()
        self._tasks: deque = deque()
        self._running = False
        self._closed = False
        self._calls: dict[str, _Waiter] = {}
        self._held: deque = deque()  # (counter key, dollars) reserved for requests in flight
        self._stats = _TurnStats()
        self._compute_mark = 0.0
        self.convo: Convo | None = None
        self.session_id: str | None = None
        self.model: str | None = None
        self._tools: tuple = ()
        self._max_turns: int | None = None
        self._output: Any = None
        self._partial = False
        self._mcp_servers: tuple = ()
        self._tool_choice: Any = None
        self._announced = False

    def __repr__(self) -> str:
        return f"<Session {self.session_id} of {self.principal!r}>"

    # --- called by the connection (never blocks) ------------------------------------------------

    def submit(self, frame: Init | Turn) -> None:
        """Queue an init or a turn; they run in order on a worker thread."""
        with self._lock:
            if self._closed:
                return
            if isinstance(frame, Turn):
                queued = sum(isinstance(t, Turn) for t in self._tasks)
                if queued >= self.ctx.settings.max_queued_turns:
                    refused = True
                else:
                    refused = False
                    self._tasks.append(frame)
            else:
                refused = False
                self._tasks.append(frame)
            start = not refused and not self._running
            if start:
                self._running = True
        if refused:
            self._send(error_frame(ErrorCode.SESSION_ERROR, f"{self.ctx.settings.max_queued_turns} prompts are "
                                                            "already waiting for this session; wait for a result"))
        elif start:
            self.ctx.workers.submit(self._drain)

    def deliver_tool_result(self, frame: ToolResultFrame) -> str:
        """Hand a ``tool_result`` to the call waiting for it: ``"ok"``, ``"malformed"`` or ``"unknown"``."""
        with self._lock:
            waiter = self._calls.pop(frame.call_id, None)
        if waiter is None:
            return "unknown"
        waiter.set(("malformed" if frame.malformed else "result", frame))
        return "malformed" if frame.malformed else "ok"

    def shutdown(self, reason: str = "the client disconnected") -> None:
        """The connection is gone: drop queued work, wake waiting tool calls, cancel the running turn. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._tasks.clear()
            waiters = list(self._calls.values())
            self._calls.clear()
        for w in waiters:
            w.set(("gone", None))
        if self.convo is not None:
            self.convo.cancel(reason)
        if self.session_id is not None:
            log.info("session_ended", session_id=self.session_id, user=self.principal.user_id)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the worker side -----------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._tasks or self._closed:
                    self._running = False
                    return
                task = self._tasks.popleft()
            try:
                if isinstance(task, Init):
                    self._init(task)
                else:
                    self._turn(task)
            except Exception as exc:  # a bug here must not take the session's thread or the server down
                log.error("session_task_failed", session_id=self.session_id, exc_info=True)
                self._send(error_frame(ErrorCode.UNKNOWN_ERROR,
                                       f"internal error ({type(exc).__name__}); see the server's log"))

    def _init(self, init: Init, *, implicit: bool = False) -> bool:
        """Set the session up; False (after a fatal error frame) if it cannot be."""
        if self.convo is not None:
            if not implicit:
                self._send(error_frame(ErrorCode.SESSION_ERROR,
                                       "this session is already initialised; open a new connection for another"))
            return True
        try:
            self._setup(init)
        except _Refused as refused:
            self._close(refused.code, refused.message, refused.details)
            return False
        tools = [t.name for t in self._tools]
        self._send(session_info_frame(self.session_id, state="ready", model=self.model, tools=tools,
                                      message_count=len(self.convo.messages)))
        log.info("session_started", session_id=self.session_id, user=self.principal.user_id,
                 resumed=bool(init.resume or init.continue_latest), fork=init.fork)
        return True

    def _close(self, code: ErrorCode, message: str, details: dict | None = None) -> None:
        with self._lock:
            self._closed = True
            self._tasks.clear()
        self._fatal(code, message, details)

    def _setup(self, init: Init) -> None:
        ctx, principal = self.ctx, self.principal
        model = init.model or ctx.default_model
        if model is not None and not ctx.serves(model):
            raise _Refused(ErrorCode.VALIDATION_ERROR, f"model {model!r} is not served here; served: "
                                                       f"{', '.join(ctx.models or ())}")
        if model is not None and not principal.permissions.allows_model(model):
            raise _Refused(ErrorCode.AUTHENTICATION_ERROR, f"this token does not permit the model {model!r}")
        if init.resume_at is not None:
            raise _Refused(ErrorCode.VALIDATION_ERROR, "resumeSessionAt is not supported: resume or fork whole sessions")
        output = None
        if init.output_schema is not None:
            from ..structured import Output

            try:
                output = Output(init.output_schema)
            except ConfigurationError as exc:
                raise _Refused(ErrorCode.VALIDATION_ERROR, f"outputFormat: {exc}") from None
        tools = self._build_tools(init)
        tool_choice = self._choice(init.tool_choice, tools)
        try:
            service = ctx.service_for(model)
        except ConvoError as exc:
            log.error("service_unavailable", model=model, error=type(exc).__name__)
            raise _Refused(ErrorCode.SESSION_ERROR, f"no model service for {model!r}") from None
        if model is None:
            model = getattr(service, "model", None)
        if self.budget.limited and price_for(model, service) is None:
            raise _Refused(ErrorCode.VALIDATION_ERROR, f"model {model!r} has no price, so this token's AI budget "
                                                       "cannot be kept on it")
        settings: dict[str, Any] = {"hooks": [_Hook(self)], "listener": _Listener(self),
                                    "budget": init.max_budget_usd}
        if init.system_prompt is not None:
            settings["system_prompt"] = init.system_prompt
        if init.max_thinking_tokens:
            settings["thinking"] = ThinkingConfig(budget_tokens=init.max_thinking_tokens)
        self._tools = tools
        try:
            convo = self._open_convo(init, service, settings)
        except SessionNotFound as exc:
            raise _Refused(ErrorCode.SESSION_ERROR, str(exc)) from None
        except StoreError as exc:
            log.warning("session_store_failed", error=f"{type(exc).__name__}: {exc}")
            raise _Refused(ErrorCode.SESSION_ERROR, f"the session store failed ({type(exc).__name__})") from None
        except ConfigurationError as exc:
            raise _Refused(ErrorCode.VALIDATION_ERROR, str(exc)) from None
        self.convo = convo
        self.session_id = convo.id
        self.model = model
        self._max_turns = principal.permissions.cap_turns(init.max_turns or ctx.settings.max_turns)
        self._output = output
        self._partial = init.include_partial_messages
        self._mcp_servers = init.mcp_servers
        self._tool_choice = tool_choice

    def _open_convo(self, init: Init, service: Any, settings: dict) -> Convo:
        store = self.ctx.store
        if init.resume or init.continue_latest:
            source = init.resume or store.kv_get(LATEST_NAMESPACE, self.principal.key)
            if not source:
                raise SessionNotFound("(latest)")
            load_owned(store, self.principal, source)  # the one authorisation check: not yours is not found
            convo = resume(source, store=store, service=service, **settings)
            if init.fork:
                new_id = _session_id()
                convo.fork(new_id)
                convo = resume(new_id, store=store, service=service, **settings)
            convo.reset_budget(init.max_budget_usd)
            return convo
        return Convo(service, id=_session_id(), store=store, extra_data={"owner": owner_of(self.principal),
                                                                   "api": "chucky"}, **settings)

    def _build_tools(self, init: Init) -> tuple:
        allowed, blocked, perms = init.allowed_tools, set(init.disallowed_tools), self.principal.permissions

        def offered(*names: str) -> bool:
            return ((allowed is None or any(n in allowed for n in names)) and not any(n in blocked for n in names)
                    and perms.allows_tool(*names))

        tools: list[Tool] = []
        for name, t in self.ctx.tools.items():
            if (init.server_tools is None or name in init.server_tools) and offered(name):
                tools.append(t)
        for ct in init.client_tools:
            if not offered(ct.model_name, ct.name):
                continue
            try:
                tools.append(Tool(ct.model_name, ct.description, ct.input_schema,
                                  functools.partial(self._run_client_tool, ct.name)))
            except ToolDefinitionError as exc:
                raise _Refused(ErrorCode.VALIDATION_ERROR, str(exc)) from None
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise _Refused(ErrorCode.VALIDATION_ERROR, "a client tool has the name of a server tool")
        return tuple(tools)

    @staticmethod
    def _choice(choice: str | None, tools: tuple) -> Any:
        from ..messages import ToolChoice

        if choice is None:
            return None
        if choice in ("auto", "any", "none"):
            return choice
        for t in tools:  # a client tool may be named bare
            if t.name == choice or t.name.endswith("__" + choice):
                return ToolChoice.tool(t.name)
        raise _Refused(ErrorCode.VALIDATION_ERROR, f"toolChoice names {choice!r}, which this session does not offer")

    def _turn(self, turn: Turn) -> None:
        if self.convo is None and not self._init(turn.options or Init(), implicit=True):
            return
        if self.principal.expired():
            self._close(ErrorCode.AUTHENTICATION_ERROR, "token expired; connect again with a fresh token")
            return
        if not turn.text.strip() and not turn.blocks:
            self._send(error_frame(ErrorCode.VALIDATION_ERROR, "the prompt is empty"))
            return
        try:
            self.budget.check()
        except WindowExhausted as exc:
            self._send(error_frame(ErrorCode.BUDGET_EXCEEDED, str(exc), exc.details()))
            return
        except StoreError as exc:
            self._send(error_frame(ErrorCode.SESSION_ERROR, f"the session store failed ({type(exc).__name__})"))
            return
        convo, sid = self.convo, self.session_id
        self._send(system_init_frame(sid, _uuid(), model=self.model, tools=[t.name for t in self._tools],
                                     mcp_servers=self._mcp_servers))
        self._stats = stats = _TurnStats()
        before = convo.cumulative_usage()
        started = self._compute_mark = time.monotonic()
        subtype, code, errors = ResultSubtype.SUCCESS, None, []
        text = structured = stop = None
        on_event = self._stream_events() if self._partial else None
        try:
            if self._output is not None:
                structured = convo.run(turn.text, *turn.blocks, max_turns=self._max_turns, on_event=on_event,
                                       output=self._output, tool_choice=self._tool_choice)
                response = stats.last
            else:
                response = convo.run(turn.text, *turn.blocks, max_turns=self._max_turns, on_event=on_event,
                                     tool_choice=self._tool_choice)
            if response is not None:
                text, stop = response.text(), response.stop_reason
        except Cancelled:
            if self._closed:
                return
            subtype, code, errors = ResultSubtype.ERROR_DURING_EXECUTION, ErrorCode.SESSION_ERROR, ["cancelled"]
        except Exception as exc:
            subtype, code, errors = self._failure(exc)
        finally:
            self._release_held()
            self._charge_compute()
        after = convo.cumulative_usage()
        usage = Usage(after.input_tokens - before.input_tokens, after.output_tokens - before.output_tokens,
                      after.cache_creation_input_tokens - before.cache_creation_input_tokens,
                      after.cache_read_input_tokens - before.cache_read_input_tokens)
        self._send(result_frame(sid, _uuid(), subtype=subtype, result=text, num_turns=stats.replies,
                                duration_ms=int((time.monotonic() - started) * 1000),
                                duration_api_ms=int(stats.api_seconds * 1000),
                                cost_usd=after.total_cost_usd - before.total_cost_usd, usage=usage,
                                stop_reason=None if stop is None else str(stop), structured_output=structured,
                                error_code=code, errors=errors))
        if not self._announced:  # the user's latest session is the one they last started or resumed
            self._announced = True
            try:
                self.ctx.store.kv_put(LATEST_NAMESPACE, self.principal.key, sid)
            except StoreError:
                self._announced = False

    def _failure(self, exc: Exception) -> tuple[ResultSubtype, ErrorCode | None, list[str]]:
        from ..structured import OutputValidationError

        message = str(exc)
        if isinstance(exc, MaxTurnsExceeded):
            return ResultSubtype.ERROR_MAX_TURNS, None, [message]
        if isinstance(exc, WindowExhausted):
            return ResultSubtype.ERROR_BUDGET, ErrorCode.BUDGET_EXCEEDED, [message]
        if isinstance(exc, BudgetExceeded):
            return ResultSubtype.ERROR_MAX_BUDGET_USD, None, [message]
        if isinstance(exc, OutputValidationError):
            return ResultSubtype.ERROR_MAX_STRUCTURED_OUTPUT_RETRIES, None, [message]
        if isinstance(exc, RateLimitError):
            return ResultSubtype.ERROR_DURING_EXECUTION, ErrorCode.RATE_LIMIT, [message]
        if isinstance(exc, APITimeoutError):
            return ResultSubtype.ERROR_DURING_EXECUTION, ErrorCode.TIMEOUT, [message]
        if isinstance(exc, (ProviderError, StoreError, ConvoError)):
            log.warning("turn_failed", session_id=self.session_id, error=f"{type(exc).__name__}: {message}")
            return ResultSubtype.ERROR_DURING_EXECUTION, ErrorCode.SESSION_ERROR, [message]
        log.error("turn_crashed", session_id=self.session_id, exc_info=exc)
        return (ResultSubtype.ERROR_DURING_EXECUTION, ErrorCode.UNKNOWN_ERROR,
                [f"internal error ({type(exc).__name__}); see the server's log"])

    def _stream_events(self) -> Callable[[Any], None]:
        sid = self.session_id
        encoder = StreamEncoder(self.model)

        def on_event(event: Any) -> None:
            for raw in encoder.encode(event):
                self._send(stream_event_frame(sid, _uuid(), raw))

        return on_event

    # --- budgets (hook and listener call these on the turn's thread) -------------------------------

    def _reserve(self, convo: Convo, request: Any) -> Any:
        if not self.budget.limited:
            return None
        capped, worst = convo.worst_case(request)
        if worst is None:
            raise ConfigurationError(f"model {convo.model!r} has no price; the token's AI budget cannot be kept")
        key = self.budget.reserve(worst)
        self._held.append((key, worst))
        return capped if capped is not request else None

    def _settle(self, cost: Decimal | None) -> None:
        if self._held:
            key, reserved = self._held.popleft()
            self.budget.settle(key, reserved, cost)
        else:
            self.budget.charge(cost)

    def _release_held(self) -> None:
        while self._held:
            key, reserved = self._held.popleft()
            try:
                self.budget.settle(key, reserved, None)
            except StoreError:
                log.warning("budget_release_failed", session_id=self.session_id)

    def _charge_compute(self) -> None:
        now = time.monotonic()
        seconds, self._compute_mark = now - self._compute_mark, now
        try:
            self.budget.charge_compute(seconds)
        except StoreError:
            log.warning("compute_not_counted", session_id=self.session_id, seconds=round(seconds, 3))

    # --- client-side tools (on tool threads) -----------------------------------------------------

    def _run_client_tool(self, name: str, tool_input: dict) -> Any:
        info = tool_call_info()
        call_id = info.tool_use_id if info is not None else _uuid()
        waiter = _Waiter()
        with self._lock:
            if self._closed:
                return ToolOut(f"the client disconnected; {name!r} did not run", error=True)
            self._calls[call_id] = waiter
        timeout = self.ctx.settings.tool_timeout
        try:
            self._send(tool_call_frame(call_id, name, tool_input))
            guard = info.cancelled.on_cancel(waiter.cancel) if info is not None else contextlib.nullcontext()
            with guard:
                outcome = waiter.wait(timeout)
        finally:
            with self._lock:
                self._calls.pop(call_id, None)
        if outcome is None:
            log.warning("tool_call_timeout", session_id=self.session_id, tool=name, call_id=call_id, seconds=timeout)
            return ToolOut(f"the client did not answer the call of {name!r} within {timeout:g} s", error=True)
        kind, frame = outcome
        if kind == "result":
            return ToolOut(frame.content or None, error=frame.is_error)
        if kind == "malformed":
            return ToolOut(f"the client's result for {name!r} could not be read: {frame.malformed}", error=True)
        if kind == "gone":
            return ToolOut(f"the client disconnected before answering the call of {name!r}", error=True)
        return ToolOut(f"the call of {name!r} was cancelled", error=True)


class _Hook:
    """The session's hook on its Convo: the tools it offers, and a budget reservation per request."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def tools(self, convo: Convo) -> tuple:
        return self._session._tools

    def prepare_request(self, convo: Convo, request: Any) -> Any:
        return self._session._reserve(convo, request)


class _Listener:
    """The session's listener: frames for replies and tool results, and spend settled per reply."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def on_response(self, convo: Convo, response: Any) -> None:
        s = self._session
        if convo is s.convo:
            s._settle(response.cost)
            stats = s._stats
            stats.replies += 1
            stats.last = response
            if response.duration is not None:
                stats.api_seconds += response.duration
            s._send(assistant_frame(s.session_id, _uuid(), response))
        else:  # a sub-convo a server tool made: nothing was reserved for it
            s.budget.charge(response.cost)
        s._charge_compute()

    def on_error(self, convo: Convo, request: Any, error: BaseException) -> None:
        s = self._session
        if convo is s.convo and s._held:
            key, reserved = s._held.popleft()
            s.budget.settle(key, reserved, None)

    def on_usage(self, convo: Convo, usage: Usage) -> None:
        self._session.budget.charge(usage.cost_usd)

    def on_tool_result(self, convo: Convo, tool_use: Any, result: Any, error: BaseException | None) -> None:
        s = self._session
        if convo is s.convo:
            s._send(tool_result_user_frame(s.session_id, _uuid(), result))
