"""Compose: Task (one node) and Fragment (tasks composed with ``>>`` and ``|``).

Composition is O(1) per operator: a Fragment is an immutable tree over its parts, so a loop of
``flow = flow >> t`` over 100,000 tasks is linear overall. The tree is flattened into tasks and
edges only when needed (:func:`materialize`), iteratively, so a deep tree needs no recursion.

Node identity: the same Task object used twice is one node; two different Task objects with
the same id in one flow are an error (:class:`~flowdsl.DuplicateTaskError`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from .._base import hooks
from .._base.errors import CompositionError, DuplicateTaskError
from .spec import TRIGGERS, ToolLike, ToolSpec
from .walk import nodes

__all__ = ["CtxRef", "Each", "Flow", "Fragment", "Guard", "MapSpec", "Ref", "Task", "chain", "ctx",
           "each", "materialize", "parallel"]

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()
_id_counts: dict[str, itertools.count[int]] = {}
_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})


def _auto_id(name: str) -> str:
    # next() on an itertools.count is atomic, so ids stay unique across threads.
    counter = _id_counts.get(name) or _id_counts.setdefault(name, itertools.count(1))
    n = next(counter)
    return name if n == 1 else f"{name}_{n}"


class Ref:
    """A projection of a task's output (``task["key"]``, ``task["a"][0]``) used as an argument."""

    __slots__ = ("path", "task")

    def __init__(self, task: Task, path: tuple[Any, ...]) -> None:
        self.task = task
        self.path = path

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self.task, (*self.path, key))

    def __repr__(self) -> str:
        return self.task.id + "".join(f"[{k!r}]" for k in self.path)

    def __bool__(self) -> bool:
        msg = "a flowdsl reference has no truth value; use .when() for conditions"
        raise TypeError(msg)


class CtxRef:
    """A value read from the run context at run time (see :func:`ctx`)."""

    __slots__ = ("default", "key")

    def __init__(self, key: str, default: Any = _MISSING) -> None:
        self.key = key
        self.default = default

    def __repr__(self) -> str:
        return f"ctx({self.key!r})"


def ctx(key: str, default: Any = _MISSING) -> CtxRef:
    """Refer to ``context[key]``; it is read when the task starts, after upstream outputs were
    mapped into the context. Without a default, a missing key fails the task and names it."""
    if not isinstance(key, str):
        msg = f"ctx() expects a string key, got {type(key).__name__} {key!r}"
        raise CompositionError(msg)
    return CtxRef(key, default)


