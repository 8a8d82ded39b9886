"""The core's state and the steps of one task's life below the scheduling decision: pools,
the result cache, attempts with timeouts and retries, output mapping, recording (statuses,
errors, events), guards, rollback (inputs.py resolves a task's arguments, rollback.py runs
one task's rollback, trigger.py applies trigger rules).

:class:`Steps` is the interface the map code (fanout.py), the group code (groups.py) and
the cache glue (caching.py) call: its public methods (``pooled``, ``compute``, ``cached``,
``finish``, ``fail``, ``interrupted``, ``started``, ``cut_at``, ``map_output``,
``register_secrets``, ``release``) and attributes. :class:`~.engine.Core` adds the entry
point, ``run_task``, which dispatches to the map and group code; they take a ``Steps``, so
the imports go one way (engine -> fanout, groups -> steps).

State: an :class:`~.record.Item` is one pass of data through the flow (a plain run has one;
a pipeline over ``items`` has one per item) and holds each task's status, output and record.
The core writes statuses only through ``finish`` so the records, observers and events agree.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread

from ..._base import capture as _capture
from ..._base import secrets
from ..._base.errors import (
    CompositionError,
    MissingContextError,
    TaskFailed,
    TaskInputError,
    TaskTimeout,
    WorkerLost,
    exc_repr,
    exc_text,
)
from ..._base.log import RunScope, engine_logger
from ..._base.loop import loop_clock
from ..._base.secrets import MaskedLogger
from ..._graph.task import (
    Guard,
    Ref,
    Task,
    eval_condition,
)
from ..._graph.walk import nodes
from ..._plan.planner import Plan
from ..caching import RunCache
from ..events import (
    ATTEMPT_FAILED,
    ITEM_FINISHED,
    ITEM_STARTED,
    LOG,
    TASK_FINISHED,
    TASK_ROLLED_BACK,
    TASK_STARTED,
    TASK_WAITING_FOR_POOLS,
    TASK_WAITING_TO_RETRY,
    EventConsumer,
    EventLog,
)
from ..executors import Executor, Remote
from ..resources import Pools
from ..result import Attempt, ErrorInfo, RunObserver, RunResult, TaskRecord, TaskStatus
from ..tracing import Tracing
from .inputs import Inputs
from .record import (
    CACHED,
    CANCELLED,
    COMPLETED,
    EVENTS,
    FAILED,
    LEVELS,
    RUNNING,
    TIMED_OUT,
    Item,
    descendants,
    fold,
    item_index,
)
from .rollback import run_undo
from .trigger import Inherited, verdict
from .units import Units, group_timeout

__all__ = ["Steps"]



class Steps:
    """The core's state and the steps of one task's life (see the module docstring); the
    public methods are what the map, group and cache code call."""

    def __init__(self, plan: Plan, result: RunResult[Any], *, context: dict[str, Any],
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
        self.units = Units(active, plan.tasks) if active else None
        self._retried = self.units.retried if self.units is not None else {}
        # (member, item) -> its failures while its retried group may still mend them
        self.held: dict[tuple[str, int], list[BaseException]] = {}
        self._cut: dict[int, tuple[float, str, float]] = {}  # id(record) -> group deadline
        self.tasks: Mapping[str, Task[Any]] = plan.tasks
        self.ids: Mapping[Task[Any], str] = plan.ids  # a referenced Task[Any] object -> its id here
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
        # The run's event stream (events.py): None, and one `is not None` test per
        # transition, unless the run has an event consumer. (task, item) -> how many of its
        # record's log lines went to the stream (lines are kept in tools' threads; the loop
        # adds them).
        self.events: EventLog | None = None
        self._logged: dict[tuple[str, int | None], int] = {}
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
        self.stopped = False
        # The most children of one mapped task running at once; the runner sets it from the
        # mode's concurrency (sequential: 1).
        self.child_limit = 1
        # Every task, best first: the order the runner's loop takes ready tasks in, which a
        # retried group's attempt keeps for its members (the runner sets it).
        self.ranked: Sequence[str] = plan.order
        self.children: dict[str, list[str]] = {}  # mapped task -> its children's ids
        self.halted: dict[str, str] = {}  # mapped task -> why its running children stop
        self.subs: dict[str, Any] = {}  # mapped sub-flow -> its Shape (subflows.py), once
        # id(SubMap) -> its steps' executors by step id (set by run() when it has any)
        self.sub_executors: dict[int, dict[str, Executor]] = {}
        # Map children's input hashes, computed only while history stores outputs, and a
        # resumed run's finished children: mapped task -> index -> (input hash, output, why).
        self.child_keys = False
        self.reused: dict[str, dict[int, tuple[str, Any, str]]] = {}
        self.scope: anyio.CancelScope | None = None
        # Completed (task, item) pairs, for rollback: kept only when the run may roll back,
        # since they hold every item of a pipeline alive.
        # Each with the output of that call: a group's retry may reset the member (its output
        # goes) and call it again, and each call that completed is rolled back with its own.
        # (A list, not a tuple: localize() replaces a remote output in it by its value.)
        self.completed: list[list[Any]] = []
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
        # How a task's arguments are resolved (references, ctx(), a pipeline stage's input).
        self.inputs = Inputs(self.tasks, self.ids, self.preds, context)

    def check_start(self, *, input_given: bool) -> None:
        """Refuse, before any task runs, a run bound to fail on its inputs: a pipeline stage
        with nothing before it and no run ``input`` for a parameter it needs, or ``ctx(key)``
        arguments (no default) whose keys neither the run context nor any task's
        ``to_context`` provides (one error listing every missing key)."""
        self.inputs.fed = input_given
        if not input_given:
            for tid, src in self.inputs.stage_from.items():
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
        if index >= 0 and self.events is not None:
            self.events.put(ITEM_STARTED, None, index)
        if index >= 0 and secrets.in_use():  # an item may bring Secrets of its own
            self.register_secrets(value)
        return it

    def register_secrets(self, value: Any) -> None:
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
        if self.events is not None:
            self.events.put(ITEM_FINISHED, None, item.index)

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
                out[t].items.sort(key=item_index)  # type: ignore[union-attr]
            if t in self.children:  # a mapped task's children follow it
                for c in descendants(self.children, t):
                    if c in self.merged:
                        out[c] = self.merged[c]
        return out

    def open_events(self, consumers: Sequence[EventConsumer]) -> EventLog:
        """Start the run's event stream, read by ``consumers`` (events.py), on the run's
        clock."""
        self.events = EventLog(consumers, self._clock, self._t0)
        self.events.start()
        return self.events

    def now(self) -> float:
        """Seconds since the run started (the one clock of records and timelines)."""
        return self._clock() - self._t0

    def abort(self) -> None:
        """Stop the run: nothing new starts, and running tasks are cancelled."""
        self.stopped = True
        if self.scope is not None:
            self.scope.cancel()

    async def run_task(self, tid: str, item: Item, driven: bool = False) -> TaskStatus:
        """Run task ``tid`` for ``item`` (see :class:`~flowdsl._run.core.engine.Core`)."""
        raise NotImplementedError

    # -- the steps of one task: pools, cache, attempts, recording ------------------------
    def interrupted(self, tid: str, item: Item, rec: TaskRecord, why: str, attempts: int) -> None:
        """Record a task whose await was cancelled: timed out when its group's deadline
        passed, else cancelled with ``why``."""
        cut = self.cut_at(item, rec)
        if cut is not None and anyio.current_time() >= cut[0]:
            late = group_timeout(tid, cut[1], cut[2], True, attempts)
            # The attempt cut off in flight timed out too; one that had already ended (the
            # task was waiting out its backoff) keeps its own outcome.
            if attempts and rec.attempts[-1].status is CANCELLED:
                att = rec.attempts[-1]
                att.status, att.error = TIMED_OUT, ErrorInfo.from_exception(late, self.masker)
                if self.events is not None:  # S11a: it ended timed out, as its record says
                    self.events.put(ATTEMPT_FAILED, tid, rec.item, att.number, att.error)
            self.fail(tid, item, rec, late, attempts)
            return
        self.finish(tid, item, rec, CANCELLED, reason=why)

    def cut_at(self, item: Item, rec: TaskRecord) -> tuple[float, str, float] | None:
        """The deadline of the group a task (or a mapped member's child) runs under."""
        if not self._cut:
            return None
        cut = self._cut.get(id(rec))
        if rec.parent is not None:
            # A mapped sub-flow's step runs under its element's deadline and its mapped
            # node's: the earlier one cuts it.
            outer = self._cut.get(id(item.records[rec.parent]))
            if outer is not None and (cut is None or outer[0] < cut[0]):
                cut = outer
        return cut

    async def pooled(self, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Run a task or one child of a mapped task: through the result cache when it is
        cached (a hit skips the tool and its pools), else :meth:`compute`."""
        if self.cache is not None and self.ids[task] in self.cache.policies:
            return await self.cache.run_task(self, tid, task, item, rec, args, kwargs)
        return await self.compute(tid, task, item, rec, args, kwargs)

    async def compute(self, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Acquire the task's pools, run its attempts, release the pools."""
        demand = task.spec.resources
        if demand:
            rec.reason = "waiting for resources"
            # With a stream, a demand that fits now is taken here (as acquire would), so that
            # only a node that really waits says so.
            ev = self.events
            got = ev is not None and self.pools.try_acquire(demand, tid)
            if ev is not None and not got:
                ev.put(TASK_WAITING_FOR_POOLS, tid, rec.item, None, dict(demand))
            try:
                if not got:
                    await self.pools.acquire(demand, self.priorities.get(self.ids[task], 0.0),
                                             tid)
            except BaseException:  # the run stopped while this task waited for its pools
                self.interrupted(tid, item, rec, "the run stopped while it waited for resources", 0)
                raise
            rec.reason = None
        try:
            status = await self._attempts(tid, task, item, rec, args, kwargs)
        finally:
            if demand:
                self.pools.release(demand)
        return status

    def cached(self, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
               value: Any, reason: str = "output restored from the result cache"
               ) -> TaskStatus:
        """End ``tid`` with a cached output: the tool is not called and nothing is rolled
        back; downstream sees a completed task."""
        if rec.started_at is None:  # else a group's retry (S30, S36): the record began with
            rec.started_at = self.now()  # its first attempt, which it keeps
        rec.reason = reason
        if task.to_context_map is not None and rec.parent is None:
            try:
                self.map_output(task, value)
            except TaskInputError as exc:
                return self.fail(tid, item, rec, exc, 0)
        item.outputs[tid] = value
        return self.finish(tid, item, rec, CACHED, output=value)

    def _verdict(self, task: Task[Any], preds: Sequence[str], item: Item
                 ) -> tuple[TaskStatus, str] | None:
        """Apply the task's trigger rule to its predecessors' statuses: None means run."""
        return verdict(self._rule(task), preds, item.status, item.records)

    async def _guards(self, guards: Sequence[Guard], owner: str, item: Item) -> str | None:
        """Test conditions on other tasks' outputs (``.when(on=...)``, switch) for a task or
        a group (``owner``): None if they all hold, else why it is skipped."""
        for g in guards:
            on = g.on
            src = self.ids[on if isinstance(on, Task) else on.task]
            if self.remote and isinstance(item.outputs.get(src), Remote):
                item.outputs[src] = await item.outputs[src].fetch()
            value: Any = item.outputs.get(src)
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
                return Inherited(why) if g.inherit else why
        return None

    def _rule(self, task: Task[Any]) -> str:
        """The task's trigger rule: its own, or its group's for a group's entry task."""
        if self.units is None:
            return task.trigger
        return self.units.trigger.get(self.ids[task], task.trigger)

    def _condition(self, task: Task[Any]) -> bool:
        return eval_condition(task.condition, self._ctx_view,
                              f"the condition of task {self.ids[task]!r}")

    async def _attempts(self, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
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
        if self.observers or self.log or self.events is not None:
            self.started(tid, rec)
        deadline_at = None if spec.deadline is None else started + spec.deadline
        out: Any = None  # the last attempt's output (every path to its use sets it)
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
            if n > 1 and self.events is not None:  # (the first start is in started())
                self.events.put(TASK_STARTED, tid, rec.item, att.number)
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
                if self.events is not None:
                    self.events.put(ATTEMPT_FAILED, tid, rec.item, att.number, att.error)
                if self._retryable(spec, exc, n, rec):
                    delay = spec.backoff.delay(n, self.rng)
                    if deadline_at is not None and att.ended_at + delay >= deadline_at:
                        # No attempt may start after the deadline: give up now, not later.
                        late = self._timeout(tid, spec, n, "deadline")
                        late.__cause__ = exc
                        return self.fail(tid, item, rec, late, n)
                    if self.log:
                        self.log.warning("task_retrying", task=tid, attempt=n, delay=delay,
                                      error=exc_repr(exc))
                    if self.events is not None:
                        self.events.put(TASK_WAITING_TO_RETRY, tid, rec.item, att.number, delay)
                    # The wait sits inside this handler, out of reach of the handler below
                    # for cancellation: a stop during it must still end the task.
                    try:
                        await self.sleep(delay)
                    except BaseException:
                        self.interrupted(tid, item, rec, "cancelled while waiting to retry: "
                                         + self._stop_why(rec), n)
                        raise
                    continue
                return self.fail(tid, item, rec, exc, n)
            except BaseException:  # cancellation, KeyboardInterrupt: never retried
                att.ended_at = self.now()
                att.status = CANCELLED
                why = self.halted.get(rec.parent, "the run stopped") if rec.parent else (
                    "the run stopped")
                self.interrupted(tid, item, rec, why, n)
                raise
            att.ended_at = ended = self.now()
            att.status = COMPLETED
            break
        if task.to_context_map is not None and rec.parent is None:  # a map maps its list
            try:
                if self.remote and isinstance(out, Remote):  # the context lives here
                    out = await out.fetch()
                self.map_output(task, out)
            except Exception as exc:
                return self.fail(tid, item, rec, exc, n)
        item.outputs[tid] = out
        if self.track_completed:
            self.completed.append([tid, item, out])
        return self.finish(tid, item, rec, COMPLETED, output=out, ended=ended)

    async def _localize_inputs(self, task: Task[Any], item: Item) -> None:
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
        found += [(c, 2, c[2]) for c in self.completed if isinstance(c[2], Remote)]
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

    def map_output(self, task: Task[Any], out: Any) -> None:
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
    def finish(self, tid: str, item: Item, rec: TaskRecord | None, status: TaskStatus,
               *, reason: str | None = None, output: Any = None,
               ended: float | None = None) -> TaskStatus:
        if rec is None:
            rec = item.records[tid] = TaskRecord(tid, self.tasks[tid].tool.name)
            if item.index >= 0:
                rec.item = item.index
        rec.status = status
        if output is not None and secrets.in_use():  # an output may bring Secrets of its own
            self.register_secrets(output)
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
        ev = self.events
        if ev is not None:
            if rec.logs:
                self._log_lines(ev, rec)
            ev.put(TASK_FINISHED, tid, rec.item, len(rec.attempts) or None, status)
        if self.log:
            getattr(self.log, LEVELS.get(status, "info"))(
                EVENTS.get(status, "task_finished"), task=tid, status=status.value,
                reason=rec.reason, duration=rec.duration, attempts=len(rec.attempts))
        return status

    def fail(self, tid: str, item: Item, rec: TaskRecord, exc: BaseException,
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
            held = self.held.get((tid, item.index))
            if held is None and rec.parent is not None:
                held = self.held.get((rec.parent, item.index))
        if held is not None:  # its group will run it again: not the run's error (yet)
            held.append(err)
            self.finish(tid, item, rec, status)
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
        if item.index >= 0 and rec.error is not None:  # (a failure always has its error)
            self.result.item_errors[item.index] = rec.error
        if item.status.get(tid) is None:
            self.finish(tid, item, rec, TIMED_OUT if isinstance(err, TaskTimeout) else FAILED)
        if not self.continue_on_error and rec.parent is None:
            self.abort()

    def _stop_why(self, rec: TaskRecord) -> str:
        """Why a task is being stopped: its map sibling failed, or the run stopped (after
        which task's failure, when one caused it)."""
        if rec.parent is not None and rec.parent in self.halted:
            return self.halted[rec.parent]
        err = self.result.error
        culprit = getattr(err, "task_id", None) if self.stopped else None
        return f"the run stopped after {culprit!r} failed" if culprit else "the run stopped"

    def _log_lines(self, ev: EventLog, rec: TaskRecord) -> None:
        """Put the record's log lines not yet in the stream there (each with its time)."""
        logs = rec.logs or []
        key = (rec.id, rec.item)
        sent = self._logged.get(key, 0)
        for line in logs[sent:]:
            ev.put(LOG, rec.id, rec.item, None, line)
        self._logged[key] = len(logs)

    def started(self, tid: str, rec: TaskRecord, mapped: bool = False) -> None:
        """``tid`` starts running: its first attempt, or (``mapped``) its children, whose
        attempts are their own (so its start names no attempt)."""
        if self.events is not None:
            self.events.put(TASK_STARTED, tid, rec.item,
                            None if mapped else len(rec.attempts) + 1)
        for ob in self.observers:
            ob.task_started(self.result, rec)
        if self.log:
            self.log.debug("task_started", task=tid)

    # -- compensation ------------------------------------------------------------------
    async def rollback(self, timeout: float | None = None) -> int:
        """Run the rollback of every completed task once, in reverse completion order,
        shielded from cancellation, each within ``timeout`` seconds (a sync rollback then runs
        in a thread, abandoned when late). A rollback that raises or times out is recorded;
        the rest still run. Returns how many tasks were rolled back."""
        done = 0
        with anyio.CancelScope(shield=True):
            for tid, item, output in reversed(self.completed):
                undo = self._task_of(tid).spec.rollback
                rec = item.records[tid]
                if undo is None:
                    if self.log:
                        self.log.info("task_rollback_skipped", task=tid, reason="no rollback")
                    continue
                try:
                    await run_undo(tid, undo, output, timeout)
                except Exception as exc:
                    rec.rollback_error = ErrorInfo.from_exception(exc, self.masker)
                    self.result.rollback_errors.append(exc)
                    if self.log:
                        self.log.error("task_rollback_failed", task=tid, error=exc_repr(exc))
                else:
                    done += 1
                    rec.status = TaskStatus.ROLLED_BACK
                    item.status[tid] = TaskStatus.ROLLED_BACK
                    if self.events is not None:
                        self.events.put(TASK_ROLLED_BACK, tid, rec.item)
                    if self.log:
                        self.log.info("task_rolled_back", task=tid)
        return done

    def _task_of(self, tid: str) -> Task[Any]:
        """The task of ``tid``, or of the mapped task ``tid`` (``name[i]``) is a child of."""
        task = self.tasks.get(tid)
        if task is not None:
            return task
        head, dot, step = tid.rpartition("].")
        if dot and head.rpartition("[")[0] in self.subs:  # a mapped sub-flow's step
            return self.subs[head.rpartition("[")[0]].tasks[step]  # type: ignore[no-any-return]
        return self.tasks[tid.rpartition("[")[0]]


def _projected(task: Task[Any], ids: Mapping[Task[Any], str]) -> set[str]:
    """Ids of the upstream tasks whose outputs ``task`` projects (``task["k"]``)."""
    return {ids[v.task] for v in nodes((task.args, task.kwargs)) if isinstance(v, Ref)}
