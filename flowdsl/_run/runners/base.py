"""What every runner shares: the Runner protocol, and the runners the ready-heap loop serves.

The loop itself is :func:`flowdsl._run.core.loop.drive` (a ready heap served by a few
long-lived workers); :func:`drive_plan` runs a plan's tasks through it with a mode's worker
count and order. Sequential, parallel and conditional are that and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from ..._plan.planner import Plan
from ..._plan.policy import Mode, ranked, worker_limit
from ..core import Core, Item, drive

__all__ = ["ReadyQueueRunner", "RunOptions", "Runner", "drive_plan"]


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
        await drive_plan(core, plan, item, workers=core.child_limit,
                         ranked=ranked(plan, self.mode, core.priorities))


async def drive_plan(core: Core, plan: Plan, item: Item, *, workers: int,
                     ranked: Sequence[str]) -> None:
    """Run every task of ``plan`` for ``item`` with at most ``workers`` at once; among ready
    tasks, the one earliest in ``ranked`` (every task, best first) goes first. A retried
    group's members keep that order (the core reads it from ``core.ranked``)."""
    core.ranked = ranked
    run_task = core.run_task
    preds = plan.predecessors
    # One worker in plan order (sequential; conditional by default): the loop needs no
    # in-degree counts (see drive's ``ordered``).
    ordered = workers == 1 and tuple(ranked) == plan.order
    await drive(ranked, lambda tid: run_task(tid, item), workers=workers,
                stop=lambda: core.stopped, succs=plan.successors,
                waiting=None if ordered else dict(zip(preds, map(len, preds.values()))),
                ordered=ordered)
