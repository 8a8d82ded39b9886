"""Compose: Task (one node) and Fragment (tasks composed with ``>>`` and ``|``).

Composition is O(1) per operator: a Fragment is an immutable tree over its parts, so a loop of
``flow = flow >> t`` over 100,000 tasks is linear overall. The tree is flattened into tasks and
edges only when needed (:func:`materialize`), iteratively, so a deep tree needs no recursion.

Node identity: the same Task object used twice is one node; two different Task objects with
the same explicit id in one flow are an error (:class:`~flowdsl.DuplicateTaskError`).

Ids: a Task holds only the id given with ``.named()`` (else ``None``); a Task is immutable and
may sit in several flows, so the id of an unnamed task is the flow's business. It is given when
the flow is materialized, from the flow's structure alone: the tool's name, numbered among the
tasks of that name in the order a walk of the expression first meets them (``fetch``,
``fetch_2``), skipping every explicit id; automatic ids inside an embedded :class:`Flow` get
its name as a prefix (``ingest.fetch``), explicit ones stay as given. The same flow built
again, in any process, gets the same ids.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, cast, overload

from .._base import hooks
from .._base.errors import (
    CompositionError,
    DuplicateTaskError,
    TaskInputError,
    ToolDefinitionError,
    exc_text,
)
from .._base.frozen import Frozen
from .._base.limits import encodable
from .._base.typed import Self, Unpack
from .spec import (
    OPTIONS,
    TRIGGERS,
    Backoff,
    TaskOptions,
    ToolLike,
    ToolSpec,
    _backoff,
    document_options,
)
from .walk import nodes

__all__ = ["CtxRef", "Each", "Flow", "Fragment", "Guard", "MapSpec", "Ref", "SubMap", "Task",
           "Unmapped", "UpstreamRef", "chain", "ctx", "each", "eval_condition", "materialize",
           "parallel", "unmapped", "upstream"]

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()
_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")

if TYPE_CHECKING:
    # For type checkers, a Task, a projection or a ctx() reference stands for its value: it is
    # accepted for a parameter of any type (a tool's own arguments are still checked).
    _Placeholder = Any
else:
    class _Placeholder:
        __slots__ = ()


# -- guard rails: a Task or a projection stands for a value that exists only at run time ------
_BINARY = {"add": "+", "sub": "-", "mul": "*", "matmul": "@", "truediv": "/",
           "floordiv": "//", "mod": "%", "divmod": "divmod()", "pow": "**", "lshift": "<<",
           "and": "&", "xor": "^"}
_UNARY = {"neg": "unary -", "pos": "unary +", "abs": "abs()", "invert": "~", "int": "int()",
          "float": "float()", "complex": "complex()", "index": "an index", "round": "round()"}
_ORDER = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _describe(value: Any) -> str:
    what = f"the projection {value!r}" if isinstance(value, Ref) else f"task {value._label!r}"
    return f"{what} stands for a value that exists only when the flow runs"


def _expr_of(value: Any) -> str:
    return repr(value) if isinstance(value, Ref) else value._label


def _refuse_op(symbol: str) -> Callable[..., NoReturn]:
    def refuse(self: Any, *other: Any) -> NoReturn:
        msg = (f"cannot use {symbol} on a flowdsl placeholder: {_describe(self)}. Write a "
               "tool that computes with the value and pass the task to it: "
               f"compute({_expr_of(self)}) runs compute on the value once it exists")
        raise CompositionError(msg)

    return refuse


def _refuse_order(symbol: str) -> Callable[..., NoReturn]:
    def refuse(self: Any, other: Any) -> NoReturn:
        msg = (f"cannot compare with {symbol}: {_describe(self)}. To decide at run time, put "
               ".when(...) on the task that should depend on it, or write a tool that "
               f"compares and pass the task to it: check({_expr_of(self)})")
        raise CompositionError(msg)

    return refuse


def _no_iter(self: Any) -> NoReturn:
    msg = (f"cannot iterate: {_describe(self)}. To run a tool on each element, map it: "
           f"the_tool.map({_expr_of(self)}); to work on the whole list, write a tool that "
           f"takes it: the_tool({_expr_of(self)})")
    raise CompositionError(msg)


def _no_contains(self: Any, item: Any) -> NoReturn:
    _no_iter(self)  # `in` would fall back to iterating, and Python would reword our message


def _no_len(self: Any) -> NoReturn:
    msg = (f"len() is not known yet: {_describe(self)}. Write a tool that takes the value "
           f"(count({_expr_of(self)}) with @tool def count(rows): return len(rows)), or map "
           f"over it: the_tool.map({_expr_of(self)})")
    raise CompositionError(msg)


def _no_format(self: Any, spec: str) -> NoReturn:
    msg = (f"cannot format into a string (f-string or format()): {_describe(self)}. Pass the "
           "task to a tool that builds the text: "
           f"greet({_expr_of(self)}) with @tool def greet(name): return f'hello {{name}}'")
    raise CompositionError(msg)


def _guard(cls: type, binary: Mapping[str, str]) -> None:
    """Give ``cls`` the operators a user may try on a value (arithmetic, ordering, iteration,
    ``len``, formatting), each raising at once with what to write instead. ``==``, ``!=`` and
    hashing keep their identity meaning: sets and dicts of tasks rely on them."""
    for name, symbol in binary.items():
        setattr(cls, f"__{name}__", _refuse_op(symbol))
        setattr(cls, f"__r{name}__", _refuse_op(symbol))
    for name, symbol in _UNARY.items():
        setattr(cls, f"__{name}__", _refuse_op(symbol))
    for name, symbol in _ORDER.items():
        setattr(cls, f"__{name}__", _refuse_order(symbol))
    specials: dict[str, Callable[..., NoReturn]] = {
        "__iter__": _no_iter, "__contains__": _no_contains, "__len__": _no_len,
        "__format__": _no_format}
    for name, refuse in specials.items():
        setattr(cls, name, refuse)


class Ref(_Placeholder):  # type: ignore[misc]  # Any on purpose: see _Placeholder
    """A projection of a task's output (``task["key"]``, ``task["a"][0]``) used as an argument."""

    __slots__ = ("path", "task")

    def __init__(self, task: Task[Any], path: tuple[Any, ...]) -> None:
        self.task = task
        self.path = path

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self.task, (*self.path, key))

    def __repr__(self) -> str:
        return self.task._label + "".join(f"[{k!r}]" for k in self.path)

    def __bool__(self) -> bool:
        msg = "a flowdsl reference has no truth value; use .when() for conditions"
        raise TypeError(msg)


class CtxRef(_Placeholder):  # type: ignore[misc]  # Any on purpose: see _Placeholder
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
    """Mark a keyword argument of ``tool.map(...)`` as mapped: child *i* receives element
    *i* of ``values`` (zipped with the other mapped values; unequal lengths fail the mapped
    task). Needed in the positional form ``tool.map(values, b=each(...))``, whose other
    keywords go to every child; in the named form ``tool.map(a=..., b=...)`` a list or a
    reference is mapped without it."""
    return Each(values)


class Unmapped:
    """An argument of :meth:`Tool.map <flowdsl.Tool.map>` given whole to every child (see
    :func:`unmapped`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"unmapped({self.value!r})"


def unmapped(value: Any) -> Unmapped:
    """Pass ``value`` unchanged to every child of ``tool.map(...)``, even a list, a Task, a
    projection or a ``ctx()`` reference, which the named form ``tool.map(a=..., b=...)``
    would map (Prefect's ``unmapped``)."""
    return Unmapped(value)


def _mappable(value: Any) -> bool:
    """Whether the named form of ``tool.map`` maps a keyword given ``value``: a reference (a
    Task, a projection, a ``ctx()``) or a list-like value, not a string, bytes or mapping."""
    if isinstance(value, (Task, Ref, CtxRef)):
        return True
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray,
                                                                  Mapping, Each, Unmapped))


DEFAULT_MAP_LIMIT = 10_000


