"""Predict: a discrete-event simulation of the runners' scheduling policy, running no tool.

Each mode is simulated with the policy its runner uses:

- sequential: one task at a time, in ``plan.order``.
- conditional: one task at a time from a ready queue, lowest plan position first (every task
  is assumed to run: a condition cannot be evaluated without running its upstream).
- parallel (and pipeline without items): list scheduling. A task is ready when all of its
  predecessors ended; ready tasks are considered highest priority first (``spec.priority``
  if set, else the longest remaining path, its own duration included; ties by plan
  position), and each one starts as soon as a worker slot (``max_concurrency``) and all of
  its pool amounts are free, granted in priority order (a waiter blocks its pools for those
  behind it), then a slot of its executor; a worker holds its task while it waits.
- pipeline with N items: each task is a stage handling items one at a time, in order; item
  ``i`` enters stage ``s`` when it left every predecessor stage and item ``i-1`` left ``s``.

State of the event loop: ``ready`` (a heap keyed like the runner's), ``waiting`` (id -> count
of unfinished predecessors), ``slots`` (free workers) and, in :class:`_Engine`, ``running``
(a heap of (end, seq, id)), ``free`` (pool -> free amount), ``waiters`` (pool requests in
(-priority, arrival) order) and ``ex_free``/``ex_wait`` (executor slots and their FIFO).
"""

from __future__ import annotations

import bisect
import heapq
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._graph.task import Flow, Task
from .._plan.planner import Plan, plan

__all__ = ["MODES", "SimTask", "Simulation", "resolve_durations", "simulate"]

MODES = ("sequential", "parallel", "pipeline", "conditional")
# The runners' defaults: runners.parallel.DEFAULT_MAX_CONCURRENCY workers, and the executors'
# own limits (ThreadExecutor(max_workers=32), ProcessExecutor: one worker per usable CPU).
DEFAULT_WORKERS = 1000


def _default_limits() -> dict[str, int]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"thread": 32, "process": cpus or 1}


@dataclass(frozen=True, slots=True)
class SimTask:
    """One task's predicted start and end, in seconds from the run's start."""

    id: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Simulation:
    """A predicted run.

    Attributes:
        mode: the simulated mode.
        makespan: the predicted wall time of the run, in seconds.
        tasks: task id -> :class:`SimTask`, in plan order.
        durations: the duration assumed for each task.
        sources: where each duration came from (``"given"``, ``"history"``, ``"declared"``
            or ``"default"``).
        lower_bound: no schedule can be shorter (critical path, pool and worker bounds).
        critical_path: the longest path through the flow for these durations.
        items: the number of pipeline items simulated (``None`` otherwise).
        item_spans: for pipelines over items, task id -> [(start, end)] per item.
    """

    mode: str
    makespan: float
    tasks: dict[str, SimTask]
    durations: dict[str, float]
    sources: dict[str, str]
    lower_bound: float
    critical_path: list[str]
    items: int | None = None
    item_spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def start(self) -> dict[str, float]:
        """Task id -> predicted start."""
        return {i: t.start for i, t in self.tasks.items()}

    @property
    def end(self) -> dict[str, float]:
        """Task id -> predicted end."""
        return {i: t.end for i, t in self.tasks.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "makespan": self.makespan, "lower_bound": self.lower_bound,
                "critical_path": list(self.critical_path), "items": self.items,
                "tasks": {i: {"start": t.start, "end": t.end, "duration": self.durations[i],
                              "source": self.sources[i]} for i, t in self.tasks.items()}}

    def __repr__(self) -> str:
        return (f"<Simulation {self.mode}: makespan {self.makespan:.3f}s for "
                f"{len(self.tasks)} tasks (lower bound {self.lower_bound:.3f}s)>")


def _history_store(history: Any) -> Any:
    """``history`` as a store: None -> none, True -> the default one, a path or a store."""
    if history is None or history is False:
        return None
    from .history import open_history

    return open_history(None if history is True else history)


def resolve_durations(p: Plan, durations: Mapping[str, float] | None = None,
                      history: Any = None) -> tuple[dict[str, float], dict[str, str]]:
    """Each task's duration and its source: given ``durations``, else history (the median of
    the task's completed runs), else the declared ``expected_duration``, else 1 second."""
    given = dict(durations or {})
    store = _history_store(history)
    hist = store.durations(p) if store is not None else {}
    out: dict[str, float] = {}
    src: dict[str, str] = {}
    for i, t in p.tasks.items():
        declared = t.spec.expected_duration if isinstance(t, Task) else None
        for source, value in (("given", given.get(i)), ("history", hist.get(i)),
                              ("declared", declared), ("default", 1.0)):
            if value is not None:
                out[i], src[i] = float(value), source
                break
    return out, src


