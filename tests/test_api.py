"""The public API surface changes only on purpose."""

import convo

PUBLIC = [
    "AnthropicService", "LocalService", "OpenAIService", "default_service",
    "APIConnectionError", "APITimeoutError", "AuthenticationError", "BlockDone", "Budget", "BudgetExceeded",
    "Cancelled", "ConfigurationError", "Convo", "ConvoError", "CumulativeUsage", "DoNotRespond", "Document",
    "Image", "InvalidRequestError", "Listener", "MaxTurnsExceeded", "Message", "MissingAPIKeyError",
    "MultiListener", "NoopListener", "NotFoundError", "OverloadedError", "PRICES", "PermissionDeniedError",
    "Price", "PriceTable", "ProviderError", "ProviderNotDetected", "RateLimitError", "RawBlock",
    "RedactedThinking", "Request", "Response", "ResponseFormatError", "RetryPolicy", "Role", "ServerError",
    "Service", "StopReason", "StreamDone", "Text", "TextDelta", "Thinking", "ThinkingConfig", "ThinkingDelta",
    "Tool", "ToolCallInfo", "ToolChoice", "ToolDefinitionError", "ToolInputDelta", "ToolOut", "ToolResult",
    "ToolSpec", "ToolUse", "UnknownToolUseError", "Usage", "combine_listeners", "tool", "tool_call_info",
    "ArgumentTypeError", "ConversationBusy", "ConversationClosed", "FREE", "Stream", "UnpricedModel",
    "UsageUpdate", "ToolInputError",
    "ConcurrentUpdate", "ConversationInfo", "ConversationNotFound", "ConversationUnreadable", "IncompatibleStore",
    "MemoryStore", "PostgresStore", "RedisStore", "SQLiteStore", "Store", "StoreError", "StoreUnavailable",
    "StoredConversation", "open_store", "resume",
    "Hook", "Pending", "PendingTool", "ValidationResult", "PendingAlreadyResolved", "ToolsPending",
    "MCPServerError", "UsageNode",
    "batch", "BatchResult", "BatchStore", "ItemOutcome", "ItemStatus", "RemoteItemError", "Output",
    "OutputValidationError",
    "MCPServer",
    "open", "load_pack", "Pack", "attach", "PackError", "PackNotFound", "PromptNotFound", "ToolNotInPack",
    "VariableError", "ValidationFailed", "UnsupportedContent", "AttachmentTooLarge",
]


def test_all_is_sorted_and_exactly_the_public_names():
    assert convo.__all__ == sorted(convo.__all__)
    assert convo.__all__ == sorted(PUBLIC)


def test_every_public_name_exists_and_is_documented():
    for name in convo.__all__:
        obj = getattr(convo, name)
        if callable(obj) and not isinstance(obj, type(convo.PRICES)):
            assert (obj.__doc__ or "").strip(), f"convo.{name} has no docstring"


def test_errors_inherit_the_builtin_they_resemble():
    assert issubclass(convo.BudgetExceeded, RuntimeError)
    assert issubclass(convo.InvalidRequestError, ValueError)
    assert issubclass(convo.APITimeoutError, TimeoutError) and issubclass(convo.APITimeoutError, ConnectionError)
    assert issubclass(convo.NotFoundError, LookupError)
    assert not issubclass(convo.Cancelled, convo.ConvoError)
    assert not issubclass(convo.DoNotRespond, convo.ConvoError)
