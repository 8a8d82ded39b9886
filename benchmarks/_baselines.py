"""What flowdsl is measured against, implemented here only (never in flowdsl itself).

- :func:`run_by_levels`: the reference design's strategy: run a whole dependency level, wait
  for all of it, then the next (anyio task groups calling the tools' raw functions).
- :func:`asyncio_floor`: the least any asyncio engine can do: one coroutine per task awaiting
  its dependencies' events, then calling the tool's function.
  :func:`sleeping_floor` does the same with sleeping tasks; :func:`executor_floor` calls a
  plain function through ``loop.run_in_executor`` (asyncio's default thread pool) instead.
- :func:`dask_threaded`: the same graph on dask's threaded scheduler, when dask is installed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Mapping
from typing import Any

import anyio

import flowdsl
from flowdsl._graph.task import Ref

__all__ = ["asyncio_floor", "dask_threaded", "executor_floor", "levels_seconds",
           "run_by_levels", "sleeping_floor"]


class _Pool:
    """A multi-unit pool: all of a task's units are taken at once, so no partial holds."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        self.cond = anyio.Condition()

    async def acquire(self, amount: int) -> None:
        async with self.cond:
            while self.free < amount:
                await self.cond.wait()
            self.free -= amount

    async def release(self, amount: int) -> None:
        async with self.cond:
            self.free += amount
            self.cond.notify_all()


def _resolve(value: Any, outputs: Mapping[flowdsl.Task, Any]) -> Any:
    """Replace Task/Ref arguments with the outputs they stand for."""
    if isinstance(value, flowdsl.Task):
        return outputs[value]
    if isinstance(value, Ref):
        out = outputs[value.task]
        for key in value.path:
            out = out[key]
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, outputs) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, outputs) for k, v in value.items()}
    return value


async def _call(task: flowdsl.Task, outputs: dict[flowdsl.Task, Any], pools: dict[str, _Pool],
                limiter: anyio.CapacityLimiter | None) -> None:
    need = sorted(task.spec.resources.items())  # one global order: no deadlock between tasks
    if limiter is not None:
        await limiter.acquire()
    try:
        for pool, amount in need:
            await pools[pool].acquire(amount)
        try:
            args = _resolve(task.args, outputs)
            kwargs = _resolve(task.kwargs, outputs)
            result = task.tool.fn(*args, **kwargs)
            outputs[task] = await result if inspect.isawaitable(result) else result
        finally:
            for pool, amount in need:
                await pools[pool].release(amount)
    finally:
        if limiter is not None:
            limiter.release()


async def run_by_levels(flow: Any, capacities: Mapping[str, int] | None = None,
                        max_concurrency: int | None = None) -> float:
    """Run ``flow`` level by level with barriers; return the seconds it took.

    Within a level, tasks start in critical-path order so pools serve the longest paths first,
    as the ready queue does: the difference left is the barriers alone.
    """
    plan = flowdsl.plan(flow)
    remaining = plan.remaining()
    pools = {name: _Pool(cap) for name, cap in (capacities or {}).items()}
    limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
    outputs: dict[flowdsl.Task, Any] = {}  # keyed by the Task objects arguments refer to
    start = time.perf_counter()
    for level in plan.levels:
        async with anyio.create_task_group() as tg:
            for tid in sorted(level, key=lambda i: -remaining[i]):
                tg.start_soon(_call, plan.tasks[tid], outputs, pools, limiter)
    return time.perf_counter() - start


def levels_seconds(flow: Any, capacities: Mapping[str, int] | None = None,
                   max_concurrency: int | None = None) -> float:
    """:func:`run_by_levels` from synchronous code."""
    return anyio.run(run_by_levels, flow, capacities, max_concurrency)


def asyncio_floor(plan: flowdsl.Plan) -> float:
    """Run a planned flow of argument-less async tools with one coroutine and one event per
    task; return the seconds it took (event loop start-up excluded)."""
    preds = plan.predecessors
    fns = {i: plan.tasks[i].tool.fn for i in plan.order}

    async def main() -> float:
        start = time.perf_counter()
        events = {i: asyncio.Event() for i in plan.order}

        async def one(i: str) -> None:
            for p in preds[i]:
                await events[p].wait()
            await fns[i]()
            events[i].set()

        await asyncio.gather(*(one(i) for i in plan.order))
        return time.perf_counter() - start

    return asyncio.run(main())


def executor_floor(plan: flowdsl.Plan) -> float:
    """Like :func:`asyncio_floor` for argument-less plain functions: each task awaits
    ``loop.run_in_executor(None, fn)``, the least a sync call off the event loop costs with
    the standard library. Returns the seconds it took (loop start-up excluded)."""
    preds = plan.predecessors
    fns = {i: plan.tasks[i].tool.fn for i in plan.order}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        events = {i: asyncio.Event() for i in plan.order}

        async def one(i: str) -> None:
            for p in preds[i]:
                await events[p].wait()
            await loop.run_in_executor(None, fns[i])
            events[i].set()

        await asyncio.gather(*(one(i) for i in plan.order))
        return time.perf_counter() - start

    return asyncio.run(main())


def sleeping_floor(preds: Mapping[str, Any], durations: Mapping[str, float]) -> float:
    """The raw-asyncio floor of a DAG of sleeps (no pools): one coroutine per task awaiting
    its dependencies' events, then sleeping. What is left between this and the critical path
    is the event loop's timer granularity (epoll wakes up to 1 ms late per sleep)."""

    async def main() -> float:
        start = time.perf_counter()
        events = {i: asyncio.Event() for i in preds}

        async def one(i: str) -> None:
            for p in preds[i]:
                await events[p].wait()
            await asyncio.sleep(durations[i])
            events[i].set()

        await asyncio.gather(*(one(i) for i in preds))
        return time.perf_counter() - start

    return asyncio.run(main())


def _dask_noop(*deps: Any) -> None:
    return None


def dask_threaded(plan: flowdsl.Plan, num_workers: int | None = None) -> float | None:
    """The same graph of no-op tasks on dask's threaded scheduler (seconds), or None when
    dask is not installed."""
    try:
        import dask.threaded
    except ImportError:
        return None
    dsk = {i: (_dask_noop, *plan.predecessors[i]) for i in plan.order}
    start = time.perf_counter()
    dask.threaded.get(dsk, list(plan.sinks), num_workers=num_workers)
    return time.perf_counter() - start
