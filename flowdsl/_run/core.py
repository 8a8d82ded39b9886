"""The one task-execution core every runner calls.

``Core.run_task(task_id, item)`` is the only code that knows about trigger rules, conditions,
argument resolution, resources, executors, timeouts, retries with backoff, output mapping,
events and rollback. Runners only decide *when* to call it and how many calls overlap.

State: an :class:`Item` is one pass of data through the flow (a plain run has one; a pipeline
over ``items`` has one per item) and holds each task's status, output and record. The core
writes statuses only through ``_finish`` so the records, observers and events agree.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread

from .._base import capture as _capture
from .._base import secrets
from .._base.errors import (
    CompositionError,
    MissingContextError,
    TaskFailed,
    TaskInputError,
    TaskTimeout,
    WorkerLost,
    exc_repr,
    exc_text,
)
from .._base.log import MAX_TASK_LOGS, RunScope, engine_logger
from .._base.loop import loop_clock
from .._base.secrets import MaskedLogger
from .._graph.task import (
    _MISSING,
    CtxRef,
    Flow,
    Fragment,
    Guard,
    Ref,
    Task,
    UpstreamRef,
    eval_condition,
    materialize,
)
from .._graph.walk import KEEP, nodes, transform
from .._plan.planner import Plan
from .caching import RunCache
from .executors import Executor, Remote
from .fanout import run_map
from .resources import Pools
from .result import (
    MAX_KEPT_ITEMS,
    Attempt,
    ErrorInfo,
    RunObserver,
    RunResult,
    TaskRecord,
    TaskStatus,
)
from .tracing import Tracing
from .units import Units, group_timeout, group_turn

__all__ = ["MAX_KEPT_ATTEMPTS", "Core", "Item", "fold"]

_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})
COMPLETED = TaskStatus.COMPLETED
SKIPPED = TaskStatus.SKIPPED
UPSTREAM_FAILED = TaskStatus.UPSTREAM_FAILED
RUNNING = TaskStatus.RUNNING
FAILED = TaskStatus.FAILED
TIMED_OUT = TaskStatus.TIMED_OUT
CANCELLED = TaskStatus.CANCELLED
CACHED = TaskStatus.CACHED
PENDING = TaskStatus.PENDING


class Item:
    """One pass of data through the flow: statuses, outputs and records per task."""

    __slots__ = ("index", "input", "left", "outputs", "records", "status", "units")

    def __init__(self, index: int, input: Any, records: dict[str, TaskRecord]) -> None:
        self.index = index
        self.input = input
        self.outputs: dict[str, Any] = {}
        self.status: dict[str, TaskStatus] = {}
        self.records = records
        self.units: dict[Any, Any] = {}  # per group: its condition's verdict, its deadline
        self.left = 0  # pipelines: tasks still to finish this item (see Core.release_item)


class Core:
    """Runs one task at a time on behalf of a runner; see the module docstring."""

    def __init__(self, plan: Plan, result: RunResult, *, context: dict[str, Any],
                 executors: Mapping[str, Executor], pools: Pools,
                 priorities: Mapping[str, float], continue_on_error: bool = False,
                 observers: Sequence[RunObserver] = (), log: bool = False,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 cache: RunCache | None = None, rollback: bool = False,
                 keep_outputs: bool = True, capture: bool = True) -> None:
        self.plan = plan
        self.cache = cache  # None unless some task of the run is cached
        active = [g for g in plan.groups if g.unit.condition is not None or g.unit.guards
                  or g.unit.timeout is not None or g.unit.trigger is not None
                  or g.unit.retries]
        self.units = Units(active, plan.tasks) if active else None  # type: ignore[arg-type]
        self._retried = self.units.retried if self.units is not None else {}
        # (member, item) -> its failures while its retried group may still mend them
        self.held: dict[tuple[str, int], list[BaseException]] = {}
        self._cut: dict[int, tuple[float, str, float]] = {}  # id(record) -> group deadline
        self.tasks: Mapping[str, Task] = plan.tasks  # type: ignore[assignment]
        self.ids: Mapping[Task, str] = plan.ids  # a referenced Task object -> its id here
        self.preds = plan.predecessors
        self.result = result
        self.context = context
        self._ctx_view = MappingProxyType(context)
        self.executors = executors
        self.pools = pools
        self.priorities = priorities
        self.continue_on_error = continue_on_error
        self.observers = tuple(observers)
        self.tracing: Tracing | None = None  # set by Tracing.attach when a provider is set
        # The run's secrets (see flowdsl/_base/secrets.py): None, and free, without any.
        self.masker = masker = result.masker
        self.log = engine_logger(run_id=result.run_id) if log else None
        if self.log is not None and masker is not None:
            self.log = MaskedLogger(self.log, masker)
        self.rng = rng or random.Random()
        self.sleep = sleep or anyio.sleep
        # Whether any task runs remotely (dask): computed once, so local runs pay one bool
        # test per task for remote handles and nothing more.
        self.remote = any(ex.remote for ex in executors.values())
        self._fetch_for: dict[str, tuple[str, ...]] = {}
        self.fed = True  # whether first pipeline stages get the run's input (check_start)
        self.stopped = False
        # The most children of one mapped task running at once; the runner sets it from the
        # mode's concurrency (sequential: 1).
        self.child_limit = 1
        self.children: dict[str, list[str]] = {}  # mapped task -> its children's ids
        self._halted: dict[str, str] = {}  # mapped task -> why its running children stop
        # Map children's input hashes, computed only while history stores outputs, and a
        # resumed run's finished children: mapped task -> index -> (input hash, output, why).
        self.child_keys = False
        self.reused: dict[str, dict[int, tuple[str, Any, str]]] = {}
        self.scope: anyio.CancelScope | None = None
        # Completed (task, item) pairs, for rollback: kept only when the run may roll back,
        # since they hold every item of a pipeline alive.
        self.completed: list[tuple[str, Item]] = []
        self.track_completed = rollback
        # Items in flight (a pipeline releases each one once every task has finished it:
        # its records are folded into `merged`, its sinks' outputs moved to `kept`).
        self.items: dict[int, Item] = {}
        self.merged: dict[str, TaskRecord] = {}
        self.kept: dict[int, list[Any]] = {}  # item index -> its sinks' outputs
        self.keep_outputs = keep_outputs
        # The event loop's clock: the one timeouts use, and a virtual one under trio's
        # MockClock, where a run takes exactly the time its sleeps say (tests compare runs
        # with simulations that way, free of machine noise).
        self._clock = loop_clock()
        self._t0 = self._clock()
        # What a task's kept lines need (see flowdsl/_base/capture.py): None when the run
        # neither captures output nor logs, and then no task pays for a scope.
        self.capture = capture
        self.lines = (RunScope(result.run_id, self._clock, self._t0, masker, self.log)
                      if capture or log else None)
        # A stage receives the outputs of its composition predecessors, not of the tasks
        # its arguments already refer to.
        self._stage_from = {
            i: tuple(p for p in plan.predecessors[i] if p not in {self.ids[u] for u in t.upstream})
            for i, t in self.tasks.items() if t.stage_param is not None}

    def check_start(self, *, input_given: bool) -> None:
        """Refuse, before any task runs, a run bound to fail on its inputs: a pipeline stage
        with nothing before it and no run ``input`` for a parameter it needs, or ``ctx(key)``
        arguments (no default) whose keys neither the run context nor any task's
        ``to_context`` provides (one error listing every missing key)."""
        self.fed = input_given
        if not input_given:
            for tid, src in self._stage_from.items():
                task = self.tasks[tid]
                param = task.stage_param
                p = task.tool.signature.parameters.get(param)  # type: ignore[arg-type]
                if not src and p is not None and p.default is p.empty:
                    name = task.tool.name
                    msg = (f"tool {name!r} needs {param}; call it: {name}({param}=...) (task "
                           f"{tid!r} is a pipeline stage with no stage before it, and run() got "
                           "no input=)")
                    raise CompositionError(msg)
        needs = [(tid, t.needs) for tid, t in self.tasks.items() if t.needs]
        if not needs:
            return
        written: set[str] = set()
        for t in self.tasks.values():
            m = t.to_context_map
            if m is not None:
                written.update((m,) if isinstance(m, str) else m.values())
        missing: dict[str, list[str]] = {}
        for tid, keys in needs:
            for k in keys:
                if k not in self.context and k not in written:
                    missing.setdefault(k, []).append(tid)
        if missing:
            have = ", ".join(sorted(map(str, self.context))) or "none"
            lines = "; ".join(f"ctx({k!r}) read by {', '.join(map(repr, ts))}"
                              for k, ts in missing.items())
            msg = (f"the run context lacks {len(missing)} key(s) that tasks read with no "
                   f"default: {lines} (context keys: {have}); pass them in run(context=...), "
                   "in Flow(context=...), or give ctx() a default")
            raise MissingContextError(msg, missing)

    def new_item(self, index: int, value: Any) -> Item:
        """A new pass of data through the flow (pipelines over items make one per item)."""
        it = Item(index, value, {})
        it.left = len(self.plan.order)
        self.items[index] = it
        if index >= 0 and secrets.in_use():  # an item may bring Secrets of its own
            self._register_secrets(value)
        return it

    def _register_secrets(self, value: Any) -> None:
        found = [v for v in nodes(value) if isinstance(v, secrets.Secret)]
        masker = secrets.masker_for(found, self.masker) if found else self.masker
        if masker is self.masker or masker is None:
            return
        self.masker = self.result.masker = masker
        if isinstance(self.log, MaskedLogger):
            self.log.use(masker)
        elif self.log is not None:
            self.log = MaskedLogger(self.log, masker)
        if self.lines is not None:
            self.lines.masker = masker
            self.lines.log = self.log

    def release_item(self, item: Item) -> None:
        """Every task has finished ``item`` (a pipeline item): fold its records into the
        per-task summary, keep its sinks' outputs (unless ``keep_outputs=False``) and let the
        rest go, so memory stays flat however many items stream through."""
        merged = self.merged
        for tid, rec in item.records.items():
            fold(merged, tid, rec)
        if self.keep_outputs:
            out = item.outputs
            self.kept[item.index] = [out.get(s) for s in self.plan.sinks]
        del self.items[item.index]

    def summary(self) -> dict[str, TaskRecord]:
        """One record per task over every item of a pipeline (see :func:`fold`)."""
        for it in list(self.items.values()):  # items a stopped run left unfinished
            if it.index >= 0:
                for tid, rec in it.records.items():
                    fold(self.merged, tid, rec)
        out: dict[str, TaskRecord] = {}
        for t in self.plan.order:
            out[t] = self.merged.get(t) or TaskRecord(t, self.tasks[t].tool.name)
            if out[t].items:  # unfinished items were folded last
                out[t].items.sort(key=_item_index)  # type: ignore[union-attr]
            for c in self.children.get(t, ()):  # a mapped task's children follow it
                if c in self.merged:
                    out[c] = self.merged[c]
        return out

    def now(self) -> float:
        """Seconds since the run started (the one clock of records and timelines)."""
        return self._clock() - self._t0

    def abort(self) -> None:
        """Stop the run: nothing new starts, and running tasks are cancelled."""
        self.stopped = True
        if self.scope is not None:
            self.scope.cancel()

    # -- the one path every task takes -------------------------------------------------
    async def run_task(self, tid: str, item: Item, driven: bool = False) -> TaskStatus:
        """Run task ``tid`` for ``item`` once all its predecessors are final; returns its
        final status. Cancellation propagates (the task is recorded as cancelled). A member
        of a retried group runs when its group's driver says so (``driven``)."""
        if tid in item.status:  # reused from an earlier run (resume), or run by its group
            return item.status[tid]
        if self._retried and not driven and tid in self._retried:
            return await group_turn(self, tid, item)
        task = self.tasks[tid]
        preds = self.preds[tid]
        if preds:
            status = item.status
            for p in preds:
                if status[p] is not COMPLETED:
                    verdict = self._verdict(task, preds, item)
                    if verdict is not None:
                        return self._finish(tid, item, item.records.get(tid) if driven else None,
                                            verdict[0], reason=verdict[1])
                    break
            else:  # every predecessor completed: only one_failed refuses to run then
                if task.trigger == "one_failed" or (
                        self.units is not None and self._rule(task) == "one_failed"):
                    return self._finish(tid, item, item.records.get(tid) if driven else None,
                                        SKIPPED, reason="no upstream task failed")
        # A retried group's next attempt goes on with the member's record (units.py reset
        # it): the calls of every attempt stay on it.
        rec = item.records.get(tid) if driven else None
        if rec is None:
            rec = item.records[tid] = TaskRecord(tid, task.tool.name,
                                                 resources=task.spec.resources)
            if item.index >= 0:  # a pipeline item's record names its item
                rec.item = item.index
        units = self.units
        try:
            if units is not None and tid in units.gated:
                why = await units.gate(tid, item.units, self._ctx_view,
                                       lambda guards, owner: self._guards(guards, owner, item))
                if why is not None:  # the members downstream repeat the group's reason
                    return self._finish(tid, item, rec, SKIPPED, reason=_Inherited(why))
            if task.condition is not None and not self._condition(task):
                return self._finish(tid, item, rec, SKIPPED, reason="its condition was false")
            if task.guards:
                why = await self._guards(task.guards, f"task {tid!r}", item)
                if why is not None:
                    return self._finish(tid, item, rec, SKIPPED, reason=why)
            if task.dynamic or task.stage_param is not None:
                if self.remote:
                    await self._localize_inputs(task, item)
                args, kwargs = self._inputs(task, item)
            else:
                args, kwargs = task.args, task.kwargs
        except TaskInputError as exc:
            return self._failed(tid, item, rec, exc, 0)
        if units is not None and tid in units.timed:
            return await self._bounded(tid, task, item, rec, args, kwargs)
        if task.fan is not None:
            return await run_map(self, tid, task, item, rec, args, kwargs)
        return await self._pooled(tid, task, item, rec, args, kwargs)

    async def _bounded(self, tid: str, task: Task, item: Item, rec: TaskRecord,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Run a member of a group with a timeout under the group's deadline."""
        at, name, timeout = self.units.deadline(tid, item.units)  # type: ignore[union-attr]
        if anyio.current_time() >= at:
            return self._failed(tid, item, rec, group_timeout(tid, name, timeout, False, 0), 0)
        self._cut[id(rec)] = (at, name, timeout)
        try:
            with anyio.CancelScope(deadline=at):
                if task.fan is not None:
                    return await run_map(self, tid, task, item, rec, args, kwargs)
                return await self._pooled(tid, task, item, rec, args, kwargs)
        finally:
            del self._cut[id(rec)]
        return item.status[tid]  # cut off: _stopped recorded it timed out

    def _stopped(self, tid: str, item: Item, rec: TaskRecord, why: str, attempts: int) -> None:
        """Record a task whose await was cancelled: timed out when its group's deadline
        passed, else cancelled with ``why``."""
        cut = self._cut_at(item, rec)
        if cut is not None and anyio.current_time() >= cut[0]:
            late = group_timeout(tid, cut[1], cut[2], True, attempts)
            # The attempt cut off in flight timed out too; one that had already ended (the
            # task was waiting out its backoff) keeps its own outcome.
            if attempts and rec.attempts[-1].status is CANCELLED:
                att = rec.attempts[-1]
                att.status, att.error = TIMED_OUT, ErrorInfo.from_exception(late, self.masker)
            self._failed(tid, item, rec, late, attempts)
            return
        self._finish(tid, item, rec, CANCELLED, reason=why)

    def _cut_at(self, item: Item, rec: TaskRecord) -> tuple[float, str, float] | None:
        """The deadline of the group a task (or a mapped member's child) runs under."""
        if not self._cut:
            return None
        cut = self._cut.get(id(rec))
        if cut is None and rec.parent is not None:
            cut = self._cut.get(id(item.records[rec.parent]))
        return cut

    async def _pooled(self, tid: str, task: Task, item: Item, rec: TaskRecord,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Run a task or one child of a mapped task: through the result cache when it is
        cached (a hit skips the tool and its pools), else :meth:`_compute`."""
        if self.cache is not None and self.ids[task] in self.cache.policies:
            return await self.cache.run_task(self, tid, task, item, rec, args, kwargs)
        return await self._compute(tid, task, item, rec, args, kwargs)

    async def _compute(self, tid: str, task: Task, item: Item, rec: TaskRecord,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Acquire the task's pools, run its attempts, release the pools."""
        demand = task.spec.resources
        if demand:
            rec.reason = "waiting for resources"
            try:
                await self.pools.acquire(demand, self.priorities.get(self.ids[task], 0.0), tid)
            except BaseException:  # the run stopped while this task waited for its pools
                self._stopped(tid, item, rec, "the run stopped while it waited for resources", 0)
                raise
            rec.reason = None
        try:
            status = await self._attempts(tid, task, item, rec, args, kwargs)
        finally:
            if demand:
                self.pools.release(demand)
        return status

    def _cached(self, tid: str, task: Task, item: Item, rec: TaskRecord,
                value: Any, reason: str = "output restored from the result cache"
                ) -> TaskStatus:
        """End ``tid`` with a cached output: the tool is not called and nothing is rolled
        back; downstream sees a completed task."""
        rec.started_at = self.now()
        rec.reason = reason
        if task.to_context_map is not None and rec.parent is None:
            try:
                self._map_output(task, value)
            except TaskInputError as exc:
                return self._failed(tid, item, rec, exc, 0)
        item.outputs[tid] = value
        return self._finish(tid, item, rec, CACHED, output=value)

    def _verdict(self, task: Task, preds: Sequence[str], item: Item
                 ) -> tuple[TaskStatus, str] | None:
        """Apply the task's trigger rule to its predecessors' statuses: None means run."""
        status = item.status
        ok = [p for p in preds if status[p] is COMPLETED]
        skipped = [p for p in preds if status[p] is SKIPPED]
        bad = [p for p in preds if status[p] is not COMPLETED and status[p] is not SKIPPED]
        rule = self._rule(task)
        if rule == "all_done":
            return None
        if rule == "none_failed":
            return None if not bad else (UPSTREAM_FAILED, _why(bad, status))
        if rule == "one_success":
            if ok:
                return None
            return (UPSTREAM_FAILED, _why(bad, status)) if bad else (
                SKIPPED, f"no upstream task succeeded (skipped: {', '.join(skipped)})")
        if rule == "one_failed":
            return None if bad else (SKIPPED, "no upstream task failed")
        if rule == "none_failed_min_one_success":  # the join after a switch or branch
            if bad:
                return UPSTREAM_FAILED, _why(bad, status)
            return None if ok else (
                SKIPPED, f"no upstream task succeeded (skipped: {', '.join(skipped)})")
        if bad:  # all_success
            return UPSTREAM_FAILED, _why(bad, status)
        why = item.records[skipped[0]].reason
        # A switch's skip reads the same on every task of the case it did not choose.
        return SKIPPED, why if isinstance(why, _Inherited) else (
            f"upstream task {skipped[0]!r} was skipped")

    async def _guards(self, guards: Sequence[Guard], owner: str, item: Item) -> str | None:
        """Test conditions on other tasks' outputs (``.when(on=...)``, switch) for a task or
        a group (``owner``): None if they all hold, else why it is skipped."""
        for g in guards:
            on = g.on
            src = self.ids[on if isinstance(on, Task) else on.task]
            if self.remote and isinstance(item.outputs.get(src), Remote):
                item.outputs[src] = await item.outputs[src].fetch()
            value = item.outputs.get(src)
            name = src if isinstance(on, Task) else src + "".join(f"[{k!r}]" for k in on.path)
            for key in () if isinstance(on, Task) else on.path:
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError) as exc:
                    msg = (f"the condition of {owner} reads {name}, but the output of "
                           f"{src!r} has no {key!r} ({type(exc).__name__})")
                    raise TaskInputError(msg) from exc
            ok = eval_condition(g.test, value, f"the condition of {owner} on {name!r}")
            if not ok:
                name = repr(name)
                if g.fail is not None:
                    bad = g.fail(name, value)
                    if bad is not None:
                        raise TaskInputError(bad)
                why = g.reason(name, value)[:300]
                return _Inherited(why) if g.inherit else why
        return None

    def _rule(self, task: Task) -> str:
        """The task's trigger rule: its own, or its group's for a group's entry task."""
        if self.units is None:
            return task.trigger
        return self.units.trigger.get(self.ids[task], task.trigger)

    def _condition(self, task: Task) -> bool:
        return eval_condition(task.condition, self._ctx_view,
                              f"the condition of task {self.ids[task]!r}")

    def _inputs(self, task: Task, item: Item) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = task.args, task.kwargs
        if task.dynamic:
            resolve = self._resolve
            if args:
                args = tuple([resolve(a, task, item) for a in args])
            kwargs = {k: resolve(v, task, item) for k, v in kwargs.items()}
        if task.stage_param is not None:
            src = self._stage_from[self.ids[task]]
            if src or self.fed:  # a first stage of a run with no input keeps its default
                out = item.outputs
                value = (item.input if not src else out.get(src[0]) if len(src) == 1
                         else [out.get(p) for p in src])
                kwargs = {**kwargs, task.stage_param: value}
        return args, kwargs

    def _resolve(self, value: Any, task: Task, item: Item) -> Any:
        cls = value.__class__
        ids = self.ids
        if cls is Task:
            return item.outputs.get(ids[value])
        if cls in _ATOMS:
            return value

        def swap(v: Any) -> Any:
            if isinstance(v, Task):
                return item.outputs.get(ids[v])
            if isinstance(v, Ref):
                return self._project(v, task, item)
            if isinstance(v, CtxRef):
                return self._ctx_value(v, task)
            if isinstance(v, UpstreamRef):  # a join reading how its upstream tasks ended
                return {p: item.status.get(p, PENDING) for p in self.preds[self.ids[task]]}
            if isinstance(v, (Flow, Fragment)):  # a flow passed as a value: its output
                g = materialize(v)  # built once (cached) for a fragment
                last = [ids[g.tasks[s]] for s in g.sinks]
                if len(last) == 1:
                    return item.outputs.get(last[0])
                return {s: item.outputs.get(s) for s in last}
            return KEEP

        return transform(value, swap)

    def _project(self, ref: Ref, task: Task, item: Item) -> Any:
        src = self.ids[ref.task]
        out = item.outputs.get(src)
        for key in ref.path:
            try:
                out = out[key]
            except (KeyError, IndexError, TypeError) as exc:
                where = src + "".join(f"[{k!r}]" for k in ref.path)
                msg = (f"task {self.ids[task]!r} takes {where}, but the output of "
                       f"{src!r} has no {key!r} ({type(exc).__name__})")
                raise TaskInputError(msg) from exc
        return out

    def _ctx_value(self, ref: CtxRef, task: Task) -> Any:
        if ref.key in self.context:
            return self.context[ref.key]
        if ref.default is not _MISSING:
            return ref.default
        keys = ", ".join(sorted(map(str, self.context))) or "none"
        msg = (f"task {self.ids[task]!r} reads ctx({ref.key!r}), which the run context does "
               f"not have (keys: {keys})")
        raise TaskInputError(msg)

    async def _attempts(self, tid: str, task: Task, item: Item, rec: TaskRecord,
                        args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        spec = task.spec
        ex = self.executors[self.ids[task]]  # a mapped task's children run on its executor
        if self.tracing is not None:  # OpenTelemetry: each call under its attempt's span
            ex = self.tracing.executor(ex, tid, task, item, rec)  # type: ignore[assignment]
        fn = task.tool.fn
        rec.status = RUNNING
        started = self.now()
        if rec.started_at is None:  # else a group's retry: the record began with its first
            rec.started_at = started
        if self.observers or self.log:
            self._started(tid, rec)
        deadline_at = None if spec.deadline is None else started + spec.deadline
        # The tool's prints, logging records and get_logger() lines are kept on rec (unless
        # the run or the tool opted out): each call runs in the task's scope (a context
        # variable, the whole per-attempt cost of capture; see flowdsl/_base/capture.py).
        lines = self.lines
        keep = lines is not None and self.capture and spec.capture
        scoped = keep or (lines is not None and self.log is not None)
        n = 0
        while True:
            n += 1
            att = Attempt(len(rec.attempts) + 1, started if n == 1 else self.now())
            rec.attempts.append(att)
            limit, kind = spec.timeout, "attempt"
            if deadline_at is not None:
                left = deadline_at - att.started_at
                if limit is None or left < limit:
                    limit, kind = left, "deadline"
            try:
                token = (_capture.current.set((lines, rec, keep))  # type: ignore[arg-type]
                         if scoped else None)
                try:
                    if limit is None:
                        out = await ex.call(fn, args, kwargs, task_id=tid)
                    else:
                        with anyio.move_on_after(limit) as scope:
                            out = await ex.call(fn, args, kwargs, task_id=tid)
                finally:
                    if token is not None:
                        _capture.current.reset(token)
                        if lines.pending or _capture.shown:  # type: ignore[union-attr]
                            _capture.flush_task(lines, rec)  # type: ignore[arg-type]
                if limit is not None and scope.cancelled_caught:
                    if ex.abandons:
                        rec.reason = ("its thread could not be interrupted and was "
                                      "abandoned; a late result is discarded")
                    raise self._timeout(tid, spec, n, kind)
            except Exception as exc:
                att.ended_at = self.now()
                att.status = TIMED_OUT if isinstance(exc, TaskTimeout) else FAILED
                att.error = ErrorInfo.from_exception(exc, self.masker)
                if self._retryable(spec, exc, n, rec):
                    delay = spec.backoff.delay(n, self.rng)
                    if deadline_at is not None and att.ended_at + delay >= deadline_at:
                        # No attempt may start after the deadline: give up now, not later.
                        late = self._timeout(tid, spec, n, "deadline")
                        late.__cause__ = exc
                        return self._failed(tid, item, rec, late, n)
                    if self.log:
                        self.log.warning("task_retrying", task=tid, attempt=n, delay=delay,
                                      error=exc_repr(exc))
                    # The wait sits inside this handler, out of reach of the handler below
                    # for cancellation: a stop during it must still end the task.
                    try:
                        await self.sleep(delay)
                    except BaseException:
                        self._stopped(tid, item, rec, "cancelled while waiting to retry: "
                                      + self._stop_why(rec), n)
                        raise
                    continue
                return self._failed(tid, item, rec, exc, n)
            except BaseException:  # cancellation, KeyboardInterrupt: never retried
                att.ended_at = self.now()
                att.status = CANCELLED
                why = self._halted.get(rec.parent, "the run stopped") if rec.parent else (
                    "the run stopped")
                self._stopped(tid, item, rec, why, n)
                raise
            att.ended_at = ended = self.now()
            att.status = COMPLETED
            break
        if task.to_context_map is not None and rec.parent is None:  # a map maps its list
            try:
                if self.remote and isinstance(out, Remote):  # the context lives here
                    out = await out.fetch()
                self._map_output(task, out)
            except Exception as exc:
                return self._failed(tid, item, rec, exc, n)
        item.outputs[tid] = out
        if self.track_completed:
            self.completed.append((tid, item))
        return self._finish(tid, item, rec, COMPLETED, output=out, ended=ended)

    async def _localize_inputs(self, task: Task, item: Item) -> None:
        """Fetch the remote outputs this task needs here: every upstream output for a task
        on a local executor, only the projected ones (``task["k"]``) for a remote task (the
        others travel between workers as handles)."""
        tid = self.ids[task]
        need = self._fetch_for.get(tid)
        if need is None:
            # A mapped task iterates over its inputs here, whatever runs its children.
            local = task.fan is not None or not self.executors[tid].remote
            need = self.preds[tid] if local else tuple(_projected(task, self.ids))
            self._fetch_for[tid] = need
        outs = item.outputs
        for p in need:
            value = outs.get(p)
            if isinstance(value, Remote):
                try:
                    outs[p] = await value.fetch()
                except Exception as exc:
                    msg = (f"task {tid!r} needs the output of {p!r} here, but fetching "
                           f"it failed: {type(exc).__name__}: {exc_text(exc)}")
                    raise TaskInputError(msg) from exc

    async def localize(self) -> None:
        """Replace every remote handle among the outputs by its value, before the
        executors close: results, history and rollback see plain values."""
        found: list[tuple[Any, Any, Remote]] = [
            (it.outputs, t, v) for it in self.items.values() for t, v in it.outputs.items()
            if isinstance(v, Remote)]
        found += [(out, n, v) for out in self.kept.values() for n, v in enumerate(out)
                  if isinstance(v, Remote)]
        by_type: dict[type, list[tuple[Any, Any, Remote]]] = {}
        for entry in found:
            by_type.setdefault(type(entry[2]), []).append(entry)
        for kind, entries in by_type.items():
            many = getattr(kind, "fetch_all", None)  # one round trip where the handle can
            handles = [v for _, _, v in entries]
            try:
                values = (await many(handles) if many is not None
                          else [await h.fetch() for h in handles])
            except Exception as exc:  # the cluster went away with the outputs on it
                self._outputs_lost(entries, exc)
                continue
            for (out, t, _), value in zip(entries, values):
                out[t] = value

    def _outputs_lost(self, entries: list[tuple[Any, Any, Remote]], exc: Exception) -> None:
        """Remote outputs that cannot be fetched any more: they become None, and the run
        fails with the reason (the tasks themselves did complete)."""
        for out, key, _ in entries:
            out[key] = None
        lost = sorted({k for out, k, _ in entries if isinstance(k, str)})
        msg = (f"the output(s) of {', '.join(map(repr, lost)) or 'the pipeline sinks'} could "
               f"not be fetched: {type(exc).__name__}: {exc_text(exc)}")
        if self.masker is not None:
            msg = self.masker.text(msg)
        err = WorkerLost(msg, task_id=lost[0] if lost else "")
        err.__cause__ = exc
        self.result.errors.append(err)
        if self.result.error is None:
            self.result.error = err
        for it in self.items.values():
            for tid in lost:
                rec = it.records.get(tid)
                if rec is not None and tid in it.outputs:
                    rec.reason = "its output was lost with the cluster"

    def _retryable(self, spec: Any, exc: Exception, n: int, rec: TaskRecord) -> bool:
        """Whether attempt ``n``'s error earns another attempt."""
        if n > spec.retries or self.stopped or not isinstance(exc, spec.retry_on):
            return False
        if isinstance(exc, spec.give_up_on):
            return False
        if isinstance(exc, TaskTimeout) and exc.kind == "deadline":
            return False
        if spec.retry_if is None:
            return True
        try:
            return bool(spec.retry_if(exc))
        except Exception as bad:  # a broken predicate must not hide the task's own error
            rec.reason = f"retry_if raised {type(bad).__name__}: {exc_text(bad)}; not retried"
            if self.log:
                self.log.warning("task_retry_predicate_failed", task=rec.id, error=exc_repr(bad))
            return False

    @staticmethod
    def _timeout(tid: str, spec: Any, n: int, kind: str) -> TaskTimeout:
        if kind == "deadline":
            msg = f"task {tid!r} ran past its {spec.deadline:g}s deadline ({n} attempt(s))"
        else:
            msg = f"task {tid!r} exceeded its {spec.timeout:g}s timeout (attempt {n})"
        return TaskTimeout(msg, task_id=tid, attempts=n, kind=kind)

    def _map_output(self, task: Task, out: Any) -> None:
        mapping = task.to_context_map
        if isinstance(mapping, str):
            self.context[mapping] = out
            return
        for key, ctx_key in mapping.items():  # type: ignore[union-attr]
            try:
                self.context[ctx_key] = out[key]
            except (KeyError, IndexError, TypeError) as exc:
                keys = f" (keys: {', '.join(map(str, out))})" if isinstance(out, dict) else ""
                msg = (f"task {self.ids[task]!r}: to_context maps output key {key!r}, but its "
                       f"output ({type(out).__name__}) has no such key{keys}")
                raise TaskInputError(msg) from exc

    # -- recording ---------------------------------------------------------------------
    def _finish(self, tid: str, item: Item, rec: TaskRecord | None, status: TaskStatus,
                *, reason: str | None = None, output: Any = None,
                ended: float | None = None) -> TaskStatus:
        if rec is None:
            rec = item.records[tid] = TaskRecord(tid, self.tasks[tid].tool.name)
            if item.index >= 0:
                rec.item = item.index
        rec.status = status
        if output is not None and secrets.in_use():  # an output may bring Secrets of its own
            self._register_secrets(output)
        if reason is not None:
            rec.reason = reason
        if self.masker is not None and rec.reason:
            rec.reason = self.masker.text(rec.reason)
        if rec.started_at is not None:
            rec.ended_at = self.now() if ended is None else ended
        # A cached task counts as completed for everything downstream.
        item.status[tid] = COMPLETED if status is CACHED else status
        if self.observers:
            for ob in self.observers:
                ob.task_finished(self.result, rec, output)
        if self.log:
            getattr(self.log, _LEVELS.get(status, "info"))(
                _EVENTS.get(status, "task_finished"), task=tid, status=status.value,
                reason=rec.reason, duration=rec.duration, attempts=len(rec.attempts))
        return status

    def _failed(self, tid: str, item: Item, rec: TaskRecord, exc: BaseException,
                attempts: int) -> TaskStatus:
        """Record a failure; unless ``continue_on_error``, stop the run (a failed child of
        a mapped task stops only its siblings: its parent fails once they are final)."""
        status = TIMED_OUT if isinstance(exc, TaskTimeout) else FAILED
        rec.error = ErrorInfo.from_exception(exc, self.masker)
        if isinstance(exc, TaskFailed):
            err: BaseException = exc
        else:
            if attempts and len(rec.attempts) > attempts:  # its group's earlier calls count
                attempts = len(rec.attempts)
            what = f"after {attempts} attempt(s)" if attempts else "before it could run"
            # A wiring problem already names the task and says what is wrong; any other error
            # is the tool's own, shown with its type.
            why = (exc_text(exc) if isinstance(exc, TaskInputError)
                   else f"{type(exc).__name__}: {exc_text(exc)}")
            msg = f"task {tid!r} failed {what}: {why}"
            if self.masker is not None:
                msg = self.masker.text(msg)
            err = TaskFailed(msg, task_id=tid, attempts=attempts)
            err.__cause__ = exc
        held = None
        if self.held:  # a mapped member's children are held with it
            held = self.held.get((rec.parent or tid, item.index))
        if held is not None:  # its group will run it again: not the run's error (yet)
            held.append(err)
            self._finish(tid, item, rec, status)
            return status
        self._count_error(tid, item, rec, err)
        return status

    def release(self, errors: list[tuple[str, Item, BaseException]]) -> None:
        """Count failures a retried group held back, once its last attempt is over."""
        for tid, item, err in errors:
            self._count_error(tid, item, item.records[tid], err)

    def _count_error(self, tid: str, item: Item, rec: TaskRecord, err: BaseException) -> None:
        self.result.errors.append(err)
        if self.result.error is None:
            self.result.error = err
        if item.index >= 0:
            self.result.item_errors[item.index] = rec.error
        if item.status.get(tid) is None:
            self._finish(tid, item, rec, TIMED_OUT if isinstance(err, TaskTimeout) else FAILED)
        if not self.continue_on_error and rec.parent is None:
            self.abort()

    def _stop_why(self, rec: TaskRecord) -> str:
        """Why a task is being stopped: its map sibling failed, or the run stopped (after
        which task's failure, when one caused it)."""
        if rec.parent is not None and rec.parent in self._halted:
            return self._halted[rec.parent]
        err = self.result.error
        culprit = getattr(err, "task_id", None) if self.stopped else None
        return f"the run stopped after {culprit!r} failed" if culprit else "the run stopped"

    def _started(self, tid: str, rec: TaskRecord) -> None:
        for ob in self.observers:
            ob.task_started(self.result, rec)
        if self.log:
            self.log.debug("task_started", task=tid)

    async def run_cleanup(self, item: Item) -> None:
        """After a fail-fast stop, run the tasks whose trigger rule is meant for failures
        (``all_done``, ``one_failed``: cleanup, notification) once all their upstream tasks
        are final. Everything else that had not started stays pending: a cleanup task in a
        retried group runs alone (``driven``), since its group's driver would also run the
        members after it, which must not start once the run stopped."""
        for tid in self.plan.order:
            task = self.tasks[tid]
            if (tid not in item.status and task.trigger in _AFTER_FAILURE
                    and all(p in item.status for p in self.preds[tid])):
                await self.run_task(tid, item, True)

    # -- compensation ------------------------------------------------------------------
    async def rollback(self, timeout: float | None = None) -> int:
        """Run the rollback of every completed task once, in reverse completion order,
        shielded from cancellation, each within ``timeout`` seconds (a sync rollback then runs
        in a thread, abandoned when late). A rollback that raises or times out is recorded;
        the rest still run. Returns how many tasks were rolled back."""
        done = 0
        with anyio.CancelScope(shield=True):
            for tid, item in reversed(self.completed):
                undo = self._task_of(tid).spec.rollback
                rec = item.records[tid]
                if undo is None:
                    if self.log:
                        self.log.info("task_rollback_skipped", task=tid, reason="no rollback")
                    continue
                try:
                    await self._undo(tid, undo, item.outputs.get(tid), timeout)
                except Exception as exc:
                    rec.rollback_error = ErrorInfo.from_exception(exc, self.masker)
                    self.result.rollback_errors.append(exc)
                    if self.log:
                        self.log.error("task_rollback_failed", task=tid, error=exc_repr(exc))
                else:
                    done += 1
                    rec.status = TaskStatus.ROLLED_BACK
                    item.status[tid] = TaskStatus.ROLLED_BACK
                    if self.log:
                        self.log.info("task_rolled_back", task=tid)
        return done

    @staticmethod
    async def _undo(tid: str, undo: Callable[..., Any], output: Any,
                    timeout: float | None) -> None:
        if timeout is None:
            outcome = undo(output)
            if inspect.isawaitable(outcome):
                await outcome
            return
        with anyio.move_on_after(timeout) as scope:
            if inspect.iscoroutinefunction(undo):
                await undo(output)
            else:  # a sync rollback that blocks must not hold the run past the bound
                outcome = await anyio.to_thread.run_sync(undo, output, abandon_on_cancel=True)
                if inspect.isawaitable(outcome):
                    await outcome
        if scope.cancelled_caught:
            msg = (f"the rollback of task {tid!r} ran past compensation_timeout={timeout:g}s "
                   "and was abandoned")
            raise TimeoutError(msg)


    def _task_of(self, tid: str) -> Task:
        """The task of ``tid``, or of the mapped task ``tid`` (``name[i]``) is a child of."""
        task = self.tasks.get(tid)
        return task if task is not None else self.tasks[tid.rpartition("[")[0]]


class _Inherited(str):
    """A skip reason that the tasks skipped downstream of it repeat (a switch's choice)."""

    __slots__ = ()


_AFTER_FAILURE = frozenset({"all_done", "one_failed"})
_LEVELS = {FAILED: "error", TIMED_OUT: "error", CANCELLED: "warning"}
_SEVERITY = {s: n for n, s in enumerate([
    FAILED, TIMED_OUT, CANCELLED, UPSTREAM_FAILED, TaskStatus.ROLLED_BACK, RUNNING, PENDING,
    SKIPPED, COMPLETED, CACHED])}
#: A pipeline task's summary keeps this many attempts (over all items); more would grow
#: with the item count.
MAX_KEPT_ATTEMPTS = 1000


def fold(merged: dict[str, TaskRecord], tid: str, rec: TaskRecord) -> None:
    """Fold one item's record of task ``tid`` into its summary: the worst status, the
    attempts (up to MAX_KEPT_ATTEMPTS), the first error and reason, the earliest start and
    the latest end; the record itself joins the summary's ``items`` (one per stage x item,
    so timelines and statistics see each item's own call)."""
    m = merged.get(tid)
    if m is None:
        m = merged[tid] = TaskRecord(tid, rec.tool, status=rec.status,
                                     resources=rec.resources, parent=rec.parent)
        if rec.item is not None:
            m.items, m.item_count = [], 0
    elif _SEVERITY[rec.status] < _SEVERITY[m.status]:
        m.status = rec.status
    room = MAX_KEPT_ATTEMPTS - len(m.attempts)
    if room > 0 and rec.attempts:
        m.attempts.extend(rec.attempts[:room])
    if rec.started_at is not None and (m.started_at is None or rec.started_at < m.started_at):
        m.started_at = rec.started_at
    if rec.ended_at is not None and (m.ended_at is None or rec.ended_at > m.ended_at):
        m.ended_at = rec.ended_at
    if m.items is not None and rec.item is not None:
        m.item_count = (m.item_count or 0) + 1
        if len(m.items) < MAX_KEPT_ITEMS or rec.status not in _DONE_WELL:
            m.items.append(rec)
    if m.error is None:
        m.error = rec.error
    if m.reason is None:
        m.reason = rec.reason
    if rec.logs:  # a tool's log lines, bounded as on one record
        if m.logs is None:
            m.logs = []
        room = MAX_TASK_LOGS - len(m.logs)
        if room > 0:
            m.logs.extend(rec.logs[:room])


_DONE_WELL = frozenset({COMPLETED, CACHED})


def _item_index(rec: TaskRecord) -> int:
    return rec.item or 0


# Each final status under an event of its own (task_upstream_failed is not task_skipped).
_EVENTS = {s: f"task_{s.value}" for s in TaskStatus}


def _projected(task: Task, ids: Mapping[Task, str]) -> set[str]:
    """Ids of the upstream tasks whose outputs ``task`` projects (``task["k"]``)."""
    return {ids[v.task] for v in nodes((task.args, task.kwargs)) if isinstance(v, Ref)}


def _why(bad: list[str], status: Mapping[str, TaskStatus]) -> str:
    return f"upstream task {bad[0]!r} {status[bad[0]].value.replace('_', ' ')}"