class MapSpec(Frozen):
    """How a mapped task fans out: the parameters that take one element per child (in the
    positional form the first is the tool's first parameter), whether that one was bound by
    position, the most children running at once, the most children allowed, and whether the
    map was written by name (``tool.map(a=..., b=...)``; messages then name the parameters as
    written)."""

    __slots__ = ("limit", "max_parallel", "named", "params", "positional", "sub")

    params: tuple[str, ...]
    positional: bool
    max_parallel: int | None
    limit: int
    named: bool
    sub: Any  # a mapped sub-flow's SubMap (below, with Flow.map), else None

    def __init__(self, params: tuple[str, ...], positional: bool,
                 max_parallel: int | None = None, limit: int = DEFAULT_MAP_LIMIT, *,
                 named: bool = False, sub: Any = None) -> None:
        s = object.__setattr__
        s(self, "params", params)
        s(self, "positional", positional)
        s(self, "max_parallel", max_parallel)
        s(self, "limit", limit)
        s(self, "named", named)
        s(self, "sub", sub)

    def _copy_hint(self) -> str:
        return ("make a changed copy: mapped_task.with_options(max_parallel=..., "
                "max_children=...)")

    def label(self, name: str) -> str:
        """A mapped parameter as the user wrote it: ``each(b)`` for a keyword of the
        positional form, else its name."""
        return repr(name) if self.named or name == self.params[0] else f"each({name})"

    def not_a_list(self, name: str) -> str:
        """What to add when parameter ``name`` did not receive a list at run time: in the
        named form, why it is mapped and how to pass it whole instead."""
        if not self.named:
            return ""
        return (f"; {name!r} is mapped because the map was given a list or a reference for "
                "it: wrap it in flowdsl.unmapped(...) to pass the value whole to every child")

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
                       changes.get("max_children", self.limit), named=self.named,
                       sub=self.sub)


class Guard:
    """A condition on another task's output (``.when(on=task, ...)``, :func:`switch`): the
    task runs only if ``test(value of on)`` is true; else it is skipped with the reason
    ``reason(name of on, value)``."""

    __slots__ = ("fail", "inherit", "on", "reason", "test")

    def __init__(self, on: Task[Any] | Ref, test: Callable[[Any], Any],
                 reason: Callable[[str, Any], str], *, inherit: bool = False,
                 fail: Callable[[str, Any], str | None] | None = None) -> None:
        self.on = on
        self.test = test
        self.reason = reason
        self.inherit = inherit  # the tasks skipped downstream repeat the reason
        # When the test is false: an error message (the task fails, e.g. a switch that
        # matched no case) or None (it is skipped).
        self.fail = fail


def _both(old: Callable[..., Any] | None,
          predicate: Callable[..., Any] | None) -> Callable[..., Any]:
    """A second ``.when(predicate)`` on the context: both conditions must hold."""
    new = cast("Callable[..., Any]", predicate)  # _condition refused a non-callable
    return new if old is None else (lambda c: old(c) and new(c))


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


def eval_condition(predicate: Any, value: Any, what: str) -> bool:
    """The truth of ``predicate(value)`` for a task's or a group's condition; whatever that
    raises (taking the truth too: a Task has none) becomes a :class:`TaskInputError` saying
    which condition (``what``) raised what."""
    try:
        return bool(predicate(value))
    except Exception as exc:
        msg = f"{what} raised {type(exc).__name__}: {exc_text(exc)}"
        raise TaskInputError(msg) from exc


class UpstreamRef:
    """The final statuses of a task's upstream tasks, read when it starts (see
    :func:`upstream`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "upstream()"


_UPSTREAM = UpstreamRef()


def upstream() -> UpstreamRef:
    """Refer to the final statuses of the task's upstream tasks: the tool receives a dict of
    task id -> :class:`~flowdsl.TaskStatus` (a str enum: ``"completed"``, ``"failed"``, ...).
    Meant for joins that run after failures (``trigger="all_done"`` or ``"one_failed"``):

        report(states=upstream()).with_options(trigger="all_done")
    """
    return _UPSTREAM


def _scan(value: Any, out: list[Task[Any]], needs: list[str], tools: list[Any],
          embeds: list[Any] | None = None) -> bool:
    """Collect, left to right, the tasks ``value`` refers to (inside any containers the
    argument walker knows), the context keys it reads without a default, any Tool passed
    uncalled, and in ``embeds`` the Flows and Fragments passed as values (their last tasks
    count as referred to); True if it holds any reference at all."""
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
            if v.default is _MISSING:
                needs.append(v.key)
        elif cls is UpstreamRef:
            found = True
        elif cls is Each or cls is Unmapped:
            what = "a mapped argument" if cls is Each else "an argument given to every child"
            msg = (f"{v!r} marks {what} of tool.map(...); it cannot be used in a plain tool "
                   "call or inside another value")
            raise CompositionError(msg)
        elif cls is Flow or cls is Fragment:
            if embeds is not None:
                g = materialize(v)
                embeds.append(v)
                out.extend([g.tasks[s] for s in g.sinks])
            found = True
        elif type(v) is not cls and getattr(type(v), "_flowdsl_stage", False):
            tools.append(v)  # a proxy (a Tool) reports its function's class: only they differ
    return found


def _callable_param(tool: ToolLike, param: str) -> bool:
    """Whether ``param`` of ``tool`` is annotated as taking a callable (then a Tool is a fine
    argument value: the function itself is wanted)."""
    p = tool.signature.parameters.get(param)
    if p is None or p.annotation is p.empty:
        return False
    try:
        import typing

        hint: Any = typing.get_type_hints(tool.fn).get(param, p.annotation)
    except Exception:  # an annotation that does not evaluate: read its text
        hint = p.annotation
    return "Callable" in str(hint) or hint is callable


def _refuse_tools(tool: ToolLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise for a Tool passed uncalled as an argument, unless its parameter takes a callable
    (only reached when one was found, so binding again here costs nothing in the usual case)."""
    bound = tool.signature.bind_partial(*args, **kwargs).arguments
    for param, value in bound.items():
        found: list[Any] = []
        _scan(value, [], [], found)
        if found and not _callable_param(tool, param):
            name = found[0].name
            msg = (f"cannot call tool {tool.name!r}: argument {param!r} is the tool {name!r} "
                   f"itself, not a task; did you mean {name}()? A tool runs only when called "
                   f"({name}(...) makes a task whose output is passed in); to pass the function "
                   f"itself, annotate {param!r} as a Callable")
            raise CompositionError(msg)


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
        rest = [p.name for p in free[1:] if p.default is p.empty]
        if rest:
            every = ", ".join(f"{n}=..." for n in (stage_param, *rest))
            msg = (f"tool {tool.name!r} used as a pipeline stage receives one value (the "
                   f"previous stage's output, as {stage_param!r}) but also needs "
                   f"{', '.join(rest)}; call it: {tool.name}({every}), or bind the rest and "
                   f"keep it a stage: {tool.name}.stage({', '.join(f'{n}=...' for n in rest)})")
            raise CompositionError(msg)
    return ba.args, ba.kwargs, stage_param


class _Composable:
    """``>>`` and ``|`` for tasks, fragments and flows; both return new values."""

    __slots__ = ()

    # A Task is accepted wherever its value is for type checkers: it gets an overload alone.
    @overload
    def __rshift__(self, other: Task[S]) -> Fragment[S]: ...
    @overload
    def __rshift__(self, other: Fragment[S] | Flow[S]) -> Fragment[S]: ...
    @overload
    def __rshift__(self, other: Any) -> Fragment[Any]: ...

    def __rshift__(self, other: Any) -> Fragment[Any]:
        return then(self, other)

    def __rrshift__(self, other: Any) -> Fragment[Any]:
        return then(other, self)

    def __or__(self, other: Any) -> Fragment[list[Any]]:
        return _pair("par", self, other)

    def __ror__(self, other: Any) -> Fragment[list[Any]]:
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
        text: str = hooks.get("to_mermaid")(self.plan())
        return text

    def to_dot(self) -> str:
        """The DAG as graphviz dot text."""
        text: str = hooks.get("to_dot")(self.plan())
        return text


