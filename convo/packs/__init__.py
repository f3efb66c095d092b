"""Packs: PromptPack files (``.pack.json``) run as convo conversations.

A PromptPack (promptpack.org; the format PromptKit's SDK starts from) holds
prompts with their variables, tools, validators, tool policy and
parameters. :func:`open` turns one prompt of a pack into an ordinary
:class:`~convo.Convo` configured from it, in one call::

    c = convo.open("support.pack.json", "refunds", variables={"company": "Acme"})
    c.on_tool("process_refund", refund, approve=needs_a_manager)
    reply = c.run("I want my money back for order 42")

This package offers:

- :func:`open` and :func:`load_pack` (also ``convo.open`` and
  ``convo.load_pack``), the :class:`Pack` model and its parts
  (:mod:`convo.packs.model`), and :func:`problems`, which checks parsed JSON
  against the specification (:mod:`convo.packs.spec`);
- :class:`PackSession`, the hook a pack conversation runs with
  (:mod:`convo.packs.session`: validation modes, tool policy, parameters);
- :func:`register_validator` for validator types of your own
  (:mod:`convo.packs.validators` lists the built-in ones);
- :class:`ContextTrimmed`, what a token budget took out of a request
  (:mod:`convo.packs.truncation`);
- :func:`attach`, files as content blocks (:mod:`convo.packs.attachments`).

Persistence: a pack conversation with a store saves the pack's content,
the prompt, the variables and the settings with every turn, and
:func:`convo.resume` rebuilds it (importing this package registers the
restorer). Tool handlers are code: after a resume, call ``on_tool`` again,
also in a process that only resolves held calls.

PromptKit's events reach listeners as: provider call started / completed /
failed = ``on_request`` / ``on_response`` / ``on_error``; tool call started /
completed / failed = ``on_tool_call`` / ``on_tool_result``; validation
passed / failed = ``on_validation``; context truncated / compacted =
``on_context_trimmed``; approval pending / resolved = ``on_tool_pending`` /
``on_tool_resolved``; state loaded / saved = ``on_state_loaded`` /
``on_state_saved``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from ..errors import ArgumentTypeError, ConfigurationError
from ..hooks import register_restorer
from .attachments import attach
from .loader import load_pack, pack_from_dict
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
from .session import PackSession, restore
from .spec import problems
from .truncation import ContextTrimmed
from .validators import known_types, register_validator

__all__ = [
    "ContextTrimmed",
    "ModelOverride",
    "Pack",
    "PackSession",
    "PackTool",
    "Parameters",
    "Prompt",
    "TemplateEngine",
    "ToolPolicy",
    "ValidatorSpec",
    "Variable",
    "VariableRules",
    "attach",
    "known_types",
    "load_pack",
    "open",
    "pack_from_dict",
    "problems",
    "register_validator",
]

register_restorer("pack", restore)

# Convo settings the pack decides: giving them to open() would fight the pack.
_PACK_OWNED = ("system_prompt", "parent")


def open(pack: Any, prompt: str | None = None, *, service: Any = None, model: str | None = None,
         store: Any = None, id: str | None = None, variables: Mapping | None = None, listener: Any = None,
         validation: str = "error", strict_validation: bool = False, disabled_validators: Iterable[str] = (),
         token_budget: int | None = None, truncation: str = "sliding", skip_schema_validation: bool = False,
         mcp_servers: Iterable[Any] = (), hooks: Iterable[Any] = (), **settings: Any) -> Any:
    """A :class:`~convo.Convo` running the prompt ``prompt`` of ``pack`` (a path or a :class:`Pack`).

    The pack's system template (rendered from the variables at each send),
    tools, tool policy, parameters and validators configure the
    conversation; everything else about it is an ordinary Convo.

    Args:
        pack: a ``.pack.json`` path, or a :class:`Pack` from :func:`load_pack`.
        prompt: the prompt's id (its key in ``prompts``); may be left out
            when the pack has exactly one prompt.
        service, model: the provider, chosen as ``Convo()`` chooses it.
        store, id: save the conversation (see :func:`convo.resume`).
        variables: initial values of the prompt's variables.
        listener: sees every event, the pack's included (see :mod:`convo.listeners`).
        validation: ``"error"`` (default), ``"warn"`` or ``"disabled"``
            (see :mod:`convo.packs.session`).
        strict_validation: every failing validator raises, whatever its
            ``fail_on_violation``.
        disabled_validators: validator types not to run.
        token_budget: the most tokens a request may hold (system prompt,
            tools and history); older history is trimmed to fit.
        truncation: ``"sliding"`` (drop the oldest) or ``"summarize"``
            (replace it with a summary the model writes).
        skip_schema_validation: load the pack without checking it against
            the specification.
        mcp_servers: MCP servers whose tools join the pack's.
        hooks: more hooks, run after the pack's.
        settings: any other :class:`~convo.Convo` setting (``budget=``,
            ``max_tokens=``, ``temperature=``...; these win over the pack's
            parameters).

    Raises:
        PackNotFound: no file at ``pack``.
        PackError: the pack breaks the specification, or uses a fragment or
            a validator type that does not exist.
        PromptNotFound: the pack has no such prompt.
        VariableError: a value in ``variables`` breaks its declaration.
    """
    from ..conversation import Convo

    clash = [name for name in _PACK_OWNED if name in settings]
    if clash:
        raise ConfigurationError(f"open() does not take {clash}: the pack's template is the system prompt")
    if isinstance(pack, (str, os.PathLike)):
        pack = load_pack(pack, skip_schema_validation=skip_schema_validation)
    elif not isinstance(pack, Pack):
        raise ArgumentTypeError(f"pack must be a path to a .pack.json file or a convo.Pack, got {type(pack).__name__}")
    session = PackSession(pack, prompt, variables=variables, validation=validation,
                          strict_validation=strict_validation, disabled_validators=disabled_validators,
                          token_budget=token_budget, truncation=truncation,
                          skip_schema_validation=skip_schema_validation)
    kwargs: dict[str, Any] = dict(settings)
    if id is not None:
        kwargs["id"] = id
    return Convo(service, model=model, store=store, listener=listener, mcp_servers=tuple(mcp_servers),
                 hooks=(session, *hooks), **kwargs)
