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
from ._tool import Backoff, Tool, tool

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CompositionError",
    "CycleError",
    "DependencyResolver",
    "DuplicateTaskError",
    "ExecutionError",
    "Flow",
    "FlowError",
    "Fragment",
    "Plan",
    "PlanError",
    "PlanValidationError",
    "ResourceError",
    "RunFailed",
    "SerializationError",
    "Task",
    "TaskFailed",
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
]
