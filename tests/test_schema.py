"""Tests for tool JSON schemas (function calling) and argument checks against them."""

from __future__ import annotations

import enum
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional

import jsonschema
import pydantic
import pytest
from typing_extensions import TypedDict

from flowdsl import tool
from flowdsl._data.schema import check_value, params, provider_schema


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Point:
    x: int
    y: int = 0


class Options(TypedDict):
    depth: int


class Query(pydantic.BaseModel):
    text: str
    limit: int = 3


def _params(fn) -> dict[str, Any]:
    schema = tool(fn, registry=False).schema()
    jsonschema.Draft202012Validator.check_schema(schema["parameters"])
    return schema["parameters"]


class TestSnapshots:
    def test_required_optional_defaults(self):
        """Required params are listed; optional ones carry their default."""
        def f(query: str, limit: int = 10, ratio: float = 0.5, flag: bool = False): ...

        assert _params(f) == {
            "type": "object", "additionalProperties": False, "required": ["query"],
            "properties": {"query": {"type": "string"},
                           "limit": {"type": "integer", "default": 10},
                           "ratio": {"type": "number", "default": 0.5},
                           "flag": {"type": "boolean", "default": False}}}

    def test_literal_and_enum(self):
        """Literal and Enum hints become enum lists."""
        def f(mode: Literal["fast", "slow"], color: Color = Color.RED): ...

        p = _params(f)
        assert p["properties"]["mode"] == {"enum": ["fast", "slow"], "type": "string"}
        assert p["properties"]["color"] == {"$ref": "#/$defs/Color", "default": "red"}
        assert p["$defs"]["Color"] == {"enum": ["red", "blue"], "type": "string"}

    def test_containers_and_optional(self):
        """list[...], dict[str, ...] and Optional map to array, object and a null union."""
        def f(tags: list[str], weights: dict[str, float], note: Optional[str] = None): ...  # noqa: UP045

        props = _params(f)["properties"]
        assert props["tags"] == {"type": "array", "items": {"type": "string"}}
        assert props["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}
        assert props["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}],
                                 "default": None}

    def test_nested_objects(self):
        """Dataclasses, TypedDicts and pydantic models become nested objects under $defs."""
        def f(point: Point, options: Options, query: Query): ...

        p = _params(f)
        assert p["properties"]["point"] == {"$ref": "#/$defs/Point"}
        assert p["$defs"]["Point"]["required"] == ["x"]
        assert p["$defs"]["Point"]["properties"]["y"] == {"type": "integer", "default": 0}
        assert p["$defs"]["Options"]["properties"] == {"depth": {"type": "integer"}}
        assert p["$defs"]["Query"]["properties"]["limit"] == {"type": "integer", "default": 3}

    def test_unannotated_kwargs_and_odd_names(self):
        """No hint accepts anything; **kwargs opens the object; names like `json` survive."""
        def f(anything, json: int = 1, **extra): ...

        p = _params(f)
        assert p["properties"] == {"anything": {}, "json": {"type": "integer", "default": 1}}
        assert "additionalProperties" not in p or p["additionalProperties"] is not False

    def test_unserializable_default_is_left_out(self):
        """A default that is not JSON (an object) is omitted instead of breaking the schema."""
        sentinel = object()

        def f(x: Any = sentinel): ...

        assert _params(f)["properties"]["x"] == {}


class TestDocstrings:
    @pytest.mark.parametrize("doc", [
        """Find things.

        Args:
            query: what to look for.
            limit: how many results.
        """,
        """Find things.

        Parameters
        ----------
        query : str
            what to look for.
        limit : int
            how many results.
        """,
        """Find things.

        :param query: what to look for.
        :param limit: how many results.
        """,
    ], ids=["google", "numpy", "rest"])
    def test_param_descriptions(self, doc):
        """Google, NumPy and reST docstrings all give per-parameter descriptions."""
        def find(query: str, limit: int = 5): ...

        find.__doc__ = doc
        schema = tool(find, registry=False).schema()
        assert schema["description"] == "Find things."
        props = schema["parameters"]["properties"]
        assert props["query"]["description"] == "what to look for."
        assert props["limit"]["description"] == "how many results."

    def test_description_override(self):
        """An explicit description= replaces the docstring's prose."""
        def f(x: int):
            """Docstring text."""

        assert tool(f, registry=False, description="Custom.").schema()["description"] == "Custom."

    def test_name_override(self):
        """The schema carries the tool's name, or the name it is published under."""
        def f(x: int): ...

        t = tool(f, registry=False, name="ns.tool")
        assert t.schema()["name"] == "ns.tool"


class TestCheckValue:
    def test_coerces_to_declared_type(self):
        """A dict for a dataclass parameter becomes the dataclass."""
        def f(point: Point): ...

        t = tool(f, registry=False)
        value, errors = check_value(t, params(t)[0][0], {"x": 1})
        assert errors == []
        assert value == Point(1, 0)

    def test_reports_path_inside_value(self):
        """A wrong nested value is reported with its path inside the argument."""
        def f(items: list[int]): ...

        t = tool(f, registry=False)
        _, errors = check_value(t, params(t)[0][0], [1, "x"])
        assert [loc for loc, _ in errors] == [[1]]
        assert "'x'" in errors[0][1]


class TestProviders:
    def test_shapes(self):
        """provider_schema wraps a plain schema in the openai and anthropic forms."""
        plain = {"name": "n", "description": "d", "parameters": {"type": "object"}}
        assert provider_schema(plain, "openai")["function"] == plain
        assert provider_schema(plain, "anthropic")["input_schema"] == {"type": "object"}
        assert provider_schema(plain) is plain


class TestOptionalExtra:
    def test_missing_pydantic_names_the_extra(self, monkeypatch):
        """Without pydantic, schema() raises ImportError naming flowdsl[schema]."""
        def f(x: int): ...

        t = tool(f, registry=False)
        monkeypatch.setitem(sys.modules, "pydantic", None)
        with pytest.raises(ImportError, match=r"flowdsl\[schema\]"):
            t.schema()

    def test_import_stays_light(self):
        """Importing flowdsl and its data-workflow modules does not import the extras."""
        code = ("import sys, flowdsl, flowdsl._data.documents, flowdsl._data.schema, "
                "flowdsl.compat; "
                "bad = {'pydantic', 'docstring_parser', 'yaml'} & set(sys.modules); "
                "assert not bad, bad")
        subprocess.run([sys.executable, "-c", code], check=True)
