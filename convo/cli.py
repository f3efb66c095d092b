"""The ``convo`` command: one streamed answer (``convo run``) or an interactive chat (``convo chat``).

::

    convo run "Name three primary colours."
    convo run --model claude-haiku-4-5 --tools "What is 12.5% of 3 480?"
    convo run --pack support.pack.json --prompt refunds --var company=Acme "Where is my refund?"
    echo "Summarise this: ..." | convo run
    convo chat --system "You are terse."
    convo logs audit.jsonl          # an audit trail (convo.audit): the tree, --convo ID, --follow, verify
    convo serve --dev --model local # sessions for remote clients over WebSocket (convo.server)

The provider comes from :func:`convo.default_service` (``--model``, else an
API key in the environment, else the embedded local model). Answers stream
to stdout as they are generated; everything else (a spinner while waiting
for the first token, tool calls, the usage line, errors) goes to stderr, so
``convo run ... > answer.txt`` keeps only the answer.

With ``--tools`` the model may call a few example tools defined here
(:data:`EXAMPLE_TOOLS`: the current time, a calculator, a word counter); the
command runs the whole agent loop with ``Convo.run()``, streaming every
reply, until the model answers.

Exit status: 0 on success, 1 on an error (printed as one line,
``convo: error: ...``), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import math
import operator
import os
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator, Optional, TextIO

import structlog

from .errors import ConvoError
from .messages import ToolUse
from .service import BlockDone, TextDelta
from .tools import tool

__all__ = ["EXAMPLE_TOOLS", "calculate", "evaluate_arithmetic", "main"]

PROG = "convo"


# --- example tools -------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "sqrt": math.sqrt, "exp": math.exp, "log": math.log,
    "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "floor": math.floor, "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_EXPRESSION = 500
_MAX_EXPONENT = 10_000
_MAX_DIGITS = 10_000
_MAX_BITS = int(_MAX_DIGITS * 3.33)  # bits per decimal digit, rounded down


def evaluate_arithmetic(expression: str) -> int | float:
    """The value of an arithmetic expression, computed without ``eval``.

    Numbers, ``+ - * / // % **``, parentheses, ``pi``/``e``/``tau`` and a
    few functions (``sqrt``, ``log``, ``sin``, ``round``...). Anything else
    (names, attributes, strings, calls of other functions) is refused, as
    are exponents and results large enough to tie up the machine.

    Raises:
        ValueError: the expression is not allowed arithmetic, or is too big.
        ZeroDivisionError: it divides by zero.
    """
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None

    def visit(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = visit(node.left), visit(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > _MAX_EXPONENT:
                    raise ValueError(f"exponent {right} is too large (limit {_MAX_EXPONENT})")
                if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > _MAX_BITS:
                    raise ValueError(f"result has more than {_MAX_DIGITS} digits")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, int) and result.bit_length() > _MAX_BITS:
                raise ValueError(f"result has more than {_MAX_DIGITS} digits")
            return result
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](visit(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords):
            return _FUNCTIONS[node.func.id](*(visit(a) for a in node.args))
        raise ValueError(f"not allowed in arithmetic: {ast.unparse(node)!r}")

    result = visit(tree)
    if isinstance(result, complex):
        raise ValueError("the result is a complex number")
    return result


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "12.5 / 100 * 3480" or "sqrt(2) ** 2".

    Args:
        expression: numbers, + - * / // % ** and parentheses; pi, e; sqrt, log, sin, cos, round.
    """
    return str(evaluate_arithmetic(expression))


