"""Tools the model can call: :class:`Tool`, the :func:`tool` decorator and what a tool returns.

A tool is a name, a description, a JSON Schema for its input and a ``run``
callable that receives the input as a dict. ``@tool`` builds all of that
from an ordinary typed function and its docstring::

    @tool
    def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Current weather in a city.

        Args:
            city: the city's name, e.g. "Paris".
            unit: temperature unit.
        \"\"\"
        ...

A tool returns a string, a list of content blocks, or a :class:`ToolOut`
(content, a display value for people, and an error flag). Raising is fine:
the model gets an error result it can read. Raising :class:`DoNotRespond`
sends no result at all.

Tools run on worker threads, several at once; inside one,
:func:`tool_call_info` tells which call it is and carries the
``cancelled`` event to poll during long work.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import re
import threading
import types
import typing
from typing import Any, Callable, Literal, Union

from attrs import field, frozen

from .errors import ToolDefinitionError
from .messages import Document, Image, RawBlock, Text, ToolSpec

__all__ = [
    "DoNotRespond",
    "Tool",
    "ToolCallInfo",
    "ToolOut",
    "tool",
    "tool_call_info",
]

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class DoNotRespond(Exception):
    """Raised by a tool to send no result for its call.

    Flow control, not an error: use it for tools whose effect is the whole
    point (handing the turn to a person, say) when ``Convo.run()`` should
    stop without reporting back to the model.
    """


@frozen
class ToolOut:
    """A tool's full return value: ``content`` for the model, ``display`` for people.

    ``error=True`` marks the result as an error the model should see as such.
    """

    content: Any = ""
    display: Any = None
    error: bool = False


def _check_name(instance, attribute, value):
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ToolDefinitionError(
            f"tool name {value!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )


def _check_schema(instance, attribute, value):
    if not isinstance(value, dict) or value.get("type") != "object":
        raise ToolDefinitionError(
            f"tool {instance.name!r}: input_schema must be a JSON Schema object with \"type\": \"object\""
        )
    import jsonschema  # deferred: a fifth of convo's import time, needed only once tools exist

    try:
        jsonschema.Draft202012Validator.check_schema(value)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"tool {instance.name!r}: invalid input_schema: {exc.message}") from None


def _check_run(instance, attribute, value):
    if not callable(value):
        raise ToolDefinitionError(f"tool {instance.name!r}: run must be callable, got {type(value).__name__}")


@frozen
class Tool:
    """A tool the model may call.

    Args:
        name: what the model calls it (letters, digits, ``_``, ``-``).
        description: what it does and when to use it, for the model.
        input_schema: JSON Schema (an object) the model's input must match;
            convo validates every call against it before running ``run``.
        run: called with the input dict; returns a string, content blocks
            or a :class:`ToolOut`.
        ends_turn: when true, ``Convo.run()`` stops after this tool runs
            instead of sending its result back.

    Immutable; ``run`` is called from worker threads, possibly several
    calls at once, so it must be thread-safe itself.
    """

    name: str = field(validator=_check_name)
    description: str = ""
    input_schema: dict = field(factory=lambda: {"type": "object", "properties": {}},
                               validator=_check_schema)
    run: Callable[[dict], Any] = field(default=None, validator=_check_run, repr=False)
    ends_turn: bool = False
    _validator: Any = field(init=False, default=None, repr=False, eq=False)

    def spec(self) -> ToolSpec:
        """What the model is told about this tool."""
        return ToolSpec(self.name, self.description, self.input_schema)

    def validation_errors(self, tool_input: Any) -> list[str]:
        """Why ``tool_input`` does not match the schema (empty if it does)."""
        if isinstance(tool_input, str):
            # A provider keeps arguments it could not parse as the raw text (see convo.openai).
            snippet = tool_input if len(tool_input) <= 200 else tool_input[:200] + "..."
            return [f"input must be a JSON object; the arguments sent were not valid JSON: {snippet!r}"]
        if not isinstance(tool_input, dict):
            return [f"input must be a JSON object, got {type(tool_input).__name__}"]
        validator = self._validator
        if validator is None:
            import jsonschema

            # Built on first use; a race builds two identical validators, which is harmless.
            validator = jsonschema.Draft202012Validator(self.input_schema)
            object.__setattr__(self, "_validator", validator)
        errors = sorted(validator.iter_errors(tool_input), key=lambda e: list(e.absolute_path))
        out = []
        for e in errors:
            where = "/".join(str(p) for p in e.absolute_path)
            out.append(f"{where}: {e.message}" if where else e.message)
        return out

    def __call__(self, **kwargs) -> Any:
        """Run the tool directly (handy in tests): ``weather(city="Paris")``."""
        return self.run(kwargs)


# --- the current tool call ---------------------------------------------------

@frozen
class ToolCallInfo:
    """Which tool call is running: its id, the convo that made it, and its cancel signal.

    ``cancelled`` is a :class:`threading.Event`: a long-running tool should
    check it (or wait on it) and return early once it is set; its result is
    discarded by then anyway.
    """

    tool_use_id: str
    convo: Any = field(repr=lambda c: f"<Convo {getattr(c, 'id', '?')}>")
    cancelled: threading.Event = field(factory=threading.Event, repr=False)


_current_call: contextvars.ContextVar[ToolCallInfo | None] = contextvars.ContextVar(
    "convo_tool_call", default=None
)


def tool_call_info() -> ToolCallInfo | None:
    """Inside a running tool: its :class:`ToolCallInfo`. Elsewhere: None."""
    return _current_call.get()


# --- @tool -------------------------------------------------------------------

def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None,
         ends_turn: bool = False) -> Any:
    """Turn a typed, documented function into a :class:`Tool`.

    The input schema comes from the parameters' type hints (str, int, float,
    bool, list/tuple/set, dict, Optional/Union, Literal, Enum, and
    ``Annotated[T, "description"]``); parameters with defaults are optional.
    The description is the docstring's text before its sections, and each
    parameter's description comes from the docstring's ``Args:`` section.

    Use bare (``@tool``) or with options (``@tool(name="x", ends_turn=True)``).

    Raises:
        ToolDefinitionError: a parameter has no type hint, or one that JSON
            Schema cannot express.
    """

    def build(f: Callable) -> Tool:
        return _tool_from_function(f, name=name, description=description, ends_turn=ends_turn)

    return build(fn) if fn is not None else build


def _tool_from_function(fn: Callable, *, name, description, ends_turn) -> Tool:
    tool_name = name or fn.__name__
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot read type hints: {exc}") from None
    sig = inspect.signature(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {tool_name!r}: *args and **kwargs cannot be tool inputs")
        if pname not in hints:
            raise ToolDefinitionError(f"tool {tool_name!r}: parameter {pname!r} needs a type hint")
        try:
            schema = _schema_for(hints[pname])
        except TypeError as exc:
            raise ToolDefinitionError(f"tool {tool_name!r}: parameter {pname!r}: {exc}") from None
        if pname in arg_docs and "description" not in schema:
            schema["description"] = arg_docs[pname]
        if param.default is param.empty:
            required.append(pname)
        elif _json_safe(param.default):
            schema["default"] = _json_default(param.default)
        properties[pname] = schema
    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = required
    input_schema["additionalProperties"] = False

    def run(tool_input: dict) -> Any:
        return fn(**tool_input)

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    run.__name__ = getattr(fn, "__name__", tool_name)
    return Tool(tool_name, description if description is not None else summary, input_schema, run,
                ends_turn=ends_turn)


def _json_safe(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, enum.Enum, list, tuple, dict))


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _schema_for(hint: Any) -> dict:
    """JSON Schema for a type hint (raises TypeError when it cannot be expressed)."""
    if hint is Any:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = _schema_for(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
        return schema
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        schemas = [_schema_for(a) for a in non_null]
        if len(non_null) < len(args):
            schemas.append({"type": "null"})
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, typing.Sequence):
        schema: dict[str, Any] = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["prefixItems"] = [_schema_for(a) for a in args]
            schema["minItems"] = schema["maxItems"] = len(args)
        elif args:
            schema["items"] = _schema_for(args[0])
        if origin in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if hint is dict or origin in (dict, typing.Mapping):
        schema = {"type": "object"}
        if len(args) == 2:
            if args[0] is not str:
                raise TypeError("dict keys must be str in JSON")
            schema["additionalProperties"] = _schema_for(args[1])
        return schema
    raise TypeError(f"type {hint!r} has no JSON Schema equivalent; use Tool(...) with an explicit schema")


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_RE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its summary and its ``Args:`` descriptions."""
    lines = doc.splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section = None
    current = None
    arg_indent = None
    for line in lines:
        stripped = line.strip()
        header = _SECTION_RE.match(stripped)
        if header and (len(line) - len(line.lstrip())) == 0:
            section = header.group(1).lower()
            current, arg_indent = None, None
            continue
        if section is None:
            summary.append(line)
            continue
        if section not in ("args", "arguments", "parameters") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_RE.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None:
            args[current] = (args[current] + " " + stripped).strip()
    return "\n".join(summary).strip(), args


def to_content(value: Any) -> tuple:
    """Content blocks for what a tool returned (raises TypeError for what cannot be sent)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (Text(value),)
    if isinstance(value, (Text, Image, Document, RawBlock)):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (Text, Image, Document, RawBlock)) for v in value
    ):
        return tuple(value)
    # Numbers, dicts and lists of plain values are sent as their JSON text.
    import json

    try:
        return (Text(json.dumps(value, ensure_ascii=False)),)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a tool must return str, content blocks or ToolOut; got {type(value).__name__} "
                        f"that is not JSON-serialisable ({exc})") from None

