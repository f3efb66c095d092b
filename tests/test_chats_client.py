"""convo.chats.ChatsClient against ``convo serve`` as a real process: one method per route, attrs values back,
typed errors with the server's status and message, and streams as iterators the caller closes."""

from __future__ import annotations

import pickle
import threading
import time
import uuid

import pytest

from convo.chats import (
    Chat,
    ChatsBadRequest,
    ChatsClient,
    ChatsConnectionError,
    ChatsError,
    ChatsForbidden,
    ChatsNotFound,
    ChatsQueueFull,
    ChatsStreamError,
    ChatsUnauthorized,
    ChatStatus,
    MessagePosted,
)
from tests.chats_support import FakeModel, admin_token, token
from tests.server_support import ServeProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with FakeModel() as fake, ServeProcess(tmp_path_factory.mktemp("chats-client"), fake.url,
                                           args=("--chat-heartbeat", "0.5")) as p:
        yield p


@pytest.fixture
def client(served):
    with ChatsClient(served.url, token(f"client-{uuid.uuid4().hex[:8]}")) as c:
        yield c


class TestRoutes:
    def test_a_conversation_through_the_client(self, client):
        chat = client.create_chat("hello")
        assert isinstance(chat, Chat) and chat.status == ChatStatus.PENDING and chat.title == "hello"
        done = client.wait(chat.id)
        assert done.status == ChatStatus.WAITING and done.usage.responses == 1
        posted = client.create_message(chat.id, "again")
        assert isinstance(posted, MessagePosted) and not posted.queued and posted.message.text() == "again"
        client.wait(chat.id)
        got = client.get_chat(chat.id)
        assert [(m.role, m.text()) for m in got.messages] == [("user", "hello"), ("assistant", "echo: hello"),
                                                              ("user", "again"), ("assistant", "echo: again")]
        assert [c.id for c in client.list_chats()] == [chat.id]
        edited = client.edit_message(chat.id, got.messages[2].id, "edited")
        assert edited.text() == "edited"
        client.wait(chat.id)
        assert client.get_chat(chat.id).messages[-1].text() == "echo: edited"
        assert client.interrupt(chat.id).status == ChatStatus.WAITING
        assert client.diff_status(chat.id).changed_files == 0 and client.diff(chat.id).diff == ""
        client.delete_chat(chat.id)
        assert client.list_chats() == []

    def test_queue_routes(self, client):
        chat = client.create_chat("DRIP 40 0.05")
        a = client.create_message(chat.id, "a")
        b = client.create_message(chat.id, "b")
        assert a.queued and b.queued and a.queued_message.text() == "a"
        client.delete_queued_message(chat.id, a.queued_message.id)
        assert client.promote_queued_message(chat.id, b.queued_message.id).text() == "b"
        client.wait(chat.id)
        assert client.get_chat(chat.id).queued_messages == ()

    def test_the_catalog_and_admin_routes(self, served, client):
        assert any(p.provider == "anthropic" and p.available for p in client.list_models().providers)
        with pytest.raises(ChatsForbidden) as caught:
            client.list_providers()
        assert caught.value.status_code == 403 and caught.value.message == "Forbidden."
        with ChatsClient(served.url + "/api/experimental/chats", admin_token()) as admin:
            provider = admin.create_provider("openai", api_key="sk-client-secret", base_url="http://127.0.0.1:9/v1")
            assert provider.has_api_key and provider.base_url == "http://127.0.0.1:9/v1"
            assert admin.update_provider(provider.id, display_name="Mine").display_name == "Mine"
            config = admin.create_model_config("openai", "gpt-test", 128000, display_name="GPT")
            assert config.display_name == "GPT" and not config.is_default
            assert admin.update_model_config(config.id, compression_threshold=90).compression_threshold == 90
            assert config.id in {c.id for c in admin.list_model_configs()}
            assert "openai" in {p.provider for p in admin.list_providers() if p.source == "database"}
            admin.delete_model_config(config.id)
            admin.delete_provider(provider.id)
            assert "sk-client-secret" not in repr(admin) + served.output()


