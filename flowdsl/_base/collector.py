"""The cyclic garbage collector around the engine's own bulk work.

Python's collector rescans the objects that survive allocation, and a full collection walks
every tracked object of the process. Planning and running a large flow allocate many
long-lived objects (the plan, then a record and an attempt per task) and free few of them,
so the collector would walk the same plan and records again and again: half the time of a
100,000-task plan, and 10-25% of a 100,000-task run of no-op tools.

- :func:`paused` stops the collector while the planner builds a plan (it makes no garbage
  cycles; the collector resumes, and catches up, when it is done).
- :func:`frozen` moves what exists when a large run starts (the flow, the plan, the core and
  whatever the program holds) out of the collector's sight until the last large run of the
  process ends (``gc.freeze``; ``gc.unfreeze`` hands them back to the oldest generation).
  Objects made during the run are collected as usual; a cycle that was garbage before the
  run is collected after it. A program that froze objects itself (``gc.get_freeze_count()``
  above 0 when no run holds the freeze, as before a ``fork``) is left as it is.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["FREEZE_MIN", "frozen", "paused"]

#: Runs of fewer tasks leave the collector alone: they allocate too little for its scans to
#: matter, and each freeze would promote the program's young objects to the oldest
#: generation.
FREEZE_MIN = 1000

_lock = threading.Lock()
_holders = 0  # large runs in progress in this process (threads, or runs on one loop)
_ours = False  # whether the freeze they hold is theirs to undo


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block (and back on after it if it was on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def frozen(tasks: int) -> Iterator[None]:
    """What exists now kept out of the collector's scans for the block, when ``tasks`` is at
    least :data:`FREEZE_MIN` (see the module's docstring)."""
    global _holders, _ours
    if tasks < FREEZE_MIN:
        yield
        return
    with _lock:
        if _holders == 0:
            _ours = gc.get_freeze_count() == 0
        if _ours:
            gc.freeze()  # a later run also freezes what the ones before it made since
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _ours:
                gc.unfreeze()
                _ours = False