class Task(_Composable, _Placeholder, Frozen, Generic[R_co]):  # type: ignore[misc]  # see _Placeholder
    """One node: a tool with bound arguments and per-task settings. Immutable; every setter
    returns a new Task (with the same explicit id, if it has one).

    ``id`` is the id given with :meth:`named`, else ``None``: the id of an unnamed task is
    given by the flow it is planned in (see the module docstring); ``plan.id_of(task)`` and
    ``result.id_of(task)`` tell it.
    """

    __slots__ = ("args", "condition", "dynamic", "embeds", "fan", "guards", "id", "kwargs",
                 "needs", "spec", "stage_param", "stem", "to_context_map", "tool", "trigger",
                 "upstream")

    id: str | None
    stem: str  # what an automatic id is made from: the tool's name
    needs: tuple[str, ...]  # context keys the arguments read with no default
    tool: ToolLike
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spec: ToolSpec
    stage_param: str | None
    upstream: tuple[Task[Any], ...]
    dynamic: bool
    condition: Callable[[Mapping[str, Any]], Any] | None
    to_context_map: Mapping[str, str] | str | None
    trigger: str
    fan: MapSpec | None
    guards: tuple[Guard, ...]
    embeds: tuple[Any, ...]  # Flows / Fragments passed as arguments: they join its flow

    @classmethod
    def _bind(cls, tool: ToolLike, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              partial: bool) -> Task[Any]:
        plain = tool._self_plain  # set when the signature has only plain parameters
        if plain is not None and not partial:
            bound = _bind_plain(tool, plain, args, kwargs)
            args, kwargs, stage_param = (), bound, None
        else:
            args, kwargs, stage_param = _bind_inspect(tool, args, kwargs, partial)
        refs: list[Task[Any]] = []
        needs: list[str] = []
        tools: list[Any] = []
        embeds: list[Any] = []
        dynamic = _scan(args, refs, needs, tools, embeds) if args else False
        for v in kwargs.values():
            if v.__class__ not in _ATOMS:  # only then can it hold a reference: scan it all
                dynamic = _scan(kwargs, refs, needs, tools, embeds) or dynamic
                break
        if tools:
            _refuse_tools(tool, args, kwargs)
        t = object.__new__(_NewTask)
        t.spec = spec = tool._self_spec
        t.id = None
        t.stem = spec.name
        t.needs = tuple(dict.fromkeys(needs)) if needs else ()
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
        t.embeds = tuple(embeds) if embeds else ()
        t.upstream = tuple(dict.fromkeys(refs)) if refs else ()
        t.__class__ = Task  # sealed from here on: Frozen.__setattr__ refuses changes
        return t

    def _replace(self, **changes: Any) -> Task[R_co]:
        t = object.__new__(_NewTask)
        for slot in Task.__slots__:
            setattr(t, slot, changes.get(slot, getattr(self, slot)))
        t.__class__ = Task
        return t

    def _copy_hint(self) -> str:
        return ("make a changed copy with .named(...), .when(...), .with_options(...) or "
                ".to_context(...)")

    def _what(self) -> str:
        return f"Task {self._label!r}"

    @property
    def _label(self) -> str:
        """The explicit id, else the tool's name: how messages name a task before it has a
        flow (and so an id)."""
        return self.id if self.id is not None else self.stem

    def named(self, task_id: str) -> Task[R_co]:
        """The same task under the id ``task_id``."""
        if not isinstance(task_id, str) or not task_id or not encodable(task_id):
            msg = (f"task id must be a non-empty string that UTF-8 can encode (no lone "
                   f"surrogates), got {task_id!r}")
            raise CompositionError(msg)
        return self._replace(id=task_id)

    def when(self, predicate: Callable[..., Any] | None = None, *,
             on: Task[Any] | Ref | None = None, equals: Any = _MISSING) -> Task[R_co]:
        """Run only if the condition holds when the task is ready; else skip it (and, by
        default, the tasks downstream of it).

        ``.when(predicate)`` tests ``predicate(context)``; ``.when(predicate, on=task)`` tests
        ``predicate(output of task)``; ``.when(on=task, equals=value)`` tests
        ``output == value``. A task named by ``on`` runs before this one.
        """
        guard = _condition(f"task {self._label!r}", predicate, on, equals)
        if guard is not None:
            return self._guarded(guard)
        old = self.condition
        cond = _both(old, predicate)
        return self._replace(condition=cond)

    def _guarded(self, guard: Guard) -> Task[R_co]:
        up = guard.on if isinstance(guard.on, Task) else guard.on.task
        upstream = self.upstream if up in self.upstream else (*self.upstream, up)
        return self._replace(guards=(*self.guards, guard), upstream=upstream)

    def to_context(self, mapping: str | Mapping[str, str]) -> Task[R_co]:
        """Store the output in the run context: all of it under a key (``"key"``), or some of
        its keys (``{"output_key": "context_key"}``)."""
        if isinstance(mapping, str):
            return self._replace(to_context_map=mapping)
        if isinstance(mapping, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
            return self._replace(to_context_map=dict(mapping))
        msg = (f"task {self._label!r}: .to_context() expects a key or a mapping of output key -> "
               f"context key, got {mapping!r}")
        raise CompositionError(msg)

    def with_options(self, *, trigger: str | None = None,
                     **options: Unpack[TaskOptions]) -> Task[R_co]:
        """Override tool options for this task only, and set its ``trigger`` rule. The
        options are the per-task rows of ``flowdsl._graph.spec.OPTIONS``, which validates
        them:
        {options}.
        A mapped task also takes ``max_parallel`` (most children running
        at once) and ``max_children`` (the fan-out limit, default 10,000)."""
        # a plain dict: a caller without a type checker may pass any name (refused below)
        given: dict[str, Any] = dict(options)
        if any(k in OPTIONS and not OPTIONS[k].per_task for k in given):
            msg = f"task {self._label!r}: use .named() to rename a task"
            raise CompositionError(msg)
        changes: dict[str, Any] = {}
        fan_opts = {k: given.pop(k) for k in _FAN_OPTIONS if k in given}
        if fan_opts:
            if self.fan is None:
                msg = (f"task {self._label!r}: {', '.join(fan_opts)} applies to a mapped task "
                       "(tool.map(...)) only")
                raise CompositionError(msg)
            changes["fan"] = self.fan.evolve(self._label, **fan_opts)
        if given and self.fan is not None and self.fan.sub is not None:
            msg = (f"task {self._label!r} is a mapped sub-flow: it takes max_parallel, "
                   f"max_children and trigger; {', '.join(given)} belong on its tasks, or on "
                   "the sub-flow as a unit (.with_options(timeout=, retries=, backoff=), "
                   "applied per element)")
            raise CompositionError(msg)
        if given:
            changes["spec"] = self.spec.evolve(**given)
        if trigger is not None:
            changes["trigger"] = _trigger(f"task {self._label!r}", trigger)
        return self._replace(**changes)

    @classmethod
    def _map(cls, tool: ToolLike, values: tuple[Any, ...], kwargs: dict[str, Any]) -> Task[Any]:
        """``tool.map(values, **kwargs)`` or ``tool.map(**kwargs)``: one task that runs the
        tool once per element (see :meth:`Tool.map <flowdsl.Tool.map>` for which arguments
        are mapped)."""
        _check_map_names(tool, values, kwargs)
        mapped: list[str] = []
        plain: dict[str, Any] = {}
        args: tuple[Any, ...] = ()
        if values:  # the positional form: the first parameter, and each() keywords
            mapped.append(_first_param(tool, values[0], kwargs))
            # A one-shot iterator (a generator, map(), iter()) is read once, here: kept as
            # it is, the first run would use it up and a second run map over nothing.
            args = (_once(values[0]),)
            for k, v in kwargs.items():
                if v.__class__ is Each:
                    mapped.append(k)
                    plain[k] = _once(v.value)
                else:
                    plain[k] = v.value if v.__class__ is Unmapped else v
        else:  # the named form: a list or a reference is mapped, any other value is not
            for k, v in kwargs.items():
                if v.__class__ is Unmapped:
                    plain[k] = v.value
                elif v.__class__ is Each or _mappable(v):
                    mapped.append(k)
                    plain[k] = _once(v.value if v.__class__ is Each else v)
                else:
                    plain[k] = v
            if not mapped:
                _refuse_no_mapped(tool, kwargs)
        t = cls._bind(tool, args, plain, partial=False)
        return t._replace(fan=MapSpec(tuple(mapped), bool(t.args), named=not values))

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self, (key,))

    def __repr__(self) -> str:
        deps = ", ".join(t._label for t in self.upstream)
        name = repr(self.id) if self.id is not None else "(automatic id)"
        kind = "mapped tool" if self.fan is not None else "tool"
        return f"<Task {name} {kind}={self.tool.name}" + (f" after [{deps}]>" if deps else ">")


Task.with_options.__doc__ = document_options(Task.with_options.__doc__, per_task=True)
_FAN_OPTIONS = ("max_parallel", "max_children")


