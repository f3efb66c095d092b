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
