"""Choosing a model provider: :func:`default_service`.

``Convo()`` without a service calls it. The rules, in order:

1. An explicit model name picks its provider: ``claude-*`` is Anthropic;
   ``gpt-*``, ``chatgpt-*`` and the o-series (``o1``, ``o3-mini``,
   ``o4-mini``...) are OpenAI (at ``OPENAI_BASE_URL`` when it is set, where
   no key is needed); ``"local"``, ``"local/SmolLM2-135M-Instruct"`` or a
   path to a ``.gguf`` file is the embedded local model. Any other name goes
   to the OpenAI-compatible server at ``OPENAI_BASE_URL`` when that is set
   (Ollama, vLLM, llama.cpp's server, LM Studio, OpenRouter).
2. Without a model: ``ANTHROPIC_API_KEY`` picks Anthropic, then
   ``OPENAI_API_KEY`` picks OpenAI, then ``OPENAI_BASE_URL`` picks the
   OpenAI-compatible server there (no key needed), then the local model if
   ``convo[local]`` is installed.
3. Otherwise :class:`~convo.ProviderNotDetected`, saying what to set or install.

Variables set to blanks count as unset.

The provider modules are imported only when chosen, so this module is cheap
to import and works with any subset of them installed.
"""

from __future__ import annotations

import re

from ..errors import ProviderNotDetected
from ..service import Service
from ._http import environ

__all__ = ["default_service", "provider_for_model"]

_O_SERIES = re.compile(r"^o[1-9][0-9]*($|-)")

_NOTHING_FOUND = (
    "no model provider found: set ANTHROPIC_API_KEY (Claude) or OPENAI_API_KEY (OpenAI), "
    "set OPENAI_BASE_URL to an OpenAI-compatible server, "
    "or install the embedded local model with: pip install 'convo[local]'"
)


def provider_for_model(model: str) -> str | None:
    """Which provider serves ``model``: "anthropic", "openai", "local", or None if unknown.

    Decided by the name alone; the environment plays no part.
    """
    from .local import DEFAULT_MODEL

    name = model.strip()
    lowered = name.lower()
    if lowered == "local" or lowered == f"local/{DEFAULT_MODEL}".lower() or lowered.endswith(".gguf"):
        return "local"
    if lowered.startswith("claude"):
        return "anthropic"
    if lowered.startswith(("gpt-", "chatgpt-")) or _O_SERIES.match(lowered):
        return "openai"
    return None


def default_service(model: str | None = None, **options) -> Service:
    """The service for ``model``, or the one the environment points at.

    Args:
        model: a model name (``"claude-sonnet-4-5"``, ``"gpt-4.1-mini"``,
            ``"o3"``), ``"local"``, or a path to a GGUF file. None looks at
            the environment.
        options: keyword settings for the chosen service's constructor
            (``timeout=``, ``max_tokens=``, ``retry=``...).

    Raises:
        ProviderNotDetected: no provider fits; the message says what to set
            or install.
        ConfigurationError: the chosen provider cannot start (a missing
            API key for an explicit Claude or OpenAI model, a GGUF path that is not a
            file, llama-cpp-python not installed).
    """
    if model is not None and model.strip():
        return _for_model(model.strip(), options)
    if environ("ANTHROPIC_API_KEY"):
        from .anthropic import AnthropicService

        return AnthropicService(**options)
    if environ("OPENAI_API_KEY") or environ("OPENAI_BASE_URL"):
        from .openai import OpenAIService

        return OpenAIService(**options)
    from .local import LocalService, local_model_available

    if local_model_available():
        return LocalService(**options)
    raise ProviderNotDetected(_NOTHING_FOUND)


def _for_model(model: str, options: dict) -> Service:
    provider = provider_for_model(model)
    if provider == "local":
        from .local import LocalService

        return LocalService(model if model.lower().endswith(".gguf") else None, **options)
    if provider == "anthropic":
        from .anthropic import AnthropicService

        return AnthropicService(model, **options)
    if provider == "openai" or environ("OPENAI_BASE_URL"):
        from .openai import OpenAIService

        # Without a key, OpenAIService refuses OpenAI's own URL and takes any other.
        return OpenAIService(model, **options)
    raise ProviderNotDetected(
        f"cannot tell which provider serves the model {model!r}: use a claude-* model (Anthropic), "
        "a gpt-* or o-series model (OpenAI), 'local' or a path to a .gguf file (the embedded model), "
        "or set OPENAI_BASE_URL to the OpenAI-compatible server that serves it"
    )
