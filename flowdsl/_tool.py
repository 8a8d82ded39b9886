"""Declare: ``@tool`` turns a function into a :class:`Tool`; calling a tool returns a Task.

A Tool is a :class:`wrapt.ObjectProxy` over the user's function, so ``__name__``, ``__doc__``,
``__wrapped__`` and :func:`inspect.signature` stay the function's. Its own state lives in
``_self_*`` attributes (wrapt's convention) so nothing is written through to the function.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, overload

import wrapt

from ._errors import ToolDefinitionError

if TYPE_CHECKING:
    from ._graph import Task

__all__ = ["EXECUTORS", "TRIGGERS", "Backoff", "Tool", "ToolSpec", "tool"]

EXECUTORS = ("async", "thread", "process", "inline", "dask")
TRIGGERS = ("all_success", "all_done", "none_failed", "one_success", "one_failed")
_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Backoff:
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

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial * self.factor ** (attempt - 1), self.max_delay)
        if self.jitter == "full":
            return (rng or random).uniform(0.0, base)
        return base

    def delays(self, attempts: int, rng: random.Random | None = None) -> list[float]:
        """The delays between ``attempts`` attempts (one fewer than attempts)."""
        return [self.delay(n, rng) for n in range(1, attempts)]


@dataclass(frozen=True, slots=True)
class ToolSpec:
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

    def evolve(self, **changes: Any) -> ToolSpec:
        """A copy with ``changes`` validated and applied."""
        return dataclasses.replace(self, **_normalize(self.name, changes, self.is_async))


def _bad(name: str, option: str, value: Any, expected: str) -> ToolDefinitionError:
    msg = f"tool {name!r}: option {option}={value!r} is invalid: expected {expected}"
    return ToolDefinitionError(msg, tool=name, option=option, value=value)


def _number(name: str, option: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise _bad(name, option, value, "a finite number " + ("> 0" if positive else ">= 0"))
    return float(value)


def _normalize(name: str, opts: dict[str, Any], is_async: bool) -> dict[str, Any]:
    """Validate option values one by one; every message names the tool, option and value."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if key in ("timeout", "expected_duration", "deadline"):
            out[key] = None if value is None else _number(name, key, value, positive=True)
        elif key == "retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad(name, key, value, "an integer >= 0")
            out[key] = value
        elif key == "backoff":
            out[key] = _backoff(name, value)
        elif key in ("retry_on", "give_up_on"):
            types = (value,) if isinstance(value, type) else tuple(value)
            if (not types and key == "retry_on") or not all(
                    isinstance(t, type) and issubclass(t, BaseException) for t in types):
                raise _bad(name, key, value, "an exception class or a tuple of them")
            out[key] = types
        elif key == "retry_if":
            if value is not None and not callable(value):
                raise _bad(name, key, value, "a callable that receives the exception")
            out[key] = value
        elif key == "resources":
            out[key] = _resources(name, value)
        elif key == "rollback":
            if value is not None and not callable(value):
                raise _bad(name, key, value, "a callable that receives the task's output")
            out[key] = value
        elif key == "executor":
            out[key] = _executor(name, value, is_async)
        elif key == "priority":
            out[key] = None if value is None else _signed(name, key, value)
        elif key in ("description", "name"):
            if not isinstance(value, str) or (key == "name" and not value):
                raise _bad(name, key, value, "a non-empty string")
            out[key] = value
        else:
            msg = f"tool {name!r}: unknown option {key!r}"
            raise ToolDefinitionError(msg, tool=name, option=key, value=value)
    return out


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
        if is_async and value in ("thread", "process"):
            raise _bad(name, "executor", value,
                       "'async' or 'inline' for a coroutine function (it runs on the event loop)")
        return value
    if callable(getattr(value, "call", None)):  # an Executor (flowdsl._executors.Executor)
        return value
    raise _bad(name, "executor", value, "an executor name or an Executor object")


