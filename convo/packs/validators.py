"""Pack validators (guardrails): checks on the user's messages and the model's replies.

A prompt's ``validators`` are compiled when the pack is opened. Each has a
``type``, ``params``, ``enabled``, ``fail_on_violation``, an optional
``message`` for the user, and a direction, ``params.direction``:
``"output"`` (the reply; the default), ``"input"`` (the user's message,
checked before anything is sent) or ``"both"``.

The types convo knows, with the aliases PromptKit also accepts:

- ``banned_words`` (also ``content_excludes``, ``content_not_includes``): none
  of ``words`` (or ``patterns``) appears, case-insensitive; ``match_mode`` is
  ``word_boundary`` (banned_words' default) or ``substring``
  (content_excludes' default).
- ``max_length`` (also ``length``): at most ``max_characters`` (or ``max``)
  characters, and at most ``max_tokens`` tokens (estimated at 4 characters a
  token, as PromptKit does).
- ``min_length``: at least ``min_characters`` (or ``min``) characters, and
  at least ``min_tokens`` tokens.
- ``regex`` (also ``regex_match``, ``content_matches``): ``pattern`` is found;
  with ``expect_match: false``, it is not; ``case_insensitive``.
- ``contains`` (also ``content_includes``): every one of ``patterns`` (or
  ``words``) appears, case-insensitive. ``contains_any`` (also
  ``content_includes_any``): at least one does.
- ``json_valid`` (also ``is_valid_json``, ``valid_json``): the text is JSON
  (one surrounding Markdown code fence is allowed).
- ``json_schema``: the text is JSON that matches ``schema``.
- ``max_sentences`` (also ``sentence_count``): at most ``max_sentences`` (or
  ``max``) sentences, at least ``min``.
- ``required_fields`` (also ``field_presence``): each of ``required_fields``
  (or ``fields``) is a key of the JSON reply (dotted for nested keys) or, for
  a text reply, appears in it.
- ``sentiment`` (also ``text_sentiment``): the tone is one of ``allowed``
  (``positive``, ``neutral``, ``negative``; default: not negative), and its
  score (-1..1) is at least ``min_score`` if given. Estimated from a small
  word list: register a real classifier for anything that matters.
- ``custom``: runs the validator registered (:func:`register_validator`)
  under ``params.name``,

and any type registered with :func:`register_validator`.

Opening a pack with a validator of a type convo does not know is a
:class:`~convo.PackError` naming the type: a typo must not leave a
conversation unprotected. A known type whose params this version cannot use
(a missing limit, a pattern that does not compile, a schema that is not
one) is logged as a warning (``pack_validator_skipped``) and skipped, so a
pack written for a newer runtime keeps working.

What happens on a violation is the session's business (see
:mod:`convo.packs.session`): ``validation="error"`` (the default) raises
:class:`~convo.ValidationFailed` for a validator with
``fail_on_violation: true`` (or for every validator with
``strict_validation=True``) and records the others' failures;
``validation="warn"`` records and logs every failure and blocks nothing;
``validation="disabled"`` runs none.

Streaming: ``banned_words``, ``max_length``, ``max_sentences`` and a
``regex`` with ``expect_match: false`` can judge a reply while it streams
(a prefix that breaks them breaks the whole), so a blocking one stops the
stream at the first chunk that breaks it; word checks look at complete words
only. The others judge the finished reply.

The registry is thread-safe; compiled checks are immutable.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable, Mapping

from attrs import frozen

from .._log import log
from ..errors import ArgumentTypeError, ConfigurationError, PackError

__all__ = ["Check", "compile_checks", "known_types", "register_validator"]

DIRECTIONS = ("input", "output", "both")


class _Unusable(Exception):
    """Internal: a known validator type whose params this version cannot use."""


@frozen
class Check:
    """One compiled validator: ``run(text) -> (passed, details)``, and its prefix form for streams."""

    type: str
    direction: str
    fail_on_violation: bool
    message: str
    run: Callable[[str], Any]
    run_streamed: Callable[[str], Any] | None = None  # None: judges finished replies only
    index: int = 0

    @property
    def streams(self) -> bool:
        return self.run_streamed is not None

    def applies_to(self, direction: str) -> bool:
        return self.direction in (direction, "both")

    def judge(self, text: str, *, streamed: bool = False) -> tuple[bool, dict]:
        """Run the check on ``text`` (a reply so far, with ``streamed``): ``(passed, details)``.

        A check that raises fails, saying why: a broken custom validator
        must not let content through unchecked.
        """
        run = self.run_streamed if streamed and self.run_streamed is not None else self.run
        try:
            outcome = run(text)
        except Exception as exc:
            log.warning("pack_validator_failed", validator=self.type, error=f"{type(exc).__name__}: {exc}")
            return False, {"error": f"the validator raised {type(exc).__name__}: {exc}"}
        if isinstance(outcome, tuple):
            passed, details = outcome[0], outcome[1] if len(outcome) > 1 else {}
        else:
            passed, details = outcome, {}
        return bool(passed), dict(details or {})


# --- helpers -------------------------------------------------------------------------

def _strings(params: Mapping, *names: str) -> list[str] | None:
    for name in names:
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _Unusable(f"{name!r} must be a list of strings, got {value!r:.80}")
    return None


def _int(params: Mapping, *names: str) -> int | None:
    for name in names:
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
            raise _Unusable(f"{name!r} must be a whole number, got {value!r:.80}")
        return int(value)
    return None


def complete_words(text: str) -> str:
    """``text`` up to the end of its last complete word (a word still being streamed is left out)."""
    end = len(text)
    while end and (text[end - 1].isalnum() or text[end - 1] == "_"):
        end -= 1
    return text[:end]


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def _json_of(text: str) -> Any:
    match = _FENCE.match(text)
    return json.loads(match.group(1) if match else text)


def estimate_tokens(text: str) -> int:
    """The tokens in ``text``, estimated at 4 characters a token (PromptKit's estimate)."""
    return len(text) // 4


# --- the built-in types ----------------------------------------------------------------

def _banned(default_mode: str) -> Callable:
    def build(params: Mapping) -> tuple:
        words = [w for w in _strings(params, "words", "patterns", "banned_words") or () if w]
        if not words:
            raise _Unusable("no 'words' to look for")
        mode = params.get("match_mode", default_mode)
        if mode not in ("word_boundary", "substring"):
            raise _Unusable(f"match_mode must be 'word_boundary' or 'substring', got {mode!r:.40}")
        flags = 0 if params.get("case_sensitive") else re.IGNORECASE
        if mode == "word_boundary":
            found_in = [(w, re.compile(r"(?<!\w)" + re.escape(w) + r"(?!\w)", flags)) for w in words]
        else:
            found_in = [(w, re.compile(re.escape(w), flags)) for w in words]

        def run(text: str) -> tuple:
            found = [w for w, pattern in found_in if pattern.search(text)]
            return not found, ({"found": found} if found else {})

        def run_streamed(text: str) -> tuple:
            return run(complete_words(text) if mode == "word_boundary" else text)

        return run, run_streamed
    return build


def _max_length(params: Mapping) -> tuple:
    chars = _int(params, "max_characters", "max", "max_chars", "max_length")
    tokens = _int(params, "max_tokens")
    if chars is None and tokens is None:
        raise _Unusable("no limit: give max_characters (or max) or max_tokens")

    def run(text: str) -> tuple:
        details: dict = {"length": len(text)}
        passed = True
        if chars is not None:
            details["max_characters"] = chars
            passed = passed and len(text) <= chars
        if tokens is not None:
            details["tokens"] = estimate_tokens(text)
            details["max_tokens"] = tokens
            passed = passed and estimate_tokens(text) <= tokens
        return passed, details

    return run, run


def _min_length(params: Mapping) -> tuple:
    chars = _int(params, "min_characters", "min", "min_chars", "min_length")
    tokens = _int(params, "min_tokens")
    if chars is None and tokens is None:
        raise _Unusable("no limit: give min_characters (or min) or min_tokens")

    def run(text: str) -> tuple:
        details: dict = {"length": len(text)}
        passed = True
        if chars is not None:
            details["min_characters"] = chars
            passed = passed and len(text) >= chars
        if tokens is not None:
            details["tokens"] = estimate_tokens(text)
            details["min_tokens"] = tokens
            passed = passed and estimate_tokens(text) >= tokens
        return passed, details

    return run, None


def _regex(params: Mapping) -> tuple:
    pattern = params.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise _Unusable("no 'pattern'")
    try:
        compiled = re.compile(pattern, re.IGNORECASE if params.get("case_insensitive") else 0)
    except re.error as exc:
        raise _Unusable(f"the pattern {pattern!r:.80} is not a regular expression Python reads ({exc})") from None
    expect = params.get("expect_match", True)
    if not isinstance(expect, bool):
        raise _Unusable(f"expect_match must be true or false, got {expect!r:.40}")

    def run(text: str) -> tuple:
        matched = compiled.search(text) is not None
        return matched == expect, {"pattern": pattern, "matched": matched, "expect_match": expect}

    if expect:
        return run, None
    return run, (lambda text: run(complete_words(text)))


def _contains(need_all: bool) -> Callable:
    def build(params: Mapping) -> tuple:
        patterns = [p for p in _strings(params, "patterns", "words", "values", "value") or () if p]
        if not patterns:
            raise _Unusable("no 'patterns' to look for")

        def run(text: str) -> tuple:
            lower = text.lower()
            missing = [p for p in patterns if p.lower() not in lower]
            if need_all:
                return not missing, ({"missing": missing} if missing else {})
            passed = len(missing) < len(patterns)
            return passed, ({} if passed else {"missing": missing})

        return run, None
    return build


def _json_valid(params: Mapping) -> tuple:
    def run(text: str) -> tuple:
        try:
            _json_of(text)
        except ValueError as exc:
            return False, {"error": str(exc)}
        return True, {}

    return run, None


def _json_schema(params: Mapping) -> tuple:
    schema = params.get("schema")
    if not isinstance(schema, dict):
        raise _Unusable("no 'schema' object")
    import jsonschema

    try:
        validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _Unusable(f"the schema is not a valid JSON Schema: {exc.message}") from None
    validator = validator_class(schema)

    def run(text: str) -> tuple:
        try:
            value = _json_of(text)
        except ValueError as exc:
            return False, {"error": f"not JSON: {exc}"}
        errors = [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                  for e in validator.iter_errors(value)]
        return not errors, ({"errors": errors[:20]} if errors else {})

    return run, None


_SENTENCE_END = re.compile(r"[.!?]+")


def count_sentences(text: str) -> int:
    """Sentences in ``text``: pieces between ``.``, ``!`` and ``?`` that hold more than whitespace."""
    if not text.strip():
        return 0
    return max(1, sum(1 for piece in _SENTENCE_END.split(text) if piece.strip()))


def _sentences(params: Mapping) -> tuple:
    most = _int(params, "max_sentences", "max")
    least = _int(params, "min_sentences", "min")
    if most is None and least is None:
        raise _Unusable("no limit: give max_sentences (or max) or min")

    def run(text: str) -> tuple:
        count = count_sentences(text)
        details: dict = {"count": count}
        passed = True
        if most is not None:
            details["max"] = most
            passed = passed and count <= most
        if least is not None:
            details["min"] = least
            passed = passed and count >= least
        return passed, details

    if least is None:
        return run, run
    return run, None


def _required_fields(params: Mapping) -> tuple:
    fields = [f for f in _strings(params, "required_fields", "fields") or () if f]
    if not fields:
        raise _Unusable("no 'required_fields' to look for")

    def has_path(value: Any, path: str) -> bool:
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        return True

    def run(text: str) -> tuple:
        try:
            value = _json_of(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            missing = [f for f in fields if not has_path(value, f)]
        else:
            missing = [f for f in fields if f not in text]
        return not missing, ({"missing": missing} if missing else {})

    return run, None


_POSITIVE = frozenset("""good great excellent happy glad pleased love wonderful fantastic amazing helpful thanks
thank appreciate delighted perfect awesome nice kind welcome enjoy excited best brilliant superb pleasure
glad lovely friendly positive success successful resolved fixed""".split())
_NEGATIVE = frozenset("""bad terrible awful horrible hate angry annoyed upset sad disappointed disappointing
useless stupid worst poor broken fail failed failure wrong problem sorry unfortunately rude ridiculous
frustrated frustrating furious disgusting pathetic garbage idiot never complaint""".split())


def sentiment_score(text: str) -> float:
    """A tone score from -1 (negative) to 1 (positive), from a small word list; 0 when no word counts."""
    words = re.findall(r"[a-z']+", text.lower())
    good = sum(w in _POSITIVE for w in words)
    bad = sum(w in _NEGATIVE for w in words)
    return 0.0 if good + bad == 0 else (good - bad) / (good + bad)


def _sentiment(params: Mapping) -> tuple:
    allowed = _strings(params, "allowed", "expected", "allowed_sentiments")
    minimum = params.get("min_score")
    if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, (int, float))):
        raise _Unusable(f"min_score must be a number, got {minimum!r:.40}")
    if allowed is not None:
        unknown = [a for a in allowed if a not in ("positive", "neutral", "negative")]
        if unknown:
            raise _Unusable(f"unknown sentiments {unknown}: use positive, neutral, negative")
    if allowed is None and minimum is None:
        allowed = ["positive", "neutral"]

    def run(text: str) -> tuple:
        score = sentiment_score(text)
        label = "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"
        passed = (allowed is None or label in allowed) and (minimum is None or score >= minimum)
        return passed, {"score": round(score, 3), "sentiment": label}

    return run, None


