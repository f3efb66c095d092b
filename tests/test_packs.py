"""Pack conversations (convo.open) driven through ScriptedService: variables, fragments, parameters, tools,
tool policy, validators in every mode, approvals, persistence, context limits and events."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

import convo
from convo import Message, Pending, ToolUse, Usage
from convo.packs import ContextTrimmed, pack_from_dict, register_validator
from convo.service import BlockDone, StreamDone, TextDelta
from convo.testing import RecordingListener, ScriptedService, reply
from tests.servers import Reply, ScriptedHTTPServer

ROOT = Path(__file__).resolve().parent.parent
PACKS = Path(__file__).resolve().parent / "fixtures" / "packs"


def make_pack(prompt: dict | None = None, **top) -> convo.Pack:
    """A small valid pack with one prompt, ``chat``, changed by ``prompt`` and top-level ``top``."""
    data = {
        "id": "test-pack", "name": "Test", "version": "1.0.0",
        "template_engine": {"version": "v1", "syntax": "{{variable}}"},
        "prompts": {"chat": {"id": "chat", "name": "Chat", "version": "1.0.0", "system_template": "You help.",
                             **(prompt or {})}},
        **top,
    }
    return pack_from_dict(data)


def system_of(request) -> str:
    return "".join(b.text for b in request.system)


class ChunkedService(ScriptedService):
    """A ScriptedService whose streams send each reply's text in chunks of ``size`` characters."""

    def __init__(self, replies=(), *, size: int = 5, **kw):
        super().__init__(replies, **kw)
        self.size = size
        self.chunks_sent = 0

    def stream(self, request):
        response = self.do(request)
        for index, block in enumerate(response.content):
            if isinstance(block, convo.Text):
                for start in range(0, len(block.text), self.size):
                    self.chunks_sent += 1
                    yield TextDelta(index, block.text[start:start + self.size])
            yield BlockDone(index, block)
        yield StreamDone(response)


# --- opening ---------------------------------------------------------------------------

class TestOpen:
    def test_open_takes_a_path_and_a_prompt_and_returns_a_convo(self):
        service = ScriptedService([reply("Hi Ada!")])
        c = convo.open(PACKS / "hello_hello.pack.json", "chat", service=service, variables={"user_name": "Ada"})
        assert isinstance(c, convo.Convo)
        assert c.send("hello").text() == "Hi Ada!"
        assert system_of(service.requests[0]).startswith("You are a friendly assistant. The user's name is Ada.")

    def test_open_takes_a_loaded_pack_and_defaults_to_its_only_prompt(self):
        service = ScriptedService([reply("ok")])
        c = convo.open(convo.load_pack(PACKS / "streaming_streaming.pack.json"), service=service)
        c.send("go")
        assert system_of(service.requests[0]).startswith("You are a creative storyteller.")

    def test_a_pack_with_several_prompts_needs_the_prompt_named(self):
        data = make_pack().to_dict()
        data["prompts"]["other"] = {**data["prompts"]["chat"], "id": "other"}
        with pytest.raises(convo.ConfigurationError, match="name the one to open"):
            convo.open(pack_from_dict(data), service=ScriptedService())

    def test_unknown_prompt_and_missing_file(self, tmp_path):
        with pytest.raises(convo.PromptNotFound):
            convo.open(PACKS / "hello_hello.pack.json", "nope", service=ScriptedService())
        with pytest.raises(convo.PackNotFound):
            convo.open(tmp_path / "missing.pack.json", "chat", service=ScriptedService())

    def test_options_are_checked(self):
        pack = make_pack()
        for bad in (dict(validation="loud"), dict(truncation="magic"), dict(token_budget=0),
                    dict(system_prompt="x"), dict(disabled_validators="regex")):
            with pytest.raises(convo.ConfigurationError):
                convo.open(pack, "chat", service=ScriptedService(), **bad)

    def test_model_picks_the_provider_as_convo_does(self):
        c = convo.open(make_pack(), "chat", model="local")
        assert type(c.service).__name__ == "LocalService"

    def test_plain_convos_have_no_pack_methods(self):
        with pytest.raises(convo.ConfigurationError, match="not opened from a pack"):
            convo.Convo(ScriptedService()).set_var("x", 1)

    def test_a_session_belongs_to_one_convo(self):
        c = convo.open(make_pack(), "chat", service=ScriptedService([reply("a"), reply("b")]))
        c.send("one")
        other = convo.Convo(c.service, hooks=c.hooks)
        with pytest.raises(convo.ConfigurationError, match="already runs convo"):
            other.send("two")


# --- variables and templates --------------------------------------------------------------

VARIABLES_PROMPT = {
    "system_template": "Customer {{customer_name}} ({{tier}}), {{vip}}, code {{code}}, tags {{tags}}.",
    "variables": [
        {"name": "customer_name", "type": "string", "required": True,
         "validation": {"pattern": "^[A-Z][a-z]+$", "min_length": 2, "max_length": 10}},
        {"name": "tier", "type": "integer", "required": False, "default": 1,
         "validation": {"minimum": 1, "maximum": 3}},
        {"name": "vip", "type": "boolean", "required": False, "default": False},
        {"name": "code", "type": "string", "required": False, "validation": {"enum": ["A", "B"]}},
        {"name": "tags", "type": "array", "required": False, "default": ["new"]},
    ],
}


