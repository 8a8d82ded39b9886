"""The one task-execution core every runner calls, and the one scheduling loop.

- :mod:`.loop`: :func:`drive`, the ready-heap loop every kind of node goes through (a
  runner's tasks, a retried group's members, a mapped task's children).
- :mod:`.engine`: :class:`Core`, whose ``run_task(task_id, item)`` is the only code that
  knows about trigger rules, conditions, inputs, resources, executors, timeouts, retries,
  output mapping, events and rollback.
"""

from __future__ import annotations

from .engine import MAX_KEPT_ATTEMPTS, Core, Item, fold
from .loop import drive

__all__ = ["MAX_KEPT_ATTEMPTS", "Core", "Item", "drive", "fold"]
