"""Improve: analyse a flow (levels, critical path, bottlenecks, suggestions) and tune a copy.

Everything here is pure: the user's flow is read, never changed. :func:`optimize` builds new
Tasks with :meth:`Task.with_options` and rebuilds the composition tree around them (tasks that
refer to a tuned task through their arguments are rebuilt too), so the tuned flow has the same
tasks, edges, order, sources and sinks, and differs only in the options it reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from .._graph.task import Flow, Fragment, Ref, Task, _coerce
from .._graph.walk import KEEP, transform
from .._plan.planner import Plan, plan
from .._plan.policy import Mode, estimate_durations, resolve_settings
from .history.write import tool_identity
from .simulate import _capacities, _history_store, simulate

__all__ = ["Analysis", "Bottleneck", "Change", "Optimization", "Suggestion", "analyze",
           "optimize"]


@dataclass(frozen=True, slots=True)
class Bottleneck:
    """A task worth a look: on the critical path, slow in history, or both."""

    task_id: str
    tool: str
    estimate: float | None
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A plain-language suggestion; ``kind`` is one of ``parallel_mode``, ``pool_capacity``,
    ``add_timeout``, ``raise_timeout``, ``add_retries``; ``target`` names the tool or pool."""

    kind: str
    target: str | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class Analysis:
    """What :func:`analyze` found.

    Attributes:
        total_tasks, levels, width: the plan's size, number of levels and widest level.
        parallel_opportunities: tasks that could run beside another one of their level.
        critical_path: ids along the longest path; ``critical_path_duration`` its length, or
            ``None`` when a task on it has no estimate.
        estimates: task id -> seconds (``None``: unknown); ``sources`` says from where
            (``"history"``, ``"declared"`` or ``"unknown"``).
        makespans: predicted wall time per mode (unknown durations count 1 s).
        bottlenecks, suggestions: see :class:`Bottleneck` and :class:`Suggestion`.
        stats: the flow's tools' qualified names -> :class:`~flowdsl._record.history.ToolStats`
            (empty without history).
    """

    name: str | None
    total_tasks: int
    levels: int
    width: int
    parallel_opportunities: int
    critical_path: list[str]
    critical_path_duration: float | None
    estimates: dict[str, float | None]
    sources: dict[str, str]
    makespans: dict[str, float]
    bottlenecks: list[Bottleneck] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data; also has the reference design's keys (``dependency_levels``,
        ``optimization_suggestions``)."""
        return {
            "name": self.name, "total_tasks": self.total_tasks, "levels": self.levels,
            "dependency_levels": self.levels, "width": self.width,
            "parallel_opportunities": self.parallel_opportunities,
            "critical_path": list(self.critical_path),
            "critical_path_duration": self.critical_path_duration,
            "estimates": dict(self.estimates), "sources": dict(self.sources),
            "makespans": dict(self.makespans),
            "bottlenecks": [asdict(b) for b in self.bottlenecks],
            "suggestions": [asdict(s) for s in self.suggestions],
            "optimization_suggestions": [s.message for s in self.suggestions],
            "stats": {k: v.to_dict() for k, v in self.stats.items()},
        }


def analyze(flow: Any, history: Any = None, *, mode: str | None = None, resources: Any = None,
            max_concurrency: int | None = None, slow: float = 5.0, min_samples: int = 3,
            max_failure_rate: float = 0.1, k: float = 3.0, floor: float = 1.0,
            scope: str | None = None) -> Analysis:
    """Analyse ``flow`` for speed and robustness, using its run history when given.

    Args:
        flow: a Flow, Fragment, Task or list.
        history: as in :func:`flowdsl.run`: ``None`` the default store, ``False`` none
            (only declared ``expected_duration`` estimates), a path or a
            :class:`~flowdsl.HistoryStore`.
        mode: the mode the flow runs in now (default: as in :func:`flowdsl.run`, the Flow's,
            else parallel).
        resources, max_concurrency: the pools and worker limit it runs with (default: the
            Flow's). These settings are resolved by the function ``run`` uses.
        slow: a task whose estimate is at least this many seconds is a bottleneck.
        min_samples: history needed before a tool's statistics are trusted.
        max_failure_rate: a tool failing more often than this, without retries, is flagged.
        k, floor: suggested timeouts are ``max(floor, k * p95)``.
        scope: which history counts: ``"flow"`` (the runs of this flow, by name; the store's
            default) or ``"all"`` (the same tools in any flow). Tools always match by their
            module-qualified name, never by the short name alone.
    """
    p = flow if isinstance(flow, Plan) else plan(flow)
    settings = resolve_settings(flow, p, mode=mode, resources=resources,
                                max_concurrency=max_concurrency, where="analyze()")
    store = _history_store(history)
    stats: dict[str, Any] = {}
    if store is not None:
        wide = (store.scope if scope is None else scope) == "all"
        mine = {tool_identity(t.tool) for t in p.tasks.values()}
        stats = {k: v for k, v in store.tool_stats(
            flow=None if wide else (p.name or "")).items() if k in mine}
    # The run's precedence (declared > history); a task with neither is "unknown" here.
    dur0, sources = estimate_durations(p, None, None if store is None
                                       else partial(store.durations, p, scope=scope))
    estimates: dict[str, float | None] = {i: None if sources[i] == "default" else v
                                          for i, v in dur0.items()}
    sources = {i: "unknown" if s == "default" else s for i, s in sources.items()}
    known = sorted(v for v in estimates.values() if v is not None)
    filler = known[len(known) // 2] if known else 1.0  # unknown tasks weigh a typical task
    dur = {i: filler if v is None else v for i, v in estimates.items()}
    path, length = p.critical_path(dur)
    caps = _capacities(settings.resources)
    max_concurrency = settings.max_concurrency
    # The simulations read the store analyze reads (map counts), never another one.
    sim_history = False if store is None else store
    makespans = {m.value: simulate(p, m, resources=caps, max_concurrency=max_concurrency,
                                   durations=dur, history=sim_history).makespan
                 for m in (Mode.SEQUENTIAL, Mode.PARALLEL)}
    a = Analysis(
        name=p.name, total_tasks=len(p), levels=len(p.levels), width=p.width,
        parallel_opportunities=sum(len(lv) - 1 for lv in p.levels), critical_path=path,
        critical_path_duration=None if any(estimates[i] is None for i in path) else length,
        estimates=estimates, sources=sources, makespans=makespans, stats=stats)
    on_path = set(path)
    for i, t in p.tasks.items():
        st = stats.get(tool_identity(t.tool))
        reasons = []
        if i in on_path:
            reasons.append("on the critical path")
        if st is not None and st.p95 is not None and st.p95 >= slow:
            reasons.append(f"slow in history (p95 {st.p95:.3g}s)")
        elif (estimate := estimates[i]) is not None and estimate >= slow:
            reasons.append(f"slow estimate ({estimate:.3g}s)")
        if reasons:
            a.bottlenecks.append(Bottleneck(i, t.tool.name, estimates[i], tuple(reasons)))
    a.bottlenecks.sort(key=lambda b: -(b.estimate or 0.0))
    _suggest_mode(a, settings.mode)
    if caps:
        _suggest_pools(a, p, caps, max_concurrency, dur, sim_history)
    _suggest_tools(a, p, stats, min_samples, max_failure_rate, k, floor)
    return a


def _suggest_mode(a: Analysis, mode: Mode) -> None:
    seq, par = a.makespans[Mode.SEQUENTIAL.value], a.makespans[Mode.PARALLEL.value]
    if mode in (Mode.SEQUENTIAL, Mode.CONDITIONAL) and a.width > 1 and par < seq * 0.99:
        a.suggestions.append(Suggestion("parallel_mode", None, (
            f"use mode='parallel': the flow runs in {mode} mode, yet "
            f"{a.parallel_opportunities} task(s) can "
            f"run beside others (width {a.width}); predicted makespan {seq:.3g}s -> "
            f"{par:.3g}s")))


def _suggest_pools(a: Analysis, p: Plan, caps: Mapping[str, int], max_concurrency: int | None,
                   dur: Mapping[str, float], history: Any) -> None:
    base = a.makespans[Mode.PARALLEL.value]
    for pool, cap in caps.items():
        demand = sum(t.spec.resources.get(pool, 0) for t in p.tasks.values())
        if demand <= cap:
            continue

        def span(c: int, pool: str = pool) -> float:
            return simulate(p, Mode.PARALLEL, resources={**caps, pool: c},
                            max_concurrency=max_concurrency, durations=dur,
                            history=history).makespan

        best = span(demand)
        if best > base * 0.95:
            continue  # the pool is not what holds the flow back
        lo, hi = cap + 1, demand  # the smallest capacity reaching the best makespan
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if span(mid) <= best * 1.001 else (mid + 1, hi)
        a.suggestions.append(Suggestion("pool_capacity", pool, (
            f"raise pool {pool!r} from {cap} to {lo}: its tasks wait for it; predicted "
            f"makespan {base:.3g}s -> {best:.3g}s")))


def _suggest_tools(a: Analysis, p: Plan, stats: Mapping[str, Any], min_samples: int,
                   max_failure_rate: float, k: float, floor: float) -> None:
    by_tool: dict[str, list[Task[Any]]] = {}
    for t in p.tasks.values():
        by_tool.setdefault(tool_identity(t.tool), []).append(t)
    for ident, tasks in by_tool.items():
        name = tasks[0].tool.name
        st = stats.get(ident)
        # the observed p95, when enough calls completed for it to be trusted
        p95: float | None = (st.p95 if st is not None and st.completed >= min_samples
                             else None)
        advice = f"timeout={max(floor, k * p95):.3g}" if p95 is not None else "a timeout"
        timeouts = [t.spec.timeout for t in tasks if t.spec.timeout is not None]
        if len(timeouts) < len(tasks):
            seen = f" (observed p95 {p95:.3g}s)" if p95 is not None else ""
            a.suggestions.append(Suggestion("add_timeout", name, (
                f"add {advice} to tool {name!r}{seen}: without one, a hung call blocks "
                "the run forever")))
        elif st is not None and p95 is not None and (
                min(timeouts) < p95 or st.timeouts >= 0.05 * st.attempts):
            a.suggestions.append(Suggestion("raise_timeout", name, (
                f"raise the timeout of tool {name!r} ({min(timeouts):.3g}s) to "
                f"{max(floor, k * p95):.3g}: its p95 is {p95:.3g}s and "
                f"{st.timeouts} of {st.attempts} calls timed out")))
        if (st is not None and st.success_rate is not None and st.count >= min_samples
                and 1 - st.success_rate > max_failure_rate
                and any(t.spec.retries == 0 for t in tasks)):
            a.suggestions.append(Suggestion("add_retries", name, (
                f"tool {name!r} failed in {st.failed} of {st.completed + st.failed} runs and "
                "has no retries: add retries=2 with a backoff if its failures are transient")))


@dataclass(frozen=True, slots=True)
class Change:
    """One change :func:`optimize` made: ``field`` of ``target`` went from ``old`` to
    ``new``, because ``reason``."""

    target: str
    field: str
    old: Any
    new: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.target}.{self.field}: {self.old!r} -> {self.new!r} ({self.reason})"


@dataclass(slots=True)
class Optimization:
    """What :func:`optimize` returns.

    Attributes:
        flow: the tuned copy (a Flow when a Flow was given, with ``mode`` set).
        mode: the best mode found.
        changes: every change, with its reason.
        makespans: predicted makespan per mode considered.
        analysis: the analysis of the original flow.
    """

    flow: Any
    mode: str
    changes: list[Change]
    makespans: dict[str, float]
    analysis: Analysis

    def report(self) -> str:
        """The changes, one per line."""
        if not self.changes:
            return "no changes: the flow is already tuned for its history"
        return "\n".join(str(c) for c in self.changes)


def optimize(flow: Any, history: Any = None, *, k: float = 3.0, floor: float = 1.0,
             ceiling: float | None = None, min_samples: int = 3, resources: Any = None,
             max_concurrency: int | None = None, items: Any = None,
             scope: str | None = None) -> Optimization:
    """Tune a copy of ``flow``: the mode with the shortest predicted makespan and per-task
    timeouts from history, ``max(floor, k * p95)`` of the tool's successful calls (capped at
    ``ceiling``), for tools with at least ``min_samples`` completed runs.

    The flow given is never changed; the copy has the same tasks, edges and order. ``scope``
    is :func:`analyze`'s: by default only this flow's history counts.
    """
    a = analyze(flow, history, resources=resources, max_concurrency=max_concurrency, k=k,
                floor=floor, min_samples=min_samples, scope=scope)
    p = plan(flow)
    settings = resolve_settings(flow, p, resources=resources, max_concurrency=max_concurrency,
                                where="optimize()")
    current = flow.mode if isinstance(flow, Flow) else None
    caps = _capacities(settings.resources)
    mc = settings.max_concurrency
    store = _history_store(history)  # as analyze read it (a store is opened once per path)
    dur = {i: v for i, v in a.estimates.items() if v is not None}
    modes = [Mode.SEQUENTIAL.value, Mode.PARALLEL.value] + (
        [Mode.PIPELINE.value] if items is not None else [])
    spans = {m: simulate(p, m, resources=caps, max_concurrency=mc, durations=dur,
                         history=False if store is None else store,
                         items=items if m == Mode.PIPELINE.value else None).makespan
             for m in modes}
    best = Mode.SEQUENTIAL.value  # the simplest mode, unless another is at least 1% faster
    for m in modes[1:]:
        if spans[m] < spans[best] * 0.99:
            best = m
    changes = []
    if best != current:
        changes.append(Change("flow", "mode", current, best, "predicted makespan " + ", ".join(
            f"{m} {s:.3g}s" for m, s in spans.items())))
    tuned: dict[str, Task[Any]] = {}
    for i, t in p.tasks.items():
        st = a.stats.get(tool_identity(t.tool))
        if st is None or st.completed < min_samples or st.p95 is None:
            continue
        new = max(floor, k * st.p95)
        new = round(min(new, ceiling) if ceiling is not None else new, 3)
        if t.spec.timeout != new:
            tuned[i] = t.with_options(timeout=new)
            changes.append(Change(i, "timeout", t.spec.timeout, new, (
                f"max({floor:g}, {k:g} x p95 {st.p95:.3g}s) over {st.completed} runs of "
                f"tool {t.tool.name!r}")))
    return Optimization(_rebuild(flow, p, tuned, best), best, changes, spans, a)


def _rebuild(flow: Any, p: Plan, tuned: Mapping[str, Task[Any]], mode: str) -> Any:
    """The composition of ``flow`` with ``tuned`` tasks swapped in (and every task that
    refers to a swapped one through its arguments rebuilt to refer to the new one). A new
    task takes the old one's place in the expression, so it gets the same id."""
    new: dict[Task[Any], Task[Any]] = {}  # old task object -> its replacement (itself if unchanged)
    for i in p.order:  # topological: argument references are rebuilt before their users
        old = p.tasks[i]
        t = tuned.get(i, old)
        if any(new[u] is not u for u in t.upstream):
            t = t._replace(args=_swap(t.args, new), kwargs=_swap(t.kwargs, new),
                           upstream=tuple(new[u] for u in t.upstream))
        new[old] = t
    root = flow.fragment if isinstance(flow, Flow) else _coerce(flow)
    memo: dict[int, Any] = {}
    stack: list[Any] = [root]
    while stack:  # post-order over the tree, iteratively; shared sub-trees rebuilt once
        node = stack[-1]
        if isinstance(node, Task):
            memo[id(node)] = new.get(node, node)
            stack.pop()
            continue
        todo = [q for q in node.parts if id(q) not in memo]
        if todo:
            stack.extend(todo)
            continue
        done = tuple(memo[id(q)] for q in node.parts)
        changed = any(a is not b for a, b in zip(done, node.parts))
        # An embedded flow is a fragment carrying its name and unit: both are kept.
        memo[id(node)] = Fragment(node.kind, done, node.unit, node.ns) if changed else node
        stack.pop()
    out = memo[id(root)]
    return _reflow(flow, out, mode) if isinstance(flow, Flow) else out


def _reflow(flow: Flow[Any], fragment: Any, mode: str | None) -> Flow[Any]:
    return Flow(flow.name, fragment, flow.description, mode=mode, context=flow.context,
                resources=flow.resources, max_concurrency=flow.max_concurrency)


def _swap(value: Any, new: Mapping[Task[Any], Task[Any]]) -> Any:
    """``value`` with every Task and Ref pointing at the rebuilt tasks."""
    def rebuilt(v: Any) -> Any:
        if isinstance(v, Task):
            return new.get(v, v)
        if isinstance(v, Ref):
            return Ref(new.get(v.task, v.task), v.path)
        return KEEP

    return transform(value, rebuilt)
