"""LocalService: the embedded SmolLM2 model, run for real with llama.cpp (never skipped)."""

from __future__ import annotations

import json
import logging
import threading
from decimal import Decimal
from enum import Enum
from typing import Literal, Optional

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llama_cpp  # no skip: without llama-cpp-python this suite must fail loudly
from convo import Convo, tool
from convo.errors import (
    Cancelled,
    ConfigurationError,
    ConvoError,
    InvalidRequestError,
    ResponseFormatError,
)
from convo.providers.local import (
    DEFAULT_MODEL,
    LocalService,
    _StopScanner,
    default_model_path,
    parse_tool_call,
    to_chat_messages,
    tool_grammar,
    tool_instructions,
)
from convo.messages import (
    Image,
    Message,
    Request,
    Response,
    StopReason,
    Text,
    Thinking,
    ToolChoice,
    ToolResult,
    ToolSpec,
    ToolUse,
)
from convo.pricing import FREE
from convo.service import BlockDone, StreamDone, TextDelta, ToolInputDelta, UsageUpdate
from convo.usage import Usage

MAX_TOKENS = 24

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
     "required": ["city"], "additionalProperties": False},
)
ADD = ToolSpec(
    "add",
    "Add two integers.",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
     "required": ["a", "b"], "additionalProperties": False},
)


class Mood(Enum):
    HAPPY = "happy"
    SAD = "sad"


@pytest.fixture(scope="module")
def service() -> LocalService:
    """The default model, loaded once for the module; greedy, so replies are repeatable."""
    svc = LocalService(temperature=0.0, max_tokens=MAX_TOKENS, seed=7)
    svc.load()
    return svc


@pytest.fixture(scope="module")
def vocab_model():
    """The same GGUF loaded as a tokenizer only, to count tokens independently of LocalService."""
    return llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)


def ask(text: str, **kwargs) -> Request:
    return Request([Message.user(text)], **kwargs)


def chatml(*turns: tuple[str, str]) -> str:
    body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return body + "<|im_start|>assistant\n"


# --- rendering (no model) ------------------------------------------------------

class TestChatMessages:
    def test_system_blocks_and_user_text(self):
        request = Request([Message.user("hi")], system=(Text("Be brief."), Text("Be kind.")))
        assert to_chat_messages(request) == [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "hi"},
        ]

    def test_no_system_message_without_system_or_tools(self):
        assert to_chat_messages(ask("hi")) == [{"role": "user", "content": "hi"}]

    def test_tool_call_and_result_render_as_the_model_writes_and_reads_them(self):
        call = ToolUse("call_1", "add", {"a": 2, "b": 3})
        request = Request([
            Message.user("2+3?"),
            Message.assistant("Let me add.", call),
            Message.user("", ToolResult("call_1", "5")),
        ], tools=[ADD])
        chat = to_chat_messages(request)
        assert chat[0]["role"] == "system" and "- add: Add two integers." in chat[0]["content"]
        assert chat[1] == {"role": "user", "content": "2+3?"}
        assert chat[2] == {"role": "assistant",
                           "content": 'Let me add.\n\n{"tool": "add", "input": {"a": 2, "b": 3}}'}
        assert chat[3] == {"role": "user",
                           "content": "The tool 'add' returned: 5\n\nNow answer my question in plain text."}

    def test_no_answer_nudge_when_a_call_is_required(self):
        request = Request([
            Message.assistant("", ToolUse("call_1", "add", {"a": 2, "b": 3})),
            Message.user("", ToolResult("call_1", "5")),
        ], tools=[ADD], tool_choice=ToolChoice.any())
        assert to_chat_messages(request)[-1] == {"role": "user", "content": "The tool 'add' returned: 5"}

    def test_error_result_says_it_failed(self):
        request = Request([
            Message.assistant("", ToolUse("c9", "get_weather", {"city": "Atlantis"})),
            Message.user("and?", ToolResult("c9", "no such city", is_error=True)),
        ])
        assert to_chat_messages(request)[1] == {
            "role": "user",
            "content": "The tool 'get_weather' failed: no such city\n\nand?\n\nNow answer my question in plain text."}

    def test_images_become_a_note_and_thinking_is_dropped(self):
        request = Request([
            Message.user("what is this?", Image(media_type="image/png", data="AAAA")),
            Message.assistant("", Thinking("hmm", "sig")),
        ])
        chat = to_chat_messages(request)
        assert len(chat) == 1  # the thinking-only turn says nothing to a local model
        assert chat[0]["content"].startswith("[an image was attached")
        assert chat[0]["content"].endswith("what is this?")


