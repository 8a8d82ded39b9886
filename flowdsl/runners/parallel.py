"""Parallel mode: list scheduling with critical-path priority over the shared ready queue.

Among ready tasks the one with the longest remaining path to the end of the flow (its own
duration included) goes first; an explicit ``priority`` overrides it; ties go in plan order.
"""

from __future__ import annotations

from typing import ClassVar

from .._execute import Core, Item
from .._planner import Plan
from ._base import RunOptions, drive

DEFAULT_MAX_CONCURRENCY = 1000


class ParallelRunner:
    mode: ClassVar[str] = "parallel"

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        prio = core.priorities
        index = plan.index
        await drive(core, plan, item,
                    workers=options.max_concurrency or DEFAULT_MAX_CONCURRENCY,
                    key=lambda t: (-prio[t], index(t)))
