"""A retried group's attempts: the group-retry rule of units.py's docstring at run time.

The first of a retried group's members that the runner hands to the core drives the whole
group (every input it takes from outside is ready then); each attempt is the one scheduling
loop (loop.py) over the members still to run, in the runner's order (``core.ranked``) with
the runner's concurrency (``core.child_limit``). The other members' turns wait for it and
find their tasks final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ..events import TASK_RESET
from ..result import TaskStatus
from .loop import drive, inside
from .record import Item
from .steps import Steps

__all__ = ["group_turn"]


_AGAIN = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED,
                    TaskStatus.UPSTREAM_FAILED})


async def group_turn(core: Steps, tid: str, item: Item) -> TaskStatus:
    """The runner's turn for member ``tid`` of a retried group: the first turn drives the
    group, the others wait for it; then the member is final (or the run stopped)."""
    units = core.units
    assert units is not None
    key = ("run", units.retried[tid])
    done = item.units.get(key)
    if done is None:
        done = item.units[key] = anyio.Event()
        try:
            await _run_group(core, units.retried[tid], item)
        finally:
            done.set()
    else:
        await done.wait()
    return item.status.get(tid, TaskStatus.PENDING)


async def _run_group(core: Steps, n: int, item: Item) -> None:
    """Run group ``n``'s members, then its failed part again while retries are left (the
    group-retry rule in units.py's docstring)."""
    units = core.units
    assert units is not None
    group = units.groups[n]
    unit = group.unit
    members = set(group.members)
    todo = [t for t in core.plan.order if t in members]  # topological
    tries = unit.retries + 1
    for attempt in range(1, tries + 1):
        last = attempt == tries
        if not last:  # failures are held back: a retry may still mend them
            for t in todo:
                core.held[(t, item.index)] = []
        try:
            await _run_members(core, todo, item)
        except BaseException:  # the run stopped: the failures held so far stand
            if not last:
                core.release(_unhold(core, todo, item))
            raise
        held = _unhold(core, todo, item) if not last else []
        again = _failed_part(core, todo, item)
        if not again or last or core.stopped:
            core.release(held)  # these failures stand: the run hears of them now
            return
        delay = unit.backoff.delay(attempt, core.rng) if unit.backoff is not None else 0.0
        if delay > 0:
            try:
                await core.sleep(delay)
            except BaseException:
                why = f"the run stopped while it waited to retry with group {unit.name!r}"
                _give_up(core, again, item, why)
                raise
        _reset(core, again, item)
        # S30: the clocks of this group and of the groups inside it start over, and only
        # theirs. (Every group's clock was reset here: a member of a timed group beside this
        # one that started after the retry got a new, later deadline, and ran past it.)
        for k in range(len(units.groups)):
            if ("deadline", k) in item.units and members.issuperset(units.groups[k].members):
                del item.units[("deadline", k)]
        todo = again


def _unhold(core: Steps, todo: Sequence[str], item: Item) -> list[tuple[str, Any, BaseException]]:
    """Take the failures held back for ``todo``'s attempt (a child's under its mapped task's
    id; each error names its own task)."""
    return [(getattr(e, "task_id", None) or t, item, e) for t in todo
            for e in core.held.pop((t, item.index), [])]


def _reset(core: Steps, again: Sequence[str], item: Item) -> None:
    """Make ``again`` (the failed part) ready to run: statuses and outputs go, records are
    rewound (their attempts stay)."""
    redo = set(again)
    for t in again:
        kids = core.children.get(t)
        if kids is not None:
            # Its input is the same unless a member before it runs again: then the children
            # that completed are kept, and only the others run again.
            same = not any(p in redo for p in core.preds[t])
            keep = frozenset(i for i, c in enumerate(kids)
                             if same and item.status.get(c) is TaskStatus.COMPLETED)
            for i, c in enumerate(kids):
                if i not in keep:
                    _rewind(core, item, c)
            item.units[("redo", t)] = keep
        _rewind(core, item, t)


def _rewind(core: Steps, item: Item, tid: str) -> None:
    if core.events is not None and tid in item.status:  # final -> pending again
        core.events.put(TASK_RESET, tid, item.index if item.index >= 0 else None)
    item.status.pop(tid, None)
    item.outputs.pop(tid, None)
    rec = item.records.get(tid)
    if rec is not None:
        rec.status = TaskStatus.PENDING
        rec.error = rec.reason = rec.ended_at = None


def _give_up(core: Steps, again: Sequence[str], item: Item, why: str) -> None:
    """The run stopped while the group waited to retry: its failed part (and the failed
    children of its mapped members) will not run again and ends cancelled, the failures
    it was waiting to mend kept on the attempts of each record."""
    for t in again:
        for c in core.children.get(t, ()):
            if item.status.get(c) in _AGAIN:
                _cancel(core, item, c, why)
        _cancel(core, item, t, why)


def _cancel(core: Steps, item: Item, tid: str, why: str) -> None:
    rec = item.records.get(tid)
    if rec is not None:
        rec.error = None
    core.finish(tid, item, rec, TaskStatus.CANCELLED, reason=why)


def _failed_part(core: Steps, todo: Sequence[str], item: Item) -> list[str]:
    """The members to run again: those that failed, timed out or were cancelled, and every
    member downstream of them (in topological order)."""
    again: set[str] = set()
    for t in todo:
        if item.status.get(t) in _AGAIN or any(p in again for p in core.preds[t]):
            again.add(t)
    return [t for t in todo if t in again]


async def _run_members(core: Steps, todo: Sequence[str], item: Item) -> None:
    """Run ``todo`` (members, topological) through the one scheduling loop: each once its
    dependencies inside the group are done, at most ``core.child_limit`` at once, ready
    members in the runner's order (``core.ranked``)."""
    rank = {t: r for r, t in enumerate(core.ranked)}
    order = sorted(todo, key=rank.__getitem__)
    succs, waiting = inside(order, core.preds)
    run_task = core.run_task
    # Only a stop that comes after the attempt began halts it. One that begins after the stop
    # is a mapped sub-flow's element run as cleanup (all_done, one_failed): it runs to its
    # end, as the cleanup task's own steps do (the stop cancels it anyway if it comes later).
    stop: Callable[[], bool] = (lambda: False) if core.stopped else (lambda: core.stopped)
    await drive(order, lambda t: run_task(t, item, True), workers=core.child_limit,
                stop=stop, succs=succs, waiting=waiting, kind="group")