class TestVariables:
    def test_a_missing_required_variable_is_an_error_before_anything_is_sent(self):
        service = ScriptedService([reply("hi")])
        c = convo.open(PACKS / "hello_hello.pack.json", "chat", service=service)
        with pytest.raises(convo.VariableError) as caught:
            c.send("hello")
        assert caught.value.problems[0][0] == "user_name" and "required" in caught.value.problems[0][1]
        assert service.requests == [] and c.messages == []

    def test_the_template_is_rendered_at_each_send_from_the_current_values(self):
        service = ScriptedService([reply("a"), reply("b")])
        c = convo.open(PACKS / "hello_hello.pack.json", "chat", service=service)
        c.set_var("user_name", "Ada")
        c.send("one")
        c.set_var("user_name", "Grace")
        c.send("two")
        assert ["Ada" in system_of(r) for r in service.requests] == [True, False]
        assert "Grace" in system_of(service.requests[1])

    def test_defaults_types_and_rendering(self):
        service = ScriptedService([reply("ok")])
        c = convo.open(make_pack(VARIABLES_PROMPT), "chat", service=service, variables={"customer_name": "Ada"})
        assert c.get_var("tier") == 1 and c.get_var("code") is None
        c.send("hi")
        assert system_of(service.requests[0]) == 'Customer Ada (1), false, code , tags ["new"].'

    def test_text_values_are_converted_to_the_declared_type(self):
        c = convo.open(make_pack(VARIABLES_PROMPT), "chat", service=ScriptedService())
        c.set_vars({"tier": "2", "vip": "yes", "tags": '["a", "b"]'})
        assert (c.get_var("tier"), c.get_var("vip"), c.get_var("tags")) == (2, True, ["a", "b"])

    @pytest.mark.parametrize("name, value, reason", [
        ("customer_name", "ada", "does not match the pattern"),
        ("customer_name", "A", "does not match the pattern"),
        ("customer_name", "Bartholomewz", "at most 10 long"),
        ("tier", 4, "at most 3"),
        ("tier", "two", "must be a number"),
        ("tier", 1.5, "whole number"),
        ("vip", "maybe", "true or false"),
        ("code", "C", r"one of \['A', 'B'\]"),
        ("tags", {"a": 1}, "must be an array"),
        ("customer_name", ["Ada"], "must be a string"),
    ])
    def test_invalid_values_are_refused_with_the_reason(self, name, value, reason):
        c = convo.open(make_pack(VARIABLES_PROMPT), "chat", service=ScriptedService())
        with pytest.raises(convo.VariableError, match=reason) as caught:
            c.set_var(name, value)
        assert caught.value.problems[0][0] == name

    def test_set_vars_checks_every_value_before_setting_any(self):
        c = convo.open(make_pack(VARIABLES_PROMPT), "chat", service=ScriptedService())
        with pytest.raises(convo.VariableError) as caught:
            c.set_vars({"customer_name": "Ada", "tier": 9, "code": "Z"})
        assert [name for name, _ in caught.value.problems] == ["tier", "code"]
        assert c.get_var("customer_name") is None

    def test_invalid_variables_at_open_are_refused(self):
        with pytest.raises(convo.VariableError):
            convo.open(make_pack(VARIABLES_PROMPT), "chat", service=ScriptedService(), variables={"tier": 0})

    def test_set_vars_from_env(self, monkeypatch):
        monkeypatch.setenv("SHOP_CUSTOMER_NAME", "Ada")
        monkeypatch.setenv("SHOP_TIER", "3")
        monkeypatch.setenv("OTHER_TIER", "1")
        c = convo.open(make_pack(VARIABLES_PROMPT), "chat", service=ScriptedService())
        c.set_vars_from_env("SHOP")
        assert (c.get_var("customer_name"), c.get_var("tier")) == ("Ada", 3)

    def test_undeclared_variables_the_template_uses_must_be_set(self):
        """The variables pack uses {{current_month}} and {{current_year}} without declaring them."""
        service = ScriptedService([reply("ok")])
        c = convo.open(PACKS / "variables_assistant.pack.json", "assistant", service=service)
        with pytest.raises(convo.VariableError) as caught:
            c.send("what month is it?")
        assert [n for n, _ in caught.value.problems] == ["current_month", "current_year"]
        c.set_vars({"current_month": "May", "current_year": 2026, "current_hour": 14})
        c.send("what month is it?")
        system = system_of(service.requests[0])
        assert "Month: May 2026" in system and "Current hour: 14:00" in system
        assert "User ID: anonymous" in system  # a default

    def test_get_var_of_an_unknown_name_is_an_error(self):
        c = convo.open(make_pack(), "chat", service=ScriptedService())
        with pytest.raises(convo.VariableError):
            c.get_var("nope")
        c.set_var("nope", "now set")
        assert c.get_var("nope") == "now set"

    def test_a_value_that_is_not_json_data_is_refused(self):
        c = convo.open(make_pack(), "chat", service=ScriptedService())
        with pytest.raises(convo.VariableError, match="JSON data"):
            c.set_var("thing", object())
        with pytest.raises(convo.VariableError, match="not a variable name"):
            c.set_var("two words", "x")

    def test_an_env_binding_fills_a_variable(self, monkeypatch):
        monkeypatch.setenv("APP_LOCALE", "  FR ")
        prompt = {"system_template": "Locale {{locale}}.", "variables": [
            {"name": "locale", "type": "string", "required": True,
             "binding": {"kind": "env", "field": "APP_LOCALE", "auto_populate": True, "filter": "trim,lowercase"}}]}
        service = ScriptedService([reply("ok")])
        convo.open(make_pack(prompt), "chat", service=service).send("hi")
        assert system_of(service.requests[0]) == "Locale fr."

    def test_a_default_that_breaks_its_own_rules_is_a_pack_error(self):
        prompt = {"variables": [{"name": "n", "type": "integer", "required": False, "default": 7,
                                 "validation": {"maximum": 5}}]}
        with pytest.raises(convo.PackError, match=r"prompts.chat.variables\[0\].default"):
            convo.open(make_pack(prompt), "chat", service=ScriptedService())


class TestTemplates:
    def test_fragments_nest_and_use_variables(self):
        pack = make_pack({"system_template": "{{fragments.intro}} Bye.",
                          "variables": [{"name": "company", "type": "string", "required": True}]},
                         fragments={"intro": "Hi from {{ company }}. {{fragments.motto}}", "motto": "We care."})
        service = ScriptedService([reply("ok")])
        convo.open(pack, "chat", service=service, variables={"company": "Acme"}).send("hi")
        assert system_of(service.requests[0]) == "Hi from Acme. We care. Bye."

    def test_an_unknown_fragment_is_a_pack_error_at_open(self):
        pack = make_pack({"system_template": "{{fragments.nope}}"}, fragments={"intro": "x"})
        with pytest.raises(convo.PackError, match="fragment 'nope'"):
            convo.open(pack, "chat", service=ScriptedService())

    def test_fragments_that_include_each_other_are_a_pack_error(self):
        pack = make_pack({"system_template": "{{fragments.a}}"}, fragments={"a": "{{fragments.b}}",
                                                                            "b": "{{fragments.a}}"})
        with pytest.raises(convo.PackError, match="loop: a -> b -> a"):
            convo.open(pack, "chat", service=ScriptedService())

    def test_other_variable_syntaxes(self):
        pack = make_pack({"system_template": "Hello ${name}, not {{name}}.",
                          "variables": [{"name": "name", "type": "string", "required": True}]},
                         template_engine={"version": "v1", "syntax": "${variable}"})
        service = ScriptedService([reply("ok")])
        convo.open(pack, "chat", service=service, variables={"name": "Ada"}).send("hi")
        assert system_of(service.requests[0]) == "Hello Ada, not {{name}}."

    def test_object_fields_and_unsupported_constructs(self):
        pack = make_pack({"system_template": "{{user.name}} {{user.missing}}|{{#if x}}",
                          "variables": [{"name": "user", "type": "object", "required": True}]})
        service = ScriptedService([reply("ok")])
        convo.open(pack, "chat", service=service, variables={"user": {"name": "Ada"}}).send("hi")
        assert system_of(service.requests[0]) == "Ada |{{#if x}}"

    def test_model_overrides(self):
        pack = make_pack({"system_template": "Base.", "parameters": {"temperature": 0.7},
                          "model_overrides": {"scripted": {"system_template_prefix": "Pre. ",
                                                           "system_template_suffix": " Post.",
                                                           "parameters": {"temperature": 0.1}},
                                              "gpt-*": {"system_template": "GPT."}}})
        service = ScriptedService([reply("ok")])
        convo.open(pack, "chat", service=service).send("hi")
        assert system_of(service.requests[0]) == "Pre. Base. Post." and service.requests[0].temperature == 0.1
        other = ScriptedService([reply("ok")], model="gpt-4o")
        convo.open(pack, "chat", service=other).send("hi")
        assert system_of(other.requests[0]) == "GPT." and other.requests[0].temperature == 0.7