class TestToolInstructions:
    def test_auto_lists_every_tool_with_its_schema(self):
        text = tool_instructions([WEATHER, ADD], ToolChoice.auto())
        assert "- get_weather: Current weather for a city." in text
        assert json.dumps(ADD.input_schema, separators=(",", ":")) in text
        assert "otherwise answer in plain text" in text

    def test_named_tool_lists_only_that_tool(self):
        text = tool_instructions([WEATHER, ADD], ToolChoice.tool("add"))
        assert "get_weather" not in text
        assert "You must reply with a call to the tool 'add' now." in text

    def test_none_and_no_tools_give_nothing(self):
        assert tool_instructions([WEATHER], ToolChoice.none()) == ""
        assert tool_instructions([], ToolChoice.any()) == ""

    def test_unknown_named_tool_is_an_invalid_request(self):
        with pytest.raises(InvalidRequestError, match="'nope'"):
            tool_instructions([WEATHER], ToolChoice.tool("nope"))


class TestToolGrammar:
    def test_auto_allows_text_or_any_tool(self):
        grammar = tool_grammar([WEATHER, ADD], ToolChoice.auto())
        assert grammar.startswith("root ::= tool-call | plain-text\n")
        assert '"\\"get_weather\\""' in grammar and '"\\"add\\""' in grammar

    def test_any_allows_only_calls(self):
        grammar = tool_grammar([WEATHER, ADD], ToolChoice.any())
        assert grammar.startswith("root ::= tool-call\n")
        assert "plain-text" not in grammar

    def test_named_tool_allows_only_that_call(self):
        grammar = tool_grammar([WEATHER, ADD], ToolChoice.tool("add"))
        assert '"\\"add\\""' in grammar and "get_weather" not in grammar

    def test_none_and_no_tools_have_no_grammar(self):
        assert tool_grammar([WEATHER], ToolChoice.none()) is None
        assert tool_grammar([], None) is None

    def test_default_choice_is_auto(self):
        assert tool_grammar([ADD], None) == tool_grammar([ADD], ToolChoice.auto())


class TestParseToolCall:
    def test_call(self):
        assert parse_tool_call('{"tool": "add", "input": {"a": 1, "b": 2}} ') == ("add", {"a": 1, "b": 2})

    @pytest.mark.parametrize("text", ['{"tool": "add", "input": {"a": 1', '{"tool": "add"}', '[1, 2]',
                                      '{"tool": 3, "input": {}}'])
    def test_anything_else_is_a_format_error(self, text):
        with pytest.raises(ResponseFormatError):
            parse_tool_call(text)