_BUILTIN: dict[str, Callable] = {
    "banned_words": _banned("word_boundary"),
    "content_excludes": _banned("substring"),
    "content_not_includes": _banned("substring"),
    "max_length": _max_length,
    "length": _max_length,
    "min_length": _min_length,
    "regex": _regex,
    "regex_match": _regex,
    "content_matches": _regex,
    "contains": _contains(True),
    "content_includes": _contains(True),
    "contains_any": _contains(False),
    "content_includes_any": _contains(False),
    "json_valid": _json_valid,
    "is_valid_json": _json_valid,
    "valid_json": _json_valid,
    "json_schema": _json_schema,
    "max_sentences": _sentences,
    "sentence_count": _sentences,
    "required_fields": _required_fields,
    "field_presence": _required_fields,
    "sentiment": _sentiment,
    "text_sentiment": _sentiment,
}

_registry_lock = threading.Lock()
_REGISTERED: dict[str, tuple[Callable, bool]] = {}


def register_validator(name: str, check: Callable[[str, dict], Any], *, streams: bool = False) -> None:
    """Make ``name`` a validator type packs can use (as ``type: name``, or ``type: custom`` with ``params.name``).

    ``check(text, params)`` returns True/False or ``(passed, details)``;
    an exception counts as a failure. ``streams=True`` says a failure on a
    prefix of a reply is a failure of the whole reply, so the check may stop
    a stream early. Registering a name again replaces it; built-in types
    cannot be replaced. Thread-safe; register before opening the packs that
    use it, and before :func:`convo.resume` brings back a conversation whose
    pack uses it (an unregistered type is a PackError then too).

    Raises:
        ConfigurationError: ``name`` is a built-in type or ``custom``.
    """
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"a validator name must be a non-empty str, got {name!r}")
    if not callable(check):
        raise ArgumentTypeError(f"check must be callable(text, params), got {type(check).__name__}")
    if name in _BUILTIN or name == "custom":
        raise ConfigurationError(f"{name!r} is a built-in validator type; register yours under another name")
    with _registry_lock:
        _REGISTERED[name] = (check, bool(streams))


