"""Plan: validate a composition and compute its order, levels and critical path.

State: ``preds``/``succs`` map each task id to the ids before/after it, in insertion order.
Every algorithm here is iterative and O(V+E): Kahn's algorithm gives the topological order
(first-inserted first, so the same flow always gives the same plan), the levels fall out of the
same pass, and a cycle is found by walking predecessors among the tasks Kahn could not order.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .._base import collector, hooks
from .._base.errors import CycleError, GraphTooLargeError, ResourceError
from .._base.frozen import Frozen
from .._graph.spec import FORKING
from .._graph.task import Flow, Task, materialize

__all__ = ["Plan", "check_size", "plan"]


def _order(ids: list[str], preds: Mapping[str, Collection[str]]
           ) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Kahn's algorithm, a level at a time: (order, successors, start of each level in
    order, then ``len(order)``); raises CycleError."""
    succs: dict[str, list[str]] = {i: [] for i in ids}
    indeg = {i: len(ps) for i, ps in preds.items()}
    for i, ps in preds.items():
        for p in ps:
            succs[p].append(i)
    order = [i for i in ids if not indeg[i]]
    # `order` doubles as the queue. A task is appended once its last predecessor is placed;
    # that predecessor sits in the level being swept, the highest level among them, so the
    # task belongs to the next level: each level is one contiguous run of `order`.
    bounds = [0]
    start, end = 0, len(order)
    append = order.append
    while start < end:
        for k in range(start, end):
            for s in succs[order[k]]:
                d = indeg[s] - 1
                indeg[s] = d
                if not d:
                    append(s)
        bounds.append(end)
        start, end = end, len(order)
    if len(order) < len(ids):
        raise CycleError(_find_cycle(ids, preds, indeg))
    return order, succs, bounds


def _longest_path(order: Iterable[str], preds: Mapping[str, Iterable[str]],
                  dur: Mapping[str, float]) -> tuple[list[str], float]:
    """The longest path through a DAG given in topological ``order``, and its length."""
    dist: dict[str, float] = {}
    best: dict[str, str | None] = {}
    for i in order:
        top, arg = 0.0, None
        for p in preds[i]:
            if dist[p] > top:
                top, arg = dist[p], p
        dist[i] = top + dur[i]
        best[i] = arg
    if not dist:
        return [], 0.0
    last = max(dist, key=dist.__getitem__)
    length = dist[last]
    path = []
    end: str | None = last
    while end is not None:
        path.append(end)
        end = best[end]
    return path[::-1], length


def _lanes_bound(durations: Sequence[float], lanes: int) -> float:
    """The least time ``durations`` (calls) need when at most ``lanes`` run at once: the
    largest of their total / lanes and, with the calls longest first, (k + 1) x the
    (k x lanes + 1)-th longest for every k (of the k x lanes + 1 longest calls, one lane
    runs k + 1 in a row; k = 0 is the longest call). Six 0.1 s calls on 3 lanes: 0.2 s;
    five: 0.2 s too, where total / lanes says 0.167 s."""
    if not durations:
        return 0.0
    ds = sorted(durations, reverse=True)
    best = sum(ds) / lanes
    for k, idx in enumerate(range(0, len(ds), lanes)):
        best = max(best, (k + 1) * ds[idx])
    return best


def _find_cycle(ids: list[str], preds: Mapping[str, Iterable[str]],
                indeg: dict[str, int]) -> list[str]:
    # Every task Kahn left behind has a predecessor that was also left behind, so walking
    # predecessors from any of them must come back to a task already on the walk.
    left = {i for i in ids if indeg[i] > 0}
    pos: dict[str, int] = {}
    path: list[str] = []
    node = next(i for i in ids if i in left)
    while node not in pos:
        pos[node] = len(path)
        path.append(node)
        node = next(p for p in preds[node] if p in left)
    cycle = path[pos[node]:][::-1]
    rank = {i: n for n, i in enumerate(ids)}
    first = min(range(len(cycle)), key=lambda k: rank[cycle[k]])
    cycle = cycle[first:] + cycle[:first]
    return [*cycle, cycle[0]]


