"""OpenTelemetry tracing of a run: a span per run, a child span per attempt made current
while the tool runs (so the tool's own spans nest under it), pool waits as span events,
errors as exception events.

Spans go through the *global* tracer provider, as OpenTelemetry asks of libraries: the
application configures the SDK (or not). Without a configured provider, tracing is off and
costs one dictionary look-up per run: :func:`run_tracing` never imports OpenTelemetry when
the application has not imported it (an SDK provider cannot be set without importing
``opentelemetry.trace``), and with the API's default proxy provider it returns None, so the
core keeps ``tracing`` None and does no per-task work.

Ending an attempt's span waits for the core to settle the attempt's status (a timed-out
attempt is cancelled inside its call and only recorded as timed out after it): the spans are
ended when the task finishes (an observer), stamped with the attempt's own end time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from .executors import Executor
from .result import Attempt, ErrorInfo, RunResult, RunStatus, TaskRecord, TaskStatus

__all__ = ["Tracing", "run_tracing"]

_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER"  # the API loads a provider named there
_version: str | None = None


def _flowdsl_version() -> str:
    global _version
    if _version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            _version = version("flowdsl")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            _version = "0"
    return _version


def run_tracing() -> Tracing | None:
    """The tracing of a run about to start, or None when no tracer provider is configured
    (then nothing of OpenTelemetry is touched again during the run)."""
    trace: Any = sys.modules.get("opentelemetry.trace")
    if trace is None:
        if _ENV_PROVIDER not in os.environ:
            return None  # nobody imported the API: no provider can have been set
        try:
            import opentelemetry.trace as trace
        except ImportError:
            return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # the API's default: spans would be non-recording, skip them all
    tracer = trace.get_tracer("flowdsl", _flowdsl_version())
    if isinstance(tracer, trace.NoOpTracer):  # e.g. an SDK disabled by OTEL_SDK_DISABLED
        return None
    return Tracing(tracer, trace)


class Tracing:
    """One run's spans; also the run observer that ends them (see the module docstring)."""

    def __init__(self, tracer: Any, trace: Any) -> None:
        from opentelemetry import context

        self.tracer = tracer
        self.trace = trace
        self.context = context
        self.run_span: Any = None
        self.run_ctx: Any = None
        self.epoch_ns = 0  # wall-clock ns of the run clock's zero
        self.masker: Any = None
        # id(record) -> (record, [(attempt, span)]) still open, ended when the task finishes
        self.open: dict[int, tuple[TaskRecord, list[tuple[Attempt, Any]]]] = {}
        # task id -> (wait started, wait ended, demand): the pool wait the task's next
        # attempt span reports (taken in the same scheduler step the wait ended in)
        self.waits: dict[str, tuple[float, float, Mapping[str, int]]] = {}
        self.now: Any = None

    def attach(self, core: Any) -> None:
        """Hook into a core before its run starts: it calls :meth:`executor` per task, and
        its pools report waits."""
        self.now = core.now
        self.epoch_ns = time.time_ns() - int(core.now() * 1e9)
        self.masker = core.masker
        core.tracing = self
        core.pools = _TracedPools(core.pools, self)

    def _ns(self, t: float) -> int:
        return self.epoch_ns + int(t * 1e9)

    # -- the run observer ------------------------------------------------------------
    def run_started(self, result: RunResult[Any], plan: Any) -> None:
        # The caller's current span (a service's request) is the parent.
        attrs = {"flowdsl.run.id": result.run_id, "flowdsl.mode": result.mode,
                 "flowdsl.tasks": len(plan.order)}
        if result.flow_name:
            attrs["flowdsl.flow"] = result.flow_name
        self.run_span = span = self.tracer.start_span(
            f"flowdsl.run {result.flow_name}" if result.flow_name else "flowdsl.run",
            attributes=attrs)
        self.run_ctx = self.trace.set_span_in_context(span)

    def task_started(self, result: RunResult[Any], record: TaskRecord) -> None:
        pass

    def task_finished(self, result: RunResult[Any], record: TaskRecord, output: Any) -> None:
        entry = self.open.pop(id(record), None)
        if entry is not None:
            for att, span in entry[1]:
                self._end_attempt(att, span)

    def run_finished(self, result: RunResult[Any]) -> None:
        for _, spans in self.open.values():  # a run stopped hard: end what is left
            for att, span in spans:
                self._end_attempt(att, span)
        self.open.clear()
        span = self.run_span
        if span is None:
            return
        span.set_attribute("flowdsl.status", result.status.value)
        if result.status is not RunStatus.COMPLETED:
            err = result.error
            if err is not None:
                self._exception_event(span, ErrorInfo.from_exception(err, self.masker))
            self._error(span, f"the run {result.status.value}")
        span.end(end_time=self._ns(result.duration))

    # -- attempts --------------------------------------------------------------------
    def executor(self, ex: Executor, tid: str, task: Any, item: Any,
                 rec: TaskRecord) -> _TracedExecutor:
        """``ex`` for one task's attempts: each call runs under its attempt's span."""
        return _TracedExecutor(ex, self, tid, task.tool.name, item.index, rec,
                               self.waits.pop(tid, None) if self.waits else None)

    def start_attempt(self, tid: str, tool: str, index: int, rec: TaskRecord,
                      wait: tuple[float, float, Mapping[str, int]] | None) -> Any:
        att = rec.attempts[-1]
        attrs: dict[str, Any] = {"flowdsl.task.id": tid, "flowdsl.tool": tool,
                                 "flowdsl.attempt": att.number}
        if index >= 0:
            attrs["flowdsl.item"] = index
        span = self.tracer.start_span(f"flowdsl.task {tool}", context=self.run_ctx,
                                      attributes=attrs, start_time=self._ns(att.started_at))
        if wait is not None:
            began, ended, demand = wait
            span.add_event("flowdsl.pool_wait", {
                "flowdsl.pools": ",".join(f"{p}={n}" for p, n in demand.items()),
                "flowdsl.wait_s": ended - began}, timestamp=self._ns(ended))
        entry = self.open.get(id(rec))
        if entry is None:
            entry = self.open[id(rec)] = (rec, [])
        entry[1].append((att, span))
        return span

    def _end_attempt(self, att: Attempt, span: Any) -> None:
        status = att.status
        span.set_attribute("flowdsl.status", status.value)
        if status is TaskStatus.FAILED or status is TaskStatus.TIMED_OUT:
            if att.error is not None:
                self._exception_event(span, att.error)
            self._error(span, att.error.message if att.error is not None else status.value)
        end = att.ended_at if att.ended_at is not None else self.now()
        span.end(end_time=self._ns(end))

    def _exception_event(self, span: Any, error: ErrorInfo) -> None:
        """What ``span.record_exception`` records, from the run's error record: its message
        and traceback have the run's secrets masked."""
        span.add_event("exception", {"exception.type": error.type,
                                     "exception.message": error.message,
                                     "exception.stacktrace": error.traceback})

    def _error(self, span: Any, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, description))


