"""Structured output: a model's reply parsed and validated into a Python type.

``Convo.run(prompt, output=T)`` returns a ``T`` instead of a Response. ``T``
is an attrs class, a dataclass, a ``typing`` type (``list[str]``,
``Literal["yes", "no"]``, ``dict[str, int]``, ``Optional[Label]``...) or a
JSON Schema given as a dict, in which case the reply comes back as plain
JSON values. A type gets its JSON Schema and its converter from the same
walk of the type hint that ``@tool`` uses for tool parameters, so what the
model is asked for and what is accepted cannot disagree.

How each provider is asked (the wire details live in the provider modules):

- Anthropic: a tool named ``final_output`` whose input schema is the output
  schema, forced with ``tool_choice`` (``any`` when the model has other
  tools too, so it may call them first; ``auto`` under extended thinking,
  which refuses forced tools). The provider hands the call back as the
  reply's JSON text, so the history never holds a call without a result.
- OpenAI and compatible servers: ``response_format`` of type
  ``json_schema``, ``strict`` when the schema is within OpenAI's strict
  subset (every property required, no extra properties).
- The local model: a GBNF grammar built from the schema, so the reply is
  JSON of that shape by construction.

Every reply thus carries its output as JSON text, and this module parses one
thing. A reply that does not parse or does not fit is answered, in the same
turn, with a message that says exactly what was wrong
(``label: expected one of "pos", "neg", got "meh"``), and the model tries
again, up to :attr:`Output.attempts` replies in all; then
:class:`OutputValidationError` carries the problems and the last reply.

Schemas whose root is not an object (``list[str]``, ``int``, a union) are
sent wrapped as ``{"value": ...}``, because tool inputs and OpenAI's
response formats must be objects; the wrapping is undone before converting.

For other callers (the server's ``outputFormat``, a store): ``c.run(prompt,
output=spec)`` is the one function from a convo, a prompt and a spec to a
typed value, and :class:`Output` is the spec, with :attr:`Output.schema`,
:meth:`Output.parse`, :meth:`Output.to_json` and :meth:`Output.from_json`.

Everything here is immutable or stateless, and so safe to share between threads.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from attrs import field, frozen

from ._log import log
from .errors import ArgumentTypeError, ConfigurationError, ConvoError
from .messages import Message, Response, Text
from .tools import _NO, ToolInputError, _parse_docstring, _shape_for, _to_json

__all__ = ["DEFAULT_ATTEMPTS", "Output", "OutputValidationError"]

#: Replies the model gets to produce a valid output (the first and two corrections).
DEFAULT_ATTEMPTS = 3

# The property a non-object output is wrapped in on the wire.
_WRAP_KEY = "value"


class OutputValidationError(ConvoError, ValueError):
    """The model's reply did not fit the output type, after every attempt it was given.

    Attributes:
        problems: what was wrong with the last reply, one line each
            (``"label: expected one of \\"pos\\", \\"neg\\", got \\"meh\\""``).
        last_reply: the model's last :class:`~convo.Response` (None when
            :meth:`Output.parse` was given text).
        attempts: how many replies the model gave.
        output_name: the name of the output type.
    """

    def __init__(self, output_name: str, problems: list[str], last_reply: Response | None = None,
                 attempts: int = 1) -> None:
        self.output_name = output_name
        self.problems = list(problems)
        self.last_reply = last_reply
        self.attempts = attempts
        listed = "; ".join(self.problems[:5]) + ("; ..." if len(self.problems) > 5 else "")
        text = "" if last_reply is None else _snippet(last_reply.text())
        tail = f"; last reply: {text!r}" if text else ""
        super().__init__(f"the model's reply did not fit {output_name} after {attempts} "
                         f"attempt{'s' if attempts != 1 else ''}: {listed}{tail}")

    @property
    def text(self) -> str:
        """The last reply's text."""
        return "" if self.last_reply is None else self.last_reply.text()


def _snippet(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"Output.{attribute.name} must be a positive int, got {value!r}")


def _type_name(kind: Any) -> str:
    if isinstance(kind, dict):
        title = kind.get("title")
        return title if isinstance(title, str) and title else "the output schema"
    if isinstance(kind, type):
        return kind.__name__
    return repr(kind).replace("typing.", "")


