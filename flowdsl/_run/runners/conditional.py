"""Conditional mode: branch by branch, one task at a time by default.

A task is taken as soon as it is ready, in plan order, so the context it sees holds the
outputs of everything that ran before it; conditions and trigger rules (applied by the core,
as in every mode) decide which branch runs. ``max_concurrency`` > 1 lets branches overlap.
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.planner import Plan
from ..._plan.policy import Mode, ranked, worker_limit
from ..core import Core, Item
from .base import RunOptions, drive


class ConditionalRunner:
    mode: ClassVar[str] = Mode.CONDITIONAL.value

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = worker_limit(Mode.CONDITIONAL, options.max_concurrency)
        await drive(core, plan, item, workers=core.child_limit,
                    ranked=ranked(plan, Mode.CONDITIONAL, core.priorities))
