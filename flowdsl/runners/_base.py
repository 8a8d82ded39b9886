"""The shared drive loop: a ready queue served by a few long-lived workers.

State: ``waiting[t]`` counts the predecessors of ``t`` not yet final; a task enters the
``ready`` heap when it reaches zero, keyed by the runner's policy (critical-path priority,
plan order). ``workers`` coroutines pop the best ready task and hand it to the core; when
none is ready they park on an event until a finishing task releases successors. No task is
spawned per node and there are no level barriers: a task starts the moment its last
dependency finishes and a worker is free.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import anyio

from .._execute import Core, Item
from .._planner import Plan

__all__ = ["RunOptions", "Runner", "drive"]


class RunOptions(Protocol):
    max_concurrency: int | None
    items: list[Any] | None
    buffer: int


class Runner(Protocol):
    """A mode: decides when each task runs, then calls the core."""

    mode: ClassVar[str]

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None: ...


async def drive(core: Core, plan: Plan, item: Item, *, workers: int,
                ranked: Sequence[str]) -> None:
    """Run every task of ``plan`` for ``item`` with at most ``workers`` at once; among ready
    tasks, the one earliest in ``ranked`` (every task, best first) goes first."""
    preds: Mapping[str, tuple[str, ...]] = plan.predecessors
    succs = plan.successors
    waiting = {t: len(p) for t, p in preds.items()}
    # The heap holds ranks (plain ints compare fastest); ranked[r] is the task.
    rank = {t: r for r, t in enumerate(ranked)}
    ready = [rank[t] for t in plan.order if not waiting[t]]
    heapq.heapify(ready)
    total = len(plan.order)
    done = 0
    idle: list[anyio.Event] = []
    run_task = core.run_task
    push, pop = heapq.heappush, heapq.heappop
    limit = max(1, min(workers, total))
    alive = 0
    spawn: Callable[[int], None] = lambda k: None  # noqa: E731 -- set once the group exists

    async def worker() -> None:
        nonlocal done
        while not core.stopped:
            if not ready:
                if done == total:
                    return
                ev = anyio.Event()
                idle.append(ev)
                await ev.wait()
                continue
            tid = ranked[pop(ready)]
            await run_task(tid, item)
            done += 1
            woke = 0
            for s in succs[tid]:
                left = waiting[s] - 1
                waiting[s] = left
                if not left:
                    push(ready, rank[s])
                    woke += 1
            # This worker takes one of the newly ready tasks itself; a parked worker takes
            # each of the others, a new one where none is parked; everyone wakes at the end.
            extra = woke - 1
            while idle and (extra > 0 or done == total):
                idle.pop().set()
                extra -= 1
            if extra > 0:
                spawn(extra)
        while idle:
            idle.pop().set()

    if limit == 1:
        await worker()
        return
    async with anyio.create_task_group() as tg:

        def spawn(k: int) -> None:
            # Workers start as concurrency is needed (a chain needs one), up to the limit.
            nonlocal alive
            while k > 0 and alive < limit:
                alive += 1
                k -= 1
                tg.start_soon(worker)

        spawn(len(ready))