def _capacities(resources: Any) -> dict[str, int] | None:
    if resources is None:
        return None
    if isinstance(resources, Mapping):
        return {str(k): int(v) for k, v in resources.items()}
    caps = getattr(resources, "capacities", None)  # a shared Pools object
    if caps is not None:
        return dict(caps() if callable(caps) else caps)
    msg = f"resources= expects a mapping of pool -> capacity, got {resources!r}"
    raise TypeError(msg)


def simulate(flow: Any, mode: str | None = None, *, resources: Any = None,
             max_concurrency: int | None = None, durations: Mapping[str, float] | None = None,
             history: Any = None, items: int | Sequence[Any] | None = None,
             executor_limits: Mapping[str, int] | None = None) -> Simulation:
    """Predict a run's makespan and each task's start and end without running any tool.

    Args:
        flow: a Flow, Fragment, Task, list or :class:`~flowdsl.Plan`. A Flow's own mode,
            resources and max_concurrency are used when not given here.
        mode: ``"sequential"``, ``"parallel"`` (default), ``"pipeline"`` or ``"conditional"``.
        resources: pool -> capacity (pools not given are unbounded).
        max_concurrency: worker slots for parallel mode (``None``: unbounded).
        durations: task id -> seconds; wins over history and declared estimates.
        history: a :class:`~flowdsl.HistoryStore` or path to take durations from (``True``
            for the default store; ``None`` for none).
        items: for pipelines, the items (or their number) streamed through the stages.
        executor_limits: executor name -> calls at once (default: what a run uses, 32
            threads and one process per CPU).

    Raises:
        ValueError: an unknown mode or a bad ``max_concurrency``.
        ResourceError: a task needs a pool not in ``resources`` or more than its capacity.
    """
    if isinstance(flow, Flow):
        mode = mode or flow.mode
        resources = flow.resources if resources is None else resources
        max_concurrency = flow.max_concurrency if max_concurrency is None else max_concurrency
    mode = mode or "parallel"
    if mode not in MODES:
        msg = f"simulate(mode={mode!r}): expected one of {', '.join(MODES)}"
        raise ValueError(msg)
    if max_concurrency is not None and (isinstance(max_concurrency, bool)
                                        or not isinstance(max_concurrency, int)
                                        or max_concurrency < 1):
        msg = f"simulate(max_concurrency={max_concurrency!r}): expected an integer >= 1"
        raise ValueError(msg)
    p = flow if isinstance(flow, Plan) else plan(flow)
    caps = _capacities(resources)
    if caps is not None:
        p.check_resources(caps)
    dur, src = resolve_durations(p, durations, history)
    n_items = None if items is None else (items if isinstance(items, int) else len(items))
    spans: dict[str, list[tuple[float, float]]] = {}
    if mode == "sequential":
        times = _sequential(p, dur)
    elif mode == "pipeline" and n_items is not None:
        times, spans = _pipeline(p, dur, n_items)
    else:
        prio = _priorities(p, dur)
        if mode == "conditional":
            key: dict[str, Any] = {i: n for n, i in enumerate(p.order)}
            workers = max_concurrency or 1
        else:
            key = {i: (-prio[i], n) for n, i in enumerate(p.order)}
            workers = max_concurrency or DEFAULT_WORKERS
        limits = executor_limits if executor_limits is not None else _default_limits()
        times = _list_schedule(p, dur, key, prio, workers, caps, limits)
    tasks = {i: SimTask(i, *times[i]) for i in p.order}
    makespan = max((t.end for t in tasks.values()), default=0.0)
    path, _ = p.critical_path(dur)
    limit = {"sequential": 1, "conditional": max_concurrency or 1}.get(mode, max_concurrency)
    bound = p.lower_bound(dur, caps, limit)
    if n_items:
        bound = max(bound, _pipeline_bound(p, dur, n_items))
    return Simulation(mode, makespan, tasks, dur, src, bound, path, n_items, spans)


def _priorities(p: Plan, dur: Mapping[str, float]) -> dict[str, float]:
    rem = p.remaining(dur)
    out = {}
    for i, t in p.tasks.items():
        explicit = t.spec.priority if isinstance(t, Task) else None
        out[i] = rem[i] if explicit is None else explicit
    return out


