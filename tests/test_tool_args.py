"""@tool converts each argument to its annotated type before calling the function."""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import enum
import inspect
import json
import pickle
import typing
from typing import Annotated, Any, Literal, Optional, Union

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convo import Convo, ConvoError, ToolDefinitionError, ToolUse, tool
from convo.testing import ScriptedService, reply
from convo.tools import ToolInputError


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Unit(str, enum.Enum):
    CM = "cm"
    INCH = "in"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    """A point on the page.

    Attributes:
        x: distance from the left edge.
        y: distance from the top edge.
    """

    x: float
    y: float = 0.0


@dataclasses.dataclass
class Point3D:
    x: float
    y: float
    z: float


@dataclasses.dataclass
class Shape:
    name: Annotated[str, "what to call it"]
    points: list[Point]
    color: Color = Color.RED
    tags: list[str] = dataclasses.field(default_factory=list)
    area: float = dataclasses.field(default=0.0, init=False)


@attrs.frozen
class Box:
    """A box.

    Attributes:
        corner: its top left corner.
    """

    corner: Point
    size: tuple[float, float]
    _label: str = ""
    sides: list[int] = attrs.Factory(list)


@attrs.define
class Positive:
    n: int = attrs.field(validator=attrs.validators.gt(0))


@dataclasses.dataclass
class Node:
    children: list[Node]


def takes(hint: Any, pname: str = "arg"):
    """A function of one parameter ``pname`` of type ``hint`` that returns its argument."""

    def f(**kwargs):
        return kwargs[pname]

    f.__signature__ = inspect.Signature([inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY)])
    f.__annotations__ = {pname: hint}
    return f


def call(hint: Any, value: Any) -> Any:
    """What a tool whose one parameter has type ``hint`` receives for the JSON ``value``."""
    t = tool(takes(hint))
    assert t.validation_errors({"arg": value}) == [], "the schema should accept the value"
    return t.run({"arg": value})


def schema(hint: Any) -> dict:
    """The schema of a tool parameter of type ``hint``."""
    return tool(takes(hint)).input_schema["properties"]["arg"]