class TestStopScanner:
    @settings(max_examples=300, deadline=None)
    @given(text=st.text(alphabet="ab<|>x", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
           stops=st.lists(st.text(alphabet="ab<|>", min_size=1, max_size=4), max_size=3))
    def test_emits_exactly_the_text_before_the_first_stop_however_it_is_split(self, text, cuts, stops):
        bounds = sorted({c for c in cuts if c <= len(text)} | {0, len(text)})
        pieces = [text[i:j] for i, j in zip(bounds, bounds[1:])]
        scanner = _StopScanner(stops)
        out, hit = "", None
        for piece in pieces:
            emit, hit = scanner.feed(piece)
            out += emit
            if hit is not None:
                break
        if hit is None:
            rest, hit = scanner.flush()
            out += rest
        found = [(text.find(s), s) for s in stops if s in text]
        if found:
            at = min(found)[0]
            assert out == text[:at]
            assert hit is not None and text[at:].startswith(hit)
        else:
            assert out == text and hit is None


# --- construction ---------------------------------------------------------------

class TestConstruction:
    def test_defaults(self):
        svc = LocalService()
        assert svc.model == f"local/{DEFAULT_MODEL}"
        assert svc.model_path == default_model_path()
        assert svc.model_path.suffix == ".gguf"
        assert svc.token_context_window() == 8192
        assert svc.load_seconds is None  # nothing loaded yet

    def test_uses_every_core(self):
        import os

        assert LocalService().n_threads == os.cpu_count()
        assert LocalService(n_threads=1).n_threads == 1

    def test_context_window_is_n_ctx(self):
        assert LocalService(n_ctx=2048).token_context_window() == 2048

    def test_bad_settings_are_configuration_errors(self, tmp_path):
        with pytest.raises(ConfigurationError, match="n_ctx"):
            LocalService(n_ctx=0)
        with pytest.raises(ConfigurationError, match="no GGUF model file"):
            LocalService(tmp_path / "missing.gguf")

    def test_unloadable_file_is_a_configuration_error(self, tmp_path):
        bogus = tmp_path / "bogus.gguf"
        bogus.write_bytes(b"not a gguf file at all")
        svc = LocalService(bogus)
        assert svc.model == "local/bogus"
        with pytest.raises(ConfigurationError, match="could not load"):
            svc.load()


# --- generation (the real model) -------------------------------------------------

class TestReplies:
    def test_plain_reply(self, service):
        response = service.do(ask("What is the capital of France?"))
        assert isinstance(response, Response)
        assert response.model == f"local/{DEFAULT_MODEL}"
        assert response.text().strip()
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)
        assert response.tool_uses() == []
        assert response.start_time <= response.end_time

    def test_response_ids_are_unique(self, service):
        ids = {service.do(ask("Say hi.", max_tokens=2)).id for _ in range(3)}
        assert len(ids) == 3

    def test_stream_deltas_join_to_the_final_text(self, service):
        events = list(service.stream(ask("Write a sentence about the sea.")))
        deltas = [e for e in events if isinstance(e, TextDelta)]
        final = events[-1]
        assert isinstance(final, StreamDone)
        assert len(deltas) > 1  # token by token, not one lump
        assert all(d.index == 0 for d in deltas)
        assert "".join(d.text for d in deltas) == final.response.text()
        done = [e for e in events if isinstance(e, BlockDone)]
        assert [d.block for d in done] == list(final.response.content)

    def test_max_tokens_caps_the_reply_exactly(self, service):
        response = service.do(ask("Write a long story about a dragon.", max_tokens=5))
        assert response.stop_reason == StopReason.MAX_TOKENS
        assert response.usage.output_tokens == 5

    def test_stop_sequence_cuts_the_reply(self, service):
        # Exact replies are not repeatable (llama.cpp's prompt-prefix reuse changes the
        # arithmetic slightly), so stop on a letter any English sentence contains.
        response = service.do(ask("Write a long story about a dragon.", max_tokens=20, stop_sequences=["e"]))
        assert response.stop_reason == StopReason.STOP_SEQUENCE
        assert response.stop_sequence == "e"
        assert "e" not in response.text()
        assert response.usage.output_tokens < 20

    def test_system_prompt_is_used(self, service, vocab_model):
        response = service.do(Request([Message.user("Hello")], system="You are a pirate.", max_tokens=3))
        expected = vocab_model.tokenize(chatml(("system", "You are a pirate."), ("user", "Hello")).encode(),
                                        add_bos=False, special=True)
        assert response.usage.input_tokens == len(expected)