def _sequential(p: Plan, dur: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    t = 0.0
    out = {}
    for i in p.order:
        out[i] = (t, t + dur[i])
        t += dur[i]
    return out


def _needs(p: Plan, caps: Mapping[str, int] | None) -> dict[str, dict[str, int]]:
    if not caps:
        return {}
    out = {}
    for i, t in p.tasks.items():
        if isinstance(t, Task):
            need = {k: v for k, v in t.spec.resources.items() if k in caps}
            if need:
                out[i] = need
    return out


class _Engine:
    """The runners' drive loop as events: ``workers`` take the best ready task and hold it
    while it waits for its pools (granted in (-priority, arrival) order; a waiter that cannot
    be served blocks its pools for those behind it, as :class:`~flowdsl.Pools` does), then
    for a slot of its executor (FIFO), then run it."""

    def __init__(self, p: Plan, dur: Mapping[str, float], prio: Mapping[str, float],
                 caps: Mapping[str, int] | None, limits: Mapping[str, int]) -> None:
        self.p, self.dur, self.prio = p, dur, prio
        self.needs = _needs(p, caps)
        self.free = dict(caps or {})
        self.kind = {i: t.spec.executor for i, t in p.tasks.items()
                     if isinstance(t, Task) and isinstance(t.spec.executor, str)
                     and t.spec.executor in limits}
        self.ex_free = dict(limits)
        self.ex_wait: dict[str, deque[str]] = {k: deque() for k in limits}
        self.waiters: list[tuple[tuple[float, int], str]] = []
        self.running: list[tuple[float, int, str]] = []
        self.out: dict[str, tuple[float, float]] = {}
        self.now = 0.0
        self.seq = 0

    def _start(self, i: str) -> None:
        end = self.now + self.dur[i]
        self.out[i] = (self.now, end)
        self.seq += 1
        heapq.heappush(self.running, (end, self.seq, i))

    def _to_executor(self, i: str) -> None:
        kind = self.kind.get(i)
        if kind is None:
            self._start(i)
        elif self.ex_free[kind] > 0:
            self.ex_free[kind] -= 1
            self._start(i)
        else:
            self.ex_wait[kind].append(i)

    def _fits(self, need: Mapping[str, int]) -> bool:
        return all(self.free[k] >= v for k, v in need.items())

    def _take(self, need: Mapping[str, int]) -> None:
        for k, v in need.items():
            self.free[k] -= v

    def acquire(self, i: str) -> None:
        need = self.needs.get(i)
        if not need:
            self._to_executor(i)
        elif self._fits(need) and not any(k in self.needs[w] for _, w in self.waiters
                                          for k in need):
            self._take(need)
            self._to_executor(i)
        else:
            self.seq += 1
            bisect.insort(self.waiters, ((-self.prio[i], self.seq), i))

    def _grant(self) -> None:
        blocked: set[str] = set()
        kept = []
        for entry in self.waiters:
            need = self.needs[entry[1]]
            if blocked.isdisjoint(need) and self._fits(need):
                self._take(need)
                self._to_executor(entry[1])
            else:
                blocked.update(need)
                kept.append(entry)
        self.waiters = kept

    def finish_next(self) -> list[str]:
        """Advance to the next end; end every task ending then; return them."""
        self.now = self.running[0][0]
        ended = []
        while self.running and self.running[0][0] == self.now:
            i = heapq.heappop(self.running)[2]
            ended.append(i)
            kind = self.kind.get(i)
            if kind is not None:
                if self.ex_wait[kind]:
                    self._start(self.ex_wait[kind].popleft())
                else:
                    self.ex_free[kind] += 1
            need = self.needs.get(i)
            if need:
                for k, v in need.items():
                    self.free[k] += v
                self._grant()
        return ended


def _list_schedule(p: Plan, dur: Mapping[str, float], key: Mapping[str, Any],
                   prio: Mapping[str, float], workers: int, caps: Mapping[str, int] | None,
                   limits: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    eng = _Engine(p, dur, prio, caps, limits)
    waiting = {i: len(p.predecessors[i]) for i in p.order}
    ready = [(key[i], i) for i in p.order if not waiting[i]]
    heapq.heapify(ready)
    slots = workers
    while ready or eng.running:
        while ready and slots > 0:
            slots -= 1
            eng.acquire(heapq.heappop(ready)[1])
        if not eng.running:
            break  # cannot happen after check_resources: every demand fits an empty pool
        for i in eng.finish_next():
            slots += 1
            for s in p.successors[i]:
                waiting[s] -= 1
                if not waiting[s]:
                    heapq.heappush(ready, (key[s], s))
    return eng.out


def _pipeline_bound(p: Plan, dur: Mapping[str, float], n: int) -> float:
    """Each stage handles the n items one after another, after the first item reached it
    and before the last one leaves the rest of the flow."""
    top: dict[str, float] = {}
    for i in p.order:
        top[i] = max((top[q] + dur[q] for q in p.predecessors[i]), default=0.0)
    rem = p.remaining(dur)
    return max((top[i] + (n - 1) * dur[i] + rem[i] for i in p.order), default=0.0)


def _pipeline(p: Plan, dur: Mapping[str, float], n: int
              ) -> tuple[dict[str, tuple[float, float]], dict[str, list[tuple[float, float]]]]:
    ends: dict[str, list[float]] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for s in p.order:
        mine: list[float] = []
        span = []
        for k in range(n):
            start = max((ends[q][k] for q in p.predecessors[s]), default=0.0)
            if k:
                start = max(start, mine[k - 1])
            mine.append(start + dur[s])
            span.append((start, start + dur[s]))
        ends[s] = mine
        spans[s] = span
    times = {s: (sp[0][0], sp[-1][1]) if sp else (0.0, 0.0) for s, sp in spans.items()}
    return times, spans