class Each:
    """An argument of :meth:`Tool.map <flowdsl.Tool.map>` that is mapped element by element
    (see :func:`each`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"each({self.value!r})"


def each(values: Any) -> Each:
    """Mark a keyword argument of ``tool.map(...)`` as mapped too: child *i* receives element
    *i* of ``values`` (zipped with the mapped values; unequal lengths fail the mapped task)."""
    return Each(values)


DEFAULT_MAP_LIMIT = 10_000


class MapSpec:
    """How a mapped task fans out: the parameters that take one element per child (the
    first is the tool's first parameter), whether that one was bound by position, the most
    children running at once, and the most children allowed."""

    __slots__ = ("limit", "max_parallel", "params", "positional")

    def __init__(self, params: tuple[str, ...], positional: bool,
                 max_parallel: int | None = None, limit: int = DEFAULT_MAP_LIMIT) -> None:
        self.params = params
        self.positional = positional
        self.max_parallel = max_parallel
        self.limit = limit

    def evolve(self, task_id: str, **changes: Any) -> MapSpec:
        for key, value in changes.items():
            if (value is None and key == "max_parallel") or (
                    isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                continue
            msg = (f"task {task_id!r}: option {key}={value!r} is invalid: expected an "
                   "integer >= 1" + (" or None" if key == "max_parallel" else ""))
            raise CompositionError(msg)
        return MapSpec(self.params, self.positional,
                       changes.get("max_parallel", self.max_parallel),
                       changes.get("max_children", self.limit))


class Guard:
    """A condition on another task's output (``.when(on=task, ...)``, :func:`switch`): the
    task runs only if ``test(value of on)`` is true; else it is skipped with the reason
    ``reason(name of on, value)``."""

    __slots__ = ("inherit", "on", "reason", "test")

    def __init__(self, on: Task | Ref, test: Callable[[Any], Any],
                 reason: Callable[[str, Any], str], *, inherit: bool = False) -> None:
        self.on = on
        self.test = test
        self.reason = reason
        self.inherit = inherit  # the tasks skipped downstream repeat the reason


def _condition(owner: str, predicate: Callable[..., Any] | None, on: Any,
               equals: Any) -> Guard | None:
    """Check the arguments of ``.when()``; the guard for ``on=``, or None for a condition
    on the context (``predicate`` itself)."""
    if on is None:
        if equals is not _MISSING:
            msg = f"{owner}: .when(equals=...) needs on=<the task to compare>"
            raise CompositionError(msg)
        if not callable(predicate):
            msg = f"{owner}: .when() expects a callable, got {predicate!r}"
            raise CompositionError(msg)
        return None
    if not isinstance(on, (Task, Ref)):
        msg = (f"{owner}: .when(on=...) expects a Task or a projection task['key'], got "
               f"{type(on).__name__} {on!r}"[:200])
        raise CompositionError(msg)
    if (predicate is None) == (equals is _MISSING):
        msg = f"{owner}: .when(on=...) takes either a predicate or equals=, exactly one of them"
        raise CompositionError(msg)
    if predicate is not None:
        if not callable(predicate):
            msg = f"{owner}: .when() expects a callable, got {predicate!r}"
            raise CompositionError(msg)
        return Guard(on, predicate,
                     lambda name, v: f"its condition on {name} was false (got {v!r})")
    return Guard(on, lambda v: v == equals, lambda name, v: f"{name} gave {v!r}, not {equals!r}")


def _scan(value: Any, out: list[Task]) -> bool:
    """Collect, left to right, the tasks ``value`` refers to (inside any containers the
    argument walker knows); True if it holds any reference at all."""
    found = False
    for v in nodes(value):
        cls = v.__class__
        if cls is Task or isinstance(v, Task):
            out.append(v)
            found = True
        elif cls is Ref:
            out.append(v.task)
            found = True
        elif cls is CtxRef:
            found = True
        elif cls is Each:
            msg = (f"{v!r} marks a mapped argument of tool.map(...); it cannot be used in a "
                   "plain tool call or inside another value")
            raise CompositionError(msg)
        elif cls is Flow or cls is Fragment:
            msg = (f"{v!r} was passed as an argument; pass the task whose output you want "
                   "(a flow's last task), and compose the flow with >>")
            raise CompositionError(msg)
    return found


def _bind_plain(tool: ToolLike, plain: tuple[tuple[str, ...], frozenset[str], int],
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    # A fast path for the common signature (plain parameters only): same checks and
    # messages as inspect.Signature.bind, several times cheaper.
    names, known, required = plain
    n = len(args)
    if n > len(names):
        msg = (f"cannot call tool {tool.name!r}: too many positional arguments "
               f"(takes {len(names)}, got {n})")
        raise CompositionError(msg)
    bound = dict(zip(names, args)) if n else {}
    for k, v in kwargs.items():
        if k in bound or k not in known:
            why = "multiple values for argument" if k in bound else "an unexpected keyword"
            msg = f"cannot call tool {tool.name!r}: got {why} {k!r}"
            raise CompositionError(msg)
        bound[k] = v
    if n < required:  # the required parameters not given by position must come by keyword
        for name in names[n:required]:
            if name not in bound:
                msg = f"cannot call tool {tool.name!r}: missing a required argument: {name!r}"
                raise CompositionError(msg)
    return bound


def _bind_inspect(tool: ToolLike, args: tuple[Any, ...], kwargs: dict[str, Any], partial: bool
                  ) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
    sig = tool.signature
    try:
        ba = sig.bind_partial(*args, **kwargs) if partial else sig.bind(*args, **kwargs)
    except TypeError as exc:
        msg = f"cannot call tool {tool.name!r}: {exc}"
        raise CompositionError(msg) from None
    stage_param = None
    if partial:
        free = [p for p in sig.parameters.values() if p.name not in ba.arguments
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not free:
            msg = (f"tool {tool.name!r} used as a pipeline stage has no free parameter "
                   "to receive the previous stage's output")
            raise CompositionError(msg)
        stage_param = free[0].name
    return ba.args, ba.kwargs, stage_param


class _Composable:
    """``>>`` and ``|`` for tasks, fragments and flows; both return new values."""

    __slots__ = ()

    def __rshift__(self, other: Any) -> Fragment:
        return then(self, other)

    def __rrshift__(self, other: Any) -> Fragment:
        return then(other, self)

    def __or__(self, other: Any) -> Fragment:
        return _pair("par", self, other)

    def __ror__(self, other: Any) -> Fragment:
        return _pair("par", other, self)

    def __bool__(self) -> bool:
        msg = (f"a flowdsl {type(self).__name__} has no truth value; "
               "use | for side-by-side branches and .when() for conditions")
        raise TypeError(msg)

    def plan(self) -> Any:
        """Validate and plan this composition: a :class:`~flowdsl.Plan` (see
        :func:`flowdsl.plan`)."""
        return hooks.get("plan")(self)

    def to_mermaid(self) -> str:
        """The DAG as a mermaid ``flowchart`` text."""
        return hooks.get("to_mermaid")(self.plan())

    def to_dot(self) -> str:
        """The DAG as graphviz dot text."""
        return hooks.get("to_dot")(self.plan())


class Task(_Composable):
    """One node: a tool with bound arguments and per-task settings. Immutable; every setter
    returns a new Task with the same id."""

    __slots__ = ("args", "condition", "dynamic", "fan", "guards", "id", "kwargs", "spec",
                 "stage_param", "to_context_map", "tool", "trigger", "upstream")

    id: str
    tool: ToolLike
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spec: ToolSpec
    stage_param: str | None
    upstream: tuple[Task, ...]
    dynamic: bool
    condition: Callable[[Mapping[str, Any]], Any] | None
    to_context_map: Mapping[str, str] | str | None
    trigger: str
    fan: MapSpec | None
    guards: tuple[Guard, ...]

    @classmethod
    def _bind(cls, tool: ToolLike, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              partial: bool) -> Task:
        plain = tool._self_plain  # set when the signature has only plain parameters
        if plain is not None and not partial:
            bound = _bind_plain(tool, plain, args, kwargs)
            args, kwargs, stage_param = (), bound, None
        else:
            args, kwargs, stage_param = _bind_inspect(tool, args, kwargs, partial)
        refs: list[Task] = []
        dynamic = _scan(args, refs) if args else False
        for v in kwargs.values():
            if v.__class__ not in _ATOMS:  # only then can it hold a reference: scan it all
                dynamic = _scan(kwargs, refs) or dynamic
                break
        t = object.__new__(_NewTask)
        t.spec = spec = tool._self_spec
        t.id = _auto_id(spec.name)
        t.tool = tool
        t.args = args
        t.kwargs = kwargs
        t.stage_param = stage_param
        t.dynamic = dynamic
        t.condition = None
        t.to_context_map = None
        t.trigger = "all_success"
        t.fan = None
        t.guards = ()
        t.upstream = tuple(dict.fromkeys(refs)) if refs else ()
        t.__class__ = Task  # sealed from here on: Task.__setattr__ refuses changes
        return t

    def _replace(self, **changes: Any) -> Task:
        t = object.__new__(_NewTask)
        for slot in Task.__slots__:
            setattr(t, slot, changes.get(slot, getattr(self, slot)))
        t.__class__ = Task
        return t

    def __setattr__(self, name: str, value: Any) -> None:
        msg = f"Task {self.id!r} is immutable; use .named(), .when() or .with_options()"
        raise AttributeError(msg)

    def named(self, task_id: str) -> Task:
        """The same task under the id ``task_id``."""
        if not isinstance(task_id, str) or not task_id:
            msg = f"task id must be a non-empty string, got {task_id!r}"
            raise CompositionError(msg)
        return self._replace(id=task_id)

    def when(self, predicate: Callable[..., Any] | None = None, *,
             on: Task | Ref | None = None, equals: Any = _MISSING) -> Task:
        """Run only if the condition holds when the task is ready; else skip it (and, by
        default, the tasks downstream of it).

        ``.when(predicate)`` tests ``predicate(context)``; ``.when(predicate, on=task)`` tests
        ``predicate(output of task)``; ``.when(on=task, equals=value)`` tests
        ``output == value``. A task named by ``on`` runs before this one.
        """
        guard = _condition(f"task {self.id!r}", predicate, on, equals)
        if guard is not None:
            return self._guarded(guard)
        old = self.condition
        cond = predicate if old is None else (lambda c: old(c) and predicate(c))  # type: ignore
        return self._replace(condition=cond)

    def _guarded(self, guard: Guard) -> Task:
        up = guard.on if isinstance(guard.on, Task) else guard.on.task
        upstream = self.upstream if up in self.upstream else (*self.upstream, up)
        return self._replace(guards=(*self.guards, guard), upstream=upstream)

    def to_context(self, mapping: str | Mapping[str, str]) -> Task:
        """Store the output in the run context: all of it under a key (``"key"``), or some of
        its keys (``{"output_key": "context_key"}``)."""
        if isinstance(mapping, str):
            return self._replace(to_context_map=mapping)
        if isinstance(mapping, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
            return self._replace(to_context_map=dict(mapping))
        msg = (f"task {self.id!r}: .to_context() expects a key or a mapping of output key -> "
               f"context key, got {mapping!r}")
        raise CompositionError(msg)

    def with_options(self, *, trigger: str | None = None, **options: Any) -> Task:
        """Override tool options for this task only (``timeout``, ``retries``, ``backoff``,
        ``retry_on``, ``resources``, ``priority``, ``expected_duration``, ``executor``,
        ``rollback``) and set its ``trigger`` rule. A mapped task also takes
        ``max_parallel`` (most children running at once) and ``max_children`` (the fan-out
        limit, default 10,000)."""
        if "name" in options or "description" in options:
            msg = f"task {self.id!r}: use .named() to rename a task"
            raise CompositionError(msg)
        changes: dict[str, Any] = {}
        fan_opts = {k: options.pop(k) for k in _FAN_OPTIONS if k in options}
        if fan_opts:
            if self.fan is None:
                msg = (f"task {self.id!r}: {', '.join(fan_opts)} applies to a mapped task "
                       "(tool.map(...)) only")
                raise CompositionError(msg)
            changes["fan"] = self.fan.evolve(self.id, **fan_opts)
        if options:
            changes["spec"] = self.spec.evolve(**options)
        if trigger is not None:
            changes["trigger"] = _trigger(f"task {self.id!r}", trigger)
        return self._replace(**changes)

    @classmethod
    def _map(cls, tool: ToolLike, values: Any, kwargs: dict[str, Any]) -> Task:
        """``tool.map(values, **kwargs)``: one task that runs the tool once per element."""
        params = tool.signature.parameters
        first = next(iter(params.values()), None)
        if first is None or first.kind in (first.VAR_KEYWORD, first.KEYWORD_ONLY):
            msg = (f"cannot map tool {tool.name!r}: it has no positional parameter to "
                   "receive each element")
            raise CompositionError(msg)
        if isinstance(values, (str, bytes, Mapping, Each)):
            msg = (f"cannot map tool {tool.name!r} over {type(values).__name__} "
                   f"{values!r}"[:200] + ": expected a Task, a projection task['k'] or a list")
            raise CompositionError(msg)
        mapped = [first.name]
        plain: dict[str, Any] = {}
        for k, v in kwargs.items():
            if v.__class__ is Each:
                mapped.append(k)
                plain[k] = v.value
            else:
                plain[k] = v
        t = cls._bind(tool, (values,), plain, partial=False)
        return t._replace(fan=MapSpec(tuple(mapped), bool(t.args)))

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self, (key,))

    def __repr__(self) -> str:
        deps = ", ".join(t.id for t in self.upstream)
        kind = "mapped tool" if self.fan is not None else "tool"
        return f"<Task {self.id!r} {kind}={self.tool.name}" + (f" after [{deps}]>" if deps else ">")


_FAN_OPTIONS = ("max_parallel", "max_children")


def _trigger(owner: str, trigger: Any) -> str:
    if trigger not in TRIGGERS:
        msg = f"{owner}: unknown trigger rule {trigger!r}; expected one of " + ", ".join(TRIGGERS)
        raise CompositionError(msg)
    return str(trigger)


class _NewTask(Task):
    """A Task under construction; its class becomes Task once every slot is set."""

    __slots__ = ()
    __setattr__ = object.__setattr__




class Unit:
    """What makes a group of tasks one unit (``.when()``/``.with_options()`` on a Fragment or
    an embedded Flow): a condition on the context, conditions on other tasks' outputs, a
    timeout on the group's wall time, a trigger rule for its entry, and context defaults."""

    __slots__ = ("condition", "context", "guards", "name", "retries", "timeout", "trigger")

    def __init__(self, name: str, condition: Callable[[Mapping[str, Any]], Any] | None = None,
                 guards: tuple[Guard, ...] = (), timeout: float | None = None,
                 trigger: str | None = None,
                 context: Mapping[str, Any] | None = None, retries: int = 0) -> None:
        self.name = name
        self.retries = retries
        self.condition = condition
        self.guards = guards
        self.timeout = timeout
        self.trigger = trigger
        self.context = context

    def evolve(self, **changes: Any) -> Unit:
        u = object.__new__(Unit)
        for slot in Unit.__slots__:
            setattr(u, slot, changes.get(slot, getattr(self, slot)))
        return u


class Group:
    """A unit as materialized: its options, its member task ids and its entry tasks (those
    the tasks before the group link to)."""

    __slots__ = ("members", "sources", "unit")

    def __init__(self, unit: Unit, members: tuple[str, ...], sources: tuple[str, ...]) -> None:
        self.unit = unit
        self.members = members
        self.sources = sources


class _Grouped:
    """``.when()`` and ``.with_options()`` for a group of tasks (a Fragment or a Flow)."""

    __slots__ = ()

    def _unit(self) -> Unit:
        raise NotImplementedError

    def _with_unit(self, unit: Unit) -> Any:
        raise NotImplementedError

    def when(self, predicate: Callable[..., Any] | None = None, *,
             on: Task | Ref | None = None, equals: Any = _MISSING) -> Any:
        """Run the group only if the condition holds when its first task is ready; else every
        task of it is skipped. Same forms as :meth:`Task.when`."""
        unit = self._unit()
        guard = _condition(f"group {unit.name!r}", predicate, on, equals)
        if guard is not None:
            return self._with_unit(unit.evolve(guards=(*unit.guards, guard)))
        old = unit.condition
        both = predicate if old is None else (lambda c: old(c) and predicate(c))  # type: ignore
        return self._with_unit(unit.evolve(condition=both))

    def with_options(self, *, timeout: float | None = None, retries: int | None = None,
                     trigger: str | None = None, name: str | None = None,
                     **options: Any) -> Any:
        """Options of the group as a unit: ``timeout`` (seconds for the group's wall time per
        attempt, from its first task's start; its running tasks are cancelled and end
        ``timed_out``), ``retries`` (re-runs of the group's failed part: its failed,
        timed-out and cancelled tasks and what depends on them inside the group; its
        completed tasks are kept), ``trigger`` (the rule its entry tasks apply to the tasks
        before the group) and ``name`` (shown in reasons)."""
        unit = self._unit()
        if options:
            msg = (f"group {unit.name!r}: with_options() takes timeout, retries, trigger and "
                   f"name; got {', '.join(options)} (set per-task options on the tasks)")
            raise CompositionError(msg)
        changes: dict[str, Any] = {}
        if retries is not None:
            if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
                msg = f"group {unit.name!r}: retries={retries!r} is invalid: expected an int >= 0"
                raise CompositionError(msg)
            changes["retries"] = retries
        if timeout is not None:
            ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
            if not ok or not 0 < timeout < float("inf"):
                msg = f"group {unit.name!r}: timeout={timeout!r} is invalid: expected seconds > 0"
                raise CompositionError(msg)
            changes["timeout"] = float(timeout)
        if trigger is not None:
            changes["trigger"] = _trigger(f"group {unit.name!r}", trigger)
        if name is not None:
            if not isinstance(name, str) or not name:
                msg = f"group name must be a non-empty string, got {name!r}"
                raise CompositionError(msg)
            changes["name"] = name
        return self._with_unit(unit.evolve(**changes))


class Fragment(_Composable, _Grouped):
    """Tasks composed with ``>>`` (kind ``"then"``) or ``|`` (kind ``"par"``); with
    ``.when()``/``.with_options()`` the group runs as one unit."""

    __slots__ = ("_graph", "kind", "parts", "unit")

    def __init__(self, kind: str, parts: tuple[Task | Fragment, ...],
                 unit: Unit | None = None) -> None:
        self.kind = kind
        self.parts = parts
        self.unit = unit
        self._graph: Graph | None = None

    def _unit(self) -> Unit:
        return self.unit or Unit(f"({_expr(self, 4)})")

    def _with_unit(self, unit: Unit) -> Fragment:
        return Fragment(self.kind, self.parts, unit)

    def __repr__(self) -> str:
        return f"<Fragment {_expr(self)}: {_counts(self)}>"


def _counts(item: Any) -> str:
    """``"3 tasks, 2 edges"``; a repr must not raise, so a clash of ids is shown instead."""
    try:
        g = materialize(item)
    except DuplicateTaskError as exc:
        return f"invalid, two different tasks are named {exc.task_id!r}"
    return f"{len(g.tasks)} tasks, {sum(map(len, g.preds.values()))} edges"


def _expr(root: Task | Fragment, limit: int = 12) -> str:
    """The expression as Python grouped it, e.g. ``(a >> b) | c``; long ones are elided."""
    out: list[str] = []
    stack: list[Any] = [(root, None, True)]
    shown = 0
    while stack:
        entry = stack.pop()
        if isinstance(entry, str):
            out.append(entry)
            continue
        item, parent, first = entry
        if isinstance(item, Task):
            shown += 1
            out.append(item.id if shown <= limit else "")
            if shown == limit + 1:
                out.append("...")
            continue
        sep = " >> " if item.kind == "then" else " | "
        # Python groups `a >> b >> c` as `(a >> b) >> c`: a first part of the same kind needs
        # no parentheses, any other nested fragment does, so the text re-parses the same way.
        wrap = parent is not None and (parent != item.kind or not first)
        seq: list[Any] = [")"] if wrap else []
        for i, part in enumerate(reversed(item.parts)):
            seq.append((part, item.kind, i == len(item.parts) - 1))
            if i < len(item.parts) - 1:
                seq.append(sep)
        if wrap:
            seq.append("(")
        stack.extend(seq)
    text = "".join(out)
    return text if shown <= limit else text[:200]


def _coerce(item: Any, other: Any = None) -> Task | Fragment:
    if isinstance(item, (Task, Fragment)):
        return item
    if isinstance(item, Flow):
        return item._part()
    if getattr(type(item), "_flowdsl_stage", False):  # a Tool: a pipeline stage
        return item.stage()
    if isinstance(item, (list, tuple)):
        if not item:
            msg = "cannot compose an empty list of tasks"
            raise CompositionError(msg)
        return parallel(*item)
    got = f"{type(item).__name__} {item!r}"[:80]
    msg = f"cannot compose {got}: expected a Task, Tool, Fragment, Flow or a list of them"
    if other is not None:
        msg += f" (composing with {other!r})"
    raise CompositionError(msg)


def then(left: Any, right: Any) -> Fragment:
    """``left >> right``: every sink of ``left`` runs before every source of ``right``."""
    return _pair("then", left, right)


def _pair(kind: str, left: Any, right: Any) -> Fragment:
    # The binary operators' path: Tasks and Fragments need no coercion (the usual case in a
    # loop such as `flow = flow | t`), so skip _coerce's checks for them.
    nodes = _NODES
    a = left if left.__class__ in nodes else _coerce(left, right)
    b = right if right.__class__ in nodes else _coerce(right, left)
    return Fragment(kind, (a, b))


def chain(*items: Any) -> Fragment:
    """``chain(a, b, c)`` is ``a >> b >> c``, built in one step for long or generated lists."""
    return _nary("then", items)


def parallel(*items: Any) -> Fragment:
    """``parallel(a, b, c)`` is ``a | b | c``, built in one step."""
    return _nary("par", items)


def _nary(kind: str, items: tuple[Any, ...]) -> Fragment:
    if not items:
        msg = f"{'chain' if kind == 'then' else 'parallel'}() needs at least one task"
        raise CompositionError(msg)
    parts = tuple(_coerce(i) for i in items)
    return Fragment(kind, parts)


_NODES = frozenset({Task, Fragment})


class Flow(_Composable, _Grouped):
    """A named workflow around a composition; it can itself be embedded in a larger one.

    Embedded, its ``context`` gives defaults merged under the run's context (the run's
    values win), and ``.when()``/``.with_options()`` make it one unit (see
    :class:`Fragment`).

    Args:
        name: the flow's name (used by history and reports).
        fragment: a Task, Tool, Fragment or list to run.
        description: free text.
        mode, context, resources, max_concurrency: defaults for :func:`flowdsl.run`.
    """

    __slots__ = ("_as_part", "context", "description", "fragment", "max_concurrency", "mode",
                 "name", "resources", "unit")

    def __init__(self, name: str, fragment: Any, description: str = "", *,
                 mode: str | None = None, context: Mapping[str, Any] | None = None,
                 resources: Mapping[str, int] | None = None,
                 max_concurrency: int | None = None) -> None:
        if not isinstance(name, str) or not name:
            msg = f"Flow name must be a non-empty string, got {name!r}"
            raise CompositionError(msg)
        self.name = name
        self.fragment: Task | Fragment = _coerce(fragment)
        self.description = description
        self.mode = mode
        self.context = dict(context) if context else None
        self.resources = dict(resources) if resources else None
        self.max_concurrency = max_concurrency
        self.unit: Unit | None = None
        self._as_part: Task | Fragment | None = None

    def _unit(self) -> Unit:
        return self.unit or Unit(self.name)

    def _with_unit(self, unit: Unit) -> Flow:
        f = object.__new__(Flow)
        for slot in Flow.__slots__:
            object.__setattr__(f, slot, getattr(self, slot))
        f.unit = unit
        f._as_part = None
        return f

    def _part(self) -> Task | Fragment:
        """What the flow is inside a composition: its fragment, wrapped as a group when it
        is a unit or brings context defaults (built once: a Fragment caches its graph)."""
        if self.unit is None and not self.context:
            return self.fragment
        if self._as_part is None:
            unit = (self.unit or Unit(self.name)).evolve(context=self.context)
            self._as_part = Fragment("then", (self.fragment,), unit)
        return self._as_part

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {_counts(self)}>"

    def to_dict(self) -> dict[str, Any]:
        """The flow as a workflow document (see :func:`flowdsl.load_flow`)."""
        return hooks.get("flow_to_dict")(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return hooks.get("flow_mimebundle")(self)


class Graph:
    """A flattened composition: tasks in insertion order and each task's predecessors.

    Attributes:
        tasks: id -> Task, in the order the tasks appear in the expression.
        preds: id -> predecessor ids (argument references first, then ``>>`` edges, each in
            the order it was written).
        sources / sinks: the ids of the composition's first / last tasks (those ``>>`` links
            to); computed on first use, as planning does not need them.
    """

    __slots__ = ("_ropes", "_sinks", "_sources", "groups", "preds", "tasks")

    def __init__(self, tasks: dict[str, Task], preds: dict[str, dict[str, None]],
                 src: Any, snk: Any, groups: tuple[Group, ...] = ()) -> None:
        self.tasks = tasks
        self.preds = preds
        self.groups = groups  # the units (Fragments and Flows with unit options), inner first
        self._ropes = (src, snk)
        self._sources: list[str] | None = None
        self._sinks: list[str] | None = None

    @property
    def sources(self) -> list[str]:
        if self._sources is None:
            self._sources = list(dict.fromkeys([t.id for t in _flat(self._ropes[0])]))
        return self._sources

    @property
    def sinks(self) -> list[str]:
        if self._sinks is None:
            self._sinks = list(dict.fromkeys([t.id for t in _flat(self._ropes[1])]))
        return self._sinks


# A rope is a Task, a list of Tasks or a tuple of ropes: the sources or sinks of a fragment,
# left unflattened so that ``|`` over a big group costs O(1) (see materialize).
Rope = Any
_EXIT: Any = object()  # marks, on materialize's stack, that the fragment below it is complete


def _flat(rope: Any) -> list[Task]:
    """The tasks of a rope, left to right, iteratively; a sub-rope met twice is read once."""
    cls = rope.__class__
    if cls is Task:
        return [rope]
    if cls is list:
        return rope
    out: list[Task] = []
    seen: set[int] = set()
    stack = [rope]
    while stack:
        r = stack.pop()
        while r.__class__ is tuple:  # descend along the first part; the rest waits on the stack
            if id(r) in seen:
                break
            seen.add(id(r))
            if len(r) == 2:
                stack.append(r[1])
            else:
                stack.extend(r[:0:-1])
            r = r[0]
        else:
            if r.__class__ is Task:
                out.append(r)
            else:
                out.extend(r)
    return out


def _who(t: Task) -> str:
    fn = t.tool.fn
    return f"{t.tool.name} ({getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')})"


def _add(task: Task, tasks: dict[str, Task], preds: dict[str, dict[str, None]]) -> None:
    """Add ``task`` and, iteratively, the tasks its arguments refer to."""
    todo = [task]
    while todo:
        t = todo.pop()
        seen = tasks.get(t.id)
        if seen is t:
            continue
        if seen is not None:
            msg = (f"two different tasks in one flow are named {t.id!r}: tools {_who(seen)} "
                   f"and {_who(t)}; use .named() to tell them apart")
            raise DuplicateTaskError(msg, t.id)
        tasks[t.id] = t
        if t.upstream:
            preds[t.id] = dict.fromkeys([up.id for up in t.upstream])
            todo.extend(reversed(t.upstream))
        else:
            preds[t.id] = {}


def _link(left: Any, right: Any, preds: dict[str, dict[str, None]]) -> None:
    """Edges from every task of rope ``left`` to every task of rope ``right``."""
    lefts = [a.id for a in _flat(left)]
    for b in _flat(right):
        pb = preds[b.id]
        for a in lefts:
            pb[a] = None


def _group(frag: Fragment, sources: Any, tasks: dict[str, Task],
           preds: dict[str, dict[str, None]]) -> Group:
    """The group of a unit fragment whose parts are all materialized: its members (every task
    composed inside it), its entry tasks, and edges from the tasks its conditions read."""
    unit = frag.unit
    assert unit is not None
    members: dict[str, None] = {}
    stack: list[Any] = [frag]
    while stack:
        node = stack.pop()
        if node.__class__ is Task:
            members[node.id] = None
        else:
            stack.extend(reversed(node.parts))
    entry = tuple(dict.fromkeys(t.id for t in _flat(sources)))
    for g in unit.guards:  # the group waits for the tasks its conditions read
        on = g.on if isinstance(g.on, Task) else g.on.task
        _add(on, tasks, preds)
        for s in entry:
            if s != on.id:
                preds[s][on.id] = None
    if unit.retries:
        # A retried group runs as one piece once it is entered, so every input it takes
        # from outside must be ready by then: its entry tasks wait for all of them. (The
        # tasks `>>` links to the group later are linked to every entry task anyway.)
        outside = [p for m in members for p in preds[m] if p not in members]
        for s in entry:
            for p in outside:
                preds[s][p] = None
    return Group(unit, tuple(members), entry)


def materialize(item: Any) -> Graph:
    """Flatten a composition into tasks and edges, iteratively, in O(tasks + edges).

    One depth-first walk, left to right, adds the tasks in the order they appear in the
    expression and links each ``>>`` once all of its parts are complete. The sources and
    sinks of a ``|`` group are kept as ropes (tuples of its parts' ropes) rather than
    concatenated lists, so a loop of ``flow = flow | t`` stays linear. A fragment used in
    several places is walked once, and nothing in it is mutated.
    """
    root = _coerce(item)
    if root.__class__ is Fragment and root._graph is not None:
        return root._graph
    tasks: dict[str, Task] = {}
    preds: dict[str, dict[str, None]] = {}
    ends: dict[int, tuple[Any, Any]] = {}  # id(fragment) -> (sources rope, sinks rope)
    groups: list[Group] = []
    stack: list[Any] = [root]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        if node.__class__ is Task:
            seen = tasks.get(node.id)
            if seen is None and not node.upstream:  # the common case, inlined
                tasks[node.id] = node
                preds[node.id] = {}
            elif seen is not node:
                _add(node, tasks, preds)
        elif node is _EXIT:  # every part of the fragment below is complete
            frag = pop()
            parts = frag.parts
            p = parts[0]
            first, left = (p, p) if p.__class__ is Task else ends[id(p)]
            if frag.kind == "then":
                for k in range(1, len(parts)):
                    p = parts[k]
                    src, snk = (p, p) if p.__class__ is Task else ends[id(p)]
                    if left.__class__ is Task and src.__class__ is Task:
                        preds[src.id][left.id] = None
                    else:
                        _link(left, src, preds)
                    left = snk
                ends[id(frag)] = (first, left)
            elif len(parts) == 2:
                p = parts[1]
                src, snk = (p, p) if p.__class__ is Task else ends[id(p)]
                ends[id(frag)] = ((first, src), (left, snk))
            else:
                pairs = [(p, p) if p.__class__ is Task else ends[id(p)] for p in parts]
                ends[id(frag)] = (tuple([s for s, _ in pairs]), tuple([s for _, s in pairs]))
            if frag.unit is not None:
                groups.append(_group(frag, ends[id(frag)][0], tasks, preds))
        elif id(node) not in ends:  # a fragment is never inside itself: no cycle check
            push(node)
            push(_EXIT)
            extend(node.parts[::-1])
    src, snk = (root, root) if root.__class__ is Task else ends[id(root)]
    g = Graph(tasks, preds, src, snk, tuple(groups))
    if root.__class__ is Fragment:
        root._graph = g
    return g
