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

The function receives its arguments as the types it declares, not as raw
JSON: an ``Enum`` parameter gets a member, a ``float`` gets a float even when
the model wrote ``1``, ``tuple``/``set`` parameters get tuples and sets, and a
dataclass or attrs class parameter gets an instance built from the object the
model sent, recursively through lists, dicts and unions (see :func:`tool` for
the full list). Each type hint yields both the schema the model sees and the
converter, so the two cannot disagree. An input that does not convert raises
:class:`ToolInputError` naming the place (``points[1].x: expected a number,
got "abc"``), which the model reads as an error result.

``@tool`` also accepts a ``functools.partial`` (the bound arguments are left
out of the schema), a callable object and a bound method.

A tool returns a string, a list of content blocks, or a :class:`ToolOut`
(content, a display value for people, and an error flag). Raising is fine:
the model gets an error result it can read. Raising :class:`DoNotRespond`
sends no result at all.

Tools run on worker threads, several at once; inside one,
:func:`tool_call_info` tells which call it is and carries the
``cancelled`` event to poll during long work.
"""

from __future__ import annotations

import collections.abc as abc
import contextvars
import dataclasses
import datetime as dt
import enum
import functools
import inspect
import json
import re
import types
import typing
from typing import Any, Callable, Literal, Union

import attrs
from attrs import field, frozen

from ._cancel import CancelToken
from .errors import ConvoError, ToolDefinitionError
from .messages import Text, ToolSpec, is_content, tool_result_content

__all__ = [
    "DoNotRespond",
    "Tool",
    "ToolCallInfo",
    "ToolInputError",
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


class ToolInputError(ConvoError, ValueError):
    """A tool's input does not fit its parameters' types.

    ``@tool`` raises it when an argument cannot be converted to its annotated
    type; a tool may raise it too, for input it cannot use. The model reads
    the message as an error result, so it says where and what:
    ``points[1].x: expected a number, got "abc"``.

    Args:
        problem: what is wrong, e.g. ``expected a number, got "abc"``.
        path: where in the input, e.g. ``points[1].x`` ("" for the whole input).
    """

    def __init__(self, problem: str, path: str = "") -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path else problem)


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
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"tool {instance.name!r}: input_schema is not JSON: {exc}") from None
    problem = _schema_problem(text)
    if problem is not None:
        raise ToolDefinitionError(f"tool {instance.name!r}: invalid input_schema: {problem}")


@functools.lru_cache(maxsize=1024)
def _schema_problem(schema_json: str) -> str | None:
    """What is wrong with a JSON Schema (None if nothing), remembered per schema.

    Checking a schema against the metaschema costs most of a millisecond;
    the same tool definitions are built again and again (per server request,
    per sub-agent), and the answer never changes.
    """
    import jsonschema  # deferred: a fifth of convo's import time, needed only once tools exist

    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(schema_json))
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


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
            # A provider keeps arguments it could not parse as the raw text (see convo.providers.openai).
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

    ``cancelled`` behaves as a :class:`threading.Event` (``is_set()``,
    ``wait(timeout)``): a long-running tool should check it (or wait on it)
    and return early once it is set; its result is discarded by then anyway.
    Sub-convos the tool creates with ``convo.sub_convo()`` inherit it: when
    the call is cancelled, they are cancelled too.
    """

    tool_use_id: str
    convo: Any = field(repr=lambda c: f"<Convo {getattr(c, 'id', '?')}>")
    cancelled: CancelToken = field(factory=CancelToken, repr=False)


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

    The input schema comes from the parameters' type hints, and each argument
    is converted to its hint's type before ``fn`` is called:

    - ``str``, ``int``, ``float`` (a JSON ``1`` arrives as ``1.0``), ``bool``,
      ``None`` and ``Any`` (passed as is);
    - ``Enum`` subclasses: the schema lists the values, the function gets the
      member; ``Literal[...]`` of JSON values or enum members;
    - ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]`` (exactly those items),
      ``set[T]`` and ``frozenset[T]`` (``uniqueItems``), from JSON arrays;
      ``Sequence``, ``Iterable`` and ``Collection`` arrive as lists, abstract
      ``Set`` as a set;
    - ``dict[str, T]`` and ``Mapping[str, T]``, from JSON objects (keys may
      also be a str-valued Enum or Literal);
    - dataclasses and attrs classes: an object with their ``__init__``
      fields (required unless they have a default, nothing else allowed),
      built into an instance; field descriptions come from ``Annotated``
      or the class docstring's ``Attributes:`` section;
    - ``datetime``, ``date`` and ``time``, from ISO 8601 strings;
    - ``Optional[T]`` / ``T | None``, and unions, whose members are tried in
      the order written (``None`` first) until one converts;
    - ``Annotated[T, "description"]``, and all of these nested in each other.

    Parameters with defaults are optional (the default shows in the schema).
    The description is the docstring's text before its sections, and each
    parameter's description comes from the docstring's ``Args:`` section.
    An argument that does not convert raises :class:`ToolInputError`, which
    the model reads as an error result.

    ``fn`` may also be a ``functools.partial`` (its bound arguments are left
    out of the schema; the tool is named after the wrapped function), a
    callable object (named after its class in snake_case, documented by its
    ``__call__`` or its class) or a bound method.

    Use bare (``@tool``) or with options (``@tool(name="x", ends_turn=True)``).

    Raises:
        ToolDefinitionError: a parameter has no type hint, one that JSON
            Schema cannot express, or is positional-only (tool inputs are
            passed by name); or ``fn`` takes ``*args`` or ``**kwargs``.
    """

    def build(f: Callable) -> Tool:
        return _tool_from_function(f, name=name, description=description, ends_turn=ends_turn)

    return build(fn) if fn is not None else build


def _tool_from_function(fn: Callable, *, name, description, ends_turn) -> Tool:
    inner, bound = _unwrap_partial(fn)
    tool_name = name or _default_name(inner)
    summary, arg_docs = _parse_docstring(_docstring(inner))
    try:
        hints = typing.get_type_hints(_annotated(inner), include_extras=True)
        sig = inspect.signature(fn)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot read type hints: {exc}") from None
    fields: list[_Field] = []
    for pname, param in sig.parameters.items():
        if pname in bound:
            continue  # fixed by functools.partial; the model cannot change it
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {tool_name!r}: *args and **kwargs cannot be tool inputs")
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolDefinitionError(f"tool {tool_name!r}: parameter {pname!r} is positional-only, "
                                      "but tool inputs are passed by name")
        if pname not in hints:
            raise ToolDefinitionError(f"tool {tool_name!r}: parameter {pname!r} needs a type hint")
        try:
            shape = _shape_for(hints[pname])
        except TypeError as exc:
            raise ToolDefinitionError(f"tool {tool_name!r}: parameter {pname!r}: {exc}") from None
        required = param.default is param.empty
        fields.append(_Field(pname, shape, required, _NO if required else _to_json(param.default),
                             arg_docs.get(pname, "")))
    arguments = _object_shape(fields, None, "an object")

    def run(tool_input: dict) -> Any:
        return fn(**arguments.convert(tool_input, ""))

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    run.__name__ = getattr(fn, "__name__", tool_name)
    return Tool(tool_name, description if description is not None else summary, arguments.schema, run,
                ends_turn=ends_turn)


def _unwrap_partial(fn: Callable) -> tuple[Callable, set[str]]:
    """The callable behind ``fn``'s ``functools.partial`` layers, and the keywords they bind."""
    bound: set[str] = set()
    while isinstance(fn, functools.partial):
        bound.update(fn.keywords)
        fn = fn.func
    return fn, bound