class _TracedExecutor:
    """An executor for one task's attempts: each call opens its attempt's span and makes it
    current in the calling task, so a coroutine tool (awaited in that task) and a thread
    tool (its call carries a copy of the caller's context variables) run inside it."""

    __slots__ = ("abandons", "ex", "index", "name", "rec", "remote", "tid", "tool", "tracing",
                 "wait")

    def __init__(self, ex: Executor, tracing: Tracing, tid: str, tool: str, index: int,
                 rec: TaskRecord, wait: tuple[float, float, Mapping[str, int]] | None) -> None:
        self.ex = ex
        self.abandons = ex.abandons
        self.remote = ex.remote
        self.name = ex.name
        self.tracing = tracing
        self.tid = tid
        self.tool = tool
        self.index = index
        self.rec = rec
        self.wait = wait

    async def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   task_id: str) -> Any:
        tr = self.tracing
        span = tr.start_attempt(self.tid, self.tool, self.index, self.rec, self.wait)
        self.wait = None  # the wait came before the first attempt only
        token = tr.context.attach(tr.trace.set_span_in_context(span, tr.run_ctx))
        try:
            return await self.ex.call(fn, args, kwargs, task_id=task_id)
        finally:
            tr.context.detach(token)


class _TracedPools:
    """A run's pools, reporting each wait for units to the task's next attempt span."""

    def __init__(self, pools: Any, tracing: Tracing) -> None:
        self._pools = pools
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pools, name)

    async def acquire(self, demand: Mapping[str, int], priority: float = 0.0,
                      task_id: str | None = None) -> None:
        pools = self._pools
        # acquire's fast path, asked without taking: nobody queued and every pool has room
        # (the queue itself, not pools.waiting(), which copies it: O(1) per acquire)
        waits = bool(pools._grants.waiters) or any(
            pools.available(p) < n for p, n in demand.items())
        if not waits:
            await pools.acquire(demand, priority, task_id)
            return
        began = self._tracing.now()
        await pools.acquire(demand, priority, task_id)
        if task_id is not None:
            self._tracing.waits[task_id] = (began, self._tracing.now(), demand)

    def release(self, demand: Mapping[str, int]) -> None:
        self._pools.release(demand)
