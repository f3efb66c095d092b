"""What every HTTP service offers alike: its constructor, its lifetime, its base URL and its attributes."""

from __future__ import annotations

import inspect
import json
import threading

import pytest
import requests

from convo.messages import Message, Request
from convo.service import StreamDone
from convo.providers.anthropic import DEFAULT_MODEL as CLAUDE, AnthropicService
from convo.providers.local import LocalService
from convo.providers.openai import OpenAIService
from tests import messages_server as ms
from tests.servers import Reply, ScriptedHTTPServer

REQ = Request([Message.user("hi")])
KEY = "sk-test-services-0000"


def openai_ok(req) -> Reply:
    if req.json().get("stream"):
        chunks = [{"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": w}}]} for w in ("hel", "lo")]
        chunks.append({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return Reply(200, b"", {"content-type": "text/event-stream"},
                     chunks=tuple(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n",))
    return Reply.json({"id": "c1", "model": req.json()["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class TestConstructors:
    @pytest.mark.parametrize("cls, first", [(AnthropicService, "model"), (OpenAIService, "model"),
                                            (LocalService, "model_path")])
    def test_the_model_is_the_one_positional_parameter(self, cls, first):
        params = list(inspect.signature(cls).parameters.values())
        assert params[0].name == first and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
        assert "api_key" not in [p.name for p in params[:1]]

    def test_openai_model_name_first_is_the_model_not_the_key(self, clean_env):
        clean_env.setenv("OPENAI_API_KEY", KEY)
        with ScriptedHTTPServer(default=openai_ok) as server:
            svc = OpenAIService("gpt-4.1-mini", base_url=server.url + "/v1")
            assert svc.do(REQ).model == "gpt-4.1-mini"
        sent = server.requests[0]
        assert sent.json()["model"] == "gpt-4.1-mini"
        assert sent.headers["authorization"] == f"Bearer {KEY}"

    def test_anthropic_model_name_first(self, clean_env):
        with ScriptedHTTPServer(default=ms.answer) as server:
            AnthropicService("claude-haiku-4-5", api_key=KEY, base_url=server.url).do(REQ)
        assert server.requests[0].json()["model"] == "claude-haiku-4-5"
        assert server.requests[0].headers["x-api-key"] == KEY

    @pytest.mark.parametrize("cls", [AnthropicService, OpenAIService])
    def test_the_key_cannot_be_passed_by_position(self, cls):
        with pytest.raises(TypeError):
            cls("a-model", KEY)


class TestBaseURLFromTheEnvironment:
    def test_anthropic_reads_anthropic_base_url_as_the_official_sdk_does(self, clean_env):
        with ScriptedHTTPServer(default=ms.answer) as server:
            clean_env.setenv("ANTHROPIC_BASE_URL", server.url + "/")
            svc = AnthropicService(api_key=KEY)
            assert svc.base_url == server.url
            svc.do(REQ)
        assert server.requests[0].path == "/v1/messages"

    def test_an_explicit_base_url_wins(self, clean_env):
        clean_env.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        assert AnthropicService(api_key=KEY, base_url="http://127.0.0.1:1234").base_url == "http://127.0.0.1:1234"
        assert OpenAIService(base_url="http://127.0.0.1:1234/v1").base_url == "http://127.0.0.1:1234/v1"

    def test_blank_variables_count_as_unset(self, clean_env):
        clean_env.setenv("ANTHROPIC_BASE_URL", "  ")
        clean_env.setenv("OPENAI_BASE_URL", "")
        clean_env.setenv("OPENAI_API_KEY", KEY)
        assert AnthropicService(api_key=KEY).base_url == "https://api.anthropic.com"
        assert OpenAIService().base_url == "https://api.openai.com/v1"

    def test_openai_reads_openai_base_url(self, clean_env):
        with ScriptedHTTPServer(default=openai_ok) as server:
            clean_env.setenv("OPENAI_BASE_URL", server.url + "/v1")
            OpenAIService("llama3.2").do(REQ)  # a local server needs no key
        assert server.requests[0].path == "/v1/chat/completions"
        assert "authorization" not in server.requests[0].headers


def anthropic(url: str, **kw) -> AnthropicService:
    return AnthropicService(api_key=KEY, base_url=url, **kw)


def openai(url: str, **kw) -> OpenAIService:
    return OpenAIService("gpt-4o", api_key=KEY, base_url=url + "/v1", **kw)


def reply_for(req) -> Reply:
    return openai_ok(req) if req.path.endswith("/chat/completions") else ms.answer(req)


def open_connections(svc, url: str) -> int:
    pools = svc._session.get_adapter(url).poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())


@pytest.mark.parametrize("make", [anthropic, openai], ids=["anthropic", "openai"])
class TestLifetime:
    def test_a_with_block_closes_the_connection_pool(self, make):
        with ScriptedHTTPServer(default=reply_for) as server:
            with make(server.url) as svc:
                svc.do(REQ)
                assert open_connections(svc, server.url) == 1
            assert open_connections(svc, server.url) == 0

    def test_close_is_idempotent(self, make):
        with ScriptedHTTPServer(default=reply_for) as server:
            svc = make(server.url)
            svc.do(REQ)
            svc.close()
            svc.close()
        assert open_connections(svc, server.url) == 0

    def test_a_stream_started_in_one_thread_closes_from_another(self, make):
        """Nothing of the stream stays in the reading thread's context between events."""
        with ScriptedHTTPServer(default=reply_for) as server:
            svc = make(server.url)
            events = svc.stream(REQ)
            first = []
            reader = threading.Thread(target=lambda: first.append(next(events)))
            reader.start()
            reader.join(5)
            assert first and not isinstance(first[0], StreamDone)
            events.close()
            assert svc.do(REQ).text()  # the connection went back to the pool, or was dropped cleanly
            svc.close()

    def test_a_session_passed_in_is_left_open(self, make):
        session = requests.Session()
        with ScriptedHTTPServer(default=reply_for) as server:
            with make(server.url, session=session) as svc:
                svc.do(REQ)
            assert open_connections(svc, server.url) == 1  # the caller's pool, still holding its connection
        session.close()


    def test_a_pickled_service_works_with_a_pool_of_its_own(self, make):
        """What crosses to a Dask or Ray worker: the settings and the key, never the connections."""
        import pickle

        with ScriptedHTTPServer(default=reply_for) as server:
            svc = make(server.url)
            svc.do(REQ)
            copy = pickle.loads(pickle.dumps(svc))
            assert copy._session is not svc._session and repr(copy) == repr(svc)
            assert copy.do(REQ).text()
            assert server.requests[-1].headers == server.requests[0].headers  # the same key and settings
            copy.close()
            svc.close()


class TestAttributes:
    def test_model_and_max_tokens(self, clean_env):
        claude = AnthropicService(api_key=KEY)
        assert (claude.model, claude.max_tokens) == (CLAUDE, 8192)
        gpt = OpenAIService("gpt-4o", api_key=KEY, max_tokens=100)
        assert (gpt.model, gpt.max_tokens) == ("gpt-4o", 100)
        assert OpenAIService("gpt-4o", api_key=KEY).max_tokens is None  # the server decides

    def test_http_services_have_no_price_of_their_own(self):
        """Their models are priced by the price table, not by the service."""
        assert not hasattr(AnthropicService(api_key=KEY), "price")
        assert not hasattr(OpenAIService("gpt-4o", api_key=KEY), "price")
