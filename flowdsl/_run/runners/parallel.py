"""Parallel mode: list scheduling with critical-path priority over the shared ready queue.

Among ready tasks the one with the longest remaining path to the end of the flow (its own
duration included) goes first; an explicit ``priority`` overrides it; ties go in plan order
(the policy's :func:`~flowdsl._plan.policy.ranked`, which the simulator uses too).
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.policy import Mode
from .base import ReadyQueueRunner


class ParallelRunner(ReadyQueueRunner):
    mode: ClassVar[Mode] = Mode.PARALLEL