class TestUsage:
    def test_tokens_are_counted(self, service, vocab_model):
        response = service.do(ask("Hi", max_tokens=4))
        # No system message: SmolLM2's template supplies its own default one.
        prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        expected = vocab_model.tokenize(prompt.encode(), add_bos=False, special=True)
        assert response.usage.input_tokens == len(expected)
        assert 1 <= response.usage.output_tokens <= 4
        assert response.usage.cache_read_input_tokens == 0

    def test_a_stream_reports_the_prompt_tokens_once_evaluated(self, service):
        events = list(service.stream(ask("Say hi.", max_tokens=4)))
        updates = [i for i, e in enumerate(events) if isinstance(e, UsageUpdate)]
        assert len(updates) == 1
        first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
        assert updates[0] < first_text
        final = events[-1].response.usage
        assert events[updates[0]].usage == Usage(input_tokens=final.input_tokens, cost_usd=Decimal(0))

    def test_the_price_is_free(self, service):
        assert service.price() == FREE

    def test_cost_is_exactly_zero_not_unpriced(self, service):
        usage = service.do(ask("Hi", max_tokens=2)).usage
        assert usage.cost_usd is not None
        assert isinstance(usage.cost_usd, Decimal)
        assert usage.cost_usd == Decimal(0)

    def test_convo_counts_local_replies_as_priced(self, service):
        convo = Convo(service, max_tokens=3)
        convo.send_user_text_message("Hi")
        sub = convo.sub_convo(max_tokens=3)
        sub.send_user_text_message("Hello")
        total = convo.cumulative_usage()
        assert total.responses == 2
        assert total.unpriced_responses == 0
        assert total.total_cost_usd == Decimal(0)
        assert total.output_tokens == convo.last_usage().output_tokens + sub.last_usage().output_tokens


class TestToolCalls:
    def validate(self, spec: ToolSpec, response: Response) -> ToolUse:
        assert response.stop_reason == StopReason.TOOL_USE
        [call] = response.content
        assert isinstance(call, ToolUse)
        assert call.name == spec.name
        jsonschema.validate(call.input, spec.input_schema)
        return call

    def test_forced_call_fits_the_schema(self, service):
        response = service.do(ask("What is 17 plus 25?", tools=[WEATHER, ADD], tool_choice=ToolChoice.any(),
                                  max_tokens=64))
        assert response.tool_uses()[0].name in ("add", "get_weather")
        self.validate(ADD if response.tool_uses()[0].name == "add" else WEATHER, response)

    def test_named_call_fits_the_schema_and_streams_its_input(self, service):
        events = list(service.stream(ask("What's the weather in Paris?", tools=[ADD, WEATHER],
                                         tool_choice=ToolChoice.tool("get_weather"), max_tokens=64)))
        response = events[-1].response
        call = self.validate(WEATHER, response)
        [delta] = [e for e in events if isinstance(e, ToolInputDelta)]
        assert (delta.id, delta.name, json.loads(delta.partial_json)) == (call.id, call.name, call.input)
        assert not [e for e in events if isinstance(e, TextDelta)]
        assert response.usage.output_tokens > 5

    def test_each_call_gets_a_fresh_id(self, service):
        request = ask("Add 1 and 2.", tools=[ADD], tool_choice=ToolChoice.any(), max_tokens=64)
        ids = {service.do(request).tool_uses()[0].id for _ in range(2)}
        assert len(ids) == 2

    def test_tools_from_typed_functions_work(self, service):
        @tool
        def log_mood(person: str, mood: Mood, intensity: Literal[1, 2, 3] = 2,
                     tags: Optional[list[str]] = None) -> str:
            """Record how someone feels."""
            return "ok"

        spec = log_mood.spec()
        response = service.do(ask("Alice is very happy. Record it.", tools=[spec],
                                  tool_choice=ToolChoice.any(), max_tokens=96))
        self.validate(spec, response)

    def test_tool_choice_none_gives_text(self, service):
        response = service.do(ask("What is 17 plus 25?", tools=[ADD], tool_choice=ToolChoice.none()))
        assert response.tool_uses() == []
        assert response.text()
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)

    def test_auto_reply_is_text_or_one_valid_call(self, service):
        for prompt in ("Hello! How are you?", "Use the add tool to add 2 and 40."):
            response = service.do(ask(prompt, tools=[ADD], max_tokens=64))
            if response.tool_uses():
                self.validate(ADD, response)
            else:
                assert response.text() and not response.text().startswith("{")

    def test_cut_off_call_is_returned_as_text(self, service):
        response = service.do(ask("Weather in Paris?", tools=[WEATHER], tool_choice=ToolChoice.any(),
                                  max_tokens=3))
        assert response.stop_reason == StopReason.MAX_TOKENS
        assert response.tool_uses() == []
        assert response.text().startswith("{")

    def test_follow_up_turn_reads_the_tool_result(self, service):
        call = ToolUse("call_7", "get_weather", {"city": "Paris"})
        request = Request([
            Message.user("What's the weather in Paris?"),
            Message.assistant("", call),
            Message.user("", ToolResult("call_7", "18 degrees and sunny")),
        ], tools=[WEATHER], tool_choice=ToolChoice.none(), max_tokens=32)
        assert "The tool 'get_weather' returned: 18 degrees and sunny" in to_chat_messages(request)[-1]["content"]
        response = service.do(request)
        assert response.text()
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)

    def test_every_grammar_parses_in_llama_cpp(self, service):
        @tool
        def nested(points: list[tuple[int, int]], meta: dict[str, float], when: Optional[str] = None) -> str:
            """Odd shapes."""
            return ""

        specs = [WEATHER, ADD, nested.spec(), ToolSpec("bare"), ToolSpec("anything", "", {"type": "object"})]
        for choice in (ToolChoice.auto(), ToolChoice.any(), ToolChoice.tool("nested")):
            service._check_grammar(service._loaded, tool_grammar(specs, choice))

    def test_unconvertible_schema_falls_back_to_any_object(self, service):
        odd = ToolSpec("odd", "", {"type": "object", "properties": {"x": {"$ref": "https://example.invalid/s"}}})
        grammar = tool_grammar([odd], ToolChoice.any())
        service._check_grammar(service._loaded, grammar)
        response = service.do(ask("Call odd.", tools=[odd], tool_choice=ToolChoice.any(), max_tokens=24))
        assert response.stop_reason in (StopReason.TOOL_USE, StopReason.MAX_TOKENS)

    def test_unparsable_grammar_is_refused_not_a_crash(self, service):
        with pytest.raises(ConfigurationError, match="grammar"):
            service._check_grammar(service._loaded, "root ::= undefined-rule\n")