def _is_callable_object(fn: Callable) -> bool:
    return not (inspect.isroutine(fn) or inspect.isclass(fn))


def _annotated(fn: Callable) -> Callable:
    """Where ``fn``'s parameter annotations live: a callable object keeps them on its ``__call__``."""
    return type(fn).__call__ if _is_callable_object(fn) else fn


def _default_name(fn: Callable) -> str:
    if _is_callable_object(fn):
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type(fn).__name__).lower()
    return fn.__name__


def _docstring(fn: Callable) -> str:
    if _is_callable_object(fn):
        # Their own docstrings only: inspect.getdoc would find type.__call__'s "Call self as a function."
        doc = getattr(type(fn).__call__, "__doc__", None) or type(fn).__doc__
        return inspect.cleandoc(doc) if doc else ""
    return inspect.getdoc(fn) or ""


# --- types: one walk of a type hint gives its schema and its converter ----------

class _Missing:
    def __repr__(self) -> str:
        return "<no value>"


_NO: Any = _Missing()


@frozen
class _Shape:
    """What a type hint means for a tool input: its JSON Schema and how to convert JSON to it.

    ``convert(value, path)`` returns the Python value for a JSON ``value``
    (a value that already has the Python type passes through, so calling a
    tool directly with real objects works) or raises :class:`ToolInputError`
    naming ``path``. ``expected`` says in words what fits ("an integer").
    """

    schema: dict
    convert: Callable[[Any, str], Any]
    expected: str