@tool
def current_time(timezone_name: Optional[str] = None) -> str:
    """The current date and time, in ISO 8601.

    Args:
        timezone_name: an IANA time zone such as "Europe/Paris"; default UTC.
    """
    if timezone_name:
        from zoneinfo import ZoneInfo

        return datetime.now(ZoneInfo(timezone_name)).isoformat(timespec="seconds")
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@tool
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text to count.
    """
    return len(text.split())


EXAMPLE_TOOLS = (calculate, current_time, word_count)
"""The tools ``--tools`` enables."""


# --- terminal helpers ---------------------------------------------------------------

class _Spinner:
    """A "waiting…" animation on stderr until the first token; only on a terminal.

    start() and stop() may be called from any thread, any number of times.
    """

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, label: str = "thinking") -> None:
        if not self._enabled:
            return
        with self._lock:
            if self._thread is not None:
                return
            stop = threading.Event()
            self._stop = stop
            self._thread = threading.Thread(target=self._spin, args=(stop, label), daemon=True,
                                            name="convo-spinner")
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None
        if thread is not None:
            stop.set()
            thread.join()

    def _spin(self, stop: threading.Event, label: str) -> None:
        began = time.monotonic()
        frame = 0
        while not stop.wait(0.1):
            elapsed = time.monotonic() - began
            self._write(f"\r{self.FRAMES[frame % len(self.FRAMES)]} {label}… {elapsed:.1f}s")
            frame += 1
        self._write("\r\033[K")

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away; nothing to show it on
            pass


def _cost_text(cost: Decimal, unpriced: int) -> str:
    if unpriced:
        return "cost unknown (unpriced model)"
    if cost == 0:
        return "$0"
    return f"${cost.quantize(Decimal('0.000001'))}"


def _usage_line(convo: Any, seconds: float) -> str:
    usage = convo.cumulative_usage()
    model = getattr(convo.service, "model", None) or type(convo.service).__name__
    parts = [
        f"{usage.total_input_tokens()} tokens in",
        f"{usage.output_tokens} out",
        _cost_text(usage.total_cost_usd, usage.unpriced_responses),
        f"{seconds:.2f}s",
    ]
    if usage.tool_uses:
        parts.append("tools: " + ", ".join(f"{name}×{n}" for name, n in sorted(usage.tool_uses.items())))
    return f"[{model}] " + " · ".join(parts)


class _Printer:
    """Streams one turn's events: text to stdout, tool activity to stderr."""

    def __init__(self, out: TextIO, err: TextIO, spinner: _Spinner) -> None:
        self.out = out
        self.err = err
        self.spinner = spinner
        self.ends_with_newline = True
        self.wrote_text = False

    # Convo.run(on_event=...) calls this with every stream event, on this thread.
    def __call__(self, event: Any) -> None:
        if isinstance(event, TextDelta):
            self.spinner.stop()
            self.out.write(event.text)
            self.out.flush()
            self.wrote_text = True
            self.ends_with_newline = event.text.endswith("\n")
        elif isinstance(event, BlockDone) and isinstance(event.block, ToolUse):
            self.spinner.stop()
            self.finish_line()
            call = event.block
            self.err.write(f"[tool] {call.name}({_short(call.input)})\n")
            self.err.flush()

    def finish_line(self) -> None:
        if not self.ends_with_newline:
            self.out.write("\n")
            self.out.flush()
            self.ends_with_newline = True

    # Listener events: the spinner runs while a request waits for its first token.
    def on_request(self, convo, request) -> None:
        self.spinner.start()

    def on_error(self, convo, request, error) -> None:
        self.spinner.stop()

    def on_response(self, convo, response) -> None:
        self.spinner.stop()

    def on_tool_result(self, convo, tool_use, result, error) -> None:
        mark = "failed" if result.is_error else "→"
        self.err.write(f"[tool] {tool_use.name} {mark} {_short(result.text())}\n")
        self.err.flush()


def _short(value: Any, limit: int = 200) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _logging_to_stderr(err: TextIO, verbose: bool) -> Iterator[None]:
    """Send convo's structlog events to stderr (warnings only unless ``verbose``) while the command runs.

    Unconfigured structlog prints to stdout, which would mix log lines into
    the answer. The previous configuration is restored afterwards, so
    calling :func:`main` in-process leaves the caller's logging alone.
    """
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(err),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


# --- commands ----------------------------------------------------------------------

def _pack_variables(args: argparse.Namespace) -> dict:
    values = {}
    for item in args.pack_vars:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise _UsageError(f"--var takes NAME=VALUE, got {item!r}")
        values[name.strip()] = value
    return values


