"""Record: what a run did — per-task statuses, attempts, times, errors — and its outcome.

Times on records are seconds since the run started (one monotonic clock, so the timeline, the
simulator and the Gantt chart agree); ``RunResult.started_at`` anchors them to wall time.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from .._base import hooks
from .._base.errors import RunFailed, exc_text
from .._base.secrets import Masker

__all__ = ["Attempt", "ErrorInfo", "RunObserver", "RunResult",
           "RunStatus", "TaskRecord", "TaskStatus"]


class RunStatus(str, enum.Enum):
    """How a run ended (``RUNNING`` while it goes on). A str enum: ``status == "completed"``
    keeps working, and it is written out as its value."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    #: The run failed and ``rollback_on_failure`` undid its completed tasks.
    ROLLED_BACK = "rolled_back"
    #: A rollback raised or ran past ``compensation_timeout``: see
    #: ``RunResult.compensation_error``.
    ROLLBACK_FAILED = "rollback_failed"

    def __str__(self) -> str:
        return self.value


class TaskStatus(str, enum.Enum):
    """Where a task stands; every status but PENDING and RUNNING is final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    CACHED = "cached"  # completed from the result cache: the tool was not called

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        """True for the statuses that count as a failure of the task."""
        return self in (TaskStatus.FAILED, TaskStatus.TIMED_OUT)


@dataclass(slots=True)
class ErrorInfo:
    """An error as data: type name, message and traceback text (the exception itself is kept
    in ``exception`` for callers in the same process; it is never stored)."""

    type: str
    message: str
    traceback: str = ""
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_exception(cls, exc: BaseException, masker: Masker | None = None) -> ErrorInfo:
        """The error as data; with a run's ``masker``, its secrets masked in the message and
        the traceback."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        remote = getattr(exc, "__flowdsl_traceback__", None)  # from a worker process
        if remote:
            tb = f"{remote}\nRe-raised in the parent:\n{tb}"
        message = exc_text(exc)
        if masker is not None:
            message, tb = masker.text(message), masker.text(tb)
        return cls(type(exc).__qualname__, message, tb, exc)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(slots=True)
class Attempt:
    """One call of a tool: its number (1-based), times, outcome and error."""

    number: int
    started_at: float
    ended_at: float | None = None
    status: TaskStatus = TaskStatus.RUNNING
    error: ErrorInfo | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "started_at": self.started_at,
                "ended_at": self.ended_at, "status": self.status.value,
                "error": self.error.to_dict() if self.error else None}


#: A pipeline stage's summary keeps the records of this many items (and of every item that
#: did not complete): a result's memory stays flat over any number of items.
MAX_KEPT_ITEMS = 64


@dataclass(slots=True)
class TaskRecord:
    """What happened to one task in one run."""

    id: str
    tool: str
    status: TaskStatus = TaskStatus.PENDING
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    error: ErrorInfo | None = None
    reason: str | None = None
    rollback_error: ErrorInfo | None = None
    resources: Mapping[str, int] = field(default_factory=dict)
    parent: str | None = None  # the mapped task this record is a child of
    #: Lines the tool logged through ``flowdsl.get_logger()`` while logging was on (dicts
    #: with time, level, event and the bound values; capped); ``None`` when there were none.
    logs: list[dict[str, Any]] | None = None
    #: A map child's input hash (its arguments as canonical JSON), set only while history
    #: stores outputs: a resume reuses the child's stored output when index and hash match.
    input_key: str | None = None
    #: A pipeline over ``items``: on a stage's per-item record, the item's index (0-based);
    #: ``None`` everywhere else.
    item: int | None = None
    #: A pipeline over ``items``: on a stage's summary (``result.tasks[stage]``), its
    #: per-item records in item order (each with ``item`` set: its own start, end, status,
    #: attempts and error): the first :data:`MAX_KEPT_ITEMS` items and every item that did
    #: not complete, so memory stays flat over any number of items (history keeps them all);
    #: ``None`` for any other task.
    items: list[TaskRecord] | None = None
    #: A pipeline stage's summary: how many items it recorded (``len(items)`` unless some
    #: were left out of ``items``); ``None`` for any other task.
    item_count: int | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the task's end (None if it never ran)."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def __repr__(self) -> str:
        d = self.duration
        extra = f" in {d:.3f}s" if d is not None else ""
        extra += f", {len(self.attempts)} attempt(s)" if len(self.attempts) > 1 else ""
        extra += f": {self.reason}" if self.reason else ""
        extra += f" ({self.error.type}: {self.error.message})" if self.error else ""
        extra += f" over {self.item_count} item(s)" if self.item_count is not None else ""
        at = f"@{self.item}" if self.item is not None else ""
        return f"<TaskRecord {self.id + at!r} {self.status.value}{extra}>"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tool": self.tool, "status": self.status.value,
                "attempts": [a.to_dict() for a in self.attempts],
                "started_at": self.started_at, "ended_at": self.ended_at,
                "duration": self.duration, "reason": self.reason,
                "error": self.error.to_dict() if self.error else None,
                "rollback_error": self.rollback_error.to_dict() if self.rollback_error
                else None, "resources": dict(self.resources), "logs": list(self.logs or ()),
                **({"parent": self.parent} if self.parent is not None else {}),
                **({"item": self.item} if self.item is not None else {}),
                **({"items": [r.to_dict() for r in self.items], "item_count": self.item_count}
                   if self.items is not None else {})}


