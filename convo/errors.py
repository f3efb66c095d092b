"""Errors raised by convo.

Every error convo raises derives from :class:`ConvoError` and also from the
builtin it most resembles, so ``except ValueError`` style handling keeps
working::

    ConvoError
    ├── ConfigurationError (ValueError)   a bad argument or setting
    │   ├── ArgumentTypeError (TypeError)  an argument of the wrong type
    │   ├── MissingAPIKeyError
    │   ├── ProviderNotDetected
    │   ├── UnpricedModel             a budget cannot be kept on a model with no price
    │   ├── PackError                 convo.packs: a pack that breaks the PromptPack specification
    │   │   └── PromptNotFound (LookupError)
    │   ├── ToolNotInPack (LookupError)  a handler for a tool the pack does not declare
    │   ├── VariableError             a pack variable that is missing or invalid
    │   ├── UnsupportedContent        an attachment the provider cannot take
    │   └── AttachmentTooLarge        an attachment over the size limit
    ├── BudgetExceeded (RuntimeError)
    ├── MaxTurnsExceeded (RuntimeError)
    ├── ConversationBusy (RuntimeError)   a send that would deadlock or break the history
    ├── ConversationClosed (RuntimeError)
    ├── PendingAlreadyResolved (RuntimeError)  a held tool call was approved or rejected already
    ├── ToolsPending (RuntimeError)   tool calls still wait for approval
    ├── StoreError                    convo.stores: persistence
    │   ├── ConversationNotFound (LookupError)
    │   ├── ConcurrentUpdate (RuntimeError)   another writer saved the conversation first
    │   ├── ConversationUnreadable (ValueError)  a corrupt row, or one a newer convo wrote
    │   ├── IncompatibleStore (RuntimeError)  the store's layout is newer than this convo
    │   └── StoreUnavailable (ConnectionError)  the database could not be reached
    ├── PackNotFound (FileNotFoundError)
    ├── ValidationFailed (ValueError)  a pack validator refused a message or a reply
    ├── UnknownToolUseError (LookupError)
    ├── ToolDefinitionError (TypeError)
    ├── ToolInputError (ValueError)   convo.tools: a tool's input could not become its arguments
    ├── OutputValidationError (ValueError)  convo.structured: no reply fit the output type
    ├── MCPServerError (ConnectionError)  convo.mcp: an MCP server would not start or answer
    ├── RemoteItemError (RuntimeError)  convo.batch: an item failed on a worker with an error that does not pickle
    └── ProviderError
        ├── AuthenticationError          401
        ├── PermissionDeniedError        403
        ├── NotFoundError (LookupError)  404
        ├── InvalidRequestError (ValueError)  400, 413, 422
        ├── RateLimitError               429
        ├── OverloadedError              529, "overloaded_error"
        ├── ServerError                  5xx
        ├── ResponseFormatError (ValueError)  a reply convo cannot parse
        └── APIConnectionError (ConnectionError)
            └── APITimeoutError (TimeoutError)

Flow control is not an error and sits outside this tree:
:class:`convo.DoNotRespond` (a tool asks for no result) and
:class:`Cancelled` (``Convo.cancel()`` stopped the call).

No error ever carries a secret: messages are built from the provider's error
body and status only, never from request headers.

Every error pickles and unpickles with its attributes (for process pools,
Dask and Ray, which ship exceptions between processes).
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "ArgumentTypeError",
    "AttachmentTooLarge",
    "AuthenticationError",
    "BudgetExceeded",
    "Cancelled",
    "ConcurrentUpdate",
    "ConfigurationError",
    "ConversationBusy",
    "ConversationClosed",
    "ConversationNotFound",
    "ConversationUnreadable",
    "ConvoError",
    "IncompatibleStore",
    "InvalidRequestError",
    "MaxTurnsExceeded",
    "MissingAPIKeyError",
    "NotFoundError",
    "OverloadedError",
    "PackError",
    "PackNotFound",
    "PendingAlreadyResolved",
    "PermissionDeniedError",
    "PromptNotFound",
    "ProviderError",
    "ProviderNotDetected",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "StoreError",
    "StoreUnavailable",
    "ToolDefinitionError",
    "ToolNotInPack",
    "ToolsPending",
    "UnknownToolUseError",
    "UnpricedModel",
    "UnsupportedContent",
    "ValidationFailed",
    "VariableError",
    "error_for_status",
]


def _rebuild(cls, args, state):
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ConvoError(Exception):
    """The root of every error convo raises."""

    def __reduce__(self):
        # Exception pickles as cls(*args), which breaks every subclass whose
        # __init__ takes other arguments than its message; rebuild from state.
        return (_rebuild, (type(self), self.args, self.__dict__))


class ConfigurationError(ConvoError, ValueError):
    """convo was set up in a way that cannot work (a bad argument, a missing setting)."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type (a str where a convo.Message is needed, say)."""