@frozen
class _Field:
    """One property of an object shape: a tool parameter or a dataclass or attrs field."""

    name: str
    shape: _Shape
    required: bool
    default: Any = _NO  # as JSON, for the schema; _NO when there is none to show
    doc: str = ""


def _shape_for(hint: Any, seen: frozenset = frozenset()) -> _Shape:
    """The :class:`_Shape` of a type hint (TypeError when JSON cannot express it).

    ``seen`` holds the classes being walked, to refuse a class that contains itself.
    """
    if hint is Any:
        return _Shape({}, lambda value, path: value, "any value")
    if hint is None:
        hint = type(None)
    if isinstance(hint, typing.NewType):
        return _shape_for(hint.__supertype__, seen)
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            return _enum_shape(hint)
        if hint in _SCALARS:
            return _scalar_shape(*_SCALARS[hint])
        if hint in _ISO_FORMATS:
            return _iso_shape(hint)
        if dataclasses.is_dataclass(hint) or attrs.has(hint):
            return _class_shape(hint, seen)
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        inner = _shape_for(args[0], seen)
        docs = [extra for extra in args[1:] if isinstance(extra, str)]
        return attrs.evolve(inner, schema={**inner.schema, "description": docs[-1]}) if docs else inner
    if origin is Literal:
        return _literal_shape(args)
    if origin in (Union, types.UnionType):
        return _union_shape(args, seen)
    if origin in _ARRAYS:
        fixed = typing.get_origin(hint) is tuple and not (args and args[-1] is Ellipsis)
        if args == ((),):  # tuple[()] on Python 3.10
            args = ()
        return _array_shape(_ARRAYS[origin], args, fixed, seen)
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        return _mapping_shape(args, seen)
    raise TypeError(f"type {hint!r} has no JSON Schema equivalent; use Tool(...) with an explicit schema")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# type: (JSON type, expected, accepts, converts)