R = TypeVar("R")


@dataclass(slots=True)
class RunResult(Generic[R]):
    """The outcome of a run. A failed run still returns its result; call
    :meth:`raise_for_error` to turn failure into an exception.

    Attributes:
        run_id: unique id of the run (used by history).
        flow_name: the flow's name, or ``None``.
        mode: the mode it ran in.
        status: a :class:`RunStatus` (``completed``, ``failed``, ``cancelled``,
            ``timed_out``, and after ``rollback_on_failure``: ``rolled_back`` or
            ``rollback_failed``); it compares equal to those strings.
        context: the final context (the caller's dict was copied, never mutated).
        outputs: task id -> output, for completed tasks.
        output: the output of the flow's last task (a list when it ends in several; with
            ``items=``, one per item); ``None`` if it did not complete. Type checkers see
            the last task's return type for a flow that ends in one task.
        tasks: task id -> :class:`TaskRecord`, in plan order.
        started_at: wall-clock start; task times are seconds after it.
        duration: seconds the run took.
        error: the first error (an exception), or ``None``.
        errors: every task error, in the order they happened.
        item_errors: for pipelines over items with ``continue_on_error``: item index -> error.
        history_error: why some of the run's history rows could not be written (a
            ``HistoryError``), or ``None``; the run itself is unaffected.
        cache_error: why the result cache could not be used or its new entries written
            (a ``CacheWarning``), or ``None``; the run itself is unaffected.
    """

    run_id: str
    flow_name: str | None
    mode: str
    status: RunStatus = RunStatus.RUNNING
    context: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    output: R | None = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    started_at: datetime = field(default_factory=datetime.now)
    duration: float = 0.0
    error: BaseException | None = None
    errors: list[BaseException] = field(default_factory=list)
    item_errors: dict[int, ErrorInfo] = field(default_factory=dict)
    rollback_errors: list[Exception] = field(default_factory=list)
    history_error: BaseException | None = None
    cache_error: BaseException | None = None
    plan: Any = field(default=None, repr=False, compare=False)
    #: The rollback errors as one exception group (status ``rollback_failed``), with the
    #: run's original error in ``.original``.
    compensation_error: BaseException | None = None
    #: The run's secrets (None when it holds no :class:`~flowdsl.Secret`): whatever text
    #: leaves the run passes through it.
    masker: Masker | None = field(default=None, repr=False, compare=False)

    def id_of(self, task: Any) -> str:
        """The id ``task`` had in this run (see :meth:`flowdsl.Plan.id_of`): the key of its
        record in :attr:`tasks` and of its output in :attr:`outputs`."""
        if self.plan is None:
            msg = "this RunResult has no plan: it was not made by flowdsl.run()"
            raise KeyError(msg)
        task_id: str = self.plan.id_of(task)
        return task_id

    @property
    def ok(self) -> bool:
        """True when the run completed without a task failing."""
        return self.status is RunStatus.COMPLETED

    def raise_for_error(self) -> RunResult[Any]:
        """Return self if the run succeeded; else raise :class:`RunFailed` from the first error.

        Raises:
            RunFailed: with ``.result`` set to this result.
        """
        if self.ok:
            return self
        failed = [r.id for r in self.tasks.values() if r.status.failed]
        msg = f"run {self.run_id} of {self.flow_name or 'flow'} {self.status}"
        if failed:
            msg += ": failed task(s) " + ", ".join(failed)
        if self.error is not None:
            msg += f" ({type(self.error).__name__}: {exc_text(self.error)})"
        if self.masker is not None:
            msg = self.masker.text(msg)
        raise RunFailed(msg, self) from (self.compensation_error or self.error)

    def summary(self) -> dict[str, int]:
        """How many tasks ended in each status."""
        out: dict[str, int] = {}
        for r in self.tasks.values():
            out[r.status.value] = out.get(r.status.value, 0) + 1
        return out

    def to_dict(self, *, outputs: bool = True) -> dict[str, Any]:
        """The result as JSON-friendly data (outputs that are not JSON are given as repr)."""
        out = {
            "run_id": self.run_id, "flow": self.flow_name, "mode": self.mode,
            "status": self.status, "ok": self.ok, "started_at": self.started_at.isoformat(),
            "duration": self.duration, "summary": self.summary(),
            "error": ErrorInfo.from_exception(self.error).to_dict() if self.error else None,
            "tasks": {k: r.to_dict() for k, r in self.tasks.items()},
            "outputs": {k: _jsonable(v) for k, v in self.outputs.items()} if outputs else None,
            "output": _jsonable(self.output) if outputs else None,
            "context": {k: _jsonable(v) for k, v in self.context.items()} if outputs else None,
            "history_error": str(self.history_error) if self.history_error else None,
            "cache_error": str(self.cache_error) if self.cache_error else None,
        }
        return out if self.masker is None else self.masker.data(out)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.summary().items())
        return (f"<RunResult {self.flow_name or 'flow'} {self.mode} {self.status} in "
                f"{self.duration:.3f}s: {counts}>")

    def gantt(self, path: str) -> Any:
        """Write this run's timeline (a Gantt chart, critical path highlighted) to ``path``:
        ``.png``/``.svg`` need ``flowdsl[plot]``, ``.html`` is self-contained. Returns the
        path written."""
        return hooks.get("save_timeline")(self, path)

    def _repr_html_(self) -> str:
        html: str = hooks.get("result_html")(self)
        return html