class MissingAPIKeyError(ConfigurationError):
    """No API key was given and the environment variable that holds it is unset."""

    def __init__(self, env_var: str, provider: str) -> None:
        self.env_var = env_var
        self.provider = provider
        super().__init__(
            f"no {provider} API key: pass api_key=... or set the {env_var} environment variable"
        )


class ProviderNotDetected(ConfigurationError):
    """No model provider could be chosen from the arguments and the environment."""


class UnpricedModel(ConfigurationError):
    """A budget applies but the model has no known price, so the spend could not be bounded.

    Price it with ``convo.PRICES.set(model, convo.Price(...))`` (or a
    Convo's own ``prices=``), or send without a budget.
    """

    def __init__(self, model: str, convo_id: str) -> None:
        self.model = model
        self.convo_id = convo_id
        super().__init__(
            f"convo {convo_id} has a budget, but the model {model!r} has no price, so its spend cannot be "
            f"bounded; price it with convo.PRICES.set({model!r}, convo.Price(input=..., output=...))"
        )


class BudgetExceeded(ConvoError, RuntimeError):
    """A send would take a conversation, or one of its ancestors, past its budget.

    Attributes:
        convo_id: the id of the conversation whose budget is in the way.
        spent: dollars spent since that budget started counting.
        max_dollars: the budget's limit.
        reserved: dollars held for requests of its subtree still in flight.
        requested: the worst-case cost of the refused request (0 when the
            budget was already spent).
    """

    def __init__(self, convo_id: str, spent, max_dollars, *, reserved=0, requested=0) -> None:
        self.convo_id = convo_id
        self.spent = spent
        self.max_dollars = max_dollars
        self.reserved = reserved
        self.requested = requested
        if requested:
            text = (f"convo {convo_id}: this request could cost up to ${requested}, more than is left of its "
                    f"${max_dollars} budget (spent ${spent}, ${reserved} held for requests in flight); "
                    "lower max_tokens or raise the budget")
        else:
            text = f"convo {convo_id} is over budget: spent ${spent} of ${max_dollars}"
        super().__init__(text)


class MaxTurnsExceeded(ConvoError, RuntimeError):
    """``Convo.run()`` reached ``max_turns`` before the model ended its turn."""

    def __init__(self, max_turns: int, last_response=None) -> None:
        self.max_turns = max_turns
        self.last_response = last_response
        super().__init__(
            f"the model was still calling tools after {max_turns} turns (max_turns={max_turns})"
        )


class ConversationBusy(ConvoError, RuntimeError):
    """A send that can never proceed: from inside the convo's own turn (a listener, a tool or an open stream on the same thread)."""


class ConversationClosed(ConvoError, RuntimeError):
    """The conversation was closed; it sends nothing more."""

    def __init__(self, convo_id: str) -> None:
        self.convo_id = convo_id
        super().__init__(f"convo {convo_id} is closed")


class PendingAlreadyResolved(ConvoError, RuntimeError):
    """This held tool call was approved or rejected already (perhaps by another process)."""

    def __init__(self, tool_use_id: str) -> None:
        self.tool_use_id = tool_use_id
        super().__init__(f"tool call {tool_use_id!r} is no longer pending: it was approved or rejected already")


class ToolsPending(ConvoError, RuntimeError):
    """Tool calls still wait for approval: resolve or reject each before continuing the turn."""

    def __init__(self, convo_id: str, tool_use_ids: list) -> None:
        self.convo_id = convo_id
        self.tool_use_ids = list(tool_use_ids)
        super().__init__(f"convo {convo_id}: tool calls {self.tool_use_ids} still wait for approval; "
                         "call resolve_tool() or reject_tool() for each first")


class StoreError(ConvoError):
    """A store could not do what was asked (see its subclasses)."""


