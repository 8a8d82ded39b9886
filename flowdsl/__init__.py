"""flowdsl: code-first workflow orchestration.

Declare tools with ``@tool``, compose tasks with ``>>`` (then) and ``|`` (side by side), and
run the flow sequentially, in parallel, as a pipeline or conditionally.
"""

from typing import TYPE_CHECKING

from ._base import hooks as _hooks
from ._base.errors import (
    CacheKeyError,
    CacheStoreError,
    CacheWarning,
    CompensationError,
    CompositionError,
    CycleError,
    DuplicateTaskError,
    ExecutionError,
    FlowError,
    GraphTooLargeError,
    HistoryError,
    HistoryWarning,
    McpServerError,
    McpToolError,
    MissingContextError,
    PlanError,
    PlanValidationError,
    ResourceError,
    RunFailed,
    RunNotFound,
    RunTimeout,
    SerializationError,
    TaskFailed,
    TaskInputError,
    TaskTimeout,
    ToolDefinitionError,
    WorkerLost,
)
from ._base.limits import Limits, limits, set_limits
from ._base.secrets import Secret
from ._graph.builtins import SKIP, branch, switch
from ._graph.registry import ToolRegistry, default_registry
from ._graph.spec import Cache
from ._graph.task import Flow, Fragment, Task, chain, ctx, each, parallel, upstream
from ._graph.tool import Backoff, Tool, tool
from ._plan.planner import DependencyResolver, Plan, plan
from ._run import stores as _stores
from ._run.result import Attempt, ErrorInfo, RunResult, RunStatus, TaskRecord, TaskStatus

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the lazy names below are, for type checkers (never run)
    from ._base.log import enable_logging as enable_logging
    from ._base.log import get_logger as get_logger
    from ._data.compat import ExecutionMode as ExecutionMode
    from ._data.compat import Workflow as Workflow
    from ._data.compat import WorkflowEngine as WorkflowEngine
    from ._data.compat import WorkflowTask as WorkflowTask
    from ._data.documents import load_flow as load_flow
    from ._data.documents import plan_schema as plan_schema
    from ._record.cache import CacheStore as CacheStore
    from ._record.history import HistoryStore as HistoryStore
    from ._record.history import open_history as open_history
    from ._record.optimizer import WorkflowOptimizer as WorkflowOptimizer
    from ._record.optimizer import analyze as analyze
    from ._record.optimizer import optimize as optimize
    from ._record.optimizer import simulate as simulate
    from ._report.benchmark import BenchmarkResult as BenchmarkResult
    from ._report.benchmark import benchmark as benchmark
    from ._report.progress import progress as progress
    from ._report.timeline import save_timeline as save_timeline
    from ._run.api import Mode as Mode
    from ._run.api import arun as arun
    from ._run.api import run as run
    from ._run.dask import DaskExecutor as DaskExecutor
    from ._run.executors import Executor as Executor
    from ._run.resources import Pools as Pools
    from ._run.resources import ResourceManager as ResourceManager

# Heavier parts load on first use, so `import flowdsl` stays light (no sqlite, pydantic or
# dask until a name that needs them is touched).
_LAZY = {
    "run": "._run.api", "arun": "._run.api", "Mode": "._run.api",
    "Pools": "._run.resources", "ResourceManager": "._run.resources",
    "Executor": "._run.executors",
    "CacheStore": "._record.cache",
    "HistoryStore": "._record.history", "open_history": "._record.history",
    "analyze": "._record.optimizer", "optimize": "._record.optimizer",
    "simulate": "._record.optimizer", "WorkflowOptimizer": "._record.optimizer",
    "load_flow": "._data.documents", "plan_schema": "._data.documents",
    "Workflow": "._data.compat", "WorkflowTask": "._data.compat",
    "ExecutionMode": "._data.compat", "WorkflowEngine": "._data.compat",
    "DaskExecutor": "._run.dask",
    "enable_logging": "._base.log", "get_logger": "._base.log",
    "progress": "._report.progress", "save_timeline": "._report.timeline",
    "benchmark": "._report.benchmark", "BenchmarkResult": "._report.benchmark",
}

# Methods that lower layers offer but higher layers implement (see flowdsl/_base/hooks.py):
# this module sits above every layer, so it is the one place that wires them.
for _name, _target in {
    "plan": "flowdsl._plan.planner:plan",
    "to_mermaid": "flowdsl._report.render:to_mermaid",
    "to_dot": "flowdsl._report.render:to_dot",
    "flow_mimebundle": "flowdsl._report.render:flow_mimebundle",
    "plan_mimebundle": "flowdsl._report.render:plan_mimebundle",
    "result_html": "flowdsl._report.render:result_html",
    "save_timeline": "flowdsl._report.timeline:save_timeline",
    "progress": "flowdsl._report.progress:progress",
    "in_notebook": "flowdsl._report.progress:in_notebook",
    "flow_to_dict": "flowdsl._data.documents:flow_to_dict",
    "tool_schema": "flowdsl._data.schema:tool_schema",
    "registry_schemas": "flowdsl._data.schema:registry_schemas",
    "open_history": "flowdsl._record.history:open_history",
    "aopen_history": "flowdsl._record.history:aopen_history",
}.items():
    _hooks.provide(_name, _target)
del _name, _target


def _open_cache(spec: object) -> object:
    """The result cache store ``run(cache=spec)`` uses (the record layer's, imported on
    first use so ``import flowdsl`` stays light)."""
    from ._record.cache import open_cache

    return open_cache(spec)


_stores.set_default_store(_open_cache)


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
    "Cache",
    "CacheKeyError",
    "CacheStoreError",
    "CacheWarning",
    "CompensationError",
    "CompositionError",
    "CycleError",
    "DependencyResolver",
    "DuplicateTaskError",
    "ErrorInfo",
    "ExecutionError",
    "Flow",
    "FlowError",
    "Fragment",
    "GraphTooLargeError",
    "HistoryError",
    "HistoryWarning",
    "Limits",
    "McpServerError",
    "McpToolError",
    "MissingContextError",
    "Plan",
    "PlanError",
    "PlanValidationError",
    "ResourceError",
    "RunFailed",
    "RunNotFound",
    "RunResult",
    "RunStatus",
    "RunTimeout",
    "SKIP",
    "Secret",
    "SerializationError",
    "Task",
    "TaskFailed",
    "TaskInputError",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeout",
    "Tool",
    "ToolDefinitionError",
    "ToolRegistry",
    "WorkerLost",
    "branch",
    "chain",
    "ctx",
    "default_registry",
    "each",
    "limits",
    "parallel",
    "plan",
    "set_limits",
    "switch",
    "tool",
    "upstream",
    *_LAZY,
]