class TestErrors:
    def test_refusals_are_typed_with_the_servers_message(self, served, client):
        with pytest.raises(ChatsNotFound) as caught:
            client.get_chat(str(uuid.uuid4()))
        assert caught.value.status_code == 404 and isinstance(caught.value, LookupError)
        assert caught.value.message == "Resource not found or you do not have access to this resource"
        with pytest.raises(ChatsBadRequest) as caught:
            client.create_chat("   ")
        assert (caught.value.message, caught.value.detail) == ("Invalid input part.", "content[0].text cannot be empty.")
        with ChatsClient(served.url, token(secret="x" * 40)) as forged, pytest.raises(ChatsUnauthorized):
            forged.list_chats()
        chat = client.create_chat("DRIP 40 0.05")
        for i in range(20):
            client.create_message(chat.id, f"q{i}")
        with pytest.raises(ChatsQueueFull) as caught:
            client.create_message(chat.id, "too many")
        assert caught.value.detail == "Maximum 20 messages can be queued."
        client.delete_chat(chat.id)

    def test_errors_pickle_with_their_fields(self):
        error = ChatsNotFound(404, "gone", "detail")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is ChatsNotFound and (again.status_code, again.message, again.detail) == (404, "gone",
                                                                                                   "detail")

    def test_an_unreachable_server_is_a_connection_error(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with ChatsClient(f"http://127.0.0.1:{port}", token(), timeout=2) as c, pytest.raises(ChatsConnectionError):
            c.list_chats()

    def test_the_token_stays_out_of_reprs(self, served):
        tok = token("secretive")
        c = ChatsClient(served.url, tok)
        assert tok not in repr(c) and tok not in str(vars(c).get("base_url"))
        c.close()

    def test_bad_arguments_fail_before_any_request(self, served):
        from convo.errors import ConfigurationError

        with pytest.raises(ConfigurationError):
            ChatsClient("ftp://x", "t")
        with ChatsClient(served.url, token()) as c, pytest.raises(ConfigurationError):
            c.create_chat(42)


class TestStreams:
    def test_a_stream_is_an_iterator_of_events_and_a_context_manager(self, client):
        chat = client.create_chat("DRIP 10 0.03")
        text = []
        with client.stream(chat.id, timeout=15) as events:
            for event in events:
                if event.type == "message_part" and event.part.type == "text":
                    text.append(event.part.text)
                if event.type == "status" and event.status == ChatStatus.WAITING and text:
                    break
        assert events.closed and "".join(text) == "".join(f"w{i} " for i in range(1, 11))

    def test_close_from_another_thread_ends_the_iteration(self, client):
        chat = client.create_chat("hi")
        client.wait(chat.id)
        events = client.stream(chat.id)
        seen = []
        reader = threading.Thread(target=lambda: seen.extend(events))
        reader.start()
        time.sleep(0.3)
        events.close()
        reader.join(10)
        assert not reader.is_alive() and seen and seen[0].type == "message"

    def test_a_deleted_chat_ends_its_stream_with_an_error(self, client):
        chat = client.create_chat("hi")
        client.wait(chat.id)
        with client.stream(chat.id, timeout=10) as events:
            assert next(events).type == "message"
            client.delete_chat(chat.id)
            with pytest.raises(ChatsStreamError, match="Chat deleted"):
                for _ in events:
                    pass

    def test_opening_a_stream_on_someone_elses_chat_is_not_found(self, served, client):
        chat = client.create_chat("hi")
        with ChatsClient(served.url, token("not-the-owner")) as other, pytest.raises(ChatsNotFound):
            other.stream(chat.id)

    def test_watch_follows_the_users_chats(self, client):
        with client.watch(timeout=10) as feed:
            chat = client.create_chat("hi")
            events = []
            for event in feed:
                events.append(event)
                if event.kind == "status_change" and event.chat.status == ChatStatus.WAITING:
                    break
        assert events[0].kind == "created" and events[0].chat.id == chat.id
        assert all(e.chat.id == chat.id for e in events) and events[-1].chat.usage.responses == 1


def test_errors_tree():
    assert issubclass(ChatsNotFound, ChatsError) and issubclass(ChatsBadRequest, ValueError)
    assert issubclass(ChatsConnectionError, ConnectionError) and issubclass(ChatsForbidden, PermissionError)
