"""Sequential mode: one task at a time in the plan's topological order (the baseline).

It is the shared ready-heap loop with one worker and the plan's order as the rank: with one
worker the loop takes tasks exactly in that order (each next task's predecessors all come
before it). A mapped task's children run one at a time too (``worker_limit`` is 1).
"""

from __future__ import annotations

from typing import ClassVar

from ..._plan.policy import Mode
from .base import ReadyQueueRunner


class SequentialRunner(ReadyQueueRunner):
    mode: ClassVar[Mode] = Mode.SEQUENTIAL
