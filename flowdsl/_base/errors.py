"""The exception hierarchy: one base, each error subclassing the builtin a user would catch.

Every error carries its data as attributes (the task id, the option, the cycle), so callers can
act on it without parsing messages.
"""

from __future__ import annotations

import graphlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import ExceptionGroup

if TYPE_CHECKING:
    _ExceptionGroup = ExceptionGroup[Exception]
else:  # subscripting the backport's class at run time is not promised on Python 3.10
    _ExceptionGroup = ExceptionGroup

__all__ = [
    "CacheKeyError",
    "CacheStoreError",
    "CacheWarning",
    "CompensationError",
    "CompositionError",
    "CycleError",
    "DuplicateTaskError",
    "EventConsumerWarning",
    "ExecutionError",
    "FlowError",
    "FrozenError",
    "GraphTooLargeError",
    "HistoryError",
    "HistoryWarning",
    "McpServerError",
    "McpToolError",
    "MissingContextError",
    "PlanError",
    "PlanValidationError",
    "ResourceError",
    "RunFailed",
    "RunNotFound",
    "RunTimeout",
    "SerializationError",
    "TaskFailed",
    "TaskInputError",
    "TaskTimeout",
    "ToolDefinitionError",
    "WorkerLost",
    "exc_repr",
    "exc_text",
]


class FlowError(Exception):
    """Base class of every error flowdsl raises on purpose."""


class ToolDefinitionError(FlowError, ValueError):
    """Raised when ``@tool`` gets a bad option value or something that is not a function.

    Attributes:
        tool: the tool's name (or ``None`` when there is no function yet).
        option: the option at fault.
        value: the value that was given.
    """

    def __init__(self, msg: str, *, tool: str | None = None, option: str | None = None,
                 value: Any = None) -> None:
        super().__init__(msg)
        self.tool = tool
        self.option = option
        self.value = value


class CompositionError(FlowError, TypeError):
    """Raised when tasks are composed or bound wrongly (``>>`` with an int, a missing argument)."""


class FrozenError(FlowError, AttributeError):
    """Raised on assigning to (or deleting) an attribute of a flowdsl value (a Task, Fragment,
    Flow, Plan, ToolSpec, or a map's or group's spec): values are immutable, so a change is a
    changed copy; the message says how to make one.

    Attributes:
        owner: the class's name, e.g. ``"Flow"``.
        attribute: the attribute assigned to or deleted.
        hint: how to make a changed copy instead.
    """

    def __init__(self, owner: str, attribute: str, hint: str, *, deleting: bool = False,
                 what: str | None = None) -> None:
        self.owner = owner
        self.attribute = attribute
        self.hint = hint
        verb = "delete" if deleting else "assign to"
        super().__init__(f"cannot {verb} {owner}.{attribute}: {what or 'a ' + owner} is "
                         "immutable (plans, tasks and fragments are values, shared freely); "
                         f"{hint}")


class PlanError(FlowError, ValueError):
    """Raised when a flow cannot be planned; nothing has run."""


class CacheKeyError(PlanError, TypeError):
    """Raised when a cached task's arguments cannot be hashed canonically (give the tool's
    ``Cache(key=...)``); for arguments known before the run, nothing has run."""


class CacheStoreError(FlowError, OSError):
    """Raised when a result cache file cannot be used (corrupt, locked by another process
    past the wait, written by a newer schema, a path that cannot be opened); the message
    names the path and what to do."""


class CacheWarning(FlowError, RuntimeWarning):
    """Warned (not raised) when a run's new cache entries could not be written; the run
    itself is unaffected and its result carries the error as ``result.cache_error``."""


class DuplicateTaskError(PlanError):
    """Raised when two different tasks in one flow share an id.

    Attributes:
        task_id: the id used twice.
    """

    def __init__(self, msg: str, task_id: str) -> None:
        super().__init__(msg)
        self.task_id = task_id


