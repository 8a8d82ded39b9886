"""Record, the writing half of the history: rows as the run makes them, the batch the writer
thread turns them into, and the per-tool aggregates it keeps up to date.

The run's side is an append to a deque per finished task (no lock, no SQLite); a start
appends nothing (the writer makes the rows of the tasks running at each write from the run's
records). The writer drains the deque into a :class:`Batch` (a task's later row replaces its
earlier one), fills in what costs time (each task's module-qualified tool name, from the
run's plan), and writes the batch in one transaction. Once a run's end row is written,
:func:`aggregate_once` folds the run's task and call durations into ``task_stats`` (per flow,
qualified tool and task: count, sum and the latest five durations) and ``stats`` (per flow
and qualified tool: counts, sums, the latest 64 durations), so reading expected durations
costs the flow's tools and tasks, not the rows in the file.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio

from ..._base.errors import HistoryError, HistoryWarning
from ..._base.limits import limits
from ..._base.log import get_logger, logging_enabled
from ..._base.loop import threadsafe_caller
from ..._run.result import RunResult, TaskRecord, TaskStatus
from .liveness import PROC_START

__all__ = [
    "CHILD_INPUT",
    "HOST",
    "Batch",
    "HistoryObserver",
    "edges_json",
    "logs_json",
    "nodes_json",
    "plan_keys",
    "safe_text",
    "stored_json",
    "tool_identity",
]

HOST = socket.gethostname()

#: The key under which history stores a map child's input hash beside its output
#: (``{CHILD_INPUT: hash, "output": value}``), read back by a resume.
CHILD_INPUT = "__flowdsl_input__"


def stored_json(value: Any, masker: Any = None, *, task_id: str = "") -> str | None:
    """The JSON text history stores for an output: ``None`` when it is not plain JSON data
    (history never pickles), the registered secrets masked, and a marker in place of text
    longer than ``max_stored_output`` (with a warning; the result keeps the value)."""
    if masker is not None:
        value = masker.data(value)
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    except RecursionError:
        # json.loads could not read it back either (both recurse in C): a marker, as for size.
        msg = (f"the output of task {task_id!r} is nested deeper than JSON text can be read "
               "back: history stores a marker instead (the result keeps it)")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return json.dumps({"__flowdsl_omitted__": msg})
    cap = limits().max_stored_output
    if len(text) > cap:  # json.dumps escapes to ASCII: characters are bytes
        msg = (f"the output of task {task_id!r} is {len(text)} bytes of JSON, over the "
               f"{cap}-byte cap: history stores a marker instead (the result keeps it; "
               "raise it with flowdsl.set_limits(max_stored_output=...))")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return json.dumps({"__flowdsl_omitted__": msg})
    return text


# Row kinds on the queue (small ints: the hot path appends (kind, row) tuples). A task's start
# puts nothing on it: the writer thread makes the rows of the tasks running at each write from
# the observers' records (HistoryObserver.running_rows), so the tasks that end before the next
# write cost no row at all.
START, END, PLAN = range(3)
#: The queue holds task rows and attempt rows as they are (told apart by their widths) and
#: the run's other rows as ``(kind, row)`` pairs: a wrapper tuple per row was one more object
#: per task for the cyclic collector to count, and a run's collections grew with them.
TASK_WIDTH, ATTEMPT_WIDTH = 15, 10

#: The writer thread's heartbeat on its runs in progress (see ``liveness``).
HEARTBEAT = "UPDATE runs SET heartbeat = ? WHERE run_id = ? AND status = 'running'"
#: A running task's log lines so far (its final row, written later, holds them all).
TAIL = "UPDATE tasks SET logs = ? WHERE run_id = ? AND task_id = ? AND status = 'running'"



# -- text and identity -------------------------------------------------------------------------

def safe_text(value: Any) -> Any:
    """``value`` with lone surrogates escaped (``\\udcff``), so SQLite can encode it; other
    values are returned as they are."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's ``__str__`` itself fails."""
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not cost the run its record
        return f"<{type(exc).__qualname__}: str() failed>"


