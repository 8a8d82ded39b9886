"""Conditional mode: branch by branch, one task at a time by default.

A task is taken as soon as it is ready, in plan order, so the context it sees holds the
outputs of everything that ran before it; conditions and trigger rules (applied by the core,
as in every mode) decide which branch runs. ``max_concurrency`` > 1 lets branches overlap.
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.policy import Mode
from .base import ReadyQueueRunner


class ConditionalRunner(ReadyQueueRunner):
    mode: ClassVar[Mode] = Mode.CONDITIONAL
