"""The conversation engine: :class:`Convo`, a managed conversation with a model.

A Convo holds the history, the tools, a budget and a listener. It sends
messages through a :class:`~convo.Service`, runs the tools the model asks
for concurrently on worker threads (:mod:`convo._tool_runner`), and rolls
every token and dollar its sub-conversations spend up into its own totals.

Thread safety, in one place:

- Every public method may be called from any thread.
- A *turn* is one send, one open stream, or one whole :meth:`Convo.run`
  (every request and tool round of it). Turns on one Convo are serialised:
  a send from another thread waits until the turn in progress ends, so the
  history stays a proper alternation and a tool call is never separated
  from its results. A send that could never proceed (from a listener on the
  turn's own thread, from code reading an open stream on that thread, or
  from a tool on the convo that called it) raises
  :class:`~convo.ConversationBusy` instead of deadlocking.
- Different Convos, a parent and its sub-convos included, run fully in
  parallel. Usage and budgets of one tree sit behind one short lock; no lock
  is held while calling the service, a tool or a listener.
- :meth:`Convo.cancel` and :meth:`Convo.cancel_tool_use` are meant to be
  called from another thread than the one blocked in a turn.
"""

from __future__ import annotations

import json
import threading
import weakref
from decimal import Decimal
from typing import Any, Callable, Iterable

import attrs
from attrs import field

