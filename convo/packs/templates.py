"""System templates: ``{{name}}`` variables and ``{{fragments.name}}`` fragments.

A pack's ``template_engine.syntax`` says how a variable is written: the
word ``variable`` in it marks the name, so ``"{{variable}}"`` (every pack in
the wild), ``"${variable}"`` and ``"{variable}"`` all work. Spaces inside
the delimiters are allowed (``{{ name }}``). A dotted name reaches into an
object variable (``{{customer.name}}``).

Fragments are the pack's shared text blocks: ``{{fragments.signoff}}`` is
replaced by the fragment's text when the prompt is opened, and a fragment
may use variables and other fragments (a fragment that includes itself is a
PackError). Variables are substituted at each send, from their current
values: strings as they are, numbers as written, booleans as
``true``/``false``, objects and arrays as JSON, and an optional variable
without a value as nothing.

Anything else between the delimiters (``{{#if x}}``: conditionals, loops
and filters, which no pack in the wild uses and convo does not implement)
is left in the text as it is, and opening a pack that declares those
features logs a warning.

Templates are immutable, so thread-safe.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from .._log import log

__all__ = ["Template", "to_text"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*"
_MAX_FRAGMENT_DEPTH = 16


def _delimiters(syntax: str) -> tuple[str, str]:
    if "variable" in syntax:
        head, _, tail = syntax.partition("variable")
        if head:
            return head, tail
    log.warning("pack_template_syntax_unknown", syntax=syntax, using="{{variable}}")
    return "{{", "}}"


def to_text(value: Any) -> str:
    """How a variable's value reads in a rendered template."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=False, default=str)


class Template:
    """A system template with its fragments expanded, ready to render with variables.

    Raises (on construction):
        KeyError: a fragment it names does not exist (the message names it).
        ValueError: fragments include each other in a loop.
    """

    def __init__(self, text: str, *, syntax: str = "{{variable}}", fragments: Mapping[str, str] | None = None):
        self.syntax = syntax
        head, tail = _delimiters(syntax)
        self._pattern = re.compile(re.escape(head) + r"\s*(" + _NAME + r")\s*" + re.escape(tail))
        self.text = self._expand(text, dict(fragments or {}), ())
        self.names = tuple(dict.fromkeys(m.group(1) for m in self._pattern.finditer(self.text)))

    def _expand(self, text: str, fragments: dict, chain: tuple) -> str:
        if len(chain) > _MAX_FRAGMENT_DEPTH:
            raise ValueError(f"fragments nest deeper than {_MAX_FRAGMENT_DEPTH}: {' -> '.join(chain)}")

        def replace(match: re.Match) -> str:
            name = match.group(1)
            if not name.startswith("fragments."):
                return match.group(0)
            fragment = name[len("fragments."):]
            if fragment not in fragments:
                raise KeyError(f"the template uses the fragment {fragment!r}, which the pack does not define "
                               f"(it defines {sorted(fragments)})")
            if fragment in chain:
                raise ValueError(f"fragments include each other in a loop: {' -> '.join(chain + (fragment,))}")
            return self._expand(fragments[fragment], fragments, chain + (fragment,))

        return self._pattern.sub(replace, text)

    def variables(self) -> tuple[str, ...]:
        """The variables the template uses (top-level names: ``customer`` for ``{{customer.name}}``)."""
        return tuple(dict.fromkeys(name.split(".")[0] for name in self.names))

    def render(self, values: Mapping[str, Any]) -> str:
        """The template with every variable replaced by its value in ``values``.

        Raises:
            KeyError: a variable the template uses has no entry in ``values``
                (the message lists every one missing).
        """
        missing = [n for n in self.variables() if n not in values]
        if missing:
            raise KeyError(", ".join(missing))

        def replace(match: re.Match) -> str:
            head, *path = match.group(1).split(".")
            value = values[head]
            for part in path:
                if isinstance(value, Mapping) and part in value:
                    value = value[part]
                else:
                    return ""  # a field the object lacks reads as nothing, as an unset optional variable does
            return to_text(value)

        return self._pattern.sub(replace, self.text)