_END: Any = object()  # an exhausted iterator, in _jsonable


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data: lists and tuples as lists, dicts with their keys as text, any
    other object as its ``repr``. Iterative, so a deeply nested value cannot exhaust the stack;
    a list or dict inside itself is written ``"[...]"`` / ``"{...}"`` there, as ``repr``
    does."""
    top: list[Any] = []
    # Each list or dict open on the way down: its keys (a dict's, as text), its items, the
    # items done, where its copy goes, and its id (for cycles).
    stack: list[tuple[list[str] | None, Iterator[Any], list[Any], list[Any], int]] = []
    open_ids: set[int] = set()
    item, into = value, top
    while True:
        if item is None or isinstance(item, (bool, int, float, str)):
            into.append(item)
        elif isinstance(item, (list, tuple, dict)):
            if id(item) in open_ids:
                into.append("{...}" if isinstance(item, dict) else "[...]")
            else:
                open_ids.add(id(item))
                if isinstance(item, dict):
                    stack.append(([str(k) for k in item], iter(item.values()), [], into,
                                  id(item)))
                else:
                    stack.append((None, iter(item), [], into, id(item)))
        else:
            into.append(repr(item))
        while stack:
            keys, items, done, parent, ident = stack[-1]
            nxt = next(items, _END)
            if nxt is not _END:
                item, into = nxt, done
                break
            stack.pop()
            open_ids.discard(ident)
            parent.append(done if keys is None else dict(zip(keys, done)))
        else:
            return top[0]


class RunObserver(Protocol):
    """Hooks a run calls as it goes (history, OpenTelemetry). Calls must be cheap and must
    not raise; they run on the event loop. A view that only reads what happened is better
    a consumer of the run's event stream (a callable in ``observers``; events.py): it runs
    off the loop, in order, and cannot fail or slow the run."""

    def run_started(self, result: RunResult[Any], plan: Any) -> None: ...

    def task_started(self, result: RunResult[Any], record: TaskRecord) -> None: ...

    def task_finished(self, result: RunResult[Any], record: TaskRecord, output: Any) -> None: ...

    def run_finished(self, result: RunResult[Any]) -> None: ...
