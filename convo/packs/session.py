"""The pack session: the hook that makes a :class:`~convo.Convo` run one prompt of a pack.

:func:`convo.open` builds a :class:`PackSession` and gives it to a plain
``Convo(hooks=[session])``; the Convo's pack methods (``set_var``,
``on_tool``...) reach it. At each request it renders the system template
from the current variables, applies the prompt's parameters and tool
policy, checks the user's message against input validators and fits the
history into the token budget; it checks every reply (and every streamed
chunk) against output validators, offers the pack's tools with the
handlers registered for them, and holds tool calls for approval.

Validation modes (``validation=``):

- ``"error"`` (default): a validator with ``fail_on_violation: true``
  that fails raises :class:`~convo.ValidationFailed`: an input failure
  sends nothing, an output failure keeps the reply out of the history (its
  cost is counted). Failures of the other validators are recorded on
  ``response.validations``, logged (``pack_validation_failed``) and reported
  to ``on_validation``. ``strict_validation=True`` makes every failure
  raise, as though each validator had ``fail_on_violation: true``.
- ``"warn"``: every validator runs and every failure is recorded, logged
  and reported; nothing is blocked.
- ``"disabled"``: no validator runs.

``disabled_validators=["banned_words", ...]`` switches validators off by type.
Replies that only call tools carry no text and are not validated.

Tool policy (the prompt's ``tool_policy``): ``tool_choice: required``
makes the first request of each turn call a tool (later ones may answer),
``none`` asks for no tool call; ``blocklist`` tools are neither offered nor
run; past ``max_tool_calls_per_turn`` calls in one turn, a call gets an
error result instead of running; after ``max_rounds`` rounds of tool calls
in one turn, the next request asks the model to answer without tools (and
a call it makes anyway gets an error result). A turn starts with each user
message that is not only tool results. Without a ``tool_policy`` nothing is
limited beyond ``run()``'s own ``max_turns``.

Media: a prompt's ``media`` rules (``enabled``, ``allowed_formats``,
``max_size_mb``, ``max_images_per_msg``) apply to the images and documents of
each user message before it is sent (:class:`~convo.UnsupportedContent`,
:class:`~convo.AttachmentTooLarge`).

Parameters: the prompt's ``parameters`` (and those of a ``model_overrides``
entry whose key is the model's name, or a ``*`` pattern matching it) fill
what a request leaves unset: settings given to :func:`convo.open`
(``temperature=``, ``max_tokens=``) win.

Thread safety: a session belongs to one Convo (a second one is refused).
Its variables and handlers sit behind a lock and may be set from any
thread; the hook methods run on the Convo's turn (tool gates on tool
rounds), and handlers are called without any lock held.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import threading
import weakref
from typing import Any, Callable, Mapping

import attrs

from .._log import log
from .._time import now
from ..budget import estimate_input_tokens
from ..errors import (
    ArgumentTypeError,
    AttachmentTooLarge,
    ConfigurationError,
    PackError,
    ToolNotInPack,
    UnsupportedContent,
    ValidationFailed,
    VariableError,
)
from ..hooks import Pending, ValidationResult
from ..messages import Document, Image, Request, Role, Text, ToolChoice, ToolResult, ToolUse
from ..service import TextDelta
from ..tools import Tool
from . import truncation as _truncation
from . import variables as _variables
from .model import Pack, Parameters, Prompt, ToolPolicy
from .templates import Template
from .validators import Check, compile_checks

__all__ = ["PackSession", "STATE_FORMAT"]

#: Version of :meth:`PackSession.to_state`'s layout.
STATE_FORMAT = 1

MODES = ("error", "warn", "disabled")
STRATEGIES = ("sliding", "summarize")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_UNSUPPORTED_FEATURES = ("conditionals", "loops", "filters")


def _turn_start(messages: list) -> int:
    """Where the current turn starts: the last user message that is not only tool results (0 if none)."""
    for i in range(len(messages) - 1, -1, -1):
        if _truncation._starts_turn(messages[i]):
            return i
    return 0


def _fresh_text(request: Request) -> str | None:
    """The text of the user message being sent, if it starts a turn (None for a tool round)."""
    if not request.messages or not _truncation._starts_turn(request.messages[-1]):
        return None
    return request.messages[-1].text() or None


class PackSession:
    """One prompt of a pack, running on a Convo: variables, tools, policy, validators, context limits.

    Made by :func:`convo.open` (and by :func:`convo.resume` from saved
    state); see the module docstring. Thread-safe as described there.

    Raises (on construction):
        PromptNotFound: the pack has no such prompt.
        PackError: the prompt uses a fragment the pack lacks, a validator of
            an unknown type, or a default that breaks its own variable's rules.
        VariableError: a value in ``variables`` is invalid.
        ConfigurationError: an option out of range.
    """

    state_key = "pack"

    def __init__(self, pack: Pack, prompt: str | None = None, *, variables: Mapping | None = None,
                 validation: str = "error", strict_validation: bool = False, disabled_validators: Any = (),
                 token_budget: int | None = None, truncation: str = "sliding",
                 skip_schema_validation: bool = False, environ: Mapping | None = None) -> None:
        if not isinstance(pack, Pack):
            raise ArgumentTypeError(f"expected a convo.Pack, got {type(pack).__name__}")
        if prompt is None:
            if len(pack.prompts) != 1:
                raise ConfigurationError(f"pack {pack.id} has {len(pack.prompts)} prompts "
                                         f"({sorted(pack.prompts)}); name the one to open")
            prompt = next(iter(pack.prompts))
        if not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt must be a prompt id (a str), got {type(prompt).__name__}")
        if validation not in MODES:
            raise ConfigurationError(f"validation must be one of {MODES}, got {validation!r}")
        if truncation not in STRATEGIES:
            raise ConfigurationError(f"truncation must be one of {STRATEGIES}, got {truncation!r}")
        if token_budget is not None and (isinstance(token_budget, bool) or not isinstance(token_budget, int)
                                         or token_budget < 1):
            raise ConfigurationError(f"token_budget must be a positive int or None, got {token_budget!r}")
        if (not isinstance(disabled_validators, (list, tuple, set, frozenset))
                or not all(isinstance(d, str) for d in disabled_validators)):
            raise ArgumentTypeError("disabled_validators must be a list of validator types (str)")
        self.pack = pack
        self.prompt: Prompt = pack.prompt(prompt)
        self.validation = validation
        self.strict_validation = bool(strict_validation)
        self.disabled_validators = tuple(disabled_validators)
        self.token_budget = token_budget
        self.truncation = truncation
        self.skip_schema_validation = bool(skip_schema_validation)
        self.policy: ToolPolicy | None = self.prompt.tool_policy
        source = pack.source or "<pack>"
        where = f"prompts.{self.prompt.key}"

        syntax = pack.template_engine.syntax
        try:
            self._template = Template(self.prompt.system_template, syntax=syntax, fragments=pack.fragments)
            self._overrides = {
                model: (o, Template(o.system_template, syntax=syntax, fragments=pack.fragments)
                        if o.system_template else None,
                        Template(o.system_template_prefix, syntax=syntax, fragments=pack.fragments),
                        Template(o.system_template_suffix, syntax=syntax, fragments=pack.fragments))
                for model, o in self.prompt.model_overrides.items()}
        except (KeyError, ValueError) as exc:
            raise PackError(source, [(f"{where}.system_template", str(exc).strip("'\""))]) from None
        if pack.template_engine.version not in ("v1", "1", "1.0"):
            log.warning("pack_template_engine_version_unknown", pack=source, version=pack.template_engine.version,
                        using="v1 (substitution and fragments)")
        unsupported = [f for f in pack.template_engine.features if f in _UNSUPPORTED_FEATURES]
        if unsupported:
            log.warning("pack_template_features_unsupported", pack=source, features=unsupported,
                        hint="templates are rendered by substitution and fragments only")
        self._checks: list[Check] = compile_checks(self.prompt.validators, source=source, where=where,
                                                   disabled=frozenset(self.disabled_validators))
        bad_defaults = []
        for v in self.prompt.variables:
            if v.has_default and v.default is not None:
                try:
                    _variables.convert(v, v.default)
                except _variables.BadValue as exc:
                    bad_defaults.append((f"{where}.variables[{self.prompt.variables.index(v)}].default",
                                         f"the default of {v.name!r} {exc}"))
        if bad_defaults:
            raise PackError(source, bad_defaults)

        blocked = set(self.policy.blocklist) if self.policy else set()
        self._tools: dict[str, Tool] = {}
        for name in self.prompt.tools:
            declared = pack.tools.get(name)
            if declared is None:
                log.info("pack_tool_not_declared", pack=source, prompt=self.prompt.key, tool=name,
                         hint="the pack declares no such tool; it must come from an MCP server")
                continue
            if name in blocked:
                continue
            self._tools[name] = Tool(declared.name, declared.description, declared.input_schema(),
                                     run=self._runner(name))

        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._handlers: dict[str, tuple[Callable, Callable | None]] = {}
        self._input_results: tuple = ()
        self._summary: dict | None = None  # {"text", "covers", "digest"}
        self._convo_ref: Any = None
        self._counter: tuple | None = None
        environ = os.environ if environ is None else environ
        bound = {}
        for v in self.prompt.variables:
            value = _variables.from_binding(v, environ)
            if value is not None:
                bound[v.name] = value
        if bound:
            self.set_vars(bound)
        if variables is not None and not isinstance(variables, Mapping):
            raise ArgumentTypeError(f"variables must be a dict of name -> value, got {type(variables).__name__}")
        if variables:
            self.set_vars(variables)

    def __repr__(self) -> str:
        return f"<PackSession {self.pack.id}/{self.prompt.key} validation={self.validation}>"

    # --- variables ---------------------------------------------------------------------

    def _converted(self, name: Any, value: Any) -> Any:
        if not isinstance(name, str) or not _NAME.match(name):
            raise VariableError([(str(name), "is not a variable name (letters, digits and _)")])
        try:
            value = _variables.convert(self.prompt.variable(name), value)
            json.dumps(value)
        except _variables.BadValue as exc:
            raise VariableError([(name, str(exc))]) from None
        except (TypeError, ValueError):
            raise VariableError([(name, f"must be JSON data (text, a number, true/false, a list or a dict), "
                                        f"got {type(value).__name__}")]) from None
        return value

    def set_var(self, name: str, value: Any) -> None:
        """Set one variable, converted to and checked against its declaration.

        Raises:
            VariableError: the value breaks the declaration (or is not JSON data).
        """
        value = copy.deepcopy(self._converted(name, value))  # the caller's list or dict stays theirs
        with self._lock:
            self._values[name] = value

    def set_vars(self, values: Mapping) -> None:
        """Set several variables: every one is checked before any is set.

        Raises:
            VariableError: naming every variable that is invalid.
        """
        if not isinstance(values, Mapping):
            raise ArgumentTypeError(f"expected a dict of name -> value, got {type(values).__name__}")
        converted, problems = {}, []
        for name, value in values.items():
            try:
                converted[name] = copy.deepcopy(self._converted(name, value))
            except VariableError as exc:
                problems.extend(exc.problems)
        if problems:
            raise VariableError(problems)
        with self._lock:
            self._values.update(converted)

    def set_vars_from_env(self, prefix: str, environ: Mapping | None = None) -> None:
        """Set variables from environment variables named ``PREFIX_NAME``: ``APP_CUSTOMER_NAME`` sets ``customer_name``.

        Every environment variable with the prefix is used (the rest of its
        name, lower-cased, is the variable's), so variables the prompt does
        not declare can be set too.
        """
        if not isinstance(prefix, str):
            raise ArgumentTypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if not prefix.strip("_"):
            raise ConfigurationError("set_vars_from_env needs a prefix (\"APP\" reads APP_NAME...), not every "
                                     "environment variable")
        environ = os.environ if environ is None else environ
        head = _variables.env_name(prefix, "")
        found = {key[len(head):].lower(): value for key, value in environ.items()
                 if key.startswith(head) and len(key) > len(head)}
        self.set_vars(found)

    def get_var(self, name: str) -> Any:
        """A variable's current value: what was set, else its declared default, else None if declared.

        Raises:
            VariableError: the prompt does not declare it and it was never set.
        """
        with self._lock:
            if name in self._values:
                return copy.deepcopy(self._values[name])
        declared = self.prompt.variable(name)
        if declared is None:
            raise VariableError([(str(name), "is not declared by the prompt and was never set")])
        return copy.deepcopy(declared.default) if declared.has_default else None

    def values(self) -> dict:
        """Every variable's value as a template sees it now (set, else default); unset ones are left out."""
        out = {v.name: v.default for v in self.prompt.variables if v.has_default}
        with self._lock:
            out.update(self._values)
        return out

    # --- rendering ------------------------------------------------------------------------

    def _override(self, model: str | None) -> Any:
        if not model or not self._overrides:
            return None
        if model in self._overrides:
            return self._overrides[model]
        for key, entry in self._overrides.items():
            if any(c in key for c in "*?[") and fnmatch.fnmatchcase(model, key):
                return entry
        return None

    def render_system(self, model: str | None = None) -> str:
        """The system prompt for ``model`` with the current variables.

        Raises:
            VariableError: a required variable (or one the template uses
                that the prompt does not declare) has no value; every one is named.
        """
        values = self.values()
        for v in self.prompt.variables:
            if not v.required and v.name not in values:
                values[v.name] = None  # an optional variable without a value reads as nothing
        missing = [(v.name, "is required but has no value (set it with set_var or variables=)")
                   for v in self.prompt.variables if v.required and values.get(v.name) is None]
        override = self._override(model)
        template = override[1] if override is not None and override[1] is not None else self._template
        parts = [template] if override is None else [override[2], template, override[3]]
        for part in parts:
            for name in part.variables():
                if name not in values and all(name != m for m, _ in missing):
                    missing.append((name, "is used by the template but the prompt does not declare it, "
                                          "and it has no value (set it with set_var)"))
        if missing:
            raise VariableError(missing)
        return "".join(p.render(values) for p in parts)

    def parameters(self, model: str | None = None) -> Parameters:
        """The prompt's parameters, with those of the model's override on top."""
        override = self._override(model)
        return self.prompt.parameters.merged(override[0].parameters if override is not None else None)

    # --- tools ------------------------------------------------------------------------------

    def _runner(self, name: str) -> Callable[[dict], Any]:
        def run(arguments: dict) -> Any:
            with self._lock:
                entry = self._handlers.get(name)
            if entry is None:
                log.warning("pack_tool_unhandled", pack=self.pack.id, tool=name,
                            hint=f"register a handler with convo.on_tool({name!r}, fn)")
                raise ConfigurationError(f"the pack tool {name!r} has no handler in this program "
                                         f"(register one with on_tool({name!r}, fn))")
            fn = entry[0]
            if isinstance(fn, Tool):
                return fn.run(arguments)
            return fn(**arguments)
        return run

    def on_tool(self, name: str, fn: Callable[..., Any], *, approve: Callable[[dict], Any] | None = None) -> None:
        """Handle the pack's tool ``name`` with ``fn``, called as ``fn(**arguments)`` (or a ``@convo.tool``).

        ``approve(arguments)`` runs before each call: None (or True) runs
        it, a :class:`convo.Pending` holds it for a person, False refuses it
        (the model reads that it was not approved).

        Raises:
            ToolNotInPack: the pack declares no tool called ``name``.
        """
        self.on_tools({name: fn}, approve={name: approve} if approve is not None else None)

    def on_tools(self, handlers: Mapping, *, approve: Mapping | None = None) -> None:
        """Handle several pack tools: ``{name: fn}`` (all checked before any is set)."""
        if not isinstance(handlers, Mapping):
            raise ArgumentTypeError(f"expected a dict of tool name -> function, got {type(handlers).__name__}")
        approve = dict(approve or {})
        for name, fn in handlers.items():
            if name not in self.pack.tools:
                raise ToolNotInPack(str(name), sorted(self.pack.tools))
            if not callable(fn):
                raise ArgumentTypeError(f"the handler for {name!r} must be callable, got {type(fn).__name__}")
            check = approve.get(name)
            if check is not None and not callable(check):
                raise ArgumentTypeError(f"approve for {name!r} must be callable(args), got {type(check).__name__}")
            if name not in self.prompt.tools:
                log.info("pack_tool_not_in_prompt", pack=self.pack.id, prompt=self.prompt.key, tool=name)
        with self._lock:
            for name, fn in handlers.items():
                self._handlers[name] = (fn, approve.get(name))

    def on_tool_http(self, name: str, url: str, *, method: str = "POST", headers: Mapping | None = None,
                     timeout: float = 30.0) -> None:
        """Handle the pack's tool ``name`` with an HTTP call: its arguments as JSON (GET: as the query).

        The reply's JSON (or text) is the tool's result; a status of 400 or
        more, or no answer within ``timeout`` seconds, is an error result.
        ``headers`` (say, an Authorization header) are sent with every call
        and never appear in errors or logs.
        """
        from urllib.parse import urlsplit

        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ConfigurationError(f"on_tool_http needs an http(s) URL, got {str(url)[:80]!r}")
        method = str(method).upper()
        if method not in _HTTP_METHODS:
            raise ConfigurationError(f"method must be one of {_HTTP_METHODS}, got {method!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if headers is not None and not isinstance(headers, Mapping):
            raise ArgumentTypeError(f"headers must be a dict, got {type(headers).__name__}")
        sent_headers = {"accept": "application/json", **{str(k): str(v) for k, v in (headers or {}).items()}}
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

        def call(**arguments: Any) -> Any:
            import requests

            kwargs: dict[str, Any] = {"headers": sent_headers, "timeout": timeout}
            if method == "GET":
                kwargs["params"] = arguments
            else:
                kwargs["json"] = arguments
            try:
                resp = requests.request(method, url, **kwargs)
            except requests.Timeout:
                raise RuntimeError(f"{method} {shown} did not answer within {timeout} s") from None
            except requests.RequestException as exc:
                raise RuntimeError(f"{method} {shown} failed: {type(exc).__name__}") from None
            body = resp.text
            if resp.status_code >= 400:
                raise RuntimeError(f"{method} {shown} answered {resp.status_code}: {body[:500]}")
            if "json" in resp.headers.get("content-type", ""):
                try:
                    return resp.json()
                except ValueError:
                    pass
            return body

        call.__doc__ = f"{method} {shown}"
        self.on_tool(name, call)

    def tools(self, convo: Any) -> list[Tool]:
        """The prompt's tools the pack declares and the policy does not block (the hook's ``tools``)."""
        return list(self._tools.values())

    # --- the hook -------------------------------------------------------------------------

    def _bind(self, convo: Any) -> None:
        bound = self._convo_ref() if self._convo_ref is not None else None
        if bound is convo:
            return
        if bound is not None:
            raise ConfigurationError(f"this pack session already runs convo {bound.id}; open the pack again for "
                                     "another conversation")
        self._convo_ref = weakref.ref(convo)

    def _blocks(self, check: Check) -> bool:
        return self.validation == "error" and (self.strict_validation or check.fail_on_violation)

    def _judge(self, convo: Any, direction: str, text: str) -> tuple:
        """Run the checks for ``direction`` on ``text``: the results, and the first blocking failure."""
        results = []
        blocking = None
        for check in self._checks:
            if not check.applies_to(direction):
                continue
            passed, details = check.judge(text)
            result = ValidationResult(check.type, passed, details, check.message, direction)
            results.append(result)
            convo._notify("on_validation", result)
            if not passed:
                if self._blocks(check):
                    blocking = blocking or (check, result)
                else:
                    log.warning("pack_validation_failed", convo_id=convo.id, validator=check.type,
                                direction=direction, details=details)
        return tuple(results), blocking

    def prepare_request(self, convo: Any, request: Request) -> Request:
        """Render the system prompt, apply parameters and policy, check the input, fit the budget."""
        self._bind(convo)
        model = convo.model
        system = self.render_system(model)
        changes: dict[str, Any] = {"system": (Text(system, cache=convo.prompt_caching),) if system else ()}

        if request.messages and self.prompt.media is not None:
            self._check_media(request.messages[-1])
        fresh = _fresh_text(request)
        input_results: tuple = ()
        if fresh is not None and self.validation != "disabled":
            input_results, blocking = self._judge(convo, "input", fresh)
            if blocking is not None:
                check, result = blocking
                raise ValidationFailed(check.type, "input", dict(result.details), check.message, input_results)
        with self._lock:
            self._input_results = input_results

        params = self.parameters(model)
        for name in ("temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
            if getattr(request, name) is None and getattr(params, name) is not None:
                changes[name] = getattr(params, name)

        policy = self.policy
        tools = request.tools
        if policy is not None and policy.blocklist:
            tools = tuple(t for t in tools if t.name not in policy.blocklist)
            changes["tools"] = tools
            if (request.tool_choice is not None and request.tool_choice.name is not None
                    and request.tool_choice.name in policy.blocklist):
                changes["tool_choice"] = ToolChoice.auto()
        if policy is not None and tools:
            rounds = sum(1 for m in request.messages[_turn_start(list(request.messages)):]
                         if m.role == Role.ASSISTANT and m.tool_uses())
            if policy.tool_choice == "none" or rounds >= policy.max_rounds:
                changes["tool_choice"] = ToolChoice.none()
            elif policy.tool_choice == "required" and fresh is not None:
                changes["tool_choice"] = ToolChoice.any()
        if not tools:
            changes["tool_choice"] = None
        request = attrs.evolve(request, **changes)
        if self.token_budget is not None:
            request = self._fit(convo, request)
        return request

    def _check_media(self, message: Any) -> None:
        """The prompt's ``media`` rules on the user's attachments: enabled, formats, sizes, images per message."""
        media = self.prompt.media
        blocks = [b for b in message.content if isinstance(b, (Image, Document))]
        if not blocks:
            return
        if not media.get("enabled", False):
            raise UnsupportedContent(f"the prompt {self.prompt.key!r}", "attachments",
                                     "its pack turns media off (media.enabled is false)")
        images = [b for b in blocks if isinstance(b, Image)]
        rules = media.get("image") or {}
        if rules.get("max_images_per_msg") is not None and len(images) > rules["max_images_per_msg"]:
            raise UnsupportedContent(f"the prompt {self.prompt.key!r}", f"{len(images)} images in one message",
                                     f"its pack allows {rules['max_images_per_msg']}")
        for block in blocks:
            kind = "image" if isinstance(block, Image) else "document"
            rules = media.get(kind) or {}
            media_type = block.media_type or ""
            allowed = [str(f).lower() for f in rules.get("allowed_formats") or ()]
            subtype = media_type.split("/")[-1].lower()
            if allowed and block.url is None and subtype not in allowed and media_type.lower() not in allowed \
                    and not (subtype == "jpeg" and "jpg" in allowed):
                raise UnsupportedContent(f"the prompt {self.prompt.key!r}", f"{kind}s of type {media_type}",
                                         f"its pack allows {allowed}")
            limit = rules.get("max_size_mb")
            if limit is not None and block.data is not None:
                size = len(block.data) * 3 // 4 - block.data[-2:].count("=")
                if size > limit * 1024 * 1024:
                    raise AttachmentTooLarge(f"an {kind} for the prompt {self.prompt.key!r}", size,
                                             limit * 1024 * 1024)

    def check_stream(self, convo: Any, event: Any, text: str) -> None:
        """Stop a streamed reply at the first chunk that breaks a blocking output validator."""
        if self.validation != "error" or not isinstance(event, TextDelta):
            return
        for check in self._checks:
            if not (check.streams and check.applies_to("output") and self._blocks(check)):
                continue
            passed, details = check.judge(text, streamed=True)
            if not passed:
                result = ValidationResult(check.type, False, {"streamed": True, **details}, check.message, "output")
                convo._notify("on_validation", result)
                with self._lock:
                    earlier, self._input_results = self._input_results, ()
                raise ValidationFailed(check.type, "output", dict(result.details), check.message,
                                       earlier + (result,))

    def check_response(self, convo: Any, response: Any) -> Any:
        """Check the reply's text: results on ``response.validations``; a blocking failure raises."""
        with self._lock:
            earlier, self._input_results = self._input_results, ()
        text = response.text()
        output: tuple = ()
        blocking = None
        if text and self.validation != "disabled":
            output, blocking = self._judge(convo, "output", text)
        results = earlier + output
        if blocking is not None:
            check, result = blocking
            raise ValidationFailed(check.type, "output", dict(result.details), check.message, results)
        if not results:
            return None
        return attrs.evolve(response, validations=tuple(response.validations) + results)

    def gate_tool_call(self, convo: Any, tool_use: ToolUse) -> Any:
        """Enforce the tool policy, then ask the handler's ``approve``: None, a Pending or an error result."""
        policy = self.policy
        if policy is not None:
            refusal = None
            if tool_use.name in policy.blocklist:
                refusal = f"the tool {tool_use.name!r} is blocked by this prompt's tool policy; it did not run"
            else:
                history = convo.messages
                turn = history[_turn_start(history):]
                calls = [tu.id for m in turn if m.role == Role.ASSISTANT for tu in m.tool_uses()]
                rounds = sum(1 for m in turn if m.role == Role.ASSISTANT and m.tool_uses())
                position = calls.index(tool_use.id) if tool_use.id in calls else len(calls)
                if position >= policy.max_tool_calls_per_turn:
                    refusal = (f"not run: this prompt allows at most {policy.max_tool_calls_per_turn} tool calls "
                               "per turn; answer with what you have")
                elif rounds > policy.max_rounds:
                    refusal = (f"not run: this prompt allows at most {policy.max_rounds} rounds of tool calls "
                               "per turn; answer with what you have")
            if refusal is not None:
                log.info("pack_tool_refused", convo_id=convo.id, tool=tool_use.name, reason=refusal)
                at = now()
                return ToolResult(tool_use.id, refusal, is_error=True, start_time=at, end_time=at)
        with self._lock:
            entry = self._handlers.get(tool_use.name)
        approve = entry[1] if entry is not None else None
        if approve is None:
            return None
        arguments = dict(tool_use.input) if isinstance(tool_use.input, dict) else {}
        try:
            decision = approve(arguments)
        except Exception as exc:  # a failing check must neither run the call nor crash the turn
            log.warning("pack_approval_check_failed", convo_id=convo.id, tool=tool_use.name,
                        error=f"{type(exc).__name__}: {exc}")
            at = now()
            return ToolResult(tool_use.id, f"not run: the approval check failed ({type(exc).__name__})",
                              is_error=True, start_time=at, end_time=at)
        if decision is None or decision is True:
            return None
        if isinstance(decision, Pending):
            return decision
        at = now()
        if decision is False:
            return ToolResult(tool_use.id, "not approved: the call was refused", is_error=True, start_time=at,
                              end_time=at)
        log.warning("pack_approval_check_bad_answer", tool=tool_use.name, answer=type(decision).__name__)
        return ToolResult(tool_use.id, "not run: the approval check gave no clear answer", is_error=True,
                          start_time=at, end_time=at)

    # --- context limits ---------------------------------------------------------------------

    def _fit(self, convo: Any, request: Request) -> Request:
        if self._counter is None:
            self._counter = _truncation.token_counter(convo.service)
        count, how = self._counter
        budget = self.token_budget
        if how != "estimate" and estimate_input_tokens(request) <= budget:
            # convo's budget estimate never counts low (a token per byte, generous allowances): a
            # request under it fits, and the provider need not be asked (for Anthropic, a request).
            return request
        total = count(request)
        if total <= budget:
            return request
        if self.truncation == "sliding":
            fitted, cut, tokens = _truncation.fit(request, budget, count, total=total)
            if cut:
                convo._notify("on_context_trimmed", _truncation.ContextTrimmed("sliding", cut, total, tokens,
                                                                               budget))
            return fitted
        return self._summarised(convo, request, budget, count, total)

    def _summarised(self, convo: Any, request: Request, budget: int, count: Callable, total: int) -> Request:
        # Room for the summary itself: a quarter of the budget, at most 1,000 tokens.
        allowance = max(1, min(budget // 4, 1_000))
        fitted, cut, _ = _truncation.fit(request, budget, count, reserve=allowance, total=total)
        if not cut:
            return request
        messages = list(request.messages)
        with self._lock:
            summary = dict(self._summary) if self._summary else None
        if summary and summary["covers"] == cut and summary["digest"] == _truncation.digest(messages[:cut]):
            text = summary["text"]
        elif summary and 0 < summary["covers"] < cut and summary["digest"] == _truncation.digest(
                messages[:summary["covers"]]):
            text = _truncation.summarize(convo, messages[summary["covers"]:cut], summary["text"], allowance)
        else:
            text = _truncation.summarize(convo, messages[:cut], None, allowance)
        with self._lock:
            self._summary = {"text": text, "covers": cut, "digest": _truncation.digest(messages[:cut])}
        result = attrs.evolve(request, messages=_truncation.with_summary(messages[cut:], text))
        tokens = count(result)
        convo._notify("on_context_trimmed",
                      _truncation.ContextTrimmed("summarize", cut, total, tokens, budget, text))
        return result

    # --- persistence ------------------------------------------------------------------------

    def to_state(self) -> dict:
        """What a store keeps for this session: the pack itself, the prompt, variables, settings, summary.

        The pack's content is saved (not just its path): a resumed
        conversation runs the pack it started with, even if the file moved
        or changed. Tool handlers are code and are not saved: register them
        again after :func:`convo.resume`.
        """
        with self._lock:
            values = dict(self._values)
            summary = dict(self._summary) if self._summary else None
        return {
            "format": STATE_FORMAT,
            "pack": self.pack.to_dict(),
            "source": self.pack.source,
            "prompt": self.prompt.key,
            "variables": values,
            "validation": self.validation,
            "strict_validation": self.strict_validation,
            "disabled_validators": list(self.disabled_validators),
            "token_budget": self.token_budget,
            "truncation": self.truncation,
            "skip_schema_validation": self.skip_schema_validation,
            "summary": summary,
        }

    @classmethod
    def from_state(cls, saved: dict, convo_state: dict | None = None) -> "PackSession":
        """Rebuild a session from :meth:`to_state` (the restorer :func:`convo.resume` calls).

        Raises:
            ConfigurationError: the state is not a pack session's, or is of a newer format.
        """
        from .loader import pack_from_dict

        if not isinstance(saved, dict) or not isinstance(saved.get("pack"), dict):
            raise ConfigurationError("not a saved pack session")
        fmt = saved.get("format", 1)
        if not isinstance(fmt, int) or fmt > STATE_FORMAT:
            raise ConfigurationError(f"the saved pack session has format {fmt!r}, newer than this convo "
                                     f"understands ({STATE_FORMAT}); upgrade convo")
        pack = pack_from_dict(saved["pack"], source=saved.get("source"),
                              skip_schema_validation=bool(saved.get("skip_schema_validation")))
        session = cls(pack, saved.get("prompt"), validation=saved.get("validation", "error"),
                      strict_validation=saved.get("strict_validation", False),
                      disabled_validators=saved.get("disabled_validators") or (),
                      token_budget=saved.get("token_budget"), truncation=saved.get("truncation", "sliding"),
                      skip_schema_validation=bool(saved.get("skip_schema_validation")))
        session.set_vars(saved.get("variables") or {})
        summary = saved.get("summary")
        if isinstance(summary, dict) and {"text", "covers", "digest"} <= set(summary):
            session._summary = dict(summary)
        return session


def restore(saved: dict, convo_state: dict) -> PackSession:
    """The restorer registered for the ``"pack"`` hook key (see :mod:`convo.hooks`)."""
    return PackSession.from_state(saved, convo_state)
