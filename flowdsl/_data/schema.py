"""Describe tools for LLM function calling, and check argument values against the description.

Type hints become JSON Schema (draft 2020-12) through pydantic v2 and docstrings become
parameter descriptions through ``docstring_parser``; both are the optional extra
``flowdsl[schema]`` and are imported here only, on first use.
"""

from __future__ import annotations

import inspect
import typing
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from .._graph.registry import function_name
from .._graph.spec import ToolLike
from .._graph.tool import Tool

__all__ = ["ParamInfo", "check_value", "params", "provider_schema", "tool_schema"]

STYLES = ("plain", "openai", "anthropic")

# Keywords whose value is a schema, a list of schemas, or a mapping of names to schemas.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then",
        "else", "unevaluatedProperties", "unevaluatedItems")
_MANY = ("anyOf", "allOf", "oneOf", "prefixItems")
_NAMED = ("properties", "$defs", "patternProperties", "dependentSchemas")


def require(module: str) -> Any:
    """Import an optional dependency of ``flowdsl[schema]`` or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = (f"this feature needs {module!r}, part of the optional extra 'flowdsl[schema]'; "
               "install it with: pip install 'flowdsl[schema]'")
        raise ImportError(msg) from exc


@dataclass(frozen=True, slots=True)
class ParamInfo:
    """One parameter of a tool as a workflow document sees it."""

    name: str
    annotation: Any
    required: bool
    default: Any
    positional_only: bool


_params_cache: weakref.WeakKeyDictionary[Any, tuple[list[ParamInfo], bool]] = (
    weakref.WeakKeyDictionary())


def params(t: ToolLike) -> tuple[list[ParamInfo], bool]:
    """The named parameters of ``t`` and whether it takes ``**kwargs`` (no extra needed)."""
    fn = t.fn
    try:
        return _params_cache[fn]
    except (KeyError, TypeError):
        pass
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an unresolvable forward reference: fall back to Any for those
        hints = {}
    out: list[ParamInfo] = []
    var_kw = False
    for p in t.signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        ann = hints.get(p.name, p.annotation)
        if ann is p.empty or isinstance(ann, str):
            ann = Any
        out.append(ParamInfo(p.name, ann, p.default is p.empty, p.default,
                             p.kind is p.POSITIONAL_ONLY))
    result = (out, var_kw)
    try:
        _params_cache[fn] = result
    except TypeError:  # a callable object that cannot be weakly referenced: no cache
        pass
    return result


_adapters: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _adapter(t: Tool[..., Any], p: ParamInfo) -> Any:
    try:
        per_fn = _adapters.setdefault(t.fn, {})
    except TypeError:  # not weakly referenceable: no cache
        per_fn = {}
    if p.name in per_fn:
        return per_fn[p.name]
    pydantic = require("pydantic")
    config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    ad = None
    # Dataclasses, TypedDicts and models refuse a config (they carry their own).
    for kwargs in ({"config": config}, {}):
        try:
            ad = pydantic.TypeAdapter(p.annotation, **kwargs)
            break
        except Exception:  # a hint pydantic cannot handle: accept any value
            continue
    per_fn[p.name] = ad
    return ad


def check_value(t: Tool[..., Any], p: ParamInfo,
                value: Any) -> tuple[Any, list[tuple[list[Any], str]]]:
    """Validate ``value`` for parameter ``p`` of ``t``.

    Returns:
        The value as the tool will receive it (a dict becomes the dataclass or model the
        parameter declares) and a list of ``(path inside the value, message)`` problems.
    """
    pydantic = require("pydantic")
    adapter = _adapter(t, p)
    if adapter is None:  # the hint is not something pydantic can check
        return value, []
    try:
        return adapter.validate_python(value), []
    except pydantic.ValidationError as exc:
        return value, [(list(e["loc"]), f"{e['msg']} (got {_short(e.get('input'))})")
                       for e in exc.errors()]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strip_titles(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated ``title`` keywords (noise for a model), iteratively."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("title"), str):
            del node["title"]
        stack.extend(node[key] for key in _ONE if isinstance(node.get(key), dict))
        for key in _MANY:
            if isinstance(node.get(key), list):
                stack.extend(node[key])
        for key in _NAMED:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
    return schema


def _docs(fn: Any) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn) or ""
    if not doc:
        return "", {}
    parsed = require("docstring_parser").parse(doc)
    text = "\n\n".join(s for s in (parsed.short_description, parsed.long_description) if s)
    return text, {p.arg_name: p.description for p in parsed.params if p.description}


def _json_schema_of(t: Tool[..., Any], p: ParamInfo) -> dict[str, Any] | None:
    adapter = _adapter(t, p)
    if adapter is None:
        return None
    try:
        schema: dict[str, Any] = adapter.json_schema()
        return schema
    except Exception:  # not expressible as JSON Schema (an arbitrary class)
        return None


def tool_schema(t: Tool[..., Any], *, name: str | None = None) -> dict[str, Any]:
    """``{"name", "description", "parameters"}`` for LLM function calling.

    ``parameters`` is a JSON Schema object built from the signature and type hints:
    required vs optional, defaults, ``Literal``/``Enum`` as ``enum``, containers,
    ``Optional``, dataclasses / TypedDicts / pydantic models as nested objects (under
    ``$defs``), with per-parameter descriptions from the Google, NumPy or reST docstring.

    Args:
        t: the tool.
        name: the name to publish (default: the tool's name).

    Raises:
        ImportError: pydantic or docstring_parser is missing (``flowdsl[schema]``).
    """
    own = getattr(t, "_flowdsl_json_schema", None)
    if own is not None:  # a tool described elsewhere (an MCP server's): its schema as given
        return {"name": name or t.name, "description": t.spec.description, "parameters": own}
    pydantic = require("pydantic")
    from pydantic.json_schema import PydanticJsonSchemaWarning

    doc_text, param_docs = _docs(t.fn)
    plist, var_kw = params(t)
    fields: dict[str, Any] = {}
    for k, p in enumerate(plist):
        # Internal field names avoid clashes with BaseModel attributes (json, copy, ...).
        ann = p.annotation if _json_schema_of(t, p) is not None else Any
        default = ... if p.required else p.default
        fields[f"p{k}"] = (ann, pydantic.Field(default, alias=p.name,
                                               description=param_docs.get(p.name)))
    config = pydantic.ConfigDict(arbitrary_types_allowed=True,
                                 extra="allow" if var_kw else "forbid")
    model = pydantic.create_model(f"{t.name}_parameters", __config__=config, **fields)
    with warnings.catch_warnings():
        # A default that is not JSON (an object) is left out of the schema, as documented.
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        parameters = _strip_titles(model.model_json_schema(by_alias=True))
    parameters.setdefault("properties", {})
    if not var_kw:
        parameters["additionalProperties"] = False
    description = t.spec.description
    if description == (inspect.getdoc(t.fn) or ""):  # not overridden: the prose part only
        description = doc_text
    return {"name": name or t.name, "description": description, "parameters": parameters}


def provider_schema(schema: dict[str, Any], style: str = "plain") -> dict[str, Any]:
    """A tool schema in a provider's shape.

    Both providers accept only names matching ``^[a-zA-Z0-9_-]{1,64}$``, so their shapes
    carry :func:`function_name` of the tool's name (``search.web`` -> ``search__web``); a
    registry maps such a name back when the agent's call or plan arrives.

    Args:
        schema: what :func:`tool_schema` returned.
        style: ``"plain"`` (as is), ``"openai"`` (``{"type": "function", "function":
            {...}}``) or ``"anthropic"`` (``{"name", "description", "input_schema"}``).

    Raises:
        ValueError: an unknown style.
    """
    if style == "plain":
        return schema
    if style == "openai":
        return {"type": "function", "function": {**schema,
                                                 "name": function_name(schema["name"])}}
    if style == "anthropic":
        return {"name": function_name(schema["name"]), "description": schema["description"],
                "input_schema": schema["parameters"]}
    msg = f"unknown schema style {style!r}; expected one of {', '.join(map(repr, STYLES))}"
    raise ValueError(msg)


def registry_schemas(registry: Any, style: str = "plain") -> list[dict[str, Any]]:
    """Every tool of ``registry`` as a function-calling description (``registry.schemas()``).

    Raises:
        ToolDefinitionError: for a provider style, two tools map to one function name.
    """
    if style != "plain":
        registry.function_names()  # collisions are reported before anything is emitted
    return [provider_schema(tool_schema(t, name=key), style) for key, t in registry.items()]