class ConversationNotFound(StoreError, LookupError):
    """No stored conversation has this id (or it belongs to someone else)."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"no stored conversation has id {conversation_id!r}")


class ConcurrentUpdate(StoreError, RuntimeError):
    """Another writer saved this conversation since it was read: this write was refused, nothing was lost.

    Two processes resumed the same conversation and both sent: the second
    write is of a stale version. Resume again to continue from what was saved.
    """

    def __init__(self, conversation_id: str, expected_version: int, found_version: int | None) -> None:
        self.conversation_id = conversation_id
        self.expected_version = expected_version
        self.found_version = found_version
        if expected_version == 0:
            text = (f"conversation {conversation_id!r} already exists in the store; "
                    "use convo.resume() to continue it")
        elif found_version is None:
            text = f"conversation {conversation_id!r} is no longer in the store"
        else:
            text = (f"conversation {conversation_id!r} was saved by another writer (version {found_version}, "
                    f"this one had version {expected_version}); resume it again to continue")
        super().__init__(text)


class ConversationUnreadable(StoreError, ValueError):
    """A stored conversation cannot be read: a corrupt row, or one written by a newer convo."""

    def __init__(self, conversation_id: str, reason: str) -> None:
        self.conversation_id = conversation_id
        self.reason = reason
        super().__init__(f"stored conversation {conversation_id!r} cannot be read: {reason}")


class IncompatibleStore(StoreError, RuntimeError):
    """The store was laid out by a newer convo; this one cannot use it safely."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store's database could not be reached (down, restarting, refusing connections)."""


class UnknownToolUseError(ConvoError, LookupError):
    """``cancel_tool_use()`` was given an id that names no running tool call."""

    def __init__(self, tool_use_id: str) -> None:
        self.tool_use_id = tool_use_id
        super().__init__(f"no running tool call has id {tool_use_id!r}")


class ToolDefinitionError(ConvoError, TypeError):
    """A function cannot be turned into a tool (an untyped or unsupported parameter)."""


# --- packs and attachments (convo.packs) ---------------------------------------------

class PackError(ConfigurationError):
    """A pack breaks the PromptPack specification, or cannot work as convo runs it.

    Attributes:
        path: the pack's file (or ``"<pack>"`` for one given as data).
        problems: every problem found, as ``(field path, reason)`` pairs,
            e.g. ``("prompts.chat.variables[0].name", "is required")``.
    """

    def __init__(self, path: str, problems: list = ()) -> None:
        self.path = str(path)
        self.problems = [(str(where), str(reason)) for where, reason in problems]
        lines = [f"{where}: {reason}" if where else reason for where, reason in self.problems]
        count = len(lines)
        head = f"pack {self.path}: " + ("1 problem" if count == 1 else f"{count} problems")
        super().__init__(head + ":\n  " + "\n  ".join(lines) if lines else head)


class PromptNotFound(PackError, LookupError):
    """The pack has no prompt of that id."""

    def __init__(self, path: str, prompt: str = "", available: list = ()) -> None:
        self.prompt = prompt
        self.available = list(available)
        super().__init__(path, [("prompts", f"no prompt {prompt!r}; the pack has {self.available}")])


