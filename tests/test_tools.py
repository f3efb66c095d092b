"""@tool and Tool: schemas from type hints and docstrings, validation, what @tool accepts, bad definitions.

How arguments are converted to their annotated types is in test_tool_args.py.
"""

from __future__ import annotations

import enum
import functools
from typing import Annotated, Literal, Optional

import pytest

from convo import Text, Tool, ToolDefinitionError, tool
from convo.tools import ToolInputError


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

    def test_positional_only_parameter_is_a_definition_error_naming_it(self):
        """Tool inputs are passed by name, so a positional-only parameter could never be given."""
        with pytest.raises(ToolDefinitionError, match="parameter 'a' is positional-only"):
            @tool
            def bad(a: int, /, b: int) -> str:
                return ""

    def test_unknown_argument_in_a_direct_call_is_an_input_error(self):
        with pytest.raises(ToolInputError, match="unknown property 'querry'"):
            search(querry="cats")


def convert(value: float, unit: str, digits: int = 1) -> str:
    """Convert a temperature.

    Args:
        value: the temperature.
        unit: "C" or "F".
        digits: decimals to keep.
    """
    return f"{value:.{digits}f}{unit}"


class WeatherLookup:
    """Looks the weather up (the class's docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, city: str, days: int = 1) -> str:
        """Weather forecast for a city.

        Args:
            city: where.
        """
        return f"{self.prefix}{city}:{days}"


class HTTPFetcher:
    """Fetch a page."""

    def __call__(self, url: str) -> str:
        return url


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> int:
        """Add n to the running total."""
        self.total += n
        return self.total


class TestToolSources:
    """@tool takes partials, callable objects and bound methods as well as functions."""

    def test_partial_leaves_bound_keywords_out_of_the_schema(self):
        celsius = tool(functools.partial(convert, unit="C"))
        assert celsius.input_schema["properties"].keys() == {"value", "digits"}
        assert celsius.input_schema["required"] == ["value"]
        assert celsius.run({"value": 21}) == "21.0C"

    def test_partial_is_named_and_described_after_the_wrapped_function(self):
        celsius = tool(functools.partial(convert, unit="C"))
        assert celsius.name == "convert"
        assert celsius.description == "Convert a temperature."
        assert celsius.input_schema["properties"]["value"]["description"] == "the temperature."

    def test_partial_binding_leading_positional_arguments(self):
        twenty = tool(functools.partial(convert, 20), name="convert_twenty")
        assert twenty.name == "convert_twenty"
        assert twenty.input_schema["required"] == ["unit"]
        assert twenty(unit="F", digits=0) == "20F"

    def test_bound_keyword_cannot_be_overridden_by_the_input(self):
        celsius = tool(functools.partial(convert, unit="C"))
        assert celsius.validation_errors({"value": 1, "unit": "F"}) != []
        with pytest.raises(ToolInputError, match="unknown property 'unit'"):
            celsius.run({"value": 1, "unit": "F"})

    def test_partial_that_binds_a_positional_only_parameter_is_accepted(self):
        def scale(factor: float, /, x: float) -> float:
            return factor * x

        double = tool(functools.partial(scale, 2))
        assert double.run({"x": 3}) == 6.0

    def test_callable_object_named_after_its_class_in_snake_case(self):
        assert tool(WeatherLookup("> ")).name == "weather_lookup"
        assert tool(HTTPFetcher()).name == "http_fetcher"
        assert tool(HTTPFetcher(), name="fetch").name == "fetch"

    def test_callable_object_schema_has_no_self_and_runs_on_the_instance(self):
        weather = tool(WeatherLookup("> "))
        assert weather.input_schema["properties"].keys() == {"city", "days"}
        assert weather.input_schema["properties"]["city"]["description"] == "where."
        assert weather.run({"city": "Paris"}) == "> Paris:1"

    def test_callable_object_described_by_its_call_then_its_class(self):
        assert tool(WeatherLookup("")).description == "Weather forecast for a city."
        assert tool(HTTPFetcher()).description == "Fetch a page."

    def test_bound_method_has_no_self_and_keeps_its_instance(self):
        counter = Counter()
        add = tool(counter.add)
        assert (add.name, add.description) == ("add", "Add n to the running total.")
        assert add.input_schema["properties"] == {"n": {"type": "integer"}}
        add.run({"n": 2})
        add(n=3)
        assert counter.total == 5


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
