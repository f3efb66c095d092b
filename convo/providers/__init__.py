"""Model providers: one service per API, and the HTTP seam they share.

- :class:`AnthropicService`: Claude through the Anthropic Messages API.
- :class:`OpenAIService`: any server speaking OpenAI's Chat Completions.
- :class:`LocalService`: a GGUF model in-process through llama.cpp.
- :func:`default_service`: the service a model name or the environment picks.

Each provider module loads on first use, so importing this package is cheap
and works with any subset of the providers' dependencies installed.
"""

from __future__ import annotations

import importlib

from ._retry import RetryPolicy

__all__ = ["AnthropicService", "LocalService", "OpenAIService", "RetryPolicy", "default_service"]

_LAZY = {
    "AnthropicService": ".anthropic",
    "LocalService": ".local",
    "OpenAIService": ".openai",
    "default_service": ".detect",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convo.providers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
