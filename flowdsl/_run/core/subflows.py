"""A mapped sub-flow (``Flow("per_item", a >> b).map(items)``) at run time: each element runs
the sub-flow's tasks as its own chain, depth-first.

The mapped node is a mapped task whose map spec carries a
:class:`~flowdsl._graph.task.SubMap` (its element lists are resolved and checked as a mapped
task's: fanout.columns). The elements
are fed by the one scheduling loop (loop.py's ``drive`` over their indices, no edges, at most
``max_parallel`` and the mode's concurrency at once); each element's chain is ``drive`` again,
over its own tasks with their edges, as a group attempt is. Element ``i``'s tasks are real core
tasks named ``node[i].task``: they go through the core's one path (``run_task``: trigger rules,
conditions, inputs, pools, executor, timeouts, retries, recording), each with its own record
(``parent`` is the mapped node), so history, progress and timelines see them as any task.

The core runs an element through an *element view*: a shallow copy of the core whose task
tables (tasks, predecessors, ids, executors, inputs, groups) are the element's, renamed; the
state that matters to the run (result, observers, pools, records, statuses, outputs, held
failures, group deadlines) is shared with the core. The sub-flow's own group options (its
``when``, ``timeout``, ``retries``, ``backoff``) are groups of the element's tasks, so they apply
per element. Nothing of this runs for a flow without a mapped sub-flow.

Outcome (SEMANTICS.md S49-S52): an element fails when one of its tasks fails, times
out or is cancelled; a failed element stops the elements in flight (their tasks end
``cancelled``) and those not started (their tasks are recorded ``cancelled``), unless the run
continues on errors, and the mapped node fails once every element is final. Otherwise its
output is the list of the elements' outputs (each the sub-flow's sink's output, a dict by task
id for several sinks, None for an element whose tasks were skipped) in input order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import anyio

from ..._base.errors import TaskInputError
from ..._graph.task import Group, SubMap, Task
from ..._plan.planner import Plan, plan
from ..executors import Executor
from ..result import TaskRecord, TaskStatus
from .fanout import columns, complete, fail_mapped
from .groups import group_turn
from .inputs import Inputs
from .loop import drive, inside
from .record import CANCELLED, COMPLETED, FAILED, RUNNING, TIMED_OUT, Item
from .steps import Steps
from .units import Units, group_timeout

__all__ = ["Shape", "run_subflow", "shape_of"]

_BAD = frozenset({FAILED, TIMED_OUT, CANCELLED})


class Shape:
    """A mapped sub-flow as planned once per run: its tasks in order (entry tasks made to
    resolve their inputs, where each element's values go), edges, sinks and active groups."""

    __slots__ = ("entries", "executors", "groups", "ids", "order", "plan", "preds", "sinks",
                 "stage_from", "tasks", "width")

    def __init__(self, sub: SubMap, executors: dict[str, Executor]) -> None:
        self.executors = executors  # step id -> its executor (run() chose them)
        p = sub_plan(sub)
        self.plan = p
        self.order = list(p.order)
        self.preds = p.predecessors
        self.sinks = list(p.sinks)
        self.entries = sub.entries
        tasks: dict[str, Task[Any]] = {}
        ids: dict[Task[Any], str] = {}
        for s in self.order:
            t = p.tasks[s]
            ids[t] = s
            if s in sub.entries and not t.dynamic:  # it takes the element: resolve its inputs
                t = t._replace(dynamic=True)
                ids[t] = s
            tasks[s] = t
        self.tasks = tasks
        self.ids = ids
        # What each stage takes its input from (sub ids), worked out once: each element's
        # resolver gets it renamed.
        self.stage_from = Inputs(tasks, ids, self.preds, {}).stage_from
        # The most tasks of one element that can run at once: 1 for a chain, whose element
        # then runs on the loop's one-worker path (no task group per element).
        self.width = max(1, p.width)
        self.groups = [g for g in p.groups if g.unit.condition is not None or g.unit.guards
                       or g.unit.timeout is not None or g.unit.trigger is not None
                       or g.unit.retries]


def sub_plan(sub: SubMap) -> Plan:
    """The sub-flow's plan (made once per sub-flow; plans are immutable)."""
    cached: Plan | None = sub.plan
    if cached is None:
        cached = sub.plan = plan(sub.flow)
    return cached


def shape_of(core: Steps, tid: str, sub: SubMap) -> Shape:
    shape: Shape | None = core.subs.get(tid)
    if shape is None:
        shape = core.subs[tid] = Shape(sub, core.sub_executors[id(sub)])
    return shape


class _ElementInputs(Inputs):
    """An element's argument resolver: as a run's, and its entry tasks take the element's
    values (``feed``: entry id -> parameter -> value)."""

    __slots__ = ("feed",)

    feed: dict[str, dict[str, Any]]

    @classmethod
    def make(cls, ids: Mapping[Task[Any], str], preds: Mapping[str, tuple[str, ...]],
             context: dict[str, Any], stage_from: dict[str, tuple[str, ...]],
             feed: dict[str, dict[str, Any]]) -> _ElementInputs:
        """An element's resolver, from its shape's work renamed (no per-task scan)."""
        self = object.__new__(cls)
        self.ids = ids
        self.preds = preds
        self.context = context
        self.fed = False  # a first stage takes the element, not the run's input
        self.stage_from = stage_from
        self.feed = feed
        return self

    def of(self, task: Task[Any], item: Item) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super().of(task, item)
        given = self.feed.get(self.ids[task])
        if given:
            kwargs = {**kwargs, **given}
        return args, kwargs


class _Order:
    """What groups.py reads of a plan (``order``) for an element's group attempts."""

    __slots__ = ("order",)

    def __init__(self, order: list[str]) -> None:
        self.order = order


def _element_view(core: Steps, shape: Shape, pre: str, values: dict[str, Any]
                  ) -> tuple[Steps, list[str], dict[str, tuple[str, ...]]]:
    """The core as element ``pre`` (``node[i].``) sees it (see the module docstring)."""
    order = [pre + s for s in shape.order]
    tasks = {pre + s: shape.tasks[s] for s in shape.order}
    ids = {t: pre + s for t, s in shape.ids.items()}
    preds = {pre + s: tuple(pre + p for p in shape.preds[s]) for s in shape.order}
    on = shape.executors
    executors: dict[str, Executor] = {pre + s: on[s] for s in shape.order}
    feed = {pre + e: {k: values[k] for k in names if k in values}
            for e, names in shape.entries.items()}
    el = object.__new__(type(core))
    el.__dict__.update(core.__dict__)
    el.tasks = tasks
    el.preds = preds
    el.ids = ids
    el.executors = executors
    stage_from = {pre + s: tuple(pre + p for p in src) for s, src in shape.stage_from.items()}
    el.inputs = _ElementInputs.make(ids, preds, core.context, stage_from, feed)
    el.cache = None  # the sub-flow's tasks are not cached (their ids are per element)
    el.ranked = order
    el.plan = _Order(order)  # type: ignore[assignment]
    el.scope = None
    if shape.groups:
        groups = [Group(g.unit, tuple(pre + m for m in g.members),
                        tuple(pre + s for s in g.sources)) for g in shape.groups]
        el.units = Units(groups, tasks)
        el._retried = el.units.retried
    else:
        el.units = None
        el._retried = {}
    return el, order, preds


async def run_subflow(core: Steps, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
    """Run mapped sub-flow ``tid``: its elements, then its own final status (module doc)."""
    fan = task.fan
    assert fan is not None
    sub: SubMap = fan.sub
    try:
        cols = columns(tid, task, args, kwargs)
        shape = shape_of(core, tid, sub)
    except TaskInputError as exc:
        return core.fail(tid, item, rec, exc, 0)
    except Exception as exc:  # the sub-flow cannot be planned
        return core.fail(tid, item, rec, TaskInputError(
            f"mapped sub-flow {tid!r} cannot be planned: {exc}"), 0)
    n = len(cols[0])
    redo: frozenset[int] | None = item.units.pop(("redo", tid), None) if item.units else None
    rec.status = RUNNING
    if rec.started_at is None:
        rec.started_at = core.now()
    if core.observers or core.log or core.events is not None:
        # its elements' steps have attempts of their own, as a mapped task's children do
        core.started(tid, rec, mapped=True)
    k = len(shape.order)
    pres = [f"{tid}[{i}]." for i in range(n)]
    kids = [p + s for p in pres for s in shape.order]
    known = core.children.get(tid)
    if known is None or len(known) < len(kids):  # over pipeline items: the widest
        core.children[tid] = kids
    # The values every element shares (unmapped keywords), then each element's own.
    base = dict(kwargs)
    if fan.positional:
        base[fan.params[0]] = None
    rest = list(zip(fan.params, cols))
    failed: list[int] = []
    sinks = shape.sinks
    tools = [shape.tasks[s].tool.name for s in shape.order] * n  # each kid's tool, by index

    def kept(i: int) -> bool:
        return redo is not None and all(j in redo for j in range(i * k, i * k + k))

    async def run_element(i: int) -> TaskStatus:
        pre = pres[i]
        values = {**base, **{p: c[i] for p, c in rest}}
        el, order, preds = _element_view(core, shape, pre, values)
        eit = Item(item.index, None, item.records)
        eit.status, eit.outputs = item.status, item.outputs
        for fid in order:
            if item.records.get(fid) is None:
                r = item.records[fid] = TaskRecord(fid, el.tasks[fid].tool.name,
                                                   resources=el.tasks[fid].spec.resources,
                                                   parent=tid)
                if item.index >= 0:
                    r.item = item.index
        retried = el._retried
        run_task = el.run_task

        def step(t: str) -> Awaitable[TaskStatus]:
            if retried and t in retried:
                return group_turn(el, t, eit)
            return run_task(t, eit, True)

        workers = min(core.child_limit, shape.width)
        if workers == 1:  # one at a time in plan order (topological): no edges to count
            await drive(order, step, workers=1, stop=lambda: scope.cancel_called, ordered=True,
                        kind="group")
        else:
            succs, waiting = inside(order, preds)
            await drive(order, step, workers=workers, succs=succs, waiting=waiting,
                        stop=lambda: scope.cancel_called, ordered=True, kind="group")
        status = item.status
        return FAILED if any(status.get(f) in _BAD for f in order) else COMPLETED

    def call_element(i: int) -> Awaitable[TaskStatus] | None:
        if kept(i):
            return None
        return run_element(i)

    def ended(i: int, status: TaskStatus) -> None:
        if status is FAILED:
            failed.append(i)
            if not core.continue_on_error:
                core.halted[tid] = f"a sibling element, {pres[i][:-1]!r}, failed"
                scope.cancel()

    width = min(n, fan.max_parallel or n, core.child_limit)
    try:
        with anyio.CancelScope() as scope:
            await drive(range(n), call_element, workers=width, then=ended,
                        stop=lambda: scope.cancel_called, kind="map")
    except BaseException:
        core.interrupted(tid, item, rec, "the run stopped", 0)
        cut = core.cut_at(item, rec) if rec.status is TIMED_OUT else None
        _close(core, item, kids, tools, tid, "the run stopped", cut)
        raise
    if failed or any(item.status.get(c) in _BAD for c in kids):
        bad = sorted(failed) or [i for i in range(n)
                                 if any(item.status.get(pres[i] + s) in _BAD for s in shape.order)]
        return _fail(core, tid, item, rec, kids, pres, shape, bad, tools)
    outs: list[Any] = []
    for p in pres:
        if len(sinks) == 1:
            outs.append(item.outputs.get(p + sinks[0]))
        else:
            outs.append({s: item.outputs.get(p + s) for s in sinks})
    return await complete(core, tid, task, item, rec, outs)


def _close(core: Steps, item: Item, kids: list[str], tools: list[str], tid: str, why: str,
           cut: tuple[float, str, float] | None) -> None:
    """Record the children that never ended (never started, or their element stopped):
    cancelled with ``why``, or timed out when the mapped node's group timed out."""
    for c, tool in zip(kids, tools):
        if c in item.status:
            continue
        child = item.records.get(c)
        if child is None:
            child = item.records[c] = TaskRecord(c, tool, parent=tid)
            if item.index >= 0:
                child.item = item.index
        if cut is not None:
            core.fail(c, item, child, group_timeout(c, cut[1], cut[2], False, 0), 0)
        else:
            core.finish(c, item, child, CANCELLED, reason=why)


def _fail(core: Steps, tid: str, item: Item, rec: TaskRecord, kids: list[str],
          pres: list[str], shape: Shape, failed: list[int], tools: list[str]) -> TaskStatus:
    """Fail mapped sub-flow ``tid`` once its elements are final."""
    first = pres[failed[0]][:-1]
    _close(core, item, kids, tools, tid, f"not started: a sibling element, {first!r}, failed",
           None)
    culprit = next((pres[failed[0]] + s for s in shape.order
                    if item.status.get(pres[failed[0]] + s) in _BAD), pres[failed[0]])
    return fail_mapped(core, tid, item, rec, f"mapped sub-flow {tid!r}",
                       f"{len(failed)} of {len(pres)} elements", culprit)
