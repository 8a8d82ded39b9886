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

from ..._base.loop import call_soon
from ..._plan.planner import Plan
from ..._plan.policy import Mode, ranked, worker_limit
from ..core import Core, Item

__all__ = ["RunOptions", "Runner", "drive"]


class RunOptions(Protocol):
    max_concurrency: int | None
    items: list[Any] | None
    buffer: int


class Runner(Protocol):
    """A mode: decides when each task runs, then calls the core."""

    mode: ClassVar[str]

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None: ...


class ReadyQueueRunner:
    """A mode served by :func:`drive`: the policy says how many workers it gets and in which
    order ready tasks go; a subclass only names its mode."""

    mode: ClassVar[Mode]

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = worker_limit(self.mode, options.max_concurrency)
        await drive(core, plan, item, workers=core.child_limit,
                    ranked=ranked(plan, self.mode, core.priorities))


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
    coming = 0  # workers started or woken that have not looked at the heap yet
    topping = False
    spawn: Callable[[int], None] = lambda k: None  # noqa: E731 -- set once the group exists

    def top_up() -> None:
        # Runs only once the worker that asked for it has actually waited: then every ready
        # task nobody is on the way to gets a worker, all in the same scheduler tick (so a
        # remote executor can batch what they submit). A flow of instant tasks never waits
        # and runs on a single worker.
        nonlocal topping, coming
        topping = False
        if done >= total:  # all done: the workers may be gone, and their task group closed
            return
        extra = len(ready) - coming
        while idle and extra > 0:
            idle.pop().set()
            coming += 1
            extra -= 1
        if extra > 0 and not core.stopped:
            spawn(extra)

    async def worker() -> None:
        nonlocal done, coming, topping
        coming -= 1
        while not core.stopped and done < total:
            if not ready:
                ev = anyio.Event()
                idle.append(ev)
                await ev.wait()
                coming -= 1
                continue
            tid = ranked[pop(ready)]
            if ready and not topping:
                topping = call_soon(top_up)
            await run_task(tid, item)
            done += 1
            for s in succs[tid]:
                left = waiting[s] - 1
                waiting[s] = left
                if not left:
                    push(ready, rank[s])
        while idle:  # the work is done or the run stopped: let everyone out
            idle.pop().set()
            coming += 1  # (each woken worker counts itself off again)

    if limit == 1:
        coming = 1
        await worker()
        return
    async with anyio.create_task_group() as tg:

        def spawn(k: int) -> None:
            nonlocal alive, coming
            while k > 0 and alive < limit:
                alive += 1
                coming += 1
                k -= 1
                tg.start_soon(worker)

        spawn(len(ready))  # the first ready tasks start together (remote executors batch)
