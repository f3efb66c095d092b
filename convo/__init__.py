"""convo: managed conversations with large language models, from blocking Python."""

from .providers._retry import RetryPolicy
from .budget import Budget
from .conversation import Convo
from .errors import (
    APIConnectionError,
    APITimeoutError,
    ArgumentTypeError,
    AuthenticationError,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    ConversationBusy,
    ConversationClosed,
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
    UnpricedModel,
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
from .pricing import FREE, PRICES, Price, PriceTable
from .service import BlockDone, Service, StreamDone, TextDelta, ThinkingDelta, ToolInputDelta, UsageUpdate
from .streaming import Stream
from .tools import DoNotRespond, Tool, ToolCallInfo, ToolInputError, ToolOut, tool, tool_call_info
from .listeners import Listener, MultiListener, NoopListener, combine_listeners
from .usage import CumulativeUsage, Usage

__version__ = "0.1.0"

# Providers load on first use (convo.providers does the loading): importing
# convo stays cheap (no requests, no llama.cpp) for code that only needs the
# engine or its own service.
_LAZY = frozenset({"AnthropicService", "LocalService", "OpenAIService", "default_service"})


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'convo' has no attribute {name!r}")
    from . import providers

    value = getattr(providers, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | _LAZY)


__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AnthropicService",
    "ArgumentTypeError",
    "AuthenticationError",
    "BlockDone",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "ConfigurationError",
    "ConversationBusy",
    "ConversationClosed",
    "Convo",
    "ConvoError",
    "CumulativeUsage",
    "DoNotRespond",
    "Document",
    "FREE",
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
    "Stream",
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
    "ToolInputError",
    "ToolOut",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "UnknownToolUseError",
    "UnpricedModel",
    "Usage",
    "UsageUpdate",
    "combine_listeners",
    "default_service",
    "tool",
    "tool_call_info",
]