def _build_convo(args: argparse.Namespace, listener: Any, service: Any = None) -> Any:
    from .conversation import Convo
    from .providers.detect import default_service

    if args.pack is None and (args.pack_prompt is not None or args.pack_vars):
        raise _UsageError("--prompt and --var go with --pack FILE")
    if args.pack is not None and args.system:
        raise _UsageError("--system and --pack do not go together: the pack's prompt is the system prompt")
    variables = _pack_variables(args) if args.pack is not None else {}
    if service is None:
        service = default_service(args.model)
    if args.pack is not None:
        from .packs import open as open_pack

        return open_pack(args.pack, args.pack_prompt, service=service, variables=variables, listener=listener,
                         tools=EXAMPLE_TOOLS if args.tools else (), max_tokens=args.max_tokens)
    return Convo(service, system_prompt=args.system or "", tools=EXAMPLE_TOOLS if args.tools else (),
                 max_tokens=args.max_tokens, listener=listener)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    prompt = " ".join(args.prompt).strip()
    if not prompt and not stdin.isatty():
        prompt = stdin.read().strip()
    if not prompt:
        raise _UsageError("run needs a prompt: convo run \"your question\" (or pipe it on stdin)")
    began = time.monotonic()
    spinner = _Spinner(err, enabled=err.isatty())
    printer = _Printer(out, err, spinner)
    try:
        convo = _build_convo(args, printer)
        convo.run(prompt, max_turns=args.max_turns, on_event=printer)
    finally:
        spinner.stop()
        printer.finish_line()
    err.write(_usage_line(convo, time.monotonic() - began) + "\n")
    err.flush()
    return 0


_CHAT_HELP = "commands: /usage (tokens and cost so far), /reset (forget the conversation), /quit (or Ctrl-D)"


