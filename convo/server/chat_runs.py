"""Running chats: the operations the routes and the model's tools share, and the runs on worker threads.

:class:`Chats` is what the chats API does, below HTTP: each operation is
one transaction in the chat store followed by the events it causes (for
watchers, for the runners of every replica, for the owner's ``/watch``).
Routes and the sub-agent tools both call it.

:class:`ChatRunner` runs chats. One per server process, with a worker id
of its own:

- **Acquisition.** A thread takes pending chats (oldest first) whenever
  one becomes pending anywhere (a control notice wakes it, from this
  process or another replica) and every ``acquire_interval`` seconds, up
  to ``max_runs`` at once. The store makes sure exactly one replica gets
  each chat; the acquisition raises its generation.
- **A run** happens on a worker thread of its own: it rebuilds a
  :class:`~convo.Convo` from the stored messages (what the model saw,
  exactly: thinking signatures, tool inputs), sends what has not been
  answered yet (the user messages after the last reply, tool results) with
  :meth:`Convo.run`, and saves each step as it completes: the assistant
  message with its usage when the reply ends, the tool results when the
  next request starts. Every save checks the generation (a run that lost
  its chat writes nothing). Stream events go to watchers as they happen.
- **Control.** A chat interrupted, edited, promoted or deleted anywhere
  stops its run here: an interrupt keeps the partial reply (text,
  reasoning, the tool calls so far, and an error result for each call
  that did not finish); the others drop it.
- **Release** sets the final status: ``waiting`` (``completed`` for a
  sub-chat), ``paused`` (the run reached ``max_steps`` with the model still
  working), ``error`` (the provider failed: the reason is saved and
  streamed), or ``pending`` again (the server is shutting down; another
  replica or the next start carries on). The next queued message is taken
  up unless the run failed.
- **Heartbeats.** Every ``heartbeat`` seconds the runner marks its runs
  alive; a run whose chat it no longer holds is stopped. The same thread
  sweeps for runs whose worker stopped beating ``stale_after`` seconds ago
  (a replica that died) and makes those chats pending, so any replica picks
  them up. Coder sweeps only when a replica starts; this sweeps always.
- **Compression.** After a run that ended normally, if the last request
  used ``compression_threshold`` percent of the model config's
  ``context_limit`` or more, the model writes a summary (a sub-convo of the
  run's convo, so its cost rolls up) that replaces the earlier history in
  later prompts; the API still shows every message.

Thread safety: every public method may be called from any thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any, Sequence

from attrs import field, frozen

from .._log import log
from .._workers import Workers
from ..errors import Cancelled, ConfigurationError, ConvoError, MaxTurnsExceeded, StoreError
from ..messages import Message, Role, Text, Thinking, ToolResult, ToolUse
from ..service import BlockDone, TextDelta, ThinkingDelta, ToolInputDelta
from ..tools import Tool, ToolOut, tool_call_info
from .chat_store import (
    ChatEvents,
    ChatNotFound,
    ChatRow,
    ChatStore,
    Event,
    MessageRow,
    NewMessage,
)
from .chats_wire import (
    MAX_QUEUE_SIZE,
    ChatStatus,
    ChatUsage,
    MessagePart,
    MessageUsage,
    error_event,
    fallback_title,
    message_event,
    part_event,
    queue_event,
    reasoning_title,
    status_event,
    tool_result_value,
)

__all__ = ["ChatRunner", "ChatSettings", "Chats", "DEFAULT_SYSTEM_PROMPT"]

DEFAULT_SYSTEM_PROMPT = ("You are a helpful assistant in a chat. Answer clearly and concisely. You can delegate a "
                         "self-contained task to a sub-agent with spawn_agent and collect its report with wait_agent.")

SUBAGENT_INSTRUCTION = ("You are a delegated sub-agent working for another agent. Complete the task you were given, "
                        "then report the result concisely to the parent agent in your final message.")

SUMMARY_INSTRUCTION = ("Summarize the conversation so far as a dense, factual hand-off for another assistant who will "
                       "continue it without seeing the history: the user's goals, decisions made, files, commands "
                       "and APIs involved, errors met and how they were fixed, and open questions. Use plain text.")

INTERRUPTED_RESULT = "tool call was interrupted before it produced a result"
MISSING_RESULT = "tool call was interrupted and did not receive a result"

#: Default context windows for the model configs ``convo serve --model`` seeds, by provider.
CONTEXT_LIMITS = {"anthropic": 200_000, "openai": 128_000, "local": 8_192}


def _positive(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{attribute.name} must be a positive number, got {value!r}")


@frozen
class ChatSettings:
    """How the chats API runs chats (every knob has a default).

    Args:
        heartbeat: seconds between a runner's heartbeats (and its sweeps for stale runs).
        stale_after: seconds without a heartbeat after which a run is presumed dead and its chat retried.
        acquire_interval: seconds between looks for pending chats when no notice woke the runner.
        max_runs: chats one process runs at once (more wait, pending).
        max_steps: model replies in one run; a run that reaches it is ``paused``.
        system_prompt: the hidden system prompt stored with each new chat.
        watcher_buffer: stream events a watcher may leave unsent before it is dropped.
        watcher_timeout: seconds a frame may wait to go out to a watcher (it stopped reading) before
            the watcher is dropped.
        ping_interval: seconds of stream silence after which a ``ping`` envelope goes out.
        summary_timeout: seconds the model has to write a compression summary.
        shutdown_grace: seconds a stopping server waits for its runs to hand their chats back.
    """

    heartbeat: float = field(default=10.0, validator=_positive)
    stale_after: float = field(default=60.0, validator=_positive)
    acquire_interval: float = field(default=1.0, validator=_positive)
    max_runs: int = field(default=256, validator=_positive)
    max_steps: int = field(default=1200, validator=_positive)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    watcher_buffer: int = field(default=20000, validator=_positive)
    watcher_timeout: float = field(default=10.0, validator=_positive)
    ping_interval: float = field(default=15.0, validator=_positive)
    summary_timeout: float = field(default=90.0, validator=_positive)
    shutdown_grace: float = field(default=5.0, validator=_positive)


def env_keys(environ: Any = None) -> dict:
    """The deployment's provider keys (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``): the "env presets"."""
    environ = os.environ if environ is None else environ
    return {name: (environ.get(var) or "").strip() for name, var in (("anthropic", "ANTHROPIC_API_KEY"),
                                                                     ("openai", "OPENAI_API_KEY"))
            if (environ.get(var) or "").strip()}


