"""Parallel mode: list scheduling with critical-path priority over the shared ready queue.

Among ready tasks the one with the longest remaining path to the end of the flow (its own
duration included) goes first; an explicit ``priority`` overrides it; ties go in plan order.
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.planner import Plan
from ..core import Core, Item
from .base import RunOptions, drive

DEFAULT_MAX_CONCURRENCY = 1000


class ParallelRunner:
    mode: ClassVar[str] = "parallel"

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = options.max_concurrency or DEFAULT_MAX_CONCURRENCY
        await drive(core, plan, item, workers=core.child_limit,
                    ranked=by_priority(core, plan))


def by_priority(core: Core, plan: Plan) -> list[str]:
    """Tasks best first: highest priority, ties in plan order (the sort is stable)."""
    prio = core.priorities
    return sorted(plan.order, key=lambda t: -prio[t])
