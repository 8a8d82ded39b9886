"""Long-lived worker threads for sync tools, with results handed back in batches.

One ``anyio.to_thread.run_sync`` per call costs a future, a limiter, a thread hand-off and a
loop wake-up of its own. Here the event loop puts calls on one queue that daemon worker
threads pull from. A finished call is appended to its event loop's *port*, and only the
first call finished since the loop last looked schedules a drain (``call_soon_threadsafe`` on
asyncio, ``run_sync_soon`` on trio): one loop wake-up per batch of results, not per call.

State of a call (:class:`_Call`), changed only under the pool's lock:
``QUEUED -> RUNNING -> DONE`` by a worker thread; ``QUEUED -> CANCELLED`` (it never runs) or
``RUNNING -> ABANDONED`` by the event loop when the awaiting task is cancelled (a timeout, a
stopped run). Threads cannot be interrupted: an abandoned call keeps its thread until it
returns, its result is dropped, and that thread then ends.

Thread accounting, also under the lock: ``busy`` counts calls queued or running (abandoned
ones excluded), ``threads`` the live threads not stuck in an abandoned call. A call that finds
``busy > threads`` starts one more thread while ``threads < limit``, so at most ``limit`` calls
run at once, and an abandoned thread is replaced instead of holding a slot.

Worker threads are daemon threads: a call abandoned for good (a hung socket, an endless loop)
never keeps the process alive once the program is done.
"""

from __future__ import annotations

import contextvars
import itertools
import queue
import sys
import threading
from asyncio import AbstractEventLoop, Future, _get_running_loop
from collections.abc import Callable
from functools import partial
from typing import Any

from .._base.log import _current as _task

__all__ = ["WorkerThreads"]

QUEUED, RUNNING, DONE, CANCELLED, ABANDONED = range(5)
_names = itertools.count(1)


class _Call:
    """One sync call on its way through the pool."""

    __slots__ = ("args", "ctx", "fn", "kwargs", "ok", "port", "state", "task_id", "thread",
                 "value", "waiter")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 task_id: str, port: _Port) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task_id = task_id
        self.port = port
        self.ctx = contextvars.copy_context()  # the caller's context variables, as to_thread
        self.state = QUEUED
        self.ok = False
        self.value: Any = None
        self.waiter: Any = None  # an asyncio Future or a trio Task; None once given up
        self.thread = ""


class _Port:
    """Where finished calls wait for one event loop; drained on that loop, a batch at once."""

    __slots__ = ("deliver", "done", "drain", "scheduled", "wake")

    def __init__(self, lock: threading.Lock, schedule: Callable[[Callable[[], None]], Any],
                 deliver: Callable[[_Call], None]) -> None:
        self.done: list[_Call] = []
        self.scheduled = False
        self.deliver = deliver

        def drain() -> None:
            with lock:
                batch, self.done = self.done, []
                self.scheduled = False
            for call in batch:
                deliver(call)

        self.drain = drain
        self.wake = partial(schedule, drain)


def _deliver_asyncio(call: _Call) -> None:
    fut: Future[Any] | None = call.waiter
    # A cancelled await left a cancelled future; its task, not yet resumed, still reads the
    # call's error from here (see WorkerThreads._give_up), which then lets the value go.
    if fut is not None and not fut.done():
        if call.ok:
            fut.set_result(call.value)
        else:
            fut.set_exception(call.value)
        call.value = None
    elif fut is None:
        call.value = None


def _trio_deliver() -> Callable[[_Call], None]:
    import outcome  # trio's own dependency: present whenever trio runs

    reschedule = sys.modules["trio"].lowlevel.reschedule
    value, error = outcome.Value, outcome.Error

    def deliver(call: _Call) -> None:
        task = call.waiter
        if task is not None:  # None: the task was cancelled and has moved on
            reschedule(task, value(call.value) if call.ok else error(call.value))
        call.value = None

    return deliver


