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

#: Each runner, registered by the Mode it declares (the mode names live in Mode only), in
#: Mode's order; tests/test_option_table.py checks every Mode has one.
_BY_MODE: dict[Mode, type[Runner]] = {
    Mode(r.mode): r  # type: ignore[misc]
    for r in (SequentialRunner, ParallelRunner, PipelineRunner, ConditionalRunner)}
RUNNERS: dict[Mode, type[Runner]] = {m: _BY_MODE[m] for m in Mode if m in _BY_MODE}