def _class_summary(kind: Any) -> str:
    """A class's own docstring summary (not the signature dataclasses make up when there is none)."""
    if not isinstance(kind, type):
        return ""
    doc = kind.__dict__.get("__doc__")
    if not doc or (doc.startswith(kind.__name__ + "(") and doc.endswith(")")):
        return ""
    return _parse_docstring(inspect.cleandoc(doc))[0]


@frozen(eq=False)
class Output:
    """What a reply must be: a type (or JSON Schema) and how many replies the model gets to produce it.

    ``Convo.run(prompt, output=T)`` wraps a bare ``T`` in ``Output(T)``;
    build one yourself to change ``attempts`` or the ``description`` the
    model reads, or to reuse it (it is immutable).

    Args:
        type: an attrs class, a dataclass, a ``typing`` type, or a JSON
            Schema as a dict (the value is then returned as plain JSON).
        attempts: how many replies the model may give in all (at least 1);
            after each one that does not fit, it is told what was wrong.
        description: what the output is, for the model; default: the class
            docstring's summary, or the schema's ``description``.

    Raises:
        ArgumentTypeError: ``type`` has no JSON Schema (a type hint JSON
            cannot express), or is neither a type nor a dict.
        ConfigurationError: the dict is not a valid JSON Schema, or a
            setting is out of range.
    """

    type: Any
    attempts: int = field(default=DEFAULT_ATTEMPTS, kw_only=True, validator=_positive_int)
    description: str | None = field(default=None, kw_only=True)
    #: The JSON Schema of a value of the output type.
    schema: dict = field(init=False, repr=False)
    #: What is sent to the provider: ``schema``, wrapped in an object when its root is not one.
    wire_schema: dict = field(init=False, repr=False)
    _convert: Any = field(init=False, repr=False)
    _wrapped: bool = field(init=False, repr=False)
    _validator: Any = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        import jsonschema  # deferred, as in convo.tools: needed only once outputs exist

        kind = self.type
        if isinstance(kind, dict):
            try:
                jsonschema.Draft202012Validator.check_schema(kind)
            except jsonschema.SchemaError as exc:
                raise ConfigurationError(f"output schema is not a valid JSON Schema: {exc.message}") from None
            schema = kind
            convert = None
        elif isinstance(kind, (str, bytes)) or kind is None:
            raise ArgumentTypeError(f"output must be a type or a JSON Schema dict, got {kind!r}")
        else:
            try:
                shape = _shape_for(kind)
            except TypeError as exc:
                raise ArgumentTypeError(f"output type {_type_name(kind)} has no JSON Schema: {exc}") from None
            schema, convert = shape.schema, shape.convert
        description = self.description
        if description is None:
            description = schema.get("description") if isinstance(kind, dict) else _class_summary(kind)
        wrapped = schema.get("type") != "object"
        wire = ({"type": "object", "properties": {_WRAP_KEY: schema}, "required": [_WRAP_KEY],
                 "additionalProperties": False} if wrapped else dict(schema))
        if description:
            wire["description"] = description
        else:
            wire.pop("description", None)
        object.__setattr__(self, "description", description or "")
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "wire_schema", wire)
        object.__setattr__(self, "_convert", convert)
        object.__setattr__(self, "_wrapped", wrapped)
        object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(schema))

    def __reduce__(self):
        # Rebuilt from what it was made of: its converter is closures, which do not pickle.
        return (_output, (self.type, self.attempts, self.description))

    @classmethod
    def of(cls, output: Any) -> "Output":
        """``output`` itself when it is an :class:`Output`, else ``Output(output)``."""
        return output if isinstance(output, Output) else cls(output)

    @property
    def name(self) -> str:
        """The output type's name, for messages: ``Label``, ``list[str]``."""
        return _type_name(self.type)

    # --- reading replies

    def parse(self, reply: Response | str) -> Any:
        """The value a reply (or its text) holds, validated and converted to the output type.

        Raises:
            OutputValidationError: the reply holds no JSON, or JSON that does
                not fit (``problems`` says where and why).
        """
        value, problems = self.check(reply)
        if problems:
            raise OutputValidationError(self.name, problems, reply if isinstance(reply, Response) else None)
        return value

    def check(self, reply: Response | str) -> tuple[Any, list[str]]:
        """``(value, [])`` for a reply that fits, else ``(None, problems)``; never raises for a bad reply."""
        if isinstance(reply, Response):
            texts = [b.text for b in reply.content if isinstance(b, Text)]
            cut = reply.stop_reason == "max_tokens"
        elif isinstance(reply, str):
            texts, cut = [reply], False
        else:
            raise ArgumentTypeError(f"parse() takes a convo.Response or a str, got {type(reply).__name__}")
        data = _find_json(texts)
        if data is _NO:
            shown = _snippet("".join(texts).strip(), 120)
            problem = (f"the reply holds no JSON value (it was: {shown!r})" if shown
                       else "the reply was empty; the output must be given as JSON")
            if cut:
                problem += "; it was cut off at max_tokens"
            return None, [problem]
        if self._wrapped and isinstance(data, dict) and set(data) == {_WRAP_KEY}:
            data = data[_WRAP_KEY]
        return self._value_of(data)

    def _value_of(self, data: Any) -> tuple[Any, list[str]]:
        problems = []
        for error in sorted(self._validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
            where = _path(error.absolute_path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        if problems:
            return None, problems
        if self._convert is None:
            return data, []
        try:
            return self._convert(data, ""), []
        except ToolInputError as exc:
            return None, [str(exc)]

    def feedback(self, problems: list[str]) -> str:
        """The message that tells the model what was wrong with its reply."""
        lines = "\n".join(f"- {p}" for p in problems[:20])
        return (f"That reply is not a valid {self.name}. Problems:\n{lines}\n"
                "Give the whole output again, corrected, in the required JSON format.")

    # --- values as JSON (for stores and servers)

    def to_json(self, value: Any) -> Any:
        """``value`` (of the output type) as JSON values; :meth:`from_json` turns them back.

        Raises:
            ArgumentTypeError: the value has no JSON form.
        """
        data = value if self._convert is None else _to_json(value)
        if data is _NO:
            raise ArgumentTypeError(f"a {type(value).__name__} cannot be written as JSON for {self.name}")
        return data

    def from_json(self, data: Any) -> Any:
        """The value :meth:`to_json` wrote.

        Raises:
            OutputValidationError: ``data`` does not fit the output type.
        """
        value, problems = self._value_of(data)
        if problems:
            raise OutputValidationError(self.name, problems)
        return value


def _output(kind: Any, attempts: int, description: str) -> Output:
    return Output(kind, attempts=attempts, description=description)


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_FENCE_RE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def _find_json(texts: list[str]) -> Any:
    """The JSON value a reply holds: its text, its last text block, a fenced block, or the outermost braces."""
    whole = "".join(texts)
    candidates = [whole, texts[-1] if texts else ""]
    candidates += _FENCE_RE.findall(whole)
    start, end = whole.find("{"), whole.rfind("}")
    if 0 <= start < end:
        candidates.append(whole[start:end + 1])
    for text in candidates:
        text = text.strip()
        if not text:
            continue
        try:
            return json.loads(text)
        except ValueError:
            continue
    return _NO


# --- inside a turn -------------------------------------------------------------------

def run_in_turn(convo: Any, output: Output, message: Message, limit: int | None, on_event: Any,
                tool_choice: Any, token: Any) -> Any:
    """The agent loop of ``convo`` until its reply is a valid ``output``; the caller holds the turn.

    Called by :meth:`Convo.run` with ``output=``. Every request of the turn
    carries ``output.wire_schema``; each reply that does not fit is answered
    with :meth:`Output.feedback`, up to ``output.attempts`` replies.
    ``limit`` (``max_turns``) applies to each attempt's loop.

    Raises:
        OutputValidationError: no valid output after every attempt, or the
            loop stopped on a tool that ended the turn without one.
    """
    saved = convo._output_schema
    convo._output_schema = output.wire_schema
    try:
        attempt = 0
        while True:
            attempt += 1
            response = convo._loop(message, limit, on_event, tool_choice, token)
            value, problems = output.check(response)
            if not problems:
                return value
            log.info("output_invalid", convo_id=convo.id, output=output.name, attempt=attempt,
                     problems=problems[:3])
            if response.tool_uses():
                # The loop stopped on a tool (ends_turn, or no result to send): that was the
                # tool's call to make, so no correction is asked for.
                problems.append("the run stopped after a tool ended the turn")
                raise OutputValidationError(output.name, problems, response, attempt)
            if attempt >= output.attempts:
                raise OutputValidationError(output.name, problems, response, attempt)
            token.raise_if_cancelled()
            message, tool_choice = Message.user(output.feedback(problems)), None
    finally:
        convo._output_schema = saved

