"""Mapped tasks (``tool.map(values)``): the core's fan-out at run time, without re-planning.

The planner keeps a mapped task as one node, and the runner gives it one slot like any task.
When the core runs it, the mapped values are resolved here and the task expands into one child
per element (``fetch[0]``, ``fetch[1]``, ...). The children run under the mapped task's slot
on a few workers (at most ``max_parallel``, and the mode's concurrency: one in sequential mode),
each child through the core's one path for pools, executor, timeout, retries and rollback, with
its own record. The children are fed by the one scheduling loop (loop.py's ``drive`` over their
indices, no edges, the map's width as its workers): no task is spawned per child, so a wide map
costs about what the same tasks written statically cost.

A failed child stops its siblings (they end ``cancelled``), unless the run continues on
errors; the mapped task fails once every sibling is final. Its output is the list of the
children's outputs in input order.

While history stores outputs, each child's record carries a hash of its input, stored with
its output; a resumed run reuses a finished child whose index and input hash match, and
runs only the rest.

In a retried group (see groups.py), the mapped task's next attempt runs only the children that
did not complete (the group says which to keep), on their records; in a group with a timeout,
its children cut off, and those that could not start, end ``timed_out`` with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import anyio

from ..._base import secrets
from ..._base.errors import TaskFailed, TaskInputError
from ..._graph.task import Task
from ..events import TASK_READY
from ..executors import Remote
from ..result import TaskRecord, TaskStatus
from .loop import drive
from .record import CANCELLED, COMPLETED, RUNNING, TIMED_OUT, Item
from .steps import Steps
from .units import group_timeout

__all__ = ["input_key", "run_map"]



def columns(tid: str, task: Task[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> list[list[Any]]:
    """The resolved mapped arguments, one list per mapped parameter, checked: each is a
    list-like value, all have the same length, and there are no more than the limit."""
    fan = task.fan
    assert fan is not None
    cols: list[list[Any]] = []
    for j, name in enumerate(fan.params):
        value = args[0] if j == 0 and fan.positional else kwargs[name]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            msg = (f"mapped task {tid!r} needs a list for its parameter {name!r}, got "
                   f"{type(value).__name__} {value!r}"[:300] + fan.not_a_list(name))
            raise TaskInputError(msg)
        cols.append(value if isinstance(value, list) else list(value))
    n = len(cols[0])
    for name, col in zip(fan.params[1:], cols[1:]):
        if len(col) != n:
            msg = (f"mapped task {tid!r}: {fan.label(name)} has {len(col)} elements but "
                   f"{fan.params[0]!r} has {n}; mapped arguments are zipped and must have "
                   "the same length")
            raise TaskInputError(msg)
    if n > fan.limit:
        msg = (f"mapped task {tid!r} would fan out to {n} children, over its limit of "
               f"{fan.limit}; raise it with .with_options(max_children=N) if that many is "
               "intended")
        raise TaskInputError(msg)
    return cols


async def run_map(core: Steps, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
    """Run mapped task ``tid``: its children, then its own final status (see module doc)."""
    fan = task.fan
    assert fan is not None
    try:
        cols = columns(tid, task, args, kwargs)
    except TaskInputError as exc:
        return core.fail(tid, item, rec, exc, 0)
    n = len(cols[0])
    # A retried group's next attempt: the children it keeps (completed), or None.
    redo: frozenset[int] | None = item.units.pop(("redo", tid), None) if item.units else None
    rec.status = RUNNING
    if rec.started_at is None:  # else a group's retry: the record began with its first
        rec.started_at = core.now()
    if core.observers or core.log or core.events is not None:
        core.started(tid, rec, mapped=True)
    ids = [f"{tid}[{i}]" for i in range(n)]
    known = core.children.get(tid)
    if known is None or len(known) < n:  # over pipeline items: the widest fan-out
        core.children[tid] = ids
    first, rest = cols[0], list(zip(fan.params[1:], cols[1:]))
    failed: list[int] = []
    nxt = 0
    name = task.tool.name
    keyed = core.child_keys
    reuse = core.reused.get(tid) if core.reused else None  # a resume's finished children

    def call_child(i: int) -> Awaitable[TaskStatus] | None:
        # The call of child ``i``, for the loop to await (None: nothing to run).
        nonlocal nxt
        nxt = i + 1  # the loop takes the children in index order
        if redo is not None and i in redo:
            return None  # completed in an earlier attempt of its group: kept
        if fan.positional:
            a, k = (first[i], *args[1:]), kwargs
            if rest:
                k = {**kwargs, **{p: c[i] for p, c in rest}}
        else:
            a, k = args, {**kwargs, fan.params[0]: first[i]}
            for p, c in rest:
                k[p] = c[i]
        cid = ids[i]
        if core.events is not None:
            core.events.put(TASK_READY, cid, item.index if item.index >= 0 else None)
        child = item.records.get(cid) if redo is not None else None
        if child is None:  # (a group's retry goes on with the child's record)
            child = item.records[cid] = TaskRecord(cid, name,
                                                       resources=task.spec.resources,
                                                       parent=tid)
        if keyed:
            key = child.input_key = input_key(a, k)
            hit = reuse.get(i) if reuse is not None else None
            if hit is not None and key is not None and hit[0] == key:
                item.outputs[cid] = hit[1]  # same index, same input: not run again
                core.finish(cid, item, child, COMPLETED, reason=hit[2], output=hit[1])
                return None
        return core.pooled(cid, task, item, child, a, k)

    def ended(i: int, status: TaskStatus) -> None:
        if status.failed:
            failed.append(i)
            if not core.continue_on_error:
                core.halted[tid] = f"a sibling, {ids[i]!r}, failed"
                scope.cancel()

    if secrets.in_use():  # elements drawn from a generator may bring Secrets
        core.register_secrets(cols)
    if core.cache is not None and core.ids[task] in core.cache.policies:
        # The children's cache entries in one query, before any of them runs.
        def child_args(i: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if fan.positional:
                return (first[i], *args[1:]), {**kwargs, **{p: c[i] for p, c in rest}}
            return args, {**kwargs, fan.params[0]: first[i], **{p: c[i] for p, c in rest}}

        await core.cache.prefetch_children(core, ids, task, child_args)

    width = min(n, fan.max_parallel or n, core.child_limit)
    try:
        with anyio.CancelScope() as scope:
            # The one loop, over the children's indices (no edges), ``width`` workers; a
            # failure that stops the siblings cancels the scope, and the loop with it.
            await drive(range(n), call_child, workers=width, then=ended,
                        stop=lambda: scope.cancel_called, kind="map")
    except BaseException:  # the run stopped: the children already recorded themselves
        # Cut off by its group's timeout, it ends timed out, and so do the children that
        # could not start; else it is cancelled.
        core.interrupted(tid, item, rec, "the run stopped", 0)
        cut = core.cut_at(item, rec) if rec.status is TIMED_OUT else None
        if cut is not None:
            for i in range(nxt, n):
                if redo is None or i not in redo:
                    child = _child(item, ids[i], name, tid, redo)
                    late = group_timeout(ids[i], cut[1], cut[2], False, 0)
                    core.fail(ids[i], item, child, late, 0)
        raise
    if failed:
        return _fail(core, tid, task, item, rec, ids, sorted(failed), nxt, redo)
    return await complete(core, tid, task, item, rec, [item.outputs[c] for c in ids])


async def complete(core: Steps, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                   outs: list[Any]) -> TaskStatus:
    """Finish mapped node ``tid`` (a task or a sub-flow) with its children's outputs ``outs``
    in input order: fetched from the workers when remote, mapped into the context."""
    if core.remote and any(isinstance(o, Remote) for o in outs):
        outs = await _fetch(outs)
    try:
        if task.to_context_map is not None:
            core.map_output(task, outs)
    except Exception as exc:
        return core.fail(tid, item, rec, exc, 0)
    item.outputs[tid] = outs
    return core.finish(tid, item, rec, COMPLETED, output=outs)


def _child(item: Item, cid: str, name: str, tid: str, redo: frozenset[int] | None
           ) -> TaskRecord:
    """The record of a child that never started (a group's retry keeps the one it had)."""
    child = item.records.get(cid) if redo is not None else None
    if child is None:
        child = item.records[cid] = TaskRecord(cid, name, parent=tid)
    return child


def _fail(core: Steps, tid: str, task: Task[Any], item: Item, rec: TaskRecord, ids: list[str],
          failed: list[int], started: int, redo: frozenset[int] | None) -> TaskStatus:
    """Fail mapped task ``tid`` once its children are final; children that never started
    (the siblings of a failure) are recorded as cancelled."""
    why = f"not started: a sibling, {ids[failed[0]]!r}, failed"
    for i in range(started, len(ids)):
        if redo is None or i not in redo:
            child = _child(item, ids[i], task.tool.name, tid, redo)
            core.finish(ids[i], item, child, CANCELLED, reason=why)
    return fail_mapped(core, tid, item, rec, f"mapped task {tid!r}",
                       f"{len(failed)} of {len(ids)} children", ids[failed[0]])


def fail_mapped(core: Steps, tid: str, item: Item, rec: TaskRecord, what: str, count: str,
                culprit: str) -> TaskStatus:
    """Fail mapped node ``tid`` (a task or a sub-flow) for its failed children, naming the
    first (``culprit``) with its error, which becomes the failure's cause."""
    bad = item.records.get(culprit)
    err = bad.error if bad is not None else None
    detail = (f"{err.type}: {err.message}" if err is not None
              else bad.status.value if bad is not None else "failed")
    msg = f"{what} failed: {count} failed (first: {culprit!r}, {detail})"
    exc = TaskFailed(msg, task_id=tid, attempts=0)
    if err is not None and err.exception is not None:
        exc.__cause__ = err.exception
    return core.fail(tid, item, rec, exc, 0)


_KEYS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def input_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """A child's input hash: its arguments as canonical JSON, hashed; None when they are not
    plain JSON data (such a child always runs again on resume)."""
    try:
        text = _KEYS.encode([args, kwargs])
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def _fetch(outs: list[Any]) -> list[Any]:
    """Bring the children's remote outputs here in one round trip where the handle can."""
    handles = [o for o in outs if isinstance(o, Remote)]
    many = getattr(type(handles[0]), "fetch_all", None)
    values = await many(handles) if many is not None else [await h.fetch() for h in handles]
    it = iter(values)
    return [next(it) if isinstance(o, Remote) else o for o in outs]
