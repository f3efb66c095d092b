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
    ConvoError,
    MaxTurnsExceeded,
    PendingAlreadyResolved,
    ToolDefinitionError,
    ToolsPending,
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
from .pricing import PRICES, Price, PriceTable, price_for
from .service import Service, StreamEvent
from .streaming import Stream
from .hooks import PendingTool
from .tools import Tool, _current_call
from .usage import CumulativeUsage, Usage, UsageNode

__all__ = ["Budget", "Convo", "DEFAULT_MAX_TURNS", "resume"]

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


def _departed_node(id: str, depth: int, own: CumulativeUsage, departed: list) -> UsageNode:
    children = tuple(_departed_node(*d) for d in list(departed))
    total = own.copy()
    for child in children:
        total.merge(child.total)
    return UsageNode(id, depth, own.copy(), total, children, live=False)


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
    settled: bool = False  # its usage is counted (by a commit, or a rejection after the reply came)


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
        store: a :class:`~convo.Store`: every successful turn is saved to it
            before the send returns (see :func:`convo.resume`); sub-convos
            use it too.
        hooks: objects that shape requests, check replies and gate tool
            calls (see :mod:`convo.hooks`); packs use them. Not inherited
            by sub-convos.
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
    store: Any = field(default=None, kw_only=True)
    hooks: tuple = field(default=(), kw_only=True, converter=tuple)
    parent: "Convo | None" = field(default=None, kw_only=True)

    _lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_lock: threading.Lock = field(init=False, factory=threading.Lock)
    _turn_owner: int | None = field(init=False, default=None)
    _tree: _Tree = field(init=False, default=None)
    _ancestors: tuple = field(init=False, default=())  # parent, grandparent... (not self: no reference cycle)
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
    _own_usage: CumulativeUsage = field(init=False, factory=CumulativeUsage)  # its own replies, not its subtree's
    _version: int = field(init=False, default=0)  # the stored version this history is (0: never saved)
    _unsure: bool = field(init=False, default=False)  # a save failed midway: reread the store before the next
    _save_lock: threading.RLock = field(init=False, factory=threading.RLock)  # one write to the store at a time
    _missing_tools: tuple = field(init=False, default=())  # an ancestor loaded without the tools it used
    _pending: dict = field(init=False, factory=dict)  # tool calls held for approval, by id
    _departed: list = field(init=False, factory=list)  # (id, depth, own usage, their departed) of dropped sub-convos
    _output_schema: dict | None = field(init=False, default=None)  # set by run(output=...) for its turn

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
        names = [getattr(server, "name", None) for server in self.mcp_servers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"two MCP servers have the same name: {sorted(names)}; their tools would clash")
        if self.store is not None and not callable(getattr(self.store, "write", None)):
            raise ArgumentTypeError(f"store must be a convo.Store, got {type(self.store).__name__}")
        self.tool_choice = self._checked_tool_choice(self.tool_choice)
        self._check_settings()
        if self.parent is not None:
            if not isinstance(self.parent, Convo):
                raise ArgumentTypeError(f"parent must be a Convo, got {type(self.parent).__name__}")
            self._tree = self.parent._tree
            self._ancestors = (self.parent,) + self.parent._ancestors
        else:
            self._tree = _Tree()
            self._ancestors = ()

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
        """The tools the model may call now: ``tools``, those of every MCP server, and those hooks add.

        MCP servers and hooks are asked each time (servers start on first
        use, and tool lists may change between turns).
        """
        providers = self._hook_methods("tools")
        if not self.mcp_servers and not providers:
            return self.tools
        tools = list(self.tools)
        for server in self.mcp_servers:
            tools.extend(server.tools())
        for provide in providers:
            tools.extend(provide(self))
        return tuple(tools)

    def _repr_html_(self) -> str:
        """The transcript as HTML, for notebooks (see :mod:`convo.notebook`)."""
        from .notebook import convo_html

        return convo_html(self)

    @property
    def model(self) -> str | None:
        """The model the service sends requests to (None if the service does not say)."""
        return getattr(self.service, "model", None)

    # --- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Close the conversation: it refuses every send from now on, and stops its MCP servers. Idempotent.

        A turn already in progress finishes. The history, usage and settings
        stay readable. MCP servers a sub-convo inherited are stopped by the
        convo they were given to, not by the sub-convo; a server you started
        yourself (``server.start()`` or ``with server:``) is yours to stop,
        so one server can serve many convos.
        """
        if self._closed:
            return
        self._closed = True
        if self.store is not None and self._turn_lock.acquire(blocking=False):
            # Saved now if no turn is running; a running turn saves it as it commits.
            try:
                with self._lock:
                    keep = len(self._messages)
                self._save(keep, [], closed=True)
            except Exception as exc:  # closing must not fail because the store is down
                log.warning("close_not_saved", convo_id=self.id, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._turn_lock.release()
        if self._owns_servers:
            for server in self.mcp_servers:
                if getattr(server, "started_by_user", False) is True:
                    continue  # yours to stop: it may serve other convos too
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
        return len(self._ancestors)

    def root(self) -> "Convo":
        """The conversation at the top of this one's tree."""
        return self._ancestors[-1] if self._ancestors else self

    @property
    def _chain(self) -> tuple:
        """This convo and its ancestors, nearest first (built per use: holding it would make a reference cycle)."""
        return (self,) + self._ancestors

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
            store=self.store,
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
        # Keep what a sub-convo spent once it is dropped, for usage_tree() (its totals stay in ours anyway).
        weakref.finalize(child, self._keep_departed, child.id, child.depth(), child._own_usage, child._departed)

    def _keep_departed(self, id: str, depth: int, own: CumulativeUsage, departed: list) -> None:
        with self._lock:
            self._departed.append((id, depth, own, departed))

    def sub_convos(self) -> list["Convo"]:
        """The sub-convos of this convo still in memory (most recent last is not guaranteed)."""
        with self._lock:
            return list(self._children or ())

    def own_usage(self) -> CumulativeUsage:
        """A copy of what this convo's own replies and tool calls spent, without its sub-convos'."""
        return self._own_usage_copy()

    def usage_tree(self) -> UsageNode:
        """This convo and every sub-convo below it, each with its own and its total usage.

        Sub-convos already dropped are there too (``live=False``), with the
        numbers they had when they went.
        """
        with self._tree.lock:
            return self._usage_node()

    def _usage_node(self) -> UsageNode:
        with self._lock:
            children = list(self._children or ())
            departed = list(self._departed)
        nodes = [c._usage_node() for c in sorted(children, key=lambda c: c.id)]
        nodes += [_departed_node(*d) for d in departed]
        return UsageNode(self.id, self.depth(), self._own_usage.copy(), self._usage.copy(), tuple(nodes))

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
        return price_for(model, self.service, self.prices)

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

    def worst_case(self, request: Request) -> tuple[Request, Decimal | None]:
        """What ``request`` could cost at most, and the request to send so that the bound holds.

        The bound is the request's input estimate (see :mod:`convo.budget`)
        at the model's highest input rate plus its reply cap at the output
        rate. A request without a reply cap (neither it nor the service sets
        one) gets :data:`~convo.budget.DEFAULT_RESERVED_OUTPUT_TOKENS`, and
        the returned request carries it. The cost is None when the model has
        no price. Budgets kept elsewhere (a server's per-user windows) use
        this to reserve as the convo's own budgets do.
        """
        price = self._price_of(self.model)
        if price is None:
            return request, None
        max_out = request.max_tokens or getattr(self.service, "max_tokens", None)
        if not max_out:
            max_out = DEFAULT_RESERVED_OUTPUT_TOKENS
            request = attrs.evolve(request, max_tokens=max_out)
        return request, price.worst_case(estimate_input_tokens(request, self._counted_tokens()), max_out)

    def _reserve(self, request: Request) -> tuple[Request, Decimal | None]:
        """Hold the request's worst-case cost against every budget above; the request to send."""
        limited = [node for node in self._chain if node.budget.max_dollars is not None]
        if not limited:
            return request, None
        request, worst = self.worst_case(request)
        if worst is None:
            raise UnpricedModel(self.model or f"(the model of {type(self.service).__name__})", limited[0].id)
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
            if usage is not None:
                send.settled = True
            for node in self._chain:
                if reserved is not None:
                    node._reserved -= reserved
                if usage is not None:
                    node._usage.add(usage, response=response)
            if usage is not None:
                self._own_usage.add(usage, response=response)

    def _record_tool_use(self, name: str) -> None:
        with self._tree.lock:
            for node in self._chain:
                node._usage.count_tool(name)
            self._own_usage.count_tool(name)

    def _absorb_usage(self, usage: CumulativeUsage) -> None:
        """Count usage spent elsewhere (another process, a remote worker) as this convo's own."""
        with self._tree.lock:
            for node in self._chain:
                node._usage.merge(usage)
            self._own_usage.merge(usage)

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
            output_schema=self._output_schema,
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

    def _enter_turn(self, *, allow_closed: bool = False) -> CancelToken:
        """Wait for this convo's turn; the cancel token of the turn."""
        if self._closed and not allow_closed:
            raise ConversationClosed(self.id)
        if self._missing_tools:
            raise ConfigurationError(f"convo {self.id} was loaded as the ancestor of a resumed sub-convo, without "
                                     f"its tools {list(self._missing_tools)}; resume it by its own id to send on it")
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
        if self._closed and not allow_closed:
            self._turn_lock.release()
            raise ConversationClosed(self.id)
        if self._unsure:
            try:
                self._reread()
            except BaseException:
                self._turn_lock.release()
                raise
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
        with self._lock:
            pending = list(self._pending)
        if pending:
            raise ToolsPending(self.id, pending)
        history = self.messages
        if message is None:
            to_send = history
        else:
            message = self._answer_tool_calls(history, message)
            if not message.content:
                raise ConfigurationError("cannot send an empty message: give text or content blocks")
            to_send = history + [message]
        request = self._build_request(to_send, choice)
        for prepare in self._hook_methods("prepare_request"):
            changed = prepare(self, request)
            if changed is not None:
                if not isinstance(changed, Request):
                    raise ArgumentTypeError(f"a hook's prepare_request returned {type(changed).__name__}, "
                                            "not a convo.Request")
                request = changed
        request, reserved = self._reserve(request)
        send = _Send(message, request, token, reserved)
        try:
            if message is not None and message.tool_results():
                self._announce_results(history[-1].tool_uses(), message)
            self._notify("on_request", request)  # a strict listener that fails stops the send here
        except BaseException:
            self._settle(send, None, response=False)
            raise
        return send

    def _announce_results(self, tool_uses: list[ToolUse], message: Message) -> None:
        # Every result the model receives reaches the listener once, whoever produced it.
        by_id = {tu.id: tu for tu in tool_uses}
        for result in message.tool_results():
            with self._lock:
                if result.tool_use_id in self._notified:
                    continue
            self._notify_result(by_id[result.tool_use_id], result, None)

    def _commit(self, send: _Send, response: Response) -> Response:
        """A reply arrived: price it, count it, save the turn, and add the exchange to the history.

        With a store, the turn is saved first and joins the history only if
        the save succeeded; its cost is counted either way (it was spent).
        """
        response = self._price(response)
        usage = response.usage
        try:
            for check in self._hook_methods("check_response"):
                checked = check(self, response)
                if checked is not None:
                    response = checked
        except BaseException:
            self._settle(send, usage, response=True)  # rejected, but spent
            raise
        with self._lock:
            keep = len(self._messages)
            if send.message is None and self._messages and self._messages[-1].role == Role.ASSISTANT:
                keep -= 1
                added = [Message(Role.ASSISTANT, self._messages[-1].content + response.content)]
            else:
                added = [send.message, response.to_message()]
        paused = response.stop_reason == StopReason.PAUSE_TURN
        counted = None
        if usage.total_input_tokens():
            # What the provider counted, and the request whose system prompt and tools it counted
            # with (their estimate is only needed, and worked out, under a budget).
            counted = (keep + len(added), usage.total_input_tokens() + usage.output_tokens, send.request)
        if self.store is not None:
            try:
                own = self._own_usage_copy()
                own.add(usage)
                changes: dict[str, Any] = dict(answers={}, notified=set(), paused=paused, last_usage=usage,
                                               own_usage=own)
                if counted is not None:
                    changes["counted"] = counted
                self._save(keep, added, **changes)
            except BaseException:
                self._settle(send, usage, response=True)  # spent, even though it could not be saved
                raise
        with self._lock:
            del self._messages[keep:]
            self._messages.extend(added)
            self._answers = {}
            self._notified = set()
            self._paused = paused
            if counted is not None:
                self._counted = counted
            self._last_usage = usage
        self._settle(send, usage, response=True)
        self._notify("on_response", response)
        return response

    # --- persistence -------------------------------------------------------------

    def _own_usage_copy(self) -> CumulativeUsage:
        with self._tree.lock:
            return self._own_usage.copy()

    def _state(self, **changes: Any) -> dict:
        """What a store keeps besides the messages: settings, held results, usage and budget state.

        ``changes`` give values the state is about to have (a turn being saved).
        """
        with self._lock:
            answers = changes.get("answers", self._answers)
            pending = list(changes.get("pending", self._pending).values())
            notified = changes.get("notified", self._notified)
            paused = changes.get("paused", self._paused)
            last = changes.get("last_usage", self._last_usage)
            counted = changes["counted"] if "counted" in changes else self._counted
        if counted is not None:
            n, tokens, preamble = counted
            counted = [n, tokens, preamble if isinstance(preamble, int) else preamble_tokens(preamble)]
        with self._tree.lock:
            own = changes.get("own_usage") or self._own_usage.copy()
            budget_start = self._budget_start
        return {
            "format": STATE_FORMAT,
            "id": self.id,
            "parent_id": self.parent.id if self.parent is not None else None,
            "depth": self.depth(),
            "service": type(self.service).__name__,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "tools": [t.spec().to_dict() for t in self.tools] if not self._missing_tools
            else [{"name": name} for name in self._missing_tools],
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
            "closed": changes.get("closed", self._closed),
            "held_results": [r.to_dict() for r in answers.values()],
            "pending_tools": [p.to_dict() for p in pending],
            "announced_results": sorted(notified),
            "paused": paused,
            "counted_tokens": counted,
            "own_usage": own.to_dict(),
            "last_usage": last.to_dict(),
            "hooks": {h.state_key: h.to_state() for h in self.hooks
                      if getattr(h, "state_key", None) and callable(getattr(h, "to_state", None))},
        }

    def _save(self, keep: int, added: list[Message], **changes: Any) -> None:
        """Write this convo's change to its store: all of it or, on any error, nothing (then reread first).

        A sub-convo saved for the first time saves its unsaved ancestors
        first, so the stored tree never has a child without its parent.
        """
        from .errors import StoreUnavailable

        with self._save_lock:
            if self._version == 0 and self.parent is not None:
                self.parent._ensure_stored()
            state = self._state(**changes)
            own = changes.get("own_usage") or self._own_usage_copy()
            try:
                version = self.store.write(self.id, expected_version=self._version,
                                           parent_id=self.parent.id if self.parent is not None else None,
                                           root_id=self.root().id, state=state, usage=own, keep=keep,
                                           append=added)
            except StoreUnavailable:
                # It may or may not have committed: the store is the truth, reread it before the next turn.
                self._unsure = True
                raise
            self._version = version
        self._notify("on_state_saved", version)

    def _ensure_stored(self) -> None:
        with self._save_lock:
            if self._version == 0:
                with self._lock:
                    messages = list(self._messages)
                self._save(0, messages)

    def _reread(self) -> None:
        """After a save of unknown outcome: take the history back from the store (the usage stays counted)."""
        from .errors import ConversationNotFound

        try:
            stored = self.store.load(self.id)
        except ConversationNotFound:
            if self._version:
                raise
            stored = None  # its first save did not commit: it was never stored
        with self._lock:
            if stored is None:
                self._messages, self._version = [], 0
            else:
                self._messages = list(stored.messages)
                self._version = stored.version
                self._answers = {r["tool_use_id"]: ToolResult.from_dict(r)
                                 for r in stored.state.get("held_results", [])}
                self._notified = set(stored.state.get("announced_results", []))
                self._pending = {p["id"]: PendingTool.from_dict(p) for p in stored.state.get("pending_tools", [])}
                self._paused = bool(stored.state.get("paused", False))
            self._counted = None
        self._unsure = False

    def save(self) -> None:
        """Save settings, budget and held results now (turns are saved as they happen).

        Waits for a turn in progress. Does nothing without a store.
        """
        if self.store is None:
            return
        token = self._enter_turn(allow_closed=True)
        try:
            with self._lock:
                keep = len(self._messages)
            self._save(keep, [])
        finally:
            self._exit_turn(token)

    def clear(self) -> None:
        """Drop the history; keep the system prompt, settings, usage and the money already spent.

        Saved at once with a store. Waits for a turn in progress.
        """
        token = self._enter_turn()
        try:
            if self.store is not None:
                self._save(0, [], answers={}, notified=set(), paused=False, counted=None)
            with self._lock:
                self._messages = []
                self._answers = {}
                self._notified = set()
                self._paused = False
                self._counted = None
        finally:
            self._exit_turn(token)

    def _forked_hooks(self) -> list:
        """The hooks a fork gets: a hook with saved state is rebuilt from it (a fork's variables are its own)."""
        from .hooks import restorer_for

        hooks = []
        for hook in self.hooks:
            key = getattr(hook, "state_key", None)
            restore = restorer_for(key) if key and callable(getattr(hook, "to_state", None)) else None
            hooks.append(restore(hook.to_state(), self._state()) if restore is not None else hook)
        return hooks

    def rewind(self, keep: int) -> None:
        """Keep only the first ``keep`` messages (editing an earlier message: what followed is dropped).

        Held results and pending calls belong to what is dropped, so they
        go too; usage and money already spent stay. Saved at once with a
        store. Waits for a turn in progress.

        Raises:
            ConfigurationError: ``keep`` is not between 0 and the history's length.
        """
        if isinstance(keep, bool) or not isinstance(keep, int):
            raise ArgumentTypeError(f"keep must be an int, got {type(keep).__name__}")
        token = self._enter_turn()
        try:
            with self._lock:
                count = len(self._messages)
            if not 0 <= keep <= count:
                raise ConfigurationError(f"keep must be between 0 and {count}, got {keep}")
            if self.store is not None:
                self._save(keep, [], answers={}, notified=set(), paused=False, counted=None, pending={})
            with self._lock:
                del self._messages[keep:]
                self._answers, self._notified, self._pending = {}, set(), {}
                self._paused = False
                self._counted = None
        finally:
            self._exit_turn(token)

    def extend(self, messages: Iterable[Message]) -> None:
        """Append messages that did not come from a send (a reply cut short by an interrupt, an import).

        They must continue the alternation of user and assistant messages.
        Tool calls in them that have no result yet get one, saying they
        were not executed, with the next send. Saved at once with a store.

        Raises:
            ConfigurationError: the messages would break the alternation.
        """
        messages = [self._checked_message(m) for m in messages]
        token = self._enter_turn()
        try:
            with self._lock:
                last = self._messages[-1].role if self._messages else Role.ASSISTANT
            for m in messages:
                if m.role == last:
                    raise ConfigurationError(f"messages must alternate user and assistant; two {m.role!s} "
                                             "messages in a row")
                last = m.role
            if self.store is not None:
                with self._lock:
                    keep = len(self._messages)
                self._save(keep, messages, answers={}, notified=set(), paused=False)
            with self._lock:
                self._messages.extend(messages)
                self._answers, self._notified, self._paused = {}, set(), False
        finally:
            self._exit_turn(token)

    @staticmethod
    def _checked_message(m: Any) -> Message:
        if not isinstance(m, Message):
            raise ArgumentTypeError(f"expected a convo.Message, got {type(m).__name__}")
        return m

    def fork(self, id: str | None = None) -> "Convo":
        """An independent copy: the history and settings as they are now, its own usage from here on.

        Hooks come along (a hook with saved state, such as a pack's, is
        rebuilt from it, so the fork's variables are its own). The fork has
        the same parent (a fork of a root is a root), so what it
        spends rolls up as this convo's spending does, and it is saved in the
        same store at once.

        Raises:
            ConcurrentUpdate: a stored conversation already has that ``id``.
        """
        with self._lock:
            messages = list(self._messages)
            answers, paused = dict(self._answers), self._paused
        fork = Convo(self.service, system_prompt=self.system_prompt, tools=self.tools, tool_choice=self.tool_choice,
                     budget=self.budget, listener=self.listener, prompt_caching=self.prompt_caching,
                     tool_use_only=self.tool_use_only, hidden=self.hidden, extra_data=self.extra_data,
                     max_tool_workers=self.max_tool_workers, id=id or _new_id(), max_tokens=self.max_tokens,
                     temperature=self.temperature, thinking=self.thinking, prices=self.prices,
                     max_tool_result_chars=self.max_tool_result_chars, mcp_servers=self.mcp_servers,
                     store=self.store, parent=self.parent, hooks=self._forked_hooks())
        fork._owns_servers = False
        fork._messages, fork._answers, fork._paused = messages, answers, paused
        if fork.store is not None:
            fork._save(0, messages)
        if self.parent is not None:
            self.parent._adopt(fork)
        return fork

    def _abort(self, send: _Send, error: BaseException, reported: Usage | None = None) -> None:
        """A request failed: release its reservation, count any usage the provider reported, tell the listener."""
        usage = self._price_usage(reported) if reported is not None and not send.settled else None
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
            return self._commit(send, response)
        except BaseException as exc:
            self._abort(send, exc)
            raise

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

    def _hook_methods(self, name: str) -> list:
        if not self.hooks:
            return []
        return [m for m in (getattr(h, name, None) for h in self.hooks) if m is not None]

    def _notify(self, event: str, *args: Any) -> None:
        _listeners.notify(self.listener, event, self, *args)

    def _notify_result(self, tool_use: ToolUse, result: ToolResult, error: BaseException | None) -> None:
        with self._lock:
            self._notified.add(tool_use.id)
        self._notify("on_tool_result", tool_use, result, error)

    # --- packs (convo.open) ----------------------------------------------------------
    # A pack conversation is a Convo whose hooks include a pack session (convo.packs);
    # these methods are its public face, as PromptKit's conversation has them.

    def _pack(self) -> Any:
        for hook in self.hooks:
            if getattr(hook, "state_key", None) == "pack":
                return hook
        raise ConfigurationError(f"convo {self.id} was not opened from a pack (use convo.open(pack, prompt))")

    def set_var(self, name: str, value: Any) -> None:
        """Set a pack variable; the system prompt is rendered from the variables at each send."""
        self._pack().set_var(name, value)

    def set_vars(self, values: dict) -> None:
        """Set several pack variables at once (all checked before any is set)."""
        self._pack().set_vars(values)

    def set_vars_from_env(self, prefix: str) -> None:
        """Set pack variables from the environment: ``PREFIX_CUSTOMER_NAME`` sets ``customer_name``."""
        self._pack().set_vars_from_env(prefix)

    def get_var(self, name: str) -> Any:
        """A pack variable's current value (its default when unset)."""
        return self._pack().get_var(name)

    def on_tool(self, name: str, fn: Callable[..., Any], *, approve: Callable[[dict], Any] | None = None) -> None:
        """Handle the pack's tool ``name`` with ``fn``; ``approve(args)`` may hold calls for a person."""
        self._pack().on_tool(name, fn, approve=approve)

    def on_tools(self, handlers: dict, *, approve: dict | None = None) -> None:
        """Handle several pack tools: ``{name: fn}``, with ``approve={name: check}`` for those that need it."""
        self._pack().on_tools(handlers, approve=approve)

    def on_tool_http(self, name: str, url: str, *, method: str = "POST", headers: dict | None = None,
                     timeout: float = 30.0) -> None:
        """Handle the pack's tool ``name`` by sending its arguments as JSON to ``url`` and returning the reply."""
        self._pack().on_tool_http(name, url, method=method, headers=headers, timeout=timeout)

    # --- tool calls held for approval -----------------------------------------------

    def pending_tools(self) -> list:
        """The tool calls a hook held for approval, in the order the model asked (:class:`~convo.PendingTool`)."""
        with self._lock:
            return list(self._pending.values())

    def _hold_pending(self, pending: list) -> None:
        with self._lock:
            for p in pending:
                self._pending[p.id] = p
        if self.store is not None:
            with self._lock:
                keep = len(self._messages)
            self._save(keep, [])

    def _claim_pending(self, tool_use_id: str, verdict: str) -> "Any":
        """Take a held call out of the pending set, atomically (across processes with a store)."""
        with self._lock:
            held = self._pending.get(tool_use_id)
            answered = tool_use_id in self._answers
        if held is None:
            if answered:
                raise PendingAlreadyResolved(tool_use_id)
            raise UnknownToolUseError(tool_use_id)
        if self.store is not None:
            won = self.store.kv_claim("pending_tools", f"{self.id}:{tool_use_id}", {"verdict": verdict,
                                                                                  "at": now().isoformat()})
        else:
            with self._lock:
                won = self._pending.pop(tool_use_id, None) is not None
        if not won:
            raise PendingAlreadyResolved(tool_use_id)
        return held

    def _settle_pending(self, held: Any, answers: dict, approved: bool) -> None:
        with self._lock:
            self._pending.pop(held.id, None)
            self._answers.update(answers)
        if self.store is not None:
            with self._lock:
                keep = len(self._messages)
            self._save(keep, [])
        self._notify("on_tool_resolved", held, approved)

    def resolve_tool(self, tool_use_id: str, args: dict | None = None) -> ToolResult | None:
        """Approve a held tool call and run it now (with ``args`` instead of the model's, if given).

        Its result is held and sent by :meth:`continue_turn` once no call is
        pending. Waits for a turn in progress.

        Raises:
            PendingAlreadyResolved: it was approved or rejected already, here
                or by another process sharing the store.
            UnknownToolUseError: no held call has that id.
        """
        if args is not None and not isinstance(args, dict):
            raise ArgumentTypeError(f"args must be a dict of the tool's arguments, got {type(args).__name__}")
        token = self._enter_turn()
        try:
            held = self._claim_pending(tool_use_id, "approved")
            call = ToolUse(held.id, held.name, held.arguments if args is None else args)
            tool_round = run_tool_calls(self, Response(id="", model=self.model or "", content=(call,),
                                                       stop_reason=StopReason.TOOL_USE), gate=False, fresh=False)
            self._settle_pending(held, tool_round.answers, approved=True)
            return tool_round.answers.get(held.id)
        finally:
            self._exit_turn(token)

    def reject_tool(self, tool_use_id: str, reason: str = "") -> ToolResult:
        """Reject a held tool call: the model reads that it was rejected, and why.

        Raises:
            PendingAlreadyResolved: it was approved or rejected already.
            UnknownToolUseError: no held call has that id.
        """
        token = self._enter_turn()
        try:
            held = self._claim_pending(tool_use_id, "rejected")
            at = now()
            text = f"rejected by a person: {reason}" if reason else "rejected by a person"
            result = ToolResult(held.id, text, is_error=True, start_time=at, end_time=at)
            self._notify_result(ToolUse(held.id, held.name, held.arguments), result, None)
            self._settle_pending(held, {held.id: result}, approved=False)
            return result
        finally:
            self._exit_turn(token)

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
            call.announce(self)

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
            on_event: Callable[[StreamEvent], None] | None = None, tool_choice: Any = None,
            output: Any = None) -> Any:
        """Run the whole agent loop: send ``text``, run tools, send results, until done.

        One turn: sends from other threads wait until it ends. Stops when
        the model ends its turn, when a tool marked ``ends_turn`` ran, or
        when every tool call asked for no response; the results of that
        last round are held and sent first with your next message. A reply
        paused by the provider (``pause_turn``, long server-tool work) is
        continued. With ``on_event``, replies are streamed and each event is
        passed to it. ``tool_choice`` applies to the first request only (a
        forced tool every time would never end the loop).

        With ``output=T`` (an attrs class, a dataclass, a ``typing`` type, a
        JSON Schema dict or a :class:`convo.Output`), the final reply is
        parsed and validated into a ``T``, which is returned instead of the
        reply; one that does not fit is answered with what was wrong, within
        the same turn, until the model gets it right or runs out of attempts
        (see :mod:`convo.structured`).

        Args:
            max_turns: the most replies to ask for (with ``output``, per
                attempt); None for no limit.

        Raises:
            MaxTurnsExceeded: the model was still working after ``max_turns``
                replies (continue with :meth:`continue_turn`).
            OutputValidationError: with ``output``, no reply fit it.
            Cancelled: :meth:`cancel` was called; nothing more was sent.
            KeyboardInterrupt: a tool raised it.
        """
        limit = _check_max_turns(max_turns)
        message = self._user_message(Message.user(text, *other_contents))
        if output is not None:
            from . import structured

            output = structured.Output.of(output)  # a bad type fails here, before the turn
        token = self._enter_turn()
        try:
            if output is not None:
                return structured.run_in_turn(self, output, message, limit, on_event, tool_choice, token)
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
                pending = list(self._pending)
            if pending:
                raise ToolsPending(self.id, pending)
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
                if tool_round.pending:
                    self._hold_pending(tool_round.pending)
                    return attrs.evolve(response, pending_tools=tuple(tool_round.pending))
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
        d = self._state()
        with self._lock:
            d["messages"] = [m.to_dict() for m in self._messages]
        d["cumulative_usage"] = self.cumulative_usage().to_dict()
        return d

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
                the state is not a convo state (or is of a newer format).
        """
        try:
            messages = [Message.from_dict(m) for m in d.get("messages", [])]
        except ConvoError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"not a convo state: {type(exc).__name__}: {exc}") from None
        if "hooks" not in settings and d.get("hooks"):
            settings = {**settings, "hooks": cls._restore_hooks(d["hooks"], d, d.get("id", "?"))}
        c = cls._from_state(d, messages, service, tools=tools, listener=listener, prices=prices, parent=parent,
                            settings=settings)
        if d.get("cumulative_usage"):
            c._usage = CumulativeUsage.from_dict(d["cumulative_usage"])
        return c

    @classmethod
    def _from_state(cls, d: dict, messages: list[Message], service: Service | None, *, tools: Iterable[Tool],
                    listener: Any, prices: PriceTable | None, parent: "Convo | None", settings: dict,
                    without_tools: bool = False) -> "Convo":
        """A Convo from its state (:meth:`_state`) and history; ``without_tools`` loads it for accounting only."""
        try:
            if not isinstance(d, dict):
                raise TypeError("expected a JSON object")
            fmt = d.get("format", 1)
            if not isinstance(fmt, int) or fmt > STATE_FORMAT:
                raise ConfigurationError(f"conversation state format {fmt!r} is newer than this convo understands "
                                         f"({STATE_FORMAT}); upgrade convo")
            tools = tuple(tools)
            saved = sorted(t["name"] for t in d.get("tools", []))
            if not without_tools and sorted(t.name for t in tools) != saved:
                raise ConfigurationError(f"the conversation used the tools {saved}; pass exactly those with tools= "
                                         f"(got {sorted(t.name for t in tools)})")
            kwargs: dict[str, Any] = dict(
                system_prompt=d.get("system_prompt", ""),
                tool_choice=ToolChoice.from_dict(d["tool_choice"]) if d.get("tool_choice") and tools else None,
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
            held = [ToolResult.from_dict(r) for r in d.get("held_results", [])]
            pending = [PendingTool.from_dict(p) for p in d.get("pending_tools", [])]
            own = CumulativeUsage.from_dict(d["own_usage"]) if d.get("own_usage") else None
            last = Usage.from_dict(d.get("last_usage") or {})
            counted = tuple(d["counted_tokens"]) if d.get("counted_tokens") else None
            spent_before = Decimal((d.get("budget") or {}).get("spent_before", "0"))
        except ConvoError:
            raise
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ConfigurationError(f"not a convo state: {type(exc).__name__}: {exc}") from None
        c = cls(service, tools=() if without_tools else tools, listener=listener, prices=prices or PRICES,
                parent=parent, **kwargs)
        c._missing_tools = tuple(saved) if without_tools else ()
        c._messages = messages
        c._answers = {r.tool_use_id: r for r in held}
        c._pending = {p.id: p for p in pending}
        c._notified = set(d.get("announced_results", []))
        c._paused = bool(d.get("paused", False))
        c._counted = counted
        if own is not None:
            c._own_usage = own
            c._usage = own.copy()
        c._last_usage = last
        c._budget_start = spent_before
        c._closed = bool(d.get("closed", False))
        if parent is not None:
            parent._adopt(c)
        return c

    @classmethod
    def resume(cls, id: str, *, store: Any, service: Service | None = None, tools: Iterable[Tool] = (),
               listener: Any = None, prices: PriceTable | None = None, **settings: Any) -> "Convo":
        """A stored conversation, as it was: history, cumulative usage, budget, system prompt and settings.

        A sub-convo comes back with its parent (and the parent's ancestors),
        loaded from the same store so usage and budgets roll up as before;
        those ancestors are loaded without their tools, so to send on one,
        resume it by its own id.

        Args:
            id: the conversation's id.
            store: the store it was saved in.
            service: the model provider (None: the one its saved model picks).
            tools: the tools it used (exactly those names).
            listener: a listener, as for a new Convo.
            prices: a price table (default ``convo.PRICES``).
            settings: any other Convo setting, replacing the saved one.

        Raises:
            ConversationNotFound: no stored conversation has that id.
            ConversationUnreadable: its stored data does not decode.
            ConfigurationError: the tools given are not the ones it used.
        """
        stored = store.load(id)
        if service is None and "model" not in settings:
            from .providers.detect import default_service

            service = default_service(stored.state.get("model"))
        parent = None
        if stored.parent_id is not None:
            parent = cls._load_ancestor(stored.parent_id, store, service, listener, prices)
        if "hooks" not in settings and stored.state.get("hooks"):
            settings["hooks"] = cls._restore_hooks(stored.state["hooks"], stored.state, id)
        c = cls._from_state(stored.state, list(stored.messages), service, tools=tools, listener=listener,
                            prices=prices, parent=parent, settings={"store": store, **settings})
        c._version = stored.version
        c._usage.merge(store.subtree_usage(id))
        c._notify("on_state_loaded", stored.version)
        return c

    @staticmethod
    def _restore_hooks(saved: dict, state: dict, id: str) -> list:
        from .hooks import restorer_for

        hooks = []
        for key, hook_state in saved.items():
            restore = restorer_for(key)
            if restore is None:
                raise ConfigurationError(f"conversation {id!r} was saved with a {key!r} hook that nothing here "
                                         "can rebuild; pass hooks= to resume()")
            hooks.append(restore(hook_state, state))
        return hooks

    @classmethod
    def _load_ancestor(cls, id: str, store: Any, service: Service | None, listener: Any,
                       prices: PriceTable | None) -> "Convo":
        stored = store.load(id)
        parent = None
        if stored.parent_id is not None:
            parent = cls._load_ancestor(stored.parent_id, store, service, listener, prices)
        c = cls._from_state(stored.state, list(stored.messages), service, tools=(), listener=listener,
                            prices=prices, parent=parent, settings={"store": store}, without_tools=True)
        c._version = stored.version
        c._usage.merge(store.subtree_usage(id))
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


def resume(id: str, *, store: Any, service: Service | None = None, tools: Iterable[Tool] = (), listener: Any = None,
           prices: PriceTable | None = None, **settings: Any) -> Convo:
    """A stored conversation, as it was; see :meth:`Convo.resume`."""
    return Convo.resume(id, store=store, service=service, tools=tools, listener=listener, prices=prices, **settings)
