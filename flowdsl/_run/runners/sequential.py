"""Sequential mode: one task at a time in the plan's topological order (the baseline)."""

from __future__ import annotations

from typing import ClassVar

from ..._plan.planner import Plan
from ..._plan.policy import Mode
from ..core import Core, Item
from .base import RunOptions


class SequentialRunner:
    mode: ClassVar[str] = Mode.SEQUENTIAL.value

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = 1  # a mapped task's children too run one at a time
        for tid in plan.order:
            if core.stopped:
                return
            await core.run_task(tid, item)