class TestParameters:
    def test_the_pack_parameters_reach_the_request(self):
        pack = make_pack({"parameters": {"temperature": 0.3, "max_tokens": 77, "top_p": 0.8, "top_k": 20,
                                         "frequency_penalty": 0.4, "presence_penalty": -0.3}})
        service = ScriptedService([reply("ok")])
        convo.open(pack, "chat", service=service).send("hi")
        r = service.requests[0]
        assert (r.temperature, r.max_tokens, r.top_p, r.top_k, r.frequency_penalty, r.presence_penalty) == (
            0.3, 77, 0.8, 20, 0.4, -0.3)

    def test_settings_given_to_open_win(self):
        service = ScriptedService([reply("ok")])
        c = convo.open(PACKS / "multimodal_multimodal.pack.json", "vision-analyst", service=service,
                       temperature=0.0, max_tokens=10)
        c.send("hi")
        assert (service.requests[0].temperature, service.requests[0].max_tokens) == (0.0, 10)

    def test_each_wire_format_maps_what_it_can(self, caplog):
        from convo.providers import anthropic, openai

        request = convo.Request([Message.user("hi")], temperature=0.3, top_p=0.8, top_k=20,
                                frequency_penalty=0.4, presence_penalty=-0.3)
        with caplog.at_level(logging.DEBUG, logger="convo"):
            a = anthropic.to_wire(request, model="claude-sonnet-4-5", max_tokens=100)
            o = openai.to_wire(request, "gpt-4.1-mini")
        assert (a["temperature"], a["top_p"], a["top_k"]) == (0.3, 0.8, 20)
        assert "frequency_penalty" not in a and "presence_penalty" not in a
        assert (o["temperature"], o["top_p"], o["frequency_penalty"], o["presence_penalty"]) == (0.3, 0.8, 0.4, -0.3)
        assert "top_k" not in o
        ignored = [r.getMessage() for r in caplog.records if "parameter_not_sent" in r.getMessage()]
        assert len(ignored) == 3  # two penalties for Anthropic, top_k for OpenAI


class TestMedia:
    def test_the_prompts_media_rules_apply_to_attachments_before_sending(self):
        import base64

        png = convo.Image(media_type="image/png", data=base64.b64encode(b"x" * 10).decode())
        gif = convo.Image(media_type="image/gif", data=base64.b64encode(b"x" * 10).decode())
        big = convo.Image(media_type="image/png", data=base64.b64encode(b"x" * (1024 * 1024 + 1)).decode())
        pack = make_pack({"media": {"enabled": True, "image": {"allowed_formats": ["png", "jpg"], "max_size_mb": 1,
                                                               "max_images_per_msg": 2}}})
        service = ScriptedService([reply("ok")])
        c = convo.open(pack, "chat", service=service)
        for blocks, error in (((gif,), convo.UnsupportedContent), ((png, png, png), convo.UnsupportedContent),
                              ((big,), convo.AttachmentTooLarge)):
            with pytest.raises(error):
                c.send("look", *blocks)
        assert service.requests == []
        c.send("look", png, convo.Image.from_url("https://example.com/a.gif"))
        off = convo.open(make_pack({"media": {"enabled": False}}), "chat", service=ScriptedService())
        with pytest.raises(convo.UnsupportedContent, match="media.enabled is false"):
            off.send("look", png)


# --- tools -------------------------------------------------------------------------------

def weather_call(id="t1", city="Paris"):
    return ToolUse(id, "get_weather", {"city": city, "country": "FR"})


class TestTools:
    def test_handlers_run_with_the_arguments_as_keywords(self):
        service = ScriptedService([reply(tool_uses=[weather_call()]), reply("Sunny.")])
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service)
        c.on_tool("get_weather", lambda city, country: f"sunny in {city}, {country}")
        assert c.run("weather?").text() == "Sunny."
        assert [t.name for t in service.requests[0].tools] == ["get_weather", "get_time"]
        [result] = service.requests[1].messages[-1].tool_results()
        assert result.text() == "sunny in Paris, FR" and not result.is_error

    def test_on_tools_and_a_convo_tool_as_handler(self):
        @convo.tool
        def get_time(timezone: str = "UTC") -> str:
            """The time."""
            return f"noon in {timezone}"

        service = ScriptedService([reply(tool_uses=[weather_call(), ToolUse("t2", "get_time", {"timezone": "CET"})]),
                                   reply("done")])
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service)
        c.on_tools({"get_weather": lambda **args: args, "get_time": get_time})
        c.run("go")
        results = service.requests[1].messages[-1].tool_results()
        assert [r.text() for r in results] == ['{"city": "Paris", "country": "FR"}', "noon in CET"]

    def test_a_tool_the_pack_does_not_declare_is_refused(self):
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=ScriptedService())
        with pytest.raises(convo.ToolNotInPack) as caught:
            c.on_tool("get_wether", lambda **a: None)
        assert caught.value.declared == ["get_time", "get_weather"] and isinstance(caught.value, LookupError)
        with pytest.raises(convo.ToolNotInPack):
            c.on_tools({"get_weather": lambda **a: None, "nope": lambda **a: None})

    def test_a_call_without_a_handler_gets_an_error_result_and_is_reported(self, caplog):
        rec = RecordingListener()
        service = ScriptedService([reply(tool_uses=[weather_call()]), reply("sorry")])
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service, listener=rec)
        with caplog.at_level(logging.WARNING, logger="convo"):
            c.run("weather?")
        [result] = service.requests[1].messages[-1].tool_results()
        assert result.is_error and "has no handler" in result.text()
        [event] = rec.of("tool_result")
        assert isinstance(event.args[2], convo.ConfigurationError)
        assert any("pack_tool_unhandled" in r.getMessage() for r in caplog.records)

    def test_input_that_breaks_the_declared_parameters_never_reaches_the_handler(self):
        seen = []
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "get_weather", {"city": "Paris"})]),
                                   reply("ok")])
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service)
        c.on_tool("get_weather", lambda **a: seen.append(a))
        c.run("go")
        assert seen == [] and "'country' is a required property" in service.requests[1].messages[-1].text() + \
            service.requests[1].messages[-1].tool_results()[0].text()

    def test_on_tool_http_posts_the_arguments_and_returns_the_reply(self):
        secret = "Bearer sk-never-shown-0123"
        with ScriptedHTTPServer([Reply.json({"temp_c": 21}), Reply.json({"error": "boom"}, 500)]) as server:
            service = ScriptedService([reply(tool_uses=[weather_call()]), reply("ok"),
                                       reply(tool_uses=[weather_call("t2", "Oslo")]), reply("ok")])
            c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service)
            c.on_tool_http("get_weather", server.url + "/weather?key=abc", headers={"Authorization": secret},
                           timeout=5)
            c.run("weather?")
            c.run("and Oslo?")
        first, second = server.requests
        assert first.method == "POST" and first.path == "/weather?key=abc"
        assert first.json() == {"city": "Paris", "country": "FR"}
        assert first.headers["authorization"] == secret and first.headers["content-type"] == "application/json"
        assert service.requests[1].messages[-1].tool_results()[0].text() == '{"temp_c": 21}'
        failed = service.requests[3].messages[-1].tool_results()[0]
        assert failed.is_error and "answered 500" in failed.text()
        assert secret not in failed.text() and "key=abc" not in failed.text()
        assert secret not in c.debug_json() and secret not in repr(c.hooks) and secret not in repr(c)

    def test_on_tool_http_get_sends_a_query_and_a_dead_server_is_an_error_result(self):
        from tests.servers import closed_port

        with ScriptedHTTPServer([Reply(200, "plain text", {"content-type": "text/plain"})]) as server:
            service = ScriptedService([reply(tool_uses=[weather_call()]), reply("ok"),
                                       reply(tool_uses=[weather_call("t2")]), reply("ok")])
            c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=service)
            c.on_tool_http("get_weather", server.url + "/w", method="get")
            c.run("weather?")
            assert server.requests[0].method == "GET" and server.requests[0].path == "/w?city=Paris&country=FR"
            assert service.requests[1].messages[-1].tool_results()[0].text() == "plain text"
            c.on_tool_http("get_weather", f"http://127.0.0.1:{closed_port()}/w", timeout=2)
            c.run("again")
        failed = service.requests[3].messages[-1].tool_results()[0]
        assert failed.is_error and "ConnectionError" in failed.text()

    @pytest.mark.parametrize("kwargs", [dict(url="ftp://x/y"), dict(url="http://x", method="BREW"),
                                        dict(url="http://x", timeout=0), dict(url="http://x", headers=["a"])])
    def test_on_tool_http_checks_its_arguments(self, kwargs):
        c = convo.open(PACKS / "tools_tools.pack.json", "assistant", service=ScriptedService())
        with pytest.raises(convo.ConfigurationError):
            c.on_tool_http("get_weather", **kwargs)


