"""Trigger rules: whether a task runs given how its predecessors ended (its own rule, or its
group's for a group's entry task), and the skip reason a switch's unchosen case repeats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..result import TaskRecord, TaskStatus
from .record import COMPLETED, SKIPPED, UPSTREAM_FAILED

__all__ = ["AFTER_FAILURE", "Inherited", "verdict"]


#: The rules meant for failures (cleanup, notification): they run after a fail-fast stop.
AFTER_FAILURE = frozenset({"all_done", "one_failed"})


class Inherited(str):
    """A skip reason that the tasks skipped downstream of it repeat (a switch's choice)."""

    __slots__ = ()


def verdict(rule: str, preds: Sequence[str], status: Mapping[str, TaskStatus],
            records: Mapping[str, TaskRecord]) -> tuple[TaskStatus, str] | None:
    """Apply trigger ``rule`` to the predecessors' statuses: None means run, else the status
    the task ends with and why."""
    ok = [p for p in preds if status[p] is COMPLETED]
    skipped = [p for p in preds if status[p] is SKIPPED]
    bad = [p for p in preds if status[p] is not COMPLETED and status[p] is not SKIPPED]
    if rule == "all_done":
        return None
    if rule == "none_failed":
        return None if not bad else (UPSTREAM_FAILED, _why(bad, status))
    if rule == "one_success":
        if ok:
            return None
        return (UPSTREAM_FAILED, _why(bad, status)) if bad else (
            SKIPPED, f"no upstream task succeeded (skipped: {', '.join(skipped)})")
    if rule == "one_failed":
        return None if bad else (SKIPPED, "no upstream task failed")
    if rule == "none_failed_min_one_success":  # the join after a switch or branch
        if bad:
            return UPSTREAM_FAILED, _why(bad, status)
        return None if ok else (
            SKIPPED, f"no upstream task succeeded (skipped: {', '.join(skipped)})")
    if bad:  # all_success
        return UPSTREAM_FAILED, _why(bad, status)
    why = records[skipped[0]].reason
    # A switch's skip reads the same on every task of the case it did not choose.
    return SKIPPED, why if isinstance(why, Inherited) else (
        f"upstream task {skipped[0]!r} was skipped")


def _why(bad: list[str], status: Mapping[str, TaskStatus]) -> str:
    return f"upstream task {bad[0]!r} {status[bad[0]].value.replace('_', ' ')}"
