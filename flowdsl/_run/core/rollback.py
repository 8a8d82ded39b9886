"""Compensation: running one completed task's rollback, bounded in time (the core's
``rollback`` calls it for every completed task, in reverse completion order)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["run_undo"]


async def run_undo(tid: str, undo: Callable[..., Any], output: Any,
                   timeout: float | None) -> None:
    """Call rollback ``undo`` on task ``tid``'s ``output`` (awaited when it is async),
    within ``timeout`` seconds when one is given; raises TimeoutError when it runs past."""
    if timeout is None:
        outcome = undo(output)
        if inspect.isawaitable(outcome):
            await outcome
        return
    with anyio.move_on_after(timeout) as scope:
        if inspect.iscoroutinefunction(undo):
            await undo(output)
        else:  # a sync rollback that blocks must not hold the run past the bound
            outcome = await anyio.to_thread.run_sync(undo, output, abandon_on_cancel=True)
            if inspect.isawaitable(outcome):
                await outcome
    if scope.cancelled_caught:
        msg = (f"the rollback of task {tid!r} ran past compensation_timeout={timeout:g}s "
               "and was abandoned")
        raise TimeoutError(msg)
