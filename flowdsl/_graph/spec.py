"""Tool options: the validated settings of a tool or of one task (:class:`ToolSpec`), and the
retry backoff. Pure values; every validation message names the tool, the option and the value.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from .._base.errors import ToolDefinitionError
from .._base.limits import encodable, limits

__all__ = ["EXECUTORS", "TRIGGERS", "Backoff", "Cache", "ToolLike", "ToolSpec"]

EXECUTORS = ("async", "thread", "process", "inline", "dask")

#: A tool or task asked for the process executor: a later run may then start the fork
#: helper early, while the process still has a single thread (see flowdsl._run.zygote).
process_tools: list[bool] = []
TRIGGERS = ("all_success", "all_done", "none_failed", "one_success", "one_failed",
            "none_failed_min_one_success")
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
class Cache:
    """Cache a tool's output by its inputs: ``@tool(cache=Cache(...))`` (``cache=True`` is
    ``Cache()``).

    The key is the tool's module-qualified name, a version and a canonical hash of the
    argument values; a later call with the same key returns the stored output without
    calling the tool (the task ends ``cached``). Entries live in the history file.

    Args:
        key: a function receiving the bound arguments by name and returning what identifies
            the call (JSON data); for arguments that cannot be hashed canonically.
        ttl: seconds an entry stays valid (``None``: until cleared).
        version: the code version; default: a hash of the tool's source, so an edited tool
            recomputes.
        serializer: ``"json"`` (default; outputs must be JSON data) or ``"pickle"`` (any
            picklable output; unpickling runs code, so only for a cache file you trust).
    """

    key: Callable[..., Any] | None = None
    ttl: float | None = None
    version: str | None = None
    serializer: Literal["json", "pickle"] = "json"


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
    cache: Cache | None = None

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


def _seconds(name: str, option: str, value: Any) -> float:
    seconds = _number(name, option, value, positive=True)
    most = limits().max_timeout
    if seconds > most:
        raise _bad(name, option, value, f"at most {most:g} seconds (the limit is "
                   "flowdsl.set_limits(max_timeout=...))")
    return seconds


def _normalize(name: str, opts: dict[str, Any], is_async: bool) -> dict[str, Any]:
    """Validate option values one by one; every message names the tool, option and value."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if key in ("timeout", "deadline"):
            out[key] = None if value is None else _seconds(name, key, value)
        elif key == "expected_duration":
            out[key] = None if value is None else _number(name, key, value, positive=True)
        elif key == "retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad(name, key, value, "an integer >= 0")
            most = limits().max_retries
            if value > most:
                raise _bad(name, key, value, f"at most {most} (the limit is "
                           "flowdsl.set_limits(max_retries=...))")
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
        elif key == "cache":
            out[key] = _cache(name, value)
        elif key == "priority":
            out[key] = None if value is None else _signed(name, key, value)
        elif key in ("description", "name"):
            if not isinstance(value, str) or (key == "name" and not value):
                raise _bad(name, key, value, "a non-empty string")
            if key == "name" and not encodable(value):
                raise _bad(name, key, value, "text that UTF-8 can encode (no lone surrogates)")
            out[key] = value
        else:
            msg = f"tool {name!r}: unknown option {key!r}"
            raise ToolDefinitionError(msg, tool=name, option=key, value=value)
    return out


def _cache(name: str, value: Any) -> Cache | None:
    if value is None or value is False:
        return None
    c = Cache() if value is True else value
    if not isinstance(c, Cache):
        raise _bad(name, "cache", value, "True, False or a flowdsl.Cache")
    if c.key is not None and not callable(c.key):
        raise _bad(name, "cache.key", c.key, "a callable receiving the arguments by name")
    if c.ttl is not None:
        _number(name, "cache.ttl", c.ttl, positive=True)
    if c.version is not None and not isinstance(c.version, str):
        raise _bad(name, "cache.version", c.version, "a string")
    if c.serializer not in ("json", "pickle"):
        raise _bad(name, "cache.serializer", c.serializer, "'json' or 'pickle'")
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
        if value == "process" and not process_tools:
            process_tools.append(True)
        if is_async and value in ("thread", "process"):
            raise _bad(name, "executor", value,
                       "'async' or 'inline' for a coroutine function (it runs on the event loop)")
        return value
    if callable(getattr(value, "call", None)):  # an Executor (flowdsl._run.executors.Executor)
        return value
    raise _bad(name, "executor", value, "an executor name or an Executor object")


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
