"""Loading packs: every real pack loads, and the loader agrees with the official PromptPack schema."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

import convo
from convo.packs import PackSession, load_pack, pack_from_dict, problems

PACKS = Path(__file__).resolve().parent / "fixtures" / "packs"
REAL_PACKS = sorted(PACKS.glob("*.pack.json"))
SCHEMA = json.loads((PACKS / "promptpack.schema.json").read_text())
# Formats asserted, as the loader asserts them (date and date-time, and uri with rfc3986-validator installed).
OFFICIAL = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

# A pack that uses every part of the specification, each as its schema allows.
FULL = {
    "$schema": "https://promptpack.org/schema/latest/promptpack.schema.json",
    "id": "full-pack",
    "name": "Every section",
    "version": "v2.1.0-beta.1+build.7",
    "description": "A pack that uses every part of the specification.",
    "template_engine": {"version": "v1", "syntax": "{{variable}}", "features": ["basic_substitution", "fragments"]},
    "fragments": {"signoff": "Thanks, {{company}}.", "greeting": "Hello!"},
    "prompts": {
        "support": {
            "id": "support", "name": "Support", "version": "1.0.0", "description": "Helps customers.",
            "system_template": "You work for {{company}}. {{fragments.signoff}}",
            "variables": [
                {"name": "company", "type": "string", "required": True, "description": "Company",
                 "example": "Acme", "validation": {"pattern": "^[A-Z]", "min_length": 2, "max_length": 40,
                                                    "enum": ["Acme", "Initech"]},
                 "binding": {"kind": "env", "field": "COMPANY", "auto_populate": False, "filter": "trim"}},
                {"name": "tier", "type": "integer", "required": False, "default": 1,
                 "validation": {"minimum": 1, "maximum": 3}},
            ],
            "tools": ["lookup_order"],
            "tool_policy": {"tool_choice": "auto", "max_rounds": 3, "max_tool_calls_per_turn": 4,
                            "blocklist": ["delete_order"]},
            "pipeline": {"stages": ["template", "provider"], "middleware": [{"type": "log", "config": {"a": 1}}]},
            "parameters": {"temperature": 0.2, "max_tokens": 300, "top_p": 0.9, "top_k": None,
                           "frequency_penalty": 0.5, "presence_penalty": -0.5},
            "validators": [{"type": "banned_words", "enabled": True, "message": "No.", "fail_on_violation": True,
                            "params": {"words": ["darn"]}}],
            "evals": [{"id": "tone", "type": "llm_judge", "trigger": "every_turn", "description": "Tone",
                       "sample_percentage": 10, "enabled": True, "params": {"criteria": "polite"},
                       "metric": {"name": "support:tone", "type": "gauge", "range": {"min": 0, "max": 1}},
                       "threshold": {"operator": ">=", "value": 0.5}, "message": "rude",
                       "when": {"tool": "x"}, "groups": ["quality"]}],
            "tested_models": [{"provider": "anthropic", "model": "claude-sonnet-4-5", "date": "2025-10-01",
                               "success_rate": 0.98, "avg_tokens": 500, "avg_cost": 0.01, "avg_latency_ms": 900,
                               "notes": "fine"}],
            "model_overrides": {"gpt-4o": {"system_template_prefix": "Be brief. ", "system_template_suffix": "",
                                           "system_template": "You work for {{company}}.",
                                           "parameters": {"temperature": 0.1}}},
            "media": {"enabled": True, "supported_types": ["image", "document", "point_cloud"],
                      "image": {"max_size_mb": 5, "allowed_formats": ["png"], "default_detail": "auto",
                                "require_caption": False, "max_images_per_msg": 3},
                      "audio": {"max_size_mb": 10, "allowed_formats": ["mp3"], "max_duration_sec": 60,
                                "require_metadata": False},
                      "video": {"max_size_mb": 50, "max_duration_sec": 30},
                      "document": {"max_size_mb": 20, "max_pages": 10, "extraction_mode": "text"},
                      "point_cloud": {"validation_params": {"max_points": 1000}},
                      "examples": [{"name": "receipt", "description": "a receipt", "role": "user",
                                    "parts": [{"type": "text", "text": "What is this?"},
                                              {"type": "image", "media": {"url": "https://example.com/r.png",
                                                                          "mime_type": "image/png",
                                                                          "detail": "low", "caption": "r"}}]}]},
        },
    },
    "tools": {
        "lookup_order": {"name": "lookup_order", "description": "Look up an order",
                         "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                                        "required": ["id"]}},
        "delete_order": {"name": "delete_order", "description": "Delete an order"},
    },
    "metadata": {"domain": "support", "language": "en", "tags": ["a"], "owner": "team-x",
                 "cost_estimate": {"min_cost_usd": 0, "max_cost_usd": 1, "avg_cost_usd": 0.5}},
    "compilation": {"compiled_with": "packc 1.0", "created_at": "2026-03-09T00:00:00Z", "schema": "v1",
                    "source": "support.yaml"},
    "evals": [{"id": "pack-eval", "type": "contains", "trigger": "on_session_complete"}],
    "workflow": {"version": 1, "entry": "intake",
                 "states": {"intake": {"prompt_task": "support", "description": "start",
                                       "on_event": {"escalate": "human"}, "persistence": "persistent",
                                       "orchestration": "internal", "skills": "all", "terminal": False,
                                       "max_visits": 3, "on_max_visits": "human",
                                       "artifacts": {"notes": {"type": "text/plain", "mode": "append",
                                                               "description": "notes"}}},
                            "human": {"prompt_task": "support", "terminal": True}},
                 "engine": {"budget": {"max_total_visits": 10, "max_tool_calls": 20, "max_wall_time_sec": 60},
                            "other": True}},
    "agents": {"entry": "support", "members": {"support": {"description": "front desk", "tags": ["t"],
                                                           "input_modes": ["text/plain"],
                                                           "output_modes": ["text/plain"]}}},
    "skills": ["./skills/refunds", {"path": "./skills/billing", "preload": True},
               {"name": "apology", "description": "How to apologise", "instructions": "Say sorry."}],
}

# What a broken field is set to; each path gets a few of them in turn, so the set covers every kind of value.
BAD_VALUES = [None, True, 0, -1, 2.5, 101, "", "x", "Bad Value!", "2025-13-40", "not a uri", "a" * 6000, [], [1],
              {}, {"zz": 1}]


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _at(node, path):
    for p in path:
        node = node[p]
    return node


def broken_variants():
    """Every field of FULL deleted, set to wrong values, and every object given an unknown field."""
    for n, path in enumerate(_paths(FULL)):
        if path:
            d = copy.deepcopy(FULL)
            del _at(d, path[:-1])[path[-1]]
            yield f"delete {path}", d
            for value in (BAD_VALUES[(3 * n + k) % len(BAD_VALUES)] for k in range(3)):
                d = copy.deepcopy(FULL)
                _at(d, path[:-1])[path[-1]] = value
                yield f"set {path} = {value!r:.20}", d
        if isinstance(_at(FULL, path), dict):
            d = copy.deepcopy(FULL)
            _at(d, path)["zz_extra"] = "x"
            yield f"extra field at {path}", d


def _split(path: str) -> list:
    out = []
    for index, quoted, name in re.findall(r"\[(\d+)\]|\[('(?:[^'\\]|\\.)*')\]|([^.\[\]]+)", path):
        out.append(int(index) if index else (quoted[1:-1] if quoted else name))
    return out


class TestRealPacks:
    @pytest.mark.parametrize("path", REAL_PACKS, ids=lambda p: p.name)
    def test_every_real_pack_loads_and_every_prompt_opens(self, path):
        pack = load_pack(path)
        assert pack.source == str(path) and pack.prompts
        for key in pack.prompts:
            assert PackSession(pack, key).prompt.key == key

    @pytest.mark.parametrize("path", REAL_PACKS, ids=lambda p: p.name)
    def test_the_official_schema_and_the_loader_both_accept_it(self, path):
        data = json.loads(path.read_text())
        assert list(OFFICIAL.iter_errors(data)) == []
        assert problems(data) == []

    def test_there_are_real_packs(self):
        assert len(REAL_PACKS) >= 14

    def test_the_loader_never_reads_the_schema(self, monkeypatch):
        """The specification is in convo's code: loading opens the pack's file and nothing else."""
        opened = []
        real_read_text = Path.read_text

        def spy(self, *args, **kwargs):
            opened.append(self.name)
            return real_read_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", spy)
        load_pack(PACKS / "hitl_hitl.pack.json")
        assert opened == ["hitl_hitl.pack.json"]


class TestAgreementWithTheOfficialSchema:
    def test_the_full_pack_is_valid_in_both(self):
        assert list(OFFICIAL.iter_errors(FULL)) == [] and problems(FULL) == []

    def test_both_reject_the_same_broken_variants_at_the_same_places(self):
        checked = 0
        for what, variant in broken_variants():
            theirs = list(OFFICIAL.iter_errors(variant))
            mine = problems(variant)
            assert bool(mine) == bool(theirs), (what, mine, [e.message for e in theirs])
            found = [_split(p) for p, _ in mine]
            for error in theirs:  # the loader points at (or inside) every place the schema complains of
                want = list(error.absolute_path)
                assert any(f[:len(want)] == want for f in found), (what, want, mine)
            checked += 1
        assert checked > 1000

    @pytest.mark.parametrize("path", REAL_PACKS[:6], ids=lambda p: p.name)
    def test_they_agree_on_broken_real_packs(self, path):
        data = json.loads(path.read_text())
        prompt = next(iter(data["prompts"]))
        variants = [
            {k: v for k, v in data.items() if k != "template_engine"},
            {**data, "id": "Not-Lower"},
            {**data, "prompts": {}},
            {**data, "prompts": {prompt: {**data["prompts"][prompt], "temperature": 0.5}}},
            {**data, "prompts": {prompt: {**data["prompts"][prompt], "parameters": {"temperature": 3}}}},
            {**data, "tools": {"x": {"name": "bad name", "description": "d"}}},
        ]
        for variant in variants:
            assert list(OFFICIAL.iter_errors(variant)) and problems(variant)


class TestPackErrors:
    def test_every_problem_is_reported_with_its_field_path(self, tmp_path):
        data = copy.deepcopy(FULL)
        del data["name"]
        data["prompts"]["support"]["variables"][0]["name"] = "9lives"
        data["prompts"]["support"]["parameters"]["temperature"] = 3
        data["prompts"]["support"]["temprature"] = 0.5
        path = tmp_path / "broken.pack.json"
        path.write_text(json.dumps(data))
        with pytest.raises(convo.PackError) as caught:
            load_pack(path)
        err = caught.value
        assert err.path == str(path)
        assert dict(err.problems) == {
            "name": "is required",
            "prompts.support.variables[0].name": "'9lives' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$",
            "prompts.support.parameters.temperature": "must be at most 2, not 3",
            "prompts.support.temprature": dict(err.problems)["prompts.support.temprature"],
        }
        assert dict(err.problems)["prompts.support.temprature"].startswith("is not a field of a prompt")
        assert str(err).startswith(f"pack {path}: 4 problems:\n  ")
        assert isinstance(err, ValueError) and isinstance(err, convo.ConfigurationError)

    def test_a_missing_file_is_pack_not_found(self, tmp_path):
        with pytest.raises(convo.PackNotFound) as caught:
            convo.load_pack(tmp_path / "nope.pack.json")
        assert isinstance(caught.value, FileNotFoundError) and "nope.pack.json" in str(caught.value)

    def test_a_file_that_is_not_json_says_where(self, tmp_path):
        path = tmp_path / "bad.pack.json"
        path.write_text('{"id": "x",\n  "name": }')
        with pytest.raises(convo.PackError, match="not valid JSON at line 2, column 11"):
            load_pack(path)

    @pytest.mark.parametrize("content", ["[]", '"a pack"', "null"])
    def test_json_that_is_not_an_object_is_refused(self, tmp_path, content):
        path = tmp_path / "odd.pack.json"
        path.write_text(content)
        with pytest.raises(convo.PackError, match="must be an object"):
            load_pack(path)

    def test_a_directory_is_refused(self, tmp_path):
        with pytest.raises(convo.PackError, match="is a directory"):
            load_pack(tmp_path)

    def test_a_bad_argument_is_a_type_error(self):
        with pytest.raises(convo.ArgumentTypeError):
            load_pack(42)

    def test_unknown_prompt_is_prompt_not_found(self):
        pack = load_pack(PACKS / "tools_tools.pack.json")
        with pytest.raises(convo.PromptNotFound) as caught:
            pack.prompt("nope")
        assert isinstance(caught.value, LookupError) and caught.value.available == ["assistant"]

    def test_skipping_the_schema_check_loads_a_pack_for_a_newer_spec(self):
        data = {**copy.deepcopy(FULL), "future_section": {"x": 1}}
        with pytest.raises(convo.PackError):
            pack_from_dict(data)
        assert pack_from_dict(data, skip_schema_validation=True).id == "full-pack"
        with pytest.raises(convo.PackError, match="needs an object of prompts"):
            pack_from_dict({"id": "x"}, skip_schema_validation=True)

    def test_errors_pickle_with_their_problems(self):
        import pickle

        err = convo.PackError("p.json", [("a.b", "is required")])
        again = pickle.loads(pickle.dumps(err))
        assert again.problems == [("a.b", "is required")] and str(again) == str(err)


class TestThePackModel:
    def test_every_section_is_there_as_data(self):
        pack = pack_from_dict(FULL, source="full")
        assert pack.fragments["greeting"] == "Hello!"
        assert pack.tools["lookup_order"].spec().input_schema["required"] == ["id"]
        assert pack.workflow["entry"] == "intake" and pack.agents["entry"] == "support"
        assert pack.skills[1] == {"path": "./skills/billing", "preload": True}
        assert pack.evals[0]["id"] == "pack-eval" and pack.compilation["schema"] == "v1"
        assert pack.metadata["owner"] == "team-x"
        prompt = pack.prompt("support")
        assert prompt.tool_policy.blocklist == ("delete_order",) and prompt.tool_policy.max_rounds == 3
        assert prompt.parameters.top_p == 0.9 and prompt.parameters.top_k is None
        assert prompt.variable("tier").default == 1 and prompt.variable("tier").rules.maximum == 3
        assert prompt.validators[0].fail_on_violation and prompt.validators[0].params["words"] == ["darn"]
        assert prompt.evals[0]["metric"]["name"] == "support:tone" and prompt.media["enabled"]
        assert pack.to_dict() == FULL

    def test_a_pack_is_immutable(self):
        pack = pack_from_dict(FULL)
        with pytest.raises(TypeError):
            pack.prompts["x"] = None
        with pytest.raises(AttributeError):
            pack.id = "other"

    def test_a_prompt_is_found_by_key_or_by_the_id_it_declares(self):
        data = copy.deepcopy(FULL)
        data["prompts"] = {"front-desk": data["prompts"]["support"]}
        pack = pack_from_dict(data)
        assert pack.prompt("support") is pack.prompt("front-desk")
