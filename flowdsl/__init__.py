"""flowdsl: code-first workflow orchestration.

Declare tools with ``@tool``, compose tasks with ``>>`` (then) and ``|`` (side by side), and
run the flow sequentially, in parallel, as a pipeline or conditionally.
"""

from ._errors import (
    CompositionError,
    CycleError,
    DuplicateTaskError,
    ExecutionError,
    FlowError,
    PlanError,
    PlanValidationError,
    ResourceError,
    RunFailed,
    SerializationError,
    TaskFailed,
    TaskTimeout,
    ToolDefinitionError,
)
from ._graph import Flow, Fragment, Task, branch, chain, ctx, parallel
from ._planner import DependencyResolver, Plan, plan
from ._registry import ToolRegistry, default_registry
from ._result import Attempt, ErrorInfo, RunResult, TaskRecord, TaskStatus
from ._tool import Backoff, Tool, tool

__version__ = "0.1.0"

# Heavier parts load on first use, so `import flowdsl` stays light (no sqlite, pydantic or
# dask until a name that needs them is touched).
_LAZY = {
    "run": "._run", "arun": "._run", "Mode": "._run",
    "Pools": "._resources", "ResourceManager": "._resources",
    "Executor": "._executors",
    "HistoryStore": "._history", "HistoryError": "._history", "RunNotFound": "._history",
    "open_history": "._history",
    "analyze": "._optimizer", "optimize": "._optimizer", "simulate": "._optimizer",
    "WorkflowOptimizer": "._optimizer",
    "load_flow": "._dataflow", "plan_schema": "._dataflow",
    "Workflow": "._compat", "WorkflowTask": "._compat", "ExecutionMode": "._compat",
    "WorkflowEngine": "._compat",
    "DaskExecutor": "._dask",
    "enable_logging": "._log",
    "progress": "._progress", "save_timeline": "._timeline",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'flowdsl' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Attempt",
    "Backoff",
    "CompositionError",
    "CycleError",
    "DependencyResolver",
    "DuplicateTaskError",
    "ErrorInfo",
    "ExecutionError",
    "Flow",
    "FlowError",
    "Fragment",
    "Plan",
    "PlanError",
    "PlanValidationError",
    "ResourceError",
    "RunFailed",
    "RunResult",
    "SerializationError",
    "Task",
    "TaskFailed",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeout",
    "Tool",
    "ToolDefinitionError",
    "ToolRegistry",
    "branch",
    "chain",
    "ctx",
    "default_registry",
    "parallel",
    "plan",
    "tool",
    *_LAZY,
]
