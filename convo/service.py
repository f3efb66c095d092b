"""What a model provider must offer convo: the :class:`Service` protocol and stream events.

A service turns a :class:`~convo.Request` into a :class:`~convo.Response`,
either at once (``do``) or as a stream of events whose last one,
:class:`StreamDone`, carries the assembled response. Services must be safe
to call from several threads at once: one service is shared by a Convo and
all its sub-convos.

Besides the three methods of :class:`Service`, a Convo uses these when a
service has them:

- ``model``: the model name requests go to; a budget reserves each
  request's worst case at this model's price before sending.
- ``max_tokens``: the reply length cap used when a request sets none.
- ``price()``: the service's own :class:`~convo.Price` when the price
  table does not know its model (a local model returns ``FREE``).
- ``close()``, and use as a context manager: release connections.

A streaming service yields :class:`UsageUpdate` whenever the provider
reports usage before the end (Anthropic does at the start and end of a
message), so a stream that is abandoned or fails part-way still counts
the tokens the provider bills for it.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Iterator, Protocol, Union, runtime_checkable

from attrs import frozen

from .messages import Block, Request, Response, Text, Thinking, ToolUse
from .usage import Usage

__all__ = [
    "BlockDone",
    "Service",
    "StreamDone",
    "StreamEvent",
    "TextDelta",
    "ThinkingDelta",
    "ToolInputDelta",
    "UsageUpdate",
    "collect",
    "stream_from_response",
]


@frozen
class TextDelta:
    """More text for the content block at ``index``."""

    type: ClassVar[str] = "text_delta"
    index: int
    text: str


@frozen
class ThinkingDelta:
    """More visible reasoning for the thinking block at ``index``."""

    type: ClassVar[str] = "thinking_delta"
    index: int
    thinking: str


@frozen
class ToolInputDelta:
    """More of a tool call's input JSON, as it is generated (may not parse until done)."""

    type: ClassVar[str] = "tool_input_delta"
    index: int
    id: str
    name: str
    partial_json: str


@frozen
class BlockDone:
    """The content block at ``index`` is complete."""

    type: ClassVar[str] = "block_done"
    index: int
    block: Block


@frozen
class UsageUpdate:
    """The provider's usage report so far, for the whole reply (not an increment).

    A Convo consumes these: they are not passed on to the caller's stream.
    """

    type: ClassVar[str] = "usage_update"
    usage: Usage


@frozen
class StreamDone:
    """The stream ended; ``response`` is the whole reply, as ``do()`` would return it."""

    type: ClassVar[str] = "done"
    response: Response


StreamEvent = Union[TextDelta, ThinkingDelta, ToolInputDelta, BlockDone, UsageUpdate, StreamDone]


@runtime_checkable
class Service(Protocol):
    """A model provider. Implementations must be thread-safe."""

    def do(self, request: Request) -> Response:
        """Send ``request`` and return the whole reply."""
        ...

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Send ``request`` and yield events as they arrive; the last is :class:`StreamDone`."""
        ...

    def token_context_window(self) -> int:
        """How many tokens the model can attend to, input and output together."""
        ...


def stream_from_response(response: Response) -> Iterator[StreamEvent]:
    """The events a streaming provider would have sent for ``response``.

    For services that cannot stream: they still offer ``stream()``.
    """
    for index, block in enumerate(response.content):
        if isinstance(block, Text) and block.text:
            yield TextDelta(index, block.text)
        elif isinstance(block, Thinking) and block.thinking:
            yield ThinkingDelta(index, block.thinking)
        elif isinstance(block, ToolUse):
            import json

            yield ToolInputDelta(index, block.id, block.name, json.dumps(block.input))
        yield BlockDone(index, block)
    yield StreamDone(response)


def collect(events: Iterable[StreamEvent]) -> Response:
    """Drain a stream and return its final response."""
    final = None
    for event in events:
        if isinstance(event, StreamDone):
            final = event.response
    if final is None:
        from .errors import ResponseFormatError

        raise ResponseFormatError("the stream ended without a final response")
    return final
