"""Predict: a discrete-event simulation of the runners' scheduling policy, running no tool.

Each mode is simulated with the policy its runner uses:

- sequential: one task at a time, in ``plan.order``.
- conditional: one task at a time from a ready queue, lowest plan position first (every task
  is assumed to run: a condition cannot be evaluated without running its upstream).
- parallel (and pipeline without items): list scheduling. A task is ready when all of its
  predecessors ended; ready tasks are considered highest priority first (``spec.priority``
  if set, else the longest remaining path, its own duration included; ties by plan
  position), and each one starts as soon as a worker slot (``max_concurrency``) and all of
  its pool amounts are free, so a small task may pass a large one that waits for a pool.
- pipeline with N items: each task is a stage handling items one at a time, in order; item
  ``i`` enters stage ``s`` when it left every predecessor stage and item ``i-1`` left ``s``.

State of the event loop: ``ready`` (a heap of (-priority, position, id)), ``running`` (a heap
of (end, position, id)), ``waiting`` (id -> count of unfinished predecessors), ``free`` (pool
-> free amount) and ``slots`` (free workers).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._graph import Flow, Task
from ._planner import Plan, plan

__all__ = ["MODES", "SimTask", "Simulation", "resolve_durations", "simulate"]

MODES = ("sequential", "parallel", "pipeline", "conditional")


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
    from ._history import open_history

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
             history: Any = None, items: int | Sequence[Any] | None = None) -> Simulation:
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
    elif mode == "conditional":
        times = _list_schedule(p, dur, {i: -float(n) for n, i in enumerate(p.order)}, 1, None)
    else:
        times = _list_schedule(p, dur, _priorities(p, dur), max_concurrency, caps)
    tasks = {i: SimTask(i, *times[i]) for i in p.order}
    makespan = max((t.end for t in tasks.values()), default=0.0)
    path, _ = p.critical_path(dur)
    bound = p.lower_bound(dur, caps, 1 if mode in ("sequential", "conditional")
                          else max_concurrency)
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


def _list_schedule(p: Plan, dur: Mapping[str, float], prio: Mapping[str, float],
                   max_concurrency: int | None, caps: Mapping[str, int] | None
                   ) -> dict[str, tuple[float, float]]:
    needs = _needs(p, caps)
    free = dict(caps or {})
    slots = math.inf if max_concurrency is None else max_concurrency
    pos = {i: n for n, i in enumerate(p.order)}
    waiting = {i: len(p.predecessors[i]) for i in p.order}
    ready = [(-prio[i], pos[i], i) for i in p.order if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    out: dict[str, tuple[float, float]] = {}
    now = 0.0
    while ready or running:
        blocked = []
        while ready and slots > 0:
            entry = heapq.heappop(ready)
            i = entry[2]
            need = needs.get(i)
            if need and any(free[k] < v for k, v in need.items()):
                blocked.append(entry)  # waits for its pools; lower priorities may go first
                continue
            for k, v in (need or {}).items():
                free[k] -= v
            slots -= 1
            out[i] = (now, now + dur[i])
            heapq.heappush(running, (now + dur[i], pos[i], i))
        for entry in blocked:
            heapq.heappush(ready, entry)
        if not running:
            break  # cannot happen after check_resources: every need fits an empty pool
        now = running[0][0]
        while running and running[0][0] == now:  # every task ending now frees its slots
            _, _, i = heapq.heappop(running)
            slots += 1
            for k, v in needs.get(i, {}).items():
                free[k] += v
            for s in p.successors[i]:
                waiting[s] -= 1
                if not waiting[s]:
                    heapq.heappush(ready, (-prio[s], pos[s], s))
    return out


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
