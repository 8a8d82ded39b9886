"""The reference design's faces, for code ported from the lesson: ``Workflow``,
``WorkflowTask``, ``ExecutionMode``, ``WorkflowEngine``, ``WorkflowOptimizer``,
``DependencyResolver`` and ``ResourceManager``.

This module is public: import the faces from ``flowdsl.compat``; they are also importable from
``flowdsl`` itself (``from flowdsl import WorkflowEngine``). Each is thin, with one
implementation underneath: a Workflow is written as a workflow document, loaded with
:func:`flowdsl.load_flow` (so it is validated as a whole before anything runs) and run with
:func:`flowdsl.arun`, and the engine translates the :class:`~flowdsl.RunResult` back into the
lesson's dict shape and per-task status fields; ``WorkflowOptimizer`` wraps
:func:`flowdsl.analyze` and :func:`flowdsl.optimize`, ``DependencyResolver`` the planner's
ordering and critical path, and ``ResourceManager`` the :class:`~flowdsl.Pools` that runs use.

The module sits above every layer, and loads the heavier ones (workflow documents, the run API,
history) only when a face that needs them is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ._base.errors import CycleError, FlowError, PlanValidationError
from ._graph.registry import ToolRegistry
from ._graph.task import Flow
from ._plan.planner import _longest_path, _order
from ._plan.policy import Mode
from ._run.resources import Pools
from ._run.result import RunResult, TaskStatus

__all__ = ["DependencyResolver", "ExecutionMode", "ResourceManager", "Workflow", "WorkflowEngine",
           "WorkflowOptimizer", "WorkflowTask"]


#: How a workflow runs: the lesson's name for :class:`flowdsl.Mode` (the same members).
ExecutionMode = Mode


@dataclass
class WorkflowTask:
    """One task of a :class:`Workflow`, with the lesson's field names and defaults.

    ``condition`` may be a callable of the context (as in the lesson), a declarative test
    (``{"ctx": "score", "op": ">=", "value": 0.5}``) or a registered predicate's name.
    ``status``, ``result``, ``error``, ``started_at`` and ``completed_at`` are filled in by
    :meth:`WorkflowEngine.execute_workflow`.
    """

    task_id: str
    tool_id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    timeout_seconds: float | None = 60.0
    retry_count: int = 0
    max_retries: int = 3
    condition: Callable[[Mapping[str, Any]], Any] | Mapping[str, Any] | str | None = None
    output_mapping: dict[str, str] | None = None
    status: TaskStatus = TaskStatus.PENDING
    result: Any = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    def to_dict(self, predicate_name: str | None = None) -> dict[str, Any]:
        """The task as a document entry (a callable condition is named ``predicate_name``)."""
        out: dict[str, Any] = {"id": self.task_id, "tool": self.tool_id,
                               "args": dict(self.parameters), "retries": self.max_retries}
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        if self.timeout_seconds is not None:
            out["timeout"] = self.timeout_seconds
        if self.condition is not None:
            out["when"] = predicate_name if callable(self.condition) else self.condition
        if self.output_mapping:
            out["to_context"] = dict(self.output_mapping)
        return out


@dataclass
class Workflow:
    """A workflow with the lesson's field names; :meth:`to_flow` makes it a Flow."""

    workflow_id: str
    name: str
    description: str
    tasks: list[WorkflowTask]
    execution_mode: ExecutionMode = ExecutionMode.SEQUENTIAL
    timeout_seconds: float | None = 300.0
    continue_on_error: bool = False
    rollback_on_failure: bool = False
    input_context: dict[str, Any] = field(default_factory=dict)
    output_context: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=datetime.now)
    started_at: datetime | None = None
    completed_at: datetime | None = None

    def _predicates(self) -> dict[str, Callable[..., Any]]:
        # Callable conditions cannot be data: each gets a private predicate name.
        return {f"{t.task_id}.condition": t.condition for t in self.tasks
                if callable(t.condition)}

    def to_dict(self) -> dict[str, Any]:
        """The workflow as a document for :func:`flowdsl.load_flow`."""
        return {"name": self.name, "description": self.description,
                "mode": ExecutionMode(self.execution_mode).value,
                "context": dict(self.input_context),
                "tasks": [t.to_dict(f"{t.task_id}.condition") for t in self.tasks]}

    def to_flow(self, registry: ToolRegistry | None = None) -> Flow[Any]:
        """Validate and load this workflow as a Flow (raises PlanValidationError)."""
        from ._data.documents import load_flow

        return load_flow(self.to_dict(), registry, predicates=self._predicates())


