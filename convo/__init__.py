"""convo: managed conversations with large language models, from blocking Python."""

from ._retry import RetryPolicy
from .conversation import Budget, Convo
from .errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConvoError,
    InvalidRequestError,
    MaxTurnsExceeded,
    MissingAPIKeyError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderError,
    ProviderNotDetected,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    ToolDefinitionError,
    UnknownToolUseError,
)
from .messages import (
    Document,
    Image,
    Message,
    RawBlock,
    RedactedThinking,
    Request,
    Response,
    Role,
    StopReason,
    Text,
    Thinking,
    ThinkingConfig,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
from .pricing import PRICES, Price, PriceTable
from .service import BlockDone, Service, StreamDone, TextDelta, ThinkingDelta, ToolInputDelta
from .tools import DoNotRespond, Tool, ToolCallInfo, ToolOut, tool, tool_call_info
from .listeners import Listener, MultiListener, NoopListener, combine_listeners
from .usage import CumulativeUsage, Usage

__version__ = "0.1.0"

# Providers load on first use: importing convo stays cheap (no requests, no
# llama.cpp) for code that only needs the engine or its own service.
_LAZY = {
    "AnthropicService": ".anthropic",
    "LocalService": ".local",
    "OpenAIService": ".openai",
    "default_service": ".detect",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AnthropicService",
    "AuthenticationError",
    "BlockDone",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "ConfigurationError",
    "Convo",
    "ConvoError",
    "CumulativeUsage",
    "DoNotRespond",
    "Document",
    "Image",
    "InvalidRequestError",
    "Listener",
    "LocalService",
    "MaxTurnsExceeded",
    "Message",
    "MissingAPIKeyError",
    "MultiListener",
    "NoopListener",
    "NotFoundError",
    "OpenAIService",
    "OverloadedError",
    "PRICES",
    "PermissionDeniedError",
    "Price",
    "PriceTable",
    "ProviderError",
    "ProviderNotDetected",
    "RateLimitError",
    "RawBlock",
    "RedactedThinking",
    "Request",
    "Response",
    "ResponseFormatError",
    "RetryPolicy",
    "Role",
    "ServerError",
    "Service",
    "StopReason",
    "StreamDone",
    "Text",
    "TextDelta",
    "Thinking",
    "ThinkingConfig",
    "ThinkingDelta",
    "Tool",
    "ToolCallInfo",
    "ToolChoice",
    "ToolDefinitionError",
    "ToolInputDelta",
    "ToolOut",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "UnknownToolUseError",
    "Usage",
    "combine_listeners",
    "default_service",
    "tool",
    "tool_call_info",
]
