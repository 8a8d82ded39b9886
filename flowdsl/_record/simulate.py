"""Predict: a discrete-event simulation of the runners' scheduling policy, running no tool.

The rules are not copied here: durations, priorities, the order of ready tasks, Flow
defaults, worker and executor limits and the pool grant all come from
:mod:`flowdsl._plan.policy`, the module the runner calls. What this module adds is time:
an event loop over task ends instead of real sleeps. Each mode is simulated as its runner
drives it:

- sequential: one task at a time, in ``plan.order``.
- conditional: one task at a time from a ready queue, lowest plan position first (every task
  is assumed to run: a condition cannot be evaluated without running its upstream).
- parallel (and pipeline without items): list scheduling. A task is ready when all of its
  predecessors ended; ready tasks are taken best first (:func:`~flowdsl._plan.policy.ranked`)
  by free workers (:func:`~flowdsl._plan.policy.worker_limit`); a worker holds its task while
  it waits for its pools (:class:`~flowdsl._plan.policy.Grants`, as :class:`~flowdsl.Pools`)
  and then for a slot of its executor. As in a run, units released by the tasks ending at
  one instant are granted after the tasks those ends made ready have queued.
- pipeline with N items: each task is a stage handling items one at a time, in order; item
  ``i`` enters stage ``s`` when it left every predecessor stage and item ``i-1`` left ``s``.

State of the event loop: ``ready`` (a heap of ranks), ``waiting`` (id -> count of unfinished
predecessors), ``slots`` (free workers) and, in :class:`_Engine`, ``running`` (a heap of
(end, seq, id)), ``grants`` (the pools' free units and waiters) and ``ex_free``/``ex_wait``
(executor slots and their FIFO).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .._graph.task import Task
from .._plan import policy
from .._plan.planner import Plan, plan
from .._plan.policy import Grants, Mode

__all__ = ["SimTask", "Simulation", "resolve_durations", "simulate"]


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
        sources: where each duration came from (``"given"``, ``"declared"``, ``"history"``
            or ``"default"``, in that order of precedence).
        lower_bound: no schedule can be shorter (critical path, pool and worker bounds).
        critical_path: the longest path through the flow for these durations.
        items: the number of pipeline items simulated (``None`` otherwise).
        item_spans: for pipelines over items, task id -> [(start, end)] per item.
        children: mapped task id -> the number of children assumed (its last recorded
            count, else 1); its duration is one child's times that.
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
    children: dict[str, int] = field(default_factory=dict)

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
                              "source": self.sources[i],
                              **({"children": self.children[i]} if i in self.children
                                 else {})} for i, t in self.tasks.items()}}

    def __repr__(self) -> str:
        return (f"<Simulation {self.mode}: makespan {self.makespan:.3f}s for "
                f"{len(self.tasks)} tasks (lower bound {self.lower_bound:.3f}s)>")


def _history_store(history: Any) -> Any:
    """``history`` as a store, as :func:`flowdsl.run` reads it: ``None`` (or ``True``) the
    default store, ``False`` none, a path or a :class:`~flowdsl.HistoryStore`."""
    from .history import open_history

    return open_history(None if history is True else history)


def resolve_durations(p: Plan, durations: Mapping[str, float] | None = None,
                      history: Any = None, scope: str | None = None
                      ) -> tuple[dict[str, float], dict[str, str]]:
    """Each task's duration and its source, by the run's precedence
    (:func:`~flowdsl._plan.policy.estimate_durations`): given ``durations``, else the declared
    ``expected_duration``, else history (the task's completed runs in this flow; with
    ``scope="all"`` also its tool's in other flows), else 1 s. The history store is opened
    only when some task needs it."""

    def recorded() -> Mapping[str, float]:
        store = _history_store(history)
        return store.durations(p, scope=scope) if store is not None else {}

    return policy.estimate_durations(p, durations, recorded, partial(_counts, p, history))


def _counts(p: Plan, history: Any) -> Mapping[str, int]:
    store = _history_store(history)
    return store.map_counts(p) if store is not None else {}


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
             executor_limits: Mapping[str, int] | None = None,
             scope: str | None = None) -> Simulation:
    """Predict a run's makespan and each task's start and end without running any tool.

    Args:
        flow: a Flow, Fragment, Task, list or :class:`~flowdsl.Plan`. A Flow's own mode,
            resources and max_concurrency are used when not given here (as in a run).
        mode: ``"sequential"``, ``"parallel"`` (default), ``"pipeline"`` or ``"conditional"``
            (or a :class:`~flowdsl.Mode`).
        resources: pool -> capacity (pools not given are unbounded).
        max_concurrency: worker slots for parallel mode (``None``: unbounded).
        durations: task id -> seconds; wins over declared estimates and history.
        history: where durations of tasks with no declared estimate come from, as in
            :func:`flowdsl.run`: ``None`` the default store, ``False`` none, a path or a
            :class:`~flowdsl.HistoryStore`.
        items: for pipelines, the items (or their number) streamed through the stages.
        executor_limits: executor name -> calls at once (default: what a run uses, 32
            threads and one process per CPU).
        scope: which history counts: ``"flow"`` (this flow's runs; the store's default) or
            ``"all"`` (the same tools in any flow).

    Raises:
        ValueError: an unknown mode or a bad ``max_concurrency``.
        ResourceError: a task needs a pool not in ``resources`` or more than its capacity.
    """
    p = flow if isinstance(flow, Plan) else plan(flow)
    settings = policy.resolve_settings(flow, p, mode=mode, resources=resources,
                                       max_concurrency=max_concurrency, where="simulate()")
    m, mc = settings.mode, settings.max_concurrency
    caps = _capacities(settings.resources)
    if caps is not None:
        p.check_resources(caps)
    dur, src = resolve_durations(p, durations, history, scope)
    n_items = None if items is None else (items if isinstance(items, int) else len(items))
    spans: dict[str, list[tuple[float, float]]] = {}
    workers = policy.worker_limit(m, mc)
    if m is Mode.SEQUENTIAL:
        times = _sequential(p, dur)
    elif m is Mode.PIPELINE and n_items is not None:
        times, spans = _pipeline(p, dur, n_items)
    else:
        prio = policy.priorities(p, dur)
        limits = executor_limits if executor_limits is not None else policy.executor_limits()
        eng = _Engine(p, dur, prio, caps, limits)
        times = eng.schedule(policy.ranked(p, m, prio), workers)
    tasks = {i: SimTask(i, *times[i]) for i in p.order}
    makespan = max((t.end for t in tasks.values()), default=0.0)
    path, _ = p.critical_path(dur)
    bound = p.lower_bound(dur, caps, None if workers >= len(p) else workers)
    if n_items:
        bound = max(bound, _pipeline_bound(p, dur, n_items))
    children = policy.expected_children(p, partial(_counts, p, history))
    return Simulation(m.value, makespan, tasks, dur, src, bound, path, n_items, spans,
                      children)


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
    """The runners' drive loop as events: a worker takes the best ready task and holds it
    while it waits for its pools (the policy's :class:`~flowdsl._plan.policy.Grants`, as in
    :class:`~flowdsl.Pools`), then for a slot of its executor (FIFO), then runs it."""

    def __init__(self, p: Plan, dur: Mapping[str, float], prio: Mapping[str, float],
                 caps: Mapping[str, int] | None, limits: Mapping[str, int]) -> None:
        self.p, self.dur, self.prio = p, dur, prio
        self.needs = _needs(p, caps)
        self.grants: Grants[str] = Grants(caps)
        self.kind = {i: t.spec.executor for i, t in p.tasks.items()
                     if isinstance(t, Task) and isinstance(t.spec.executor, str)
                     and t.spec.executor in limits}
        self.ex_free = dict(limits)
        self.ex_wait: dict[str, deque[str]] = {k: deque() for k in limits}
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

    def acquire(self, i: str) -> None:
        """What :meth:`Pools.acquire` does: take at once if nobody waits and it fits, else
        queue and grant."""
        need = self.needs.get(i)
        if not need or self.grants.take_now(need):
            self._to_executor(i)
            return
        self.grants.enqueue(need, self.prio[i], i)
        self.grant()

    def grant(self) -> None:
        for w in self.grants.grant():
            self._to_executor(w.token)

    def finish_next(self) -> list[str]:
        """Advance to the next end; end every task ending then, giving back its executor
        slot and pool units (granted by the caller, once the ready tasks queued)."""
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
                self.grants.release(need)
        return ended

    def schedule(self, ranked: list[str], workers: int) -> dict[str, tuple[float, float]]:
        """Run the drive loop with ``workers`` workers, ready tasks taken in ``ranked``
        order; returns task id -> (start, end)."""
        p = self.p
        rank = {t: r for r, t in enumerate(ranked)}
        waiting = {i: len(p.predecessors[i]) for i in p.order}
        ready = [rank[i] for i in p.order if not waiting[i]]
        heapq.heapify(ready)
        slots = workers
        while True:
            while ready and slots > 0:
                slots -= 1
                self.acquire(ranked[heapq.heappop(ready)])
            if self.grants.waiters:
                self.grant()  # the units the last ends released (Pools: a few ticks later)
            if not self.running:
                break  # all done (check_resources: every demand fits an empty pool)
            for i in self.finish_next():
                slots += 1
                for s in p.successors[i]:
                    waiting[s] -= 1
                    if not waiting[s]:
                        heapq.heappush(ready, rank[s])
        return self.out


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