def chat_usage(cumulative: Any) -> ChatUsage:
    """A :class:`~convo.CumulativeUsage` as a :class:`ChatUsage`."""
    return ChatUsage(cumulative.input_tokens, cumulative.output_tokens, cumulative.reasoning_tokens,
                     cumulative.cache_creation_input_tokens, cumulative.cache_read_input_tokens,
                     cumulative.total_cost_usd, cumulative.responses)


def usage_delta(now: ChatUsage, before: ChatUsage) -> ChatUsage:
    return ChatUsage(now.input_tokens - before.input_tokens, now.output_tokens - before.output_tokens,
                     now.reasoning_tokens - before.reasoning_tokens,
                     now.cache_creation_tokens - before.cache_creation_tokens,
                     now.cache_read_tokens - before.cache_read_tokens, now.cost_usd - before.cost_usd,
                     now.responses - before.responses)


# --- the operations --------------------------------------------------------------------------------


class Chats:
    """The chats API's operations: a store transaction, then the events it causes. Thread-safe."""

    def __init__(self, store: ChatStore, events: ChatEvents, settings: ChatSettings) -> None:
        self.store = store
        self.events = events
        self.settings = settings

    # -- publishing --

    def chat_json(self, row: ChatRow) -> dict:
        return row.public(self.store.total_usage(row)).to_wire()

    def announce(self, row: ChatRow, events: Sequence[dict] = (), *, kind: str | None = "status_change",
                 status: bool = True, deleted: bool = False) -> None:
        """Publish ``events`` plus (with ``status``) the chat's status, its control notice and a ``/watch`` event."""
        out = list(events)
        if status and not deleted:
            out.append(status_event(row.id, row.status))
            if row.status == ChatStatus.ERROR and row.last_error:
                out.append(error_event(row.id, row.last_error))
        control = {"status": row.status.value, "generation": row.generation, "worker": row.worker_id,
                   "deleted": deleted} if status or deleted else None
        watch = None
        if kind is not None:
            try:
                watch = (kind, row.public(row.usage).to_wire() if deleted else self.chat_json(row))
            except StoreError:
                watch = (kind, row.public(row.usage).to_wire())
        self.events.publish(row.id, out, control=control, owner_id=row.owner_id, watch=watch)

    # -- operations --

    def create(self, owner_id: str, texts: Sequence[str], model_config_id: str | None, *,
               parent: ChatRow | None = None, title: str | None = None) -> tuple[ChatRow, MessageRow]:
        row, first = self.store.create_chat(
            owner_id, texts, model_config_id, title=title or fallback_title(texts),
            system_prompt=None if parent is not None else self.settings.system_prompt, parent=parent)
        self.announce(row, [message_event(first.public())], kind="created")
        return row, first

    def post(self, owner_id: str | None, chat_id: str, texts: Sequence[str], model_config_id: str | None, *,
             interrupt: bool = False):
        posted = self.store.post_message(owner_id, chat_id, texts, model_config_id, max_queue=MAX_QUEUE_SIZE,
                                         interrupt=interrupt)
        if posted.queued is not None:
            self.events.publish(chat_id, [queue_event(chat_id, [q.public() for q in posted.queue])])
        else:
            self.announce(posted.chat, [message_event(posted.message.public())])
        return posted

    def edit(self, owner_id: str, chat_id: str, message_id: int, texts: Sequence[str]):
        row, message = self.store.edit_message(owner_id, chat_id, message_id, texts)
        self.announce(row, [message_event(message.public()), queue_event(chat_id, [])])
        return row, message

    def interrupt(self, owner_id: str | None, chat_id: str) -> ChatRow:
        row, changed, released = self.store.interrupt(owner_id, chat_id)
        if changed:
            extra = []
            if released is not None:
                extra = [queue_event(chat_id, [q.public() for q in released.queue or ()]),
                         message_event(released.promoted.public())]
            self.announce(row, extra)
        return row

    def delete(self, owner_id: str, chat_id: str) -> None:
        for row in self.store.delete_chat(owner_id, chat_id):
            self.announce(row, kind="deleted", status=False, deleted=True)

    def delete_queued(self, owner_id: str, chat_id: str, queued_id: int) -> None:
        queue = self.store.delete_queued(owner_id, chat_id, queued_id)
        self.events.publish(chat_id, [queue_event(chat_id, [q.public() for q in queue])])

    def promote(self, owner_id: str, chat_id: str, queued_id: int) -> MessageRow:
        row, message, queue = self.store.promote_queued(owner_id, chat_id, queued_id)
        self.announce(row, [queue_event(chat_id, [q.public() for q in queue]), message_event(message.public())],
                      kind=None)
        return message


