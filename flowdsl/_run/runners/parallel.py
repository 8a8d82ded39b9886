"""Parallel mode: list scheduling with critical-path priority over the shared ready queue.

Among ready tasks the one with the longest remaining path to the end of the flow (its own
duration included) goes first; an explicit ``priority`` overrides it; ties go in plan order
(the policy's :func:`~flowdsl._plan.policy.ranked`, which the simulator uses too).
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.planner import Plan
from ..._plan.policy import Mode, ranked, worker_limit
from ..core import Core, Item
from .base import RunOptions, drive


class ParallelRunner:
    mode: ClassVar[str] = Mode.PARALLEL.value

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = worker_limit(Mode.PARALLEL, options.max_concurrency)
        await drive(core, plan, item, workers=core.child_limit,
                    ranked=ranked(plan, Mode.PARALLEL, core.priorities))