# --- tool policy ---------------------------------------------------------------------------

def policy_pack(policy: dict) -> convo.Pack:
    data = json.loads((PACKS / "tools_tools.pack.json").read_text())
    data["prompts"]["assistant"]["tool_policy"] = policy
    return pack_from_dict(data)


class TestToolPolicy:
    def test_blocklisted_tools_are_not_offered_nor_run(self):
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "get_time", {})]), reply("ok")])
        c = convo.open(policy_pack({"blocklist": ["get_time"]}), "assistant", service=service)
        ran = []
        c.on_tools({"get_time": lambda **a: ran.append(a), "get_weather": lambda **a: "x"})
        c.run("time?")
        assert [t.name for t in service.requests[0].tools] == ["get_weather"]
        [result] = service.requests[1].messages[-1].tool_results()
        assert ran == [] and result.is_error and "blocked by this prompt's tool policy" in result.text()

    def test_calls_past_max_tool_calls_per_turn_do_not_run(self):
        calls = [weather_call(f"t{i}", f"City{i}") for i in range(3)]
        service = ScriptedService([reply(tool_uses=calls[:2]), reply(tool_uses=calls[2:]), reply("done"),
                                   reply(tool_uses=[weather_call("t9")]), reply("again")])
        c = convo.open(policy_pack({"max_tool_calls_per_turn": 2}), "assistant", service=service)
        ran = []
        c.on_tool("get_weather", lambda city, country: ran.append(city) or "ok")
        c.run("three cities")
        assert ran == ["City0", "City1"]
        [refused] = service.requests[2].messages[-1].tool_results()
        assert refused.is_error and "at most 2 tool calls per turn" in refused.text()
        c.run("a new turn counts afresh")
        assert ran == ["City0", "City1", "Paris"]

    def test_after_max_rounds_the_model_must_answer(self):
        service = ScriptedService([reply(tool_uses=[weather_call("t1")]), reply(tool_uses=[weather_call("t2")]),
                                   reply(tool_uses=[weather_call("t3")]), reply("done")])
        c = convo.open(policy_pack({"max_rounds": 2}), "assistant", service=service)
        c.on_tool("get_weather", lambda **a: "ok")
        c.run("go")
        choices = [r.tool_choice.type.value if r.tool_choice else None for r in service.requests]
        assert choices == ["auto", "auto", "none", "none"]
        [refused] = service.requests[3].messages[-1].tool_results()
        assert refused.is_error and "at most 2 rounds" in refused.text()

    def test_tool_choice_required_forces_the_first_request_of_each_turn(self):
        service = ScriptedService([reply(tool_uses=[weather_call()]), reply("done")])
        c = convo.open(policy_pack({"tool_choice": "required"}), "assistant", service=service)
        c.on_tool("get_weather", lambda **a: "ok")
        c.run("go")
        assert [r.tool_choice.type.value for r in service.requests] == ["any", "auto"]

    def test_tool_choice_none(self):
        service = ScriptedService([reply("no tools")])
        convo.open(policy_pack({"tool_choice": "none"}), "assistant", service=service).send("go")
        assert service.requests[0].tool_choice.type.value == "none"


# --- validators ------------------------------------------------------------------------------

def validator_pack(*validators: dict) -> convo.Pack:
    return make_pack({"validators": list(validators)})


# (validator, a reply that passes, a reply that fails, what the failure's details hold)
VALIDATOR_CASES = [
    ({"type": "banned_words", "params": {"words": ["darn", "heck"]}}, "A darned fine day.", "Oh darn it.",
     {"found": ["darn"]}),
    ({"type": "content_excludes", "params": {"patterns": ["secret"]}}, "Nothing here.",
     "Top SECRETS are kept in the vault.",
     {"found": ["secret"]}),
    ({"type": "max_length", "params": {"max_characters": 10}}, "Short.", "Far too long a reply.",
     {"length": 21, "max_characters": 10}),
    ({"type": "length", "params": {"max_tokens": 2}}, "tiny", "this is over two tokens", {"max_tokens": 2}),
    ({"type": "min_length", "params": {"min_characters": 10}}, "Long enough.", "Short.",
     {"length": 6, "min_characters": 10}),
    ({"type": "regex", "params": {"pattern": r"^\d{3}-\d{4}$"}}, "555-1234", "call me",
     {"matched": False, "expect_match": True}),
    ({"type": "regex_match", "params": {"pattern": "(?i)password", "expect_match": False}}, "Hello.",
     "My Password is x.", {"matched": True}),
    ({"type": "contains", "params": {"patterns": ["order", "refund"]}}, "Your refund for the Order.",
     "Your order.", {"missing": ["refund"]}),
    ({"type": "contains_any", "params": {"patterns": ["yes", "no"]}}, "No.", "Maybe.", {"missing": ["yes", "no"]}),
    ({"type": "json_valid"}, '```json\n{"a": 1}\n```', "{a: 1}", {}),
    ({"type": "json_schema", "params": {"schema": {"type": "object", "required": ["name"]}}}, '{"name": "x"}',
     '{"nom": "x"}', {"errors": ["(root): 'name' is a required property"]}),
    ({"type": "max_sentences", "params": {"max_sentences": 2}}, "One. Two!", "One. Two! Three?",
     {"count": 3, "max": 2}),
    ({"type": "sentence_count", "params": {"min": 2}}, "One. Two.", "One.", {"count": 1, "min": 2}),
    ({"type": "required_fields", "params": {"required_fields": ["name", "address.city"]}},
     '{"name": "x", "address": {"city": "Oslo"}}', '{"name": "x", "address": {}}', {"missing": ["address.city"]}),
    ({"type": "field_presence", "params": {"fields": ["Total:"]}}, "Total: 5", "Sum: 5", {"missing": ["Total:"]}),
    ({"type": "sentiment", "params": {"allowed": ["positive", "neutral"]}}, "Thanks, glad to help!",
     "This is terrible and useless.", {"sentiment": "negative"}),
]


