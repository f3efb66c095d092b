"""A pack and its parts, as frozen values: what :func:`convo.load_pack` returns.

A :class:`Pack` holds its prompts, tools and fragments, and the extension
sections (evals, workflow, agents, skills, compilation, metadata) as the
JSON the pack gives, so a pack that uses them loads and a program can read
them. :attr:`Pack.raw` is the whole pack as loaded.

Values are immutable (mappings are read-only views; the JSON sections are
the loader's own copies, not to be changed) and so safe to share between
threads.
"""

from __future__ import annotations

import types
from typing import Any, Mapping

from attrs import field, frozen

from ..errors import PromptNotFound
from ..messages import ToolSpec

__all__ = [
    "ModelOverride",
    "Pack",
    "PackTool",
    "Parameters",
    "Prompt",
    "TemplateEngine",
    "ToolPolicy",
    "ValidatorSpec",
    "Variable",
    "VariableRules",
]


def _frozen_map(value: Any) -> Mapping:
    return types.MappingProxyType(dict(value or {}))


@frozen
class VariableRules:
    """A variable's ``validation``: a pattern and lengths for strings, a range for numbers, allowed values.

    Immutable, so thread-safe.
    """

    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple | None = None


@frozen
class Variable:
    """A template variable a prompt declares: its type, whether it is required, its default and rules.

    ``has_default`` tells a default of ``null`` from no default at all.
    ``binding`` is the pack's ``binding`` object (``{"kind": "env",
    "field": "LOCALE", ...}``) as given.

    Immutable, so thread-safe.
    """

    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str = ""
    example: Any = None
    rules: VariableRules | None = None
    binding: Mapping | None = None


@frozen
class PackTool:
    """A tool the pack declares: its name, description and parameters (a JSON Schema object).

    Immutable, so thread-safe.
    """

    name: str
    description: str
    parameters: Mapping = field(factory=lambda: {"type": "object", "properties": {}}, converter=_frozen_map)

    def input_schema(self) -> dict:
        """The parameters as a plain JSON Schema dict (a copy)."""
        import copy

        return copy.deepcopy(dict(self.parameters)) or {"type": "object", "properties": {}}

    def spec(self) -> ToolSpec:
        """What the model is told about this tool."""
        return ToolSpec(self.name, self.description, self.input_schema())


@frozen
class ToolPolicy:
    """A prompt's ``tool_policy``: how the model may use tools.

    ``tool_choice`` is ``"auto"``, ``"required"`` or ``"none"``;
    ``max_rounds`` caps the model → tools → model cycles of one turn and
    ``max_tool_calls_per_turn`` the calls of one turn; ``blocklist`` names
    tools never offered nor run. Defaults are the specification's.

    Immutable, so thread-safe.
    """

    tool_choice: str = "auto"
    max_rounds: int = 5
    max_tool_calls_per_turn: int = 10
    blocklist: tuple = ()


@frozen
class Parameters:
    """Sampling parameters: what the pack sets, None for what it leaves to the provider. Immutable, so thread-safe."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def merged(self, other: "Parameters | None") -> "Parameters":
        """These parameters with every one ``other`` sets replacing them."""
        if other is None:
            return self
        names = ("temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty")
        return Parameters(**{n: getattr(other, n) if getattr(other, n) is not None else getattr(self, n)
                             for n in names})


@frozen
class ValidatorSpec:
    """A validator (guardrail) as the pack declares it: its type, switches and params. Immutable, so thread-safe."""

    type: str
    enabled: bool = True
    message: str = ""
    fail_on_violation: bool = False
    params: Mapping = field(factory=dict, converter=_frozen_map)


@frozen
class ModelOverride:
    """What a prompt changes for one model: its template (whole, or a prefix and suffix) and parameters.

    Immutable, so thread-safe.
    """

    system_template: str | None = None
    system_template_prefix: str = ""
    system_template_suffix: str = ""
    parameters: Parameters | None = None


@frozen
class Prompt:
    """One prompt of a pack: its system template, variables, tools, policy, parameters and validators.

    ``key`` is its key in the pack's ``prompts`` (what :func:`convo.open`
    takes); ``id`` is the id it declares (usually the same). ``pipeline``,
    ``media``, ``evals`` and ``tested_models`` are the pack's JSON as given.

    Immutable, so thread-safe.
    """

    key: str
    id: str
    name: str
    version: str
    system_template: str
    description: str = ""
    variables: tuple = ()
    tools: tuple = ()
    tool_policy: ToolPolicy | None = None
    parameters: Parameters = field(factory=Parameters)
    validators: tuple = ()
    model_overrides: Mapping = field(factory=dict, converter=_frozen_map)
    media: Mapping | None = None
    pipeline: Mapping | None = None
    evals: tuple = ()
    tested_models: tuple = ()

    def variable(self, name: str) -> Variable | None:
        """The declared variable called ``name``, or None."""
        for v in self.variables:
            if v.name == name:
                return v
        return None


@frozen
class TemplateEngine:
    """The pack's ``template_engine``: its version, variable syntax (``"{{variable}}"``) and features.

    Immutable, so thread-safe.
    """

    version: str = "v1"
    syntax: str = "{{variable}}"
    features: tuple = ()


@frozen(repr=False)
class Pack:
    """A PromptPack: prompts, tools, fragments and the extension sections, as loaded and checked.

    Made by :func:`convo.load_pack`. ``source`` is the file it was read
    from (None for a pack given as data). Immutable, so thread-safe.
    """

    id: str
    name: str
    version: str
    template_engine: TemplateEngine
    prompts: Mapping = field(converter=_frozen_map)
    description: str = ""
    tools: Mapping = field(factory=dict, converter=_frozen_map)
    fragments: Mapping = field(factory=dict, converter=_frozen_map)
    metadata: Any = None
    compilation: Any = None
    evals: tuple = ()
    workflow: Any = None
    agents: Any = None
    skills: tuple = ()
    source: str | None = None
    raw: Mapping = field(factory=dict, converter=_frozen_map)

    def prompt(self, key: str) -> Prompt:
        """The prompt ``key`` (its key in ``prompts``, or else the id it declares).

        Raises:
            PromptNotFound: no prompt has that key or id.
        """
        found = self.prompts.get(key)
        if found is None:
            found = next((p for p in self.prompts.values() if p.id == key), None)
        if found is None:
            raise PromptNotFound(self.source or "<pack>", key, sorted(self.prompts))
        return found

    def to_dict(self) -> dict:
        """The pack's JSON, as loaded (a deep copy)."""
        import copy

        return copy.deepcopy(dict(self.raw))

    def __repr__(self) -> str:
        return f"<Pack {self.id} {self.version} prompts={sorted(self.prompts)} tools={sorted(self.tools)}>"
