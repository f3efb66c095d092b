"""Pack variables: checking and converting values against a prompt's declarations.

A declared variable has a ``type`` and may have ``validation`` rules; a
value is converted to the type when that is unambiguous and checked
against the rules, and anything else is a :class:`~convo.VariableError`
naming the variable and the reason:

- ``string``: a str; numbers and booleans are accepted and written out
  (``14`` becomes ``"14"``: PromptKit's variables are all text).
- ``number`` / ``integer``: an int or float (an integer must be whole), or
  text that reads as one (``"42"``; environment variables and ``--var`` are text).
- ``boolean``: True/False, or ``true/false/yes/no/on/off/1/0`` as text.
- ``object`` / ``array``: a dict / a list, or JSON text of one.
- any other type name: taken as given (the rules still apply).

Rules: ``pattern`` (a regular expression found in the text, anchored only
if it anchors itself), ``min_length`` / ``max_length`` (of a string or
array), ``minimum`` / ``maximum`` (of a number), ``enum`` (the allowed
values). A variable the prompt does not declare takes any value.

Pure functions, so thread-safe.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .model import Variable

__all__ = ["BadValue", "convert", "env_name", "from_binding"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class BadValue(Exception):
    """Internal: why a value does not fit a declaration (the caller turns it into a VariableError)."""


def convert(declared: Variable | None, value: Any) -> Any:
    """``value`` converted to the declared type and checked against the declared rules.

    Raises:
        BadValue: it cannot be converted, or breaks a rule.
    """
    if declared is None:
        return value
    value = _to_type(declared.type.lower() if isinstance(declared.type, str) else "", value)
    _check_rules(declared, value)
    return value


def _to_type(kind: str, value: Any) -> Any:
    if value is None:
        raise BadValue("has no value (None)")
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        raise BadValue(f"must be a string, got {type(value).__name__}")
    if kind in ("number", "integer", "int", "float"):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise BadValue(f"must be a number, got the text {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue(f"must be a number, got {type(value).__name__}")
        if value != value or value in (float("inf"), float("-inf")):
            raise BadValue(f"must be a finite number, got {value!r}")
        if kind in ("integer", "int"):
            if isinstance(value, float):
                if not value.is_integer():
                    raise BadValue(f"must be a whole number, got {value!r}")
                value = int(value)
        return value
    if kind in ("boolean", "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise BadValue(f"must be true or false, got {value!r}")
    if kind in ("object", "array", "list"):
        want = dict if kind == "object" else list
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise BadValue(f"must be {'an object' if want is dict else 'an array'}, or JSON text of one; "
                               f"got text that is not JSON") from None
        if isinstance(value, tuple) and want is list:
            value = list(value)
        if not isinstance(value, want):
            raise BadValue(f"must be {'an object' if want is dict else 'an array'}, got {type(value).__name__}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise BadValue(f"must be JSON data: {exc}") from None
        return value
    return value


def _check_rules(declared: Variable, value: Any) -> None:
    rules = declared.rules
    if rules is None:
        return
    if rules.enum is not None and value not in rules.enum:
        raise BadValue(f"must be one of {list(rules.enum)}, got {value!r}")
    if rules.pattern is not None and isinstance(value, str):
        try:
            found = re.search(rules.pattern, value)
        except re.error as exc:
            raise BadValue(f"cannot be checked: the pack's pattern {rules.pattern!r} is not a valid regular "
                           f"expression ({exc})") from None
        if not found:
            raise BadValue(f"{value!r} does not match the pattern {rules.pattern}")
    if isinstance(value, (str, list)):
        if rules.min_length is not None and len(value) < rules.min_length:
            raise BadValue(f"must be at least {rules.min_length} long, got {len(value)}")
        if rules.max_length is not None and len(value) > rules.max_length:
            raise BadValue(f"must be at most {rules.max_length} long, got {len(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if rules.minimum is not None and value < rules.minimum:
            raise BadValue(f"must be at least {rules.minimum}, got {value!r}")
        if rules.maximum is not None and value > rules.maximum:
            raise BadValue(f"must be at most {rules.maximum}, got {value!r}")


def env_name(prefix: str, name: str) -> str:
    """The environment variable that holds variable ``name``: ``PREFIX_NAME`` (the name upper-cased)."""
    head = prefix if not prefix or prefix.endswith("_") else prefix + "_"
    return head + name.upper()


def from_binding(declared: Variable, environ: Any) -> str | None:
    """The value a variable's ``binding`` supplies (only ``kind: env`` with ``auto_populate``), or None.

    Its ``filter`` (``trim``, ``lowercase``, ``uppercase``) is applied.
    Other binding kinds (context, session, header) name things a library
    call does not have, so they supply nothing.
    """
    binding = declared.binding
    if not binding or binding.get("kind") != "env" or not binding.get("auto_populate"):
        return None
    value = environ.get(binding.get("field") or declared.name.upper())
    if value is None:
        return None
    for step in str(binding.get("filter") or "").replace("|", ",").split(","):
        step = step.strip().lower()
        if step == "trim":
            value = value.strip()
        elif step in ("lowercase", "lower"):
            value = value.lower()
        elif step in ("uppercase", "upper"):
            value = value.upper()
    return value