class TestConvo:
    def test_run_goes_through_a_real_tool_call(self, service):
        calls = []

        @tool
        def add(a: int, b: int) -> int:
            """Add two integers."""
            calls.append((a, b))
            convo.tool_use_only = False  # the first turn must call; afterwards the model may answer
            return a + b

        convo = Convo(service, tools=[add], tool_use_only=True, max_tokens=48)
        response = convo.run("What is 17 plus 25? Use the add tool.", max_turns=4)
        assert calls, "the tool never ran"
        history = convo.messages
        first_call = history[1].tool_uses()[0]
        assert first_call.name == "add"
        jsonschema.validate(first_call.input, add.input_schema)
        [result] = history[2].tool_results()
        assert result.tool_use_id == first_call.id
        assert result.text() == str(calls[0][0] + calls[0][1]) and not result.is_error
        assert response.tool_uses() == []
        assert response.stop_reason in (StopReason.END_TURN, StopReason.MAX_TOKENS)
        assert convo.cumulative_usage().tool_uses == {"add": len(calls)}
        assert convo.cumulative_usage().total_cost_usd == Decimal(0)

    def test_tool_use_only_with_a_turn_ending_tool(self, service):
        @tool(ends_turn=True)
        def finish(outcome: Literal["done", "failed"]) -> str:
            """Report that the task is over."""
            return "noted"

        convo = Convo(service, tools=[finish], tool_use_only=True, max_tokens=48)
        response = convo.run("The task is done. Report it.")
        assert response.tool_uses()[0].name == "finish"
        assert convo.cumulative_usage().tool_uses == {"finish": 1}

    def test_streamed_run_passes_events(self, service):
        events = []
        convo = Convo(service, max_tokens=8)
        response = convo.run("Say hi.", on_event=events.append)
        deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert deltas == response.text()

    def test_cancel_stops_a_stream(self, service):
        convo = Convo(service, max_tokens=200)
        stream = convo.stream_user_text_message("Write a long story about a dragon.")
        next(stream)
        convo.cancel("user pressed stop")
        with pytest.raises(Cancelled):
            for _ in stream:
                pass
        assert convo.messages == []
        assert convo.send_user_text_message("Hi").text() is not None  # still usable, lock released


