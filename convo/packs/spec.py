"""The PromptPack specification (JSON Schema 1.4), written out as Python: what a valid pack looks like.

:func:`problems` checks a pack (parsed JSON) against the specification and
returns every problem it finds, each as ``(field path, reason)``:
``("prompts.chat.variables[0].name", "is required")``. An empty list means
the pack is valid.

The rules below are the official schema's (promptpack.org,
``promptpack.schema.json``), transcribed by hand; convo does not read the
schema at run time. The test suite checks that this module and the official
schema, run through ``jsonschema`` with format checking on, agree on every
real pack in ``tests/fixtures/packs`` and on a set of broken variants. As in
JSON Schema: ``pattern`` matches anywhere in the string unless the pattern
anchors itself, an "integer" may be written ``2.0``, ``true`` is not a
number, and ``format`` is checked for ``date``, ``date-time`` and ``uri``.

Pure functions of their input, so safe from any thread.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

__all__ = ["SPEC_VERSION", "problems"]

#: The version of the specification these rules transcribe.
SPEC_VERSION = "1.4.0"

Problems = list  # of (path, reason)


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_$-]+", text):
        return f"{path}.{text}" if path else text
    return f"{path}[{text!r}]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_integer(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                         and value.is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- formats (as jsonschema's format checker reads them) ---------------------------

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$", re.ASCII)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s\"<>\\^`{|}]*$")


def _valid_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _valid_date_time(text: str) -> bool:
    m = _DATE_TIME.match(text)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return False
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        return False
    return True


def _valid_uri(text: str) -> bool:
    return bool(_URI.match(text))


_FORMATS = {
    "date": (_valid_date, "a date (YYYY-MM-DD)"),
    "date-time": (_valid_date_time, "a date and time (RFC 3339, e.g. 2026-03-09T00:00:00Z)"),
    "uri": (_valid_uri, "an absolute URI (e.g. https://...)"),
}


# --- shapes -----------------------------------------------------------------------

class _Shape:
    """One rule of the specification; ``check`` appends what is wrong with ``value`` to ``out``."""

    what = "a value"

    def check(self, value: Any, path: str, out: Problems) -> None:
        raise NotImplementedError

    def matches(self, value: Any) -> bool:
        found: Problems = []
        self.check(value, "", found)
        return not found


class _Any(_Shape):
    what = "any value"

    def check(self, value, path, out):
        pass


class _Str(_Shape):
    what = "a string"

    def __init__(self, *, pattern: str | None = None, min_len: int | None = None, max_len: int | None = None,
                 fmt: str | None = None, enum: tuple | None = None) -> None:
        self.pattern = pattern
        self.regex = re.compile(pattern) if pattern else None
        self.min_len, self.max_len, self.fmt, self.enum = min_len, max_len, fmt, enum

    def check(self, value, path, out):
        if not isinstance(value, str):
            out.append((path, f"must be a string, not {_type_name(value)}"))
            return
        if self.enum is not None and value not in self.enum:
            out.append((path, f"must be one of {', '.join(repr(e) for e in self.enum)}, not {_short(value)}"))
        if self.min_len is not None and len(value) < self.min_len:
            out.append((path, "must not be empty" if self.min_len == 1 else
                        f"must be at least {self.min_len} characters long"))
        if self.max_len is not None and len(value) > self.max_len:
            out.append((path, f"must be at most {self.max_len} characters long, not {len(value)}"))
        if self.regex is not None and not self.regex.search(value):
            out.append((path, f"{_short(value)} does not match {self.pattern}"))
        if self.fmt is not None:
            valid, description = _FORMATS[self.fmt]
            if not valid(value):
                out.append((path, f"must be {description}, not {_short(value)}"))


class _Num(_Shape):
    def __init__(self, *, integer: bool = False, minimum: float | None = None, maximum: float | None = None,
                 nullable: bool = False) -> None:
        self.integer, self.minimum, self.maximum, self.nullable = integer, minimum, maximum, nullable
        self.what = "an integer" if integer else "a number"

    def check(self, value, path, out):
        if value is None and self.nullable:
            return
        if not (_is_integer(value) if self.integer else _is_number(value)):
            out.append((path, f"must be {self.what}{' or null' if self.nullable else ''}, not {_type_name(value)}"
                        + (f" ({value!r})" if _is_number(value) else "")))
            return
        if self.minimum is not None and value < self.minimum:
            out.append((path, f"must be at least {self.minimum}, not {value!r}"))
        if self.maximum is not None and value > self.maximum:
            out.append((path, f"must be at most {self.maximum}, not {value!r}"))


class _Bool(_Shape):
    what = "true or false"

    def check(self, value, path, out):
        if not isinstance(value, bool):
            out.append((path, f"must be true or false, not {_type_name(value)}"))


class _Arr(_Shape):
    what = "an array"

    def __init__(self, items: _Shape, *, min_items: int | None = None) -> None:
        self.items, self.min_items = items, min_items

    def check(self, value, path, out):
        if not isinstance(value, list):
            out.append((path, f"must be an array, not {_type_name(value)}"))
            return
        if self.min_items is not None and len(value) < self.min_items:
            out.append((path, f"must have at least {self.min_items} item{'s' if self.min_items != 1 else ''}"))
        items = _resolve(self.items)
        for i, item in enumerate(value):
            items.check(item, _join(path, i), out)


class _Obj(_Shape):
    """An object: known fields, required fields, and what other fields may be (True, False or a shape)."""

    def __init__(self, what: str, props: dict | None = None, *, required: tuple = (), extra: Any = True,
                 min_props: int | None = None) -> None:
        self.what, self.props, self.required, self.extra, self.min_props = what, props or {}, required, extra, min_props

    def check(self, value, path, out):
        if not isinstance(value, dict):
            out.append((path, f"must be an object ({self.what}), not {_type_name(value)}"))
            return
        for name in self.required:
            if name not in value:
                out.append((_join(path, name), "is required"))
        if self.min_props is not None and len(value) < self.min_props:
            out.append((path, f"must have at least {self.min_props} entr{'ies' if self.min_props != 1 else 'y'}"))
        for key, item in value.items():
            shape = self.props.get(key)
            if shape is not None:
                _resolve(shape).check(item, _join(path, key), out)
            elif self.extra is False:
                known = ", ".join(sorted(self.props))
                out.append((_join(path, key), f"is not a field of {self.what} (its fields: {known})"))
            elif self.extra is not True:
                _resolve(self.extra).check(item, _join(path, key), out)


class _OneOf(_Shape):
    def __init__(self, *shapes: Any) -> None:
        self.shapes = shapes

    @property
    def what(self) -> str:
        return " or ".join(_resolve(s).what for s in self.shapes)

    def check(self, value, path, out):
        matching = [s for s in self.shapes if _resolve(s).matches(value)]
        if len(matching) == 1:
            return
        kinds = "; ".join(_resolve(s).what for s in self.shapes)
        if not matching:
            out.append((path, f"must be exactly one of: {kinds}; it is none of them"))
        else:
            out.append((path, f"must be exactly one of: {kinds}; it fits "
                              f"{len(matching)} of them ({', '.join(_resolve(s).what for s in matching)})"))


def _resolve(shape: Any) -> _Shape:
    return _DEFS[shape] if isinstance(shape, str) else shape


# --- the specification ---------------------------------------------------------------

SEMVER = (r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
          r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")

_STR = _Str()
_STRINGS = _Arr(_STR)
_JSON_OBJECT = _Obj("an object")
_POSITIVE_INT = _Num(integer=True, minimum=1)
_NON_NEGATIVE = _Num(minimum=0)

_PARAMETERS = _Obj("the parameters", {
    "temperature": _Num(minimum=0, maximum=2),
    "max_tokens": _POSITIVE_INT,
    "top_p": _Num(minimum=0, maximum=1),
    "top_k": _Num(integer=True, minimum=1, nullable=True),
    "frequency_penalty": _Num(minimum=-2, maximum=2),
    "presence_penalty": _Num(minimum=-2, maximum=2),
}, extra=False)


def _media_kind(what: str, props: dict, *, extra: Any = False) -> _Obj:
    common = {"max_size_mb": _POSITIVE_INT, "allowed_formats": _STRINGS}
    return _Obj(what, {**common, **props}, extra=extra)


_DEFS: dict[str, _Shape] = {
    "Prompt": _Obj("a prompt", {
        "id": _Str(pattern=r"^[a-z][a-z0-9_-]*$"),
        "name": _Str(min_len=1),
        "description": _STR,
        "version": _Str(pattern=SEMVER),
        "system_template": _Str(min_len=1),
        "variables": _Arr("Variable"),
        "tools": _STRINGS,
        "tool_policy": "ToolPolicy",
        "pipeline": "PipelineConfig",
        "parameters": _PARAMETERS,
        "validators": _Arr("Validator"),
        "evals": _Arr("Eval"),
        "tested_models": _Arr("TestedModel"),
        "model_overrides": _Obj("the model overrides", extra="ModelOverride"),
        "media": "MediaConfig",
    }, required=("id", "name", "version", "system_template"), extra=False),
    "Variable": _Obj("a variable", {
        "name": _Str(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$"),
        "type": _STR,
        "required": _Bool(),
        "default": _Any(),
        "description": _STR,
        "example": _Any(),
        "validation": _Obj("a variable's validation", {
            "pattern": _STR,
            "min_length": _Num(integer=True, minimum=0),
            "max_length": _POSITIVE_INT,
            "minimum": _Num(),
            "maximum": _Num(),
            "enum": _Arr(_Any()),
        }, extra=False),
        "binding": _Obj("a variable's binding", {
            "kind": _STR, "field": _STR, "auto_populate": _Bool(), "filter": _STR,
        }, extra=False),
    }, required=("name", "type", "required"), extra=False),
    "Tool": _Obj("a tool", {
        "name": _Str(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$"),
        "description": _Str(min_len=1),
        "parameters": _Obj("a tool's parameters (a JSON Schema object)", {
            "type": _Str(enum=("object",)),
            "properties": _Obj("the parameters' properties", extra=_JSON_OBJECT),
            "required": _STRINGS,
        }, required=("type", "properties")),
    }, required=("name", "description"), extra=False),
    "ToolPolicy": _Obj("a tool policy", {
        "tool_choice": _Str(enum=("auto", "required", "none")),
        "max_rounds": _POSITIVE_INT,
        "max_tool_calls_per_turn": _POSITIVE_INT,
        "blocklist": _STRINGS,
    }, extra=False),
    "PipelineConfig": _Obj("a pipeline", {
        "stages": _STRINGS,
        "middleware": _Arr(_Obj("a middleware", {"type": _STR, "config": _JSON_OBJECT},
                                required=("type",), extra=False)),
    }, required=("stages",), extra=False),
    "Validator": _Obj("a validator", {
        "type": _Str(min_len=1),
        "enabled": _Bool(),
        "message": _STR,
        "fail_on_violation": _Bool(),
        "params": _JSON_OBJECT,
    }, required=("type",), extra=False),
    "TestedModel": _Obj("a tested model", {
        "provider": _STR,
        "model": _STR,
        "date": _Str(fmt="date"),
        "success_rate": _Num(minimum=0, maximum=1),
        "avg_tokens": _NON_NEGATIVE,
        "avg_cost": _NON_NEGATIVE,
        "avg_latency_ms": _NON_NEGATIVE,
        "notes": _STR,
    }, required=("provider", "model", "date"), extra=False),
    "ModelOverride": _Obj("a model override", {
        "system_template_prefix": _STR,
        "system_template_suffix": _STR,
        "system_template": _STR,
        "parameters": _PARAMETERS,
    }, extra=False),
    "MediaConfig": _Obj("a media configuration", {
        "enabled": _Bool(),
        "supported_types": _Arr(_Str(pattern=r"^[a-z0-9_]+$")),
        "image": "ImageConfig",
        "audio": "AudioConfig",
        "video": "VideoConfig",
        "document": "DocumentConfig",
        "examples": _Arr("MultimodalExample"),
    }, required=("enabled",), extra=_OneOf("ImageConfig", "AudioConfig", "VideoConfig", "DocumentConfig",
                                           "GenericMediaTypeConfig")),
    "ImageConfig": _media_kind("an image configuration", {
        "default_detail": _STR, "require_caption": _Bool(), "max_images_per_msg": _POSITIVE_INT}),
    "AudioConfig": _media_kind("an audio configuration", {
        "max_duration_sec": _POSITIVE_INT, "require_metadata": _Bool()}),
    "VideoConfig": _media_kind("a video configuration", {
        "max_duration_sec": _POSITIVE_INT, "require_metadata": _Bool()}),
    "DocumentConfig": _media_kind("a document configuration", {
        "max_pages": _POSITIVE_INT, "require_metadata": _Bool(),
        "extraction_mode": _Str(enum=("text", "structured", "raw"))}),
    "GenericMediaTypeConfig": _media_kind("a generic media type configuration", {
        "require_metadata": _Bool(), "validation_params": _JSON_OBJECT}, extra=True),
    "MultimodalExample": _Obj("a multimodal example", {
        "name": _STR,
        "description": _STR,
        "role": _Str(enum=("user", "assistant", "system")),
        "parts": _Arr("ContentPart", min_items=1),
    }, required=("name", "role", "parts"), extra=False),
    "ContentPart": _Obj("a content part", {
        "type": _Str(pattern=r"^[a-z0-9_]+$"),
        "text": _STR,
        "media": "MediaReference",
    }, required=("type",), extra=False),
    "MediaReference": _Obj("a media reference", {
        "file_path": _STR,
        "url": _Str(fmt="uri"),
        "base64": _STR,
        "mime_type": _STR,
        "detail": _Str(enum=("low", "high", "auto")),
        "caption": _STR,
    }, required=("mime_type",), extra=False),
    "Eval": _Obj("an eval", {
        "id": _Str(min_len=1),
        "description": _STR,
        "type": _Str(min_len=1),
        "trigger": _STR,
        "sample_percentage": _Num(minimum=0, maximum=100),
        "enabled": _Bool(),
        "params": _JSON_OBJECT,
        "metric": _Obj("a metric", {
            "name": _Str(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"),
            "type": _Str(enum=("gauge", "counter", "histogram", "boolean")),
            "range": _Obj("a metric's range", {"min": _Num(), "max": _Num()}),
        }, required=("name", "type")),
        "threshold": _Obj("a threshold", {"operator": _STR, "value": _Num()}, extra=False),
        "message": _STR,
        "when": _JSON_OBJECT,
        "groups": _STRINGS,
    }, required=("id", "type", "trigger"), extra=False),
    "WorkflowConfig": _Obj("a workflow", {
        "version": _POSITIVE_INT,
        "entry": _STR,
        "states": _Obj("the workflow's states", extra="WorkflowState", min_props=1),
        "engine": _Obj("a workflow engine", {
            "budget": _Obj("a workflow budget", {
                "max_total_visits": _POSITIVE_INT, "max_tool_calls": _POSITIVE_INT,
                "max_wall_time_sec": _POSITIVE_INT}, extra=False),
        }),
    }, required=("version", "entry", "states"), extra=False),
    "WorkflowState": _Obj("a workflow state", {
        "prompt_task": _STR,
        "description": _STR,
        "on_event": _Obj("the state's events", extra=_STR),
        "persistence": _STR,
        "orchestration": _STR,
        "skills": _STR,
        "terminal": _Bool(),
        "max_visits": _POSITIVE_INT,
        "on_max_visits": _STR,
        "artifacts": _Obj("the state's artifacts", extra=_Obj("an artifact", {
            "type": _STR, "description": _STR, "mode": _Str(enum=("replace", "append")),
        }, required=("type",), extra=False)),
    }, required=("prompt_task",), extra=False),
    "AgentsConfig": _Obj("the agents", {
        "entry": _STR,
        "members": _Obj("the agents' members", extra=_Obj("an agent", {
            "description": _STR, "tags": _STRINGS, "input_modes": _STRINGS, "output_modes": _STRINGS,
        }, extra=False), min_props=1),
    }, required=("entry", "members"), extra=False),
    "SkillSource": _OneOf(
        _Str(),
        _Obj("a skill path {path, preload}", {"path": _STR, "preload": _Bool()}, required=("path",), extra=False),
        _Obj("an inline skill {name, description, instructions}", {
            "name": _Str(min_len=1), "description": _Str(min_len=1), "instructions": _Str(min_len=1),
        }, required=("name", "description", "instructions"), extra=False),
    ),
}

_PACK = _Obj("a pack", {
    "$schema": _STR,
    "id": _Str(pattern=r"^[a-z][a-z0-9-]*$", min_len=1, max_len=100),
    "name": _Str(min_len=1, max_len=200),
    "version": _Str(pattern=SEMVER),
    "description": _Str(max_len=5000),
    "template_engine": _Obj("the template engine", {
        "version": _STR,
        "syntax": _STR,
        "features": _Arr(_Str(enum=("basic_substitution", "fragments", "conditionals", "loops", "filters"))),
    }, required=("version", "syntax"), extra=False),
    "prompts": _Obj("the prompts", extra="Prompt", min_props=1),
    "fragments": _Obj("the fragments", extra=_STR),
    "tools": _Obj("the tools", extra="Tool"),
    "metadata": _Obj("the metadata", {
        "domain": _STR,
        "language": _Str(pattern=r"^[a-z]{2}$"),
        "tags": _STRINGS,
        "cost_estimate": _Obj("a cost estimate", {
            "min_cost_usd": _NON_NEGATIVE, "max_cost_usd": _NON_NEGATIVE, "avg_cost_usd": _NON_NEGATIVE}),
    }),
    "compilation": _Obj("the compilation record", {
        "compiled_with": _STR, "created_at": _Str(fmt="date-time"), "schema": _STR, "source": _STR,
    }, required=("compiled_with", "created_at", "schema")),
    "evals": _Arr("Eval"),
    "workflow": "WorkflowConfig",
    "agents": "AgentsConfig",
    "skills": _Arr("SkillSource"),
}, required=("id", "name", "version", "template_engine", "prompts"), extra=False)


def problems(pack: Any) -> list[tuple[str, str]]:
    """Every way ``pack`` (parsed JSON) breaks the PromptPack specification, as ``(path, reason)``; [] if none."""
    out: Problems = []
    _PACK.check(pack, "", out)
    return out
