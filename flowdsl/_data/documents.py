"""Workflows as data: load a JSON/YAML document (an agent's plan) into an ordinary Flow.

A document is untrusted input. It is read within size and nesting limits, then checked as a
whole (every problem is collected, each with a JSON path, into one PlanValidationError), and
only then turned into the same Flow a user could write with ``>>`` and ``|``: each task is
``registry[tool](**args).named(id)``, ``{"$task": id}`` / ``{"$ctx": key}`` become Task / Ref
/ ``ctx()`` arguments, ``depends_on`` becomes composition edges. Nothing in a document is ever
evaluated, executed, unpickled or imported; conditions are a tiny declarative language or the
name of a predicate the user registered (compiled in ``flowdsl._data.conditions``).
``flow_to_dict`` writes a flow back as a document; the document's JSON Schema,
``plan_schema``, is in ``flowdsl._data.plan_schema``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import stat
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._base.errors import CompositionError, CycleError, PlanValidationError, ToolDefinitionError
from .._base.limits import encodable
from .._graph.registry import ToolRegistry, default_registry
from .._graph.spec import DOCUMENT_OPTIONS, TRIGGERS, _normalize
from .._graph.spec import OPTIONS as TOOL_OPTIONS
from .._graph.task import _MISSING as _GRAPH_MISSING
from .._graph.task import (
    DEFAULT_MAP_LIMIT,
    CtxRef,
    Flow,
    Ref,
    Task,
    chain,
    ctx,
    each,
    parallel,
    unmapped,
)
from .._graph.tool import Tool
from .._graph.walk import KEEP, transform
from .conditions import Condition, Problems, _compile, _did_you_mean, _hint, _path, _problem
from .plan_schema import MAX_ID_LENGTH, MODES

__all__ = ["Condition", "flow_to_dict", "load_flow"]

DOC_FIELDS = ("name", "mode", "description", "context", "resources", "max_concurrency",
              "tasks", "$schema")
DOC_ALIASES = {"execution_mode": "mode", "input_context": "context"}
# The tool options a document carries come from the option table (spec.OPTIONS); the rest
# are the task's own fields.
OPTIONS = DOCUMENT_OPTIONS
TASK_FIELDS = ("id", "tool", "args", "depends_on", "when", *OPTIONS, "trigger", "to_context",
               "map", "max_parallel", "max_children")
TASK_ALIASES = {"task_id": "id", "tool_id": "tool", "parameters": "args",
                "timeout_seconds": "timeout", "max_retries": "retries",
                "output_mapping": "to_context"}


# -- reading and limits ----------------------------------------------------------------------


def _text_depth(text: str) -> int:
    """The bracket nesting of JSON text, found without parsing (json.loads recurses)."""
    depth = top = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top


def _read(doc: Any, max_bytes: int, max_depth: int) -> Any:
    """The parsed document; raises PlanValidationError for unreadable or oversized input."""
    def fail(message: str, code: str = "unreadable") -> PlanValidationError:
        return PlanValidationError([{"path": "$", "code": code, "message": message}])

    suffix = ""
    if isinstance(doc, os.PathLike) or (
            isinstance(doc, str) and not doc.lstrip().startswith(("{", "["))
            and doc.rstrip().lower().endswith((".json", ".yaml", ".yml"))):
        path = Path(doc)
        suffix = path.suffix.lower()
        try:
            raw = _read_file(path, max_bytes)
            doc = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read {str(path)!r}: {exc}") from None
        if len(raw) > max_bytes:
            raise fail(f"the file {str(path)!r} is larger than max_bytes={max_bytes}",
                       "too_large")
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", errors="replace")
    if not isinstance(doc, str):
        return doc
    size = len(doc.encode("utf-8"))
    if size > max_bytes:
        raise fail(f"the document is {size} bytes, over max_bytes={max_bytes}", "too_large")
    if suffix in (".yaml", ".yml"):
        yaml = _yaml()
        try:
            return yaml.safe_load(doc)  # safe_load: plain data only, never Python objects
        except (yaml.YAMLError, RecursionError) as exc:
            raise fail(f"invalid YAML: {exc}") from None
    if _text_depth(doc) > max_depth:
        raise fail(f"the document is nested deeper than max_depth={max_depth}", "too_deep")
    try:
        return json.loads(doc)
    except (ValueError, RecursionError) as exc:
        raise fail(f"invalid JSON: {exc}") from None


def _read_file(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` + 1 bytes of a regular file. The limit is enforced by reading,
    not by trusting stat (a /proc file or a growing file says nothing true about its size),
    and anything that is not a regular file (a FIFO, a device such as /dev/zero, through a
    symlink or not) is refused: it could block or never end."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise block forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            msg = "not a regular file (a FIFO, device or directory); refused"
            raise OSError(msg)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _yaml() -> Any:
    from .schema import require

    return require("yaml")


def _check_size(data: Any, max_depth: int, max_nodes: int) -> None:
    """Walk the parsed data iteratively; shared or self-containing values hit the node cap."""
    stack = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            msg = f"the document has more than {max_nodes} values"
            raise PlanValidationError([{"path": "$", "code": "too_large", "message": msg}])
        if depth > max_depth:
            msg = f"the document is nested deeper than max_depth={max_depth}"
            raise PlanValidationError([{"path": "$", "code": "too_deep", "message": msg}])
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


# -- validation ------------------------------------------------------------------------------


@dataclasses.dataclass
class _TaskDoc:
    index: int
    id: str
    tool: Tool[..., Any] | None
    args: dict[str, Any]
    deps: list[str]
    condition: Condition | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    to_context: Any = None
    map: Any = _GRAPH_MISSING  # the values a mapped task runs its tool over
    named_map: bool = False  # "map" names the mapped parameters: {"<param>": values, ...}
    fan: dict[str, Any] = dataclasses.field(default_factory=dict)  # max_parallel, ...
    refs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, task id)


def _aliases(obj: dict[str, Any], aliases: Mapping[str, str], fields: tuple[str, ...],
             base: str, out: Problems) -> dict[str, Any]:
    obj = dict(obj)
    for alias, canonical in aliases.items():
        if alias in obj:
            if canonical in obj:
                _problem(out, _path(base, alias), "duplicate_field",
                         f"both {canonical!r} and its alias {alias!r} are given")
            obj.setdefault(canonical, obj.pop(alias))
            obj.pop(alias, None)
    for key in obj:
        if key not in fields:
            close = _did_you_mean(key, [*fields, *aliases])
            _problem(out, _path(base, str(key)), "unknown_field",
                     f"unknown field {key!r}{_hint(close)}")
    return obj


def _check_id(value: Any, where: str, out: Problems) -> bool:
    if not isinstance(value, str):
        _problem(out, where, "bad_id", f"a task id must be a string, got {type(value).__name__}")
    elif not value or len(value) > MAX_ID_LENGTH:
        _problem(out, where, "bad_id", f"a task id has 1 to {MAX_ID_LENGTH} characters")
    elif not encodable(value):
        # A lone surrogate (JSON "\ud800") cannot be written to history, logs or reports.
        _problem(out, where, "bad_id", f"task id {value!r} has a character UTF-8 cannot "
                 "encode (a lone surrogate)")
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        # Control and line-break characters could forge lines in logs and reports.
        _problem(out, where, "bad_id", f"task id {value!r} contains control characters")
    else:
        return True
    return False


def _scan_refs(value: Any, where: str, doc: _TaskDoc, out: Problems) -> bool:
    """Check the reference objects inside an argument value; True if it holds any."""
    found = False
    stack = [(value, where)]
    while stack:
        v, w = stack.pop()
        if isinstance(v, dict):
            if "$literal" in v and len(v) == 1:
                continue
            if "$task" in v:
                found = True
                target, path = v["$task"], v.get("path", [])
                if set(v) - {"$task", "path"} or not isinstance(target, str):
                    _problem(out, w, "bad_reference",
                             'a task reference is {"$task": "<id>", "path": [...]}')
                elif not isinstance(path, list) or not all(
                        isinstance(s, (str, int)) and not isinstance(s, bool) for s in path):
                    _problem(out, _path(w, "path"), "bad_reference",
                             "'path' is a list of keys and indexes")
                else:
                    doc.refs.append((w, target))
                continue
            if "$ctx" in v:
                found = True
                if set(v) - {"$ctx", "default"} or not isinstance(v["$ctx"], str):
                    _problem(out, w, "bad_reference",
                             'a context reference is {"$ctx": "<key>", "default": ...}')
                continue
            stack.extend((x, _path(w, str(k))) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, _path(w, k)) for k, x in enumerate(v))
    return found


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and ("$task" in value or "$ctx" in value)


def _check_map(doc: _TaskDoc, task: dict[str, Any], tool_name: str, base: str,
               out: Problems) -> tuple[str, ...]:
    """Check a mapped task's ``map`` and its options; the names of the parameters that
    receive one element per child (none for a task without ``map``).

    ``map`` is a list or a reference (each element goes to the tool's first parameter), or
    an object naming the mapped parameters, ``{"url": <list or reference>, ...}`` (several
    are zipped); the other arguments, in ``args``, go unchanged to every child."""
    if "map" not in task:
        for key in _FAN_FIELDS:
            if key in task:
                _problem(out, _path(base, key), "not_mapped",
                         f"{key!r} applies to a mapped task (one with 'map') only")
        return ()
    value, where = task["map"], _path(base, "map")
    named = isinstance(value, dict) and not _is_ref(value)
    if named:
        doc.named_map = True
        doc.map = {}
        for k, v in value.items():
            if isinstance(v, list) or _is_ref(v):
                _scan_refs(v, _path(where, str(k)), doc, out)
                doc.map[k] = v
            else:
                _problem(out, _path(where, str(k)), "bad_map",
                         f"mapped parameter {k!r} takes a list or a reference "
                         '({"$task": "<id>", "path": [...]} or {"$ctx": "<key>"}); a value '
                         "for every child goes in 'args'")
        if not value:
            _problem(out, where, "bad_map", "'map' names no parameter to map: give "
                     '{"<parameter>": <list or reference>, ...}')
    elif not isinstance(value, list) and not _is_ref(value):
        _problem(out, where, "bad_map", 'a mapped task\'s "map" is a list, a reference '
                 '({"$task": "<id>", "path": [...]} or {"$ctx": "<key>"}) or an object of '
                 'parameter name -> list or reference ({"url": {"$task": "search"}})')
    else:
        _scan_refs(value, where, doc, out)
        doc.map = value
    for key in _FAN_FIELDS:
        v = task.get(key)
        if key in task and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            _problem(out, _path(base, key), "bad_option", f"{key!r} is an integer >= 1")
        elif key in task:
            doc.fan[key] = v
    if doc.tool is None:
        return tuple(value) if named else ()
    args = task.get("args", {})
    args = args if isinstance(args, dict) else {}
    if named:
        from .schema import params

        plist, var_kw = params(doc.tool)
        known = {p.name: p for p in plist}
        for k in value:
            p = known.get(k)
            if p is None and not var_kw:
                close = _did_you_mean(k, known)
                _problem(out, _path(where, str(k)), "unknown_argument",
                         f"tool {tool_name!r} has no parameter {k!r} to map{_hint(close)}")
            elif p is not None and p.positional_only:
                _problem(out, _path(where, str(k)), "bad_map",
                         f"parameter {k!r} of tool {tool_name!r} is positional-only and "
                         "cannot be named; map it with a list or reference as 'map'")
            elif k in args:
                _problem(out, _path(base, "args", k), "bad_map",
                         f"{k!r} is mapped (it is in 'map'); do not also give it in 'args'")
        return tuple(value)
    first = next(iter(doc.tool.signature.parameters.values()), None)
    if first is None or first.kind in (first.VAR_KEYWORD, first.KEYWORD_ONLY):
        _problem(out, where, "bad_map",
                 f"tool {tool_name!r} has no positional parameter to receive each element; "
                 'name the parameter to map: "map": {"<parameter>": <list or reference>}')
        return ()
    if first.name in args:
        _problem(out, _path(base, "args", first.name), "bad_map",
                 f"{first.name!r} receives each element of 'map'; do not also give it (to map "
                 'another parameter, name it: "map": {"<parameter>": <list or reference>})')
    return (first.name,)


_FAN_FIELDS = ("max_parallel", "max_children")


def _check_args(doc: _TaskDoc, args: Any, tool_name: str, base: str, out: Problems,
                mapped: tuple[str, ...] = ()) -> None:
    where = _path(base, "args")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        _problem(out, where, "bad_args", "'args' is an object of argument name -> value")
        return
    doc.args = dict(args)
    t = doc.tool
    if t is None:  # unknown tool: still check references, not names or types
        for k, v in args.items():
            _scan_refs(v, _path(where, k), doc, out)
        return
    from .schema import check_value, params

    plist, var_kw = params(t)
    known = {p.name: p for p in plist}
    for k, v in args.items():
        p = known.get(k)
        if p is None and not var_kw:
            close = _did_you_mean(k, known)
            _problem(out, _path(where, k), "unknown_argument",
                     f"tool {tool_name!r} has no parameter {k!r}{_hint(close)}")
            continue
        has_refs = _scan_refs(v, _path(where, k), doc, out)
        if p is None or has_refs or (isinstance(v, dict) and "$literal" in v):
            continue
        try:
            v, errs = check_value(t, p, v)
        except ImportError:  # without pydantic, names are checked but not types
            errs = []
        for loc, message in errs:
            _problem(out, _path(where, k, *loc), "wrong_type", message)
        doc.args[k] = v  # as the tool will receive it (a dict may become a dataclass)
    for p in plist:
        if p.required and p.name not in args and p.name not in mapped:
            _problem(out, _path(where, p.name), "missing_argument",
                     f"missing required argument {p.name!r} of tool {tool_name!r}")


def _check_options(doc: _TaskDoc, task: dict[str, Any], tool_name: str, base: str,
                   pools: Mapping[str, int] | None, out: Problems) -> None:
    is_async = doc.tool.spec.is_async if doc.tool is not None else False
    for key in OPTIONS:
        if key in task:
            try:
                doc.options.update(_normalize(tool_name, {key: task[key]}, is_async))
            except ToolDefinitionError as exc:
                _problem(out, _path(base, key), "bad_option", str(exc))
    trigger = task.get("trigger")
    if trigger is not None:
        if trigger in TRIGGERS:
            doc.options["trigger"] = trigger
        else:
            _problem(out, _path(base, "trigger"), "unknown_trigger",
                     f"unknown trigger rule {trigger!r}; expected one of "
                     + ", ".join(TRIGGERS))
    demand = doc.options.get("resources", doc.tool.spec.resources if doc.tool else {})
    for pool, amount in (demand or {}).items():
        where = _path(base, "resources", pool)
        if pools is None or pool not in pools:
            known = ", ".join(map(repr, pools or ())) or "none"
            _problem(out, where, "unknown_pool", f"unknown pool {pool!r} (pools: {known})")
        elif isinstance(pools[pool], int) and amount > pools[pool]:  # bad ones: reported
            _problem(out, where, "over_capacity",
                     f"needs {amount} of pool {pool!r}, whose capacity is {pools[pool]}")
    mapping = task.get("to_context")
    if mapping is not None:
        if isinstance(mapping, str) or (isinstance(mapping, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())):
            doc.to_context = mapping
        else:
            _problem(out, _path(base, "to_context"), "bad_to_context",
                     "'to_context' is a context key or an object of output key -> context key")


def _check_task(raw: Any, i: int, registry: ToolRegistry, predicates: Mapping[str, Any],
                pools: Mapping[str, int] | None, out: Problems) -> _TaskDoc | None:
    base = f"tasks[{i}]"
    if not isinstance(raw, dict):
        _problem(out, base, "bad_task", f"a task is an object, got {type(raw).__name__}")
        return None
    task = _aliases(raw, TASK_ALIASES, TASK_FIELDS, base, out)
    ok_id = "id" in task and _check_id(task["id"], _path(base, "id"), out)
    if "id" not in task:
        _problem(out, _path(base, "id"), "missing_field", "missing required field 'id'")
    name = task.get("tool")
    t: Tool[..., Any] | None = None
    if not isinstance(name, str):
        _problem(out, _path(base, "tool"), "missing_field", "'tool' must name a registered tool")
    elif registry.is_ambiguous(name):
        try:
            registry[name]
        except ToolDefinitionError as exc:
            _problem(out, _path(base, "tool"), "ambiguous_tool", str(exc))
    elif name not in registry:
        close = registry.suggest(name)
        _problem(out, _path(base, "tool"), "unknown_tool",
                 f"unknown tool {name!r}{_hint(close)}", suggestions=close)
    else:
        try:
            t = registry[name]
        except ToolDefinitionError as exc:  # a function name two registry names map to
            _problem(out, _path(base, "tool"), "ambiguous_tool", str(exc))
    deps = task.get("depends_on", [])
    if not isinstance(deps, list):
        _problem(out, _path(base, "depends_on"), "bad_depends_on", "'depends_on' is a list of ids")
        deps = []
    doc = _TaskDoc(i, task["id"] if ok_id else "", t, {}, [])
    for k, d in enumerate(deps):
        if _check_id(d, _path(base, "depends_on", k), out):
            doc.deps.append(d)
            doc.refs.append((_path(base, "depends_on", k), d))
    mapped = _check_map(doc, task, str(name), base, out)
    _check_args(doc, task.get("args", {}), str(name), base, out, mapped)
    if task.get("when") is not None:
        fn = _compile(task["when"], _path(base, "when"), predicates, out)
        doc.condition = None if fn is None else Condition(task["when"], fn)
    _check_options(doc, task, str(name), base, pools, out)
    return doc if ok_id else None


def _check_header(doc: dict[str, Any], out: Problems) -> dict[str, Any]:
    head: dict[str, Any] = {}
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        _problem(out, "name", "missing_field", "'name' must be a non-empty string")
    elif not encodable(name):
        _problem(out, "name", "bad_name", f"the name {name!r} has a character UTF-8 cannot "
                 "encode (a lone surrogate)")
    head["name"] = name
    mode = doc.get("mode")
    if isinstance(mode, str):
        mode = mode.lower()
    if mode is not None and mode not in MODES:
        _problem(out, "mode", "bad_mode", f"unknown mode {mode!r}; expected one of "
                 + ", ".join(MODES))
    head["mode"] = mode
    description = doc.get("description", "")
    if not isinstance(description, str):
        _problem(out, "description", "bad_field", "'description' must be a string")
    head["description"] = description if isinstance(description, str) else ""
    context = doc.get("context")
    if context is not None and not (isinstance(context, dict)
                                    and all(isinstance(k, str) for k in context)):
        _problem(out, "context", "bad_field", "'context' must be an object")
    head["context"] = context
    pools = doc.get("resources")
    if pools is not None:
        if not isinstance(pools, dict):
            _problem(out, "resources", "bad_pool", "'resources' maps pool names to capacities")
            pools = None
        else:
            for pool, cap in pools.items():
                if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                    _problem(out, _path("resources", str(pool)), "bad_pool",
                             f"pool {pool!r}: capacity must be an integer >= 1, got {cap!r}")
    head["resources"] = pools
    limit = doc.get("max_concurrency")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        _problem(out, "max_concurrency", "bad_field", "'max_concurrency' is an integer >= 1")
    head["max_concurrency"] = limit
    return head


def _check_graph(docs: list[_TaskDoc], out: Problems) -> list[str]:
    """Duplicate ids, unknown references and cycles; returns a topological order of ids."""
    from .._plan.planner import _order

    first: dict[str, int] = {}
    for d in docs:
        if d.id in first:
            _problem(out, f"tasks[{d.index}].id", "duplicate_id",
                     f"duplicate task id {d.id!r} (first used by tasks[{first[d.id]}])")
        else:
            first[d.id] = d.index
    preds: dict[str, dict[str, None]] = {i: {} for i in first}
    for d in docs:
        keep = first.get(d.id) == d.index  # a duplicate's edges are ambiguous: not kept
        for where, target in d.refs:
            if target in first:
                if keep:
                    preds[d.id][target] = None
            else:
                close = _did_you_mean(target, first)
                _problem(out, where, "unknown_reference",
                         f"reference to unknown task {target!r}{_hint(close)}",
                         suggestions=close)
    try:
        order, _, _ = _order(list(first), preds)
    except CycleError as exc:
        _problem(out, "tasks", "cycle", str(exc), cycle=exc.cycle)
        return []
    return order


def validate(data: Any, registry: ToolRegistry, predicates: Mapping[str, Any],
             resources: Mapping[str, int] | None, max_tasks: int
             ) -> tuple[dict[str, Any], list[_TaskDoc], list[str]]:
    """Check a parsed document; raises PlanValidationError listing every problem."""
    out: Problems = []
    if not isinstance(data, dict):
        _problem(out, "$", "bad_document",
                 f"a workflow document is an object, got {type(data).__name__}")
        raise PlanValidationError(out)
    doc = _aliases(data, DOC_ALIASES, DOC_FIELDS, "", out)
    head = _check_header(doc, out)
    pools = {**(head["resources"] or {}), **(resources or {})}
    tasks = doc.get("tasks")
    docs: list[_TaskDoc] = []
    if not isinstance(tasks, list) or not tasks:
        _problem(out, "tasks", "missing_field", "'tasks' must be a non-empty list of tasks")
    elif len(tasks) > max_tasks:
        _problem(out, "tasks", "too_large",
                 f"{len(tasks)} tasks, over max_tasks={max_tasks}")
    else:
        for i, raw in enumerate(tasks):
            d = _check_task(raw, i, registry, predicates, pools if pools else None, out)
            if d is not None:
                docs.append(d)
    order = _check_graph(docs, out)
    if out:
        raise PlanValidationError(out)
    return head, docs, order


# -- building --------------------------------------------------------------------------------


def _resolve(value: Any, built: Mapping[str, Task[Any]]) -> Any:
    """Replace reference objects with Task / Ref / ctx() values (``$literal`` values are
    taken as they are, not looked into)."""
    def reference(v: Any) -> Any:
        if isinstance(v, dict):
            if "$literal" in v and len(v) == 1:
                return v["$literal"]
            if "$task" in v:
                t = built[v["$task"]]
                path = tuple(v.get("path", ()))
                return Ref(t, path) if path else t
            if "$ctx" in v:
                return ctx(v["$ctx"], v["default"]) if "default" in v else ctx(v["$ctx"])
        return KEEP

    return transform(value, reference)


def _build_task(d: _TaskDoc, built: Mapping[str, Task[Any]]) -> Task[Any]:
    from .schema import params

    assert d.tool is not None  # validated
    positional = {p.name for p in params(d.tool)[0] if p.positional_only}
    kwargs = {k: _resolve(v, built) for k, v in d.args.items()}
    pos = [kwargs.pop(p) for p in list(kwargs) if p in positional]
    if d.named_map:  # every parameter in "map" is mapped, every one in "args" is not
        task = d.tool.map(**{k: each(_resolve(v, built)) for k, v in d.map.items()},
                          **{k: unmapped(v) for k, v in kwargs.items()}).named(d.id)
    elif d.map is not _GRAPH_MISSING:
        task = d.tool.map(_resolve(d.map, built), **kwargs).named(d.id)
    else:
        task = d.tool(*pos, **kwargs).named(d.id)
    if d.options or d.fan:
        task = task.with_options(**d.options, **d.fan)
    if d.condition is not None:
        task = task.when(d.condition)
    if d.to_context is not None:
        task = task.to_context(d.to_context)
    return task


def load_flow(doc: Any, registry: ToolRegistry | None = None, *,
              predicates: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = None,
              resources: Mapping[str, int] | None = None, max_tasks: int = 1000,
              max_depth: int = 32, max_bytes: int = 1_000_000) -> Flow[Any]:
    """Load a workflow document (an agent's plan) as a :class:`~flowdsl.Flow`.

    The whole document is checked before anything is built, so a tool is never called for a
    document with problems.

    Args:
        doc: a dict, a JSON string, or a path to a ``.json`` / ``.yaml`` file.
        registry: where tool names are looked up (default: the default registry). Pass an
            explicit registry for untrusted documents, so they can only name those tools.
        predicates: named conditions a task's ``when`` may name, on top of the registry's.
        resources: pool capacities known besides the document's own ``resources``.
        max_tasks, max_depth, max_bytes: limits for untrusted input.

    Raises:
        PlanValidationError: the document has problems; ``.problems`` lists every one, each
            with ``path``, ``code`` and ``message``.
    """
    registry = default_registry if registry is None else registry
    data = _read(doc, max_bytes, max_depth)
    _check_size(data, max_depth, max(1000, max_bytes // 2))
    preds = {**registry.predicates, **(predicates or {})}
    head, docs, order = validate(data, registry, preds, resources, max_tasks)
    by_id = {d.id: d for d in docs}
    built: dict[str, Task[Any]] = {}
    for i in order:  # dependencies first: a finished Task is what its users refer to
        built[i] = _build_task(by_id[i], built)
    parts = [chain(parallel(*(built[x] for x in dict.fromkeys(d.deps))), built[d.id])
             if d.deps else parallel(built[d.id]) for d in docs]
    return Flow(head["name"], parallel(*parts), head["description"], mode=head["mode"],
                context=head["context"], resources=head["resources"],
                max_concurrency=head["max_concurrency"])


# -- writing back ----------------------------------------------------------------------------


def _unwritable(task_id: str, what: str) -> CompositionError:
    msg = f"task {task_id!r}: {what}, which a workflow document cannot express"
    return CompositionError(msg)


_END: Any = object()  # an exhausted iterator, in _to_data


def _as_list(keys: Any, done: list[Any]) -> Any:
    return done


def _as_dict(keys: list[str], done: list[Any]) -> Any:
    data = dict(zip(keys, done))
    # A plain dict that looks like a reference is written quoted, so it loads as itself.
    return {"$literal": data} if any(k.startswith("$") for k in data) else data


def _as_fields(keys: list[str], done: list[Any]) -> Any:
    return dict(zip(keys, done))


def _to_data(value: Any, task_id: str, where: str, ids: Mapping[Task[Any], str]) -> Any:
    """An argument value as document data (references as ``$task`` / ``$ctx`` objects, by
    the ids of the plan, ``ids``).

    Iterative, so a deeply nested value cannot exhaust the stack: each container open on the
    way down is a frame (how to build it, its keys, its items, the items done, where it goes,
    its path, what its items' path steps are, its id); a path is a (parent, step) chain,
    written out only for an error message."""
    top: list[Any] = []
    stack: list[tuple[Callable[[Any, list[Any]], Any], Any, Iterator[Any], list[Any],
                      list[Any], Any, Any, int]] = []
    open_ids: set[int] = set()
    item, into, path = value, top, None

    def where_now() -> str:
        parts: list[Any] = []
        at = path
        while at is not None:
            at, part = at
            parts.append(part)
        return _path(where, *reversed(parts))

    while True:
        frame: tuple[Callable[[Any, list[Any]], Any], Any, Iterator[Any], Any] | None = None
        if item is None or isinstance(item, (bool, int, float, str)):
            into.append(item)
        elif isinstance(item, enum.Enum):
            item = item.value  # converted in its place
            continue
        elif isinstance(item, Task):
            into.append({"$task": ids[item]})
        elif isinstance(item, Ref):
            into.append({"$task": ids[item.task], "path": list(item.path)})
        elif isinstance(item, CtxRef):
            if item.default is _GRAPH_MISSING:
                into.append({"$ctx": item.key})
            else:  # the default is written at the reference's own path
                key = item.key
                frame = (lambda _, done, key=key: {"$ctx": key, "default": done[0]},
                         None, iter((item.default,)), None)
        elif isinstance(item, (list, tuple)):
            frame = (_as_list, None, iter(item), int)
        elif isinstance(item, dict) and all(isinstance(k, str) for k in item):
            frame = (_as_dict, list(item), iter(item.values()), str)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            names = [f.name for f in dataclasses.fields(item)]
            frame = (_as_fields, names, (getattr(item, n) for n in names), str)
        elif callable(dump := getattr(type(item), "model_dump", None)):  # a pydantic model
            into.append(dump(item, mode="json"))
        else:
            raise _unwritable(task_id, f"argument {where_now()} is a {type(item).__name__}")
        if frame is not None:
            if id(item) in open_ids:
                raise _unwritable(task_id, f"argument {where_now()} contains itself")
            open_ids.add(id(item))
            build, keys, items, steps = frame
            stack.append((build, keys, items, [], into, path, steps, id(item)))
        # The next item: the next one of the innermost open container, closing those done.
        while stack:
            build, keys, items, done, parent, at, steps, ident = stack[-1]
            nxt = next(items, _END)
            if nxt is not _END:
                k = len(done)
                path = at if steps is None else (at, k if steps is int else keys[k])
                item, into = nxt, done
                break
            stack.pop()
            open_ids.discard(ident)
            parent.append(build(keys, done))
        else:
            return top[0]


def _condition_data(t: Task[Any], tid: str, names: Mapping[int, str]) -> Any:
    cond = t.condition
    if isinstance(cond, Condition):
        return cond.spec
    name = names.get(id(cond))
    if name is None:
        raise _unwritable(tid, "its condition is a Python callable (register it with "
                          "registry.predicate to name it)")
    return name


def _task_data(tid: str, t: Task[Any], preds: tuple[str, ...], registry: ToolRegistry,
               names: Mapping[int, str], ids: Mapping[Task[Any], str]) -> dict[str, Any]:
    from .schema import params

    if t.stage_param is not None:
        raise _unwritable(tid, "it is a pipeline stage fed by the previous stage")
    if t.fan is not None and t.fan.sub is not None:
        raise _unwritable(tid, f"it is a mapped sub-flow ({t.fan.sub.name}.map(...): its "
                          "tasks run per element)")
    tool_name = next((k for k, v in registry.items() if v.fn is t.tool.fn), t.tool.name)
    named = [p.name for p in params(t.tool)[0]]
    if len(t.args) > len(named):
        raise _unwritable(tid, "it takes extra positional arguments (*args)")
    args = {**dict(zip(named, t.args)), **t.kwargs}
    fan = t.fan
    # The first parameter alone is written "map": <values>; any other mapped parameters
    # by name, "map": {"<parameter>": <values>, ...} (zipped, like each()).
    by_name = fan is not None and fan.params != tuple(named[:1])
    if fan is not None and by_name and any(p.positional_only for p in params(t.tool)[0]
                                           if p.name in fan.params):
        raise _unwritable(tid, "it maps a positional-only parameter beside another (a "
                          "document's map names its parameters)")
    mapped = {p: args.pop(p) for p in fan.params} if fan is not None else {}
    out: dict[str, Any] = {"id": tid, "tool": tool_name,
                           "args": {k: _to_data(v, tid, k, ids) for k, v in args.items()}}
    if fan is not None:
        out["map"] = ({p: _to_data(v, tid, f"map.{p}", ids) for p, v in mapped.items()}
                      if by_name else _to_data(mapped[named[0]], tid, "map", ids))
        if fan.max_parallel is not None:
            out["max_parallel"] = fan.max_parallel
        if fan.limit != DEFAULT_MAP_LIMIT:
            out["max_children"] = fan.limit
    implied = {ids[u] for u in t.upstream}
    deps = [p for p in preds if p not in implied]
    if deps:
        out["depends_on"] = deps
    spec, base = t.spec, t.tool.spec
    if spec is not base:  # a task of a tool as declared overrides nothing
        for key, row in TOOL_OPTIONS.items():
            value = getattr(spec, key)
            if value == getattr(base, key):
                continue
            if row.document is None:  # refused by name, never dropped
                raise _unwritable(tid, f"it overrides option {key!r} ({row.refused})")
            out[key] = row.to_data(value)
    if t.trigger != "all_success":
        out["trigger"] = t.trigger
    if t.condition is not None:
        out["when"] = _condition_data(t, tid, names)
    if t.to_context_map is not None:
        m = t.to_context_map
        out["to_context"] = m if isinstance(m, str) else dict(m)
    return out


def flow_to_dict(flow: Any, registry: ToolRegistry | None = None) -> dict[str, Any]:
    """Write a flow as a workflow document; ``load_flow`` of it gives back the same flow.

    Tasks are written in a topological order; a tool is named by the key it is registered
    under in ``registry`` (default: the default registry), else by its own name.

    Raises:
        CompositionError: a task holds something a document cannot express (a Python
            condition not registered as a predicate, an argument that is not data, a
            pipeline stage); the message names the task.
    """
    from .._plan.planner import plan

    registry = default_registry if registry is None else registry
    p = plan(flow)
    names = {id(fn): k for k, fn in registry.predicates.items()}
    doc: dict[str, Any] = {"name": getattr(flow, "name", None) or "flow"}
    for key in ("description", "mode", "context", "resources", "max_concurrency"):
        value = getattr(flow, key, None)
        if value:
            doc[key] = dict(value) if isinstance(value, Mapping) else value
    if "context" in doc:
        doc["context"] = {k: _to_data(v, "<context>", k, p.ids)
                          for k, v in doc["context"].items()}
    doc["tasks"] = [_task_data(i, p.tasks[i], p.predecessors[i], registry, names, p.ids)
                    for i in p.order]
    return doc