def tool_identity(tool: Any) -> str:
    """A tool's identity in history: its function's module-qualified name
    (``package.module.fetch``); a tool renamed with ``name=`` adds its name in brackets. A
    script run as ``__main__`` counts under its file's name, as when the CLI loads it."""
    fn = getattr(tool, "__wrapped__", tool)
    module = getattr(fn, "__module__", None) or ""
    if module == "__main__":
        file = getattr(sys.modules.get("__main__"), "__file__", None)
        module = Path(file).stem if file else module
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    name = getattr(tool, "name", None)
    if isinstance(name, str) and name != getattr(fn, "__name__", name):
        qual = f"{qual}[{name}]"
    return f"{module}.{qual}" if module else qual


# -- the batch -----------------------------------------------------------------------------------

_TASK_ID = operator.itemgetter(1)


class Batch:
    """Rows waiting to be written, in the order the foreign keys need (runs, tasks, attempts,
    run ends). A task's later row replaces its earlier one (its 'running' row is never written
    when its final row comes along in time), keeping a stored output. Task rows are kept by
    run id, then task id (a key tuple per row was one more object for the cyclic collector)."""

    __slots__ = ("attempts", "ends", "plans", "starts", "tasks")

    def __init__(self) -> None:
        self.starts: list[tuple[Any, ...]] = []
        self.tasks: dict[str, dict[str, tuple[Any, ...]]] = {}  # run id -> task id -> row
        self.attempts: list[tuple[Any, ...]] = []
        self.ends: list[tuple[Any, ...]] = []
        self.plans: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.starts or self.tasks or self.attempts or self.ends)

    def extend(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Take rows as the queue holds them (see :data:`TASK_WIDTH`), with the per-task
        kinds inlined (the writer drains a row or two per task: a call per row was a fifth
        of its Python time)."""
        runs, attempt = self.tasks, self.attempts.append
        last: str | None = None
        tasks: dict[str, tuple[Any, ...]] = {}
        for row in items:
            width = len(row)
            if width == TASK_WIDTH:
                run_id = row[0]
                if run_id is not last:  # the rows of one run share their id's object
                    got = runs.get(run_id)
                    tasks = runs[run_id] = {} if got is None else got
                    last = run_id
                old = tasks.get(row[1])
                if old is not None and row[-1] is None and old[-1] is not None:
                    row = (*row[:-1], old[-1])
                tasks[row[1]] = row
            elif width == ATTEMPT_WIDTH:
                attempt(row)
            else:
                kind, body = row
                if kind == START:
                    self.starts.append(body)
                elif kind == END:
                    self.ends.append(body)
                else:
                    self.plans[body[0]] = body[1]

    def rows(self) -> int:
        return (len(self.starts) + sum(map(len, self.tasks.values())) + len(self.attempts)
                + len(self.ends))

    def run_ids(self) -> set[str]:
        ids = {r[0] for r in self.starts} | set(self.tasks)
        ids.update(r[0] for r in self.attempts)
        ids.update(r[-1] for r in self.ends)
        return ids

    def sanitize(self) -> None:
        """Escape every text that SQLite cannot encode (lone surrogates)."""
        def clean(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return [tuple(safe_text(v) for v in row) for row in rows]

        self.starts, self.attempts = clean(self.starts), clean(self.attempts)
        self.ends = clean(self.ends)
        self.tasks = {safe_text(run_id): {safe_text(tid): tuple(safe_text(v) for v in row)
                                          for tid, row in rows.items()}
                      for run_id, rows in self.tasks.items()}

    def start_rows(self, plans: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The run rows, each with its plan's edges and task ids (``None`` when the run came
        without a plan), this process's start time and a first heartbeat: written once per
        run, here in the writer thread, never on the event loop."""
        now = time.time()
        return [(*row, edges_json(plans.get(row[0])), nodes_json(plans.get(row[0])),
                 PROC_START, now) for row in self.starts]

    def with_qualnames(self, keys: dict[str, dict[str, str]]) -> tuple[
            list[tuple[Any, ...]], list[str], list[tuple[Any, ...]], list[str]]:
        """The task rows and their tasks' qualified tool names, then the attempt rows and
        theirs (``keys``: run id -> its plan's :func:`plan_keys` names, a look-up per row;
        the bare name when the run came without a plan)."""
        def other(row: tuple[Any, ...], tab: dict[str, str]) -> str:
            """A row whose id is no plan task's: a mapped task's child or a stage's item
            (named as its parent or stage), else the bare tool name."""
            tid = row[1]
            parent = (tid.rpartition("[")[0] if tid.endswith("]")
                      else tid.rpartition("@")[0] if "@" in tid else None)
            q = tab.get(parent) if parent else None
            return q if q is not None else safe_text(row[3 if len(row) == ATTEMPT_WIDTH else 2])

        def named(rows: list[tuple[Any, ...]], out: list[str]) -> None:
            run_id: str | None = None
            tab: dict[str, str] = {}
            append = out.append
            for row in rows:
                if row[0] != run_id:
                    run_id = row[0]
                    tab = keys.get(run_id) or {}
                q = tab.get(row[1])
                append(q if q is not None else other(row, tab))

        tasks: list[tuple[Any, ...]] = []
        for rows in self.tasks.values():
            # In key order (one row per key here): the primary key's B-tree is then walked
            # once per batch, not at random; inserting 100,000 rows took SQLite 20% less.
            tasks += sorted(rows.values(), key=_TASK_ID)
        task_names: list[str] = []
        attempt_names: list[str] = []
        named(tasks, task_names)
        named(self.attempts, attempt_names)
        return tasks, task_names, self.attempts, attempt_names


# -- a plan's keys in history ---------------------------------------------------------------

#: Plans whose keys were made lately: (task ids, ids of the task objects) -> (the task
#: objects, kept so their ids stay theirs, and the keys). A flow run again is planned
#: again, into the same task objects: its keys are made once, not at every run's start on
#: the event loop (a 10,000-task plan's took 20-60 ms).
_KEYS: dict[tuple[tuple[str, ...], tuple[int, ...]],
            tuple[tuple[Any, ...], tuple[dict[str, str], frozenset[str],
                                         frozenset[tuple[str, str]]]]] = {}
_KEYS_KEPT = 8


def plan_keys(plan: Any) -> tuple[dict[str, str], frozenset[str], frozenset[tuple[str, str]]]:
    """A plan's tool identities by task id (as history stores them), its mapped tasks and
    the (tool, task id) pairs its expected durations read; made once per set of task
    objects (a task's tool, fan-out and id never change: tasks are frozen). The writer
    names rows by them and the reader looks figures up by them."""
    tasks = tuple(plan.tasks.values())
    key = (tuple(plan.tasks), tuple(map(id, tasks)))
    hit = _KEYS.get(key)
    if hit is not None:
        return hit[1]
    idents, mapped = _identities(plan), _mapped(plan)
    made = (idents, mapped, _wanted(idents, mapped))
    if len(_KEYS) >= _KEYS_KEPT:
        try:  # runs in several threads may trim at once: losing a race costs nothing
            _KEYS.pop(next(iter(_KEYS)))
        except (KeyError, RuntimeError, StopIteration):
            pass
    _KEYS[key] = (tasks, made)
    return made


def _identities(plan: Any) -> dict[str, str]:
    idents: dict[str, str] = {}
    memo: dict[int, str] = {}
    for tid, task in plan.tasks.items():
        tool = task.tool
        ident = memo.get(id(tool))
        if ident is None:
            ident = memo[id(tool)] = safe_text(tool_identity(tool))
        idents[tid] = ident
    return idents


def _wanted(idents: dict[str, str], mapped: frozenset[str]) -> frozenset[tuple[str, str]]:
    """The (tool, task id) pairs a plan's durations read (``id[]`` for a mapped task)."""
    return frozenset((ident, tid + "[]" if tid in mapped else tid)
                     for tid, ident in idents.items())


def _mapped(plan: Any) -> frozenset[str]:
    return frozenset(t for t, task in plan.tasks.items()
                     if getattr(task, "fan", None) is not None)



def edges_json(plan: Any) -> str | None:
    """A plan's edges as compact JSON, ``[[pred, succ], ...]`` by task id (mapped children
    have none: their record names their parent); ``None`` without a plan, or for a stand-in
    that only names the tasks' tools."""
    preds = getattr(plan, "predecessors", None)
    if preds is None:
        return None
    return json.dumps([[p, i] for i in plan.order for p in preds[i]], separators=(",", ":"))


def nodes_json(plan: Any) -> str | None:
    """A plan's task ids in its order, as compact JSON (so a reader draws every task of a run
    from its start, those without edges too); ``None`` as for :func:`edges_json`."""
    if getattr(plan, "predecessors", None) is None:
        return None
    return json.dumps(list(plan.order), separators=(",", ":"))


def logs_json(logs: list[dict[str, Any]] | None, masker: Any) -> str | None:
    """A task's kept log lines as JSON text, the run's secrets masked (lines logged before a
    secret was registered too); ``None`` when it kept none."""
    if not logs:
        return None
    if masker is not None:
        logs = masker.data(logs)
    return json.dumps(logs, separators=(",", ":"), default=repr)


# -- the observer --------------------------------------------------------------------------------

class HistoryObserver:
    """Records one run into a :class:`HistoryStore`. The hooks only append rows to the store's
    queue; :meth:`arun_finished` waits (in a worker thread) for the run's rows to be written
    and attaches a write failure to the result."""

    __slots__ = ("_done", "_ended", "_flow", "_logged", "_masker", "_outputs", "_push",
                 "_run_id", "_running", "_shown", "_store", "_tailed")

    def __init__(self, store: Any, flow_name: str | None, store_outputs: bool) -> None:
        self._store = store
        self._flow = flow_name
        self._outputs = store_outputs
        self._done: dict[str, TaskStatus] = {}  # task -> the status its row was written with
        # task id -> how many log lines its written row holds (tasks that kept lines only)
        self._logged: dict[str, int] = {}
        self._run_id: str | None = None
        self._push = store._queue.append
        # The tasks running now (their records gain log lines as their tools run) and, for
        # the writer thread's live tails, how many lines of each it wrote.
        self._running: dict[str, TaskRecord] = {}
        self._tailed: dict[str, int] = {}
        # Writer thread only: the running tasks whose 'running' row it wrote, with the start
        # and attempt count that row shows (see running_rows).
        self._shown: dict[str, tuple[float | None, int]] = {}
        self._ended = False  # set by the loop before the run's end row is queued
        self._masker: Any = None

    def run_started(self, result: RunResult[Any], plan: Any) -> None:
        self._run_id = result.run_id
        self._masker = result.masker
        if plan is not None:
            self._push((PLAN, (result.run_id, plan)))
        self._push((START, (result.run_id, result.flow_name or self._flow, result.mode,
                            "running", result.started_at.timestamp(), HOST, os.getpid())))
        self._store._run_started(result.run_id, self)

    def task_started(self, result: RunResult[Any], record: TaskRecord) -> None:
        self._running[record.id if record.item is None else _row_id(record)] = record
        if not _usual_start(record):
            self._push(_task_row(result.run_id, record, None, None))
        # The usual start queues nothing: the writer makes the row of a task still running
        # at its next write (running_rows); most tasks end before and never get one.

    def running_rows(self, tasks: dict[str, dict[str, tuple[Any, ...]]]) -> None:
        """In the writer thread, once the queue is drained into ``tasks`` (a batch's rows, by
        run id and task id): add a 'running' row for each task running now that the file
        does not show as running yet.

        A task's final row is queued before its record leaves ``_running``, so a record seen
        here that is no longer running had its final row drained (now or before) and gets
        none; one running again after a final row of this batch (a retried group's next
        attempt) replaces it, keeping its stored output. Runs whose end is queued get none:
        their end rewrites every task that did not finish (``run_finished``)."""
        if self._ended:
            return
        run_id = self._run_id or ""
        shown = self._shown
        now = self._running.copy()  # the run adds and removes meanwhile
        rows = tasks.get(run_id) or {}
        for tid in [t for t in shown if t not in now]:
            del shown[tid]
        for tid, rec in now.items():
            if not _usual_start(rec):
                shown.pop(tid, None)
                continue
            mark = (rec.started_at, len(rec.attempts))
            old = rows.get(tid)
            if old is None and shown.get(tid) == mark:
                continue
            row = _running_row(run_id, rec)
            rows[tid] = row if old is None else (*row[:-1], old[-1])
            shown[tid] = mark
        if rows:  # (an empty entry would count the run in the batch)
            tasks[run_id] = rows

    def tails(self) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
        """In the writer thread: the running tasks whose log grew since last written, as
        ``(logs JSON, run id, task id)`` rows (secrets masked), and the line counts they
        hold (:meth:`tailed` once written). A browser shows them as the task's live tail."""
        rows: list[tuple[str, str, str]] = []
        counts: dict[str, int] = {}
        for tid, rec in self._running.copy().items():  # a copy: the run adds and removes
            logs = rec.logs
            if not logs or len(logs) == self._tailed.get(tid):
                continue
            n = counts[tid] = len(logs)
            rows.append((logs_json(list(logs[:n]), self._masker) or "", self._run_id or "", tid))
        return rows, counts

    def tailed(self, counts: dict[str, int]) -> None:
        self._tailed.update(counts)

    def task_finished(self, result: RunResult[Any], record: TaskRecord, output: Any) -> None:
        encoded = None
        if self._outputs and record.status is TaskStatus.COMPLETED:
            key = record.input_key  # a map child's: kept beside its output for a resume
            value = output if key is None else {CHILD_INPUT: key, "output": output}
            encoded = stored_json(value, result.masker, task_id=record.id)
        logs = None
        if record.logs:  # lines cost only the tasks that kept some
            logs = logs_json(record.logs, result.masker)
            self._logged[record.id] = len(record.logs)
        push = self._push
        push(_task_row(result.run_id, record, logs, encoded))
        for row in _attempt_rows(result.run_id, record):
            push(row)
        if record.item is None:
            self._done[record.id] = record.status
            self._running.pop(record.id, None)
        else:  # a pipeline item's row; its stage's summary is written at the run's end
            self._running.pop(_row_id(record), None)
        store = self._store
        # Wake the writer once when the queue fills (an Event.set per task would hand it
        # the GIL at every task).
        if len(store._queue) >= store.flush_rows and not store._wake.is_set():
            store._wake.set()

    def run_finished(self, result: RunResult[Any]) -> None:
        self._ended = True  # before the end row: the writer adds no 'running' row after it
        push = self._push
        # Rollback changes a finished task's status after task_finished, and so does a
        # retried group that resets a member which the run then stops before it runs again
        # (pending): write such a row again (a rolled-back output is gone too, so a resume
        # re-runs it).
        for r in result.tasks.values():
            # A record merged over items (pipeline) may hold lines its rows do not.
            if (self._done.get(r.id) is r.status and r.status is not TaskStatus.ROLLED_BACK
                    and r.rollback_error is None
                    and len(r.logs or ()) == self._logged.get(r.id, 0)):
                continue
            # Tasks reused by a resume keep their stored output, so a resumed run can be
            # resumed in turn.
            out = (stored_json(result.outputs[r.id], result.masker, task_id=r.id)
                   if self._outputs and r.status is
                   TaskStatus.COMPLETED and r.id in result.outputs else None)
            push(_task_row(result.run_id, r, logs_json(r.logs, result.masker), out))
            for row in _attempt_rows(result.run_id, r):
                push(row)
        etype, emsg = ((type(result.error).__qualname__, message_of(result.error))
                       if result.error is not None else (None, None))
        ended = result.started_at.timestamp() + result.duration
        # The status as plain text: the helper process takes plain values only (marshal).
        push((END, (getattr(result.status, "value", result.status), ended, result.duration,
                    etype, emsg, None, result.run_id)))
        self._store._run_ended(result.run_id)

    async def arun_finished(self, result: RunResult[Any]) -> None:
        """Wait, without blocking the event loop, until the run's rows are in the file; a
        write failure becomes ``result.history_error`` and a :class:`HistoryWarning`, never
        an exception."""
        store = self._store
        post = threadsafe_caller()
        if post is None:
            error = await anyio.to_thread.run_sync(store._settle, result.run_id)
        else:  # the writer thread writes the rows and wakes this task: no thread to start
            done = anyio.Event()
            box: list[HistoryError | None] = []

            def settled(err: HistoryError | None) -> None:
                box.append(err)
                post(done.set)

            store._settle_later(result.run_id, settled)
            await done.wait()
            error = box[0]
        if error is None:
            return
        result.history_error = error
        if logging_enabled():
            get_logger(run_id=result.run_id).error("history_error", error=str(error))
        warnings.warn(str(error), HistoryWarning, stacklevel=2)


#: Each status's text: a dict look-up (``TaskStatus.value`` is a Python-level property, run
#: for every row on the event loop).
_VALUE: dict[TaskStatus, str] = {s: s.value for s in TaskStatus}


def _usual_start(r: TaskRecord) -> bool:
    """Whether a record is running with no end time, error or reason: the writer makes its
    row (:func:`_running_row`), the loop queues none."""
    return (r.status is TaskStatus.RUNNING and r.ended_at is None and r.error is None
            and r.reason is None)


def _running_row(run_id: str, r: TaskRecord) -> tuple[Any, ...]:
    """A running task's row, made in the writer thread: what :func:`_task_row` gives for a
    record of :func:`_usual_start` (the fields read here do not change while it runs; the
    others are written as that state has them, so a record changing meanwhile never gives a
    torn row)."""
    return (run_id, _row_id(r), r.tool, "running", r.started_at, None, None, len(r.attempts),
            None, None, None, r.item, r.item_count, None, None)


def _row_id(r: TaskRecord) -> str:
    """A record's task id in history: ``stage@i`` for a pipeline stage's item ``i``."""
    return r.id if r.item is None else f"{r.id}@{r.item}"


def _task_row(run_id: str, r: TaskRecord, logs: str | None, output: str | None
              ) -> tuple[Any, ...]:
    err = r.error
    item = r.item
    return (run_id, r.id if item is None else f"{r.id}@{item}", r.tool, _VALUE[r.status],
            r.started_at, r.ended_at, r.duration, len(r.attempts), err.type if err else None,
            err.message if err else None, r.reason, item, r.item_count, logs, output)


def _attempt_rows(run_id: str, r: TaskRecord) -> Sequence[tuple[Any, ...]]:
    """The task's attempt rows; none for a task that completed at its first attempt, whose
    one attempt is its own row's (start, end, status): readers imply it (half the rows).
    None is the empty tuple, not a new list: most tasks have none, on the event loop."""
    atts = r.attempts
    if r.items is not None:  # a pipeline stage's summary: its item rows hold the calls
        return ()
    if len(atts) == 1:
        a = atts[0]
        if (a.status is TaskStatus.COMPLETED and r.status is TaskStatus.COMPLETED
                and a.started_at == r.started_at and a.ended_at == r.ended_at):
            return ()
    rows = []
    tid = _row_id(r)
    for a in atts:
        err = a.error
        rows.append((run_id, tid, a.number, r.tool, a.started_at, a.ended_at, a.duration,
                     _VALUE[a.status], err.type if err else None,
                     err.message if err else None))
    return rows
