"""The one scheduling policy: what :func:`flowdsl.run` does and :func:`flowdsl.simulate` predicts.

Both sides call these functions, so a prediction can only differ from a run by the tools'
real durations and the machine's noise, never by a second copy of a rule:

- :class:`Mode`: the mode names, listed once.
- :func:`resolve_settings`: the Flow's defaults (mode, context, resources, max_concurrency)
  under what the call gives.
- :func:`estimate_durations`: duration precedence, **given > declared > history > 1 s**. A
  duration passed to the call is the caller's intent for this run; a declared
  ``expected_duration`` is the flow author's deliberate statement and so beats history,
  which is a median of past runs, possibly of the tool in another flow; 1 s weighs an
  unknown task like a typical one. History is read only when some task needs it.
- :func:`priorities` and :func:`ranked`: a task's priority is its explicit ``priority``,
  else its remaining critical path (its own duration included); ready tasks go best first,
  ties in plan order (conditional mode: plan order only).
- :func:`worker_limit` and :func:`executor_limits`: workers per mode, calls per executor.
- :class:`Grants`: the pool grant decision. A demand is granted all at once or not at all
  (no deadlock holding one pool of two); waiters are served by (aged, -priority, arrival);
  once a waiter cannot be served, its pools are blocked for everyone behind it (head of
  line per pool; lower-priority work still flows through other pools); a waiter overtaken
  ``AGING`` times by later arrivals moves to the front. Pure: :class:`~flowdsl.Pools` wakes
  the waiters it returns, the simulator starts them.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._base.errors import ResourceError
from .._graph.task import Flow, Task
from .planner import Plan

__all__ = ["AGING", "DEFAULT_MAX_CONCURRENCY", "DURATION_SOURCES", "THREAD_WORKERS", "Grants",
           "Mode", "Settings", "Waiter", "cpus", "estimate_durations", "executor_limits",
           "expected_children",
           "flow_of", "priorities", "ranked", "resolve_settings", "worker_limit"]


class Mode(str, enum.Enum):
    """The four ways to run a flow (plain strings work too)."""

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    PIPELINE = "pipeline"
    CONDITIONAL = "conditional"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, where: str = "run()") -> Mode:
        """``value`` as a Mode; ``where`` names the call in the error.

        Raises:
            ValueError: ``value`` is no mode name.
        """
        try:
            return cls(value)
        except ValueError:
            modes = ", ".join(m.value for m in cls)
            msg = f"{where}: unknown mode={value!r}: expected one of {modes}"
            raise ValueError(msg) from None


#: Parallel (and pipeline) workers when ``max_concurrency`` is not given.
DEFAULT_MAX_CONCURRENCY = 1000
#: Calls a ThreadExecutor makes at once by default.
THREAD_WORKERS = 32
#: How many later arrivals may be served before a pool waiter goes to the front.
AGING = 64
#: Where a duration estimate comes from, in order of precedence.
DURATION_SOURCES = ("given", "declared", "history", "default")


def cpus() -> int:
    """The CPUs this process may use (a ProcessExecutor's default worker count)."""
    if hasattr(os, "sched_getaffinity"):  # Linux: honours taskset and cgroup pinning
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def executor_limits() -> dict[str, int]:
    """Executor name -> calls at once, as the run's default executors allow."""
    return {"thread": THREAD_WORKERS, "process": cpus()}


def worker_limit(mode: Mode, max_concurrency: int | None) -> int:
    """Tasks of one item that may run at once in ``mode``."""
    if mode is Mode.SEQUENTIAL:
        return 1
    if mode is Mode.CONDITIONAL:  # branch by branch unless told otherwise
        return max_concurrency or 1
    return max_concurrency or DEFAULT_MAX_CONCURRENCY


@dataclass(frozen=True, slots=True)
class Settings:
    """A run's settings once the Flow's defaults are applied."""

    mode: Mode
    context: dict[str, Any]
    resources: Any  # a mapping of capacities, a shared Pools object, or None
    max_concurrency: int | None


def flow_of(flow: Any, p: Plan) -> Flow[Any] | None:
    """The Flow whose defaults apply: ``flow`` itself, or the Flow a Plan was made from."""
    if isinstance(flow, Flow):
        return flow
    return p.flow if isinstance(p.flow, Flow) else None


def resolve_settings(flow: Any, p: Plan, *, mode: Any = None,
                     context: Mapping[str, Any] | None = None, resources: Any = None,
                     max_concurrency: int | None = None, where: str = "run()") -> Settings:
    """What the call gives, else the Flow's default, else parallel / no pools / no limit.
    The context is the Flow's updated with the call's (a copy: neither is changed).

    Raises:
        ValueError: an unknown mode or a ``max_concurrency`` that is no whole number > 0.
    """
    if max_concurrency is not None and (isinstance(max_concurrency, bool)
                                        or not isinstance(max_concurrency, int)
                                        or max_concurrency < 1):
        msg = (f"{where}: max_concurrency={max_concurrency!r} is invalid: expected a whole "
               "number > 0 or None")
        raise ValueError(msg)
    fl = flow_of(flow, p)
    ctx = dict(fl.context or {}) if fl is not None else {}
    ctx.update(context or {})
    if fl is not None:
        mode = mode or fl.mode
        resources = fl.resources if resources is None else resources
        max_concurrency = max_concurrency or fl.max_concurrency
    return Settings(Mode.parse(mode or Mode.PARALLEL, where), ctx, resources, max_concurrency)


def expected_children(p: Plan, counts: Callable[[], Mapping[str, int]] | None = None
                      ) -> dict[str, int]:
    """Each mapped task's expected number of children: its last recorded count
    (``counts()``, called only when the plan has a mapped task), else 1."""
    mapped = [i for i, t in p.tasks.items() if getattr(t, "fan", None) is not None]
    if not mapped:
        return {}
    recorded = counts() if counts is not None else {}
    return {i: max(1, int(recorded.get(i, 1))) for i in mapped}


def estimate_durations(p: Plan, given: Mapping[str, float] | None = None,
                       history: Callable[[], Mapping[str, float]] | None = None,
                       counts: Callable[[], Mapping[str, int]] | None = None
                       ) -> tuple[dict[str, float], dict[str, str]]:
    """Each task's expected duration and its source (one of :data:`DURATION_SOURCES`):
    ``given``, else the declared ``expected_duration``, else ``history()`` (called only
    when a task has neither), else 1 second. For a mapped task, a declared, recorded or
    default duration is one child's: it is multiplied by the expected number of children
    (:func:`expected_children`); a given one is the whole task's."""
    given = given or {}
    out: dict[str, float] = {}
    src: dict[str, str] = {}
    unknown = []
    for i, t in p.tasks.items():
        value = given.get(i)
        if value is not None:
            out[i], src[i] = float(value), "given"
            continue
        declared = t.spec.expected_duration if isinstance(t, Task) else None
        if declared is not None:
            out[i], src[i] = float(declared), "declared"
        else:
            unknown.append(i)
    recorded = history() if unknown and history is not None else {}
    for i in unknown:
        value = recorded.get(i)
        out[i], src[i] = (1.0, "default") if value is None else (float(value), "history")
    for i, n in expected_children(p, counts).items():
        if src[i] != "given":
            out[i] *= n
    return out, src


def priorities(p: Plan, durations: Mapping[str, float]) -> dict[str, float]:
    """Task id -> priority: its explicit ``priority``, else its remaining critical path."""
    rem = p.remaining(durations)
    out = {}
    for i, t in p.tasks.items():
        explicit = t.spec.priority if isinstance(t, Task) else None
        out[i] = rem[i] if explicit is None else explicit
    return out


def ranked(p: Plan, mode: Mode, prio: Mapping[str, float]) -> list[str]:
    """Every task, best first: the order in which ready tasks are taken."""
    if mode is Mode.CONDITIONAL or mode is Mode.SEQUENTIAL:
        return list(p.order)
    return sorted(p.order, key=lambda t: -prio[t])  # stable: ties stay in plan order


# -- the pool grant ---------------------------------------------------------------------------

T = TypeVar("T")


class Waiter(Generic[T]):
    """One queued demand; ``token`` is whatever its owner needs back when it is granted."""

    __slots__ = ("demand", "key", "overtaken", "token")

    def __init__(self, demand: Mapping[str, int], key: tuple[int, float, int],
                 token: T) -> None:
        self.demand = demand
        self.key = key  # (0 once aged else 1, -priority, arrival)
        self.token = token
        self.overtaken = 0


class Grants(Generic[T]):
    """Pool capacities, free units and the waiters in grant order; see the module docstring.

    Args:
        capacities: pool name -> capacity (an integer >= 1).
    """

    __slots__ = ("_seq", "cap", "free", "waiters")

    def __init__(self, capacities: Mapping[str, int] | None = None) -> None:
        self.cap: dict[str, int] = {}
        self.free: dict[str, int] = {}
        self.waiters: list[Waiter[T]] = []
        self._seq = itertools.count()
        for name, cap in (capacities or {}).items():
            self.resize(name, cap)

    def resize(self, name: str, capacity: int) -> None:
        """Define pool ``name`` or change its capacity (units in use stay in use); call
        :meth:`grant` afterwards to serve waiters the new units let through."""
        if not isinstance(name, str) or not name:
            msg = f"pool names must be non-empty strings, got {name!r}"
            raise ResourceError(msg, pool=str(name))
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            msg = f"pool {name!r}: capacity must be an integer >= 1, got {capacity!r}"
            raise ResourceError(msg, pool=name)
        used = self.cap.get(name, 0) - self.free.get(name, 0)
        self.cap[name] = capacity
        self.free[name] = capacity - used

    def check(self, demand: Mapping[str, int], task_id: str | None) -> None:
        """Raise :class:`ResourceError` for an unknown pool or more than a pool holds."""
        for pool, amount in demand.items():
            cap = self.cap.get(pool)
            if cap is None:
                msg = f"task {task_id!r} needs unknown pool {pool!r}"
                raise ResourceError(msg, task_id=task_id, pool=pool)
            if amount > cap:
                msg = f"task {task_id!r} needs {amount} of pool {pool!r} (capacity {cap})"
                raise ResourceError(msg, task_id=task_id, pool=pool)

    def fits(self, demand: Mapping[str, int]) -> bool:
        free = self.free
        return all(free[p] >= n for p, n in demand.items())

    def _take(self, demand: Mapping[str, int]) -> None:
        for p, n in demand.items():
            self.free[p] -= n

    def take_now(self, demand: Mapping[str, int]) -> bool:
        """The fast path of an acquire: nobody waits and it fits, so take it."""
        if self.waiters or not self.fits(demand):
            return False
        self._take(demand)
        return True

    def try_take(self, demand: Mapping[str, int]) -> bool:
        """Take ``demand`` if it fits and no waiter is queued for any of its pools."""
        if any(p in w.demand for w in self.waiters for p in demand):
            return False
        if not self.fits(demand):
            return False
        self._take(demand)
        return True

    def enqueue(self, demand: Mapping[str, int], priority: float, token: T) -> Waiter[T]:
        """Queue a demand in grant order; :meth:`grant` serves it."""
        w = Waiter(demand, (1, -priority, next(self._seq)), token)
        bisect.insort(self.waiters, w, key=lambda x: x.key)
        return w

    def withdraw(self, w: Waiter[T]) -> None:
        """Take a waiter that gave up out of the queue (then :meth:`grant` again)."""
        self.waiters.remove(w)

    def release(self, demand: Mapping[str, int]) -> None:
        """Give units back (serve the waiters they let through with :meth:`grant`)."""
        for p, n in demand.items():
            self.free[p] += n

    def grant(self) -> list[Waiter[T]]:
        """Serve the waiters in order, blocking the pools of each one that cannot be served
        for those behind it; returns the served ones, in grant order."""
        blocked: set[str] = set()
        kept: list[Waiter[T]] = []
        served: list[Waiter[T]] = []
        for w in self.waiters:
            if blocked.isdisjoint(w.demand) and self.fits(w.demand):
                self._take(w.demand)
                served.append(w)
            else:
                blocked.update(w.demand)
                kept.append(w)
        if served and kept and _age(served, kept):
            kept.sort(key=lambda x: x.key)
        self.waiters = kept
        return served

    def in_use(self) -> dict[str, int]:
        return {p: self.cap[p] - self.free[p] for p in self.cap}


def _age(served: Iterable[Waiter[Any]], kept: list[Waiter[Any]]) -> bool:
    """Count who was overtaken by a later arrival on a shared pool; True if one aged."""
    aged = False
    for w in served:
        for old in kept:
            if old.key[2] < w.key[2] and not old.demand.keys().isdisjoint(w.demand):
                old.overtaken += 1
                if old.overtaken >= AGING and old.key[0]:
                    old.key = (0, *old.key[1:])  # to the front from now on
                    aged = True
    return aged