def _as_registry(tools: Any) -> ToolRegistry:
    if isinstance(tools, ToolRegistry):
        return tools
    inner = getattr(tools, "registry", None)  # the lesson passes a tool engine around one
    if isinstance(inner, ToolRegistry):
        return inner
    if isinstance(tools, (Mapping, Iterable)):
        return ToolRegistry(tools)
    msg = f"WorkflowEngine expects a ToolRegistry, a mapping or a list of tools, got {tools!r}"
    raise TypeError(msg)


class WorkflowEngine:
    """The lesson's engine over :func:`flowdsl.arun`; one implementation underneath.

    Args:
        tools: a :class:`~flowdsl.ToolRegistry`, a mapping of tool id -> tool or function, a
            list of tools, or an object with a ``registry`` attribute.
        history: passed to :func:`flowdsl.run` (``False``: record nothing).
    """

    def __init__(self, tools: Any, *, history: Any = None) -> None:
        self.registry = _as_registry(tools)
        self.history = history
        self.active_workflows: dict[str, Workflow] = {}
        self.execution_history: list[dict[str, Any]] = []

    async def execute_workflow(self, workflow: Workflow,
                               context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run ``workflow`` and return the lesson's dict.

        Returns:
            ``{"success": True, "context", "results", "task_results", "workflow_id"}``, or
            ``{"success": False, "error", "workflow_id"}`` (plus ``problems`` when the
            workflow did not validate, and ``results`` of the tasks that completed).
        """
        from ._run.api import arun

        workflow.started_at = datetime.now()
        workflow.input_context = {**workflow.input_context, **(context or {})}
        self.active_workflows[workflow.workflow_id] = workflow
        try:
            flow = workflow.to_flow(self.registry)
            result = await arun(flow, mode=ExecutionMode(workflow.execution_mode).value,
                                context=workflow.input_context,
                                continue_on_error=workflow.continue_on_error,
                                rollback_on_failure=workflow.rollback_on_failure,
                                timeout=workflow.timeout_seconds, history=self.history)
        except FlowError as exc:
            workflow.completed_at = datetime.now()
            self._record(workflow, False, str(exc))
            out: dict[str, Any] = {"success": False, "error": str(exc),
                                   "workflow_id": workflow.workflow_id}
            if isinstance(exc, PlanValidationError):
                out["problems"] = exc.problems
            return out
        finally:
            self.active_workflows.pop(workflow.workflow_id, None)
        return self._report(workflow, result)

    def _report(self, workflow: Workflow, result: RunResult[Any]) -> dict[str, Any]:
        workflow.completed_at = datetime.now()
        for t in workflow.tasks:
            rec = result.tasks.get(t.task_id)
            if rec is None:
                continue
            t.status = rec.status
            t.result = result.outputs.get(t.task_id)
            t.error = rec.error.message if rec.error else None
            t.retry_count = max(len(getattr(rec, "attempts", ()) or ()) - 1, 0)
            if rec.started_at is not None:
                t.started_at = result.started_at + timedelta(seconds=rec.started_at)
            if rec.ended_at is not None:
                t.completed_at = result.started_at + timedelta(seconds=rec.ended_at)
        outputs = dict(result.outputs)
        if not result.ok:
            error = str(result.error) if result.error is not None else result.status
            self._record(workflow, False, error)
            return {"success": False, "error": error, "workflow_id": workflow.workflow_id,
                    "results": outputs}
        workflow.output_context = dict(result.context)
        self._record(workflow, True)
        return {"success": True, "context": dict(result.context), "results": outputs,
                "task_results": outputs, "workflow_id": workflow.workflow_id}

    def _record(self, workflow: Workflow, success: bool, error: str | None = None) -> None:
        start, end = workflow.started_at, workflow.completed_at
        self.execution_history.append({
            "workflow_id": workflow.workflow_id, "workflow_name": workflow.name,
            "success": success, "error": error,
            "execution_time": (end - start).total_seconds() if start and end else None,
            "task_count": len(workflow.tasks),
            "completed_tasks": sum(t.status == TaskStatus.COMPLETED for t in workflow.tasks),
            "failed_tasks": sum(t.status.failed for t in workflow.tasks),
            "timestamp": datetime.now().isoformat()})


class WorkflowOptimizer:
    """The reference design's optimizer, as thin aliases of :func:`analyze` and
    :func:`optimize` over one history.

    Args:
        history: a :class:`~flowdsl.HistoryStore`, a path, ``None`` (the default store) or
            ``False`` (none).
        **options: passed to :func:`optimize` (``k``, ``floor``, ``ceiling``, ...).
    """

    def __init__(self, history: Any = None, **options: Any) -> None:
        self.history = history
        self.options = options
        self.optimization_history: list[dict[str, Any]] = []

    def analyze_workflow(self, flow: Any) -> dict[str, Any]:
        """:func:`analyze` as a dict with the reference design's keys."""
        from ._record.optimizer import analyze

        return analyze(flow, self.history).to_dict()

    def optimize_workflow(self, flow: Any) -> Any:
        """:func:`optimize`'s tuned copy; the report is appended to
        ``optimization_history``."""
        from ._record.optimizer import optimize

        result = optimize(flow, self.history, **self.options)
        self.optimization_history.append({
            "flow": result.analysis.name, "mode": result.mode,
            "changes": [str(c) for c in result.changes], "makespans": result.makespans})
        return result.flow


class DependencyResolver:
    """The reference design's resolver, for graphs built by hand from ids; one implementation
    with :func:`plan` underneath."""

    def __init__(self) -> None:
        self._preds: dict[str, dict[str, None]] = {}

    def add_task(self, task_id: str) -> None:
        self._preds.setdefault(task_id, {})

    def add_dependency(self, task_id: str, depends_on: str) -> None:
        """``task_id`` runs after ``depends_on``."""
        self.add_task(depends_on)
        self._preds.setdefault(task_id, {})[depends_on] = None

    def _order(self) -> list[str]:
        return _order(list(self._preds), self._preds)[0]

    def detect_cycles(self) -> list[list[str]]:
        """The cycle found, as ``[[a, b, a]]``, or ``[]``."""
        try:
            self._order()
        except CycleError as exc:
            return [exc.cycle]
        return []

    def topological_sort(self) -> list[str]:
        """Ids in an order that respects every dependency; raises CycleError."""
        return self._order()

    def find_critical_path(self, task_durations: Mapping[str, float]
                           ) -> tuple[list[str], float]:
        """The longest path for ``task_durations`` (missing ids count 0)."""
        dur = {i: task_durations.get(i, 0.0) for i in self._preds}
        return _longest_path(self._order(), self._preds, dur)


class ResourceManager:
    """The reference design's face (register, acquire, release, waiting) over :class:`Pools`."""

    def __init__(self, pools: Pools | None = None) -> None:
        self.pools = pools or Pools()
        self._held: dict[str, dict[str, int]] = {}

    def register_resource_pool(self, resource_type: str, capacity: int) -> None:
        self.pools.add(resource_type, capacity)

    async def acquire_resources(self, task_id: str, required_resources: Mapping[str, int],
                                priority: float = 0.0) -> bool:
        """Wait until the resources are free and take them; returns True."""
        await self.pools.acquire(required_resources, priority, task_id)
        self._held[task_id] = dict(required_resources)
        return True

    def release_resources(self, task_id: str,
                          released_resources: Mapping[str, int] | None = None) -> None:
        held = self._held.pop(task_id, None)
        demand = released_resources if released_resources is not None else held
        if demand:
            self.pools.release(demand)

    @property
    def waiting_tasks(self) -> list[str | None]:
        return self.pools.waiting()

    @property
    def resource_pools(self) -> dict[str, int]:
        return self.pools.capacities

    @property
    def allocated_resources(self) -> dict[str, int]:
        return self.pools.in_use()