class TestScalars:
    def test_float_parameter_gets_a_float_from_a_json_integer(self):
        out = call(float, 1)
        assert out == 1.0 and type(out) is float

    def test_int_parameter_gets_an_int_from_a_whole_json_number(self):
        """JSON Schema counts 2.0 as an integer, so the function must get 2."""
        out = call(int, 2.0)
        assert out == 2 and type(out) is int

    def test_str_bool_none_and_any_pass_through(self):
        assert call(str, "x") == "x"
        assert call(bool, False) is False
        assert call(type(None), None) is None
        assert call(Any, {"a": [1]}) == {"a": [1]}

    def test_enum_converted_by_value_to_its_member(self):
        assert call(Color, "blue") is Color.BLUE
        assert call(Unit, "in") is Unit.INCH
        assert call(Level, 2) is Level.HIGH
        assert schema(Level) == {"enum": [1, 2]}

    def test_literal_values_and_literal_enum_members(self):
        assert call(Literal["fast", "deep"], "deep") == "deep"
        assert call(Literal[Color.RED], "red") is Color.RED
        assert schema(Literal[Color.RED, 3]) == {"enum": ["red", 3]}

    def test_literal_true_does_not_match_1(self):
        with pytest.raises(ToolInputError, match="expected one of 1, 2"):
            tool(takes(Literal[1, 2])).run({"arg": True})

    def test_datetimes_from_iso_strings(self):
        assert schema(dt.datetime) == {"type": "string", "format": "date-time"}
        assert schema(dt.date) == {"type": "string", "format": "date"}
        assert call(dt.datetime, "2024-05-01T13:30:00+02:00") == dt.datetime(
            2024, 5, 1, 13, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert call(dt.date, "2024-05-01") == dt.date(2024, 5, 1)
        assert call(dt.time, "13:30") == dt.time(13, 30)

    def test_bad_date_string_is_an_input_error(self):
        """The schema's "format" is not checked by validation, so conversion catches it."""
        with pytest.raises(ToolInputError, match=r'^when: expected an ISO 8601 date, e.g. "2024-05-01", got "soon"$'):
            tool(takes(dt.date, "when")).run({"when": "soon"})


class TestContainers:
    @pytest.mark.parametrize("hint, value, expected", [
        (tuple, [1, "a"], (1, "a")),
        (tuple[int, ...], [1, 2, 3], (1, 2, 3)),
        (tuple[int, str], [1, "a"], (1, "a")),
        (tuple[()], [], ()),
        (set, ["a", "b"], {"a", "b"}),
        (set[int], [1, 2], {1, 2}),
        (frozenset[str], ["a"], frozenset({"a"})),
        (list, [1, "a"], [1, "a"]),
        (list[float], [1, 2.5], [1.0, 2.5]),
        (dict, {"a": 1}, {"a": 1}),
        (dict[str, float], {"a": 1}, {"a": 1.0}),
        (typing.List[float], [1], [1.0]),
        (typing.Tuple[int, ...], [1], (1,)),
        (typing.Set[int], [1], {1}),
        (typing.FrozenSet[int], [1], frozenset({1})),
        (typing.Dict[str, float], {"a": 1}, {"a": 1.0}),
        (typing.Sequence[float], [1], [1.0]),
        (typing.Mapping[str, float], {"a": 1}, {"a": 1.0}),
        (typing.AbstractSet[int], [1], {1}),
        (typing.Iterable[float], [1], [1.0]),
        (collections.abc.Sequence[float], [1], [1.0]),
        (collections.abc.MutableSequence[float], [1], [1.0]),
        (collections.abc.Mapping[str, float], {"a": 1}, {"a": 1.0}),
        (collections.abc.Set[int], [1], {1}),
        (collections.abc.Iterable[float], [1], [1.0]),
        (collections.abc.Collection[float], [1], [1.0]),
        (collections.abc.Sequence, [1], [1]),
    ])
    def test_container_arrives_as_its_python_type(self, hint, value, expected):
        out = call(hint, value)
        assert out == expected and type(out) is type(expected)

    def test_nested_items_are_converted(self):
        assert call(list[Point], [{"x": 1}, {"x": 2, "y": 3}]) == [Point(1.0, 0.0), Point(2.0, 3.0)]
        assert call(dict[str, Color], {"a": "red"}) == {"a": Color.RED}
        assert call(list[tuple[int, Color]], [[1, "blue"]]) == [(1, Color.BLUE)]
        assert call(dict[str, list[set[int]]], {"a": [[1], [2, 3]]}) == {"a": [{1}, {2, 3}]}

    def test_enum_keys(self):
        assert schema(dict[Color, int])["propertyNames"] == {"enum": ["red", "blue"]}
        assert call(dict[Color, int], {"blue": 1}) == {Color.BLUE: 1}

    def test_tuple_schemas(self):
        assert schema(tuple[int, str]) == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                                           "minItems": 2, "maxItems": 2}
        assert schema(tuple[int, ...]) == {"type": "array", "items": {"type": "integer"}}
        assert schema(frozenset[str]) == {"type": "array", "items": {"type": "string"}, "uniqueItems": True}

    def test_set_of_unhashable_items_is_a_clear_input_error(self):
        with pytest.raises(ToolInputError, match="arg: cannot make a set"):
            tool(takes(set[Point3D])).run({"arg": [{"x": 1, "y": 2, "z": 3}]})


class TestUnions:
    def test_optional_accepts_null_and_the_type(self):
        assert call(Optional[Color], None) is None
        assert call(Optional[Color], "red") is Color.RED
        assert call(Point | None, {"x": 1}) == Point(1.0)

    def test_members_are_tried_in_the_order_written(self):
        assert type(call(int | float, 1)) is int
        assert type(call(int | float, 1.5)) is float
        assert type(call(float | int, 1)) is float
        assert call(Union[int, str, Color], "red") == "red"

    def test_first_member_that_converts_cleanly_wins(self):
        """An object with a z fits Point3D, not Point (which allows no extra properties)."""
        assert call(Point | Point3D, {"x": 1, "y": 2}) == Point(1.0, 2.0)
        assert call(Point | Point3D, {"x": 1, "y": 2, "z": 3}) == Point3D(1.0, 2.0, 3.0)

    def test_error_from_the_member_that_got_furthest(self):
        t = tool(takes(Point | list[int] | None, "where"))
        with pytest.raises(ToolInputError, match=r'^where\.x: expected a number, got "a"$'):
            t.run({"where": {"x": "a"}})
        with pytest.raises(ToolInputError,
                           match=r"^where: expected an object \(Point\) or an array of an integer or null, got 3$"):
            t.run({"where": 3})