class WorkerThreads:
    """A pool of at most ``limit`` daemon threads running sync calls for event loops.

    Opened by each run that uses it (:meth:`acquire`) and closed when the last one ends
    (:meth:`release`): its idle threads are then told to stop, without waiting for them.
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            msg = f"ThreadExecutor: max_workers={limit!r} is invalid: expected a whole number >= 1"
            raise ValueError(msg)
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._ports: dict[Any, _Port] = {}
        self.busy = 0
        self.threads = 0
        self._users = 0

    # -- lifecycle (event loop side) ---------------------------------------------------------
    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        with self._lock:
            stop, self.threads = self.threads, 0
            old, self._queue = self._queue, queue.SimpleQueue()
            self._ports.clear()
        # Each idle thread takes one stop mark; a fresh queue serves a later run, so no
        # thread started then can take a stale mark. Nothing waits for the threads here.
        for _ in range(stop):
            old.put(None)

    # -- calls (event loop side) ---------------------------------------------------------------
    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             task_id: str) -> Any:
        """An awaitable for ``fn(*args, **kwargs)`` run in a worker thread."""
        loop = _get_running_loop()
        if loop is not None:
            port = self._ports.get(loop)
            if port is None:
                port = self._ports[loop] = self._asyncio_port(loop)
            call = _Call(fn, args, kwargs, task_id, port)
            fut = call.waiter = loop.create_future()
            self._submit(call)
            return self._await_future(call, fut)
        return self._await_trio(fn, args, kwargs, task_id)

    def _asyncio_port(self, loop: AbstractEventLoop) -> _Port:
        return _Port(self._lock, loop.call_soon_threadsafe, _deliver_asyncio)

    async def _await_future(self, call: _Call, fut: Future[Any]) -> Any:
        try:
            return await fut
        except BaseException as exc:  # cancelled, or the call's own error
            failed = self._give_up(call, fut)
            if failed is None or failed is exc:
                raise
        # The tool had already raised when the cancel arrived: that failure happened, and is
        # what the awaiting task reports (it is not cancelled). Raised out here, so that the
        # cancellation does not become its __context__.
        raise failed

    async def _await_trio(self, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: dict[str, Any], task_id: str) -> Any:
        trio = sys.modules["trio"]  # no asyncio loop runs here: anyio runs trio
        token = trio.lowlevel.current_trio_token()
        port = self._ports.get(token)
        if port is None:
            port = self._ports[token] = _Port(self._lock, token.run_sync_soon, _trio_deliver())
        call = _Call(fn, args, kwargs, task_id, port)
        call.waiter = trio.lowlevel.current_task()

        def abort(_raise_cancel: Any) -> Any:
            with self._lock:
                # Already raised, its error waiting for the next drain: not cancelled, the
                # drain reschedules the task with that error.
                if call.state == DONE and not call.ok:
                    return trio.lowlevel.Abort.FAILED
            self._give_up(call)
            return trio.lowlevel.Abort.SUCCEEDED

        self._submit(call)
        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _submit(self, call: _Call) -> None:
        with self._lock:
            self.busy += 1
            grow = self.busy > self.threads and self.threads < self.limit
            if grow:
                self.threads += 1
        self._queue.put(call)
        if grow:
            threading.Thread(target=self._work, args=(self._queue.get,), daemon=True,
                             name=f"flowdsl-thread-{next(_names)}").start()

    def _give_up(self, call: _Call, fut: Future[Any] | None = None) -> BaseException | None:
        """The awaiting task was cancelled: the call never runs, or its thread is left to it.
        Returns the call's own error when it had already failed (asyncio: its future holds
        it, or it waits in the port for the next drain)."""
        failed: BaseException | None = None
        with self._lock:
            state = call.state
            if state == DONE and not call.ok:
                if call.value is not None:  # not delivered yet; the drain will skip it
                    failed = call.value
                elif fut is not None and fut.done() and not fut.cancelled():
                    failed = fut.exception()
            ctx = call.ctx  # the task's context (None once the call has returned)
            if state == QUEUED:
                call.state = CANCELLED
                self.busy -= 1
            elif state == RUNNING:
                call.state = ABANDONED
                self.busy -= 1
                self.threads -= 1  # the next call that needs a thread starts a new one
        call.waiter = None
        if state == DONE:
            call.value = None
        # The run's own event logger, from the task's scope: a run with log=True says so as
        # one with logging enabled globally does (and one with log=False does not).
        scope = ctx.get(_task) if state == RUNNING and ctx is not None else None
        log = scope[0].log if scope is not None else None
        if log is not None:
            log.warning(
                "task_thread_abandoned", task=call.task_id, thread=call.thread,
                reason="a sync call cannot be interrupted: its thread keeps running until the "
                       "call returns, and its result is discarded")
        return failed

    # -- worker threads ------------------------------------------------------------------------
    def _work(self, get: Callable[[], _Call | None]) -> None:
        lock = self._lock
        me = threading.current_thread().name
        while True:
            call = get()
            if call is None:  # the pool closed
                return
            with lock:
                if call.state != QUEUED:  # given up before it started
                    continue
                call.state = RUNNING
                call.thread = me
            try:
                call.value = call.ctx.run(call.fn, *call.args, **call.kwargs)
                call.ok = True
            except BaseException as exc:  # handed to the awaiting task, which re-raises it
                call.value = _raisable(exc, call.task_id)
            # released as soon as the call is done (its closure may hold big values); a done
            # call is never run again, so the fields are typed for the live call
            call.fn = call.args = call.kwargs = call.ctx = None  # type: ignore[assignment]
            port = call.port
            with lock:
                if call.state == ABANDONED:  # nobody waits; this thread no longer counts
                    call.value = None
                    return
                call.state = DONE
                self.busy -= 1
                port.done.append(call)
                wake = not port.scheduled
                port.scheduled = True
            if wake:
                try:
                    port.wake()
                except RuntimeError:  # the event loop has ended: nobody waits for results
                    pass


def _raisable(exc: BaseException, task_id: str) -> BaseException:
    # A future cannot carry StopIteration (it would end the awaiting coroutine instead), so
    # it travels as the RuntimeError a coroutine raising it would give (PEP 479).
    if isinstance(exc, StopIteration):
        err = RuntimeError(f"task {task_id!r}: its sync tool raised StopIteration")
        err.__cause__ = exc
        return err
    return exc