# --- runs ------------------------------------------------------------------------------------------


class ChatRunner:
    """Runs this process's share of the chats (see the module docstring). Start it, then stop it."""

    def __init__(self, ctx: Any, chats: Chats, settings: ChatSettings) -> None:
        self.ctx = ctx
        self.chats = chats
        self.store = chats.store
        self.events = chats.events
        self.settings = settings
        self.worker_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers = Workers(idle_timeout=30.0, name="convo-chat-run")
        self._services: dict[tuple, Any] = {}
        self._services_lock = threading.Lock()
        self.env_keys = env_keys()
        self.tools = chat_tools(self) + tuple(ctx.tools.values())

    # -- lifetime --

    def start(self) -> None:
        self.events.on_control(self._on_control)
        for name, target in (("convo-chat-acquire", self._acquire_loop), ("convo-chat-heartbeat", self._beat_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop taking chats; hand running ones back (``pending``) and wait up to ``shutdown_grace`` seconds."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel("shutdown")
        deadline = time.monotonic() + self.settings.shutdown_grace
        for run in runs:
            run.done.wait(max(0.0, deadline - time.monotonic()))
        for t in self._threads:
            t.join(timeout=2)
        with self._services_lock:
            services, self._services = list(self._services.values()), {}
        for service in services:
            close = getattr(service, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass

    def poke(self) -> None:
        """Look for pending chats now."""
        self._wake.set()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def run_of(self, chat_id: str) -> "_Run | None":
        with self._lock:
            return self._runs.get(chat_id)

    # -- control --

    def _on_control(self, chat_id: str, control: dict) -> None:
        status = control.get("status")
        if status == ChatStatus.PENDING.value:
            self.poke()
        run = self.run_of(chat_id)
        if run is None:
            return
        # Notices come late and from several places; a generation older than the run's is from before it
        # was acquired (the chat being created or posted to, say) and says nothing about it.
        generation = control.get("generation")
        if not isinstance(generation, int):
            return
        if control.get("deleted") or generation > run.generation:
            run.cancel("lost")
        elif generation == run.generation and status != ChatStatus.RUNNING.value:
            run.cancel("interrupted")

    # -- the loops --

    def _acquire_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                while not self._stopping.is_set():
                    with self._lock:
                        if len(self._runs) >= self.settings.max_runs:
                            break
                    row = self.store.acquire(self.worker_id)
                    if row is None:
                        break
                    run = _Run(self, row)
                    with self._lock:
                        old = self._runs.get(row.id)
                        self._runs[row.id] = run
                    if old is not None:
                        old.cancel("lost")
                    self._workers.submit(run.execute)
            except StoreError as exc:
                log.warning("chat_acquire_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.error("chat_acquire_crashed", exc_info=True)
            self._wake.wait(self.settings.acquire_interval)

    def _beat_loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            if not first and self._stopping.wait(self.settings.heartbeat):
                return
            first = False
            try:
                with self._lock:
                    runs = dict(self._runs)
                alive = self.store.heartbeat(self.worker_id, list(runs))
                for chat_id, run in runs.items():
                    if chat_id not in alive and not run.done.is_set() and run.started < time.monotonic() - 0.5:
                        run.cancel("interrupted")
                for row in self.store.recover_stale(self.settings.stale_after):
                    log.info("chat_run_recovered", chat_id=row.id)
                    self.chats.announce(row)
            except StoreError as exc:
                log.warning("chat_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.error("chat_heartbeat_crashed", exc_info=True)

    def _finished(self, run: "_Run") -> None:
        with self._lock:
            if self._runs.get(run.chat_id) is run:
                del self._runs[run.chat_id]
        run.done.set()
        self.poke()

    # -- services --

    def service_for(self, config: Any, providers: Sequence[Any] | None = None) -> Any:
        """The model service for a model config (made once per provider, model, key and URL; shared)."""
        if providers is None:
            providers, _ = self.store.configs()
        row = next((p for p in providers if p.provider == config.provider), None)
        if row is None:
            raise ConfigurationError(f"chat provider {config.provider!r} is not configured")
        if not row.enabled:
            raise ConfigurationError(f"chat provider {config.provider!r} is disabled")
        if not row.api_key and not row.base_url and self.ctx.models and config.model in self.ctx.models:
            return self.ctx.service_for(config.model)  # the service `convo serve --model` made
        key = (config.provider, config.model, row.api_key, row.base_url)
        with self._services_lock:
            made = self._services.get(key)
        if made is not None:
            return made
        made = _make_service(config.provider, config.model, row.api_key or None, row.base_url or None)
        with self._services_lock:
            return self._services.setdefault(key, made)


def _make_service(provider: str, model: str, api_key: str | None, base_url: str | None) -> Any:
    if provider == "anthropic":
        from ..providers.anthropic import AnthropicService

        return AnthropicService(model, api_key=api_key, base_url=base_url)
    if provider in ("openai", "openai-compat", "azure", "openrouter", "vercel"):
        from ..providers.openai import OpenAIService

        defaults = {"openrouter": "https://openrouter.ai/api/v1", "vercel": "https://ai-gateway.vercel.sh/v1"}
        return OpenAIService(model, api_key=api_key, base_url=base_url or defaults.get(provider))
    if provider == "local":
        from ..providers.local import LocalService

        return LocalService(model if model.lower().endswith(".gguf") else None)
    raise ConfigurationError(f"convo serve cannot run models of the provider {provider!r}")


# --- one run --------------------------------------------------------------------------------------


class _Draft:
    """The reply streaming in, block by block: what an interrupt keeps."""

    def __init__(self) -> None:
        self.blocks: dict[int, list] = {}  # index -> [kind, text or json, id, name, done block]

    def text(self, index: int, text: str) -> None:
        self.blocks.setdefault(index, ["text", "", None, None, None])[1] += text

    def thinking(self, index: int, text: str) -> None:
        self.blocks.setdefault(index, ["thinking", "", None, None, None])[1] += text

    def tool(self, index: int, tool_id: str, name: str, partial: str) -> None:
        b = self.blocks.setdefault(index, ["tool", "", tool_id, name, None])
        b[1] += partial
        b[2], b[3] = tool_id or b[2], name or b[3]

    def done(self, index: int, block: Any) -> None:
        kind = "tool" if isinstance(block, ToolUse) else "thinking" if isinstance(block, Thinking) else "text"
        b = self.blocks.setdefault(index, [kind, "", getattr(block, "id", None), getattr(block, "name", None), None])
        b[4] = block

    def reply(self) -> tuple[list[MessagePart], list, list[ToolUse]]:
        """The API parts, the model's blocks (thinking without a signature left out) and the tool calls."""
        parts: list[MessagePart] = []
        blocks: list = []
        calls: list[ToolUse] = []
        for index in sorted(self.blocks):
            kind, text, tool_id, name, block = self.blocks[index]
            if kind == "text":
                value = block.text if isinstance(block, Text) else text
                if value:
                    parts.append(MessagePart.text_part(value))
                    blocks.append(Text(value))
            elif kind == "thinking":
                value = block.thinking if isinstance(block, Thinking) else text
                if value:
                    parts.append(MessagePart.reasoning(value, reasoning_title(value)))
                    if isinstance(block, Thinking) and block.signature:
                        blocks.append(block)
            elif tool_id:
                if isinstance(block, ToolUse):
                    call = block
                else:
                    try:
                        args = json.loads(text) if text.strip() else {}
                    except ValueError:
                        args = None
                    # Input cut short is not JSON: the API shows what had streamed, as text, and the
                    # model gets an empty input (its call is answered as interrupted anyway).
                    call = ToolUse(tool_id, name or "", args if isinstance(args, dict) else {})
                    if not isinstance(args, dict):
                        parts.append(MessagePart.tool_call(tool_id, name or "", None, text))
                        blocks.append(call)
                        calls.append(call)
                        continue
                parts.append(MessagePart.tool_call(call.id, call.name, call.input))
                blocks.append(call)
                calls.append(call)
        return parts, blocks, calls


def assistant_parts(message: Message) -> list[MessagePart]:
    """The API parts of an assistant message."""
    parts = []
    for block in message.content:
        if isinstance(block, Text):
            if block.text:
                parts.append(MessagePart.text_part(block.text))
        elif isinstance(block, Thinking):
            parts.append(MessagePart.reasoning(block.thinking, reasoning_title(block.thinking)))
        elif isinstance(block, ToolUse):
            parts.append(MessagePart.tool_call(block.id, block.name, block.input))
    return parts


def result_part(tool_use: ToolUse, result: ToolResult) -> MessagePart:
    return MessagePart.tool_result(tool_use.id, tool_use.name, tool_result_value(result.text(), result.is_error),
                                   result.is_error)


def build_history(rows: Sequence[MessageRow]) -> tuple[str, list[Message], list | None]:
    """What the model sees of a chat: ``(system prompt, history, blocks to send)``.

    The system prompt is every stored system message plus the latest
    summary; the history is what follows that summary, user and tool rows
    merged into user messages; a tool call with no stored result gets one
    saying it was interrupted. The blocks to send are the unanswered tail
    (tool results, then the user messages' text), or None when the model
    has the last word.
    """
    systems = [r.text() for r in rows if r.role == "system" and not r.compressed]
    summaries = [r for r in rows if r.role == "system" and r.compressed]
    start = summaries[-1].id if summaries else 0
    if summaries:
        systems.append(summaries[-1].text())
    history: list[Message] = []
    results: dict[str, ToolResult] = {}
    texts: list = []

    def answer(calls: list[ToolUse]) -> list[ToolResult]:
        return [results.get(c.id) or ToolResult(c.id, MISSING_RESULT, is_error=True) for c in calls]

    def flush_user() -> None:
        calls = history[-1].tool_uses() if history and history[-1].role == Role.ASSISTANT else []
        blocks = answer(calls) + texts
        results.clear()
        texts.clear()
        if blocks:
            history.append(Message(Role.USER, blocks))

    for r in rows:
        if r.role == "system" or r.compressed or r.id <= start:
            continue
        if r.role == "user":
            texts.extend(Text(p.text) for p in r.content if p.type == "text" and p.text)
        elif r.role == "tool":
            result = _stored_result(r)
            if result is not None:
                results[result.tool_use_id] = result
        elif r.role == "assistant":
            message = _stored_assistant(r)
            pending_calls = history[-1].tool_uses() if history and history[-1].role == Role.ASSISTANT else []
            if texts or results or pending_calls:
                flush_user()
            if not history:
                history.append(Message.user("(The conversation continues.)"))
            if history[-1].role == Role.ASSISTANT:
                history[-1] = Message(Role.ASSISTANT, history[-1].content + message.content)
            elif message.content:
                history.append(message)
    calls = history[-1].tool_uses() if history and history[-1].role == Role.ASSISTANT else []
    if texts or results or calls:
        tail = answer(calls) + texts
        return "\n\n".join(s for s in systems if s), history, tail
    return "\n\n".join(s for s in systems if s), history, None


def _stored_result(r: MessageRow) -> ToolResult | None:
    if isinstance(r.model, dict):
        try:
            return ToolResult.from_dict(r.model)
        except (ConvoError, KeyError, TypeError, ValueError):
            pass
    for p in r.content:
        if p.type == "tool-result" and p.tool_call_id:
            value = p.result
            text = value.get("error") if p.is_error and isinstance(value, dict) else None
            if text is None:
                text = value.get("output") if isinstance(value, dict) and set(value) == {"output"} else json.dumps(value)
            return ToolResult(p.tool_call_id, str(text), is_error=p.is_error)
    return None


def _stored_assistant(r: MessageRow) -> Message:
    if isinstance(r.model, dict):
        try:
            return Message.from_dict(r.model)
        except (ConvoError, KeyError, TypeError, ValueError):
            pass
    blocks: list = []
    for p in r.content:
        if p.type == "text" and p.text:
            blocks.append(Text(p.text))
        elif p.type == "tool-call" and p.tool_call_id:
            blocks.append(ToolUse(p.tool_call_id, p.tool_name, p.args if isinstance(p.args, dict) else {}))
    return Message(Role.ASSISTANT, blocks)


class _Run:
    """One run of one chat on one worker thread; also the listener of its :class:`~convo.Convo`.

    A strict listener: when a step cannot be saved (the store failed, or the
    run lost its chat), the exception stops the turn at once.
    """

    strict = True

    def __init__(self, runner: ChatRunner, row: ChatRow) -> None:
        self.runner = runner
        self.row = row
        self.chat_id = row.id
        self.generation = row.generation
        self.lock = threading.Lock()  # parts, seq and last_message_id, for watchers' snapshots
        self.parts: list[Event] = []
        self.seq = 0
        self.last_message_id = 0
        self.done = threading.Event()
        self.started = time.monotonic()
        self.reason: str | None = None
        self.convo: Any = None
        self.config: Any = None
        self.draft = _Draft()
        self.calls: dict[str, ToolUse] = {}  # tool calls of the last saved reply still without a saved result
        self.results: dict[str, ToolResult] = {}  # results received, not saved yet
        self.mark = ChatUsage()
        self.lost = False  # a save found the chat gone or its generation moved on: write nothing more
        self.store_failed = False

    def __repr__(self) -> str:
        return f"<chat run {self.chat_id} gen {self.generation}>"

    # -- control (any thread) --

    def cancel(self, reason: str) -> None:
        if self.reason is None or reason in ("lost", "shutdown"):
            if self.reason != "lost":
                self.reason = reason
        convo = self.convo
        if convo is not None:
            convo.cancel(reason)

    # -- the run --

    def execute(self) -> None:
        try:
            self._execute()
        except StoreError as exc:
            log.warning("chat_run_store_failed", chat_id=self.chat_id, error=f"{type(exc).__name__}: {exc}")
            self._hand_back()
        except BaseException:
            log.error("chat_run_crashed", chat_id=self.chat_id, exc_info=True)
            try:
                self._release(ChatStatus.ERROR, "internal error while running the chat; see the server's log")
            except Exception:
                pass
        finally:
            self.runner._finished(self)

    def _execute(self) -> None:
        runner, store = self.runner, self.runner.store
        runner.chats.announce(self.row)
        try:
            row, rows, _ = store.snapshot(None, self.chat_id)
        except ChatNotFound:
            return
        if row.generation != self.generation:
            return
        with self.lock:
            self.last_message_id = rows[-1].id if rows else 0
        try:
            providers, configs = store.configs()
            self.config = next((c for c in configs if c.id == row.last_model_config_id), None) or \
                next((c for c in configs if c.is_default), None)  # a deleted config falls back to the default
            if self.config is None:
                raise ConfigurationError("no chat model config is configured")
            service = runner.service_for(self.config, providers)
        except ConvoError as exc:
            self._release(ChatStatus.ERROR, f"resolve model config: {exc}")
            return
        system, history, tail = build_history(rows)
        if row.parent_id:
            system = SUBAGENT_INSTRUCTION + ("\n\n" + system if system else "")
        from ..conversation import Convo

        options = self.config.options or {}
        convo = Convo(service, system_prompt=system, tools=runner.tools,
                      listener=self, max_tokens=options.get("max_output_tokens"),
                      temperature=options.get("temperature"), id=f"chat-{self.chat_id}")
        if history:
            convo.extend(history)
        self.convo = convo
        if self.reason is not None:
            convo.cancel(self.reason)
        outcome, error = ChatStatus.WAITING, None
        if tail is not None:
            try:
                convo.run("", *tail, max_turns=runner.settings.max_steps, on_event=self._on_event)
            except Cancelled:
                outcome = ChatStatus.PENDING if self.reason == "shutdown" else None
            except MaxTurnsExceeded:
                outcome = ChatStatus.PAUSED
            except Exception as exc:
                outcome, error = ChatStatus.ERROR, _error_text(exc)
                if not isinstance(exc, ConvoError):
                    log.error("chat_run_failed", chat_id=self.chat_id, exc_info=exc)
        if self.store_failed:
            self._hand_back()
            return
        if self.lost or self.reason == "lost":
            return
        if outcome is None:  # interrupted: keep what was said so far
            self._save_partial()
            outcome = ChatStatus.WAITING
        else:
            self._save_results(final=outcome != ChatStatus.PENDING)
        if self.lost:
            return
        if outcome == ChatStatus.WAITING and self.reason is None:
            self._maybe_compress()
            if row.parent_id:
                outcome = ChatStatus.COMPLETED
        self._release(outcome, error)

    def _hand_back(self) -> None:
        """After a store failure: the chat goes back to pending (retried from what was saved), or, if the store
        is still down, stays ``running`` until the stale sweep of some replica retries it."""
        try:
            self._release(ChatStatus.PENDING)
        except StoreError as exc:
            log.warning("chat_run_left_for_recovery", chat_id=self.chat_id, error=f"{type(exc).__name__}: {exc}")

    def _release(self, status: ChatStatus, error: str | None = None) -> None:
        store = self.runner.store
        delta = self._usage_delta()
        released = store.release(self.chat_id, self.generation, status, error=error, usage=delta)
        if released is None:
            return
        events = []
        if released.promoted is not None:
            events = [queue_event(self.chat_id, [q.public() for q in released.queue or ()]),
                      message_event(released.promoted.public())]
        self.runner.chats.announce(released.chat, events)
        if error:
            log.info("chat_run_failed", chat_id=self.chat_id, error=error[:500])

    # -- saving steps (on the run's thread) --

    def _usage_delta(self) -> ChatUsage | None:
        if self.convo is None:
            return None
        now = chat_usage(self.convo.cumulative_usage())
        delta, self.mark = usage_delta(now, self.mark), now
        return delta

    def _append(self, messages: list[NewMessage]) -> list[MessageRow]:
        """Save messages (and the usage since the last save); on a lost lease or a store failure, stop the run."""
        if self.lost:
            return []
        try:
            added = self.runner.store.append(self.chat_id, self.generation, messages, self._usage_delta())
        except StoreError as exc:
            log.warning("chat_step_not_saved", chat_id=self.chat_id, error=f"{type(exc).__name__}: {exc}")
            self.store_failed = True
            added = None
        if added is None:
            self.lost = True
            self.cancel("lost")
            return []
        events = [message_event(m.public()) for m in added if m.visible]
        with self.lock:
            if added:
                self.last_message_id = added[-1].id
            if any(m.role == "assistant" for m in added):
                self.parts.clear()
        if events:
            self.runner.events.publish(self.chat_id, events)
        return added

    def _result_messages(self, final: bool, partial: bool = False) -> list[NewMessage]:
        out = []
        for call_id, call in list(self.calls.items()):
            result = self.results.pop(call_id, None)
            if result is None and not (final and partial):
                continue
            if result is None or (partial and _was_cancelled(result)):
                result = ToolResult(call_id, INTERRUPTED_RESULT, is_error=True)
            out.append(NewMessage("tool", (result_part(call, result),), model=result.to_dict(),
                                  model_config_id=self.config.id if self.config else None))
            del self.calls[call_id]
        return out

    def _save_results(self, final: bool) -> None:
        messages = self._result_messages(final)
        if messages:
            self._append(messages)

    def _save_partial(self) -> None:
        messages = self._result_messages(final=True, partial=True)
        parts, blocks, calls = self.draft.reply()
        if parts:
            messages.append(NewMessage("assistant", parts, visibility="both", model=Message(Role.ASSISTANT, blocks)
                                       .to_dict() if blocks else {"role": "assistant", "content": []},
                                       model_config_id=self.config.id if self.config else None))
            for call in calls:
                messages.append(NewMessage("tool", (result_part(call, ToolResult(call.id, INTERRUPTED_RESULT,
                                                                                 is_error=True)),),
                                           model=ToolResult(call.id, INTERRUPTED_RESULT, is_error=True).to_dict()))
        self.draft = _Draft()
        self._append(messages)

    # -- the convo's listener and stream events (on the run's threads) --

    def on_request(self, convo: Any, request: Any) -> None:
        if convo is not self.convo:
            return
        if self.reason is not None:  # stopped before its first request could be cancelled
            raise Cancelled(self.reason)
        sent = request.messages[-1].tool_results() if request.messages else []
        for result in sent:
            if result.tool_use_id in self.calls:
                self.results.setdefault(result.tool_use_id, result)
        messages = self._result_messages(final=False)
        if messages:
            self._append(messages)
        self.draft = _Draft()

    def on_response(self, convo: Any, response: Any) -> None:
        if convo is not self.convo:
            return
        message = response.to_message()
        u = response.usage
        usage = MessageUsage(u.input_tokens, u.output_tokens, u.input_tokens + u.output_tokens
                             + u.cache_creation_input_tokens + u.cache_read_input_tokens, u.reasoning_tokens,
                             u.cache_creation_input_tokens, u.cache_read_input_tokens,
                             self.config.context_limit if self.config else None)
        self._append([NewMessage("assistant", assistant_parts(message), model=message.to_dict(),
                                         usage=usage, model_config_id=self.config.id if self.config else None)])
        if self.lost:
            raise Cancelled("the run lost its chat")
        for call in message.tool_uses():
            self.calls[call.id] = call
        self.draft = _Draft()

    def on_tool_result(self, convo: Any, tool_use: Any, result: Any, error: Any) -> None:
        if convo is not self.convo:
            return
        self.results[tool_use.id] = result
        self._emit("tool", result_part(tool_use, result))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, TextDelta):
            self.draft.text(event.index, event.text)
            self._emit("assistant", MessagePart.text_part(event.text))
        elif isinstance(event, ThinkingDelta):
            self.draft.thinking(event.index, event.thinking)
            self._emit("assistant", MessagePart.reasoning(event.thinking))
        elif isinstance(event, ToolInputDelta):
            self.draft.tool(event.index, event.id, event.name, event.partial_json)
            self._emit("assistant", MessagePart.tool_call(event.id, event.name, args_delta=event.partial_json))
        elif isinstance(event, BlockDone):
            self.draft.done(event.index, event.block)
            block = event.block
            if isinstance(block, ToolUse):
                self._emit("assistant", MessagePart.tool_call(block.id, block.name, block.input))
            elif isinstance(block, Thinking):
                title = reasoning_title(block.thinking)
                if title:
                    self._emit("assistant", MessagePart.reasoning(title=title))

    def _emit(self, role: str, part: MessagePart) -> None:
        event = part_event(self.chat_id, role, part)
        with self.lock:
            self.seq += 1
            serialised = Event.of(event)
            serialised = Event(serialised.text, serialised.kind, seq=self.seq)
            self.parts.append(serialised)
            self.runner.events.publish(self.chat_id, [serialised])

    def snapshot_parts(self) -> tuple[list[Event], int]:
        """The parts of the step in progress and the last saved message's id (hold ``lock`` around the subscribe)."""
        return list(self.parts), self.last_message_id

    # -- compression --

    def _maybe_compress(self) -> None:
        config, convo = self.config, self.convo
        if config is None or convo is None or config.compression_threshold >= 100 or config.context_limit <= 0:
            return
        last = convo.last_usage()
        tokens = last.input_tokens + last.cache_read_input_tokens + last.cache_creation_input_tokens
        if tokens == 0:
            tokens = last.input_tokens + last.output_tokens
        percent = tokens * 100 / config.context_limit
        if tokens == 0 or percent < config.compression_threshold:
            return
        try:
            summary = self._summarise()
        except (Cancelled, ConvoError) as exc:
            log.warning("chat_summary_failed", chat_id=self.chat_id, error=f"{type(exc).__name__}: {exc}")
            return
        if not summary.strip():
            return
        call_id = f"chat_summarized_{uuid.uuid4()}"
        result = {"summary": summary, "source": "automatic", "threshold_percent": config.compression_threshold,
                  "usage_percent": round(percent, 2), "context_tokens": tokens,
                  "context_limit_tokens": config.context_limit}
        args = {"source": "automatic", "threshold_percent": config.compression_threshold}
        self._append([
            NewMessage("system", (MessagePart.text_part("Summary of earlier chat context:\n\n" + summary),),
                       visibility="model", compressed=True),
            NewMessage("assistant", (MessagePart.tool_call(call_id, "chat_summarized", args),), visibility="user",
                       compressed=True),
            NewMessage("tool", (MessagePart.tool_result(call_id, "chat_summarized", result),), visibility="both",
                       compressed=True),
        ])

    def _summarise(self) -> str:
        sub = self.convo.sub_convo_with_history(tool_choice="none", id=f"{self.convo.id}-summary")
        timer = threading.Timer(self.runner.settings.summary_timeout, sub.cancel, args=("summary timed out",))
        timer.daemon = True
        timer.start()
        try:
            return sub.send(SUMMARY_INSTRUCTION).text()
        finally:
            timer.cancel()


def _was_cancelled(result: ToolResult) -> bool:
    return result.is_error and result.text().startswith(("tool call cancelled", "not executed"))


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:2000]


# --- the model's sub-agent tools ------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def chat_tools(runner: ChatRunner) -> tuple:
    """``spawn_agent``, ``wait_agent``, ``message_agent`` and ``close_agent``: made once per runner (a Tool checks
    its schema when made, which costs milliseconds), each call finding its chat from the convo that made it."""
    chats, store = runner.chats, runner.store

    def calling() -> ChatRow:
        info = tool_call_info()
        convo_id = getattr(info.convo, "id", "") if info is not None else ""
        run = runner.run_of(convo_id[len("chat-"):]) if convo_id.startswith("chat-") else None
        if run is None:
            raise LookupError("this tool works only inside a chat's run")
        return run.row

    def child(chat_id: Any) -> ChatRow:
        me = calling()
        if not isinstance(chat_id, str):
            raise LookupError("chat_id must be a string")
        row = store.chat(me.owner_id, chat_id)
        if row.parent_id != me.id:
            raise LookupError(f"chat {chat_id} is not a sub-agent of this chat")
        return row

    def spawn(args: dict) -> Any:
        me = calling()
        if me.parent_id:
            return ToolOut("delegated chats cannot create child subagents", error=True)
        prompt = str(args.get("prompt") or "").strip()
        if not prompt:
            return ToolOut("prompt is required", error=True)
        title = str(args.get("title") or "").strip() or fallback_title([prompt], ellipsis="...")
        row, _ = chats.create(me.owner_id, [prompt], me.last_model_config_id, parent=me, title=title[:80])
        return _json({"chat_id": row.id, "title": row.title, "status": row.status.value})

    def wait(args: dict) -> Any:
        try:
            row = child(args.get("chat_id"))
        except (LookupError, ChatNotFound) as exc:
            return ToolOut(str(exc) or "chat not found", error=True)
        timeout = args.get("timeout_seconds") or 300
        info = tool_call_info()
        deadline = time.monotonic() + float(timeout)
        while row.status in (ChatStatus.PENDING, ChatStatus.RUNNING):
            if time.monotonic() > deadline:
                return ToolOut("timed out waiting for delegated subagent completion", error=True)
            if info is not None and info.cancelled.wait(0.2):
                return ToolOut("cancelled while waiting for the delegated subagent", error=True)
            if info is None:
                time.sleep(0.2)
            row = store.chat(None, row.id)
        _, messages, _ = store.snapshot(None, row.id)
        report = next((m.text() for m in reversed(messages) if m.role == "assistant" and m.visible and m.text()), "")
        if row.status == ChatStatus.ERROR:
            return ToolOut(report or row.last_error or "agent reached error status", error=True)
        return _json({"chat_id": row.id, "title": row.title, "report": report, "status": row.status.value})

    def message(args: dict) -> Any:
        try:
            row = child(args.get("chat_id"))
        except (LookupError, ChatNotFound) as exc:
            return ToolOut(str(exc) or "chat not found", error=True)
        text = str(args.get("message") or "").strip()
        if not text:
            return ToolOut("message is required", error=True)
        interrupt = bool(args.get("interrupt"))
        try:
            posted = chats.post(None, row.id, [text], None, interrupt=interrupt)
        except ConvoError as exc:
            return ToolOut(str(exc) or type(exc).__name__, error=True)
        return _json({"chat_id": row.id, "title": row.title, "status": posted.chat.status.value,
                      "interrupted": interrupt})

    def close(args: dict) -> Any:
        try:
            row = child(args.get("chat_id"))
        except (LookupError, ChatNotFound) as exc:
            return ToolOut(str(exc) or "chat not found", error=True)
        row = chats.interrupt(None, row.id)
        return _json({"chat_id": row.id, "title": row.title, "terminated": True, "status": row.status.value})

    id_schema = {"type": "string", "description": "the sub-agent's chat id, as spawn_agent returned it"}
    return (
        Tool("spawn_agent", "Start a sub-agent on a self-contained task; returns its chat_id. Collect its report "
                            "with wait_agent.",
             {"type": "object", "properties": {"prompt": {"type": "string", "description": "the task"},
                                               "title": {"type": "string"}}, "required": ["prompt"]}, spawn),
        Tool("wait_agent", "Wait for a sub-agent to finish and return its report.",
             {"type": "object", "properties": {"chat_id": id_schema,
                                               "timeout_seconds": {"type": "integer", "minimum": 1}},
              "required": ["chat_id"]}, wait),
        Tool("message_agent", "Send a sub-agent a message (queued while it works, unless interrupt is true).",
             {"type": "object", "properties": {"chat_id": id_schema, "message": {"type": "string"},
                                               "interrupt": {"type": "boolean"}},
              "required": ["chat_id", "message"]}, message),
        Tool("close_agent", "Stop a sub-agent.",
             {"type": "object", "properties": {"chat_id": id_schema}, "required": ["chat_id"]}, close),
    )


def seed_models(models: Sequence[str] | None) -> list[tuple[str, str, int]]:
    """The model configs ``convo serve --model`` gives a fresh server: ``(provider, model, context_limit)``."""
    from ..providers.detect import provider_for_model

    out = []
    for model in models or ():
        provider = provider_for_model(model) or "openai-compat"
        out.append((provider, model, CONTEXT_LIMITS.get(provider, 128_000)))
    return out

