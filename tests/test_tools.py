"""@tool and Tool: schemas from type hints and docstrings, validation, bad definitions."""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Optional

import pytest

from convo import Text, Tool, ToolDefinitionError, tool


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@tool
def search(query: str, limit: int = 5, exact: bool = False, tags: Optional[list[str]] = None,
           color: Color = Color.RED, mode: Literal["fast", "deep"] = "fast",
           weights: dict[str, float] | None = None,
           note: Annotated[str, "free text for the log"] = "") -> str:
    """Search the index.

    Longer explanation that is part of the description.

    Args:
        query: what to look for,
            across several lines.
        limit (int): how many hits.
        exact: match exactly.

    Returns:
        The hits.
    """
    return f"{query}:{limit}:{exact}:{tags}:{color}:{mode}"


class TestToolDecorator:
    def test_schema_from_type_hints(self):
        s = search.input_schema
        assert s["required"] == ["query"]
        p = s["properties"]
        assert p["query"] == {"type": "string", "description": "what to look for, across several lines."}
        assert p["limit"] == {"type": "integer", "description": "how many hits.", "default": 5}
        assert p["exact"]["type"] == "boolean"
        assert p["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                             "default": None}
        assert p["color"] == {"enum": ["red", "blue"], "default": "red"}
        assert p["mode"]["enum"] == ["fast", "deep"]
        assert p["weights"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "number"}}
        assert p["note"]["description"] == "free text for the log"
        assert s["additionalProperties"] is False

    def test_description_is_the_docstring_without_sections(self):
        assert search.description == "Search the index.\n\nLonger explanation that is part of the description."
        assert search.name == "search"

    def test_calls_the_function_with_the_input(self):
        assert search.run({"query": "cats", "limit": 2}) == "cats:2:False:None:Color.RED:fast"
        assert search(query="dogs") == "dogs:5:False:None:Color.RED:fast"

    def test_options(self):
        @tool(name="finish", description="Say you are done.", ends_turn=True)
        def done() -> str:
            return "ok"

        assert (done.name, done.description, done.ends_turn) == ("finish", "Say you are done.", True)

    def test_validation_errors(self):
        assert search.validation_errors({"query": "x"}) == []
        errors = search.validation_errors({"limit": "many"})
        assert any("'query' is a required property" in e for e in errors)
        assert any(e.startswith("limit:") for e in errors)
        assert search.validation_errors(["not", "a", "dict"]) == ["input must be a JSON object, got list"]
        assert search.validation_errors('{"query": "unterminated') == [
            "input must be a JSON object; the arguments sent were not valid JSON: '{\"query\": \"unterminated'"]

    def test_untyped_parameter_is_a_definition_error(self):
        with pytest.raises(ToolDefinitionError, match="parameter 'x' needs a type hint"):
            @tool
            def bad(x) -> str:
                return ""

    def test_unsupported_type_is_a_definition_error(self):
        with pytest.raises(ToolDefinitionError, match="no JSON Schema equivalent"):
            @tool
            def bad(x: complex) -> str:
                return ""

    def test_var_args_rejected(self):
        with pytest.raises(ToolDefinitionError, match=r"\*args"):
            @tool
            def bad(*xs: int) -> str:
                return ""


class TestTool:
    def test_name_rules(self):
        with pytest.raises(ToolDefinitionError, match="must be 1-64 characters"):
            Tool("has space", run=lambda i: "")
        with pytest.raises(ToolDefinitionError):
            Tool("x" * 65, run=lambda i: "")

    def test_schema_must_be_an_object_schema(self):
        with pytest.raises(ToolDefinitionError, match='"type": "object"'):
            Tool("t", input_schema={"type": "string"}, run=lambda i: "")
        with pytest.raises(ToolDefinitionError, match="invalid input_schema"):
            Tool("t", input_schema={"type": "object", "properties": {"a": {"type": "no-such-type"}}},
                 run=lambda i: "")

    def test_run_must_be_callable(self):
        with pytest.raises(ToolDefinitionError, match="run must be callable"):
            Tool("t", run="nope")  # type: ignore[arg-type]

    def test_spec(self):
        t = Tool("t", "desc", run=lambda i: [Text("a")])
        assert t.spec().to_dict() == {"name": "t", "description": "desc",
                                      "input_schema": {"type": "object", "properties": {}}}
