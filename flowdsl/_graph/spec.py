"""Tool options: the validated settings of a tool or of one task (:class:`ToolSpec`), and the
retry backoff. Pure values; every validation message names the tool, the option and the value.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypedDict

from .._base.errors import ToolDefinitionError
from .._base.frozen import Frozen, frozen_dataclass
from .._base.limits import encodable, limits

__all__ = ["DOCUMENT_OPTIONS", "EXECUTORS", "EXECUTOR_KINDS", "OPTIONS", "TRIGGERS", "Backoff",
           "Cache", "ExecutorKind", "Option", "TaskOptions", "ToolLike", "ToolOptions",
           "ToolSpec"]


@dataclass(frozen=True, slots=True)
class ExecutorKind:
    """One row of :data:`EXECUTOR_KINDS`: an executor a tool may name.

    Attributes:
        name: what ``executor=`` says.
        coroutines: a coroutine function may use it (it awaits on the event loop or on a
            cluster); else it takes sync functions only.
        local: the run makes one of its own, in this process (the class in
            ``flowdsl._run.executors`` whose ``name`` this is); else it is a cluster, made
            once per run and imported only when named.
        override: which ``run(executor=...)`` takes its tasks to the executor given there:
            ``"always"``, ``"cluster"`` (only a cluster, whose workers await coroutines) or
            ``"never"`` (the tool stays where it asked to run).
        doc: one line for the docs.
        forks: its workers are forked processes: a run whose plan uses it starts the fork
            helper first, while the process may still have a single thread
            (``Plan.needs_fork``; see ``flowdsl._run.zygote``).
    """

    name: str
    coroutines: bool
    local: bool
    override: Literal["always", "cluster", "never"]
    doc: str
    forks: bool = False


#: Every executor name, once. An executor is one class plus one row here.
EXECUTOR_KINDS: Mapping[str, ExecutorKind] = MappingProxyType({k.name: k for k in (
    ExecutorKind("async", True, True, "cluster", "awaited on the event loop (coroutine tools)"),
    ExecutorKind("thread", False, True, "always", "sync tools in worker threads (the default)"),
    ExecutorKind("process", False, True, "always", "sync tools in worker processes",
                 forks=True),
    ExecutorKind("inline", True, True, "never", "called on the event loop itself (quick tools)"),
    ExecutorKind("dask", True, False, "always", "a Dask cluster (flowdsl[dask]); its workers "
                 "await coroutine tools"),
)})
EXECUTORS = tuple(EXECUTOR_KINDS)
#: The executor names whose workers are forked (``Plan.needs_fork``).
FORKING = frozenset(k for k, row in EXECUTOR_KINDS.items() if row.forks)
TRIGGERS = ("all_success", "all_done", "none_failed", "one_success", "one_failed",
            "none_failed_min_one_success")
_EMPTY: Mapping[str, int] = MappingProxyType({})


@frozen_dataclass
@dataclass(frozen=True, slots=True)
class Backoff(Frozen):
    """Exponential backoff between attempts: ``min(initial * factor**(n-1), max_delay)``.

    Args:
        initial: the delay in seconds before the second attempt.
        factor: the multiplier per further attempt (>= 1).
        max_delay: the cap on any one delay.
        jitter: ``"none"`` or ``"full"`` (a uniform draw in ``[0, delay]``).
    """

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: Literal["none", "full"] = "none"

    def _copy_hint(self) -> str:
        return "make a changed copy with dataclasses.replace(backoff, ...) or a new Backoff(...)"

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial * self.factor ** (attempt - 1), self.max_delay)
        if self.jitter == "full":
            return (rng or random).uniform(0.0, base)
        return base

    def delays(self, attempts: int, rng: random.Random | None = None) -> list[float]:
        """The delays between ``attempts`` attempts (one fewer than attempts)."""
        return [self.delay(n, rng) for n in range(1, attempts)]


@frozen_dataclass
@dataclass(frozen=True, slots=True)
class Cache(Frozen):
    """Cache a tool's output by its inputs: ``@tool(cache=Cache(...))`` (``cache=True`` is
    ``Cache()``).

    The key is the tool's module-qualified name, a version and a canonical hash of the
    argument values; a later call with the same key returns the stored output without
    calling the tool (the task ends ``cached``). Entries live in the result cache's own
    SQLite file (see ``run(cache=...)``).

    Args:
        key: a function receiving the bound arguments by name and returning what identifies
            the call (JSON data); for arguments that cannot be hashed canonically.
        ttl: seconds an entry stays valid (``None``: until cleared).
        version: the code version; default: a hash of the tool's source, so an edited tool
            recomputes.
        serializer: ``"json"`` (default: an exact tagged JSON; tuples, sets, bytes,
            datetimes, Decimals and dicts with non-string keys come back as they were; an
            output it cannot give back exactly is not cached) or ``"pickle"`` (any picklable
            output; rows carry an HMAC under the store's key and unverified rows are refused).
        mask_secrets: store an output holding a registered secret's value with the value
            masked (``***``), so a hit returns the masked output; by default such an output
            is not cached at all.
        refresh: recompute and overwrite the entry instead of reading it (per task:
            ``task.with_options(cache="refresh")``).
    """

    key: Callable[..., Any] | None = None
    ttl: float | None = None
    version: str | None = None
    serializer: Literal["json", "pickle"] = "json"
    mask_secrets: bool = False
    refresh: bool = False

    def _copy_hint(self) -> str:
        return "make a changed copy with dataclasses.replace(cache, ...) or a new Cache(...)"


@frozen_dataclass
@dataclass(frozen=True, slots=True)
class ToolSpec(Frozen):
    """The validated options of a tool (or of one task, after per-task overrides)."""

    name: str
    description: str = ""
    timeout: float | None = None
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    retry_if: Callable[[BaseException], Any] | None = None
    deadline: float | None = None
    resources: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    rollback: Callable[..., Any] | None = None
    executor: Any = "thread"
    priority: float | None = None
    expected_duration: float | None = None
    is_async: bool = False
    cache: Cache | None = None
    #: Keep the tool's prints and logging records with its task (flowdsl/_base/capture.py).
    capture: bool = True

    def _copy_hint(self) -> str:
        return ("make a changed copy: task.with_options(...) for one task, the tool's "
                "@tool(...) options for all of its tasks, or spec.evolve(...)")

    def evolve(self, **changes: Any) -> ToolSpec:
        """A copy with ``changes`` validated and applied (``cache="refresh"`` keeps the
        tool's cache policy, or the default one, and recomputes its entries)."""
        if isinstance(changes.get("cache"), str) and changes["cache"] == "refresh":
            changes["cache"] = dataclasses.replace(self.cache or Cache(), refresh=True)
        return dataclasses.replace(self, **_normalize(self.name, changes, self.is_async))


def _bad(name: str, option: str, value: Any, expected: str) -> ToolDefinitionError:
    msg = f"tool {name!r}: option {option}={value!r} is invalid: expected {expected}"
    return ToolDefinitionError(msg, tool=name, option=option, value=value)


def _number(name: str, option: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise _bad(name, option, value, "a finite number " + ("> 0" if positive else ">= 0"))
    return float(value)


def _seconds(name: str, option: str, value: Any) -> float:
    seconds = _number(name, option, value, positive=True)
    most = limits().max_timeout
    if seconds > most:
        raise _bad(name, option, value, f"at most {most:g} seconds (the limit is "
                   "flowdsl.set_limits(max_timeout=...))")
    return seconds


def _normalize(name: str, opts: dict[str, Any], is_async: bool) -> dict[str, Any]:
    """Validate option values one by one by their :data:`OPTIONS` row; every message names
    the tool, option and value."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        row = OPTIONS.get(key)
        if row is None:
            msg = f"tool {name!r}: unknown option {key!r}"
            raise ToolDefinitionError(msg, tool=name, option=key, value=value)
        out[key] = row.check(name, key, value, is_async)
    return out


def _cache(name: str, value: Any) -> Cache | None:
    if value is None or value is False:
        return None
    c = Cache() if value is True else Cache(refresh=True) if value == "refresh" else value
    if not isinstance(c, Cache):
        raise _bad(name, "cache", value, "True, False, 'refresh' or a flowdsl.Cache")
    if c.key is not None and not callable(c.key):
        raise _bad(name, "cache.key", c.key, "a callable receiving the arguments by name")
    if c.ttl is not None:
        _number(name, "cache.ttl", c.ttl, positive=True)
    if c.version is not None and not isinstance(c.version, str):
        raise _bad(name, "cache.version", c.version, "a string")
    if c.serializer not in ("json", "pickle"):
        raise _bad(name, "cache.serializer", c.serializer, "'json' or 'pickle'")
    if not isinstance(c.mask_secrets, bool) or not isinstance(c.refresh, bool):
        raise _bad(name, "cache.mask_secrets/refresh", (c.mask_secrets, c.refresh), "booleans")
    return c


def _signed(name: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, option, value, "a finite number")
    return float(value)


def _backoff(name: str, value: Any) -> Backoff:
    if isinstance(value, Backoff):
        b = value
    elif isinstance(value, Mapping):
        try:
            b = Backoff(**value)
        except TypeError as exc:
            raise _bad(name, "backoff", value, f"keys of Backoff ({exc})") from None
    else:
        b = Backoff(initial=_number(name, "backoff", value, positive=False))
    _number(name, "backoff.initial", b.initial, positive=False)
    _number(name, "backoff.max_delay", b.max_delay, positive=False)
    if _number(name, "backoff.factor", b.factor, positive=True) < 1:
        raise _bad(name, "backoff.factor", b.factor, "a number >= 1")
    if b.jitter not in ("none", "full"):
        raise _bad(name, "backoff.jitter", b.jitter, "'none' or 'full'")
    return b


def _resources(name: str, value: Any) -> Mapping[str, int]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise _bad(name, "resources", value, "a mapping of pool name -> amount")
    for pool, amount in value.items():
        if not isinstance(pool, str) or not pool:
            raise _bad(name, "resources", value, "pool names that are non-empty strings")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
            raise _bad(name, f"resources[{pool!r}]", amount, "an integer >= 1")
    return MappingProxyType(dict(value))


def _executor(name: str, value: Any, is_async: bool) -> Any:
    if isinstance(value, str):
        if value not in EXECUTORS:
            raise _bad(name, "executor", value, "one of " + ", ".join(map(repr, EXECUTORS)))
        if is_async and not EXECUTOR_KINDS[value].coroutines:
            ok = " or ".join(repr(k) for k, row in EXECUTOR_KINDS.items() if row.coroutines)
            raise _bad(name, "executor", value, f"{ok} for a coroutine function (it is awaited)")
        return value
    if callable(getattr(value, "call", None)):  # an Executor (flowdsl._run.executors.Executor)
        return value
    raise _bad(name, "executor", value, "an executor name or an Executor object")


# -- the option table ------------------------------------------------------------------------
# Validators take (tool name, option name, value, whether the tool is a coroutine function)
# and return the value as ToolSpec stores it, or raise ToolDefinitionError naming all three.


def _v_seconds(name: str, key: str, value: Any, is_async: bool) -> float | None:
    return None if value is None else _seconds(name, key, value)


def _v_positive(name: str, key: str, value: Any, is_async: bool) -> float | None:
    return None if value is None else _number(name, key, value, positive=True)


def _v_signed(name: str, key: str, value: Any, is_async: bool) -> float | None:
    return None if value is None else _signed(name, key, value)


def _v_retries(name: str, key: str, value: Any, is_async: bool) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(name, key, value, "an integer >= 0")
    most = limits().max_retries
    if value > most:
        raise _bad(name, key, value, f"at most {most} (the limit is "
                   "flowdsl.set_limits(max_retries=...))")
    return value


def _v_backoff(name: str, key: str, value: Any, is_async: bool) -> Backoff:
    return _backoff(name, value)


def _v_exceptions(name: str, key: str, value: Any, is_async: bool
                  ) -> tuple[type[BaseException], ...]:
    try:
        types = (value,) if isinstance(value, type) else tuple(value)
    except TypeError:  # not a class and not iterable: the same precise error as below
        types = (value,)
    if (not types and key == "retry_on") or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise _bad(name, key, value, "an exception class or a tuple of them")
    return types


def _v_callable(receives: str) -> Callable[[str, str, Any, bool], Any]:
    def check(name: str, key: str, value: Any, is_async: bool) -> Any:
        if value is not None and not callable(value):
            raise _bad(name, key, value, f"a callable that receives {receives}")
        return value
    return check


def _v_resources(name: str, key: str, value: Any, is_async: bool) -> Mapping[str, int]:
    return _resources(name, value)


def _v_executor(name: str, key: str, value: Any, is_async: bool) -> Any:
    return _executor(name, value, is_async)


def _v_cache(name: str, key: str, value: Any, is_async: bool) -> Cache | None:
    return _cache(name, value)


def _v_bool(name: str, key: str, value: Any, is_async: bool) -> bool:
    # For on/off options (a row such as capture=, which another branch adds).
    if not isinstance(value, bool):
        raise _bad(name, key, value, "True or False")
    return value


def _v_text(name: str, key: str, value: Any, is_async: bool) -> str:
    if not isinstance(value, str) or (key == "name" and not value):
        raise _bad(name, key, value, "a non-empty string")
    if key == "name" and not encodable(value):
        raise _bad(name, key, value, "text that UTF-8 can encode (no lone surrogates)")
    return value


def _identity(value: Any) -> Any:
    return value


_NUMBER = {"type": "number", "exclusiveMinimum": 0}


@dataclass(frozen=True, slots=True)
class Option:
    """One row of :data:`OPTIONS`: a tool option, from which validation, workflow documents,
    the plan schema and ``to_dict`` are derived.

    Attributes:
        name: the option (a :class:`ToolSpec` field).
        check: ``(tool name, option, value, is_async) -> stored value``; raises
            ToolDefinitionError naming the tool, the option and the value.
        doc: one line saying what it does (the plan schema's description of it).
        per_task: ``Task.with_options`` takes it (``name`` and ``description`` belong to the
            tool: a task is renamed with ``.named()``).
        document: the JSON Schema of its value in a workflow document, or ``None`` when a
            document cannot carry it (then ``to_dict`` refuses a task overriding it).
        refused: for an option a document cannot carry, what it is (said in to_dict's error).
        to_data: how ``to_dict`` writes the stored value as document data.
    """

    name: str
    check: Callable[[str, str, Any, bool], Any]
    doc: str
    per_task: bool = True
    document: Mapping[str, Any] | None = None
    refused: str = ""
    to_data: Callable[[Any], Any] = _identity


#: Every tool option, once. A new option is one row here plus its use in the run core
#: (and its ToolSpec field); tests/test_option_table.py checks the derived lists.
OPTIONS: Mapping[str, Option] = MappingProxyType({o.name: o for o in (
    Option("name", _v_text, "the tool's name (a task is renamed with .named())",
           per_task=False, refused="the tool's own"),
    Option("description", _v_text, "what the tool does (default: its docstring)",
           per_task=False, refused="the tool's own"),
    Option("timeout", _v_seconds, "seconds per attempt", document=_NUMBER),
    Option("retries", _v_retries, "extra attempts after a failed one",
           document={"type": "integer", "minimum": 0}),
    Option("backoff", _v_backoff, "the delay between attempts: the first delay in seconds, "
           "or an object of Backoff's fields (initial, factor, max_delay, jitter)",
           document={"anyOf": [{"type": "number", "minimum": 0}, {"type": "object"}]},
           to_data=dataclasses.asdict),
    Option("retry_on", _v_exceptions, "the exception types that are retried",
           refused="exception classes"),
    Option("give_up_on", _v_exceptions, "exception types never retried",
           refused="exception classes"),
    Option("retry_if", _v_callable("the exception"), "a predicate on the exception; if it "
           "raises, no retry", refused="a Python callable"),
    Option("deadline", _v_seconds, "seconds for all attempts and backoff together",
           document=_NUMBER),
    Option("resources", _v_resources, "pool name -> units the task holds while it runs",
           document={"type": "object",
                     "additionalProperties": {"type": "integer", "minimum": 1}},
           to_data=dict),
    Option("rollback", _v_callable("the task's output"), "a callable receiving the output, "
           "called to undo the task when the run rolls back", refused="a Python callable"),
    Option("executor", _v_executor, "where the tool runs: " + ", ".join(map(repr, EXECUTORS))
           + " or an Executor object", refused="the place the tool's code runs"),
    Option("priority", _v_signed, "ready tasks with a higher priority start first "
           "(default: the remaining critical path)", document={"type": "number"}),
    Option("expected_duration", _v_positive, "the seconds one call is expected to take "
           "(for priorities and simulate)", document=_NUMBER),
    Option("cache", _v_cache, "reuse outputs by their inputs: true or a flowdsl.Cache",
           refused="a result cache (its key and serializer are Python settings)"),
    Option("capture", _v_bool, "keep the tool's prints and logging records with its task",
           document={"type": "boolean"}),
)})


# The options as type checkers and IDEs see them: ``@tool(...)`` and ``Tool.with_options`` take
# ToolOptions, ``Task.with_options`` TaskOptions (``**options: Unpack[...]``), so a misspelt
# option or a wrong kind of value is reported before anything runs. The values are what a
# user may pass (each row's ``check`` turns them into the stored ToolSpec field), and
# tests/test_typing.py checks that the keys are exactly the rows of OPTIONS.
class _PerTaskOptions(TypedDict, total=False):
    timeout: float | None
    retries: int
    backoff: float | Backoff | Mapping[str, float] | None
    retry_on: type[BaseException] | Iterable[type[BaseException]]
    give_up_on: type[BaseException] | Iterable[type[BaseException]]
    retry_if: Callable[[BaseException], Any] | None
    deadline: float | None
    resources: Mapping[str, int] | None
    rollback: Callable[[Any], Any] | None
    #: a name of EXECUTORS or an Executor object (the run layer's class, above this one)
    executor: Any
    priority: float | None
    expected_duration: float | None
    cache: bool | Cache | Literal["refresh"] | None
    capture: bool


class ToolOptions(_PerTaskOptions, total=False):
    """The keyword options of ``@tool(...)`` and ``Tool.with_options``: the rows of
    :data:`OPTIONS`."""

    name: str
    description: str


class TaskOptions(_PerTaskOptions, total=False):
    """The keyword options of ``Task.with_options`` besides ``trigger``: the per-task rows
    of :data:`OPTIONS`, and for a mapped task ``max_parallel`` (most children running at
    once) and ``max_children`` (the fan-out limit)."""

    max_parallel: int | None
    max_children: int


#: ToolSpec fields that are no option: derived from the function itself.
DERIVED_FIELDS = ("is_async",)
#: The options a workflow document carries, in table order.
DOCUMENT_OPTIONS = tuple(k for k, o in OPTIONS.items() if o.document is not None)


def document_options(doc: str | None, *, per_task: bool = False) -> str:
    """``doc`` with its ``{options}`` replaced by the table's options, in table order, each
    with its row's doc line (``per_task``: only those a task may override): the docstrings
    of ``tool()`` and ``Task.with_options`` say what the table says, so a new option is
    documented by its row. The wrapped lines take the indentation of the ``{options}``
    line as found: Python 3.13 dedents docstrings at compile time, earlier ones do not."""
    doc = doc or ""
    line_start = doc.rfind("\n", 0, max(doc.find("{options}"), 0)) + 1
    pad = doc[line_start:len(doc) - len(doc[line_start:].lstrip(" "))]
    rows = [o for o in OPTIONS.values() if o.per_task or not per_task]
    text = "; ".join(f"``{o.name}``: {o.doc}" for o in rows)
    lines = textwrap.wrap(text, max(40, 92 - len(pad)), break_on_hyphens=False)
    return doc.replace("{options}", ("\n" + pad).join(lines))


class ToolLike(Protocol):
    """What a Task needs of its tool (a :class:`~flowdsl.Tool`); spelled out here so the task
    layer does not import the tool module, which builds tasks."""

    _self_spec: ToolSpec
    _self_plain: tuple[tuple[str, ...], frozenset[str], int] | None

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ToolSpec: ...

    @property
    def signature(self) -> inspect.Signature: ...

    @property
    def fn(self) -> Callable[..., Any]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