class TestValidators:
    @pytest.mark.parametrize("validator, good, bad, details", VALIDATOR_CASES,
                             ids=[c[0]["type"] + ("-" + str(i)) for i, c in enumerate(VALIDATOR_CASES)])
    def test_each_type_in_error_mode(self, validator, good, bad, details):
        """A blocking validator passes a good reply, and raises on a bad one, which stays out of the history."""
        pack = validator_pack({**validator, "fail_on_violation": True})
        service = ScriptedService([reply(good), reply(bad)])
        c = convo.open(pack, "chat", service=service)
        ok = c.send("one")
        assert [(v.type, v.passed) for v in ok.validations] == [(validator["type"], True)]
        with pytest.raises(convo.ValidationFailed) as caught:
            c.send("two")
        err = caught.value
        assert err.validator_type == validator["type"] and err.direction == "output"
        assert details.items() <= err.details.items(), err.details
        assert [m.text() for m in c.messages] == ["one", good]

    @pytest.mark.parametrize("validator, good, bad, details", VALIDATOR_CASES,
                             ids=[c[0]["type"] + ("-" + str(i)) for i, c in enumerate(VALIDATOR_CASES)])
    def test_each_type_streamed(self, validator, good, bad, details):
        """Streamed, the verdict is the same; a check that can judge a prefix stops the stream early."""
        pack = validator_pack({**validator, "fail_on_violation": True})
        service = ChunkedService([reply(good), reply(bad)], size=3)
        c = convo.open(pack, "chat", service=service)
        with c.stream("one") as s:
            assert s.until_done().text() == good
        sent_before = service.chunks_sent
        received = []
        with pytest.raises(convo.ValidationFailed) as caught:
            with c.stream("two") as s:
                for event in s:
                    received.append(event)
        assert caught.value.validator_type == validator["type"]
        assert len(c.messages) == 2
        chunks = service.chunks_sent - sent_before
        if caught.value.details.get("streamed"):
            assert chunks < -(-len(bad) // 3)  # stopped before the last chunk
            assert "".join(e.text for e in received if isinstance(e, TextDelta)) != bad

    @pytest.mark.parametrize("streamed", [False, True], ids=["sent", "streamed"])
    @pytest.mark.parametrize("validator, good, bad, details", VALIDATOR_CASES,
                             ids=[c[0]["type"] + ("-" + str(i)) for i, c in enumerate(VALIDATOR_CASES)])
    def test_each_type_in_warn_and_disabled_modes(self, validator, good, bad, details, streamed):
        """warn: the failure is on the reply, which is kept; disabled: nothing is judged."""
        pack = validator_pack({**validator, "fail_on_violation": True})
        for mode, expected in (("warn", [(validator["type"], False)]), ("disabled", [])):
            c = convo.open(pack, "chat", service=ChunkedService([reply(bad)], size=3), validation=mode)
            if streamed:
                with c.stream("go") as s:
                    r = s.until_done()
            else:
                r = c.send("go")
            assert [(v.type, v.passed) for v in r.validations] == expected
            assert r.text() == bad and len(c.messages) == 2

    def test_a_stream_stops_at_the_first_chunk_that_breaks_it(self):
        pack = validator_pack({"type": "banned_words", "params": {"words": ["password"]}, "fail_on_violation": True})
        service = ChunkedService([reply("Sure, here is the password: hunter2 and more text after it")], size=4)
        c = convo.open(pack, "chat", service=service)
        text = ""
        with pytest.raises(convo.ValidationFailed) as caught:
            with c.stream("tell me") as s:
                for chunk in s.text_stream:
                    text += chunk
        # "password" is complete once the chunk holding its ':' arrives (a word still streaming is not judged)
        assert text == "Sure, here is the passwo"
        assert caught.value.details == {"streamed": True, "found": ["password"]}
        assert caught.value.direction == "output"
        assert c.messages == []

    def test_without_fail_on_violation_a_failure_is_recorded_and_logged(self, caplog):
        """The guardrail pack's length validator does not say fail_on_violation: the reply is kept."""
        rec = RecordingListener()
        service = ScriptedService([reply("x" * 600)])
        c = convo.open(PACKS / "guardrail-valid-validator.pack.json", "chat", service=service, listener=rec)
        with caplog.at_level(logging.WARNING, logger="convo"):
            r = c.send("write a lot")
        [v] = r.validations
        assert (v.type, v.passed, v.details["length"], v.details["max_characters"]) == ("length", False, 600, 500)
        assert len(c.messages) == 2
        assert [e.args[0] for e in rec.of("validation")] == [v]
        assert any("pack_validation_failed" in rec_.getMessage() for rec_ in caplog.records)

    def test_strict_validation_makes_every_failure_an_error(self):
        service = ScriptedService([reply("x" * 600)])
        c = convo.open(PACKS / "guardrail-valid-validator.pack.json", "chat", service=service,
                       strict_validation=True)
        with pytest.raises(convo.ValidationFailed, match="'length' validator"):
            c.send("write a lot")
        assert c.messages == []

    def test_warn_mode_blocks_nothing(self):
        pack = validator_pack({"type": "banned_words", "params": {"words": ["darn"]}, "fail_on_violation": True})
        service = ChunkedService([reply("oh darn"), reply("darn again")], size=2)
        c = convo.open(pack, "chat", service=service, validation="warn", strict_validation=True)
        assert [v.passed for v in c.send("one").validations] == [False]
        with c.stream("two") as s:
            assert [v.passed for v in s.until_done().validations] == [False]
        assert len(c.messages) == 4

    def test_disabled_mode_runs_nothing(self):
        rec = RecordingListener()
        pack = validator_pack({"type": "banned_words", "params": {"words": ["darn"]}, "fail_on_violation": True})
        c = convo.open(pack, "chat", service=ScriptedService([reply("darn")]), validation="disabled", listener=rec)
        assert c.send("one").validations == () and rec.of("validation") == []

    def test_enabled_false_and_disabled_validators_switch_validators_off(self):
        pack = validator_pack({"type": "banned_words", "params": {"words": ["darn"]}, "fail_on_violation": True,
                               "enabled": False},
                              {"type": "max_length", "params": {"max": 3}, "fail_on_violation": True},
                              {"type": "no_such_type", "enabled": False})
        c = convo.open(pack, "chat", service=ScriptedService([reply("darn")]), disabled_validators=["max_length"])
        assert c.send("one").validations == ()

    def test_input_validators_refuse_before_anything_is_sent(self):
        """The hooks pack refuses messages about routing numbers (strictly: it does not say fail_on_violation)."""
        service = ScriptedService([reply("Sure.")])
        c = convo.open(PACKS / "hooks_hooks.pack.json", "chat", service=service, strict_validation=True)
        with pytest.raises(convo.ValidationFailed) as caught:
            c.send("What is my Routing Number?")
        err = caught.value
        assert (err.validator_type, err.direction, err.message) == ("regex", "input",
                                                                    "I can't help with bank routing numbers.")
        assert service.requests == [] and c.messages == []
        r = c.send("What is my balance?")
        assert [(v.type, v.passed, v.direction) for v in r.validations] == [("regex", True, "input")]

    def test_input_failures_without_blocking_are_recorded_on_the_reply(self):
        service = ScriptedService([reply("Sure.")])
        c = convo.open(PACKS / "hooks_hooks.pack.json", "chat", service=service)
        r = c.send("my routing number is 123")
        assert [(v.type, v.passed) for v in r.validations] == [("regex", False)]
        assert len(service.requests) == 1

    def test_both_directions(self):
        pack = validator_pack({"type": "banned_words", "params": {"words": ["darn"], "direction": "both"},
                               "fail_on_violation": True})
        service = ScriptedService([reply("fine"), reply("darn")])
        c = convo.open(pack, "chat", service=service)
        with pytest.raises(convo.ValidationFailed, match="the message failed"):
            c.send("darn it")
        assert [v.direction for v in c.send("hello").validations] == ["input", "output"]
        with pytest.raises(convo.ValidationFailed, match="the reply failed"):
            c.send("again")

    def test_replies_that_only_call_tools_are_not_validated(self):
        pack = pack_from_dict({**json.loads((PACKS / "tools_tools.pack.json").read_text())})
        data = pack.to_dict()
        data["prompts"]["assistant"]["validators"] = [{"type": "min_length", "params": {"min": 5},
                                                       "fail_on_violation": True}]
        service = ScriptedService([reply(tool_uses=[weather_call()]), reply("It is sunny.")])
        c = convo.open(pack_from_dict(data), "assistant", service=service)
        c.on_tool("get_weather", lambda **a: "sunny")
        assert c.run("weather?").validations[0].passed

    def test_a_rejected_reply_is_still_paid_for(self):
        prices = convo.PriceTable({"priced": convo.Price(1, 2)})
        pack = validator_pack({"type": "banned_words", "params": {"words": ["darn"]}, "fail_on_violation": True})
        service = ScriptedService([reply("darn", model="priced", usage=Usage(input_tokens=1000))])
        c = convo.open(pack, "chat", service=service, prices=prices)
        with pytest.raises(convo.ValidationFailed):
            c.send("hi")
        assert c.cumulative_usage().total_cost_usd == Decimal("0.001")

    def test_an_unknown_validator_type_is_a_pack_error_naming_it(self):
        pack = validator_pack({"type": "banned_word", "params": {"words": ["x"]}},
                              {"type": "lenght", "params": {"max": 3}})
        with pytest.raises(convo.PackError) as caught:
            convo.open(pack, "chat", service=ScriptedService())
        assert [p for p, _ in caught.value.problems] == ["prompts.chat.validators[0].type",
                                                         "prompts.chat.validators[1].type"]
        assert "unknown validator type 'banned_word'" in str(caught.value)

    @pytest.mark.parametrize("validator", [
        {"type": "max_length", "params": {"max_words": 10}},
        {"type": "regex", "params": {"pattern": "(unclosed"}},
        {"type": "json_schema", "params": {"schema": {"type": 12}}},
        {"type": "banned_words", "params": {"words": "not a list of words"[0:0]}},
    ])
    def test_a_known_type_with_params_it_cannot_use_is_logged_and_skipped(self, validator, caplog):
        with caplog.at_level(logging.WARNING, logger="convo"):
            c = convo.open(validator_pack({**validator, "fail_on_violation": True}), "chat",
                           service=ScriptedService([reply("anything at all")]))
        assert c.send("hi").validations == ()
        assert any("pack_validator_skipped" in r.getMessage() for r in caplog.records)

    def test_registered_and_custom_validators(self):
        register_validator("polite", lambda text, params: ("please" in text.lower(), {"checked": params["x"]}))
        register_validator("no_digits", lambda text, params: not any(ch.isdigit() for ch in text), streams=True)
        pack = validator_pack({"type": "polite", "params": {"x": 1}, "fail_on_violation": True},
                              {"type": "custom", "params": {"name": "no_digits"}, "fail_on_violation": True})
        service = ChunkedService([reply("Please wait."), reply("Please call 555 now, thanks")], size=3)
        c = convo.open(pack, "chat", service=service)
        assert [(v.type, v.passed, v.details) for v in c.send("hi").validations] == [
            ("polite", True, {"checked": 1}), ("custom", True, {})]
        with pytest.raises(convo.ValidationFailed) as caught:
            with c.stream("again") as s:
                s.until_done()
        assert caught.value.validator_type == "custom" and caught.value.details["streamed"]
        with pytest.raises(convo.PackError, match="custom validator 'nope' is not registered"):
            convo.open(validator_pack({"type": "custom", "params": {"name": "nope"}}), "chat",
                       service=ScriptedService())
        with pytest.raises(convo.ConfigurationError):
            register_validator("regex", lambda t, p: True)

    def test_a_custom_validator_that_raises_fails_closed(self):
        register_validator("explodes", lambda text, params: 1 / 0)
        c = convo.open(validator_pack({"type": "explodes", "fail_on_violation": True}), "chat",
                       service=ScriptedService([reply("hi")]))
        with pytest.raises(convo.ValidationFailed, match="ZeroDivisionError"):
            c.send("hi")

    def test_validation_failed_pickles(self):
        import pickle

        err = convo.ValidationFailed("regex", "input", {"matched": True}, "no", ())
        again = pickle.loads(pickle.dumps(err))
        assert (again.validator_type, again.details, str(again)) == ("regex", {"matched": True}, str(err))


# --- approvals ------------------------------------------------------------------------------

def refund_call(id: str, amount: float):
    return ToolUse(id, "process_refund", {"order_id": f"o-{id}", "amount": amount, "reason": "late"})


def refund(order_id: str, amount: float, reason: str) -> str:
    return f"refunded {amount:.2f} on {order_id}"


def needs_a_manager(args: dict):
    if args["amount"] > 100:
        return Pending("amount_over_limit", f"A refund of ${args['amount']} needs a manager")
    return None


HITL = PACKS / "hitl_hitl.pack.json"


class TestApproval:
    def open_hitl(self, service, **kw):
        c = convo.open(HITL, "refund_agent", service=service, **kw)
        c.on_tool("process_refund", refund, approve=needs_a_manager)
        return c

    def test_a_held_call_comes_back_with_the_turn_and_resolving_runs_it(self):
        rec = RecordingListener()
        service = ScriptedService([reply(tool_uses=[refund_call("t1", 20), refund_call("t2", 500)]),
                                   reply("Both refunds are done.")])
        c = self.open_hitl(service, listener=rec)
        r = c.run("refund both")
        [held] = r.pending_tools
        assert (held.id, held.name, held.arguments["amount"], held.reason) == ("t2", "process_refund", 500,
                                                                                "amount_over_limit")
        assert held.message == "A refund of $500 needs a manager"
        assert c.pending_tools() == [held]
        assert [e.args[1].text() for e in rec.of("tool_result")] == ["refunded 20.00 on o-t1"]  # the other ran
        result = c.resolve_tool("t2", args={"order_id": "o-t2", "amount": 450, "reason": "late"})
        assert result.text() == "refunded 450.00 on o-t2"
        assert c.continue_turn().text() == "Both refunds are done."
        sent = service.requests[1].messages[-1].tool_results()
        assert [r.text() for r in sent] == ["refunded 20.00 on o-t1", "refunded 450.00 on o-t2"]
        assert [e.args[1] for e in rec.of("tool_resolved")] == [True] and len(rec.of("tool_pending")) == 1

    def test_rejecting_tells_the_model_why(self):
        service = ScriptedService([reply(tool_uses=[refund_call("t1", 500)]), reply("Understood.")])
        c = self.open_hitl(service)
        c.run("refund")
        c.reject_tool("t1", "over this customer's limit")
        c.continue_turn()
        [sent] = service.requests[1].messages[-1].tool_results()
        assert sent.is_error and sent.text() == "rejected by a person: over this customer's limit"

    def test_a_call_is_resolved_once(self):
        c = self.open_hitl(ScriptedService([reply(tool_uses=[refund_call("t1", 500)])]))
        c.run("refund")
        c.resolve_tool("t1")
        with pytest.raises(convo.PendingAlreadyResolved):
            c.resolve_tool("t1")
        with pytest.raises(convo.PendingAlreadyResolved):
            c.reject_tool("t1", "too late")

    def test_approve_may_refuse_outright_and_a_failing_check_does_not_run_the_call(self):
        service = ScriptedService([reply(tool_uses=[refund_call("t1", 5)]), reply("ok"),
                                   reply(tool_uses=[refund_call("t2", 5)]), reply("ok")])
        c = convo.open(HITL, "refund_agent", service=service)
        c.on_tool("process_refund", refund, approve=lambda args: False)
        c.run("refund")
        assert service.requests[1].messages[-1].tool_results()[0].text() == "not approved: the call was refused"
        c.on_tool("process_refund", refund, approve=lambda args: args["nope"])
        c.run("again")
        failed = service.requests[3].messages[-1].tool_results()[0]
        assert failed.is_error and "approval check failed (KeyError)" in failed.text()


RESOLVER = textwrap.dedent("""
    import sys
    import convo
    from convo.testing import ScriptedService
    from tests.test_packs import refund, needs_a_manager

    store = convo.SQLiteStore(sys.argv[1])
    c = convo.resume(sys.argv[2], store=store, service=ScriptedService())
    c.on_tool("process_refund", refund, approve=needs_a_manager)   # handlers are code: registered again
    assert c.get_var("agent") == "Ada", c.get_var("agent")
    try:
        print(c.resolve_tool(sys.argv[3]).text())
    except convo.PendingAlreadyResolved:
        print("already resolved")
""")


class TestPersistence:
    def resolve_elsewhere(self, path, convo_id, call_id) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", RESOLVER, str(path), convo_id, call_id], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def test_approval_from_another_process_after_resume(self, tmp_path):
        path = tmp_path / "approvals.db"
        store = convo.SQLiteStore(path)
        service = ScriptedService([reply(tool_uses=[refund_call("t1", 500)]), reply("Refunded.")])
        c = convo.open(HITL, "refund_agent", service=service, store=store, id="refund-42",
                       variables={"agent": "Ada"})
        c.on_tool("process_refund", refund, approve=needs_a_manager)
        assert c.run("refund order 42").pending_tools
        del c
        assert self.resolve_elsewhere(path, "refund-42", "t1") == "refunded 500.00 on o-t1"
        assert self.resolve_elsewhere(path, "refund-42", "t1") == "already resolved"
        back = convo.resume("refund-42", store=store, service=service)
        back.on_tool("process_refund", refund, approve=needs_a_manager)
        assert back.pending_tools() == [] and back.continue_turn().text() == "Refunded."
        assert service.requests[1].messages[-1].tool_results()[0].text() == "refunded 500.00 on o-t1"
        store.close()

    def test_resume_brings_back_the_pack_variables_and_settings(self, tmp_path):
        store = convo.SQLiteStore(tmp_path / "c.db")
        service = ScriptedService([reply("hi"), reply("again")])
        c = convo.open(PACKS / "hello_hello.pack.json", "chat", service=service, store=store, id="greet",
                       variables={"user_name": "Ada"}, validation="warn", token_budget=5000)
        c.send("hello")
        c.set_var("user_name", "Grace")
        c.save()
        back = convo.resume("greet", store=store, service=service)
        assert back.get_var("user_name") == "Grace"
        session = back._pack()
        assert (session.validation, session.token_budget, session.pack.id) == ("warn", 5000, "hello-example")
        back.send("again")
        assert "Grace" in system_of(service.requests[1])
        store.close()

    def test_the_pack_content_is_saved_so_a_moved_file_does_not_matter(self, tmp_path):
        path = tmp_path / "moving.pack.json"
        path.write_text((PACKS / "hello_hello.pack.json").read_text())
        store = convo.MemoryStore()
        c = convo.open(path, "chat", service=ScriptedService([reply("a")]), store=store, id="m",
                       variables={"user_name": "Ada"})
        c.send("hi")
        path.unlink()
        back = convo.resume("m", store=store, service=ScriptedService())
        assert back._pack().pack.source == str(path) and back.get_var("user_name") == "Ada"


# --- context limits ---------------------------------------------------------------------------

def long_history_convo(service, **kw):
    c = convo.open(PACKS / "long-conversation_assistant.pack.json", "assistant", service=service, **kw)
    return c


class TestContextLimits:
    def test_sliding_drops_the_oldest_exchanges_to_fit(self):
        rec = RecordingListener()
        service = ScriptedService(default=reply("x" * 200))
        c = long_history_convo(service, token_budget=300, listener=rec)
        for i in range(6):
            c.send(f"question {i} " + "y" * 200)
        last = service.requests[-1]
        assert last.messages[0].text().startswith("question ") and last.messages[-1].text().startswith("question 5")
        assert len(last.messages) < 11
        assert len(c.messages) == 12  # the stored history stays whole
        trimmed = rec.of("context_trimmed")[-1].args[0]
        assert isinstance(trimmed, ContextTrimmed) and trimmed.strategy == "sliding"
        assert trimmed.tokens_after <= 300 < trimmed.tokens_before
        assert trimmed.messages_dropped == 11 - len(last.messages)  # 10 in history, 1 new

    def test_a_tool_call_is_never_separated_from_its_result(self):
        data = json.loads((PACKS / "tools_tools.pack.json").read_text())
        service = ScriptedService([reply("a" * 300), reply(tool_uses=[weather_call()]), reply("b" * 100),
                                   reply("c" * 10), reply("d")])
        c = convo.open(pack_from_dict(data), "assistant", service=service, token_budget=420)
        c.on_tool("get_weather", lambda **a: "sunny " * 80)
        c.send("first " + "z" * 300)
        c.run("weather?")
        c.send("third")
        c.send("fourth")
        for request in service.requests:
            first = request.messages[0]
            assert first.role == convo.Role.USER and not first.tool_results()
            for i, m in enumerate(request.messages):
                if m.tool_uses():
                    assert request.messages[i + 1].tool_results()

    def test_a_turn_over_the_budget_by_itself_is_sent_whole(self, caplog):
        service = ScriptedService([reply("ok")])
        c = long_history_convo(service, token_budget=50)
        with caplog.at_level(logging.WARNING, logger="convo"):
            c.send("w" * 1000)
        assert service.requests[0].messages[-1].text() == "w" * 1000
        assert any("context_over_budget" in r.getMessage() for r in caplog.records)

    def test_summarize_replaces_old_history_with_a_summary_whose_cost_rolls_up(self):
        prices = convo.PriceTable({"priced": convo.Price(1, 1)})
        rec = RecordingListener()

        def answer(request):
            if "summarise conversations" in system_of(request):
                return reply("SUMMARY: the user asked questions 0 to 2.", model="priced",
                             usage=Usage(input_tokens=100, output_tokens=10))
            return reply("x" * 200, model="priced", usage=Usage(input_tokens=10, output_tokens=10))

        service = ScriptedService(default=answer)
        c = long_history_convo(service, token_budget=400, truncation="summarize", listener=rec, prices=prices)
        for i in range(5):
            c.send(f"question {i} " + "y" * 200)
        summaries = [r for r in service.requests if "summarise conversations" in system_of(r)]
        assert summaries, "the model was asked for a summary"
        last = service.requests[-1]
        assert last.messages[0].content[0].text.startswith("[Summary of the earlier conversation]\nSUMMARY:")
        assert last.messages[-1].text().startswith("question 4")
        trimmed = [e.args[0] for e in rec.of("context_trimmed")]
        assert trimmed and all(t.strategy == "summarize" and t.summary.startswith("SUMMARY") for t in trimmed)
        # Each send asked for at most one summary: earlier summaries are extended, not redone.
        assert len(summaries) <= len(trimmed)
        assert len(summaries) >= 2 and all("Summary so far:" in r.messages[-1].text() for r in summaries[1:])
        # Every reply cost $0.00002, every summary $0.00011: the convo's total holds both.
        expected = Decimal("0.00002") * 5 + Decimal("0.00011") * len(summaries)
        assert c.cumulative_usage().total_cost_usd == expected
        assert any(e.depth == 1 for e in rec.of("response"))  # the summariser is a sub-convo
        assert len(c.messages) == 10

    def test_the_summary_is_saved_with_the_conversation(self, tmp_path):
        def answer(request):
            if "summarise conversations" in system_of(request):
                return reply("SUMMARY")
            return reply("x" * 200)

        service = ScriptedService(default=answer)
        store = convo.MemoryStore()
        c = long_history_convo(service, token_budget=400, truncation="summarize", store=store, id="long")
        for i in range(4):
            c.send(f"q{i} " + "y" * 200)
        asked = sum("summarise conversations" in system_of(r) for r in service.requests)
        back = convo.resume("long", store=store, service=service)
        back.send("q4 " + "y" * 20)
        again = sum("summarise conversations" in system_of(r) for r in service.requests)
        assert back._pack()._summary["text"].startswith("SUMMARY") and asked >= 1
        assert again - asked <= 1  # extended at most once, not redone from the start

    def test_the_provider_counter_is_used_where_there_is_one(self):
        class Counting(ScriptedService):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.counted = []

            def count_tokens(self, request):
                self.counted.append(len(request.messages))
                return 1000 * len(request.messages)

        service = Counting(default=reply("ok"))
        c = long_history_convo(service, token_budget=3500)
        for i in range(4):
            c.send(f"q{i} " + "w" * 1500)
        assert [len(r.messages) for r in service.requests] == [1, 3, 3, 3]
        # The first request is under convo's upper estimate (a token per byte): it fits without asking.
        assert 1 not in service.counted and 5 in service.counted

    def test_anthropic_counts_with_its_count_tokens_endpoint(self):
        def answer(recorded):
            body = recorded.json()
            if recorded.path.endswith("/count_tokens"):
                return Reply.json({"input_tokens": 100 * len(body["messages"])})
            return Reply.json({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                               "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                               "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}})

        with ScriptedHTTPServer(default=answer) as server:
            with convo.AnthropicService(base_url=server.url, api_key="k") as service:
                c = long_history_convo(service, token_budget=350)
                for i in range(3):
                    c.send(f"q{i}")
        sent = [r.json() for r in server.requests if r.path == "/v1/messages"]
        counted = [r.json() for r in server.requests if r.path.endswith("/count_tokens")]
        assert [len(b["messages"]) for b in sent] == [1, 3, 3]  # 5 messages would count 500 > 350
        assert counted and all("max_tokens" not in b and b["system"] for b in counted)


