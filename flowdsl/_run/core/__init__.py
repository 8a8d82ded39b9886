"""The one task-execution core every runner calls, and the one scheduling loop.

- loop.py: :func:`drive`, the ready-heap loop every kind of node goes through (a runner's
  tasks, a retried group's members, a mapped task's children).
- engine.py: :class:`Core`, whose ``run_task(task_id, item)`` is the only code that knows
  about trigger rules, conditions, inputs, resources, executors, timeouts, retries, output
  mapping, events and rollback; it dispatches to
- fanout.py (a mapped task's children), subflows.py (a mapped sub-flow's elements, each
  its own chain) and groups.py (a retried group's attempts), which call the public steps of
- steps.py: :class:`Steps`, the core's state and the steps of one task's life (pools, cache,
  attempts, recording, inputs, guards, rollback), with
- trigger.py (trigger rules), inputs.py (argument resolution), record.py (:class:`Item`,
  :func:`fold`, event tables), rollback.py (one task's rollback) and units.py (groups'
  conditions, timeouts and trigger rules) below it.

Imports go one way: loop, record, trigger, inputs, rollback, units < steps < fanout, groups
< subflows < engine. The runners import ``Core`` and ``drive`` from here.
"""

from __future__ import annotations

from .engine import Core
from .loop import drive
from .record import MAX_KEPT_ATTEMPTS, Item, fold
from .steps import Steps

__all__ = ["MAX_KEPT_ATTEMPTS", "Core", "Item", "Steps", "drive", "fold"]