def known_types() -> list[str]:
    """Every validator type convo knows now: the built-in ones, ``custom`` and those registered."""
    with _registry_lock:
        return sorted(set(_BUILTIN) | {"custom"} | set(_REGISTERED))


def _registered(name: str, params: Mapping) -> tuple | None:
    with _registry_lock:
        entry = _REGISTERED.get(name)
    if entry is None:
        return None
    check, streams = entry
    frozen_params = dict(params)

    def run(text: str) -> Any:
        return check(text, frozen_params)

    return run, (run if streams else None)


def _direction(params: Mapping, type_name: str) -> str:
    direction = params.get("direction", "output")
    if direction in DIRECTIONS:
        return direction
    log.warning("pack_validator_direction_unknown", validator=type_name, direction=repr(direction)[:40],
                using="output")
    return "output"


def compile_checks(specs: tuple, *, source: str, where: str, disabled: frozenset = frozenset()) -> list[Check]:
    """The checks a prompt's validators make (enabled, not disabled by type, with usable params).

    Raises:
        PackError: a validator's type is unknown (all of them are named,
            with their field paths), or ``custom`` names no registered validator.
    """
    unknown: list[tuple[str, str]] = []
    checks: list[Check] = []
    for i, spec in enumerate(specs):
        path = f"{where}.validators[{i}]"
        name = spec.type
        if not spec.enabled or name in disabled:
            continue  # switched off: as if absent, whatever its type
        params = dict(spec.params)
        try:
            if name in _BUILTIN:
                built = _BUILTIN[name](params)
            elif name == "custom":
                target = params.get("name") or params.get("validator")
                built = _registered(target, params) if isinstance(target, str) else None
                if built is None:
                    unknown.append((f"{path}.params.name", f"the custom validator {target!r} is not registered "
                                    "(convo.packs.register_validator)"))
                    continue
            else:
                built = _registered(name, params)
                if built is None:
                    unknown.append((f"{path}.type", f"unknown validator type {name!r}; convo knows "
                                    f"{', '.join(known_types())} (register others with "
                                    "convo.packs.register_validator)"))
                    continue
        except _Unusable as exc:
            log.warning("pack_validator_skipped", pack=source, validator=name, field=path, reason=str(exc))
            continue
        run, streamed = built
        message = spec.message or (params["message"] if isinstance(params.get("message"), str) else "")
        checks.append(Check(name, _direction(params, name), spec.fail_on_violation, message, run, streamed, i))
    if unknown:
        raise PackError(source, unknown)
    return checks
