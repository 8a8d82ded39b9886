"""What the core records: an :class:`Item` (one pass of data through the flow, with each
task's status, output and record), the event and log-level tables, and :func:`fold`, which
merges a pipeline item's records into one summary per task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..._base.log import MAX_TASK_LOGS
from ..result import MAX_KEPT_ITEMS, TaskRecord, TaskStatus

__all__ = ["CACHED", "CANCELLED", "COMPLETED", "EVENTS", "FAILED", "LEVELS", "MAX_KEPT_ATTEMPTS",
           "PENDING", "RUNNING", "SKIPPED", "TIMED_OUT", "UPSTREAM_FAILED", "Item", "descendants",
           "fold", "item_index"]

# The statuses as module globals, for the core's modules to import: a global look-up is
# cheaper than an enum attribute on the per-task path.

COMPLETED = TaskStatus.COMPLETED
SKIPPED = TaskStatus.SKIPPED
UPSTREAM_FAILED = TaskStatus.UPSTREAM_FAILED
RUNNING = TaskStatus.RUNNING
FAILED = TaskStatus.FAILED
TIMED_OUT = TaskStatus.TIMED_OUT
CANCELLED = TaskStatus.CANCELLED
CACHED = TaskStatus.CACHED
PENDING = TaskStatus.PENDING


class Item:
    """One pass of data through the flow: statuses, outputs and records per task."""

    __slots__ = ("index", "input", "left", "outputs", "records", "status", "units")

    def __init__(self, index: int, input: Any, records: dict[str, TaskRecord]) -> None:
        self.index = index
        self.input = input
        self.outputs: dict[str, Any] = {}
        self.status: dict[str, TaskStatus] = {}
        self.records = records
        self.units: dict[Any, Any] = {}  # per group: its condition's verdict, its deadline
        self.left = 0  # pipelines: tasks still to finish this item (see Steps.release_item)


LEVELS = {FAILED: "error", TIMED_OUT: "error", CANCELLED: "warning"}
_SEVERITY = {s: n for n, s in enumerate([
    FAILED, TIMED_OUT, CANCELLED, UPSTREAM_FAILED, TaskStatus.ROLLED_BACK, RUNNING, PENDING,
    SKIPPED, COMPLETED, CACHED])}
#: A pipeline task's summary keeps this many attempts (over all items); more would grow
#: with the item count.
MAX_KEPT_ATTEMPTS = 1000


def fold(merged: dict[str, TaskRecord], tid: str, rec: TaskRecord) -> None:
    """Fold one item's record of task ``tid`` into its summary: the worst status, the
    attempts (up to MAX_KEPT_ATTEMPTS), the first error and reason, the earliest start and
    the latest end; the record itself joins the summary's ``items`` (one per stage x item,
    so timelines and statistics see each item's own call)."""
    m = merged.get(tid)
    if m is None:
        m = merged[tid] = TaskRecord(tid, rec.tool, status=rec.status,
                                     resources=rec.resources, parent=rec.parent)
        if rec.item is not None:
            m.items, m.item_count = [], 0
    elif _SEVERITY[rec.status] < _SEVERITY[m.status]:
        m.status = rec.status
    room = MAX_KEPT_ATTEMPTS - len(m.attempts)
    if room > 0 and rec.attempts:
        m.attempts.extend(rec.attempts[:room])
    if rec.started_at is not None and (m.started_at is None or rec.started_at < m.started_at):
        m.started_at = rec.started_at
    if rec.ended_at is not None and (m.ended_at is None or rec.ended_at > m.ended_at):
        m.ended_at = rec.ended_at
    if m.items is not None and rec.item is not None:
        m.item_count = (m.item_count or 0) + 1
        if len(m.items) < MAX_KEPT_ITEMS or rec.status not in _DONE_WELL:
            m.items.append(rec)
    if m.error is None:
        m.error = rec.error
    if m.reason is None:
        m.reason = rec.reason
    if rec.logs:  # a tool's log lines, bounded as on one record
        if m.logs is None:
            m.logs = []
        room = MAX_TASK_LOGS - len(m.logs)
        if room > 0:
            m.logs.extend(rec.logs[:room])


_DONE_WELL = frozenset({TaskStatus.COMPLETED, TaskStatus.CACHED})


def item_index(rec: TaskRecord) -> int:
    """A per-item record's sort key: its item's index."""
    return rec.item or 0


# Each final status under an event of its own (task_upstream_failed is not task_skipped).
EVENTS = {s: f"task_{s.value}" for s in TaskStatus}


def descendants(children: Mapping[str, Sequence[str]], tid: str) -> Iterator[str]:
    """The children of mapped node ``tid``, each followed by its own (a mapped sub-flow's
    step may be mapped itself): depth-first, in input order, iteratively."""
    stack = list(reversed(children.get(tid, ())))
    while stack:
        c = stack.pop()
        yield c
        stack.extend(reversed(children.get(c, ())))
