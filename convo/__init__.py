"""convo: managed conversations with large language models, from blocking Python."""

from .providers._retry import RetryPolicy
from .budget import Budget
from .batch import BatchResult, BatchStore, ItemOutcome, ItemStatus, RemoteItemError, batch
from .conversation import Convo, resume
from .errors import (
    APIConnectionError,
    APITimeoutError,
    ArgumentTypeError,
    AuthenticationError,
    BudgetExceeded,
    Cancelled,
    ConcurrentUpdate,
    ConfigurationError,
    ConversationBusy,
    ConversationClosed,
    ConversationNotFound,
    ConversationUnreadable,
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
    IncompatibleStore,
    PendingAlreadyResolved,
    StoreError,
    StoreUnavailable,
    ToolsPending,
    UnknownToolUseError,
    UnpricedModel,
    AttachmentTooLarge,
    PackError,
    PackNotFound,
    PromptNotFound,
    ToolNotInPack,
    UnsupportedContent,
    ValidationFailed,
    VariableError,
)
from .hooks import Hook, Pending, PendingTool, ValidationResult
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
from .structured import Output, OutputValidationError
from .stores import ConversationInfo, MemoryStore, SQLiteStore, Store, StoredConversation, open_store
from .tools import DoNotRespond, Tool, ToolCallInfo, ToolInputError, ToolOut, tool, tool_call_info
from .listeners import Listener, MultiListener, NoopListener, combine_listeners
from .usage import CumulativeUsage, Usage, UsageNode

__version__ = "0.1.0"

# Providers load on first use (convo.providers does the loading): importing
# convo stays cheap (no requests, no llama.cpp) for code that only needs the
# engine or its own service.
_LAZY = {
    "AnthropicService": "providers",
    "LocalService": "providers",
    "OpenAIService": "providers",
    "default_service": "providers",
    "MCPServer": "mcp",  # the mcp SDK (and asyncio) load only when an MCPServer is used
    "MCPServerError": "mcp",
    "PostgresStore": "stores",
    "RedisStore": "stores",
    # Packs load on first use too: import convo does not read or check any pack.
    "Pack": "packs",
    "attach": "packs",
    "load_pack": "packs",
    "open": "packs",
}


def __getattr__(name: str):
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module 'convo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AnthropicService",
    "ArgumentTypeError",
    "AttachmentTooLarge",
    "AuthenticationError",
    "BatchResult",
    "BatchStore",
    "BlockDone",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "ConcurrentUpdate",
    "ConfigurationError",
    "ConversationBusy",
    "ConversationClosed",
    "ConversationInfo",
    "ConversationNotFound",
    "ConversationUnreadable",
    "Convo",
    "ConvoError",
    "CumulativeUsage",
    "DoNotRespond",
    "Document",
    "FREE",
    "Hook",
    "Image",
    "IncompatibleStore",
    "InvalidRequestError",
    "ItemOutcome",
    "ItemStatus",
    "Listener",
    "LocalService",
    "MCPServer",
    "MCPServerError",
    "MaxTurnsExceeded",
    "MemoryStore",
    "Message",
    "MissingAPIKeyError",
    "MultiListener",
    "NoopListener",
    "NotFoundError",
    "OpenAIService",
    "Output",
    "OutputValidationError",
    "OverloadedError",
    "PRICES",
    "Pack",
    "PackError",
    "PackNotFound",
    "Pending",
    "PendingAlreadyResolved",
    "PendingTool",
    "PermissionDeniedError",
    "PostgresStore",
    "Price",
    "PriceTable",
    "PromptNotFound",
    "ProviderError",
    "ProviderNotDetected",
    "RateLimitError",
    "RawBlock",
    "RedactedThinking",
    "RedisStore",
    "RemoteItemError",
    "Request",
    "Response",
    "ResponseFormatError",
    "RetryPolicy",
    "Role",
    "SQLiteStore",
    "ServerError",
    "Service",
    "StopReason",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredConversation",
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
    "ToolNotInPack",
    "ToolOut",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "ToolsPending",
    "UnknownToolUseError",
    "UnpricedModel",
    "UnsupportedContent",
    "Usage",
    "UsageNode",
    "UsageUpdate",
    "ValidationFailed",
    "ValidationResult",
    "VariableError",
    "attach",
    "batch",
    "combine_listeners",
    "default_service",
    "load_pack",
    "open",
    "open_store",
    "resume",
    "tool",
    "tool_call_info",
]
