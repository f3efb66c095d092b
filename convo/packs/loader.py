"""Reading a pack: JSON in, a checked :class:`~convo.packs.Pack` out.

:func:`load_pack` reads a ``.pack.json`` file, checks it against the
PromptPack specification (:mod:`convo.packs.spec`) and builds the frozen
model. Every problem is reported at once, in one :class:`~convo.PackError`
that names the file and, for each problem, the field's path and the reason.

``skip_schema_validation=True`` skips the specification check (for packs
written by hand against a newer specification, say); the pack must still
have the shape convo reads (prompts with a system template), or it is a
PackError all the same.

Pure functions of their input, so safe from any thread.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ArgumentTypeError, PackError, PackNotFound
from . import spec
from .model import (
    ModelOverride,
    Pack,
    PackTool,
    Parameters,
    Prompt,
    TemplateEngine,
    ToolPolicy,
    ValidatorSpec,
    Variable,
    VariableRules,
)

__all__ = ["load_pack", "pack_from_dict"]

#: Packs larger than this are refused before they are parsed (a pack is a few kilobytes).
MAX_PACK_BYTES = 20 * 1024 * 1024


def load_pack(path: Any, *, skip_schema_validation: bool = False) -> Pack:
    """Read and check the pack at ``path`` (a ``.pack.json`` file).

    Raises:
        PackNotFound: there is no file at ``path``.
        PackError: the file is not JSON, or the pack breaks the PromptPack
            specification (every problem is listed, with its field path).
    """
    if isinstance(path, Pack):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"a pack is a path to a .pack.json file or a convo.Pack, got {type(path).__name__}")
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise PackNotFound(str(file)) from None
    except OSError as exc:
        raise PackError(str(file), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    if file.is_dir():
        raise PackError(str(file), [("", "is a directory, not a .pack.json file")])
    if size > MAX_PACK_BYTES:
        raise PackError(str(file), [("", f"is {size} bytes; a pack may be at most {MAX_PACK_BYTES} bytes")])
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PackError(str(file), [("", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise PackError(str(file), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise PackError(str(file), [("", f"is not valid JSON{where}: {getattr(exc, 'msg', exc)}")]) from None
    return pack_from_dict(data, source=str(file), skip_schema_validation=skip_schema_validation)


def pack_from_dict(data: Any, *, source: str | None = None, skip_schema_validation: bool = False) -> Pack:
    """Check and build a pack from its parsed JSON (``source`` names it in errors).

    Raises:
        PackError: the pack breaks the specification (or, with
            ``skip_schema_validation``, lacks what convo needs to run it).
    """
    name = source or "<pack>"
    if not skip_schema_validation:
        found = spec.problems(data)
        if found:
            raise PackError(name, found)
    elif not isinstance(data, dict) or not isinstance(data.get("prompts"), dict) or not data["prompts"]:
        raise PackError(name, [("prompts", "a pack needs an object of prompts, even without the schema check")])
    data = copy.deepcopy(data)
    try:
        return _build(data, source)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Only reachable with skip_schema_validation: the specification check rules these out.
        raise PackError(name, [("", f"cannot be read without its schema check: {type(exc).__name__}: {exc}")]) \
            from None


def _build(data: dict, source: str | None) -> Pack:
    engine = data.get("template_engine") or {}
    tools = {key: PackTool(t.get("name", key), t.get("description", ""),
                           t.get("parameters") or {"type": "object", "properties": {}})
             for key, t in (data.get("tools") or {}).items()}
    prompts = {key: _prompt(key, p) for key, p in data["prompts"].items()}
    return Pack(
        id=data.get("id", ""),
        name=data.get("name", ""),
        version=data.get("version", ""),
        description=data.get("description", ""),
        template_engine=TemplateEngine(engine.get("version", "v1"), engine.get("syntax", "{{variable}}"),
                                       tuple(engine.get("features") or ())),
        prompts=prompts,
        tools=tools,
        fragments=dict(data.get("fragments") or {}),
        metadata=data.get("metadata"),
        compilation=data.get("compilation"),
        evals=tuple(data.get("evals") or ()),
        workflow=data.get("workflow"),
        agents=data.get("agents"),
        skills=tuple(data.get("skills") or ()),
        source=source,
        raw=data,
    )


def _parameters(d: dict | None) -> Parameters:
    d = d or {}
    return Parameters(d.get("temperature"), d.get("max_tokens"), d.get("top_p"), d.get("top_k"),
                      d.get("frequency_penalty"), d.get("presence_penalty"))


def _variable(d: dict) -> Variable:
    rules = d.get("validation")
    return Variable(
        name=d["name"],
        type=d.get("type", "string"),
        required=bool(d.get("required", False)),
        default=d.get("default"),
        has_default="default" in d,
        description=d.get("description", ""),
        example=d.get("example"),
        rules=None if rules is None else VariableRules(
            rules.get("pattern"), rules.get("min_length"), rules.get("max_length"), rules.get("minimum"),
            rules.get("maximum"), tuple(rules["enum"]) if rules.get("enum") is not None else None),
        binding=d.get("binding"),
    )


def _prompt(key: str, d: dict) -> Prompt:
    policy = d.get("tool_policy")
    overrides = {model: ModelOverride(o.get("system_template"), o.get("system_template_prefix", ""),
                                      o.get("system_template_suffix", ""),
                                      _parameters(o["parameters"]) if o.get("parameters") else None)
                 for model, o in (d.get("model_overrides") or {}).items()}
    return Prompt(
        key=key,
        id=d.get("id", key),
        name=d.get("name", key),
        version=d.get("version", ""),
        system_template=d["system_template"],
        description=d.get("description", ""),
        variables=tuple(_variable(v) for v in d.get("variables") or ()),
        tools=tuple(d.get("tools") or ()),
        tool_policy=None if policy is None else ToolPolicy(
            policy.get("tool_choice", "auto"), policy.get("max_rounds", 5),
            policy.get("max_tool_calls_per_turn", 10), tuple(policy.get("blocklist") or ())),
        parameters=_parameters(d.get("parameters")),
        validators=tuple(ValidatorSpec(v["type"], v.get("enabled", True), v.get("message", ""),
                                       v.get("fail_on_violation", False), v.get("params") or {})
                         for v in d.get("validators") or ()),
        model_overrides=overrides,
        media=d.get("media"),
        pipeline=d.get("pipeline"),
        evals=tuple(d.get("evals") or ()),
        tested_models=tuple(d.get("tested_models") or ()),
    )