def _chat(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    interactive = stdin.isatty()
    spinner = _Spinner(err, enabled=err.isatty())
    printer = _Printer(out, err, spinner)
    convo = _build_convo(args, printer)
    began = time.monotonic()
    model = getattr(convo.service, "model", None) or type(convo.service).__name__
    err.write(f"convo chat with {model}; {_CHAT_HELP}\n")
    err.flush()
    while True:
        if interactive:
            err.write("> ")
            err.flush()
        line = stdin.readline()
        if not line:  # EOF
            if interactive:
                err.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/quit", "/exit", "/q"):
                return 0
            if command == "/usage":
                out.write(_usage_line(convo, time.monotonic() - began) + "\n")
            elif command == "/reset":
                convo = _build_convo(args, printer, service=convo.service)
                began = time.monotonic()
                out.write("(conversation reset)\n")
            elif command in ("/help", "/?"):
                out.write(_CHAT_HELP + "\n")
            else:
                err.write(f"convo: unknown command {command}; {_CHAT_HELP}\n")
            out.flush()
            continue
        try:
            convo.run(text, max_turns=args.max_turns, on_event=printer)
        except ConvoError as exc:
            # One failed turn need not end the chat: the history is unchanged.
            printer.finish_line()
            err.write(f"{PROG}: error: {_one_line(exc)}\n")
        finally:
            spinner.stop()
            printer.finish_line()
            err.flush()


def _logs(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .audit.view import logs_command

    rest = _logs_arguments(_ArgumentParser(prog=f"{PROG} logs", add_help=False), "*").parse_args(args.words)
    words = rest.words
    if not words or (words[0] == "verify" and len(words) != 2) or (words[0] != "verify" and len(words) != 1):
        raise _UsageError("give one audit trail: convo logs FILE|STORE-URL, or convo logs verify FILE")
    return logs_command(words, convo=rest.convo or args.convo, follow_=rest.follow or args.follow,
                        as_json=rest.json or args.json, key_env=rest.key_env or args.key_env, out=out, err=err)


def _logs_arguments(parser: argparse.ArgumentParser, words: Any) -> argparse.ArgumentParser:
    parser.add_argument("words", nargs=words, metavar="FILE|STORE-URL", help="the trail (or: verify FILE)")
    parser.add_argument("--convo", metavar="ID", help="show this conversation's timeline, sub-convos included")
    parser.add_argument("-f", "--follow", action="store_true", help="print events as they are written (Ctrl-C stops)")
    parser.add_argument("--json", action="store_true", help="JSON for programs instead of text")
    parser.add_argument("--key-env", metavar="VAR", help="verify: the environment variable holding the log's key")
    return parser


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser that raises _UsageError instead of printing and exiting."""

    def error(self, message: str):
        raise _UsageError(message)


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .server.runner import serve_command

    return serve_command(args, out, err)


class _UsageError(Exception):
    """A command line that cannot work: exit status 2."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--model",
                        help='model name: claude-*, gpt-*, o3..., "local", or a path to a .gguf file '
                             "(default: ANTHROPIC_API_KEY, then OPENAI_API_KEY, then the local model)")
    common.add_argument("-s", "--system", help="system prompt")
    common.add_argument("--max-tokens", type=_positive_int, metavar="N", help="reply length cap in tokens")
    common.add_argument("--tools", action="store_true",
                        help="let the model call example tools: " + ", ".join(t.name for t in EXAMPLE_TOOLS))
    common.add_argument("--max-turns", type=_positive_int, default=10, metavar="N",
                        help="with --tools, stop after this many model replies (default 10)")
    common.add_argument("--pack", metavar="FILE", help="run a prompt of a PromptPack file (.pack.json)")
    common.add_argument("--prompt", dest="pack_prompt", metavar="ID",
                        help="with --pack: the prompt to run (default: the pack's only prompt)")
    common.add_argument("--var", dest="pack_vars", action="append", default=[], metavar="NAME=VALUE",
                        help="with --pack: set one of the prompt's variables (repeat for more)")
    common.add_argument("-v", "--verbose", action="store_true", help="log convo's debug events to stderr")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Talk to a large language model: Claude, OpenAI-compatible, or the embedded local one.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,chat,logs,serve}", required=True)
    run = commands.add_parser("run", parents=[common], help="answer one prompt, streamed, then print usage",
                              description="Answer one prompt (or stdin), streamed to stdout; usage goes to stderr.")
    run.add_argument("prompt", nargs="*", help="the prompt (default: read stdin)")
    commands.add_parser("chat", parents=[common], help="chat interactively",
                        description="Chat interactively. " + _CHAT_HELP + ".")
    logs = commands.add_parser(
        "logs", help="read an audit trail: conversations as a tree, one timeline, a live tail, or verify",
        usage="convo logs FILE|STORE-URL [--convo ID] [--follow] [--json]\n       convo logs verify FILE [--json] "
              "[--key-env VAR]",
        description="Read an audit trail written by convo.audit.JSONLAuditLog (a file) or StoreAuditLog (a store "
                    "URL such as sqlite:///convos.db): the conversations as a tree with turns, tool calls and cost; "
                    "one conversation's timeline (--convo); new events as they are written (--follow). "
                    "'convo logs verify FILE' checks a file's hash chain and says where it breaks (exit status 1).")
    _logs_arguments(logs, argparse.REMAINDER)  # options may follow the words too: _logs reads them again
    logs.set_defaults(verbose=False)
    from .server import runner as _server

    serve = commands.add_parser(
        "serve", help="serve conversations to remote clients (the Chucky protocol, on WebSocket)",
        description="Run conversations for remote clients: the Chucky WebSocket endpoint /ws (tokens signed "
                    "with CONVO_SERVER_SECRET or --secret-file; --dev makes a throwaway secret and prints a "
                    "token). Needs the server extra: pip install 'convo[server]'.")
    _server.add_arguments(serve)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# llama.cpp's OpenMP worker threads spin while they wait for each other. On a
# machine whose cores are busy with other work that makes the local model 10-20x
# slower: on 2 cores with one competing process, measured 3-5 tokens/s against
# 104 when idle; with a spin count of 1000, 18-31 busy and no loss idle (libgomp's
# default is 300000). libgomp reads this when llama_cpp is first imported, which
# happens after this point; a value the user set wins.
_GOMP_SPINCOUNT = "1000"


def main(argv: list[str] | None = None) -> int:
    """Run the ``convo`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    os.environ.setdefault("GOMP_SPINCOUNT", _GOMP_SPINCOUNT)
    out, err, stdin = sys.stdout, sys.stderr, sys.stdin
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    command = {"run": _run, "chat": _chat, "logs": _logs, "serve": _serve}[args.command]
    try:
        with _logging_to_stderr(err, args.verbose):
            return command(args, out, err, stdin)
    except _UsageError as exc:
        parser.print_usage(err)
        err.write(f"{PROG} {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (convo run ... | head): stop quietly.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
        return 1
    except ConvoError as exc:
        err.write(f"{PROG}: error: {_one_line(exc)}\n")
        return 1
    except Exception as exc:  # a bug or an unexpected failure: still one line, no traceback
        err.write(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