_SCALARS: dict[type, tuple[str, str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    str: ("string", "a string", lambda v: isinstance(v, str), lambda v: v),
    # JSON Schema counts 2.0 as an integer, so the converter must too.
    int: ("integer", "an integer", lambda v: _number(v) and float(v).is_integer(), int),
    float: ("number", "a number", _number, float),
    bool: ("boolean", "true or false", lambda v: isinstance(v, bool), lambda v: v),
    type(None): ("null", "null", lambda v: v is None, lambda v: v),
}


def _scalar_shape(json_type: str, expected: str, accepts: Callable, converts: Callable) -> _Shape:
    def convert(value: Any, path: str) -> Any:
        if accepts(value):
            try:
                return converts(value)
            except (OverflowError, ValueError):  # float(10**400), int(inf)
                pass
        raise _mismatch(path, expected, value)

    return _Shape({"type": json_type}, convert, expected)


_ISO_FORMATS = {
    dt.datetime: ("date-time", "an ISO 8601 date and time, e.g. \"2024-05-01T13:30:00+02:00\""),
    dt.date: ("date", "an ISO 8601 date, e.g. \"2024-05-01\""),
    dt.time: ("time", "an ISO 8601 time, e.g. \"13:30:00\""),
}


def _iso_shape(cls: type) -> _Shape:
    fmt, expected = _ISO_FORMATS[cls]

    def convert(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls.fromisoformat(value)  # type: ignore[attr-defined]
            except ValueError:
                pass
        raise _mismatch(path, expected, value)

    return _Shape({"type": "string", "format": fmt}, convert, expected)


def _choice_shape(choices: list[tuple[Any, Any]]) -> _Shape:
    """A shape for a fixed set of values: ``choices`` pairs each JSON value with its Python value."""
    expected = "one of " + ", ".join(json.dumps(j) for j, _ in choices)

    def convert(value: Any, path: str) -> Any:
        for json_value, python_value in choices:
            if value is python_value or _same_json(value, json_value):
                return python_value
        raise _mismatch(path, expected, value)

    return _Shape({"enum": [j for j, _ in choices]}, convert, expected)


def _enum_shape(cls: type[enum.Enum]) -> _Shape:
    for member in cls:
        if not _is_json_scalar(member.value):
            raise TypeError(f"enum {cls.__name__} has a value JSON cannot hold: {member.value!r}")
    return _choice_shape([(member.value, member) for member in cls])


def _literal_shape(values: tuple) -> _Shape:
    choices = []
    for v in values:
        json_value = v.value if isinstance(v, enum.Enum) else v
        if not _is_json_scalar(json_value):
            raise TypeError(f"Literal value {v!r} cannot be written in JSON")
        choices.append((json_value, v))
    return _choice_shape(choices)


def _union_shape(members: tuple, seen: frozenset) -> _Shape:
    nullable = type(None) in members
    shapes = [_shape_for(m, seen) for m in members if m is not type(None)]
    schemas = [s.schema for s in shapes] + ([{"type": "null"}] if nullable else [])
    expected = " or ".join([s.expected for s in shapes] + (["null"] if nullable else []))

    def convert(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if len(shapes) == 1:
            return shapes[0].convert(value, path)
        errors = []
        for shape in shapes:
            try:
                return shape.convert(value, path)
            except ToolInputError as exc:
                errors.append(exc)
        # A member that got past the value's kind (it was an object, but a field was wrong)
        # says more than "expected A or B".
        telling = [e for e in errors if e.path != path or not e.problem.startswith("expected ")]
        raise telling[0] if telling else _mismatch(path, expected, value)

    return _Shape(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}, convert, expected)


# Array types by origin, and what the function receives for them.
_ARRAYS: dict[Any, type] = {
    list: list, abc.Sequence: list, abc.MutableSequence: list, abc.Collection: list, abc.Iterable: list,
    tuple: tuple,
    set: set, abc.Set: set, abc.MutableSet: set,
    frozenset: frozenset,
}


def _array_shape(make: type, args: tuple, fixed: bool, seen: frozenset) -> _Shape:
    schema: dict[str, Any] = {"type": "array"}
    if fixed:  # tuple[A, B]: exactly these items, in order
        items = [_shape_for(a, seen) for a in args]
        if items:
            schema["prefixItems"] = [s.schema for s in items]
        schema["minItems"] = schema["maxItems"] = len(items)
        expected = f"an array of {len(items)} items"
    else:
        item = _shape_for(args[0], seen) if args else None
        if item is not None:
            schema["items"] = item.schema
        expected = f"an array of {item.expected}" if item is not None and item.schema else "an array"
    unique = make in (set, frozenset)
    if unique:
        schema["uniqueItems"] = True
    accepted = (list, tuple, set, frozenset) if unique else (list, tuple)

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, accepted) or (fixed and len(value) != len(items)):
            raise _mismatch(path, expected, value)
        if fixed:
            out = [s.convert(v, _at(path, i)) for i, (s, v) in enumerate(zip(items, value))]
        elif item is not None:
            out = [item.convert(v, _at(path, i)) for i, v in enumerate(value)]
        else:
            out = list(value)
        try:
            return make(out)
        except TypeError as exc:  # set items that do not hash
            raise ToolInputError(f"cannot make a {make.__name__}: {exc}", path) from None

    return _Shape(schema, convert, expected)


def _mapping_shape(args: tuple, seen: frozenset) -> _Shape:
    schema: dict[str, Any] = {"type": "object"}
    key = value_shape = None
    if args:
        if args[0] not in (str, Any):
            key = _shape_for(args[0], seen)
            choices = key.schema.get("enum")
            if not choices or not all(isinstance(c, str) for c in choices):
                raise TypeError("dict keys must be str (or a str-valued Enum or Literal) in JSON")
            schema["propertyNames"] = key.schema
        value_shape = _shape_for(args[1], seen)
        schema["additionalProperties"] = value_shape.schema

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _mismatch(path, "an object", value)
        out = {}
        for k, v in value.items():
            where = _at(path, k.value if isinstance(k, enum.Enum) else str(k))
            out[key.convert(k, where) if key else k] = value_shape.convert(v, where) if value_shape else v
        return out

    return _Shape(schema, convert, "an object")


def _class_shape(cls: type, seen: frozenset) -> _Shape:
    """A dataclass or attrs class: an object of its ``__init__`` fields, built into an instance."""
    if cls in seen:
        raise TypeError(f"{cls.__name__} contains itself; recursive types are not supported")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot read the type hints of {cls.__name__}: {exc}") from None
    docs = _parse_docstring(cls.__doc__ and inspect.cleandoc(cls.__doc__) or "")[1]
    seen = seen | {cls}
    # (init name, attribute name, has a default, the default, type hint) per field __init__ takes
    if dataclasses.is_dataclass(cls):
        found = [(f.name, f.name, f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
                  f.default, hints.get(f.name, f.type)) for f in dataclasses.fields(cls) if f.init]
    else:
        found = [(a.alias, a.name, a.default is not attrs.NOTHING, a.default, hints.get(a.name, a.type))
                 for a in attrs.fields(cls) if a.init]
    fields = []
    for init_name, attr_name, has_default, default, hint in found:
        if hint is None or isinstance(hint, str):
            raise TypeError(f"{cls.__name__}.{attr_name} needs a type hint")
        try:
            shape = _shape_for(hint, seen)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{attr_name}: {exc}") from None
        json_default = _NO if not has_default or isinstance(default, (attrs.Factory, dataclasses.Field)) \
            else _to_json(default)
        fields.append(_Field(init_name, shape, not has_default, json_default,
                             docs.get(attr_name) or docs.get(init_name, "")))
    return _object_shape(fields, cls, f"an object ({cls.__name__})")


def _object_shape(fields: list[_Field], cls: type | None, expected: str) -> _Shape:
    """An object with these properties, made into ``cls(**properties)`` (or left a dict when ``cls`` is None)."""
    properties = {}
    for f in fields:
        schema = dict(f.shape.schema)
        if f.doc and "description" not in schema:
            schema["description"] = f.doc
        if f.default is not _NO:
            schema["default"] = f.default
        properties[f.name] = schema
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    shapes = {f.name: f.shape for f in fields}

    def convert(value: Any, path: str) -> Any:
        if cls is not None and isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _mismatch(path, expected, value)
        for k in value:
            if k not in shapes:
                raise ToolInputError(f"unknown property {k!r}", path)
        for k in required:
            if k not in value:
                raise ToolInputError(f"missing required property {k!r}", path)
        kwargs = {k: shapes[k].convert(v, _at(path, k)) for k, v in value.items()}
        if cls is None:
            return kwargs
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:  # the class's own checks (attrs validators, __post_init__)
            raise ToolInputError(f"{cls.__name__}: {exc}", path) from exc

    return _Shape(schema, convert, expected)


def _at(path: str, key: int | str) -> str:
    """The path of an item or property inside ``path``: ``points[1]``, ``points[1].x``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _mismatch(path: str, expected: str, value: Any) -> ToolInputError:
    if _is_json_scalar(value) and len(shown := json.dumps(value)) <= 40:
        got = shown
    else:
        got = {list: "an array", tuple: "an array", dict: "an object", str: "a long string"}.get(
            type(value), type(value).__name__)
    return ToolInputError(f"expected {expected}, got {got}", path)


def _is_json_scalar(value: Any) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1 == 1.0`` but ``true != 1``."""
    return isinstance(a, bool) == isinstance(b, bool) and type(a) in (str, int, float, bool, type(None)) and a == b


def _to_json(value: Any) -> Any:
    """``value`` as JSON, for a schema's ``default``; _NO when it has no JSON form."""
    if isinstance(value, enum.Enum):
        value = value.value
    if _is_json_scalar(value):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_to_json(v) for v in value]
        if any(i is _NO for i in items):
            return _NO
        # Sets are sorted so the schema, and so the prompt, is the same on every run.
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        out = {(k.value if isinstance(k, enum.Enum) else k): _to_json(v) for k, v in value.items()}
        return out if all(isinstance(k, str) for k in out) and _NO not in out.values() else _NO
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json({f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init})
    if attrs.has(type(value)):
        return _to_json({a.alias: getattr(value, a.name) for a in attrs.fields(type(value)) if a.init})
    return _NO


_SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Attributes|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_RE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its summary and its ``Args:`` (or ``Attributes:``) descriptions."""
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
        if section not in ("args", "arguments", "parameters", "attributes") or not stripped:
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
    """Content blocks for what a tool returned (raises TypeError for what cannot be sent).

    A str or content blocks are used as they are; anything else JSON can
    express (numbers, dicts, lists of plain values) is sent as its JSON text.
    """
    if value is None:
        return ()
    if is_content(value):
        return tool_result_content(value)
    import json

    try:
        return (Text(json.dumps(value, ensure_ascii=False)),)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a tool must return str, content blocks or ToolOut; got {type(value).__name__} "
                        f"that is not JSON-serialisable ({exc})") from None