class Tool(wrapt.ObjectProxy):  # type: ignore[misc]
    """A declared tool: the user's function plus its options.

    Calling a tool binds the arguments and returns a :class:`~flowdsl.Task`; nothing runs
    until the flow is run. The raw function stays callable as ``tool.fn(...)``.
    """

    def __init__(self, fn: Callable[..., Any], spec: ToolSpec) -> None:
        super().__init__(fn)
        self._self_spec = spec
        self._self_signature = sig = inspect.signature(fn)
        params = sig.parameters.values()
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        # For plain parameters only (the common case), what the fast binder needs: the names,
        # the same as a set, and how many come first without a default (Python puts those
        # first, so they are exactly the required ones).
        names = tuple(sig.parameters)
        self._self_plain = (names, frozenset(names), sum(
            p.default is p.empty for p in params)) if plain else None

    @property
    def spec(self) -> ToolSpec:
        """The validated options."""
        return self._self_spec

    @property
    def name(self) -> str:
        """The tool's name (the function's, unless ``name=`` was given)."""
        return self._self_spec.name

    @property
    def fn(self) -> Callable[..., Any]:
        """The raw function, for unit tests and for executors."""
        return self.__wrapped__

    @property
    def signature(self) -> inspect.Signature:
        return self._self_signature

    def __call__(self, *args: Any, **kwargs: Any) -> Task:
        return _bind(self, args, kwargs, partial=False)

    def stage(self, *args: Any, **kwargs: Any) -> Task:
        """A pipeline stage: binds what is given; the first free parameter receives the output
        of the stage before it (or the run's ``input``)."""
        from ._graph import Task

        return Task._bind(self, args, kwargs, partial=True)

    def with_options(self, **options: Any) -> Tool:
        """A new tool with some options changed; this one is left as it is."""
        return Tool(self.__wrapped__, self._self_spec.evolve(**options))

    def schema(self) -> dict[str, Any]:
        """The tool's JSON description for LLM function calling (needs ``flowdsl[schema]``)."""
        from ._schema import tool_schema

        return tool_schema(self)

    # wrapt forwards operators to the wrapped function, which would raise a confusing
    # TypeError: flowdsl._graph gives Tool the same >> and | as tasks (a bare tool composes
    # as a pipeline stage), so the composition code lives in one place.

    def __repr__(self) -> str:
        return f"<Tool {self.name}{self._self_signature}>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Pickled by reference: a worker process re-imports the module and finds the tool.
        fn = self.__wrapped__
        return (_tool_by_reference, (fn.__module__, fn.__qualname__, self._self_spec.name))


def _bind(tool: Tool, args: tuple[Any, ...], kwargs: dict[str, Any], *, partial: bool) -> Task:
    from ._graph import Task

    globals()["_bind"] = Task._bind  # later calls skip the import
    return Task._bind(tool, args, kwargs, partial=partial)


def _tool_by_reference(module: str, qualname: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, registry: Any = None,
         **options: Any) -> Any:
    """Declare a tool. Works bare (``@tool``) and with options (``@tool(retries=3)``).

    Args:
        fn: the function (sync or ``async def``).
        registry: a :class:`~flowdsl.ToolRegistry` to register in (default: the default one;
            ``False`` for none).
        **options: ``name``, ``description``, ``timeout`` (seconds per attempt), ``retries``
            (extra attempts), ``backoff`` (first delay, or a :class:`Backoff`), ``retry_on``
            (exception types retried), ``give_up_on`` (types never retried), ``retry_if``
            (a predicate on the exception; if it raises, no retry), ``deadline`` (seconds for
            all attempts and backoff together), ``resources`` (pool -> amount), ``rollback``
            (callable receiving the output), ``executor`` (``"async"``, ``"thread"``, ``"process"``,
            ``"inline"``, ``"dask"``), ``priority``, ``expected_duration``.

    Raises:
        ToolDefinitionError: an option value is invalid; the message names tool, option, value.
    """
    if fn is None:
        return lambda f: tool(f, registry=registry, **options)
    return make_tool(fn, registry=registry, **options)


def make_tool(fn: Any, *, registry: Any = None, **options: Any) -> Tool:
    if isinstance(fn, Tool):
        return fn.with_options(**options) if options else fn
    if not callable(fn):
        msg = f"@tool expects a function, got {type(fn).__name__} {fn!r}"
        raise ToolDefinitionError(msg, value=fn)
    is_async = inspect.iscoroutinefunction(inspect.unwrap(fn))
    name = options.pop("name", None) or getattr(fn, "__name__", None) or type(fn).__name__
    base = ToolSpec(name=name, description=inspect.getdoc(fn) or "", is_async=is_async,
                    executor="async" if is_async else "thread")
    spec = base.evolve(name=name, **options)
    t = Tool(fn, spec)
    if registry is None:
        from ._registry import default_registry

        default_registry.register(t, replace_same_function=True)
    elif registry is not False:
        registry.register(t)
    return t
