"""Predict: the real engine on a virtual clock, running no tool.

:func:`simulate` plans the flow, then runs it through the run layer's ``execute`` (no history, no
result cache, no progress, no observer) on an asyncio event loop whose clock jumps to the
next timer when nothing is runnable (:mod:`flowdsl._base.virtual`). Every tool call is
replaced by a virtual sleep of the task's predicted duration (given, declared, recorded in
history or 1 s: :func:`~flowdsl._plan.policy.estimate_durations`, the precedence a run uses
for its priorities). Nothing is re-modelled here: the mode's runner, the ready order and
priorities, ``max_concurrency``, the pools' grants, the executors' slots (32 threads, one
process per CPU, or ``executor_limits``), mapped tasks and their ``max_parallel``, pipeline
items and the buffers between stages all behave as in a run, because they are the run's.

What a prediction cannot know is assumed:

- Every task runs and succeeds, once: conditions (``.when``), switches and guards are taken
  as true (all cases of a switch run), trigger rules as met, and timeouts, deadlines and
  retries play no part. A condition cannot be evaluated without running its upstream.
- A mapped task has its last recorded number of children (else 1), each taking its
  duration divided by that number (a given duration is the whole task's).
- Groups (embedded flows with their own ``when``/``timeout``/``retries``) run their members
  as plain tasks: with nothing failing, a group adds no time.

The faked call is a coroutine on an executor of this module that holds a slot of its
kind's limit and sleeps: no thread is started and no real time passes, so a prediction is
exact and repeatable, and ``simulate`` of a 10,000-task flow takes about as long as the
engine's own per-task work for 10,000 tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .._base.loop import current_loop, in_fresh_thread
from .._base.virtual import run_virtual
from .._graph.task import Task
from .._plan import policy
from .._plan.planner import Plan, plan
from .._plan.policy import Mode
from .._run.api import execute
from .._run.executors import Executor

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
             scope: str | None = None, buffer: int = 2) -> Simulation:
    """Predict a run's makespan and each task's start and end without running any tool: the
    flow runs on the real engine under a virtual clock, each call a virtual sleep of its
    task's predicted duration (see the module docstring for what is assumed).

    Args:
        flow: a Flow, Fragment, Task, list or :class:`~flowdsl.Plan`. A Flow's own mode,
            resources and max_concurrency are used when not given here (as in a run).
        mode: ``"sequential"``, ``"parallel"`` (default), ``"pipeline"`` or ``"conditional"``
            (or a :class:`~flowdsl.Mode`).
        resources: pool -> capacity (pools not given are unbounded).
        max_concurrency: worker slots (``None``: the mode's default, as in a run).
        durations: task id -> seconds; wins over declared estimates and history.
        history: where durations of tasks with no declared estimate come from, as in
            :func:`flowdsl.run`: ``None`` the default store, ``False`` none, a path or a
            :class:`~flowdsl.HistoryStore`.
        items: for pipelines, the items (or their number) streamed through the stages.
        executor_limits: executor name -> calls at once (default: what a run uses, 32
            threads and one process per CPU).
        scope: which history counts: ``"flow"`` (this flow's runs; the store's default) or
            ``"all"`` (the same tools in any flow).
        buffer: for pipelines over items, the buffer between stages (as in a run).

    Raises:
        ValueError: an unknown mode, a bad ``max_concurrency``, or ``items`` outside
            pipeline mode (as :func:`flowdsl.run` refuses them).
        ResourceError: a task needs a pool not in ``resources`` or more than its capacity.
        RuntimeError: the simulated run did not complete (a mapped task's recorded count of
            children over its ``max_children``, for one).
    """
    p = flow if isinstance(flow, Plan) else plan(flow)
    settings = policy.resolve_settings(flow, p, mode=mode, resources=resources,
                                       max_concurrency=max_concurrency, where="simulate()")
    m, mc = settings.mode, settings.max_concurrency
    caps = _capacities(settings.resources)
    if caps is not None:
        p.check_resources(caps)
    if items is not None and m is not Mode.PIPELINE:
        msg = (f"simulate(): items= streams data through a pipeline; use mode='pipeline' "
               f"(got {m})")
        raise ValueError(msg)
    dur, src = resolve_durations(p, durations, history, scope)
    children = policy.expected_children(p, partial(_counts, p, history))
    n_items = None if items is None else (items if isinstance(items, int) else len(items))
    limits = executor_limits if executor_limits is not None else policy.executor_limits()
    fake, spans = _virtual_plan(p, dur, children, limits)
    # The run layer's entry: no history store, no cache store, no progress display, and no
    # fork helper (no tool body runs), as none is assembled above it.
    go = partial(execute, fake, mode=m, resources=caps, max_concurrency=mc, durations=dur,
                 items=None if n_items is None else range(n_items), buffer=buffer,
                 history_store=None, cache_store=None, log=False,
                 capture_output=False, keep_outputs=False, store_outputs=False)
    result = (run_virtual(go) if current_loop() is None
              else in_fresh_thread(partial(run_virtual, go)))
    if not result.ok:
        msg = (f"simulate(): the simulated run of {p.name or 'the flow'!r} ended "
               f"{result.status.value}: {result.error!r}")
        raise RuntimeError(msg)
    tasks = {}
    for i in p.order:
        rec = result.tasks[i]
        start = rec.started_at if rec.started_at is not None else 0.0
        tasks[i] = SimTask(i, start, rec.ended_at if rec.ended_at is not None else start)
    makespan = max((t.end for t in tasks.values()), default=0.0)
    path, _ = p.critical_path(dur)
    workers = policy.worker_limit(m, mc)
    # A mapped task's children run side by side: its span is not its whole duration.
    kids = {i: [dur[i] / n] * n for i, n in children.items()}
    bound = p.lower_bound(dur, caps, None if workers >= len(p) else workers, kids)
    item_spans: dict[str, list[tuple[float, float]]] = {}
    if n_items:
        bound = max(bound, _pipeline_bound(p, dur, n_items))
        item_spans = {i: spans[i] for i in p.order}
    return Simulation(m.value, makespan, tasks, dur, src, bound, path, n_items, item_spans,
                      children)


class _VirtualExecutor(Executor):
    """Where every faked call of one executor kind runs: on the event loop, holding one of
    ``slots`` places for its virtual sleep (``None``: no limit, as for async and inline
    tools). Calls over the limit queue first come, first served, and a call that ends
    hands its place to the first in the queue at once: what the thread and process pools
    do with their worker queue."""

    name = "virtual"

    def __init__(self, slots: int | None) -> None:
        self.slots = slots
        self._free = slots or 0
        self._queue: deque[asyncio.Future[None]] = deque()

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], *, task_id: str) -> Any:
        if self.slots is None:
            return fn(*args, **kwargs)
        return self._held(fn, args, kwargs)

    async def _held(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if self._free and not self._queue:
            self._free -= 1  # a free place: no yield, as a pool takes the call at once
        else:
            turn = asyncio.get_running_loop().create_future()
            self._queue.append(turn)
            try:
                await turn
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed a place while being cancelled: pass it on
                else:
                    self._queue.remove(turn)
                raise
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    def _release(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


_NO_PARAMETERS = inspect.Signature()


class _VirtualTool:
    """What the engine needs of a task's tool: its name (records keep the real one), a
    signature (none: a faked call takes whatever it is given) and ``fn``, the sleep."""

    __slots__ = ("fn", "name", "signature")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.signature = _NO_PARAMETERS


def _sleeper(seconds: float, spans: list[tuple[float, float]]) -> Callable[..., Any]:
    """A faked call: sleep ``seconds`` of virtual time; its (start, end) go to ``spans``
    (in the order calls started: item by item for a pipeline stage)."""

    async def call(*args: Any, **kwargs: Any) -> None:
        # asyncio itself, not anyio: the virtual run is always on asyncio, and this is the
        # per-call cost of a simulation.
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(seconds)
        spans.append((start, loop.time()))

    return call


def _virtual_plan(p: Plan, dur: Mapping[str, float], children: Mapping[str, int],
                  limits: Mapping[str, int]
                  ) -> tuple[Plan, dict[str, list[tuple[float, float]]]]:
    """The plan the simulated run runs: the same ids, edges, options that schedule (pools,
    priority, executor kind, map width, pipeline stage) and tools replaced by virtual
    sleeps; what could skip or fail a task (conditions, guards, triggers, timeouts,
    retries, groups, inputs) is dropped. Also each task's list of call spans."""
    executors = {kind: _VirtualExecutor(n) for kind, n in limits.items()}
    unlimited = _VirtualExecutor(None)
    tasks: dict[str, Task[Any]] = {}
    ids: dict[Task[Any], str] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    specs: dict[tuple[Any, ...], Any] = {}
    for i, t in p.tasks.items():
        spec = t.spec
        kind = spec.executor
        ex = executors.get(kind, unlimited) if isinstance(kind, str) else unlimited
        n = children.get(i, 1)
        mine: list[tuple[float, float]] = []
        spans[i] = mine
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        fan = t.fan
        if fan is not None:  # n children, each a share of the task's duration
            n = min(n, fan.limit)
            column = list(range(n))
            kwargs = dict.fromkeys(fan.params, column)
            if fan.positional:
                args = (kwargs.pop(fan.params[0]),)
        # One spec for the tasks that schedule alike: only the executor, the pools and the
        # priority shape the schedule (the durations are given to the run); a task's own
        # spec (from its expected_duration, say) would cost a copy per task.
        key = (id(ex), spec.priority, tuple(spec.resources.items()), spec.name)
        fake_spec = specs.get(key)
        if fake_spec is None:
            fake_spec = specs[key] = dataclasses.replace(
                spec, executor=ex, timeout=None, deadline=None, retries=0, rollback=None,
                cache=None)
        fake = t._replace(tool=_VirtualTool(t.tool.name, _sleeper(dur[i] / n, mine)),
                          spec=fake_spec, args=args, kwargs=kwargs, upstream=(), needs=(),
                          dynamic=False, embeds=(), condition=None, guards=(),
                          to_context_map=None, trigger="all_success")
        tasks[i] = fake
        ids[fake] = i
    return Plan._build(tasks, p.predecessors, p.name, None, (), ids), spans


def _pipeline_bound(p: Plan, dur: Mapping[str, float], n: int) -> float:
    """Each stage handles the n items one after another, after the first item reached it
    and before the last one leaves the rest of the flow."""
    top: dict[str, float] = {}
    for i in p.order:
        top[i] = max((top[q] + dur[q] for q in p.predecessors[i]), default=0.0)
    rem = p.remaining(dur)
    return max((top[i] + (n - 1) * dur[i] + rem[i] for i in p.order), default=0.0)
