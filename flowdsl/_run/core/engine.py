"""The one task-execution core every runner calls.

``Core.run_task(task_id, item)`` is the only code that knows about trigger rules, conditions,
argument resolution, resources, executors, timeouts, retries with backoff, output mapping,
events and rollback (the steps live in steps.py, trigger.py, inputs.py, record.py and
rollback.py; the map, sub-flow and group code in fanout.py, subflows.py and groups.py).
Runners only decide *when* to call it and how many calls overlap, through the one scheduling
loop (loop.py).
"""

from __future__ import annotations

from typing import Any

import anyio

from ..._base.errors import TaskInputError
from ..._graph.task import Task
from ..events import TASK_READY
from ..result import TaskRecord, TaskStatus
from .fanout import run_map
from .groups import group_turn
from .record import COMPLETED, SKIPPED, Item
from .steps import Steps
from .subflows import run_subflow
from .trigger import AFTER_FAILURE, Inherited
from .units import group_timeout

__all__ = ["Core"]



class Core(Steps):
    """Runs one task at a time on behalf of a runner; see the module docstring."""

    # -- the one path every task takes -------------------------------------------------
    async def run_task(self, tid: str, item: Item, driven: bool = False) -> TaskStatus:
        """Run task ``tid`` for ``item`` once all its predecessors are final; returns its
        final status. Cancellation propagates (the task is recorded as cancelled). A member
        of a retried group runs when its group's driver says so (``driven``)."""
        if tid in item.status:  # reused from an earlier run (resume), or run by its group
            return item.status[tid]
        if self._retried and not driven and tid in self._retried:
            return await group_turn(self, tid, item)
        if self.events is not None:
            self.events.put(TASK_READY, tid, item.index if item.index >= 0 else None)
        task = self.tasks[tid]
        preds = self.preds[tid]
        if preds:
            status = item.status
            for p in preds:
                if status[p] is not COMPLETED:
                    verdict = self._verdict(task, preds, item)
                    if verdict is not None:
                        return self.finish(tid, item, item.records.get(tid) if driven else None,
                                           verdict[0], reason=verdict[1])
                    break
            else:  # every predecessor completed: only one_failed refuses to run then
                if task.trigger == "one_failed" or (
                        self.units is not None and self._rule(task) == "one_failed"):
                    return self.finish(tid, item, item.records.get(tid) if driven else None,
                                       SKIPPED, reason="no upstream task failed")
        # A retried group's next attempt goes on with the member's record (groups.py reset
        # it): the calls of every attempt stay on it.
        rec = item.records.get(tid) if driven else None
        if rec is None:
            rec = item.records[tid] = TaskRecord(tid, task.tool.name,
                                                 resources=task.spec.resources)
            if item.index >= 0:  # a pipeline item's record names its item
                rec.item = item.index
        units = self.units
        try:
            if units is not None and tid in units.gated:
                why = await units.gate(tid, item.units, self._ctx_view,
                                       lambda guards, owner: self._guards(guards, owner, item))
                if why is not None:  # the members downstream repeat the group's reason
                    return self.finish(tid, item, rec, SKIPPED, reason=Inherited(why))
            if task.condition is not None and not self._condition(task):
                return self.finish(tid, item, rec, SKIPPED, reason="its condition was false")
            if task.guards:
                why = await self._guards(task.guards, f"task {tid!r}", item)
                if why is not None:
                    return self.finish(tid, item, rec, SKIPPED, reason=why)
            if task.dynamic or task.stage_param is not None:
                if self.remote:
                    await self._localize_inputs(task, item)
                args, kwargs = self.inputs.of(task, item)
            else:
                args, kwargs = task.args, task.kwargs
        except TaskInputError as exc:
            return self.fail(tid, item, rec, exc, 0)
        if units is not None and tid in units.timed:
            return await self._bounded(tid, task, item, rec, args, kwargs)
        if task.fan is not None:
            if task.fan.sub is not None:
                return await run_subflow(self, tid, task, item, rec, args, kwargs)
            return await run_map(self, tid, task, item, rec, args, kwargs)
        return await self.pooled(tid, task, item, rec, args, kwargs)

    async def _bounded(self, tid: str, task: Task[Any], item: Item, rec: TaskRecord,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Run a member of a group with a timeout under the group's deadline."""
        at, name, timeout = self.units.deadline(tid, item.units)  # type: ignore[union-attr]
        if anyio.current_time() >= at:
            return self.fail(tid, item, rec, group_timeout(tid, name, timeout, False, 0), 0)
        self._cut[id(rec)] = (at, name, timeout)
        try:
            with anyio.CancelScope(deadline=at):
                if task.fan is not None:
                    if task.fan.sub is not None:
                        return await run_subflow(self, tid, task, item, rec, args, kwargs)
                    return await run_map(self, tid, task, item, rec, args, kwargs)
                return await self.pooled(tid, task, item, rec, args, kwargs)
        finally:
            del self._cut[id(rec)]
        return item.status[tid]  # cut off: interrupted recorded it timed out

    async def run_cleanup(self, item: Item) -> None:
        """After a fail-fast stop, run the tasks whose trigger rule is meant for failures
        (``all_done``, ``one_failed``: cleanup, notification) once all their upstream tasks
        are final. Everything else that had not started stays pending: a cleanup task in a
        retried group runs alone (``driven``), since its group's driver would also run the
        members after it, which must not start once the run stopped."""
        for tid in self.plan.order:
            task = self.tasks[tid]
            if (tid not in item.status and task.trigger in AFTER_FAILURE
                    and all(p in item.status for p in self.preds[tid])):
                await self.run_task(tid, item, True)