# --- events ----------------------------------------------------------------------------------

class TestEvents:
    def test_every_promptkit_event_reaches_the_listener(self, tmp_path):
        rec = RecordingListener()
        store = convo.SQLiteStore(tmp_path / "events.db")
        data = json.loads(HITL.read_text())
        data["prompts"]["refund_agent"]["validators"] = [{"type": "min_length", "params": {"min": 3}}]
        service = ScriptedService([reply(tool_uses=[refund_call("t1", 500), refund_call("t2", 5)]),
                                   reply("Done, all refunded."), reply("x" * 400), reply("ok"),
                                   RuntimeError("provider down")])
        c = convo.open(pack_from_dict(data), "refund_agent", service=service, listener=rec, store=store, id="ev",
                       token_budget=200)
        c.on_tool("process_refund", lambda **a: 1 / 0 if a["amount"] < 10 else "ok", approve=needs_a_manager)
        c.run("refund")
        c.resolve_tool("t1")
        c.continue_turn()
        c.send("more " * 50)
        c.send("again " * 50)
        with pytest.raises(RuntimeError):
            c.send("fail")
        convo.resume("ev", store=store, service=service, listener=rec)
        names = set(rec.names())
        assert {"request", "response", "error", "tool_call", "tool_result", "validation", "context_trimmed",
                "tool_pending", "tool_resolved", "state_saved", "state_loaded"} <= names
        failed_tool = [e for e in rec.of("tool_result") if e.args[2] is not None]
        assert isinstance(failed_tool[0].args[2], ZeroDivisionError)
        assert {e.args[0].passed for e in rec.of("validation")} == {True, False}
        store.close()

    def test_noop_and_multi_listeners_have_the_new_events(self):
        rec = RecordingListener()
        multi = convo.MultiListener(convo.NoopListener(), rec)
        result = convo.ValidationResult("regex", True)
        trimmed = ContextTrimmed("sliding", 2, 100, 50, 60)
        c = convo.Convo(ScriptedService())
        multi.on_validation(c, result)
        multi.on_context_trimmed(c, trimmed)
        assert [(e.name, e.args[0]) for e in rec.events] == [("validation", result), ("context_trimmed", trimmed)]


