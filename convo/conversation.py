"""The conversation engine: :class:`Convo`, a managed conversation with a model.

A Convo holds the history, the tools, a budget and a listener. It sends
messages through a :class:`~convo.Service`, runs the tools the model asks
for concurrently on worker threads, and rolls every token and dollar its
sub-conversations spend up into its own totals.

Thread safety, in one place:

- Every public method may be called from any thread.
- Sends on one Convo (``send_message``, ``send_user_text_message``,
  ``stream_user_text_message``, ``run``) are serialised: a second thread
  waits for the first turn to finish, so the history stays a proper
  alternation. Different Convos (a parent and its sub-convos included)
  send fully in parallel.
- Usage and history sit behind a short lock per Convo; no lock is held
  while calling the service, a tool or a listener.
- ``cancel()`` and ``cancel_tool_use()`` are meant to be called from
  another thread than the one blocked in a send or in tools.
"""

from __future__ import annotations

import contextvars
from functools import partial
import json
import secrets
import threading
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

import attrs
import structlog
from attrs import field, frozen

from . import listeners as _listeners
from . import _cancel
from ._cancel import CancelToken, cancel_scope
from .errors import (
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConvoError,
    MaxTurnsExceeded,
    ToolDefinitionError,
    UnknownToolUseError,
)
from .messages import (
    Message,
    Request,
    Response,
    Role,
    StopReason,
    Text,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolUse,
)
from .pricing import PRICES, PriceTable
from .service import Service, StreamDone, StreamEvent
from ._workers import TOOL_WORKERS
from .tools import DoNotRespond, Tool, ToolCallInfo, ToolOut, _current_call, to_content
from .usage import CumulativeUsage, Usage, _to_decimal

__all__ = ["Budget", "Convo"]

log = structlog.get_logger("convo")

#: Tool results longer than this many characters are replaced by an error
#: result: a runaway tool must not blow the context window (and the budget).
DEFAULT_MAX_TOOL_RESULT_CHARS = 200_000

_unpriced_lock = threading.Lock()
_unpriced_logged: set[str] = set()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return secrets.token_hex(6)


def _nonneg(instance, attribute, value):
    if value < 0:
        raise ValueError(f"Budget.max_dollars must be >= 0, got {value!r}")


@frozen
class Budget:
    """How many dollars a conversation (and everything below it) may spend; 0 is unlimited."""

    max_dollars: Decimal = field(default=Decimal(0), converter=_to_decimal, validator=_nonneg)

    @property
    def unlimited(self) -> bool:
        return self.max_dollars == 0


class _ToolCall:
    """One running tool call: settled exactly once, by its worker or by a cancel."""

    __slots__ = ("tool_use", "tool", "info", "lock", "settled", "result", "skip", "error", "start_time")

    def __init__(self, tool_use: ToolUse, tool: Tool | None, info: ToolCallInfo) -> None:
        self.tool_use = tool_use
        self.tool = tool
        self.info = info
        self.lock = threading.Lock()
        self.settled = threading.Event()
        self.result: ToolResult | None = None
        self.skip = False
        self.error: BaseException | None = None
        self.start_time = _now()

    def settle(self, result: ToolResult | None, *, skip: bool = False, error: BaseException | None = None) -> bool:
        with self.lock:
            if self.settled.is_set():
                return False
            self.result, self.skip, self.error = result, skip, error
            self.settled.set()
            return True