class CycleError(PlanError, graphlib.CycleError):
    """Raised when the tasks of a flow form a cycle.

    ``.cycle`` lists the ids around the cycle with the first id repeated at the end, as
    :class:`graphlib.CycleError` does in ``args[1]``.
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        msg = "tasks form a cycle: " + " -> ".join(self.cycle)
        super().__init__(msg, self.cycle)

    def __str__(self) -> str:
        return str(self.args[0])


class GraphTooLargeError(PlanError):
    """Raised when a flow has more tasks or edges than the ``max_nodes``/``max_edges`` given
    to ``plan()`` or ``run()``; nothing has run.

    Attributes:
        what: ``"tasks"`` or ``"edges"``.
        limit: the limit that was given.
        size: the flow's actual count.
    """

    def __init__(self, msg: str, *, what: str, limit: int, size: int) -> None:
        super().__init__(msg)
        self.what = what
        self.limit = limit
        self.size = size


class ResourceError(PlanError):
    """Raised when a task needs a pool that does not exist or more than the pool's capacity.

    Attributes:
        task_id: the task at fault (``None`` for pool definitions).
        pool: the pool's name.
    """

    def __init__(self, msg: str, *, task_id: str | None = None, pool: str | None = None) -> None:
        super().__init__(msg)
        self.task_id = task_id
        self.pool = pool


class MissingContextError(PlanError):
    """Raised when a run starts without context keys that tasks read with ``ctx(key)`` and no
    default (and that no task's ``to_context`` writes); nothing has run.

    Attributes:
        missing: each missing key -> the ids of the tasks that read it.
    """

    def __init__(self, msg: str, missing: dict[str, list[str]]) -> None:
        super().__init__(msg)
        self.missing = missing


class PlanValidationError(PlanError):
    """Raised when a workflow document has problems; ``.problems`` lists every one of them.

    Each problem is a mapping with ``path`` (a JSON path such as ``tasks[3].args.limit``) and
    ``message``.
    """

    def __init__(self, problems: Sequence[Any]) -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the workflow document:"]
        lines += [f"  {p['path']}: {p['message']}" for p in self.problems]
        super().__init__("\n".join(lines))


class ExecutionError(FlowError):
    """Base class of errors raised while a flow runs."""


class TaskFailed(ExecutionError):
    """A task failed after all of its attempts; ``__cause__`` is the last error.

    Attributes:
        task_id: the task that failed.
        attempts: how many attempts were made.
    """

    def __init__(self, msg: str, *, task_id: str, attempts: int = 0) -> None:
        super().__init__(msg)
        self.task_id = task_id
        self.attempts = attempts


class TaskInputError(ExecutionError):
    """Raised inside a run when a task cannot be given its inputs or cannot store its output:
    a projection ``task["k"]`` finds no such key, ``ctx("k")`` finds no such context key, its
    condition raised, or ``to_context`` maps a key the output lacks. It is a problem of the
    flow's wiring, so it is never retried; the task's :class:`TaskFailed` has it as
    ``__cause__``."""


class TaskTimeout(TaskFailed, TimeoutError):
    """A task's attempt ran past its timeout (``kind="attempt"``), or the task ran past its
    deadline over all of its attempts (``kind="deadline"``)."""

    def __init__(self, msg: str, *, task_id: str, attempts: int = 0,
                 kind: str = "attempt") -> None:
        super().__init__(msg, task_id=task_id, attempts=attempts)
        self.kind = kind


class SerializationError(TaskFailed, TypeError):
    """A value could not be pickled to or from a worker process."""


class RunTimeout(ExecutionError, TimeoutError):
    """The whole run ran past ``run(timeout=...)``; its unfinished tasks were cancelled.
    Both a :class:`FlowError` and a :class:`TimeoutError`.

    Attributes:
        timeout: the run's timeout in seconds.
    """

    def __init__(self, msg: str, *, timeout: float) -> None:
        super().__init__(msg)
        self.timeout = timeout
class WorkerLost(ExecutionError):
    """The process or cluster running a task went away before it answered (a worker process
    killed by a signal or ``os._exit``, a Dask cluster closed or unreachable).

    Attributes:
        task_id: the task whose call was lost.
        exitcode: the worker process's exit code (negative: killed by that signal), if known.
    """

    def __init__(self, msg: str, *, task_id: str, exitcode: int | None = None) -> None:
        super().__init__(msg)
        self.task_id = task_id
        self.exitcode = exitcode


class McpServerError(ExecutionError, ConnectionError):
    """An MCP server (:func:`flowdsl.mcp.connect`) could not be started or reached, or died
    during a call; the next call starts it again.

    Attributes:
        server: the server's name.
        exit_status: its exit status (negative: killed by that signal), if it exited.
    """

    def __init__(self, msg: str, *, server: str, exit_status: int | None = None) -> None:
        super().__init__(msg)
        self.server = server
        self.exit_status = exit_status


class McpToolError(ExecutionError):
    """An MCP server answered a tool call with an error; the message carries its text.

    Attributes:
        server: the server's name.
        tool: the tool called.
    """

    def __init__(self, msg: str, *, server: str, tool: str) -> None:
        super().__init__(msg)
        self.server = server
        self.tool = tool


class CompensationError(ExecutionError, _ExceptionGroup):
    """The rollbacks that raised after a failed run, as an exception group; the run's status
    is ``rollback_failed``. ``original`` is the failure that started the rollback."""

    original: BaseException | None

    # An ExceptionGroup holds Exceptions only (it refuses a BaseException at run time).
    def __new__(cls, msg: str, errors: Sequence[Exception],
                original: BaseException | None = None) -> CompensationError:
        self = super().__new__(cls, msg, list(errors))
        self.original = original
        return self

    def __init__(self, msg: str, errors: Sequence[Exception],
                 original: BaseException | None = None) -> None:
        super().__init__(msg, list(errors))

    def derive(self, excs: Sequence[Exception]) -> CompensationError:  # type: ignore[override]
        # ExceptionGroup.derive is generic over the member type; this group keeps Exception.
        return CompensationError(self.message, excs, self.original)


class RunFailed(ExecutionError):
    """Raised by :meth:`RunResult.raise_for_error` when a run did not succeed.

    Attributes:
        result: the :class:`RunResult` of the failed run, with every record kept.
    """

    def __init__(self, msg: str, result: Any) -> None:
        super().__init__(msg)
        self.result = result


class HistoryError(FlowError, ValueError):
    """Raised when a history file cannot be used (written by a newer schema, corrupt rows,
    a path that cannot be opened)."""


class EventConsumerWarning(FlowError, RuntimeWarning):
    """Warned (not raised) when a consumer of a run's event stream was detached: it raised,
    or was still reading when the run ended. The run itself is unaffected."""


class HistoryWarning(FlowError, RuntimeWarning):
    """Warned (not raised) when some of a run's rows could not be written to history; the run
    itself is unaffected and its result carries the error as ``result.history_error``."""


class RunNotFound(HistoryError, LookupError):
    """Raised when a run id is not in the history.

    Attributes:
        run_id: the id asked for.
    """

    def __init__(self, msg: str, run_id: str) -> None:
        super().__init__(msg)
        self.run_id = run_id


def exc_text(exc: BaseException) -> str:
    """``str(exc)``, best effort: an exception whose ``__str__`` (or ``__repr__``) raises must
    still end as a failed task with a message, never as a second error."""
    try:
        return str(exc)
    except Exception:
        pass
    try:
        return f"<unprintable {type(exc).__name__}: {exc!r}>"
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def exc_repr(exc: BaseException) -> str:
    """``repr(exc)``, best effort (see :func:`exc_text`)."""
    try:
        return repr(exc)
    except Exception:
        return f"{type(exc).__name__}({exc_text(exc)!r})"

