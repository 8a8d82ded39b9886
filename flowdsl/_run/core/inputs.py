"""How a task's arguments are resolved for one item: references to other tasks' outputs and
projections of them (``task["k"]``), ``ctx(key)`` values, ``upstream()`` statuses, a flow
passed as a value, and a pipeline stage's input from the stage before it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._base.errors import TaskInputError
from ..._graph.task import _MISSING, CtxRef, Flow, Fragment, Ref, Task, UpstreamRef, materialize
from ..._graph.walk import KEEP, transform
from ..result import TaskStatus
from .record import Item

__all__ = ["Inputs"]

_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})
PENDING = TaskStatus.PENDING


class Inputs:
    """The argument resolver of one run (the core holds one as ``core.inputs``)."""

    __slots__ = ("context", "fed", "ids", "preds", "stage_from")

    def __init__(self, tasks: Mapping[str, Task[Any]], ids: Mapping[Task[Any], str],
                 preds: Mapping[str, tuple[str, ...]], context: dict[str, Any]) -> None:
        self.ids = ids
        self.preds = preds
        self.context = context
        self.fed = True  # whether first pipeline stages get the run's input (check_start)
        # A stage receives the outputs of its composition predecessors, not of the tasks
        # its arguments already refer to.
        self.stage_from = {
            i: tuple(p for p in preds[i] if p not in {ids[u] for u in t.upstream})
            for i, t in tasks.items() if t.stage_param is not None}

    def of(self, task: Task[Any], item: Item) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Task ``task``'s arguments for ``item``: references to other tasks' outputs (and
        projections), ``ctx()`` values, a stage's input from the stage before it."""
        args, kwargs = task.args, task.kwargs
        if task.dynamic:
            resolve = self._resolve
            if args:
                args = tuple([resolve(a, task, item) for a in args])
            kwargs = {k: resolve(v, task, item) for k, v in kwargs.items()}
        if task.stage_param is not None:
            src = self.stage_from[self.ids[task]]
            if src or self.fed:  # a first stage of a run with no input keeps its default
                out = item.outputs
                value = (item.input if not src else out.get(src[0]) if len(src) == 1
                         else [out.get(p) for p in src])
                kwargs = {**kwargs, task.stage_param: value}
        return args, kwargs

    def _resolve(self, value: Any, task: Task[Any], item: Item) -> Any:
        cls = value.__class__
        ids = self.ids
        if cls is Task:
            return item.outputs.get(ids[value])
        if cls in _ATOMS:
            return value

        def swap(v: Any) -> Any:
            if isinstance(v, Task):
                return item.outputs.get(ids[v])
            if isinstance(v, Ref):
                return self._project(v, task, item)
            if isinstance(v, CtxRef):
                return self._ctx_value(v, task)
            if isinstance(v, UpstreamRef):  # a join reading how its upstream tasks ended
                return {p: item.status.get(p, PENDING) for p in self.preds[self.ids[task]]}
            if isinstance(v, (Flow, Fragment)):  # a flow passed as a value: its output
                g = materialize(v)  # built once (cached) for a fragment
                last = [ids[g.tasks[s]] for s in g.sinks]
                if len(last) == 1:
                    return item.outputs.get(last[0])
                return {s: item.outputs.get(s) for s in last}
            return KEEP

        return transform(value, swap)

    def _project(self, ref: Ref, task: Task[Any], item: Item) -> Any:
        src = self.ids[ref.task]
        out: Any = item.outputs.get(src)
        for key in ref.path:
            try:
                out = out[key]
            except (KeyError, IndexError, TypeError) as exc:
                where = src + "".join(f"[{k!r}]" for k in ref.path)
                msg = (f"task {self.ids[task]!r} takes {where}, but the output of "
                       f"{src!r} has no {key!r} ({type(exc).__name__})")
                raise TaskInputError(msg) from exc
        return out

    def _ctx_value(self, ref: CtxRef, task: Task[Any]) -> Any:
        if ref.key in self.context:
            return self.context[ref.key]
        if ref.default is not _MISSING:
            return ref.default
        keys = ", ".join(sorted(map(str, self.context))) or "none"
        msg = (f"task {self.ids[task]!r} reads ctx({ref.key!r}), which the run context does "
               f"not have (keys: {keys})")
        raise TaskInputError(msg)