# --- MCP tools ---------------------------------------------------------------------------------

class TestMCPTools:
    def test_mcp_tools_join_a_pack_prompt_and_the_policy_covers_them(self):
        from convo.mcp import MCPServer

        edge = str(Path(__file__).resolve().parent / "mcp_servers" / "edge.py")
        data = json.loads((PACKS / "mcp-tools_mcp-tools.pack.json").read_text())
        data["prompts"]["assistant"]["tool_policy"] = {"blocklist": ["mcp__edge__add"]}
        service = ScriptedService([reply(tool_uses=[ToolUse("t1", "mcp__edge__echo", {"text": "hi"}),
                                                    ToolUse("t2", "mcp__edge__add", {"a": 1, "b": 2})]),
                                   reply("ok")])
        with MCPServer.stdio("edge", sys.executable, [edge]) as server:
            c = convo.open(pack_from_dict(data), "assistant", service=service, mcp_servers=[server])
            c.run("echo hi, then add")
        offered = {t.name for t in service.requests[0].tools}
        assert "mcp__edge__echo" in offered and "mcp__edge__add" not in offered
        assert system_of(service.requests[0]).startswith("You are a helpful assistant with access to MCP tools.")
        echo, add = service.requests[1].messages[-1].tool_results()
        assert echo.text() == "hi" and add.is_error and "blocked" in add.text()