class TestThreads:
    def test_concurrent_requests_are_serialised_and_all_answered(self, service):
        results, errors = [], []

        def worker(i):
            try:
                results.append(service.do(ask(f"Count to {i}.", max_tokens=6)))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert len(results) == 3 and all(r.usage.output_tokens >= 1 for r in results)

    def test_second_request_from_the_thread_reading_a_stream_is_refused(self, service):
        stream = service.stream(ask("Tell me a story.", max_tokens=50))
        next(stream)
        try:
            with pytest.raises(ConfigurationError, match="still reading"):
                service.do(ask("Hi"))
        finally:
            stream.close()
        assert service.do(ask("Hi", max_tokens=2)).text() is not None  # the lock was released

    def test_lazy_load_happens_once_across_threads(self):
        from structlog.testing import capture_logs

        svc = LocalService(n_ctx=256)
        with capture_logs() as logs:
            threads = [threading.Thread(target=svc.load) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            svc.load()
            svc.do(ask("Hi", max_tokens=1))
        assert [e["event"] for e in logs if e["event"] == "local_model_loaded"] == ["local_model_loaded"]
        assert svc.load_seconds > 0

    def test_too_long_prompt_is_an_invalid_request(self):
        svc = LocalService(n_ctx=64)
        with pytest.raises(InvalidRequestError, match="context window of 64"):
            svc.do(ask("word " * 200))
        assert isinstance(InvalidRequestError("x"), ConvoError)

    def test_load_leaves_llama_cpp_as_it_found_it(self, service):
        import llama_cpp.llama_cpp as lowlevel

        before = lowlevel.llama_model_default_params
        LocalService(n_ctx=128).load()
        assert lowlevel.llama_model_default_params is before
        assert lowlevel.llama_model_default_params().use_extra_bufts is True


class TestLifetime:
    def test_close_frees_the_model_and_a_later_request_loads_it_again(self):
        with LocalService(n_ctx=256, max_tokens=2) as svc:
            svc.load()
            assert svc.load_seconds > 0
            svc.close()
            assert svc.load_seconds is None  # nothing loaded
            assert svc.do(ask("Hi")).usage.output_tokens >= 1
            assert svc.load_seconds > 0
        assert svc.load_seconds is None  # the with block closed it

    def test_close_from_the_thread_reading_a_stream_is_refused(self, service):
        stream = service.stream(ask("Tell me a story.", max_tokens=20))
        next(stream)
        try:
            with pytest.raises(ConfigurationError, match="still reading"):
                service.close()
        finally:
            stream.close()
        assert service.load_seconds is not None  # still loaded


class TestSilence:
    """Nothing is ever printed: not by convo, not by llama.cpp's C code."""

    def test_loading_generating_and_failing_print_nothing(self, capfd, caplog, tmp_path):
        import structlog

        structlog.reset_defaults()  # another test's capture_logs() leaves structlog printing to stdout
        capfd.readouterr()
        caplog.set_level(logging.DEBUG, logger="convo")
        with LocalService(n_ctx=512, max_tokens=8, temperature=0.0) as svc:
            svc.do(ask("Hi"))
            list(svc.stream(ask("What's the weather in Paris?", tools=[WEATHER], tool_choice=ToolChoice.any())))
            with pytest.raises(ConfigurationError, match="grammar"):
                svc._check_grammar(svc._loaded, "root ::= (\n")
        bogus = tmp_path / "bogus.gguf"
        bogus.write_bytes(b"GGUF but not really")
        with pytest.raises(ConfigurationError):
            LocalService(bogus).load()
        out, err = capfd.readouterr()
        assert (out, err) == ("", "")
        # llama.cpp's complaints went to convo's logger instead
        events = {r.getMessage().split()[0] for r in caplog.records}
        assert {"llama_cpp_stderr", "llama_cpp_log"} <= events
