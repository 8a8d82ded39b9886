"""The JSON Schema of workflow documents (:func:`plan_schema`), for LLM structured output.

Each task is one of the registry's tools, its ``args`` tied to that tool's parameter schema
(from ``flowdsl._data.schema``), where any argument may also be a ``$task`` / ``$ctx``
reference; ``when`` follows the condition language of ``flowdsl._data.conditions``. It also
holds the parts of the document's vocabulary the schema publishes and the loader checks: the
modes and the task id length.
"""

from __future__ import annotations

from typing import Any

from .._graph.registry import ToolRegistry, default_registry
from .._graph.spec import OPTIONS, TRIGGERS
from .._graph.tool import Tool
from .._plan.policy import Mode
from .conditions import _BINARY, _UNARY

__all__ = ["MAX_ID_LENGTH", "MODES", "plan_schema"]

MODES = tuple(m.value for m in Mode)  # the policy lists the modes once
MAX_ID_LENGTH = 200


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _rebase(schema: Any, prefix: str) -> Any:
    """Move a tool's ``#/$defs/X`` references to ``#/$defs/<prefix>X`` (iteratively)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = "#/$defs/" + _pointer(prefix) + ref[len("#/$defs/"):]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


def _allow_refs(schema: dict[str, Any]) -> None:
    """Let every value inside a parameter schema also be a ``$task``/``$ctx`` reference."""
    ref = {"$ref": "#/$defs/reference"}
    stack = [schema]
    while stack:
        node = stack.pop()
        for key in ("properties", "patternProperties"):
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
                node[key] = {k: {"anyOf": [v, ref]} for k, v in node[key].items()}
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                stack.append(node[key])
                node[key] = {"anyOf": [node[key], ref]}
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            if isinstance(node.get(key), list):
                stack.extend(v for v in node[key] if isinstance(v, dict) and v is not ref)


def _common_defs() -> dict[str, Any]:
    ids = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    path = {"type": "array", "items": {"type": ["string", "integer"]}}
    test = {"type": "object", "required": ["ctx"], "additionalProperties": False,
            "properties": {"ctx": {"type": "string"}, "path": path,
                           "op": {"enum": [*_BINARY, *_UNARY]}, "value": {}}}
    cond = {"$ref": "#/$defs/condition"}
    return {
        "task_id": ids,
        "reference": {"oneOf": [
            {"type": "object", "required": ["$task"], "additionalProperties": False,
             "properties": {"$task": ids, "path": path}},
            {"type": "object", "required": ["$ctx"], "additionalProperties": False,
             "properties": {"$ctx": {"type": "string"}, "default": {}}}]},
        "condition": {"anyOf": [
            {"type": "string", "description": "the name of a registered predicate"}, test,
            {"type": "object", "required": ["all"], "additionalProperties": False,
             "properties": {"all": {"type": "array", "minItems": 1, "items": cond}}},
            {"type": "object", "required": ["any"], "additionalProperties": False,
             "properties": {"any": {"type": "array", "minItems": 1, "items": cond}}},
            {"type": "object", "required": ["not"], "additionalProperties": False,
             "properties": {"not": cond}}]},
    }


def _task_variant(name: str, t: Tool[..., Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from .schema import params, tool_schema

    ts = tool_schema(t, name=name)
    plist, var_kw = params(t)
    names = [p.name for p in plist if not p.positional_only]
    values = {"anyOf": [{"type": "array"}, {"$ref": "#/$defs/reference"}]}
    parameters = _rebase(ts["parameters"], f"{name}.")
    defs = {f"{name}.{k}": v for k, v in parameters.pop("$defs", {}).items()}
    _allow_refs(parameters)
    for d in defs.values():
        _allow_refs(d)
    props = {
        "id": {"$ref": "#/$defs/task_id"},
        "tool": {"const": name, "description": ts["description"]},
        "args": parameters,
        "depends_on": {"type": "array", "items": {"$ref": "#/$defs/task_id"}},
        "when": {"$ref": "#/$defs/condition"},
        # The tool options a document carries, from the option table.
        **{k: {**row.document, "description": row.doc} for k, row in OPTIONS.items()
           if row.document is not None},
        "trigger": {"enum": list(TRIGGERS)},
        "to_context": {"anyOf": [{"type": "string"}, {"type": "object",
                                  "additionalProperties": {"type": "string"}}]},
        # A mapped task: the tool runs once per element, which goes to its first parameter
        # (a list or a reference), or to the parameters named ({"url": <list or reference>},
        # several zipped).
        "map": {"anyOf": [*values["anyOf"], {
            "type": "object", "minProperties": 1, "additionalProperties": values,
            "not": {"$ref": "#/$defs/reference"},
            **({} if var_kw else {"propertyNames": {"enum": names}})}]},
        "max_parallel": {"type": "integer", "minimum": 1},
        "max_children": {"type": "integer", "minimum": 1},
    }
    need = parameters.pop("required", [])
    first = next(iter(t.signature.parameters), None)

    # Each required parameter is in "args", or named in an object "map", or (the first)
    # receives the elements of a list or reference "map".
    def given(n: str) -> dict[str, Any]:
        ways: list[dict[str, Any]] = [
            {"required": ["args"], "properties": {"args": {"required": [n]}}},
            {"required": ["map"], "properties": {"map": {"type": "object", "required": [n]}}}]
        if n == first:
            ways.append({"required": ["map"], "properties": {"map": {"anyOf": [
                {"type": "array"}, {"$ref": "#/$defs/reference"}]}}})
        return {"anyOf": ways}

    variant = {"type": "object", "required": ["id", "tool"], "additionalProperties": False,
               "properties": props}
    if need:
        variant["allOf"] = [given(n) for n in need]
    return variant, defs


def plan_schema(registry: ToolRegistry | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of workflow documents over ``registry``'s tools.

    Each task is one of the tools (``oneOf`` on the ``tool`` constant) and its ``args`` are
    tied to that tool's parameter schema, where any argument may also be a ``$task`` or
    ``$ctx`` reference; hand it to an LLM as a structured-output format. Needs
    ``flowdsl[schema]``.
    """
    registry = default_registry if registry is None else registry
    defs = _common_defs()
    variants = []
    for name, t in registry.items():
        if registry.is_ambiguous(name):
            continue
        variant, tool_defs = _task_variant(name, t)
        defs.update(tool_defs)
        variants.append(variant)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flowdsl workflow document",
        "type": "object",
        "required": ["name", "tasks"],
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "mode": {"enum": list(MODES)},
            "context": {"type": "object"},
            "resources": {"type": "object", "additionalProperties": {"type": "integer",
                                                                     "minimum": 1}},
            "max_concurrency": {"type": "integer", "minimum": 1},
            "tasks": {"type": "array", "minItems": 1, "items": {"oneOf": variants}},
        },
        "$defs": defs,
    }