class TestAnnotated:
    def test_annotated_type_converts_and_describes(self):
        assert schema(Annotated[Color, "paint colour"]) == {"enum": ["red", "blue"], "description": "paint colour"}
        assert call(Annotated[Color, "paint colour"], "blue") is Color.BLUE
        assert call(Annotated[list[Point], "vertices"], [{"x": 1}]) == [Point(1.0)]


class TestClasses:
    def test_dataclass_schema(self):
        assert schema(Point) == {
            "type": "object",
            "properties": {"x": {"type": "number", "description": "distance from the left edge."},
                           "y": {"type": "number", "description": "distance from the top edge.", "default": 0.0}},
            "required": ["x"],
            "additionalProperties": False,
        }

    def test_dataclass_schema_leaves_out_init_false_fields_and_factory_defaults(self):
        s = schema(Shape)
        assert list(s["properties"]) == ["name", "points", "color", "tags"]
        assert s["required"] == ["name", "points"]
        assert s["properties"]["name"] == {"type": "string", "description": "what to call it"}
        assert s["properties"]["color"]["default"] == "red"
        assert "default" not in s["properties"]["tags"]

    def test_nested_dataclasses_become_instances(self):
        out = call(Shape, {"name": "tri", "points": [{"x": 0}, {"x": 1, "y": 1}], "color": "blue"})
        assert out == Shape("tri", [Point(0.0), Point(1.0, 1.0)], Color.BLUE)
        assert type(out.points[0].x) is float

    def test_attrs_class_uses_init_names_and_converts_nested_dataclasses(self):
        s = schema(Box)
        assert list(s["properties"]) == ["corner", "size", "label", "sides"]
        assert s["required"] == ["corner", "size"]
        assert s["properties"]["corner"]["description"] == "its top left corner."
        out = call(Box, {"corner": {"x": 1, "y": 2}, "size": [3, 4], "label": "b"})
        assert out == Box(Point(1.0, 2.0), (3.0, 4.0), "b")

    def test_class_validators_become_input_errors(self):
        with pytest.raises(ToolInputError, match=r"^p: Positive: 'n' must be > 0: -1$"):
            tool(takes(Positive, "p")).run({"p": {"n": -1}})

    def test_default_instance_is_shown_as_json(self):
        @tool
        def move(to: Point = Point(1.0, 2.0), via: frozenset[Color] = frozenset({Color.RED, Color.BLUE})) -> str:
            return ""

        props = move.input_schema["properties"]
        assert props["to"]["default"] == {"x": 1.0, "y": 2.0}
        assert props["via"]["default"] == ["blue", "red"]

    def test_recursive_class_is_a_definition_error(self):
        with pytest.raises(ToolDefinitionError, match="Node contains itself"):
            tool(takes(Node))

    def test_unsupported_field_is_a_definition_error_naming_the_field(self):
        @dataclasses.dataclass
        class Odd:
            z: complex

        with pytest.raises(ToolDefinitionError, match=r"parameter 'arg': Odd.z: type .*complex.* has no JSON Schema"):
            tool(takes(Odd))


class TestDefinitionErrors:
    def test_dict_keys_must_be_strings(self):
        with pytest.raises(ToolDefinitionError, match="dict keys must be str"):
            tool(takes(dict[int, str]))

    def test_enum_values_must_be_json(self):
        class Shape(enum.Enum):
            SQUARE = (1, 1)

        with pytest.raises(ToolDefinitionError, match="enum Shape has a value JSON cannot hold"):
            tool(takes(Shape))


@tool
def plot(points: list[Point], color: Color = Color.RED) -> str:
    """Plot points."""
    return ";".join(f"{p.x},{p.y}" for p in points) + f" {color.value}"