from . import listeners as _listeners
from ._cancel import CancelToken, cancel_scope
from ._log import log
from ._time import now
from ._tool_runner import ToolCall, ToolRound, run_tool_calls
from .budget import DEFAULT_RESERVED_OUTPUT_TOKENS, Budget, estimate_input_tokens, preamble_tokens
from .errors import (
    ArgumentTypeError,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConversationBusy,
    ConversationClosed,
    MaxTurnsExceeded,
    ToolDefinitionError,
    UnknownToolUseError,
    UnpricedModel,
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
from .pricing import PRICES, Price, PriceTable
from .service import Service, StreamEvent
from .streaming import Stream
from .tools import Tool, _current_call
from .usage import CumulativeUsage, Usage

__all__ = ["Budget", "Convo", "DEFAULT_MAX_TURNS"]

#: Tool results longer than this many characters are replaced by an error
#: result: a runaway tool must not blow the context window (and the budget).
DEFAULT_MAX_TOOL_RESULT_CHARS = 200_000

#: How many model replies one :meth:`Convo.run` may take by default.
DEFAULT_MAX_TURNS = 25

#: Version of the :meth:`Convo.to_dict` layout.
STATE_FORMAT = 1

_unpriced_lock = threading.Lock()
_unpriced_logged: set[str] = set()


def _new_id() -> str:
    import secrets

    return secrets.token_hex(6)


def _not_executed(tool_use: ToolUse) -> ToolResult:
    at = now()
    return ToolResult(tool_use.id, f"not executed: the conversation moved on before {tool_use.name!r} ran",
                      is_error=True, start_time=at, end_time=at)


def _check_max_turns(max_turns: Any) -> int | None:
    if max_turns is None:
        return None
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ConfigurationError(f"max_turns must be a positive int or None (no limit), got {max_turns!r}")
    return max_turns


def _to_budget(value: Any) -> Budget:
    if value is None:
        return Budget()
    if isinstance(value, Budget):
        return value
    return Budget(value)


@attrs.define(on_setattr=attrs.setters.NO_OP)
class _Send:
    """One request in progress: what was sent, and the dollars held for it."""

    message: Message | None  # None for the continuation of a paused turn
    request: Request
    token: CancelToken
    reserved: Decimal | None


class _Tree:
    """What a root convo and all its sub-convos share: the lock over their usage and budgets."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()


# Assignments after __init__ run no converters or validators (on_setattr=NO_OP): state
# changes on every turn, and setters that check their values do so themselves.
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class Convo:
    """A managed conversation with a model.

    Args:
        service: the model provider; None picks one with
            :func:`convo.default_service` (``model=`` if given, else an API key
            in the environment, else the embedded local model).
        model: a model name for :func:`convo.default_service` to pick the
            service by (``"claude-sonnet-4-5"``, ``"gpt-4.1-mini"``,
            ``"local"``); give ``service`` or ``model``, not both.
        system_prompt: instructions sent with every request.
        tools: the :class:`~convo.Tool` objects the model may call.
        tool_choice: how the model may use tools: ``"auto"`` (default),
            ``"any"`` (must call one), ``"none"``, a :class:`~convo.Tool` or
            ``ToolChoice.tool(name)`` for one named tool.
        budget: dollars this conversation and its sub-convos may spend: a
            :class:`~convo.Budget`, a number, or None for no limit.
        listener: sees every request, response and tool event, at every depth.
        prompt_caching: mark the system prompt and the newest message for
            provider-side prompt caching.
        tool_use_only: force the model to call a tool every turn (as
            ``tool_choice="any"``; not with ``thinking``).
        hidden: a flag for user interfaces (e.g. hide sub-agent chatter).
        extra_data: anything you want to keep with the conversation (JSON
            values, to survive :meth:`debug_json`).
        max_tool_workers: how many threads run one reply's tools at once
            (default: one per call).
        id: a stable id (default: a random one).
        max_tokens: the reply length cap (default: the service's).
        temperature: sampling temperature (default: the service's).
        thinking: extended thinking for every request, e.g.
            ``ThinkingConfig(budget_tokens=2048)``.
        prices: the :class:`~convo.PriceTable` to price replies with.
        max_tool_result_chars: longer tool results become error results.
        mcp_servers: :class:`convo.MCPServer` objects (or any object with
            ``name``, ``tools()`` and ``close()``) whose tools join this
            convo's, listed afresh for every request; sub-convos inherit
            them, and :meth:`close` stops them.
        parent: set by :meth:`sub_convo`.

    Raises:
        ConfigurationError: an argument that cannot work (each is checked here).

    Thread-safe: see the module docstring for exactly how.
    """

    service: Service | None = None
    _model_arg: str | None = field(default=None, kw_only=True, alias="model")
    system_prompt: str = field(default="", kw_only=True)
    tools: tuple = field(default=(), kw_only=True)
    tool_choice: Any = field(default=None, kw_only=True)
    budget: Budget = field(factory=Budget, kw_only=True, converter=_to_budget)
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
    mcp_servers: tuple = field(default=(), kw_only=True, converter=tuple)
    parent: "Convo | None" = field(default=None, kw_only=True)

    _lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_owner: int | None = field(init=False, default=None)
    _tree: _Tree = field(init=False, default=None)
    _chain: tuple = field(init=False, default=())
    _messages: list = field(init=False, factory=list)
    _usage: CumulativeUsage = field(init=False, factory=CumulativeUsage)
    _budget_start: Decimal = field(init=False, default=Decimal(0))
    _reserved: Decimal = field(init=False, default=Decimal(0))
    _last_usage: Usage = field(init=False, factory=Usage)
    _active: set = field(init=False, factory=set)
    _running: dict = field(init=False, factory=dict)
    _answers: dict = field(init=False, factory=dict)
    _notified: set = field(init=False, factory=set)
    _paused: bool = field(init=False, default=False)
    _counted: tuple | None = field(init=False, default=None)
    _children: weakref.WeakSet | None = field(init=False, default=None)  # made by the first sub_convo()
    _inherited: CancelToken | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)
    _owns_servers: bool = field(init=False, default=True)

    def __attrs_post_init__(self) -> None:
        if self.service is None:
            from .providers.detect import default_service

            if self._model_arg is not None and not isinstance(self._model_arg, str):
                raise ArgumentTypeError(f"model must be a str, got {type(self._model_arg).__name__}")
            self.service = default_service(self._model_arg)
        elif self._model_arg is not None:
            raise ConfigurationError("give service= or model=, not both (a service already names its model)")
        for name in ("do", "stream"):
            if not callable(getattr(self.service, name, None)):
                raise ConfigurationError(
                    f"service must implement the convo.Service protocol; {type(self.service).__name__} has no {name}()"
                )
        self.tools = self._checked_tools(self.tools)
        for server in self.mcp_servers:
            if not (callable(getattr(server, "tools", None)) and callable(getattr(server, "close", None))):
                raise ArgumentTypeError(f"mcp_servers must be convo.MCPServer objects, got {type(server).__name__}")
        self.tool_choice = self._checked_tool_choice(self.tool_choice)
        self._check_settings()
        if self.parent is not None:
            if not isinstance(self.parent, Convo):
                raise ArgumentTypeError(f"parent must be a Convo, got {type(self.parent).__name__}")
            self._tree = self.parent._tree
            self._chain = (self,) + self.parent._chain
        else:
            self._tree = _Tree()
            self._chain = (self,)

    def _check_settings(self) -> None:
        def positive_int(name: str, value: Any, optional: bool = True) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int{' or None' if optional else ''}, "
                                         f"got {value!r}")

        if not isinstance(self.system_prompt, str):
            raise ArgumentTypeError(f"system_prompt must be a str, got {type(self.system_prompt).__name__}")
        if not isinstance(self.id, str) or not self.id:
            raise ConfigurationError(f"id must be a non-empty str, got {self.id!r}")
        positive_int("max_tool_workers", self.max_tool_workers)
        positive_int("max_tokens", self.max_tokens)
        positive_int("max_tool_result_chars", self.max_tool_result_chars, optional=False)
        if self.temperature is not None and (isinstance(self.temperature, bool)
                                             or not isinstance(self.temperature, (int, float))):
            raise ConfigurationError(f"temperature must be a number or None, got {self.temperature!r}")
        if self.thinking is not None and not isinstance(self.thinking, ThinkingConfig):
            raise ArgumentTypeError(f"thinking must be a convo.ThinkingConfig, got {type(self.thinking).__name__}")
        if not isinstance(self.prices, PriceTable):
            raise ArgumentTypeError(f"prices must be a convo.PriceTable, got {type(self.prices).__name__}")
        if self.thinking is not None and self.tool_use_only:
            raise ConfigurationError(
                "tool_use_only forces a tool call, which the Messages API refuses while extended thinking is on; "
                "drop one of thinking= and tool_use_only=True"
            )

    @staticmethod
    def _checked_tools(tools: Any) -> tuple:
        if isinstance(tools, (Tool, str)) or not isinstance(tools, Iterable):
            raise ToolDefinitionError("tools must be a list of convo.Tool objects")
        tools = tuple(tools)
        seen: set[str] = set()
        for t in tools:
            if not isinstance(t, Tool):
                raise ToolDefinitionError(
                    f"tools must be convo.Tool objects (use @convo.tool on a function), got {type(t).__name__}"
                )
            if t.name in seen:
                raise ToolDefinitionError(f"two tools are named {t.name!r}")
            seen.add(t.name)
        return tools

    def _checked_tool_choice(self, choice: Any) -> ToolChoice | None:
        if choice is None or isinstance(choice, ToolChoice):
            pass
        elif isinstance(choice, Tool):
            choice = ToolChoice.tool(choice.name)
        elif isinstance(choice, str):
            if choice not in ("auto", "any", "none"):
                raise ConfigurationError(f"tool_choice must be 'auto', 'any', 'none', a Tool or a ToolChoice; "
                                         f"got {choice!r} (name one tool with ToolChoice.tool({choice!r}))")
            choice = ToolChoice(choice)
        else:
            raise ArgumentTypeError(f"tool_choice must be 'auto', 'any', 'none', a Tool or a ToolChoice, "
                                    f"got {type(choice).__name__}")
        if choice is not None and choice.name is not None and choice.name not in {t.name for t in
                                                                                  self.available_tools()}:
            raise ConfigurationError(f"tool_choice names the tool {choice.name!r}, which this convo does not have")
        return choice

    def __repr__(self) -> str:
        return (f"<Convo id={self.id} depth={self.depth()} messages={len(self._messages)} "
                f"service={type(self.service).__name__}>")

    def available_tools(self) -> tuple:
        """The tools the model may call now: ``tools`` and those of every MCP server.

        MCP servers are asked each time (they start on first use, and their
        tool lists may change between turns).
        """
        if not self.mcp_servers:
            return self.tools
        tools = list(self.tools)
        for server in self.mcp_servers:
            tools.extend(server.tools())
        return tuple(tools)

    @property
    def model(self) -> str | None:
        """The model the service sends requests to (None if the service does not say)."""
        return getattr(self.service, "model", None)

    # --- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Close the conversation: it refuses every send from now on, and stops its MCP servers. Idempotent.

        A turn already in progress finishes. The history, usage and settings
        stay readable. MCP servers a sub-convo inherited are stopped by the
        convo they were given to, not by the sub-convo.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_servers:
            for server in self.mcp_servers:
                try:
                    server.close()
                except Exception as exc:  # one server failing to stop must not keep the others running
                    log.warning("mcp_server_close_failed", convo_id=self.id, server=getattr(server, "name", "?"),
                                error=f"{type(exc).__name__}: {exc}")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Convo":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- tree --------------------------------------------------------------------

    def depth(self) -> int:
        """0 for a root conversation, 1 for its sub-convos, and so on."""
        return len(self._chain) - 1

    def root(self) -> "Convo":
        """The conversation at the top of this one's tree."""
        return self._chain[-1]

    def _ancestry(self) -> tuple:
        return self._chain

    def sub_convo(self, *, service: Service | None = None, model: str | None = None, system_prompt: str = "",
                  tools: Iterable[Tool] = (), budget: Budget | None = None, id: str | None = None,
                  hidden: bool | None = None, **overrides: Any) -> "Convo":
        """A new, empty conversation below this one.

        It shares this convo's service (or uses ``service=``, or the one
        :func:`convo.default_service` picks for ``model=``, so workers can run
        on a cheaper model), listener, prompt caching, prices and sampling
        settings; ``overrides`` replace any other setting. What it spends
        rolls up into this convo and every ancestor, whose budgets cover it.

        Created inside a running tool call, it inherits that call's cancel
        signal: cancelling the call (or this convo) cancels it too.
        """
        if service is not None and model is not None:
            raise ConfigurationError("give service= or model=, not both")
        if model is not None:
            from .providers.detect import default_service

            service = default_service(model)
        settings = dict(
            system_prompt=system_prompt,
            tools=tools,
            budget=budget,
            listener=self.listener,
            prompt_caching=self.prompt_caching,
            hidden=self.hidden if hidden is None else hidden,
            max_tool_workers=self.max_tool_workers,
            id=id or _new_id(),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            thinking=self.thinking,
            prices=self.prices,
            max_tool_result_chars=self.max_tool_result_chars,
            mcp_servers=self.mcp_servers,
        )
        unknown = set(overrides) - {f.alias for f in attrs.fields(Convo) if f.init} - {"parent"}
        if unknown or "parent" in overrides:
            raise ConfigurationError(f"sub_convo() got unknown settings: {sorted(unknown | ({'parent'} & set(overrides)))}")
        settings.update(overrides)
        child = Convo(service if service is not None else self.service, parent=self, **settings)
        child._owns_servers = "mcp_servers" in overrides
        info = _current_call.get()
        if info is not None:
            child._inherit_cancel(info.cancelled)
        self._adopt(child)
        return child

    def _adopt(self, child: "Convo") -> None:
        with self._lock:
            if self._children is None:
                self._children = weakref.WeakSet()
            self._children.add(child)

    def sub_convo_with_history(self, **overrides: Any) -> "Convo":
        """A conversation below this one that starts from a copy of its history.

        It keeps this convo's system prompt, tools and tool settings
        (override any), so it can carry on exactly where this one stands,
        tool calls and their held-back results included.
        """
        overrides.setdefault("system_prompt", self.system_prompt)
        overrides.setdefault("tools", self.tools)
        overrides.setdefault("tool_use_only", self.tool_use_only)
        overrides.setdefault("tool_choice", self.tool_choice)
        sub = self.sub_convo(**overrides)
        with self._lock:
            sub._messages = list(self._messages)
            sub._answers = dict(self._answers)
            sub._notified = set(self._notified)
            sub._paused = self._paused
            sub._counted = self._counted
        return sub

    def _inherit_cancel(self, signal: CancelToken) -> None:
        self._inherited = signal
        ref = weakref.ref(self)

        def cancel_child() -> None:
            child = ref()
            if child is not None:
                child.cancel("the tool call that created this sub-convo was cancelled")

        signal.add_callback(cancel_child)

    # --- usage and budget --------------------------------------------------------

    def cumulative_usage(self) -> CumulativeUsage:
        """A copy of the totals of this convo and everything below it."""
        with self._tree.lock:
            return self._usage.copy()

    def last_usage(self) -> Usage:
        """The usage of this convo's most recent reply."""
        with self._lock:
            return self._last_usage

    def over_budget(self) -> BudgetExceeded | None:
        """The first exhausted budget found walking up from this convo, or None.

        A budget is exhausted once nothing more may be spent under it: its
        spending has reached its limit (for ``Budget(0)``, always).
        """
        with self._tree.lock:
            for node in self._chain:
                limit = node.budget.max_dollars
                if limit is None:
                    continue
                spent = node._usage.total_cost_usd - node._budget_start
                if spent >= limit:
                    return BudgetExceeded(node.id, spent, limit, reserved=node._reserved)
        return None

    def reset_budget(self, budget: Budget | Any) -> None:
        """Replace the budget (a Budget, a number or None); spending counts from now."""
        budget = _to_budget(budget)
        with self._tree.lock:
            self.budget = budget
            self._budget_start = self._usage.total_cost_usd

    def _price_of(self, model: str | None) -> Price | None:
        price = self.prices.lookup(model) if model else None
        if price is None:
            own = getattr(self.service, "price", None)
            if callable(own):
                price = own()
        return price

    def _price(self, response: Response) -> Response:
        if response.usage.cost_usd is not None:
            return response
        price = self._price_of(response.model)
        if price is None:
            with _unpriced_lock:
                first = response.model not in _unpriced_logged
                _unpriced_logged.add(response.model)
            if first:
                log.warning("unpriced_model", model=response.model,
                            hint="add it with convo.PRICES.set(model, convo.Price(...)); "
                                 "its replies count in unpriced_responses")
            return response
        return attrs.evolve(response, usage=attrs.evolve(response.usage, cost_usd=price.cost(response.usage)))

    def _reserve(self, request: Request) -> tuple[Request, Decimal | None]:
        """Hold the request's worst-case cost against every budget above; the request to send."""
        limited = [node for node in self._chain if node.budget.max_dollars is not None]
        if not limited:
            return request, None
        model = self.model
        price = self._price_of(model)
        if price is None:
            raise UnpricedModel(model or f"(the model of {type(self.service).__name__})", limited[0].id)
        max_out = request.max_tokens or getattr(self.service, "max_tokens", None)
        if not max_out:
            # A request without a reply cap has no worst case: give it one.
            max_out = DEFAULT_RESERVED_OUTPUT_TOKENS
            request = attrs.evolve(request, max_tokens=max_out)
        worst = price.worst_case(estimate_input_tokens(request, self._counted_tokens()), max_out)
        with self._tree.lock:
            for node in limited:
                limit = node.budget.max_dollars
                spent = node._usage.total_cost_usd - node._budget_start
                if spent >= limit:
                    raise BudgetExceeded(node.id, spent, limit, reserved=node._reserved)
                if spent + node._reserved + worst > limit:
                    raise BudgetExceeded(node.id, spent, limit, reserved=node._reserved, requested=worst)
            for node in self._chain:
                node._reserved += worst
        return request, worst

    def _counted_tokens(self) -> tuple[int, int, int] | None:
        """``(messages, tokens, preamble estimate)`` the provider last counted, for the budget's estimate."""
        counted = self._counted
        if counted is None:
            return None
        n, tokens, preamble = counted
        return n, tokens, preamble if isinstance(preamble, int) else preamble_tokens(preamble)

    def _settle(self, send: _Send, usage: Usage | None, *, response: bool) -> None:
        """Release a send's reservation (once) and count what was really spent, in one step for the tree."""
        with self._tree.lock:
            reserved, send.reserved = send.reserved, None
            for node in self._chain:
                if reserved is not None:
                    node._reserved -= reserved
                if usage is not None:
                    node._usage.add(usage, response=response)

    def _record_tool_use(self, name: str) -> None:
        with self._tree.lock:
            for node in self._chain:
                node._usage.count_tool(name)

    # --- history -----------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """A copy of the history."""
        with self._lock:
            return list(self._messages)

    def _build_request(self, messages: list[Message], tool_choice: ToolChoice | None) -> Request:
        system: tuple = ()
        if self.system_prompt:
            system = (Text(self.system_prompt, cache=self.prompt_caching),)
        if self.prompt_caching and messages:
            # Mark a copy: the caller's message and the history stay unmarked.
            last = messages[-1]
            if last.content and hasattr(last.content[-1], "cache"):
                marked = attrs.evolve(last.content[-1], cache=True)
                messages = messages[:-1] + [Message(last.role, last.content[:-1] + (marked,))]
        if tool_choice is None:
            tool_choice = self.tool_choice
        tools = self.available_tools()
        if tool_choice is None and tools:
            tool_choice = ToolChoice.any() if self.tool_use_only else ToolChoice.auto()
        return Request(
            messages=messages,
            system=system,
            tools=[t.spec() for t in tools],
            tool_choice=tool_choice if tools else None,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            thinking=self.thinking,
        )

    def _answer_tool_calls(self, history: list[Message], message: Message) -> Message:
        """The message with a result for every tool call of the last reply, in the order the model asked.

        A result the caller gives is used; else the result a tool round
        held back (a tool that ended the turn, ``MaxTurnsExceeded``, a
        cancel); else the call never ran and its result says so. Text and
        other blocks follow the results.
        """
        given: dict[str, ToolResult] = {}
        for r in message.tool_results():
            if r.tool_use_id in given:
                raise ConfigurationError(f"two results for tool call {r.tool_use_id!r}")
            given[r.tool_use_id] = r
        if not history or history[-1].role != Role.ASSISTANT or not history[-1].tool_uses():
            if given:
                raise ConfigurationError(f"tool results for {sorted(given)}, but the last reply called no tools")
            return message
        wanted = history[-1].tool_uses()
        unknown = set(given) - {tu.id for tu in wanted}
        if unknown:
            raise ConfigurationError(f"tool results for {sorted(unknown)}, which the last reply did not call; "
                                     f"it called {[tu.id for tu in wanted]}")
        with self._lock:
            held = dict(self._answers)
        results = [given.get(tu.id) or held.get(tu.id) or _not_executed(tu) for tu in wanted]
        others = tuple(b for b in message.content if not isinstance(b, ToolResult))
        return Message(Role.USER, tuple(results) + others)

    # --- turns -------------------------------------------------------------------

    def _enter_turn(self) -> CancelToken:
        """Wait for this convo's turn; the cancel token of the turn."""
        if self._closed:
            raise ConversationClosed(self.id)
        me = threading.get_ident()
        if self._turn_owner == me:
            raise ConversationBusy(
                f"convo {self.id}: a send was started on the thread already in one of its turns (a listener, "
                "or code reading an open stream, sending on the same convo); finish or close that turn first, "
                "or use a sub_convo()"
            )
        info = _current_call.get()
        if info is not None and info.convo is self:
            raise ConversationBusy(
                f"convo {self.id}: tool call {info.tool_use_id} tried to send on the convo that called it, whose "
                "turn is waiting for that tool's result; use convo.sub_convo() inside a tool"
            )
        if self._inherited is not None and self._inherited.cancelled:
            raise Cancelled(f"convo {self.id}: the tool call that created this sub-convo was cancelled")
        self._turn_lock.acquire()
        if self._closed:
            self._turn_lock.release()
            raise ConversationClosed(self.id)
        self._turn_owner = me
        token = CancelToken()
        with self._lock:
            self._active.add(token)
        return token

    def _exit_turn(self, token: CancelToken) -> None:
        with self._lock:
            self._active.discard(token)
        self._turn_owner = None
        self._turn_lock.release()

    def _user_message(self, message: Any) -> Message:
        if not isinstance(message, Message):
            raise ArgumentTypeError(f"expected a convo.Message, got {type(message).__name__}")
        if message.role != Role.USER:
            raise ConfigurationError(f"a send takes a user message; got role {message.role!s}")
        return message

    def _prepare(self, message: Message | None, tool_choice: Any, token: CancelToken) -> _Send:
        """Check, reserve and announce one request; nothing is sent yet.

        ``message`` None continues a paused turn (the history ends with the
        model's partial reply).
        """
        if token.cancelled:
            raise Cancelled(token.reason or "cancelled")
        choice = self._checked_tool_choice(tool_choice)
        history = self.messages
        if message is None:
            to_send = history
        else:
            message = self._answer_tool_calls(history, message)
            if not message.content:
                raise ConfigurationError("cannot send an empty message: give text or content blocks")
            to_send = history + [message]
        request, reserved = self._reserve(self._build_request(to_send, choice))
        if message is not None and message.tool_results():
            self._announce_results(history[-1].tool_uses(), message)
        self._notify("on_request", request)
        return _Send(message, request, token, reserved)

    def _announce_results(self, tool_uses: list[ToolUse], message: Message) -> None:
        # Every result the model receives reaches the listener once, whoever produced it.
        by_id = {tu.id: tu for tu in tool_uses}
        for result in message.tool_results():
            with self._lock:
                if result.tool_use_id in self._notified:
                    continue
            self._notify_result(by_id[result.tool_use_id], result, None)

    def _commit(self, send: _Send, response: Response) -> Response:
        """A reply arrived: price it, count it, and add the exchange to the history."""
        response = self._price(response)
        usage = response.usage
        with self._lock:
            if send.message is None and self._messages and self._messages[-1].role == Role.ASSISTANT:
                last = self._messages.pop()
                self._messages.append(Message(Role.ASSISTANT, last.content + response.content))
            else:
                self._messages.append(send.message)
                self._messages.append(response.to_message())
            self._answers = {}
            self._notified = set()
            self._paused = response.stop_reason == StopReason.PAUSE_TURN
            if usage.total_input_tokens():
                # What the provider counted, and the request whose system prompt and tools it
                # counted with (their estimate is only needed, and worked out, under a budget).
                self._counted = (len(self._messages), usage.total_input_tokens() + usage.output_tokens,
                                 send.request)
            self._last_usage = usage
        self._settle(send, usage, response=True)
        self._notify("on_response", response)
        return response

    def _abort(self, send: _Send, error: BaseException, reported: Usage | None = None) -> None:
        """A request failed: release its reservation, count any usage the provider reported, tell the listener."""
        usage = self._price_usage(reported) if reported is not None else None
        self._settle(send, usage, response=False)
        self._notify("on_error", send.request, error)
        if usage is not None:
            self._notify("on_usage", usage)

    def _price_usage(self, usage: Usage) -> Usage:
        if usage.cost_usd is not None:
            return usage
        price = self._price_of(self.model)
        return usage if price is None else attrs.evolve(usage, cost_usd=price.cost(usage))

    def _do(self, send: _Send) -> Response:
        try:
            with cancel_scope(send.token):
                response = self.service.do(send.request)
            if send.token.cancelled:
                raise Cancelled(send.token.reason or "cancelled")
            if not isinstance(response, Response):
                raise ArgumentTypeError(f"{type(self.service).__name__}.do() returned {type(response).__name__}, "
                                        "not a convo.Response")
        except BaseException as exc:
            self._abort(send, exc)
            raise
        return self._commit(send, response)

    def _exchange(self, message: Message | None, tool_choice: Any, token: CancelToken,
                  on_event: Callable[[StreamEvent], None] | None) -> Response:
        """One request and its reply inside a turn the caller holds; streamed to ``on_event`` if given."""
        send = self._prepare(message, tool_choice, token)
        if on_event is None:
            return self._do(send)
        with Stream(self, send, owns_turn=False) as stream:
            for event in stream:
                on_event(event)
        return stream.response

    # --- sending -----------------------------------------------------------------

    def send_message(self, message: Message, *, tool_choice: Any = None) -> Response:
        """Send a user message and return the model's reply.

        On success the message and the reply join the history; on any error
        neither does. Every tool call of the previous reply is answered
        first, in the order the model asked: with the results you give, else
        the results a tool round held back, else a result saying the call
        never ran.

        Raises:
            BudgetExceeded: the request's worst case does not fit in this
                convo's or an ancestor's budget; nothing was sent.
            UnpricedModel: a budget applies but the model has no price.
            ProviderError: the service failed (after its retries).
            Cancelled: :meth:`cancel` stopped the request.
            ConversationClosed: :meth:`close` was called.
        """
        message = self._user_message(message)
        token = self._enter_turn()
        try:
            return self._do(self._prepare(message, tool_choice, token))
        finally:
            self._exit_turn(token)

    def send(self, text: str = "", *other_contents: Any, tool_choice: Any = None) -> Response:
        """Send ``text`` (after ``other_contents``, such as images) and return the reply."""
        return self.send_message(Message.user(text, *other_contents), tool_choice=tool_choice)

    def send_user_text_message(self, text: str, *other_contents: Any) -> Response:
        """Send ``text`` as a user message; ``other_contents`` (often tool results) go first."""
        return self.send_message(Message.user(text, *other_contents))

    def stream_message(self, message: Message, *, tool_choice: Any = None) -> Stream:
        """Like :meth:`send_message`, as a :class:`~convo.Stream` of events.

        Every check (closed, budget, message) runs here, before the stream is
        returned. The stream holds this convo's turn until it ends, fails or
        is closed: use it as a context manager (``with c.stream(...) as s:``).
        """
        message = self._user_message(message)
        token = self._enter_turn()
        try:
            send = self._prepare(message, tool_choice, token)
        except BaseException:
            self._exit_turn(token)
            raise
        return Stream(self, send, owns_turn=True)

    def stream(self, text: str = "", *other_contents: Any, tool_choice: Any = None) -> Stream:
        """Stream the reply to ``text`` (after ``other_contents``); see :meth:`stream_message`."""
        return self.stream_message(Message.user(text, *other_contents), tool_choice=tool_choice)

    def stream_user_text_message(self, text: str, *other_contents: Any) -> Stream:
        """Stream the reply to ``text``; ``other_contents`` (often tool results) go first."""
        return self.stream_message(Message.user(text, *other_contents))

    # --- tools -------------------------------------------------------------------

    def tool_result_contents(self, response: Response) -> tuple[list[ToolResult], bool]:
        """Run every tool call in ``response`` concurrently and return their results.

        Results come back in the order the model asked for them, whatever
        order they finish in. An unknown tool, input that fails the tool's
        schema, a tool that raises (``SystemExit`` included) or returns
        something unsendable: each gives an error result the model can read.
        A tool that raises :class:`~convo.DoNotRespond` gives no result. When
        the reply stopped at ``max_tokens``, its last call's input may be cut
        short, so that call does not run and gets an error result saying so.
        A call cancelled with :meth:`cancel_tool_use` or :meth:`cancel`
        returns an error result at once; its thread is left to finish and its
        late result is dropped. Every call's outcome is also held for the
        next send, so a send that leaves results out still tells the model
        the truth about each call.

        Returns:
            ``(results, ends_turn)``: ``ends_turn`` is true when any tool
            called is marked ``ends_turn``.

        Raises:
            KeyboardInterrupt: a tool raised it (every other call settled first).
        """
        tool_round = self._tool_round(response)
        return tool_round.results, tool_round.ends_turn

    def _tool_round(self, response: Response) -> ToolRound:
        tool_round = run_tool_calls(self, response)
        self._hold_answers(tool_round.answers)
        return tool_round

    def _hold_answers(self, answers: dict) -> None:
        with self._lock:
            self._answers.update(answers)

    def _register_calls(self, calls: list[ToolCall]) -> None:
        with self._lock:
            for call in calls:
                self._running[call.tool_use.id] = call

    def _unregister_calls(self, calls: list[ToolCall]) -> None:
        with self._lock:
            for call in calls:
                if self._running.get(call.tool_use.id) is call:
                    del self._running[call.tool_use.id]

    def _notify(self, event: str, *args: Any) -> None:
        _listeners.notify(self.listener, event, self, *args)

    def _notify_result(self, tool_use: ToolUse, result: ToolResult, error: BaseException | None) -> None:
        with self._lock:
            self._notified.add(tool_use.id)
        self._notify("on_tool_result", tool_use, result, error)

    def tool_result_cancel_contents(self, response: Response) -> list[ToolResult]:
        """Error results for every tool call in ``response``, without running any.

        For when the user interrupts before the tools run: the model learns
        its calls were cancelled, and the history stays valid.
        """
        at = now()
        return [ToolResult(tu.id, "tool call cancelled by the user", is_error=True, start_time=at, end_time=at)
                for tu in response.tool_uses()]

    def cancel_tool_use(self, tool_use_id: str, reason: str | None = None) -> None:
        """Cancel one running tool call of this convo; its result becomes an error at once.

        Sub-convos the call created are cancelled too.

        Raises:
            UnknownToolUseError: no running call of this convo has that id.
        """
        with self._lock:
            call = self._running.get(tool_use_id)
        if call is None:
            raise UnknownToolUseError(tool_use_id)
        self._cancel_call(call, reason)

    def _cancel_call(self, call: ToolCall, reason: str | None) -> None:
        text = f"tool call cancelled: {reason}" if reason else "tool call cancelled"
        result = ToolResult(call.tool_use.id, text, is_error=True, start_time=call.start_time, end_time=now())
        settled = call.settle(result, error=Cancelled(text))
        call.info.cancelled.cancel(reason)
        if settled:
            self._notify_result(call.tool_use, result, call.error)

    def cancel(self, reason: str | None = None) -> None:
        """Stop whatever this convo and every convo below it are doing.

        A blocked send, stream or :meth:`run` raises
        :class:`~convo.Cancelled` and sends nothing more; running tools get
        error results at once (their ``cancelled`` signal is set, and
        sub-convos they created are cancelled too); every sub-convo is
        cancelled the same way. The convos stay usable: the next send works
        as usual (except sub-convos created by a cancelled tool call, which
        belonged to that call).
        """
        with self._lock:
            tokens = list(self._active)
            calls = list(self._running.values())
            children = list(self._children or ())
        for token in tokens:
            token.cancel(reason)
        for call in calls:
            self._cancel_call(call, reason)
        for child in children:
            child.cancel(reason)

    # --- the agent loop ----------------------------------------------------------

    def run(self, text: str = "", *other_contents: Any, max_turns: int | None = DEFAULT_MAX_TURNS,
            on_event: Callable[[StreamEvent], None] | None = None, tool_choice: Any = None) -> Response:
        """Run the whole agent loop: send ``text``, run tools, send results, until done.

        One turn: sends from other threads wait until it ends. Stops when
        the model ends its turn, when a tool marked ``ends_turn`` ran, or
        when every tool call asked for no response; the results of that
        last round are held and sent first with your next message. A reply
        paused by the provider (``pause_turn``, long server-tool work) is
        continued. With ``on_event``, replies are streamed and each event is
        passed to it. ``tool_choice`` applies to the first request only (a
        forced tool every time would never end the loop).

        Args:
            max_turns: the most replies to ask for; None for no limit.

        Raises:
            MaxTurnsExceeded: the model was still working after ``max_turns``
                replies (continue with :meth:`continue_turn`).
            Cancelled: :meth:`cancel` was called; nothing more was sent.
            KeyboardInterrupt: a tool raised it.
        """
        limit = _check_max_turns(max_turns)
        message = self._user_message(Message.user(text, *other_contents))
        token = self._enter_turn()
        try:
            return self._loop(message, limit, on_event, tool_choice, token)
        finally:
            self._exit_turn(token)

    def continue_turn(self, *, max_turns: int | None = DEFAULT_MAX_TURNS,
                      on_event: Callable[[StreamEvent], None] | None = None) -> Response:
        """Carry the agent loop on from where the history stands.

        After :class:`~convo.MaxTurnsExceeded`, a tool that ended the turn,
        a cancel, or a reply with tool calls you did not run: runs the tools
        not yet answered, sends every result, and loops as :meth:`run` does.
        A paused reply is continued.

        Raises:
            ConfigurationError: the model already ended its turn; there is
                nothing to continue (send a new message instead).
        """
        limit = _check_max_turns(max_turns)
        token = self._enter_turn()
        try:
            with self._lock:
                last = self._messages[-1] if self._messages else None
                paused = self._paused
                held = set(self._answers)
            if last is None or last.role != Role.ASSISTANT or not (paused or last.tool_uses()):
                raise ConfigurationError(f"convo {self.id}: the model ended its turn; there is nothing to continue")
            if paused:
                return self._loop(None, limit, on_event, None, token)
            missing = [tu for tu in last.tool_uses() if tu.id not in held]
            if missing:
                self._tool_round(Response(id="", model=self.model or "", content=tuple(missing),
                                          stop_reason=StopReason.TOOL_USE))
            token.raise_if_cancelled()
            return self._loop(Message.user(""), limit, on_event, None, token)
        finally:
            self._exit_turn(token)

    def _loop(self, message: Message | None, limit: int | None, on_event, tool_choice: Any,
              token: CancelToken) -> Response:
        turns = 0
        while True:
            response = self._exchange(message, tool_choice, token, on_event)
            turns += 1
            tool_choice = None
            more = response.stop_reason == StopReason.PAUSE_TURN
            if not more:
                if not response.tool_uses():
                    return response
                tool_round = self._tool_round(response)
                token.raise_if_cancelled()
                if tool_round.ends_turn or not tool_round.results:
                    return response
            if limit is not None and turns >= limit:
                raise MaxTurnsExceeded(limit, response)
            token.raise_if_cancelled()
            message = None if more else Message.user("", *tool_round.results)

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything about the conversation as plain JSON values (no secrets, no code).

        The service, tools, listener and prices are code: only their names
        are kept, and :meth:`from_dict` takes them again.
        """
        with self._lock:
            messages = list(self._messages)
            answers = dict(self._answers)
            notified = sorted(self._notified)
            paused, last = self._paused, self._last_usage
        counted = self._counted_tokens()
        with self._tree.lock:
            usage = self._usage.copy()
            budget_start = self._budget_start
        return {
            "format": STATE_FORMAT,
            "id": self.id,
            "parent_id": self.parent.id if self.parent is not None else None,
            "depth": self.depth(),
            "service": type(self.service).__name__,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "tools": [t.spec().to_dict() for t in self.tools],
            "mcp_servers": [getattr(server, "name", type(server).__name__) for server in self.mcp_servers],
            "tool_choice": self.tool_choice.to_dict() if self.tool_choice is not None else None,
            "budget": {**self.budget.to_dict(), "spent_before": str(budget_start)},
            "prompt_caching": self.prompt_caching,
            "tool_use_only": self.tool_use_only,
            "hidden": self.hidden,
            "extra_data": self.extra_data,
            "max_tool_workers": self.max_tool_workers,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "thinking": self.thinking.to_dict() if self.thinking is not None else None,
            "max_tool_result_chars": self.max_tool_result_chars,
            "closed": self._closed,
            "messages": [m.to_dict() for m in messages],
            "held_results": [r.to_dict() for r in answers.values()],
            "announced_results": notified,
            "paused": paused,
            "counted_tokens": list(counted) if counted is not None else None,
            "cumulative_usage": usage.to_dict(),
            "last_usage": last.to_dict(),
        }

    def debug_json(self) -> str:
        """The conversation as indented JSON, enums as readable strings; see :meth:`from_debug_json`."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    @classmethod
    def from_dict(cls, d: dict, service: Service | None = None, *, tools: Iterable[Tool] = (),
                  listener: Any = None, prices: PriceTable | None = None, parent: "Convo | None" = None,
                  **settings: Any) -> "Convo":
        """Rebuild a conversation from :meth:`to_dict`: history, usage, budget state and settings.

        Code is not data: give the service (None picks one by the saved
        model), the tools it used (exactly those names), the listener and
        the price table again. ``settings`` override saved settings.

        Raises:
            ConfigurationError: the tools given are not the ones it used, or
                the state is of a newer format.
        """
        from .errors import ConvoError

        try:
            fmt = d.get("format", 1)
            if not isinstance(fmt, int) or fmt > STATE_FORMAT:
                raise ConfigurationError(f"conversation state format {fmt!r} is newer than this convo understands "
                                         f"({STATE_FORMAT}); upgrade convo")
            tools = tuple(tools)
            saved = sorted(t["name"] for t in d.get("tools", []))
            if sorted(t.name for t in tools) != saved:
                raise ConfigurationError(f"the conversation used the tools {saved}; pass exactly those with tools= "
                                         f"(got {sorted(t.name for t in tools)})")
            kwargs: dict[str, Any] = dict(
                system_prompt=d.get("system_prompt", ""),
                tool_choice=ToolChoice.from_dict(d["tool_choice"]) if d.get("tool_choice") else None,
                budget=Budget.from_dict(d.get("budget") or {}),
                prompt_caching=d.get("prompt_caching", True),
                tool_use_only=d.get("tool_use_only", False),
                hidden=d.get("hidden", False),
                extra_data=d.get("extra_data"),
                max_tool_workers=d.get("max_tool_workers"),
                max_tokens=d.get("max_tokens"),
                temperature=d.get("temperature"),
                thinking=ThinkingConfig.from_dict(d["thinking"]) if d.get("thinking") else None,
                max_tool_result_chars=d.get("max_tool_result_chars", DEFAULT_MAX_TOOL_RESULT_CHARS),
                id=d["id"],
            )
            if service is None and "model" not in settings:
                kwargs["model"] = d.get("model")
            kwargs.update(settings)
            messages = [Message.from_dict(m) for m in d.get("messages", [])]
            held = [ToolResult.from_dict(r) for r in d.get("held_results", [])]
            usage = CumulativeUsage.from_dict(d["cumulative_usage"]) if d.get("cumulative_usage") else None
            last = Usage.from_dict(d.get("last_usage") or {})
            counted = tuple(d["counted_tokens"]) if d.get("counted_tokens") else None
            spent_before = Decimal((d.get("budget") or {}).get("spent_before", "0"))
        except ConvoError:
            raise
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigurationError(f"not a convo state: {type(exc).__name__}: {exc}") from None
        c = cls(service, tools=tools, listener=listener, prices=prices or PRICES, parent=parent, **kwargs)
        c._messages = messages
        c._answers = {r.tool_use_id: r for r in held}
        c._notified = set(d.get("announced_results", []))
        c._paused = bool(d.get("paused", False))
        c._counted = counted
        if usage is not None:
            c._usage = usage
        c._last_usage = last
        c._budget_start = spent_before
        c._closed = bool(d.get("closed", False))
        if parent is not None:
            parent._adopt(c)
        return c

    @classmethod
    def from_debug_json(cls, text: str, service: Service | None = None, *, tools: Iterable[Tool] = (),
                        **kwargs: Any) -> "Convo":
        """Rebuild a conversation from :meth:`debug_json`; see :meth:`from_dict`."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"not a convo state: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigurationError("not a convo state: expected a JSON object")
        return cls.from_dict(d, service, tools=tools, **kwargs)
