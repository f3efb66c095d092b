"""Packs on the embedded local model (SmolLM2 with llama.cpp, never skipped): templates, validators while
streaming, an approval flow through a grammar-constrained tool call, and the model's own token counter."""

from __future__ import annotations

from pathlib import Path

import llama_cpp  # noqa: F401  (no skip: without llama-cpp-python this suite must fail loudly)
import pytest

import convo
from convo import LocalService, Pending
from convo.packs import pack_from_dict
from convo.testing import RecordingListener, ScriptedService, reply

PACKS = Path(__file__).resolve().parent / "fixtures" / "packs"


@pytest.fixture(scope="module")
def local():
    with LocalService(max_tokens=8, temperature=0.0, seed=7) as service:
        yield service


def weather_pack(**prompt) -> convo.Pack:
    return pack_from_dict({
        "id": "weather", "name": "Weather", "version": "1.0.0",
        "template_engine": {"version": "v1", "syntax": "{{variable}}"},
        "fragments": {"style": "Answer in one short sentence."},
        "prompts": {"forecaster": {
            "id": "forecaster", "name": "Forecaster", "version": "1.0.0",
            "system_template": "You are {{name}}, a weather assistant. {{fragments.style}}",
            "variables": [{"name": "name", "type": "string", "required": True}],
            "tools": ["get_weather"],
            **prompt,
        }},
        "tools": {"get_weather": {"name": "get_weather", "description": "Current weather for a city",
                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                 "required": ["city"]}}},
    })


def test_the_rendered_prompt_and_validations_on_the_local_model(local):
    rec = RecordingListener()
    pack = weather_pack(validators=[{"type": "banned_words", "params": {"words": ["xyzzy"]}}])
    c = convo.open(pack, "forecaster", service=local, listener=rec, variables={"name": "Skye"})
    r = c.send("Hello!")
    [request] = [e.args[0] for e in rec.of("request")]
    assert request.system[0].text == "You are Skye, a weather assistant. Answer in one short sentence."
    assert r.text() and [(v.type, v.passed) for v in r.validations] == [("banned_words", True)]
    assert [e.args[0] for e in rec.of("validation")] == list(r.validations)


def test_a_blocking_validator_stops_a_local_stream_early(local):
    pack = weather_pack(validators=[{"type": "max_length", "params": {"max_characters": 1},
                                     "fail_on_violation": True}])
    c = convo.open(pack, "forecaster", service=local, variables={"name": "Skye"}, max_tokens=32)
    with pytest.raises(convo.ValidationFailed) as caught:
        with c.stream("Tell me about the sea.") as s:
            s.until_done()
    assert caught.value.details["streamed"] and caught.value.details["length"] > 1
    assert c.messages == []


def test_an_approval_flow_through_a_grammar_constrained_call(local):
    """tool_choice required makes SmolLM2 call the tool; the call waits for a person; max_rounds 1 then asks
    for the answer in words."""
    pack = weather_pack(tool_policy={"tool_choice": "required", "max_rounds": 1},
                        parameters={"max_tokens": 40})
    c = convo.open(pack, "forecaster", service=local, variables={"name": "Skye"})
    seen = []
    c.on_tool("get_weather", lambda city: seen.append(city) or f"Sunny and 21C in {city}",
              approve=lambda args: Pending("check", f"look up {args.get('city')}?"))
    r = c.run("What is the weather in Paris?")
    [held] = r.pending_tools
    assert held.name == "get_weather" and isinstance(held.arguments.get("city"), str)
    assert c.resolve_tool(held.id, args={"city": "Paris"}).text() == "Sunny and 21C in Paris"
    assert seen == ["Paris"]
    final = c.continue_turn(max_turns=1)
    assert final.stop_reason in (convo.StopReason.END_TURN, convo.StopReason.MAX_TOKENS)
    assert not final.tool_uses()


def test_the_token_budget_counts_with_the_models_tokenizer(local):
    """A long conversation, stored and resumed on the local model, is trimmed to what its tokenizer counts."""
    store = convo.MemoryStore()
    scripted = ScriptedService(default=reply("Noted, thank you for telling me all of that. " * 4))
    c = convo.open(PACKS / "long-conversation_assistant.pack.json", "assistant", service=scripted, store=store,
                   id="long", token_budget=300)
    for i in range(6):
        c.send(f"Fact number {i}: my favourite colour changes every day. " * 3)
    rec = RecordingListener()
    back = convo.resume("long", store=store, service=local, listener=rec)  # the budget comes back with it
    back.send("Summarise what I told you.")
    [trimmed] = [e.args[0] for e in rec.of("context_trimmed")]
    [sent] = [e.args[0] for e in rec.of("request")]
    assert trimmed.strategy == "sliding" and trimmed.tokens_before > 300 >= trimmed.tokens_after
    assert local.count_tokens(sent) == trimmed.tokens_after
    assert len(back.messages) == 14
