"""The run layer's entry: :func:`execute` (async, asyncio or trio through anyio).

``execute`` plans the flow (plan-time problems raise before any tool is called), sets up
pools, executors and the execution core, hands the plan to the mode's runner, and turns what
happened into a :class:`RunResult` — also when the run fails, times out or is cancelled.

It knows no defaults: the history store, the result cache store and the observers (a
progress display among them) come in as objects, or None for none. The public
``flowdsl.run``/``flowdsl.arun`` (``flowdsl._report.entry``, above the record and report
layers) assemble the default ones and call it, so a run never reaches a layer above this one.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import anyio

from .._base import capture, collector, secrets
from .._base.errors import CompensationError, PlanError, RunTimeout, exc_repr
from .._base.limits import limits
from .._base.log import logging_enabled
from .._base.loop import current_loop, in_fresh_thread
from .._base.secrets import Masker
from .._graph.spec import EXECUTOR_KINDS
from .._graph.walk import nodes
from .._plan import policy
from .._plan.planner import Plan, check_size, plan
from .._plan.policy import Mode
from .caching import CacheBackend, RunCache
from .core import Core, Item
from .core.record import descendants
from .core.subflows import sub_plan
from .core.units import context_defaults
from .events import (
    RUN_FINISHED,
    RUN_STARTED,
    TASK_FINISHED,
    EventConsumer,
    RunStart,
    is_consumer,
)
from .executors import LOCAL, Executor
from .resources import Pools
from .result import RunObserver, RunResult, RunStatus, TaskRecord, TaskStatus
from .runners import RUNNERS
from .tracing import run_tracing

__all__ = ["execute", "run_blocking"]

R = TypeVar("R")


@dataclass(slots=True)
class _Options:
    max_concurrency: int | None
    items: Iterable[Any] | None
    buffer: int


def _positive(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        msg = f"run(): {name}={value!r} is invalid: expected a number > 0 or None"
        raise ValueError(msg)
    most = limits().max_timeout
    if value > most:
        msg = (f"run(): {name}={value!r} is invalid: expected at most {most:g} seconds (the "
               "limit is flowdsl.set_limits(max_timeout=...))")
        raise ValueError(msg)


def _executors(p: Plan, override: Any, steps: list[tuple[str, Any, str, Any]] | None = None
               ) -> tuple[dict[str, Executor], list[Executor]]:
    """The executor of each task (and of each mapped sub-flow's step, ``steps`` from
    :func:`sub_steps`), and the executors to open and close for this run."""
    shared: dict[Any, Executor] = {}
    by_spec: dict[int, Executor] = {}  # tasks of one tool share its spec: decide once
    per_task: dict[str, Executor] = {}
    remote = _remote_executor(override) if override is not None else None
    # A cluster runs coroutine tools too (dask workers await them); a local override only
    # takes the sync tools. Explicitly 'inline' tools always stay on the event loop.
    takes = _TAKES_REMOTE if remote is not None and remote.remote else _TAKES_LOCAL
    for tid, task in p.tasks.items():
        spec = task.spec
        ex = by_spec.get(id(spec))
        if ex is None:
            ex = by_spec[id(spec)] = _pick(spec.executor, remote, takes, shared)
        per_task[tid] = ex
    for key, _, _, step in sub_steps(p) if steps is None else steps:
        # A mapped sub-flow's steps run on their own executors (keyed ``node.step``; the
        # core finds them by sub-flow: Core.sub_executors).
        spec = step.spec
        ex = by_spec.get(id(spec))
        if ex is None:
            ex = by_spec[id(spec)] = _pick(spec.executor, remote, takes, shared)
        per_task[key] = ex
    opened = list({id(e): e for e in per_task.values()}.values())
    return per_task, opened


def sub_steps(p: Plan) -> list[tuple[str, Any, str, Any]]:
    """Every step of the plan's mapped sub-flows, nested ones too (iteratively): its key
    (``node.step``, ``node.step.inner``...), its SubMap, its id in the sub-flow and its task;
    empty, at the cost of one test per task, for a plan without any."""
    out: list[tuple[str, Any, str, Any]] = []
    todo = [(tid, t.fan.sub) for tid, t in p.tasks.items()
            if t.fan is not None and t.fan.sub is not None]
    while todo:
        node, sub = todo.pop()
        for sid, step in sub_plan(sub).tasks.items():
            out.append((f"{node}.{sid}", sub, sid, step))
            if step.fan is not None and step.fan.sub is not None:
                todo.append((f"{node}.{sid}", step.fan.sub))
    return out


def _pick(kind: Any, remote: Executor | None, takes: tuple[str, ...],
          shared: dict[Any, Executor]) -> Executor:
    if remote is not None and kind in takes:
        return remote
    if kind == "dask":  # one cluster for every per-task 'dask' of the run
        if "dask" not in shared:
            shared["dask"] = _remote_executor("dask")
        return shared["dask"]
    if isinstance(kind, Executor):
        return shared.setdefault(id(kind), kind)
    ex = shared.get(kind)
    if ex is None:
        ex = shared[kind] = _LOCAL[kind]()
    return ex


def _remote_executor(spec: Any) -> Executor:
    if isinstance(spec, Executor):
        return spec
    if spec == "dask":
        from .dask import DaskExecutor

        return DaskExecutor()
    msg = f"run(): executor={spec!r} is invalid: expected 'dask' or an Executor object"
    raise ValueError(msg)


#: The executor a run makes for each local name of the table (EXECUTOR_KINDS), by the
#: ``name`` each class of the executors module declares.
_LOCAL: Mapping[str, Callable[[], Executor]] = LOCAL
_TAKES_LOCAL = tuple(k for k, row in EXECUTOR_KINDS.items() if row.override == "always")
_TAKES_REMOTE = tuple(k for k, row in EXECUTOR_KINDS.items() if row.override != "never")


async def execute(flow: Any, *, mode: str | Mode | None = None,
                  context: Mapping[str, Any] | None = None, input: Any = None,
                  items: Iterable[Any] | None = None, continue_on_error: bool = False,
                  rollback_on_failure: bool = False, timeout: float | None = None,
                  max_concurrency: int | None = None,
                  resources: Mapping[str, int] | Pools | None = None,
                  history_store: Any = None,
                  resume: str | None = None, executor: Any = None,
                  observers: Sequence[RunObserver | EventConsumer] = (),
                  durations: Mapping[str, float] | None = None,
                  rng: random.Random | None = None,
                  sleep: Callable[[float], Awaitable[Any]] | None = None,
                  log: bool | None = None, buffer: int = 2,
                  store_outputs: bool | None = None,
                  cache: bool | None = None, cache_store: CacheBackend | None = None,
                  compensation_timeout: float | None = None,
                  max_nodes: int | None = None, max_edges: int | None = None,
                  keep_outputs: bool = True, capture_output: bool = True) -> RunResult[Any]:
    """Run ``flow`` and return its :class:`RunResult`. The options are ``flowdsl.run``'s
    (documented there), except the three whose defaults live above this layer:

    Args:
        history_store: the run's history store (a ``HistoryStore``, or an object with its
            observer and read methods); None records nothing.
        cache: the result cache's policy: None (the tools declared with ``cache=``), True
            (every task whose arguments can be hashed), False (write only, no reads).
        cache_store: where cached outputs live (a ``CacheBackend``); None: no caching.
        observers: every observer of the run, a progress display among them, and the
            consumers of its event stream (callables; see events.py).
    """
    if isinstance(flow, Plan):
        p = flow
        check_size(len(p.order), sum(map(len, p.predecessors.values())), max_nodes, max_edges)
    else:
        p = plan(flow, max_nodes=max_nodes, max_edges=max_edges)
    _positive("timeout", timeout)
    _positive("compensation_timeout", compensation_timeout)
    settings = policy.resolve_settings(flow, p, mode=mode, context=context, resources=resources,
                                       max_concurrency=max_concurrency)
    m, ctx, max_concurrency = settings.mode, settings.context, settings.max_concurrency
    resources = settings.resources
    if items is not None and m is not Mode.PIPELINE:
        msg = f"run(): items= streams data through a pipeline; use mode='pipeline' (got {m})"
        raise ValueError(msg)
    pools = resources if isinstance(resources, Pools) else Pools(resources)
    p.check_resources(pools.capacities)
    steps = sub_steps(p)
    per_task, opened = _executors(p, executor, steps)
    store = history_store
    if p.groups:  # embedded flows' context defaults, under the flow's and the run's
        ctx = {**context_defaults(p.groups), **ctx}
    recorded, counts = await _recorded(p, durations, store)
    estimates = policy.estimate_durations(  # the sources are not kept: memory per task
        p, durations, None if recorded is None else lambda: recorded,
        None if counts is None else lambda: counts)[0]
    priorities = policy.priorities(p, estimates)
    del estimates
    for ex in opened:  # remote executors check tasks and take priorities before any runs
        if type(ex).prepare is not Executor.prepare:
            every = {**p.tasks, **{key: step for key, _, _, step in steps}} if steps else p.tasks
            ex.prepare({t: every[t] for t, e in per_task.items() if e is ex}, priorities)
    result: RunResult[Any] = RunResult(
        run_id=uuid.uuid4().hex[:12], flow_name=p.name, mode=m.value, context=ctx, plan=p,
        masker=_secrets(p, ctx, input))
    results_cache = _run_cache(p, cache, cache_store, result.masker)
    if results_cache is not None and results_cache.found:  # Secrets made by key functions
        result.masker = secrets.masker_for(results_cache.found, result.masker)
        results_cache.found = []
    consumers: list[EventConsumer] = []  # callables: they read the event stream
    hooked: list[RunObserver] = []
    ends: list[Any] = []  # consumers with run_started / run_finished hooks (a display)
    for ob in observers:
        if is_consumer(ob):
            consumers.append(ob)
            if hasattr(ob, "run_started"):
                ends.append(ob)
        else:
            hooked.append(cast("RunObserver", ob))
    obs = _observers(hooked, store, p, store_outputs)
    tracing = run_tracing()  # None, at the cost of a dict look-up, unless OTel is set up
    if tracing is not None:
        obs.append(tracing)
    core = Core(p, result, context=ctx, executors=per_task, pools=pools,
                priorities=priorities, continue_on_error=continue_on_error, observers=obs,
                log=logging_enabled() if log is None else log, rng=rng, sleep=sleep,
                cache=results_cache, rollback=rollback_on_failure, keep_outputs=keep_outputs,
                capture=capture_output)
    if tracing is not None:
        tracing.attach(core)
    for key, sub, sid, _ in steps:  # each sub-flow's steps' executors, by the sub-flow
        core.sub_executors.setdefault(id(sub), {})[sid] = per_task[key]
    core.check_start(input_given=input is not None or items is not None)
    # Map children's input hashes go to history with their outputs (a resume matches them),
    # and are compared on a resume: worked out only then.
    core.child_keys = store is not None and items is None and bool(
        resume is not None
        or (getattr(store, "store_outputs", False) if store_outputs is None else store_outputs))
    item = core.new_item(-1, input) if items is None else Item(-1, None, {})
    if resume is not None:
        await _reuse(store, resume, p, item, core)
    runner = RUNNERS[m]()
    options = _Options(max_concurrency, items, buffer)
    for ob in (*obs, *ends):
        ob.run_started(result, p)
    if core.log:
        core.log.info("run_started", flow=p.name, mode=m.value, tasks=len(p.order))
    if consumers:  # (opened last: from here on, _finish closes it, whatever happens)
        events = core.open_events(consumers)
        events.put(RUN_STARTED, detail=RunStart(result.run_id, p.name, m.value, p))
        for tid, status in item.status.items():  # reused from the resumed run: final now
            events.put(TASK_FINISHED, tid, None, None, status)
    # A large run's plan, core and records are not rescanned by the cyclic collector again
    # and again while it runs (_base/collector.py).
    with collector.frozen(len(p.tasks)):
        try:
            await _drive(core, runner, p, item, options, opened, timeout)
        except BaseException as exc:  # cancelled from outside, KeyboardInterrupt, ...
            result.status = RunStatus.CANCELLED
            with anyio.CancelScope(shield=True):
                await _finish(core, p, result, item, rollback_on_failure, [*obs, *ends],
                              items is not None, compensation_timeout)
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                result.error = result.error or exc
            raise
        if result.status is RunStatus.RUNNING:
            result.status = RunStatus.FAILED if result.errors else RunStatus.COMPLETED
        await _finish(core, p, result, item, rollback_on_failure, [*obs, *ends],
                      items is not None, compensation_timeout)
    return result


def _secrets(p: Plan, ctx: Mapping[str, Any], input: Any) -> Masker | None:
    """The run's masker: the Secrets among its tasks' arguments, its context and its input
    (not looked for at all unless a Secret was ever made)."""
    if not secrets.in_use():
        return None
    roots = [[(t.args, t.kwargs) for t in p.tasks.values()], list(ctx.values()), input]
    return secrets.masker_for(v for v in nodes(roots) if isinstance(v, secrets.Secret))


def _observers(given: Sequence[RunObserver], store: Any, p: Plan,
               store_outputs: bool | None) -> list[RunObserver]:
    obs = list(given)
    if store is not None:  # history first: it must see every event, whatever others do
        obs.insert(0, store.observer(p.name, store_outputs=store_outputs))
    return obs


async def _drive(core: Core, runner: Any, p: Plan, item: Item, options: _Options,
                 opened: list[Executor], timeout: float | None) -> None:
    """Open the executors, let the runner run under the run's cancel scope (its deadline is
    the run timeout), then bring remote values home and close the executors, shielded."""
    result = core.result
    if core.capture:  # tools' prints and logging records: kept with their task
        capture.acquire()
    try:
        for ex in opened:
            await ex.open()
        if core.cache is not None:
            await core.cache.open()
        with anyio.CancelScope() as scope:
            core.scope = scope
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            await runner.run(core, p, item, options)
        if scope.cancelled_caught and not core.stopped and timeout is not None:
            result.status = RunStatus.TIMED_OUT
            result.error = result.error or RunTimeout(
                f"the run exceeded its {timeout:g}s timeout", timeout=timeout)
        elif core.stopped and options.items is None:
            await core.run_cleanup(item)
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if core.cache is not None:  # what the run computed, also when it failed
                    await core.cache.flush(result)
                if core.remote:  # values on a cluster must come here before it closes
                    await core.localize()
            finally:
                for ex in opened:
                    await ex.close()
                if core.capture:
                    capture.release()


def _run_cache(p: Plan, cache: bool | None, store: CacheBackend | None,
               masker: Any) -> RunCache | None:
    """The result cache of this run, or None without a store (the caller gives one only
    when a task of the plan is cached: ``RunCache.wanted``). ``cache`` is the policy: True
    (every task), False (write only) or None (the tools that declare a cache)."""
    if store is None:
        return None
    return RunCache(store, p.tasks, p.ids, read=cache is not False,
                    every=cache is True, masker=masker)


async def _recorded(p: Plan, given: Mapping[str, float] | None, store: Any
                    ) -> tuple[Mapping[str, float] | None, Mapping[str, int] | None]:
    """What history says of the tasks with neither a given nor a declared duration, and of
    how many children each mapped task had (None when nothing needs it): from the store's
    memory while fresh, else read from SQLite in a worker thread, never on the event loop."""
    if store is None:
        return None, None
    given = given or {}
    need = not all(t in given or task.spec.expected_duration is not None
                   for t, task in p.tasks.items())
    mapped = any(getattr(task, "fan", None) is not None for task in p.tasks.values())
    if not need and not mapped:
        return None, None
    if not mapped:
        hist = store.cached_durations(p)
        if hist is not None:
            return hist, None

    def read() -> tuple[Mapping[str, float] | None, Mapping[str, int] | None]:
        if not mapped:
            # The memory missed because a run that returned is not in it yet (the writer
            # takes it just after the run returns): take it here, then, if the figures
            # wanted wait for its fold, wait for that; answer from memory, not by reading
            # the flow's rows again.
            hist = getattr(store, "expected", store.cached_durations)(p)
            if hist is None:
                store.flush()
                hist = store.cached_durations(p)
            if hist is not None:
                return hist, None
        return (store.durations(p) if need else None,
                store.map_counts(p) if mapped else None)

    return await anyio.to_thread.run_sync(read)


async def _reuse(store: Any, run_id: str, p: Plan, item: Item, core: Core) -> None:
    """Take the stored outputs of run ``run_id`` for the tasks of ``p`` with the same ids
    (ids come from the flow's structure, so a rebuilt flow finds its tasks again), and the
    finished children of its mapped tasks that did not finish: the core reuses a child when
    its index and input hash match (see fanout.py)."""
    if store is None:
        msg = "run(resume=...) needs a history store (history=False was given)"
        raise PlanError(msg)
    stored, keys = await anyio.to_thread.run_sync(  # SQLite: off the loop
        partial(store.load_outputs, run_id, input_keys=True))
    found = [tid for tid in stored if tid in p.tasks]
    why = f"reused from run {run_id}"
    children = 0
    for cid, key in keys.items():
        head, _, index = cid[:-1].rpartition("[")
        mapped = p.tasks.get(head)
        if (mapped is not None and getattr(mapped, "fan", None) is not None
                and index.isdigit() and head not in stored):
            core.reused.setdefault(head, {})[int(index)] = (key, stored[cid], why)
            children += 1
    if stored and not found and not children:
        theirs = ", ".join(sorted(stored)[:10]) + (" ..." if len(stored) > 10 else "")
        ours = ", ".join(list(p.tasks)[:10]) + (" ..." if len(p.tasks) > 10 else "")
        msg = (f"run(resume={run_id!r}): none of that run's stored tasks ({theirs}) is in this "
               f"flow (its tasks: {ours}); was the run made by another flow, or were its "
               "tasks renamed?")
        raise PlanError(msg)
    for tid in found:
        item.outputs[tid] = stored[tid]
        item.status[tid] = TaskStatus.COMPLETED
        item.records[tid] = TaskRecord(tid, p.tasks[tid].tool.name,
                                       status=TaskStatus.COMPLETED, reason=why)


async def _finish(core: Core, p: Plan, result: RunResult[Any], item: Item, rollback: bool,
                  obs: Sequence[Any], streamed: bool,
                  compensation_timeout: float | None) -> None:
    if rollback and result.status is not RunStatus.COMPLETED:
        undone = await core.rollback(compensation_timeout)
        if result.rollback_errors:
            n = len(result.rollback_errors)
            msg = f"the rollback of {n} task(s) failed after the run {result.status}"
            result.compensation_error = CompensationError(msg, result.rollback_errors,
                                                          result.error)
            result.status = RunStatus.ROLLBACK_FAILED
        elif undone and result.status is RunStatus.FAILED:
            result.status = RunStatus.ROLLED_BACK
    result.duration = core.now()
    if streamed:  # a pipeline over items (maybe none): items were released as they ended
        result.tasks = core.summary()
        kept = core.kept
        for it in core.items.values():  # what a stopped run left unfinished
            if it.index >= 0 and core.keep_outputs:
                kept[it.index] = [it.outputs.get(s) for s in p.sinks]
        per_item = [kept[i] for i in sorted(kept)]
        result.outputs = {s: [o[n] for o in per_item] for n, s in enumerate(p.sinks)}
        result.output = [o[0] if len(o) == 1 else o for o in per_item]
    else:
        records = item.records
        result.tasks = {t: records.get(t) or TaskRecord(t, p.tasks[t].tool.name)
                        for t in p.order}
        if core.children:  # a mapped task's children follow it
            result.tasks = _with_children(result.tasks, core.children, records)
        result.outputs = item.outputs
        outs = [item.outputs.get(s) for s in p.sinks]
        result.output = outs[0] if len(outs) == 1 else outs
    events = core.events
    try:
        if events is not None:  # the consumers read the last events (off the loop) before
            events.put(RUN_FINISHED, detail=result.status)  # any view hears the run ended
            await events.close()
    finally:
        for ob in obs:
            ob.run_finished(result)
        for ob in obs:  # observers that write elsewhere (history) wait here, off the loop
            settle = getattr(ob, "arun_finished", None)
            if settle is not None:
                await settle(result)
    if core.log:
        level = "info" if result.status is RunStatus.COMPLETED else (
            "warning" if result.status is RunStatus.CANCELLED else "error")
        getattr(core.log, level)("run_finished", flow=p.name, status=result.status,
                      duration=result.duration,
                      error=exc_repr(result.error) if result.error is not None else None)


def _with_children(tasks: dict[str, TaskRecord], children: Mapping[str, list[str]],
                   records: Mapping[str, TaskRecord]) -> dict[str, TaskRecord]:
    out: dict[str, TaskRecord] = {}
    for t, rec in tasks.items():
        out[t] = rec
        if t in children:
            for c in descendants(children, t):
                if c in records:
                    out[c] = records[c]
    return out


class _Box:
    """Carries the result out of the event loop. asyncio formats the repr of its main task's
    result when it restores the SIGINT handler; a result's repr scans every task, so the
    result travels in a box whose repr costs nothing."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<RunResult box>"


async def _boxed(call: Callable[[], Awaitable[R]]) -> _Box:
    return _Box(await call())


def _loop_running() -> bool:
    return current_loop() is not None


def run_blocking(call: Callable[[], Awaitable[R]], backend: str = "asyncio") -> R:
    """Await ``call()`` from plain code and return its value (``flowdsl.run``'s blocking
    part). From a thread whose event loop is already running (a notebook cell), which
    cannot be re-entered, it runs in a thread and event loop of its own."""
    boxed = partial(_boxed, call)
    if not _loop_running():
        return anyio.run(boxed, backend=backend).value  # type: ignore[no-any-return]
    # a thread of its own, whose event loop this one's does not block
    return in_fresh_thread(  # type: ignore[no-any-return]
        lambda: anyio.run(boxed, backend=backend).value)