class Plan(Frozen):
    """An immutable, validated plan of a flow. Build it with :func:`plan` or ``flow.plan()``.

    Attributes:
        name: the flow's name (``None`` for an unnamed composition).
        tasks: task id -> Task, in insertion order.
        ids: Task -> its id in this plan (automatic ids are given by the flow's structure;
            see :meth:`id_of`).
        order: a topological order of the ids.
        levels: ids grouped by level; a task's level is 1 + the highest level of its
            dependencies.
        predecessors / successors: id -> tuple of ids.
        sources / sinks: ids with no predecessors / no successors.
    """

    __slots__ = ("_fork", "_index", "flow", "groups", "ids", "levels", "name", "order",
                 "predecessors", "sinks", "sources", "successors", "tasks")

    name: str | None
    flow: Any
    tasks: Mapping[str, Task[Any]]
    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    predecessors: Mapping[str, tuple[str, ...]]
    successors: Mapping[str, tuple[str, ...]]
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    ids: Mapping[Task[Any], str]
    groups: tuple[Any, ...]
    _index: dict[str, int] | None
    _fork: bool | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        msg = "Plan is built by flowdsl.plan(flow) or flow.plan()"
        raise TypeError(msg)

    @classmethod
    def _build(cls, tasks: Mapping[str, Task[Any]], preds: Mapping[str, Collection[str]],
               name: str | None = None, flow: Any = None, groups: tuple[Any, ...] = (),
               task_ids: Mapping[Task[Any], str] | None = None) -> Plan:
        ids = list(tasks)
        order, succs, bounds = _order(ids, preds)
        p = object.__new__(cls)
        s = object.__setattr__
        s(p, "name", name)
        s(p, "flow", flow)
        s(p, "groups", groups)  # units: groups of tasks run as one (see flowdsl.Fragment)
        s(p, "tasks", MappingProxyType(dict(tasks)))
        s(p, "ids", MappingProxyType(task_ids if task_ids is not None else {}))
        s(p, "order", order_t := tuple(order))
        s(p, "levels", tuple([order_t[a:b] for a, b in itertools.pairwise(bounds)]))
        # `preds` is keyed in the order of `tasks` when materialize built it: map in C then.
        pv = preds.values() if list(preds) == ids else [preds[i] for i in ids]
        s(p, "predecessors", MappingProxyType(dict(zip(ids, map(tuple, pv)))))
        s(p, "successors", MappingProxyType(dict(zip(succs, map(tuple, succs.values())))))
        # Kahn starts from every task without predecessors, in insertion order: level 0.
        s(p, "sources", p.levels[0] if p.levels else ())
        s(p, "sinks", tuple([i for i in order if not succs[i]]))
        s(p, "_index", None)  # built by index() on first use
        s(p, "_fork", None)  # found by needs_fork on first use
        return p

    def _copy_hint(self) -> str:
        return ("plan a changed flow instead: flowdsl.plan(flow) or flow.plan() of a copy made "
                "with .named(...), .when(...) or .with_options(...)")

    @classmethod
    def _derived(cls) -> tuple[str, ...]:
        return ("_fork", "_index")

    def __len__(self) -> int:
        return len(self.order)

    def __repr__(self) -> str:
        edges = sum(map(len, self.predecessors.values()))
        return (f"<Plan {self.name or 'flow'}: {len(self.order)} tasks, {edges} edges, "
                f"{len(self.levels)} levels, width {self.width}>")

    @property
    def width(self) -> int:
        """The size of the widest level (how many tasks could run at once, at most)."""
        return max(map(len, self.levels), default=0)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(p, i) for i in self.order for p in self.predecessors[i]]

    def id_of(self, task: Task[Any]) -> str:
        """The id ``task`` has in this plan (its explicit id, or the automatic one the flow's
        structure gave it).

        Raises:
            KeyError: ``task`` is not in this flow; the message names it.
        """
        try:
            return self.ids[task]
        except (KeyError, TypeError):
            msg = (f"{task!r} is not a task of {self.name or 'this flow'!r} (a copy made by "
                   ".named(), .when() or .with_options() is another task)")
            raise KeyError(msg) from None

    @property
    def needs_fork(self) -> bool:
        """Whether a task of this plan runs on an executor whose workers are forked
        (``executor="process"``): a run of it then starts the fork helper before it starts
        any thread (see ``flowdsl._run.zygote``). Looked up once per plan, on first use."""
        fork = self._fork
        if fork is None:
            fork = any(isinstance(ex := t.spec.executor, str) and ex in FORKING
                       for t in self.tasks.values())
            object.__setattr__(self, "_fork", fork)
        return fork

    def index(self, task_id: str) -> int:
        """The position of ``task_id`` in :attr:`order`."""
        index = self._index
        if index is None:
            index = {i: n for n, i in enumerate(self.order)}
            object.__setattr__(self, "_index", index)
        return index[task_id]

    def durations(self, durations: Mapping[str, float] | None = None,
                  default: float = 1.0) -> dict[str, float]:
        """Each task's duration: ``durations[id]``, else its declared ``expected_duration``,
        else ``default``."""
        given = durations or {}
        out = {}
        for i, t in self.tasks.items():
            d = given.get(i)
            if d is None:
                d = t.spec.expected_duration
            out[i] = default if d is None else float(d)
        return out

    def critical_path(self, durations: Mapping[str, float] | None = None
                      ) -> tuple[list[str], float]:
        """The longest path through the DAG and its length, for ``durations`` (id -> seconds;
        missing ids use their declared estimate, else 1)."""
        return _longest_path(self.order, self.predecessors, self.durations(durations))

    def remaining(self, durations: Mapping[str, float] | None = None) -> dict[str, float]:
        """Each task's longest remaining path to the end of the flow, its own duration
        included (the critical-path priority of list scheduling)."""
        dur = self.durations(durations)
        rem: dict[str, float] = {}
        succs = self.successors
        for i in reversed(self.order):
            best = 0.0
            for s in succs[i]:
                r = rem[s]
                if r > best:
                    best = r
            rem[i] = dur[i] + best
        return rem

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = hooks.get("plan_mimebundle")(self)
        return bundle

    def lower_bound(self, durations: Mapping[str, float] | None = None,
                    capacities: Mapping[str, int] | None = None,
                    max_concurrency: int | None = None,
                    children: Mapping[str, Sequence[float]] | None = None) -> float:
        """No schedule can finish sooner: the largest of the critical path (a mapped task's
        span as :meth:`spans` gives it), for each pool the work needing it (amount x
        duration) / its capacity, and the work of the tasks that take a worker slot /
        ``max_concurrency``. Where every call of a pool takes the same amount (and for the
        workers), the calls count as on lanes (:func:`_lanes_bound`): five 0.1 s calls
        through a pool of 3 need 0.2 s, not 0.5 / 3.

        Args:
            durations: task id -> seconds (missing: declared estimate, else 1).
            capacities: pool -> capacity.
            max_concurrency: the workers; ``None``: unbounded.
            children: mapped task id -> its children's durations, when known (measured):
                the task then counts as its children's work, not as one node.
        """
        span, work = self.spans(durations, children, capacities, max_concurrency)
        bound = _longest_path(self.order, self.predecessors, span)[1]
        kids = {i: ds for i, ds in (children or {}).items() if ds and i in span}
        if max_concurrency:
            # A mapped task's children run in lanes of their own (at most max_concurrency
            # per mapped task, beside the workers), so only the other tasks' work is
            # bounded by the workers; each map's work is bounded by its span instead.
            bound = max(bound, _lanes_bound([w for i, w in work.items() if i not in kids],
                                            max_concurrency))
        for pool, cap in (capacities or {}).items():
            need, calls, amounts = 0.0, [], set()
            for i, t in self.tasks.items():
                amount = t.spec.resources.get(pool, 0) if isinstance(t, Task) else 0
                if amount:
                    need += amount * work[i]
                    calls += list(kids.get(i, (work[i],)))
                    amounts.add(amount)
            bound = max(bound, need / cap)
            if len(amounts) == 1:  # every call takes the same share: cap // amount at once
                bound = max(bound, _lanes_bound(calls, max(1, cap // amounts.pop())))
        return bound

    def spans(self, durations: Mapping[str, float] | None = None,
              children: Mapping[str, Sequence[float]] | None = None,
              capacities: Mapping[str, int] | None = None,
              max_concurrency: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Each task's shortest possible span and its work (seconds of tool calls).

        A task's span and work are its duration (:meth:`durations`), except a mapped task
        whose ``children`` durations are given: its work is their sum, and its span the
        least time those children need on the lanes they can use at once (min(children,
        ``max_parallel``, ``max_concurrency``, and for each pool it needs, capacity //
        amount)): see :func:`_lanes_bound`.
        """
        span = self.durations(durations)
        work = dict(span)
        for i, ds in (children or {}).items():
            t = self.tasks.get(i)
            if t is None or t.fan is None or not ds:
                continue
            fan = t.fan
            lanes = len(ds)
            if fan.max_parallel:
                lanes = min(lanes, fan.max_parallel)
            if max_concurrency:
                lanes = min(lanes, max_concurrency)
            for pool, amount in t.spec.resources.items():
                cap = (capacities or {}).get(pool)
                if cap and amount:
                    lanes = min(lanes, max(1, cap // amount))
            work[i] = float(sum(ds))
            span[i] = _lanes_bound(ds, lanes)
        return span, work

    def check_resources(self, capacities: Mapping[str, int]) -> None:
        """Raise :class:`ResourceError` for a task needing an unknown pool or more than a
        pool's capacity."""
        for i, t in self.tasks.items():
            if not isinstance(t, Task):
                continue
            for pool, amount in t.spec.resources.items():
                if pool not in capacities:
                    known = ", ".join(sorted(capacities)) or "none"
                    msg = (f"task {i!r} needs pool {pool!r}, which is not defined "
                           f"(pools: {known}); pass resources={{{pool!r}: N}} to run()")
                    raise ResourceError(msg, task_id=i, pool=pool)
                if amount > capacities[pool]:
                    msg = (f"task {i!r} needs {amount} of pool {pool!r}, whose capacity is "
                           f"{capacities[pool]}: it could never run")
                    raise ResourceError(msg, task_id=i, pool=pool)


def check_size(nodes: int, edges: int, max_nodes: int | None, max_edges: int | None) -> None:
    """Raise :class:`GraphTooLargeError` when a graph is over the limits given (ValueError
    for a limit that is no whole number > 0)."""
    for what, size, limit in (("tasks", nodes, max_nodes), ("edges", edges, max_edges)):
        option = "max_nodes" if what == "tasks" else "max_edges"
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit <= 0):
            msg = f"{option}={limit!r} is invalid: expected a whole number > 0 or None"
            raise ValueError(msg)
        if limit is not None and size > limit:
            msg = f"the flow has {size} {what}, over {option}={limit}; nothing ran"
            raise GraphTooLargeError(msg, what=what, limit=limit, size=size)


def plan(flow: Any, *, max_nodes: int | None = None, max_edges: int | None = None) -> Plan:
    """Validate ``flow`` (a Flow, Fragment, Task, Tool or list) and return its :class:`Plan`.

    Args:
        flow: what to plan.
        max_nodes, max_edges: refuse a flow with more tasks or edges than this (for flows
            built from untrusted input), before its order is computed.

    Raises:
        GraphTooLargeError: the flow is over ``max_nodes`` or ``max_edges``.
        CycleError: the tasks form a cycle; ``.cycle`` lists it.
        DuplicateTaskError: two different tasks share an id.
        CompositionError: ``flow`` is not something that can be planned.
    """
    with collector.paused():  # (planning makes no garbage cycles)
        g = materialize(flow)
        if max_nodes is not None or max_edges is not None:
            check_size(len(g.tasks), sum(map(len, g.preds.values())), max_nodes, max_edges)
        name = flow.name if isinstance(flow, Flow) else None
        return Plan._build(g.tasks, g.preds, name, flow, g.groups, g.ids)


