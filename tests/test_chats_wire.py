"""The chats API's JSON (convo.server.chats_wire), on the exact bodies of the protocol document
(/work/shared/protocols/coder-chats.md, section 12 and the shapes of sections 2, 3, 7 and 11)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convo.messages import Message, Role, Text, Thinking, ToolResult, ToolUse
from convo.server.chat_runs import MISSING_RESULT, build_history
from convo.server.chat_store import MessageRow
from convo.server.chats_wire import (
    Chat,
    ChatMessage,
    ChatStatus,
    ChatUsage,
    ChatWithMessages,
    MessagePart,
    MessagePosted,
    MessageUsage,
    ModelConfig,
    ProviderConfig,
    QueuedMessage,
    StreamEvent,
    WireError,
    data_frame,
    dumps,
    error_frame,
    fallback_title,
    format_time,
    message_event,
    parse_create_chat,
    parse_create_message,
    parse_edit_message,
    parse_envelope,
    parse_id,
    parse_model_config_create,
    parse_model_config_update,
    parse_provider_create,
    parse_provider_update,
    parse_time,
    parse_uuid,
    part_event,
    ping_frame,
    queue_event,
    reasoning_title,
    status_event,
    tool_result_value,
)

CHAT = "0c6c1a56-5d8e-4f43-9a3e-1f2b8f7d9a10"
OWNER = "8f14e45f-ea2b-4c1d-9a0e-6c2b1d3e4f50"
CONFIG = "b2d4c6e8-1a3b-4c5d-8e9f-0a1b2c3d4e5f"


def at(text: str) -> datetime:
    return parse_time(text)


def body(raw: str) -> bytes:
    return raw.encode()


class TestChat:
    def test_create_reply_has_the_documents_keys_in_its_order(self):
        """Section 12's create reply, key for key (no workspace here), then convo's usage keys."""
        chat = Chat(CHAT, OWNER, CONFIG, "List the files in my home…", "pending", at("2026-02-27T17:00:00.123456Z"),
                    at("2026-02-27T17:00:00.123456Z"))
        wire = chat.to_wire()
        expected = {"id": CHAT, "owner_id": OWNER, "root_chat_id": CHAT, "last_model_config_id": CONFIG,
                    "title": "List the files in my home…", "status": "pending",
                    "created_at": "2026-02-27T17:00:00.123456Z", "updated_at": "2026-02-27T17:00:00.123456Z"}
        assert {k: wire[k] for k in expected} == expected
        assert list(wire)[:len(expected)] == list(expected)
        assert set(wire) - set(expected) == {"usage", "total_usage"}
        assert "diff_status" not in wire and "parent_chat_id" not in wire and "workspace_id" not in wire

    def test_the_root_is_the_parent_when_none_is_stored(self):
        chat = Chat("c", OWNER, CONFIG, "t", "pending", at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"),
                    parent_chat_id="p")
        assert chat.to_wire()["root_chat_id"] == "p" and chat.to_wire()["parent_chat_id"] == "p"

    def test_list_items_carry_the_zero_diff_status(self):
        chat = Chat(CHAT, OWNER, CONFIG, "t", "waiting", at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"))
        assert chat.to_wire(with_diff_status=True)["diff_status"] == {
            "chat_id": CHAT, "changes_requested": False, "additions": 0, "deletions": 0, "changed_files": 0}

    def test_last_error_only_when_set(self):
        chat = Chat(CHAT, OWNER, CONFIG, "t", "error", at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"),
                    last_error="stream response: boom")
        assert chat.to_wire()["last_error"] == "stream response: boom"

    def test_round_trips(self):
        chat = Chat(CHAT, OWNER, CONFIG, "t", "running", at("2026-02-27T17:00:02.5Z"), at("2026-02-27T17:00:02.5Z"),
                    parent_chat_id="p", root_chat_id="r", usage=ChatUsage(1, 2, cost_usd="0.5"),
                    total_usage=ChatUsage(3, 4, cost_usd="1.25"))
        assert Chat.from_wire(json.loads(dumps(chat.to_wire()))) == chat

    def test_statuses_are_the_six_of_the_document(self):
        assert [s.value for s in ChatStatus] == ["waiting", "pending", "running", "paused", "completed", "error"]


class TestTimes:
    @pytest.mark.parametrize("when, text", [
        (datetime(2026, 2, 27, 17, 0, 2, 500000, timezone.utc), "2026-02-27T17:00:02.5Z"),
        (datetime(2026, 2, 27, 17, 0, 0, 123456, timezone.utc), "2026-02-27T17:00:00.123456Z"),
        (datetime(2026, 2, 27, 17, 0, 0, 0, timezone.utc), "2026-02-27T17:00:00Z"),
    ])
    def test_written_as_go_writes_rfc3339nano(self, when, text):
        assert format_time(when) == text and parse_time(text) == when

    def test_nanoseconds_from_go_are_read(self):
        assert parse_time("2026-02-27T17:00:00.123456789Z").microsecond == 123456


class TestMessages:
    def test_queued_reply_is_exactly_the_documents(self):
        q = QueuedMessage(12, CHAT, [MessagePart.text_part("Also show hidden files")], at("2026-02-27T17:00:02.5Z"))
        assert dumps(MessagePosted(True, queued_message=q).to_wire()) == (
            '{"queued_message":{"id":12,"chat_id":"0c6c1a56-5d8e-4f43-9a3e-1f2b8f7d9a10",'
            '"content":[{"type":"text","text":"Also show hidden files"}],"created_at":"2026-02-27T17:00:02.5Z"},'
            '"queued":true}')

    def test_sent_reply_has_message_and_queued_false(self):
        m = ChatMessage(42, CHAT, at("2026-02-27T17:00:00Z"), "user", [MessagePart.text_part("hi")], CONFIG)
        assert MessagePosted(False, message=m).to_wire() == {"message": m.to_wire(), "queued": False}

    def test_assistant_message_with_usage_is_exactly_the_documents(self):
        m = ChatMessage(45, CHAT, at("2026-02-27T17:00:05Z"), "assistant",
                        [MessagePart.text_part("Your home directory has `notes.txt` and `project`.")], CONFIG,
                        MessageUsage(1950, 14, 1964, 0, 0, 0, 200000))
        assert m.to_wire() == {
            "id": 45, "chat_id": CHAT, "model_config_id": CONFIG, "created_at": "2026-02-27T17:00:05Z",
            "role": "assistant", "content": [{"type": "text", "text": "Your home directory has `notes.txt` and `project`."}],
            "usage": {"input_tokens": 1950, "output_tokens": 14, "total_tokens": 1964, "reasoning_tokens": 0,
                      "cache_creation_tokens": 0, "cache_read_tokens": 0, "context_limit": 200000}}
        assert ChatMessage.from_wire(json.loads(dumps(m.to_wire()))) == m

    def test_tool_messages_have_no_usage_key(self):
        m = ChatMessage(44, CHAT, at("2026-02-27T17:00:05Z"), "tool", [MessagePart.tool_result(
            "toolu_01", "execute", {"exit_code": 0, "output": "notes.txt\nproject\n"})], CONFIG)
        assert m.to_wire()["content"] == [{"type": "tool-result", "tool_call_id": "toolu_01", "tool_name": "execute",
                                          "result": {"exit_code": 0, "output": "notes.txt\nproject\n"}}]
        assert "usage" not in m.to_wire()

    def test_chat_with_messages_always_has_both_lists(self):
        chat = Chat(CHAT, OWNER, CONFIG, "t", "waiting", at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"))
        wire = ChatWithMessages(chat, [], []).to_wire()
        assert wire["messages"] == [] and wire["queued_messages"] == [] and list(wire) == ["chat", "messages",
                                                                                           "queued_messages"]


class TestParts:
    def test_omitempty_keeps_an_empty_object_of_args(self):
        assert MessagePart.tool_call("t1", "noop", {}).to_wire() == {"type": "tool-call", "tool_call_id": "t1",
                                                                     "tool_name": "noop", "args": {}}

    def test_is_error_only_when_true(self):
        assert "is_error" not in MessagePart.tool_result("t", "n", {"output": "x"}).to_wire()
        assert MessagePart.tool_result("t", "n", {"error": "x"}, True).to_wire()["is_error"] is True

    @pytest.mark.parametrize("text, is_error, value", [
        ("boom", True, {"error": "boom"}),
        ('{"a": 1}', False, {"a": 1}),
        ("[1, 2]", False, [1, 2]),
        ("plain words", False, {"output": "plain words"}),
        ("", False, {"output": ""}),
    ])
    def test_tool_result_values_follow_coders_rules(self, text, is_error, value):
        assert tool_result_value(text, is_error) == value

    def test_reasoning_title_is_the_bold_first_line(self):
        assert reasoning_title("**Planning the answer**\nfirst I...") == "Planning the answer"
        assert reasoning_title("**" + " ".join(f"w{i}" for i in range(12)) + "**") == "w0 w1 w2 w3 w4 w5 w6 w7"
        assert reasoning_title("no title here") == ""


class TestStreamEvents:
    def test_frames_of_the_document(self):
        events = [
            part_event(CHAT, "assistant", MessagePart.tool_call("toolu_01", "execute", args_delta='{"command":')),
            part_event(CHAT, "assistant", MessagePart.tool_call("toolu_01", "execute", {"command": "ls ~"})),
            part_event(CHAT, "tool", MessagePart.tool_result("toolu_01", "execute", {"exit_code": 0, "output": "x"})),
            status_event(CHAT, "running"),
        ]
        assert [json.loads(dumps(e)) for e in events] == [
            {"type": "message_part", "chat_id": CHAT, "message_part": {"role": "assistant", "part": {
                "type": "tool-call", "tool_call_id": "toolu_01", "tool_name": "execute", "args_delta": '{"command":'}}},
            {"type": "message_part", "chat_id": CHAT, "message_part": {"role": "assistant", "part": {
                "type": "tool-call", "tool_call_id": "toolu_01", "tool_name": "execute", "args": {"command": "ls ~"}}}},
            {"type": "message_part", "chat_id": CHAT, "message_part": {"role": "tool", "part": {
                "type": "tool-result", "tool_call_id": "toolu_01", "tool_name": "execute",
                "result": {"exit_code": 0, "output": "x"}}}},
            {"type": "status", "chat_id": CHAT, "status": {"status": "running"}},
        ]

    def test_an_empty_queue_update_leaves_the_key_out(self):
        assert queue_event(CHAT, []) == {"type": "queue_update", "chat_id": CHAT}
        assert StreamEvent.from_wire(queue_event(CHAT, [])).queued_messages == ()

    def test_data_frames_embed_events_serialised_once(self):
        texts = [dumps(status_event(CHAT, "waiting")), dumps(queue_event(CHAT, []))]
        frame = data_frame(texts)
        assert json.loads(frame) == {"type": "data", "data": [json.loads(t) for t in texts]}
        assert parse_envelope(frame)[0] == "data"

    def test_ping_and_error_envelopes(self):
        assert json.loads(ping_frame()) == {"type": "ping", "data": None}
        assert json.loads(error_frame("Chat deleted.", "gone")) == {"type": "error", "data": {
            "message": "Chat deleted.", "detail": "gone"}}
        with pytest.raises(ValueError):
            parse_envelope('{"type": "weird"}')

    def test_events_round_trip(self):
        m = ChatMessage(7, CHAT, at("2026-01-01T00:00:00Z"), "user", [MessagePart.text_part("x")])
        for event in (message_event(m), status_event(CHAT, "error"), queue_event(CHAT, [
                QueuedMessage(1, CHAT, [MessagePart.text_part("q")], at("2026-01-01T00:00:00Z"))])):
            assert StreamEvent.from_wire(json.loads(dumps(event))).to_wire() == event


class TestTitles:
    def test_six_words_then_an_ellipsis(self):
        assert fallback_title(["List the files in my home directory"]) == "List the files in my home…"
        assert fallback_title(["one two three"]) == "one two three"
        assert fallback_title(["  "]) == "New Chat"
        assert fallback_title(["x" * 200]) == "x" * 80
        assert fallback_title(["a b c d e f g"], ellipsis="...") == "a b c d e f..."


class TestRequests:
    def test_create_reads_the_document_example(self):
        req = parse_create_chat(body('{"content":[{"type":"text","text":" List the files in my home directory "}],'
                                     '"model_config_id":"b2d4c6e8-1a3b-4c5d-8e9f-0a1b2c3d4e5f","extra":1}'))
        assert req.content == ("List the files in my home directory",) and req.model_config_id == CONFIG

    @pytest.mark.parametrize("raw, status, message, detail", [
        ("", 400, "Request body must be valid JSON.", "EOF"),
        ("{not json", 400, "Request body must be valid JSON.", None),
        ("[]", 400, "Request body must be valid JSON.",
         "json: cannot unmarshal array into Go value of type codersdk.CreateChatRequest"),
        ('{"content": "hi"}', 400, "Request body must be valid JSON.",
         "json: cannot unmarshal string into Go struct field CreateChatRequest.content of type []codersdk.ChatInputPart"),
        ("null", 400, "Content is required.", "Content cannot be empty."),
        ('{"content": []}', 400, "Content is required.", "Content cannot be empty."),
        ('{"content": [{"type": "text", "text": "  "}]}', 400, "Invalid input part.", "content[0].text cannot be empty."),
        ('{"content": [{"type": "image", "text": "x"}]}', 400, "Invalid input part.",
         'content[0].type "image" is not supported.'),
        ('{"content": [{"type": "text", "text": "x"}], "model_config_id": "nope"}', 400,
         "Request body must be valid JSON.", None),
    ])
    def test_bad_bodies_get_coders_errors(self, raw, status, message, detail):
        with pytest.raises(WireError) as caught:
            parse_create_chat(body(raw))
        assert caught.value.status == status and caught.value.message == message
        if detail is not None:
            assert caught.value.detail == detail
        assert caught.value.body()["message"] == message

    def test_messages_and_edits_read_content_the_same_way(self):
        assert parse_create_message(body('{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}')
                                    ).content == ("a", "b")
        with pytest.raises(WireError, match="Content is required"):
            parse_edit_message(body("{}"))

    def test_error_bodies_leave_out_empty_detail(self):
        assert WireError(429, "Message queue is full.", "Maximum 20 messages can be queued.").body() == {
            "message": "Message queue is full.", "detail": "Maximum 20 messages can be queued."}
        assert WireError(404, "Route not found.").body() == {"message": "Route not found."}

    def test_path_ids(self):
        assert parse_uuid(CHAT.upper()) == CHAT
        with pytest.raises(WireError) as caught:
            parse_uuid("abc")
        assert caught.value.message == 'Invalid UUID "abc".'
        assert parse_id("42", "bad") == 42
        for raw in ("0", "-1", "x", "1.5", "99999999999999999999"):
            with pytest.raises(WireError, match="bad"):
                parse_id(raw, "bad")


class TestAdminRequests:
    def test_provider_create_normalises_and_hides_the_key(self):
        req = parse_provider_create(body('{"provider": " Anthropic ", "api_key": "sk-secret-1", '
                                         '"base_url": "https://example.test/v1"}'))
        assert req.provider == "anthropic" and req.enabled is True
        assert "sk-secret-1" not in repr(req)

    @pytest.mark.parametrize("raw, message", [
        ('{"provider": "nope"}', "Invalid provider."),
        ('{"provider": "openai", "base_url": "ftp://x"}', "Invalid provider base URL."),
        ('{"provider": "openai", "base_url": "relative/path"}', "Invalid provider base URL."),
    ])
    def test_provider_create_errors(self, raw, message):
        with pytest.raises(WireError) as caught:
            parse_provider_create(body(raw))
        assert caught.value.status == 400 and caught.value.message == message

    def test_provider_update_tells_absent_from_empty(self):
        assert parse_provider_update(body("{}")).api_key is None
        assert parse_provider_update(body('{"api_key": ""}')).api_key == ""

    @pytest.mark.parametrize("raw, message", [
        ('{"provider": "anthropic", "model": "", "context_limit": 5}', "Model is required."),
        ('{"provider": "anthropic", "model": "m"}', "Context limit is required."),
        ('{"provider": "anthropic", "model": "m", "context_limit": 5, "compression_threshold": 101}',
         "Invalid compression threshold."),
        ('{"provider": "x", "model": "m", "context_limit": 5}', "Invalid provider."),
    ])
    def test_model_config_create_errors(self, raw, message):
        with pytest.raises(WireError) as caught:
            parse_model_config_create(body(raw))
        assert caught.value.status == 400 and caught.value.message == message

    def test_model_config_defaults(self):
        req = parse_model_config_create(body('{"provider": "anthropic", "model": "m", "context_limit": 5, '
                                             '"model_config": {"max_output_tokens": 100, "temperature": 0.5}}'))
        assert (req.enabled, req.is_default, req.compression_threshold) == (True, False, 70)
        assert req.model_config == {"max_output_tokens": 100, "temperature": 0.5}

    def test_model_config_update_errors(self):
        with pytest.raises(WireError, match="Context limit must be greater than zero"):
            parse_model_config_update(body('{"context_limit": 0}'))
        with pytest.raises(WireError, match="Invalid compression threshold"):
            parse_model_config_update(body('{"compression_threshold": -1}'))

    def test_config_shapes(self):
        created = at("2026-01-01T00:00:00Z")
        provider = ProviderConfig("00000000-0000-0000-0000-000000000000", "openai", "OpenAI", False, False, "supported")
        assert provider.to_wire() == {"id": "00000000-0000-0000-0000-000000000000", "provider": "openai",
                                      "display_name": "OpenAI", "enabled": False, "has_api_key": False,
                                      "source": "supported"}
        config = ModelConfig("i", "anthropic", "m", "M", True, True, 1000, 70, created, created)
        assert "model_config" not in config.to_wire()
        assert ModelConfig.from_wire(config.to_wire()) == config


class TestUsage:
    @given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9),
                              st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False)), max_size=20))
    def test_a_rollup_is_a_sum(self, items):
        usages = [ChatUsage(i, o, cost_usd=c) for i, o, c in items]
        total = sum(usages, ChatUsage())
        assert total.input_tokens == sum(i for i, _, _ in items)
        assert total.cost_usd == sum((c for _, _, c in items), Decimal(0))
        assert ChatUsage.from_wire(json.loads(dumps(total.to_wire()))) == total


def row(i: int, role: str, *parts, model=None, compressed=False, visibility="both") -> MessageRow:
    return MessageRow(i, CHAT, 0.0, role, parts, visibility, compressed, None, model)


class TestHistory:
    """What the model sees of a stored chat (convo.server.chat_runs.build_history)."""

    def test_the_unanswered_user_messages_are_sent_together(self):
        system, history, tail = build_history([
            row(1, "system", MessagePart.text_part("be brief"), visibility="model"),
            row(2, "user", MessagePart.text_part("hi")),
            row(3, "assistant", MessagePart.text_part("hello"), model=Message.assistant("hello").to_dict()),
            row(4, "user", MessagePart.text_part("a")),
            row(5, "user", MessagePart.text_part("b")),
        ])
        assert system == "be brief"
        assert history == [Message.user("hi"), Message.assistant("hello")]
        assert tail == [Text("a"), Text("b")]

    def test_stored_results_answer_calls_and_missing_ones_say_interrupted(self):
        call1, call2 = ToolUse("t1", "f", {"x": 1}), ToolUse("t2", "g", {})
        result = ToolResult("t1", "41")
        _, history, tail = build_history([
            row(1, "user", MessagePart.text_part("go")),
            row(2, "assistant", model=Message(Role.ASSISTANT, (Thinking("hm", "sig"), call1, call2)).to_dict()),
            row(3, "tool", model=result.to_dict()),
        ])
        assert history[-1].content[0] == Thinking("hm", "sig")  # byte-exact for the next request
        assert tail[0] == result and tail[1].tool_use_id == "t2" and tail[1].is_error
        assert tail[1].text() == MISSING_RESULT

    def test_the_latest_summary_replaces_what_came_before(self):
        system, history, tail = build_history([
            row(1, "system", MessagePart.text_part("sys"), visibility="model"),
            row(2, "user", MessagePart.text_part("old")),
            row(3, "assistant", MessagePart.text_part("old reply")),
            row(4, "system", MessagePart.text_part("Summary of earlier chat context:\n\nS"), compressed=True,
                visibility="model"),
            row(5, "assistant", MessagePart.tool_call("c", "chat_summarized", {}), compressed=True, visibility="user"),
            row(6, "tool", MessagePart.tool_result("c", "chat_summarized", {}), compressed=True),
            row(7, "user", MessagePart.text_part("new")),
        ])
        assert system == "sys\n\nSummary of earlier chat context:\n\nS"
        assert history == [] and tail == [Text("new")]

    def test_a_chat_whose_model_had_the_last_word_has_nothing_to_send(self):
        _, history, tail = build_history([row(1, "user", MessagePart.text_part("q")),
                                          row(2, "assistant", MessagePart.text_part("a"))])
        assert tail is None and len(history) == 2
