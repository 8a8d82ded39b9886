"""The four runners; each decides only the order and concurrency of task calls."""

from __future__ import annotations

from ..._plan.policy import Mode
from .base import Runner
from .conditional import ConditionalRunner
from .parallel import ParallelRunner
from .pipeline import PipelineRunner
from .sequential import SequentialRunner

__all__ = ["RUNNERS", "ConditionalRunner", "ParallelRunner", "PipelineRunner", "Runner",
           "SequentialRunner"]

RUNNERS: dict[str, type[Runner]] = {
    Mode.SEQUENTIAL.value: SequentialRunner,
    Mode.PARALLEL.value: ParallelRunner,
    Mode.PIPELINE.value: PipelineRunner,
    Mode.CONDITIONAL.value: ConditionalRunner,
}