class TestConversionErrors:
    def test_error_names_the_path_and_the_problem(self):
        with pytest.raises(ToolInputError, match=r'^points\[1\]\.x: expected a number, got "abc"$') as info:
            plot.run({"points": [{"x": 1}, {"x": "abc"}]})
        assert info.value.path == "points[1].x"
        assert info.value.problem == 'expected a number, got "abc"'

    def test_unknown_and_missing_properties(self):
        with pytest.raises(ToolInputError, match=r"^points\[0\]: unknown property 'z'$"):
            plot.run({"points": [{"x": 1, "z": 2}]})
        with pytest.raises(ToolInputError, match=r"^points\[0\]: missing required property 'x'$"):
            plot.run({"points": [{"y": 1}]})
        with pytest.raises(ToolInputError, match=r"^missing required property 'points'$"):
            plot.run({})

    def test_unusual_keys_are_quoted_in_the_path(self):
        with pytest.raises(ToolInputError, match=r'^arg\["a b"\]: expected one of "red", "blue", got "green"$'):
            tool(takes(dict[str, Color])).run({"arg": {"a b": "green"}})

    def test_input_error_is_a_convo_error_and_a_value_error_and_pickles(self):
        err = ToolInputError("expected a number", "a.b")
        assert isinstance(err, ConvoError) and isinstance(err, ValueError)
        again = pickle.loads(pickle.dumps(err))
        assert (str(again), again.path, again.problem) == ("a.b: expected a number", "a.b", "expected a number")
        assert str(ToolInputError("no such city")) == "no such city"

    def test_direct_call_with_python_values_passes_them_through(self):
        assert plot(points=[Point(1, 2)], color=Color.BLUE) == "1,2 blue"
        assert plot(points=[{"x": 1}]) == "1.0,0.0 red"


def json_of(value: Any) -> Any:
    """How a model would write ``value``: the JSON form of points, tuples, sets and enums."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Point):
        return {"x": value.x, "y": value.y}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_of(v) for v in value]
    if isinstance(value, dict):
        return {k: json_of(v) for k, v in value.items()}
    return value


finite = st.floats(allow_nan=False, allow_infinity=False)
points = st.builds(Point, finite, finite)


@tool
def everything(points: list[Point], pairs: dict[str, tuple[int, Color]], colors: frozenset[Color],
               maybe: Optional[Point] = None, level: Level = Level.LOW) -> dict:
    """Return the arguments."""
    return dict(points=points, pairs=pairs, colors=colors, maybe=maybe, level=level)


class TestRoundTrip:
    @given(points=st.lists(points), pairs=st.dictionaries(st.text(), st.tuples(st.integers(), st.sampled_from(Color))),
           colors=st.frozensets(st.sampled_from(Color)), maybe=st.none() | points, level=st.sampled_from(Level))
    def test_any_value_sent_as_json_validates_and_converts_back_to_itself(self, **values):
        tool_input = json.loads(json.dumps(json_of(values)))
        assert everything.validation_errors(tool_input) == []
        assert everything.run(tool_input) == values


@tool
def move(point: Point, unit: Unit, when: Optional[dt.date] = None) -> str:
    """Move the pen to a point."""
    return f"moved to {type(point).__name__}({point.x}, {point.y}) in {unit!r}"


class TestInAConversation:
    def test_tool_receives_converted_arguments_through_a_convo(self):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "move", {"point": {"x": 1, "y": 2}, "unit": "cm"})]),
            reply("done"),
        ])
        assert Convo(service, tools=[move]).run("go").text() == "done"
        result = service.requests[1].messages[-1].tool_results()[0]
        assert not result.is_error
        assert result.text() == "moved to Point(1.0, 2.0) in <Unit.CM: 'cm'>"

    def test_conversion_error_reaches_the_model_as_an_error_result(self):
        service = ScriptedService([
            reply(tool_uses=[ToolUse("t1", "move", {"point": {"x": 1}, "unit": "cm", "when": "tomorrow"})]),
            reply("sorry"),
        ])
        Convo(service, tools=[move]).run("go")
        result = service.requests[1].messages[-1].tool_results()[0]
        assert result.is_error
        assert 'when: expected an ISO 8601 date, e.g. "2024-05-01", got "tomorrow"' in result.text()