class PackNotFound(ConvoError, FileNotFoundError):
    """No pack file at that path."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        super().__init__(f"no pack file at {self.path}")


class ToolNotInPack(ConfigurationError, LookupError):
    """A handler was given for a tool the pack does not declare."""

    def __init__(self, tool_name: str, declared: list = ()) -> None:
        self.tool_name = tool_name
        self.declared = list(declared)
        super().__init__(f"the pack declares no tool {tool_name!r}; it declares {self.declared}")


class VariableError(ConfigurationError):
    """A pack variable is missing or does not pass its declaration (type, pattern, length, range, enum).

    Attributes:
        problems: ``(variable name, reason)`` pairs.
    """

    def __init__(self, problems: list | str) -> None:
        if isinstance(problems, str):  # a message of its own, naming no variable
            self.problems = [("", problems)]
            super().__init__(problems)
            return
        self.problems = [(str(name), str(reason)) for name, reason in problems]
        super().__init__("; ".join(f"variable {name!r}: {reason}" for name, reason in self.problems))


class UnsupportedContent(ConfigurationError):
    """An attachment the provider cannot take (a media type or a kind of block); nothing was sent."""

    def __init__(self, provider: str, what: str = "", hint: str = "") -> None:
        self.provider = provider
        self.what = what
        text = f"{provider} cannot take {what}" if what else provider
        super().__init__(text + (f"; {hint}" if hint else ""))


class AttachmentTooLarge(ConfigurationError):
    """An attachment is larger than the limit (the caller's, or the provider's); nothing was sent."""

    def __init__(self, what: str, size: int = 0, limit: int = 0) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes" if limit else what)


class ValidationFailed(ConvoError, ValueError):
    """A pack validator refused a user message (nothing was sent) or a reply (it did not join the history).

    Attributes:
        validator_type: the validator's type, e.g. ``"banned_words"``.
        direction: ``"input"`` (the user's message) or ``"output"`` (the reply).
        details: what the validator found (e.g. ``{"found": ["password"]}``).
        message: the pack's message for the user, if it gives one.
        results: every :class:`convo.ValidationResult` of this check.
    """

    def __init__(self, validator_type: str, direction: str = "output", details: dict | None = None,
                 message: str = "", results: tuple = ()) -> None:
        self.validator_type = validator_type
        self.direction = direction
        self.details = dict(details or {})
        self.message = message
        self.results = tuple(results)
        what = "the message" if direction == "input" else "the reply"
        text = f"{what} failed the pack's {validator_type!r} validator"
        if message:
            text += f": {message}"
        if self.details:
            text += f" ({self.details})"
        super().__init__(text)


class Cancelled(Exception):
    """``Convo.cancel()`` stopped a request or a tool call.

    Flow control rather than an error, so it does not derive from ConvoError:
    ``except ConvoError`` does not swallow a user's own cancellation.
    """


class ProviderError(ConvoError):
    """A model provider's API answered with an error, or could not be reached.

    Attributes:
        status_code: the HTTP status, or None when no response arrived.
        error_type: the provider's error type ("overloaded_error",
            "rate_limit_error", ...), or None.
        message: the provider's human-readable message.
        request_id: the provider's request id, for support tickets, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.request_id = request_id
        super().__init__(message)

    def __str__(self) -> str:
        parts = []
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.error_type:
            parts.append(self.error_type)
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.request_id:
            text += f" (request_id={self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status_code={self.status_code!r}, "
            f"error_type={self.error_type!r}, request_id={self.request_id!r})"
        )



class AuthenticationError(ProviderError):
    """The API key is missing, malformed or revoked (HTTP 401)."""


class PermissionDeniedError(ProviderError):
    """The API key may not use this resource (HTTP 403)."""


class NotFoundError(ProviderError, LookupError):
    """The model or endpoint does not exist (HTTP 404)."""


class InvalidRequestError(ProviderError, ValueError):
    """The provider rejected the request as malformed (HTTP 400, 413, 422)."""


class RateLimitError(ProviderError):
    """Too many requests or tokens for the account's limits (HTTP 429)."""


class OverloadedError(ProviderError):
    """The provider is temporarily overloaded (Anthropic's HTTP 529)."""


class ServerError(ProviderError):
    """The provider failed on its side (HTTP 5xx)."""


class ResponseFormatError(ProviderError, ValueError):
    """The provider's reply could not be parsed: malformed JSON, a truncated stream."""


class APIConnectionError(ProviderError, ConnectionError):
    """The provider could not be reached, or dropped the connection."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The provider did not answer within the timeout."""


_BY_STATUS: dict[int, type[ProviderError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: APITimeoutError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    529: OverloadedError,
}

_BY_TYPE: dict[str, type[ProviderError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "request_too_large": InvalidRequestError,
    "rate_limit_error": RateLimitError,
    "overloaded_error": OverloadedError,
    "api_error": ServerError,
    "timeout_error": APITimeoutError,
}


def error_for_status(
    status_code: int | None,
    message: str,
    *,
    error_type: str | None = None,
    request_id: str | None = None,
) -> ProviderError:
    """Build the typed :class:`ProviderError` for an HTTP status and error type.

    The status decides when it is known; an error that arrives inside a 200
    stream (status None) is typed by its ``error_type``.
    """
    cls: type[ProviderError] | None = None
    if status_code is not None:
        cls = _BY_STATUS.get(status_code)
        if cls is None and status_code >= 500:
            cls = ServerError
    if cls is None and error_type:
        cls = _BY_TYPE.get(error_type)
    if cls is None:
        cls = ProviderError
    return cls(message, status_code=status_code, error_type=error_type, request_id=request_id)