@attrs.define(eq=False, repr=False)
class Convo:
    """A managed conversation with a model.

    Args:
        service: the model provider; None picks one with
            :func:`convo.default_service` (an API key in the environment,
            else the embedded local model).
        system_prompt: instructions sent with every request.
        tools: the :class:`~convo.Tool` objects the model may call.
        budget: dollars this conversation and its sub-convos may spend.
        listener: sees every request, response and tool event, at every depth.
        prompt_caching: mark the system prompt and the newest message for
            provider-side prompt caching.
        tool_use_only: force the model to call a tool every turn (not with
            ``thinking``: the Messages API refuses forced tool use then).
        hidden: a flag for user interfaces (e.g. hide sub-agent chatter).
        extra_data: anything you want to keep with the conversation.
        max_tool_workers: cap on tools run at once (default: all of a turn's).
        id: a stable id (default: a random one).
        max_tokens: the reply length cap (default: the service's).
        temperature: sampling temperature (default: the service's).
        thinking: extended thinking for every request, e.g.
            ``ThinkingConfig(budget_tokens=2048)``.
        prices: the :class:`~convo.PriceTable` to price replies with.
        max_tool_result_chars: longer tool results become error results.

    Thread-safe: see the module docstring for exactly how.
    """

    service: Service | None = None
    system_prompt: str = field(default="", kw_only=True)
    tools: tuple = field(default=(), kw_only=True, converter=tuple)
    budget: Budget = field(factory=Budget, kw_only=True)
    listener: Any = field(default=None, kw_only=True)
    prompt_caching: bool = field(default=True, kw_only=True)
    tool_use_only: bool = field(default=False, kw_only=True)
    hidden: bool = field(default=False, kw_only=True)
    extra_data: Any = field(default=None, kw_only=True)
    max_tool_workers: int | None = field(default=None, kw_only=True)
    id: str = field(factory=_new_id, kw_only=True)
    max_tokens: int | None = field(default=None, kw_only=True)
    temperature: float | None = field(default=None, kw_only=True)
    thinking: ThinkingConfig | None = field(default=None, kw_only=True)
    prices: PriceTable = field(default=PRICES, kw_only=True)
    max_tool_result_chars: int = field(default=DEFAULT_MAX_TOOL_RESULT_CHARS, kw_only=True)
    parent: "Convo | None" = field(default=None, kw_only=True)

    _lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_owner: int | None = field(init=False, default=None)
    _messages: list = field(init=False, factory=list)
    _usage: CumulativeUsage = field(init=False, factory=CumulativeUsage)
    _budget_start: Decimal = field(init=False, default=Decimal(0))
    _last_usage: Usage = field(init=False, factory=Usage)
    _tokens: set = field(init=False, factory=set)
    _running: dict = field(init=False, factory=dict)
    _pending_results: list = field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.service is None:
            from .detect import default_service

            self.service = default_service()
        for name in ("do", "stream"):
            if not callable(getattr(self.service, name, None)):
                raise ConfigurationError(
                    f"service must implement the convo.Service protocol; {type(self.service).__name__} has no {name}()"
                )
        self._check_tools(self.tools)
        if not isinstance(self.budget, Budget):
            raise ConfigurationError(f"budget must be a convo.Budget, got {type(self.budget).__name__}")
        if self.max_tool_workers is not None and self.max_tool_workers < 1:
            raise ConfigurationError("max_tool_workers must be at least 1")
        if self.thinking is not None and self.tool_use_only:
            raise ConfigurationError(
                "tool_use_only forces a tool call, which the Messages API refuses while extended thinking is on; "
                "drop one of thinking= and tool_use_only=True"
            )

    @staticmethod
    def _check_tools(tools: Iterable[Any]) -> None:
        seen: set[str] = set()
        for t in tools:
            if not isinstance(t, Tool):
                raise ToolDefinitionError(
                    f"tools must be convo.Tool objects (use @convo.tool on a function), got {type(t).__name__}"
                )
            if t.name in seen:
                raise ToolDefinitionError(f"two tools are named {t.name!r}")
            seen.add(t.name)

    def __repr__(self) -> str:
        return (f"<Convo id={self.id} depth={self.depth()} messages={len(self._messages)} "
                f"service={type(self.service).__name__}>")

    # --- tree ----------------------------------------------------------------

    def depth(self) -> int:
        """0 for a root conversation, 1 for its sub-convos, and so on."""
        d, node = 0, self.parent
        while node is not None:
            d, node = d + 1, node.parent
        return d

    def _ancestry(self) -> list["Convo"]:
        node, chain = self, []
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    def sub_convo(self, *, system_prompt: str = "", tools: Iterable[Tool] = (), budget: Budget | None = None,
                  id: str | None = None, hidden: bool | None = None, **overrides: Any) -> "Convo":
        """A new, empty conversation below this one.

        It shares the service, listener, prompt caching, prices and sampling
        settings; what it spends rolls up into this convo and every ancestor,
        whose budgets cover it.
        """
        return Convo(
            self.service,
            system_prompt=system_prompt,
            tools=tools,
            budget=budget or Budget(),
            listener=self.listener,
            prompt_caching=self.prompt_caching,
            hidden=self.hidden if hidden is None else hidden,
            max_tool_workers=self.max_tool_workers,
            id=id or _new_id(),
            max_tokens=overrides.pop("max_tokens", self.max_tokens),
            temperature=overrides.pop("temperature", self.temperature),
            thinking=overrides.pop("thinking", self.thinking),
            prices=self.prices,
            max_tool_result_chars=self.max_tool_result_chars,
            parent=self,
            **overrides,
        )

    def sub_convo_with_history(self, **overrides: Any) -> "Convo":
        """A conversation below this one that starts from a copy of its history.

        It keeps this convo's system prompt and tools (override either), so
        it can carry on exactly where this one stands, tool calls included.
        """
        overrides.setdefault("system_prompt", self.system_prompt)
        overrides.setdefault("tools", self.tools)
        overrides.setdefault("tool_use_only", self.tool_use_only)
        sub = self.sub_convo(**overrides)
        with self._lock:
            sub._messages = list(self._messages)
            sub._pending_results = list(self._pending_results)
        return sub

    # --- usage and budget ----------------------------------------------------

    def cumulative_usage(self) -> CumulativeUsage:
        """A copy of the totals of this convo and everything below it."""
        with self._lock:
            return self._usage.copy()

    def last_usage(self) -> Usage:
        """The usage of this convo's most recent reply."""
        with self._lock:
            return self._last_usage

    def over_budget(self) -> BudgetExceeded | None:
        """The first spent budget found walking up from this convo, or None."""
        for node in self._ancestry():
            with node._lock:
                limit = node.budget.max_dollars
                spent = node._usage.total_cost_usd - node._budget_start
            if limit > 0 and spent >= limit:
                return BudgetExceeded(node.id, spent, limit)
        return None

    def reset_budget(self, budget: Budget) -> None:
        """Replace the budget; spending counts from now."""
        if not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be a convo.Budget, got {type(budget).__name__}")
        with self._lock:
            self.budget = budget
            self._budget_start = self._usage.total_cost_usd

    def _price(self, response: Response) -> Response:
        if response.usage.cost_usd is not None:
            return response
        cost = self.prices.cost(response.model, response.usage)
        if cost is None:
            with _unpriced_lock:
                first = response.model not in _unpriced_logged
                _unpriced_logged.add(response.model)
            if first:
                log.warning("unpriced_model", model=response.model,
                            hint="add it with convo.PRICES.set(model, convo.Price(...)); "
                                 "its replies count in unpriced_responses")
            return response
        return attrs.evolve(response, usage=attrs.evolve(response.usage, cost_usd=cost))

    def _record_usage(self, usage: Usage) -> None:
        with self._lock:
            self._last_usage = usage
        for node in self._ancestry():
            with node._lock:
                node._usage.add(usage)

    def _record_tool_use(self, name: str) -> None:
        for node in self._ancestry():
            with node._lock:
                node._usage.count_tool(name)

    # --- history -------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """A copy of the history."""
        with self._lock:
            return list(self._messages)

    def _build_request(self, messages: list[Message], *, tool_choice: ToolChoice | None = None) -> Request:
        system: tuple = ()
        if self.system_prompt:
            system = (Text(self.system_prompt, cache=self.prompt_caching),)
        if self.prompt_caching and messages:
            # Mark a copy: the caller's message and the history stay unmarked.
            last = messages[-1]
            if last.content and hasattr(last.content[-1], "cache"):
                marked = attrs.evolve(last.content[-1], cache=True)
                messages = messages[:-1] + [Message(last.role, last.content[:-1] + (marked,))]
        if tool_choice is None and self.tools:
            tool_choice = ToolChoice.any() if self.tool_use_only else ToolChoice.auto()
        return Request(
            messages=messages,
            system=system,
            tools=[t.spec() for t in self.tools],
            tool_choice=tool_choice if self.tools else None,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            thinking=self.thinking,
        )

    def _complete_tool_results(self, history: list[Message], message: Message) -> Message:
        """Answer every tool call of the last reply, so the API accepts the history.

        Results saved by ``run()`` when a tool ended the turn go first; any
        call still unanswered gets an error result, as the Go original does.
        """
        if not history or history[-1].role != Role.ASSISTANT:
            return message
        wanted = [tu.id for tu in history[-1].tool_uses()]
        if not wanted:
            return message
        have = {r.tool_use_id for r in message.tool_results()}
        extra: list[ToolResult] = []
        with self._lock:
            pending, self._pending_results = self._pending_results, []
        for r in pending:
            if r.tool_use_id in wanted and r.tool_use_id not in have:
                extra.append(r)
                have.add(r.tool_use_id)
        for tid in wanted:
            if tid not in have:
                extra.append(ToolResult(tid, "not executed; the conversation moved on before this tool ran",
                                        is_error=True))
        if not extra:
            return message
        return Message(message.role, tuple(extra) + message.content)

    # --- sending ---------------------------------------------------------------

    def _begin_turn(self) -> None:
        me = threading.get_ident()
        if self._turn_owner == me:
            raise ConvoError(
                f"convo {self.id}: a send was started from inside its own send (a listener or "
                "service calling back into the same convo); use a sub_convo() instead"
            )
        self._turn_lock.acquire()
        self._turn_owner = me

    def _end_turn(self) -> None:
        self._turn_owner = None
        self._turn_lock.release()

    def _prepare(self, message: Message) -> tuple[Message, Request]:
        if not isinstance(message, Message):
            raise TypeError(f"send_message takes a convo.Message, got {type(message).__name__}")
        if message.role != Role.USER:
            raise ValueError(f"send_message sends user messages; got role {message.role!s}")
        over = self.over_budget()
        if over is not None:
            raise over
        with self._lock:
            history = list(self._messages)
        message = self._complete_tool_results(history, message)
        if not message.content:
            raise ValueError("cannot send an empty message: give text or content blocks")
        return message, self._build_request(history + [message])

    def _commit(self, message: Message, response: Response) -> Response:
        response = self._price(response)
        with self._lock:
            self._messages.append(message)
            self._messages.append(response.to_message())
        self._record_usage(response.usage)
        _listeners.notify(self.listener, "on_response", self, response)
        return response

    def _register_token(self) -> CancelToken:
        token = CancelToken()
        with self._lock:
            self._tokens.add(token)
        return token

    def _unregister_token(self, token: CancelToken) -> None:
        with self._lock:
            self._tokens.discard(token)

    def send_message(self, message: Message) -> Response:
        """Send a user message and return the model's reply.

        On success the message and the reply join the history; on any error
        neither does. Unanswered tool calls of the previous reply get error
        results first (see :meth:`run` for results held back by a tool that
        ended the turn).

        Raises:
            BudgetExceeded: this convo or an ancestor has spent its budget;
                nothing was sent.
            ProviderError: the service failed (after its retries).
            Cancelled: :meth:`cancel` stopped the request.
        """
        self._begin_turn()
        try:
            message, request = self._prepare(message)
            token = self._register_token()
            _listeners.notify(self.listener, "on_request", self, request)
            try:
                with cancel_scope(token):
                    response = self.service.do(request)
                if token.cancelled:
                    raise Cancelled(token.reason or "cancelled")
                if not isinstance(response, Response):
                    raise TypeError(f"{type(self.service).__name__}.do() returned {type(response).__name__}, "
                                    "not a convo.Response")
            except BaseException as exc:
                _listeners.notify(self.listener, "on_error", self, request, exc)
                raise
            finally:
                self._unregister_token(token)
            return self._commit(message, response)
        finally:
            self._end_turn()

    def send_user_text_message(self, text: str, *other_contents: Any) -> Response:
        """Send ``text`` as a user message; ``other_contents`` (often tool results) go first."""
        return self.send_message(Message.user(text, *other_contents))

    def stream_message(self, message: Message) -> Iterator[StreamEvent]:
        """Like :meth:`send_message`, yielding stream events as they arrive.

        The last event is :class:`~convo.StreamDone` with the priced reply.
        The history changes only when the stream completes; a stream that
        fails, is cancelled or is abandoned part-way leaves it untouched.
        """
        self._begin_turn()
        try:
            message, request = self._prepare(message)
            token = self._register_token()
            _listeners.notify(self.listener, "on_request", self, request)
            final: Response | None = None
            # The service's generator runs in a context of its own, so the
            # cancel scope (a contextvar) never leaks into the caller's code
            # between events.
            ctx = contextvars.copy_context()
            ctx.run(_cancel._current.set, token)
            events = None
            try:
                events = iter(ctx.run(self.service.stream, request))
                while True:
                    try:
                        event = ctx.run(next, events)
                    except StopIteration:
                        break
                    if token.cancelled:
                        raise Cancelled(token.reason or "cancelled")
                    if isinstance(event, StreamDone):
                        final = event.response
                        break
                    yield event
                if final is None:
                    raise ConvoError(f"{type(self.service).__name__}.stream() ended without a StreamDone event")
            except GeneratorExit:
                raise
            except BaseException as exc:
                _listeners.notify(self.listener, "on_error", self, request, exc)
                raise
            finally:
                self._unregister_token(token)
                close = getattr(events, "close", None)
                if close is not None:
                    ctx.run(close)
            final = self._commit(message, final)
        finally:
            self._end_turn()
        yield StreamDone(final)

    def stream_user_text_message(self, text: str, *other_contents: Any) -> Iterator[StreamEvent]:
        """Stream the reply to ``text``; ``other_contents`` (often tool results) go first."""
        return self.stream_message(Message.user(text, *other_contents))

    # --- tools -----------------------------------------------------------------

    def tool_result_contents(self, response: Response) -> tuple[list[ToolResult], bool]:
        """Run every tool call in ``response`` concurrently and return their results.

        Results come back in the order the model asked for them, whatever
        order they finish in. An unknown tool, input that fails the tool's
        schema, a tool that raises or returns something unsendable: each
        gives an error result the model can read. A tool that raises
        :class:`~convo.DoNotRespond` gives no result. When the reply stopped
        at ``max_tokens``, its last call's input may be cut short, so that
        call does not run and gets an error result saying so. A call cancelled with
        :meth:`cancel_tool_use` or :meth:`cancel` returns an error result at
        once; its thread is left to finish and its late result is dropped.

        Returns:
            ``(results, ends_turn)``: ``ends_turn`` is true when any tool
            called is marked ``ends_turn``.
        """
        tool_uses = response.tool_uses()
        if not tool_uses:
            return [], False
        by_name = {t.name: t for t in self.tools}
        calls = [_ToolCall(tu, by_name.get(tu.name), ToolCallInfo(tu.id, self)) for tu in tool_uses]
        if response.stop_reason == StopReason.MAX_TOKENS:
            # The reply was cut off while the model wrote its last call: that
            # input is partial (providers keep it as {}), and running a tool on
            # a truncated argument list is never safe.
            cut = calls[-1]
            cut.settle(ToolResult(cut.tool_use.id,
                                  f"your call to {cut.tool_use.name!r} was cut off by the max_tokens limit before "
                                  "its input was complete, so it did not run; call it again with shorter input",
                                  is_error=True, start_time=cut.start_time, end_time=cut.start_time))
        with self._lock:
            for call in calls:
                self._running[call.tool_use.id] = call
        try:
            for call in calls:
                self._record_tool_use(call.tool_use.name)
                _listeners.notify(self.listener, "on_tool_call", self, call.tool_use)
                if call.settled.is_set():  # decided without running (cut off): the audit trail still sees it
                    _listeners.notify(self.listener, "on_tool_result", self, call.tool_use, call.result, None)
            limit = threading.BoundedSemaphore(self.max_tool_workers or len(calls))
            for call in calls:
                if call.settled.is_set():
                    continue
                ctx = contextvars.copy_context()
                TOOL_WORKERS.submit(partial(ctx.run, self._run_tool, call, limit))
            results: list[ToolResult] = []
            for call in calls:
                call.settled.wait()
                if not call.skip and call.result is not None:
                    results.append(call.result)
        finally:
            with self._lock:
                for call in calls:
                    self._running.pop(call.tool_use.id, None)
        ends_turn = any(c.tool is not None and c.tool.ends_turn for c in calls)
        return results, ends_turn

    def _run_tool(self, call: _ToolCall, limit: threading.BoundedSemaphore) -> None:
        tu = call.tool_use
        with limit:
            if call.settled.is_set():  # cancelled while waiting for a worker slot
                return
            _current_call.set(call.info)
            call.start_time = _now()
            error: BaseException | None = None
            skip = False
            content: tuple = ()
            is_error = False
            display = None
            if call.tool is None:
                names = ", ".join(sorted(t.name for t in self.tools)) or "none"
                content, is_error = (Text(f"unknown tool {tu.name!r}; available tools: {names}"),), True
            else:
                problems = call.tool.validation_errors(tu.input)
                if problems:
                    content = (Text(f"invalid input for tool {tu.name!r}: " + "; ".join(problems)),)
                    is_error = True
                else:
                    try:
                        out = call.tool.run(tu.input)
                        if isinstance(out, ToolOut):
                            display, is_error, out = out.display, out.error, out.content
                        content = to_content(out)
                        size = sum(len(b.text) for b in content if isinstance(b, Text))
                        if size > self.max_tool_result_chars:
                            content = (Text(f"tool {tu.name!r} returned {size} characters, more than the "
                                            f"limit of {self.max_tool_result_chars}; ask for less"),)
                            is_error = True
                    except DoNotRespond:
                        skip = True
                    except Exception as exc:
                        error = exc
                        content, is_error = (Text(f"tool {tu.name!r} failed: {type(exc).__name__}: {exc}"),), True
                        log.warning("tool_failed", convo_id=self.id, tool=tu.name, tool_use_id=tu.id,
                                    error=f"{type(exc).__name__}: {exc}", exc_info=True)
            result = None if skip else ToolResult(tu.id, content, is_error=is_error, start_time=call.start_time,
                                                  end_time=_now(), display=display)
        if call.settle(result, skip=skip, error=error):
            if not skip:
                _listeners.notify(self.listener, "on_tool_result", self, tu, result, error)
        else:
            log.info("tool_result_discarded", convo_id=self.id, tool=tu.name, tool_use_id=tu.id,
                     reason="cancelled")

    def tool_result_cancel_contents(self, response: Response) -> list[ToolResult]:
        """Error results for every tool call in ``response``, without running any.

        For when the user interrupts before the tools run: the model learns
        its calls were cancelled, and the history stays valid.
        """
        now = _now()
        return [ToolResult(tu.id, "tool call cancelled by the user", is_error=True, start_time=now, end_time=now)
                for tu in response.tool_uses()]

    def cancel_tool_use(self, tool_use_id: str, reason: str | None = None) -> None:
        """Cancel one running tool call of this convo; its result becomes an error at once.

        Raises:
            UnknownToolUseError: no running call of this convo has that id.
        """
        with self._lock:
            call = self._running.get(tool_use_id)
        if call is None:
            raise UnknownToolUseError(tool_use_id)
        self._cancel_call(call, reason)

    def _cancel_call(self, call: _ToolCall, reason: str | None) -> None:
        call.info.cancelled.set()
        text = f"tool call cancelled: {reason}" if reason else "tool call cancelled"
        result = ToolResult(call.tool_use.id, text, is_error=True, start_time=call.start_time, end_time=_now())
        if call.settle(result, error=Cancelled(text)):
            _listeners.notify(self.listener, "on_tool_result", self, call.tool_use, result, call.error)

    def cancel(self, reason: str | None = None) -> None:
        """Abort this convo's in-flight request and cancel its running tool calls.

        The blocked send raises :class:`~convo.Cancelled`; running tools get
        error results at once (their threads see ``cancelled`` set). The
        convo stays usable: the next send works as usual. Sub-convos are not
        cancelled; cancel them yourself.
        """
        with self._lock:
            tokens = list(self._tokens)
            calls = list(self._running.values())
        for token in tokens:
            token.cancel(reason)
        for call in calls:
            self._cancel_call(call, reason)

    # --- the agent loop --------------------------------------------------------

    def run(self, text: str, *other_contents: Any, max_turns: int = 25,
            on_event: Callable[[StreamEvent], None] | None = None) -> Response:
        """Run the whole agent loop: send ``text``, run tools, send results, until done.

        Stops when the model ends its turn, when a tool marked ``ends_turn``
        ran (its results are kept and sent first with your next message), or
        when every tool call asked for no response. With ``on_event``, replies
        are streamed and each event is passed to it.

        Raises:
            MaxTurnsExceeded: the model was still calling tools after
                ``max_turns`` replies.
        """
        if max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        message = Message.user(text, *other_contents)
        turns = 0
        while True:
            response = self._send_for_run(message, on_event)
            turns += 1
            if not response.tool_uses():
                return response
            results, ends_turn = self.tool_result_contents(response)
            if ends_turn:
                with self._lock:
                    self._pending_results = list(results)
                return response
            if not results:
                return response
            if turns >= max_turns:
                with self._lock:
                    self._pending_results = list(results)
                raise MaxTurnsExceeded(max_turns, response)
            message = Message.user("", *results)

    def _send_for_run(self, message: Message, on_event) -> Response:
        if on_event is None:
            return self.send_message(message)
        final = None
        for event in self.stream_message(message):
            if isinstance(event, StreamDone):
                final = event.response
            on_event(event)
        return final

    # --- serialisation ----------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything about the conversation as plain JSON values (no secrets)."""
        with self._lock:
            messages = list(self._messages)
            usage = self._usage.copy()
            last = self._last_usage
        return {
            "id": self.id,
            "parent_id": self.parent.id if self.parent is not None else None,
            "depth": self.depth(),
            "service": type(self.service).__name__,
            "model": getattr(self.service, "model", None),
            "system_prompt": self.system_prompt,
            "tools": [t.spec().to_dict() for t in self.tools],
            "budget": {"max_dollars": str(self.budget.max_dollars)},
            "prompt_caching": self.prompt_caching,
            "tool_use_only": self.tool_use_only,
            "hidden": self.hidden,
            "extra_data": self.extra_data,
            "messages": [m.to_dict() for m in messages],
            "cumulative_usage": usage.to_dict(),
            "last_usage": last.to_dict(),
        }

    def debug_json(self) -> str:
        """The conversation as indented JSON, enums as readable strings; see :meth:`from_debug_json`."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    @classmethod
    def from_debug_json(cls, text: str, service: Service | None = None, *, tools: Iterable[Tool] = (),
                        **kwargs: Any) -> "Convo":
        """Rebuild a conversation (history, usage, settings) from :meth:`debug_json`.

        Tools are code, not data: pass them again (their names are checked
        against the saved ones).
        """
        d = json.loads(text)
        tools = tuple(tools)
        saved = [t["name"] for t in d.get("tools", [])]
        if tools and sorted(t.name for t in tools) != sorted(saved):
            raise ConfigurationError(f"tools {sorted(t.name for t in tools)} do not match the saved {sorted(saved)}")
        c = cls(service, system_prompt=d.get("system_prompt", ""), tools=tools,
                budget=Budget(Decimal(d.get("budget", {}).get("max_dollars", "0"))),
                prompt_caching=d.get("prompt_caching", True), tool_use_only=d.get("tool_use_only", False),
                hidden=d.get("hidden", False), extra_data=d.get("extra_data"), id=d["id"], **kwargs)
        c._messages = [Message.from_dict(m) for m in d.get("messages", [])]
        c._usage = CumulativeUsage.from_dict(d["cumulative_usage"]) if d.get("cumulative_usage") else CumulativeUsage()
        c._last_usage = Usage.from_dict(d.get("last_usage") or {})
        return c
