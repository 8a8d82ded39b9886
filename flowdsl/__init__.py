"""flowdsl: code-first workflow orchestration.

Declare tools with ``@tool``, compose tasks with ``>>`` (then) and ``|`` (side by side), and
run the flow sequentially, in parallel, as a pipeline or conditionally.
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from ._base import hooks as _hooks

__version__ = "0.1.0"

# The public names, once: each module with the names it defines that users import from
# `flowdsl`. `__all__`, `dir(flowdsl)`, the names loaded with the package and the lazy loader
# (`__getattr__`) derive from this table; the TYPE_CHECKING block below repeats it for type
# checkers, which cannot run it (tests/test_public_api.py fails when the two differ, and prints
# the block to paste). To add a public name: add it under its module here and add its line
# `from .module import Name as Name` to the block.
_PUBLIC: dict[str, tuple[str, ...]] = {
    # Loaded with the package (the modules in _AT_IMPORT): light, and used by every program.
    "._base.errors": (
        "CacheKeyError", "CacheStoreError", "CacheWarning", "CompensationError",
        "CompositionError", "CycleError", "DuplicateTaskError", "EventConsumerWarning",
        "ExecutionError", "FlowError",
        "FrozenError", "GraphTooLargeError", "HistoryError", "HistoryWarning", "McpServerError",
        "McpToolError",
        "MissingContextError", "PlanError", "PlanValidationError", "ResourceError", "RunFailed",
        "RunNotFound", "RunTimeout", "SerializationError", "TaskFailed", "TaskInputError",
        "TaskTimeout", "ToolDefinitionError", "WorkerLost",
    ),
    "._base.limits": ("Limits", "limits", "set_limits"),
    "._base.secrets": ("Secret",),
    "._graph.builtins": ("SKIP", "branch", "switch"),
    "._graph.registry": ("ToolRegistry", "default_registry", "tool"),
    "._graph.spec": ("Backoff", "Cache"),
    "._graph.task": ("Flow", "Fragment", "Task", "chain", "ctx", "each", "parallel", "unmapped",
                      "upstream"),
    "._graph.tool": ("Tool",),
    "._plan.planner": ("Plan", "plan"),
    "._plan.policy": ("Mode",),
    "._run.result": ("Attempt", "ErrorInfo", "RunResult", "RunStatus", "TaskRecord", "TaskStatus"),
    # Loaded on first use of one of their names, so `import flowdsl` stays light (no sqlite,
    # pydantic or dask until a name that needs them is touched).
    "._base.log": ("enable_logging", "get_logger"),
    "._run.events": ("Event", "EventKind"),
    "._run.resources": ("Pools",),
    "._run.executors": ("Executor",),
    "._run.dask": ("DaskExecutor",),
    "._data.documents": ("load_flow",),
    "._data.plan_schema": ("plan_schema",),
    "._record.cache": ("CacheStore",),
    "._record.history": ("HistoryStore", "open_history"),
    "._record.simulate": ("simulate",),
    "._record.optimizer": ("analyze", "optimize"),
    "._report.benchmark": ("BenchmarkResult", "benchmark"),
    "._report.entry": ("arun", "run"),
    "._report.progress": ("progress",),
    "._report.timeline": ("save_timeline",),
    ".compat": (
        "DependencyResolver", "ExecutionMode", "ResourceManager", "Workflow", "WorkflowEngine",
        "WorkflowOptimizer", "WorkflowTask",
    ),
}

# The modules of _PUBLIC that load with the package; the others load on first use.
_AT_IMPORT = (
    "._base.errors", "._base.limits", "._base.secrets", "._graph.builtins", "._graph.registry",
    "._graph.spec", "._graph.task", "._graph.tool", "._plan.planner", "._plan.policy",
    "._run.result",
)

if TYPE_CHECKING:  # the names of _PUBLIC, for type checkers (never run)
    from ._base.errors import CacheKeyError as CacheKeyError
    from ._base.errors import CacheStoreError as CacheStoreError
    from ._base.errors import CacheWarning as CacheWarning
    from ._base.errors import CompensationError as CompensationError
    from ._base.errors import CompositionError as CompositionError
    from ._base.errors import CycleError as CycleError
    from ._base.errors import DuplicateTaskError as DuplicateTaskError
    from ._base.errors import EventConsumerWarning as EventConsumerWarning
    from ._base.errors import ExecutionError as ExecutionError
    from ._base.errors import FlowError as FlowError
    from ._base.errors import FrozenError as FrozenError
    from ._base.errors import GraphTooLargeError as GraphTooLargeError
    from ._base.errors import HistoryError as HistoryError
    from ._base.errors import HistoryWarning as HistoryWarning
    from ._base.errors import McpServerError as McpServerError
    from ._base.errors import McpToolError as McpToolError
    from ._base.errors import MissingContextError as MissingContextError
    from ._base.errors import PlanError as PlanError
    from ._base.errors import PlanValidationError as PlanValidationError
    from ._base.errors import ResourceError as ResourceError
    from ._base.errors import RunFailed as RunFailed
    from ._base.errors import RunNotFound as RunNotFound
    from ._base.errors import RunTimeout as RunTimeout
    from ._base.errors import SerializationError as SerializationError
    from ._base.errors import TaskFailed as TaskFailed
    from ._base.errors import TaskInputError as TaskInputError
    from ._base.errors import TaskTimeout as TaskTimeout
    from ._base.errors import ToolDefinitionError as ToolDefinitionError
    from ._base.errors import WorkerLost as WorkerLost
    from ._base.limits import Limits as Limits
    from ._base.limits import limits as limits
    from ._base.limits import set_limits as set_limits
    from ._base.log import enable_logging as enable_logging
    from ._base.log import get_logger as get_logger
    from ._base.secrets import Secret as Secret
    from ._data.documents import load_flow as load_flow
    from ._data.plan_schema import plan_schema as plan_schema
    from ._graph.builtins import SKIP as SKIP
    from ._graph.builtins import branch as branch
    from ._graph.builtins import switch as switch
    from ._graph.registry import ToolRegistry as ToolRegistry
    from ._graph.registry import default_registry as default_registry
    from ._graph.registry import tool as tool
    from ._graph.spec import Backoff as Backoff
    from ._graph.spec import Cache as Cache
    from ._graph.task import Flow as Flow
    from ._graph.task import Fragment as Fragment
    from ._graph.task import Task as Task
    from ._graph.task import chain as chain
    from ._graph.task import ctx as ctx
    from ._graph.task import each as each
    from ._graph.task import parallel as parallel
    from ._graph.task import unmapped as unmapped
    from ._graph.task import upstream as upstream
    from ._graph.tool import Tool as Tool
    from ._plan.planner import Plan as Plan
    from ._plan.planner import plan as plan
    from ._plan.policy import Mode as Mode
    from ._record.cache import CacheStore as CacheStore
    from ._record.history import HistoryStore as HistoryStore
    from ._record.history import open_history as open_history
    from ._record.optimizer import analyze as analyze
    from ._record.optimizer import optimize as optimize
    from ._record.simulate import simulate as simulate
    from ._report.benchmark import BenchmarkResult as BenchmarkResult
    from ._report.benchmark import benchmark as benchmark
    from ._report.entry import arun as arun
    from ._report.entry import run as run
    from ._report.progress import progress as progress
    from ._report.timeline import save_timeline as save_timeline
    from ._run.dask import DaskExecutor as DaskExecutor
    from ._run.events import Event as Event
    from ._run.events import EventKind as EventKind
    from ._run.executors import Executor as Executor
    from ._run.resources import Pools as Pools
    from ._run.result import Attempt as Attempt
    from ._run.result import ErrorInfo as ErrorInfo
    from ._run.result import RunResult as RunResult
    from ._run.result import RunStatus as RunStatus
    from ._run.result import TaskRecord as TaskRecord
    from ._run.result import TaskStatus as TaskStatus
    from .compat import DependencyResolver as DependencyResolver
    from .compat import ExecutionMode as ExecutionMode
    from .compat import ResourceManager as ResourceManager
    from .compat import Workflow as Workflow
    from .compat import WorkflowEngine as WorkflowEngine
    from .compat import WorkflowOptimizer as WorkflowOptimizer
    from .compat import WorkflowTask as WorkflowTask

del TYPE_CHECKING

#: Each public name's module (the lazy loader's table).
_HOME = {name: module for module, names in _PUBLIC.items() for name in names}
for _module in _AT_IMPORT:
    _loaded = _importlib.import_module(_module, __name__)
    for _name in _PUBLIC[_module]:
        globals()[_name] = getattr(_loaded, _name)
del _module, _loaded

__all__ = sorted(_HOME)

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
    "flow_to_dict": "flowdsl._data.documents:flow_to_dict",
    "tool_schema": "flowdsl._data.schema:tool_schema",
    "registry_schemas": "flowdsl._data.schema:registry_schemas",
}.items():
    _hooks.provide(_name, _target)
del _name, _target


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        msg = f"module 'flowdsl' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