def _short(value: Any) -> str:
    """An argument as a message shows it: a reference as ``<task>``, else a short repr."""
    if isinstance(value, (Task, Ref)):
        return "<task>"
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _call_text(tool: ToolLike, kwargs: Mapping[str, Any], mapped: str) -> str:
    """``name.map(param=<values>, other=...)``: how to write a map of ``mapped``."""
    rest = "".join(f", {k}={_short(v)}" for k, v in kwargs.items() if k != mapped)
    return f"{tool.name}.map({mapped}=<values>{rest})"


def _plain_names(tool: ToolLike) -> list[str]:
    """The parameters a keyword can name (not ``*args``/``**kwargs``)."""
    return [n for n, p in tool.signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_map_names(tool: ToolLike, values: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before binding, more than one positional value and a keyword that names no
    parameter of the tool or a positional-only one; each message says what to write."""
    params = tool.signature.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = _plain_names(tool)
    if len(values) > 1:
        msg = (f"{tool.name}.map(...) takes at most one positional value, the list for its "
               f"first parameter; to map several parameters, name them (they are zipped): "
               f"{tool.name}.map(" + ", ".join(f"{n}=..." for n in names[:len(values)]) + ")")
        raise CompositionError(msg)
    for k in kwargs:
        p = params.get(k)
        if (p is None and not var_kw) or (p is not None and p.kind is p.VAR_POSITIONAL):
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = (f"cannot map tool {tool.name!r}: it has no parameter {k!r}{hint}; its "
                   f"parameters are {', '.join(names) or '(none)'}")
            raise CompositionError(msg)
        if p is not None and p.kind is p.POSITIONAL_ONLY:
            how = (f"map it by position: {tool.name}.map(<values>)" if names and k == names[0]
                   else "only the first parameter can be mapped, by position")
            msg = (f"cannot map tool {tool.name!r}: parameter {k!r} is positional-only and "
                   f"cannot be named; {how}")
            raise CompositionError(msg)


def _first_param(tool: ToolLike, values: Any, kwargs: Mapping[str, Any]) -> str:
    """The parameter the positional form maps (the tool's first), checked with ``values``."""
    params = tool.signature.parameters
    first = next(iter(params.values()), None)
    names = _plain_names(tool)
    if first is None or first.kind in (first.VAR_KEYWORD, first.KEYWORD_ONLY):
        how = f"; name the parameter to map: {tool.name}.map({names[0]}=<values>)" if names else ""
        msg = (f"cannot map tool {tool.name!r}: it has no positional parameter to "
               f"receive each element{how}")
        raise CompositionError(msg)
    if isinstance(values, (str, bytes, Mapping, Each, Unmapped)):
        msg = (f"cannot map tool {tool.name!r} over {type(values).__name__} "
               f"{values!r}"[:200] + ": expected a Task, a projection task['k'] or a list")
        raise CompositionError(msg)
    if first.name in kwargs:
        others = [n for n in names if n != first.name and n not in kwargs]
        how = _call_text(tool, kwargs, others[0]) if others else f"{tool.name}.map(<name>=...)"
        msg = (f"cannot map tool {tool.name!r}: {tool.name}.map(<values>, ...) maps the values "
               f"to its first parameter {first.name!r}, which is also given as "
               f"{first.name}={_short(kwargs[first.name])}; to map another parameter, name "
               f"it instead: {how}")
        raise CompositionError(msg)
    return first.name


def _refuse_no_mapped(tool: ToolLike, kwargs: Mapping[str, Any]) -> NoReturn:
    """The named form found nothing to map: say which keywords go to every child and why."""
    given = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
    free = [n for n in _plain_names(tool) if n not in kwargs]
    target = free[0] if free else next(iter(kwargs), "<name>")
    msg = (f"{tool.name}.map({given}) maps no parameter: a keyword is mapped when its value is "
           "a list (or other iterable), a Task, a projection or a ctx() reference, or is "
           "wrapped in each(); any other value, or one wrapped in unmapped(), goes to every "
           f"child. Give the values to map by name: {_call_text(tool, kwargs, target)}")
    raise CompositionError(msg)


def _once(values: Any) -> Any:
    """The elements of a one-shot iterator as a list (anything else as it is)."""
    return list(values) if isinstance(values, Iterator) else values


def _trigger(owner: str, trigger: Any) -> str:
    if trigger not in TRIGGERS:
        msg = f"{owner}: unknown trigger rule {trigger!r}; expected one of " + ", ".join(TRIGGERS)
        raise CompositionError(msg)
    return str(trigger)


class _NewTask(Task[Any]):
    """A Task under construction; its class becomes Task once every slot is set."""

    __slots__ = ()
    # object's own slot wrappers, not methods calling them: no Python frame per slot set (both,
    # since one C slot serves setting and deleting: a Python __delattr__ would slow setting)
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__


_guard(Task, _BINARY)
_guard(Ref, {**_BINARY, "rshift": ">>", "or": "|"})  # a projection is an argument, not a stage


class Unit(Frozen):
    """What makes a group of tasks one unit (``.when()``/``.with_options()`` on a Fragment or
    an embedded Flow): a condition on the context, conditions on other tasks' outputs, a
    timeout on the group's wall time, retries (with a backoff between attempts), a trigger
    rule for its entry, and context defaults."""

    __slots__ = ("backoff", "condition", "context", "guards", "name", "retries", "timeout",
                 "trigger")

    name: str
    retries: int
    backoff: Backoff | None
    condition: Callable[[Mapping[str, Any]], Any] | None
    guards: tuple[Guard, ...]
    timeout: float | None
    trigger: str | None
    context: Mapping[str, Any] | None

    def __init__(self, name: str, condition: Callable[[Mapping[str, Any]], Any] | None = None,
                 guards: tuple[Guard, ...] = (), timeout: float | None = None,
                 trigger: str | None = None,
                 context: Mapping[str, Any] | None = None, retries: int = 0,
                 backoff: Backoff | None = None) -> None:
        s = object.__setattr__
        s(self, "name", name)
        s(self, "retries", retries)
        s(self, "backoff", backoff)  # None: a group's next attempt starts at once
        s(self, "condition", condition)
        s(self, "guards", guards)
        s(self, "timeout", timeout)
        s(self, "trigger", trigger)
        s(self, "context", context)

    def _copy_hint(self) -> str:
        return ("make a changed copy: fragment_or_flow.with_options(...) or .when(...) "
                "(they change its unit)")

    evolve = Frozen._evolve


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

    def _root(self) -> Task[Any] | Fragment[Any]:
        raise NotImplementedError

    def when(self, predicate: Callable[..., Any] | None = None, *,
             on: Task[Any] | Ref | None = None, equals: Any = _MISSING) -> Self:
        """Run the group only if the condition holds when its first task is ready; else every
        task of it is skipped. Same forms as :meth:`Task.when`."""
        unit = self._unit()
        guard = _condition(f"group {unit.name!r}", predicate, on, equals)
        if guard is not None:
            src = guard.on if isinstance(guard.on, Task) else guard.on.task
            if src in _composed(self._root()):
                raise _own_member(unit.name, src._label)
            guarded: Self = self._with_unit(unit.evolve(guards=(*unit.guards, guard)))
            return guarded
        old = unit.condition
        both = _both(old, predicate)
        conditioned: Self = self._with_unit(unit.evolve(condition=both))
        return conditioned

    def with_options(self, *, timeout: float | None = None, retries: int | None = None,
                     backoff: Any = None, trigger: str | None = None,
                     name: str | None = None, **options: NoReturn) -> Self:
        """Options of the group as a unit: ``timeout`` (seconds for the group's wall time per
        attempt, from its first task's start; its running tasks are cancelled and end
        ``timed_out``), ``retries`` (re-runs of the group's failed part: its failed,
        timed-out and cancelled tasks and what depends on them inside the group, and for a
        mapped task only its children that did not complete; its completed tasks are kept),
        ``backoff`` (the wait before each re-run, as a task's: seconds, a
        :class:`~flowdsl.Backoff` or a dict of its fields; default none), ``trigger`` (the
        rule its entry tasks apply to the tasks before the group) and ``name`` (shown in
        reasons)."""
        unit = self._unit()
        if options:
            msg = (f"group {unit.name!r}: with_options() takes timeout, retries, backoff, "
                   f"trigger and name; got {', '.join(options)} (set per-task options on the "
                   "tasks)")
            raise CompositionError(msg)
        changes: dict[str, Any] = {}
        if backoff is not None:
            try:
                changes["backoff"] = _backoff(unit.name, backoff)
            except ToolDefinitionError as exc:
                msg = f"group {unit.name!r}: {str(exc).partition(': ')[2]}"
                raise CompositionError(msg) from None
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
        changed: Self = self._with_unit(unit.evolve(**changes))
        return changed


def _composed(root: Task[Any] | Fragment[Any],
              known: dict[int, dict[Task[Any], None]] | None = None) -> dict[Task[Any], None]:
    """The tasks composed (with ``>>``, ``|`` or an embedded Flow) into ``root``, left to
    right, iteratively: a group always holds them, whatever else the walk of a whole flow
    puts in it. ``known`` (id(fragment) -> its composed tasks) holds the answers for the
    groups inside ``root`` already asked: they are copied, not walked again, so the members
    of nested groups cost the size of the answers, not depth x size."""
    out: dict[Task[Any], None] = {}
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if node.__class__ is Task:
            out[node] = None
        elif known is not None and node is not root and id(node) in known:
            out.update(known[id(node)])
        else:
            stack.extend(reversed(node.parts))
    return out


def _own_member(group: str, member: str) -> CompositionError:
    msg = (f"group {group!r} is conditioned on its own member {member!r} (.when(on=...)): a "
           "group's condition is tested before any of its tasks runs, so it cannot wait for "
           f"one of them; compose {member!r} before the group instead, or put the condition "
           "on the tasks after it inside the group")
    return CompositionError(msg)


class Fragment(_Composable, _Grouped, Frozen, Generic[R_co]):
    """Tasks composed with ``>>`` (kind ``"then"``) or ``|`` (kind ``"par"``); with
    ``.when()``/``.with_options()`` the group runs as one unit. For type checkers, ``R_co``
    is the type of the run's ``output``: the last task's for ``a >> b``."""

    __slots__ = ("_graph", "kind", "ns", "parts", "unit")

    def __init__(self, kind: str, parts: tuple[Task[Any] | Fragment[Any], ...],
                 unit: Unit | None = None, ns: str | None = None) -> None:
        # The public constructor; flowdsl itself builds with _new (faster: no call per slot).
        s = object.__setattr__
        s(self, "ns", ns)  # an embedded Flow's name: its tasks' ids get it as a prefix
        s(self, "kind", kind)
        s(self, "parts", parts)
        s(self, "unit", unit)
        s(self, "_graph", None)  # derived: set once by materialize()

    @staticmethod
    def _new(kind: str, parts: tuple[Task[Any] | Fragment[Any], ...],
             unit: Unit | None = None, ns: str | None = None) -> Fragment[Any]:
        """``Fragment(kind, parts, unit, ns)`` on the composition hot path (every ``>>`` and
        ``|``): built as an open _NewFragment, then sealed, as a Task is."""
        f: Fragment[Any] = object.__new__(_NewFragment)
        f.ns = ns
        f.kind = kind
        f.parts = parts
        f.unit = unit
        f._graph = None
        f.__class__ = Fragment
        return f

    ns: str | None
    kind: str
    parts: tuple[Task[Any] | Fragment[Any], ...]
    unit: Unit | None
    _graph: Graph | None

    def _copy_hint(self) -> str:
        return ("compose a new one (a >> b, a | b, chain(...), parallel(...)), or make a "
                "changed copy with .with_options(...) or .when(...)")

    @classmethod
    def _derived(cls) -> tuple[str, ...]:
        return ("_graph",)

    def _unit(self) -> Unit:
        return self.unit or Unit(f"({_expr(self, 4)})")

    def _with_unit(self, unit: Unit) -> Fragment[Any]:
        return Fragment._new(self.kind, self.parts, unit, self.ns)

    def _root(self) -> Task[Any] | Fragment[Any]:
        return self

    def __repr__(self) -> str:
        return f"<Fragment {_expr(self)}: {_counts(self)}>"

    def map(self, *values: Any, **kwargs: Any) -> Task[list[R_co]]:
        """This fragment run once per element of a runtime list, each element as its own chain
        of its tasks (depth-first: element 0 can finish while element 9 starts), as one
        mapped task named after it; its output is the list of the elements' outputs (each
        the fragment's output) in input order. ``.map(values)`` gives each element to the one
        entry task's free parameter (a stage's input); ``.map(url=values, lang="de")`` gives
        each keyword to every entry task with that parameter (mapped when a list or a
        reference, as :meth:`Tool.map <flowdsl.Tool.map>`'s named form). The children run as
        ``name[i].task``; the fragment's ``when``/``timeout``/``retries``/``backoff`` apply per
        element; ``.with_options(max_parallel=N, max_children=M)`` on the mapped task bounds
        the elements in flight and their number."""
        return map_subflow(self, values, kwargs)


class _NewFragment(Fragment[Any]):
    """A Fragment under construction (see :class:`_NewTask`)."""

    __slots__ = ()
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__


def _counts(item: Any) -> str:
    """``"3 tasks, 2 edges"``; a repr must not raise, so a clash of ids is shown instead."""
    try:
        g = materialize(item)
    except DuplicateTaskError as exc:
        return f"invalid, two different tasks are named {exc.task_id!r}"
    return f"{len(g.tasks)} tasks, {sum(map(len, g.preds.values()))} edges"


def _expr(root: Task[Any] | Fragment[Any], limit: int = 12) -> str:
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
            out.append(item._label if shown <= limit else "")
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


def _coerce(item: Any, other: Any = None) -> Task[Any] | Fragment[Any]:
    if isinstance(item, (Task, Fragment)):
        return item
    if isinstance(item, Flow):
        return item._part()
    if getattr(type(item), "_flowdsl_stage", False):  # a Tool: a pipeline stage
        stage: Task[Any] = item.stage()
        return stage
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


def then(left: Any, right: Any) -> Fragment[Any]:
    """``left >> right``: every sink of ``left`` runs before every source of ``right``."""
    return _pair("then", left, right)


def _pair(kind: str, left: Any, right: Any) -> Fragment[Any]:
    # The binary operators' path: Tasks and Fragments need no coercion (the usual case in a
    # loop such as `flow = flow | t`), so skip _coerce's checks for them.
    nodes = _NODES
    a = left if left.__class__ in nodes else _coerce(left, right)
    b = right if right.__class__ in nodes else _coerce(right, left)
    return Fragment._new(kind, (a, b))


def chain(*items: Any) -> Fragment[Any]:
    """``chain(a, b, c)`` is ``a >> b >> c``, built in one step for long or generated lists."""
    return _nary("then", items)


def parallel(*items: Any) -> Fragment[Any]:
    """``parallel(a, b, c)`` is ``a | b | c``, built in one step."""
    return _nary("par", items)


def _nary(kind: str, items: tuple[Any, ...]) -> Fragment[Any]:
    if not items:
        msg = f"{'chain' if kind == 'then' else 'parallel'}() needs at least one task"
        raise CompositionError(msg)
    parts = tuple(_coerce(i) for i in items)
    return Fragment._new(kind, parts)


_NODES = frozenset({Task, Fragment})


class Flow(_Composable, _Grouped, Frozen, Generic[R_co]):
    """A named workflow around a composition; it can itself be embedded in a larger one.

    Embedded, its ``context`` gives defaults merged under the run's context (the run's
    values win), and ``.when()``/``.with_options()`` make it one unit (see
    :class:`Fragment`). Passed as a tool's argument, it joins the flow whole and the argument
    receives its output (its last task's, or a dict by id for several).

    Args:
        name: the flow's name (used by history and reports).
        fragment: a Task, Tool, Fragment or list to run.
        description: free text.
        mode, context, resources, max_concurrency: defaults for :func:`flowdsl.run`.
    """

    __slots__ = ("_as_part", "context", "description", "fragment", "max_concurrency", "mode",
                 "name", "resources", "unit")

    @overload
    def __init__(self: Flow[S], name: str, fragment: Task[S], description: str = "", *,
                 mode: str | None = None, context: Mapping[str, Any] | None = None,
                 resources: Mapping[str, int] | None = None,
                 max_concurrency: int | None = None) -> None: ...
    @overload
    def __init__(self: Flow[S], name: str, fragment: Fragment[S] | Flow[S],
                 description: str = "", *, mode: str | None = None,
                 context: Mapping[str, Any] | None = None,
                 resources: Mapping[str, int] | None = None,
                 max_concurrency: int | None = None) -> None: ...
    @overload
    def __init__(self: Flow[Any], name: str, fragment: Any, description: str = "", *,
                 mode: str | None = None, context: Mapping[str, Any] | None = None,
                 resources: Mapping[str, int] | None = None,
                 max_concurrency: int | None = None) -> None: ...

    def __init__(self, name: str, fragment: Any, description: str = "", *,
                 mode: str | None = None, context: Mapping[str, Any] | None = None,
                 resources: Mapping[str, int] | None = None,
                 max_concurrency: int | None = None, **unknown: Any) -> None:
        if unknown:
            raise _flow_options(name, unknown)
        if not isinstance(name, str) or not name or not encodable(name):
            msg = (f"Flow name must be a non-empty string that UTF-8 can encode (no lone "
                   f"surrogates), got {name!r}")
            raise CompositionError(msg)
        s = object.__setattr__
        s(self, "name", name)
        s(self, "fragment", _coerce(fragment))
        s(self, "description", description)
        s(self, "mode", mode)
        s(self, "context", dict(context) if context else None)
        s(self, "resources", dict(resources) if resources else None)
        s(self, "max_concurrency", max_concurrency)
        s(self, "unit", None)
        s(self, "_as_part", None)  # derived: set once by _part()

    name: str
    fragment: Task[Any] | Fragment[Any]
    description: str
    mode: str | None
    context: dict[str, Any] | None
    resources: dict[str, int] | None
    max_concurrency: int | None
    unit: Unit | None
    _as_part: Fragment[Any] | None

    def _copy_hint(self) -> str:
        return (f"make a changed copy: Flow({self.name!r}, flow.fragment, ...) with the new "
                "settings, or .with_options(...)/.when(...) for its options as a unit")

    def _what(self) -> str:
        return f"Flow {self.name!r}"

    @classmethod
    def _derived(cls) -> tuple[str, ...]:
        return ("_as_part",)

    def _unit(self) -> Unit:
        return self.unit or Unit(self.name)

    def _with_unit(self, unit: Unit) -> Flow[Any]:
        return self._evolve(unit=unit)

    def _root(self) -> Task[Any] | Fragment[Any]:
        return self.fragment

    def _part(self) -> Fragment[Any]:
        """What the flow is inside a composition: its fragment wrapped with its name (the
        prefix of its tasks' ids, when embedded), as a group when it is a unit or brings
        context defaults (built once: a Fragment caches its graph)."""
        part = self._as_part
        if part is None:
            unit = (None if self.unit is None and not self.context else
                    (self.unit or Unit(self.name)).evolve(context=self.context))
            part = Fragment._new("then", (self.fragment,), unit, self.name)
            object.__setattr__(self, "_as_part", part)
        return part

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {_counts(self)}>"

    def map(self, *values: Any, **kwargs: Any) -> Task[list[R_co]]:
        """This flow run once per element of a runtime list, each element as its own chain
        of its tasks, as one mapped task named after the flow: as :meth:`Fragment.map
        <flowdsl.Fragment.map>`, with the flow's ``when``/``timeout``/``retries``/``backoff``
        applied per element."""
        return map_subflow(self, values, kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The flow as a workflow document (see :func:`flowdsl.load_flow`)."""
        document: dict[str, Any] = hooks.get("flow_to_dict")(self)
        return document

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = hooks.get("flow_mimebundle")(self)
        return bundle


_UNIT_OPTIONS = ("timeout", "retries", "backoff", "trigger")


def _flow_options(name: Any, unknown: Mapping[str, Any]) -> CompositionError:
    """Flow() given keywords it does not take: group options belong to .with_options()."""
    unit = {k: v for k, v in unknown.items() if k in _UNIT_OPTIONS}
    msg = f"Flow({name!r}, ...) got unexpected keyword argument(s) {', '.join(unknown)}"
    if unit:
        args = ", ".join(f"{k}={v!r}" for k, v in unit.items())
        msg += (f"; a flow's {', '.join(unit)} apply to it as a unit: write "
                f"Flow({name!r}, ...).with_options({args})")
    if "when" in unknown or "condition" in unknown:
        msg += f"; a condition goes on .when(): Flow({name!r}, ...).when(predicate)"
    msg += ("; Flow() itself takes description, mode, context, resources and "
            "max_concurrency")
    return CompositionError(msg)


class Graph:
    """A flattened composition: tasks in insertion order and each task's predecessors.

    Attributes:
        tasks: id -> Task, dependencies before the tasks whose arguments refer to them, else
            in the order the tasks appear in the expression.
        ids: Task -> its id in this graph (the inverse of ``tasks``).
        preds: id -> predecessor ids (argument references first, then ``>>`` edges, each in
            the order it was written).
        sources / sinks: the ids of the composition's first / last tasks (those ``>>`` links
            to); computed on first use, as planning does not need them.
    """

    __slots__ = ("_ropes", "_sinks", "_sources", "groups", "ids", "preds", "tasks")

    def __init__(self, tasks: dict[str, Task[Any]], ids: dict[Task[Any], str],
                 preds: dict[str, dict[str, None]], src: Any, snk: Any,
                 groups: tuple[Group, ...] = ()) -> None:
        self.tasks = tasks
        self.ids = ids
        self.preds = preds
        self.groups = groups  # the units (Fragments and Flows with unit options), inner first
        self._ropes = (src, snk)
        self._sources: list[str] | None = None
        self._sinks: list[str] | None = None

    @property
    def sources(self) -> list[str]:
        if self._sources is None:
            ids = self.ids
            self._sources = list(dict.fromkeys([ids[t] for t in _flat(self._ropes[0])]))
        return self._sources

    @property
    def sinks(self) -> list[str]:
        if self._sinks is None:
            ids = self.ids
            self._sinks = list(dict.fromkeys([ids[t] for t in _flat(self._ropes[1])]))
        return self._sinks


_EXIT: Any = object()  # marks, on materialize's stack, that the fragment below it is complete
_LEAVE: Any = object()  # marks, on materialize's stack, that the embedded flow below is complete


def _flat(rope: Any) -> list[Task[Any]]:
    """The tasks of a rope, left to right, iteratively; a sub-rope met twice is read once.

    A rope is a Task, a list of Tasks or a tuple of ropes: the sources or sinks of a fragment,
    left unflattened so that ``|`` over a big group costs O(1) (see materialize)."""
    cls = rope.__class__
    if cls is Task:
        return [rope]
    if cls is list:
        tasks: list[Task[Any]] = rope
        return tasks
    out: list[Task[Any]] = []
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


def _who(t: Task[Any]) -> str:
    fn = t.tool.fn
    return f"{t.tool.name} ({getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')})"


class _Clash(Exception):
    """An explicit id met after an automatic id took it: materialize again, reserving it."""


class _Builder:
    """One walk of a composition: gives each task its id and records the edges.

    Ids come from the walk alone (never from what else the process built): an explicit id
    as given, an automatic one the stem numbered by first appearance, skipping ``reserved``
    (the explicit ids of the flow, known after a walk met one too late) and every id taken.
    """

    __slots__ = ("clashed", "composed", "counts", "explicit", "flows", "ids", "mapped", "preds",
                 "reserved", "tasks", "walked")

    def __init__(self, reserved: frozenset[str]) -> None:
        self.tasks: dict[str, Task[Any]] = {}
        self.ids: dict[Task[Any], str] = {}
        self.preds: dict[str, dict[str, None]] = {}
        self.counts: dict[str, int] = {}  # stem -> the last number given to it
        self.flows: dict[str, int] = {}  # the same for the names of embedded flows
        self.explicit: set[str] = set()  # the explicit ids met
        self.clashed = False
        self.reserved = reserved
        self.walked: set[int] = set()  # id() of the flows passed as arguments, once walked
        self.mapped: list[str] = []  # the ids of mapped tasks (their children's ids derive)
        # id(group fragment) -> the tasks composed into it, for the groups around it
        self.composed: dict[int, dict[Task[Any], None]] = {}

    def place(self, t: Task[Any], prefix: str) -> str:
        """Give ``t`` (not yet in the graph) its id and add it."""
        tasks = self.tasks
        key = t.id
        if key is None:
            stem = prefix + t.stem if prefix else t.stem
            counts, reserved = self.counts, self.reserved
            n = counts.get(stem)
            if n is None and stem not in tasks and stem not in reserved:
                key, n = stem, 1
            else:
                n = n or 1
                head, tail = stem, ""
                if stem[-1] == "]":  # the number goes before it: a switch's gate switch_2['a']
                    cut = len(stem) - len(t.stem) + t.stem.find("[")
                    head, tail = stem[:cut], stem[cut:]
                while True:
                    n += 1
                    key = f"{head}_{n}{tail}"
                    if key not in tasks and key not in reserved:
                        break
            counts[stem] = n
        else:  # an explicit id is used as given, also inside an embedded flow
            self.explicit.add(key)
            held = tasks.get(key)
            if held is not None:
                if held.id is not None:
                    msg = (f"two different tasks in one flow are named {key!r}: tools "
                           f"{_who(held)} and {_who(t)}; use .named() to tell them apart (an "
                           "explicit id is not prefixed by an embedded flow's name: a sub-flow "
                           "used twice needs distinct ids, or automatic ones)")
                    raise DuplicateTaskError(msg, key)
                # An automatic id took it, but explicit ids win: this walk will be redone
                # with every explicit id reserved; go on to learn them all.
                self.clashed = True
                key = f"{key}\0{len(tasks)}"
        tasks[key] = t
        self.ids[t] = key
        if t.fan is not None:
            self.mapped.append(key)
        return key

    def check_children(self) -> None:
        """Refuse a task whose id is that of a mapped task's child (``fetch[0]``): the child
        would overwrite its output and record, and its readers would get the child's."""
        mapped = set(self.mapped)
        for key in self.tasks:
            if key[-1] != "]":
                continue
            head, _, index = key[:-1].rpartition("[")
            if head in mapped and index.isdigit():
                msg = (f"task id {key!r} is also the id of child {index} of mapped task "
                       f"{head!r} (map children are named <mapped id>[i]); give the task "
                       f"another id with .named(), e.g. {head + '_' + index!r}, or rename "
                       "the mapped task")
                raise DuplicateTaskError(msg, key)

    def add(self, task: Task[Any], prefix: str) -> None:
        """Add ``task`` and, first, the tasks its arguments refer to (iteratively)."""
        ids = self.ids
        todo: list[tuple[Task[Any], bool]] = [(task, False)]
        while todo:
            t, ready = todo.pop()
            if t in ids:
                continue
            if not ready:  # its references go first, so they are numbered first too
                if t.embeds and not all(id(e) in self.walked for e in t.embeds):
                    msg = (f"{t!r} takes a flow as an argument, so it must be composed into "
                           "the flow itself (with >> or |), not only referred to by another "
                           "task")
                    raise CompositionError(msg)
                todo.append((t, True))
                todo.extend([(u, False) for u in reversed(t.upstream) if u not in ids])
                continue
            key = self.place(t, prefix)
            self.preds[key] = dict.fromkeys([ids[u] for u in t.upstream])

    def namespace(self, name: str, prefix: str) -> str:
        """The prefix of the tasks inside an embedded flow: its name, numbered like an id
        when another embedded flow of that name came first."""
        base = prefix + name
        n = self.flows.get(base, 0) + 1
        self.flows[base] = n
        return f"{base}." if n == 1 else f"{base}_{n}."

    def members(self, frag: Fragment[Any], start: int) -> dict[str, None]:
        """The members of group ``frag``, once all its parts are materialized: every task
        composed inside it and, for an embedded Flow, every task first placed while it was
        walked: the tasks its tasks' arguments refer to (``Flow("g", c(b(a())))`` holds
        ``g.a`` and ``g.b``, which its name prefixes). A Fragment has no name to claim them,
        so the tasks its arguments bring in stay outside it, as its inputs. ``start`` is how
        many tasks the graph had when the walk entered the group."""
        tasks, ids = self.tasks, self.ids
        # The groups inside ``frag`` were complete before it (the walk is depth first):
        # their answers are reused, so nested groups are linear in what they hold.
        found = self.composed[id(frag)] = _composed(frag, self.composed)
        composed = [ids[t] for t in found]
        if frag.ns is None:
            return dict.fromkeys(composed)
        new = dict.fromkeys(list(islice(reversed(tasks), len(tasks) - start))[::-1])
        # Composed inside but placed before the flow (a task used twice): first, in the
        # order they were placed.
        before = [m for m in composed if m not in new]
        if len(before) > 1:
            at = {k: n for n, k in enumerate(tasks) if k in before}
            before.sort(key=at.__getitem__)
        return {**dict.fromkeys(before), **new}

    def entry(self, members: dict[str, None]) -> list[str]:
        """A group's entry tasks: its members with no predecessor inside it, however the
        group was written (what ``>>`` links the tasks before the group to)."""
        preds = self.preds
        return [m for m in members if not any(p in members for p in preds[m])]

    def group(self, frag: Fragment[Any], members: dict[str, None], entry: list[str],
              prefix: str) -> Group:
        """The group of unit fragment ``frag`` (see :meth:`members` and :meth:`entry`), and
        edges from the tasks its conditions read to its entry tasks."""
        unit = frag.unit
        assert unit is not None
        ids, preds = self.ids, self.preds
        for g in unit.guards:  # the group waits for the tasks its conditions read
            on = g.on if isinstance(g.on, Task) else g.on.task
            known = ids.get(on)
            if known is not None and known in members:
                # Tested before the group's first task runs, it could never be true of the
                # member's output: refused rather than silently skipping the group.
                raise _own_member(unit.name, known)
            self.add(on, prefix)
            for s in entry:
                if s != ids[on]:
                    preds[s][ids[on]] = None
        if unit.retries:
            # A retried group runs as one piece once it is entered, so every input it takes
            # from outside must be ready by then: its entry tasks wait for all of them. (The
            # tasks `>>` links to the group later are linked to every entry task anyway.)
            outside = [p for m in members for p in preds[m] if p not in members]
            for s in entry:
                for p in outside:
                    preds[s][p] = None
        return Group(unit, tuple(members), tuple(entry))

    def link(self, left: Any, right: Any) -> None:
        """Edges from every task of rope ``left`` to every task of rope ``right``."""
        ids, preds = self.ids, self.preds
        lefts = [ids[a] for a in _flat(left)]
        for b in _flat(right):
            pb = preds[ids[b]]
            for a in lefts:
                pb[a] = None


def materialize(item: Any) -> Graph:
    """Flatten a composition into tasks and edges, iteratively, in O(tasks + edges).

    One depth-first walk, left to right, adds the tasks in the order they appear in the
    expression (the tasks an argument refers to before the task itself) and links each ``>>``
    once all of its parts are complete. The sources and sinks of a ``|`` group are kept as
    ropes (tuples of its parts' ropes) rather than concatenated lists, so a loop of
    ``flow = flow | t`` stays linear. A fragment used in several places is walked once, and
    nothing in it is mutated.

    Ids are given on the way (see the module docstring). Only when an explicit id turns up
    after an automatic id took it is the walk done once more, with every explicit id reserved.
    """
    root = _coerce(item)
    if root.__class__ is Fragment and root._graph is not None:
        return root._graph
    try:
        g = _walk(root, frozenset())
    except _Clash as clash:
        g = _walk(root, frozenset(clash.args[0]))
    if root.__class__ is Fragment:
        object.__setattr__(root, "_graph", g)  # a derived cache: see flowdsl._base.frozen
    return g


def _walk(root: Any, reserved: frozenset[str]) -> Graph:
    b = _Builder(reserved)
    tasks, ids, preds, place = b.tasks, b.ids, b.preds, b.place
    ends: dict[int, tuple[Any, Any]] = {}  # id(fragment) -> (sources rope, sinks rope)
    groups: list[Group] = []
    opened: dict[int, int] = {}  # id(group fragment) -> len(tasks) when the walk entered it
    prefix = ""
    stack: list[Any] = [root]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        cls = node.__class__
        if cls is Task:
            if node in ids:
                continue
            if node.embeds and not all(id(e) in b.walked for e in node.embeds):
                # A flow passed as an argument joins the flow whole, before the task.
                push(node)
                for e in reversed(node.embeds):
                    b.walked.add(id(e))
                    push(_coerce(e))
                continue
            if node.upstream:
                b.add(node, prefix)
            else:  # the common case, inlined
                preds[place(node, prefix)] = {}
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
                        preds[ids[src]][ids[left]] = None
                    else:
                        b.link(left, src)
                    left = snk
                ends[id(frag)] = (first, left)
            elif len(parts) == 2:
                p = parts[1]
                src, snk = (p, p) if p.__class__ is Task else ends[id(p)]
                ends[id(frag)] = ((first, src), (left, snk))
            else:
                pairs = [(p, p) if p.__class__ is Task else ends[id(p)] for p in parts]
                ends[id(frag)] = (tuple([s for s, _ in pairs]), tuple([s for _, s in pairs]))
            if frag.unit is not None or frag.ns is not None:
                # A group (a unit, or an embedded Flow) is entered at its members with no
                # predecessor inside it: `x >> Flow("g", c(b(a())))` links x to g.a, not g.c.
                members = b.members(frag, opened.pop(id(frag)))
                entry = b.entry(members)
                if entry:
                    ends[id(frag)] = ([tasks[m] for m in entry], ends[id(frag)][1])
                if frag.unit is not None:
                    groups.append(b.group(frag, members, entry, prefix))
        elif node is _LEAVE:  # an embedded flow is complete: back to the enclosing prefix
            prefix = pop()
        elif id(node) in ends:  # walked already: a fragment is never inside itself
            continue
        else:
            if node.ns is not None and node is not root:  # an embedded flow: a prefix
                push(prefix)
                push(_LEAVE)
                prefix = b.namespace(node.ns, prefix)
            if node.unit is not None or node.ns is not None:
                opened[id(node)] = len(tasks)  # its members are placed from here on
            push(node)
            push(_EXIT)
            extend(node.parts[::-1])
    if b.clashed:
        raise _Clash(b.explicit)
    if b.mapped:
        b.check_children()
    src, snk = (root, root) if root.__class__ is Task else ends[id(root)]
    return Graph(tasks, ids, preds, src, snk, tuple(groups))


# -- a whole sub-flow mapped per element: Flow(...).map(xs), (a >> b).map(xs) ----------
# A whole sub-flow mapped over a runtime list: ``Flow("per_item", a >> b).map(items)``.
#
# The mapped sub-flow is one node of its flow: a mapped task (a :class:`~.task.MapSpec` fan-out,
# so the element lists are resolved, checked and zipped as for ``tool.map``) whose tool is a
# stand-in named after the sub-flow and whose map spec carries a :class:`SubMap`. At run time
# (flowdsl/_run/core/subflows.py) each element runs the sub-flow's tasks as its own chain,
# depth-first, as ``name[i].task`` children.
#
# Where an element goes: the positional form ``.map(values)`` needs exactly one entry task (a
# task with no predecessor inside the sub-flow) with a free parameter (a pipeline stage's input,
# as ``fetch >> parse`` leaves ``fetch``'s); the named form ``.map(url=values, lang="de")`` gives
# each keyword to every entry task that has a parameter of that name (mapped when its value is a
# list or a reference, as ``tool.map``'s named form; :func:`flowdsl.unmapped` passes one whole).


class SubMap:
    """What a mapped sub-flow runs per element: the sub-flow (a Flow), its name (the prefix of
    the children's ids is the mapped task's id), and which entry task takes which of the
    element's values (entry id -> the names it takes)."""

    __slots__ = ("entries", "flow", "name", "plan")

    def __init__(self, flow: Flow[Any], name: str, entries: dict[str, tuple[str, ...]]) -> None:
        self.flow = flow
        self.name = name
        self.entries = entries
        self.plan: Any = None  # the sub-flow's plan, made once by the run core

    def __repr__(self) -> str:
        return f"<SubMap {self.name!r}>"


def _stem(fragment: Any) -> str:
    unit = fragment.unit
    if unit is not None and not unit.name.startswith("("):
        return str(unit.name)
    labels = [t._label for t in materialize(fragment).tasks.values()]
    return "_".join(labels[:3]) + ("_etc" if len(labels) > 3 else "")


def map_subflow(source: Flow[Any] | Fragment[Any], values: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Task[Any]:
    """``flow.map(values)`` / ``flow.map(name=values, ...)``: see the module docstring."""
    if isinstance(source, Flow):
        flow, name = source, source.name
    else:
        name = _stem(source)
        flow = Flow(name, source)
    g = materialize(flow)
    what = f"sub-flow {name!r}"
    if not g.tasks:
        msg = f"cannot map {what}: it has no tasks"
        raise CompositionError(msg)
    entry_ids = [t for t, p in g.preds.items() if not p]
    if len(values) > 1:
        msg = (f"{name}.map(...) takes at most one positional value, the list whose elements go "
               f"to the entry task; to map several parameters, name them (they are zipped)")
        raise CompositionError(msg)
    entries: dict[str, tuple[str, ...]] = {}
    if values:
        if kwargs:
            msg = (f"cannot map {what}: give either one list by position or every input by "
                   f"name (.map({', '.join(f'{k}=...' for k in kwargs)}, <param>=<values>)), "
                   "not both")
            raise CompositionError(msg)
        if len(entry_ids) != 1:
            shown = ", ".join(f"{t!r} ({_free(g.tasks[t])})" for t in entry_ids)
            msg = (f"cannot map {what} by position: it has {len(entry_ids)} entry tasks "
                   f"({shown}), so which one takes each element is ambiguous; name the "
                   "parameter to map: .map(<param>=<values>) (every entry task with that "
                   "parameter takes it)")
            raise CompositionError(msg)
        entry = g.tasks[entry_ids[0]]
        param = entry.stage_param
        if param is None:
            msg = (f"cannot map {what} by position: its entry task {entry_ids[0]!r} has no "
                   "free parameter to take each element (all are bound); name the parameter "
                   f"to map instead: .map(<param>=<values>) (its parameters: "
                   f"{_free(entry)})")
            raise CompositionError(msg)
        entries[entry_ids[0]] = (param,)
        names: list[str] = [param]
    else:
        if not kwargs:
            msg = f"{name}.map() needs the values to map: .map(values) or .map(<param>=values)"
            raise CompositionError(msg)
        names = list(kwargs)
        for t in entry_ids:
            params = g.tasks[t].tool.signature.parameters
            taken = tuple(k for k in names if k in params)
            if taken:
                entries[t] = taken
        for k in names:
            if not any(k in v for v in entries.values()):
                shown = ", ".join(f"{t!r} ({_free(g.tasks[t])})" for t in entry_ids)
                msg = (f"cannot map {what}: no entry task has a parameter {k!r}; its entry "
                       f"tasks and their parameters: {shown}")
                raise CompositionError(msg)
        if not any(_maps(v) for v in kwargs.values()):
            given = ", ".join(f"{k}={v!r}"[:60] for k, v in kwargs.items())
            msg = (f"{name}.map({given}) maps nothing: a keyword is mapped when its value is "
                   "a list (or other iterable), a Task, a projection or a ctx() reference; "
                   "any other value, or one wrapped in unmapped(), goes to every element")
            raise CompositionError(msg)
    stand_in: Any = _StandIn(name, names, _module_of(flow))
    t = Task._map(stand_in, values, kwargs)
    fan = t.fan
    assert fan is not None
    return t._replace(fan=MapSpec(fan.params, fan.positional, fan.max_parallel, fan.limit,
                                  named=fan.named, sub=SubMap(flow, name, entries)))


def _maps(value: Any) -> bool:
    return value.__class__ is Each or _mappable(value)


def _free(task: Any) -> str:
    names = list(task.tool.signature.parameters)
    return ", ".join(names) or "no parameters"


class _StandIn:
    """A mapped sub-flow's tool: named after the sub-flow, with the mapped names as its
    parameters; never called (the core runs the sub-flow's tasks per element instead)."""

    def __init__(self, name: str, params: list[str], module: str) -> None:
        self._self_spec = ToolSpec(name=name, executor="inline")
        self.signature = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])
        self._self_plain = (tuple(params), frozenset(params), len(params))
        self.__name__ = self.__qualname__ = name
        self.__module__ = module

    @property
    def name(self) -> str:
        return self._self_spec.name

    @property
    def spec(self) -> ToolSpec:
        return self._self_spec

    @property
    def fn(self) -> Callable[..., Any]:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        msg = f"sub-flow {self.name!r} runs its tasks per element; its stand-in is not called"
        raise CompositionError(msg)


def _module_of(flow: Flow[Any]) -> str:
    """The module of the sub-flow's first task's tool (history names the stand-in by it)."""
    for t in materialize(flow).tasks.values():
        return getattr(t.tool.fn, "__module__", "") or ""
    return ""
