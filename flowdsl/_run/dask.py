"""Run tasks on a dask.distributed cluster: the same flow, only the call is remote.

flowdsl's runner still decides *when* each task runs (trigger rules, conditions, pools,
critical-path order); :meth:`DaskExecutor.call` only submits the tool's function with its
resolved arguments to the cluster and waits until it is done there. It returns a
:class:`DaskRemote` handle around the dask ``Future`` rather than the value, so a downstream
task on the cluster receives the future and dask moves the data between workers; the core
fetches a handle only where a value is needed here (see ``flowdsl._run.core``).

Lifecycle: ``open()`` connects an asynchronous ``Client`` on the run's event loop (asyncio
only; dask's client is built on asyncio), starting a ``LocalCluster`` of worker processes
first when no cluster was given; ``close()`` cancels what is still in flight and shuts down
only what ``open()`` started. Submissions: the calls made within one event-loop iteration
(a layer of a graph released together) go to the scheduler as one graph, one
``update-graph`` message, each task keeping its own key and priority; a chain pays one
message per task, as it must. Completion is pushed by the scheduler (the future's state),
never polled. Faults: a timeout or a stopped run cancels the future (dask
cannot interrupt a function already running on a worker: its late result is discarded); a
worker that dies mid-task is rescheduled by dask itself (``distributed.scheduler.allowed-
failures``, 3 by default) and beyond that fails with ``KilledWorker``, which the core retries
like any other error. A cluster that closes or becomes unreachable fails the tasks waiting on
it at once with :class:`~flowdsl.WorkerLost` naming its address (every wait races the
client's connection state), instead of after dask's 30 s reconnect timeout; outputs left on
it are reported lost and the run fails.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from .._base.errors import SerializationError, WorkerLost
from .._graph.task import CtxRef, Ref, Task
from .._graph.walk import KEEP, transform
from .executors import Executor, Remote

__all__ = ["DaskExecutor", "DaskRemote"]

_INSTALL = "executor='dask' needs dask.distributed: pip install flowdsl[dask]"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # the extra is optional; say how to get it
        raise ImportError(_INSTALL) from exc
    return distributed


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Runs on a worker. Arguments travel as one tuple and one dict so a tool parameter named
    # like a submit() option (key, priority, pure, ...) never collides with it.
    return fn(*args, **kwargs)


async def _apply_async(fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
    # A coroutine function: dask workers await it on their own event loop.
    return await fn(*args, **kwargs)


class DaskRemote(Remote):
    """A task's output held on the cluster (a dask ``Future``)."""

    __slots__ = ("executor", "future")

    def __init__(self, future: Any, executor: DaskExecutor | None = None) -> None:
        self.future = future
        self.executor = executor

    async def fetch(self) -> Any:
        if self.executor is None:
            return await self.future
        return await self.executor._unless_lost(self.future.result(), self.future.key)

    @staticmethod
    async def fetch_all(handles: Sequence[DaskRemote]) -> list[Any]:
        """Fetch many handles in one round trip (the core uses it at the end of a run)."""
        if not handles:
            return []
        client = handles[0].future.client
        gather = client.gather([h.future for h in handles])
        ex = handles[0].executor
        if ex is None:
            return list(await gather)
        return list(await ex._unless_lost(gather, f"{len(handles)} output(s)"))

    def __repr__(self) -> str:
        return f"DaskRemote({self.future.key!r})"


def _unwrap(value: Any) -> Any:
    """Replace handles by their futures (inside any argument containers), so dask resolves
    them on the workers instead of here."""
    return transform(value, lambda v: v.future if isinstance(v, DaskRemote) else KEEP)


def _check_pickle(task_id: str, what: str, obj: Any) -> None:
    """Raise SerializationError naming the task if ``obj`` cannot go to a worker."""
    import cloudpickle

    distributed = _distributed()
    # Futures, handles and unresolved references are not sent as they are: skip them.
    skip = (distributed.Future, DaskRemote, Task, Ref, CtxRef)

    class _Probe(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types: Any
        def persistent_id(self, o: Any) -> Any:
            return "ref" if isinstance(o, skip) else None

    try:
        _Probe(io.BytesIO()).dump(obj)
    except Exception as exc:
        msg = (f"task {task_id!r}: its {what} cannot be sent to a dask worker "
               f"({type(exc).__name__}: {exc})")
        raise SerializationError(msg, task_id=task_id) from exc


class DaskExecutor(Executor):
    """Run tasks on a dask.distributed cluster.

    Args:
        cluster: where to run. ``None`` starts a ``LocalCluster`` of worker processes when a
            run opens the executor and closes it when the run ends; a scheduler address
            (``"tcp://host:8786"``), a ``distributed.Client`` or a cluster object
            (``LocalCluster``, anything with ``scheduler_address``) uses that cluster and
            leaves it running.
        n_workers: worker processes of the ``LocalCluster`` started for a run (default:
            one per core).
        threads_per_worker: threads per worker process of that ``LocalCluster`` (default 1:
            tools are CPU-bound Python).
        **cluster_options: more ``LocalCluster`` options (``memory_limit``, ...).

    Raises:
        ImportError: dask.distributed is not installed (``pip install flowdsl[dask]``).

    .. versionadded:: 0.1
    """

    name = "dask"
    #: A function running on a worker cannot be interrupted; a timed-out call is abandoned.
    abandons = True
    #: The core fetches this executor's results only where a value is needed locally.
    remote = True

    def __init__(self, cluster: Any = None, *, n_workers: int | None = None,
                 threads_per_worker: int = 1, **cluster_options: Any) -> None:
        _distributed()
        self.cluster = cluster
        self.cluster_options = {"n_workers": n_workers, "threads_per_worker": threads_per_worker,
                                **cluster_options}
        self.priorities: dict[str, float] = {}
        self._client: Any = None
        self._own_client = False
        self._own_cluster: Any = None
        self._users = 0
        self._inflight: set[Any] = set()
        self._checked: set[int] = set()
        # Submissions waiting for the next loop iteration, sent together by _flush().
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None
        self._batched = False  # this dask offers the one-graph submission (checked at open)
        self._token = ""  # per open(): with a counter, makes keys unique without a uuid each
        self._seq = itertools.count()
        # Resolved (with the reason) once the client loses its scheduler: every wait races it,
        # so a closed or unreachable cluster fails the run now, not after dask's reconnect
        # timeout (30 s by default).
        self._lost: asyncio.Future[str] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._address = ""

    def __repr__(self) -> str:
        where = "a LocalCluster per run" if self.cluster is None else repr(self.cluster)
        return f"DaskExecutor({where})"

    @property
    def client(self) -> Any:
        """The asynchronous ``distributed.Client`` of the run in progress (None outside)."""
        return self._client

    # -- lifecycle ---------------------------------------------------------------------
    def prepare(self, tasks: Mapping[str, Task[Any]], priorities: Mapping[str, float]) -> None:
        """Called by ``run()`` before anything starts: note the tasks' priorities and check
        that their functions and fixed arguments can be pickled.

        Raises:
            SerializationError: a task cannot be sent to a worker (names the task).
        """
        for tid, task in tasks.items():
            self.priorities[tid] = priorities.get(tid, 0.0)
            fn = task.tool.fn
            if id(fn) not in self._checked:
                _check_pickle(tid, f"function {getattr(fn, '__qualname__', fn)!r}", fn)
                self._checked.add(id(fn))
            _check_pickle(tid, "arguments", (task.args, task.kwargs))

    async def open(self) -> None:
        """Connect to the cluster (starting a LocalCluster first if none was given)."""
        from .._base.loop import current_loop

        if current_loop() != "asyncio":
            msg = ("executor='dask' runs on the asyncio backend only (dask's client is built "
                   "on asyncio): use run(..., backend='asyncio')")
            raise RuntimeError(msg)
        self._users += 1
        if self._client is not None:  # another run on this loop shares the connection
            return
        self._token = uuid.uuid4().hex
        self._batched = _can_batch()
        distributed = _distributed()
        target = self.cluster
        if target is None:
            opts = {k: v for k, v in self.cluster_options.items() if v is not None}
            # No dashboard, and the scheduler's HTTP routes on a free port: a run must not
            # collide with a cluster (or another run) already holding the default 8787.
            opts.setdefault("scheduler_kwargs", {"dashboard": False, "dashboard_address": ":0"})
            self._own_cluster = await distributed.LocalCluster(
                processes=True, dashboard_address=None, asynchronous=True, **opts)
            target = self._own_cluster
        if isinstance(target, distributed.Client) and target.asynchronous and _same_loop(target):
            self._client, self._own_client = target, False
            self._watch_client()
            return
        if isinstance(target, distributed.Client):
            address = target.scheduler.address
        elif isinstance(target, str):
            address = target
        else:
            address = target.scheduler_address
        # A client of our own on the run's event loop: futures are awaited without threads.
        self._client = await distributed.Client(address, asynchronous=True,
                                                set_as_default=False)
        self._own_client = True
        self._watch_client()

    def _watch_client(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._address = str(getattr(self._client.scheduler, "address", "") or "")
        self._watch = loop.create_task(self._watch_loop(self._client, self._lost))

    @staticmethod
    async def _watch_loop(client: Any, lost: asyncio.Future[str]) -> None:
        # The client offers no callback for a lost scheduler; its status says it within a
        # tick. One check every 0.1 s per run costs nothing next to a task's round trip.
        while client.status == "running":
            await asyncio.sleep(0.1)
        if not lost.done():
            lost.set_result(f"client status {client.status!r}")

    def _lost_error(self, task_id: str, why: str) -> WorkerLost:
        msg = (f"task {task_id!r}: the Dask cluster at {self._address or '?'} was closed or "
               f"lost ({why}); its work on the cluster is gone")
        return WorkerLost(msg, task_id=task_id)

    async def _unless_lost(self, awaitable: Any, task_id: str) -> Any:
        """Await ``awaitable`` unless the cluster is lost first (then WorkerLost)."""
        lost = self._lost
        if lost is None:
            return await awaitable
        if lost.done():
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise self._lost_error(task_id, lost.result())
        waiter = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((waiter, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        raise self._lost_error(task_id, lost.result())

    async def close(self) -> None:
        """Cancel futures still in flight; close what :meth:`open` started."""
        self._users = max(0, self._users - 1)
        if self._users or self._client is None:
            return
        client, self._client = self._client, None
        if self._flush_handle is not None:  # submissions not sent yet fail, not linger
            self._flush_handle.cancel()
            self._flush()
        lost = self._lost is not None and self._lost.done()
        if self._watch is not None:
            self._watch.cancel()
        self._watch = self._lost = None
        try:
            if self._inflight and not lost:
                futures, self._inflight = list(self._inflight), set()
                await client.cancel(futures, force=True)
            self._inflight = set()
            if self._own_client:
                # A client whose scheduler is gone would retry the connection first.
                await (client.close(timeout=2) if lost else client.close())
        finally:
            cluster, self._own_cluster = self._own_cluster, None
            if cluster is not None:
                await cluster.close()

    # -- calls -------------------------------------------------------------------------
    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, task_id: str) -> Any:
        """Submit ``fn(*args, **kwargs)`` to the cluster, wait until it is done there and
        return a :class:`DaskRemote` handle to its result (or raise its exception)."""
        client = self._client
        if client is None:
            msg = f"task {task_id!r}: DaskExecutor.call() before open()"
            raise RuntimeError(msg)
        args, kwargs = _unwrap(args), _unwrap(kwargs)
        apply = _apply_async if _is_async(fn) else _apply
        # Keys start with the tool's name, as Client.submit's do: the scheduler groups tasks
        # by that prefix (duration estimates, its idle check), so one prefix per flowdsl task
        # would leave it a group per task. The task id stays readable at the end.
        key = f"{_funcname(fn)}-{self._token}{next(self._seq)}-{task_id}"
        loop = asyncio.get_running_loop()
        entry = _Pending(task_id, key, apply, fn, args, kwargs,
                         self.priorities.get(task_id, 0.0), loop.create_future())
        self._pending.append(entry)
        if self._flush_handle is None:
            # After the other tasks released in this iteration have queued theirs.
            self._flush_handle = loop.call_soon(self._flush)
        future: Any = None
        try:
            future = await entry.waiter  # the dask Future, once sent (or the send's error)
            # distributed.wait() looks for a *default* client, which ours is not (a run must
            # not change what the user's own dask code talks to): wait on the future's state,
            # as wait() itself does, without fetching the value. The scheduler pushes the
            # state change; nothing is polled.
            await self._unless_lost(future._state.wait(), task_id)
        except BaseException:
            # A timeout or a stopped run: take the task off the cluster (or out of the batch
            # not sent yet: a cancelled waiter is skipped), then go on unwinding. Shielded, or
            # the cancellation would skip the cancel itself.
            if future is None and entry.waiter.done() and not entry.waiter.cancelled() \
                    and entry.waiter.exception() is None:
                future = entry.waiter.result()  # sent, but cancelled before we resumed
            if future is not None and not (self._lost is not None and self._lost.done()):
                with anyio.CancelScope(shield=True):
                    await client.cancel([future], force=True)
            raise
        finally:
            if future is not None:
                self._inflight.discard(future)
        status = future.status
        if status == "finished":
            return DaskRemote(future, self)
        if status == "cancelled" and client.status != "running":
            raise self._lost_error(task_id, f"client status {client.status!r}")
        if status == "error":
            await future  # re-raises the tool's exception with the worker's traceback
        msg = f"task {task_id!r}: its dask future ended as {status!r} (key {future.key})"
        raise RuntimeError(msg)

    def _flush(self) -> None:
        """Send the pending submissions: one graph for all of them where this dask allows,
        else one ``submit`` each. A batch that cannot be serialized is resent one by one, so
        only the task whose arguments do not pickle fails."""
        self._flush_handle = None
        batch = [e for e in self._pending if not e.waiter.done()]
        self._pending = []
        if not batch:
            return
        client = self._client
        if client is None:
            for e in batch:
                e.waiter.set_exception(RuntimeError(
                    f"task {e.task_id!r}: the dask executor closed before it was submitted"))
            return
        if len(batch) > 1 and self._batched:
            try:
                futures = self._send(client, batch)
            except Exception:  # one of them does not pickle: find out which below
                pass
            else:
                for e in batch:
                    self._resolve(e, futures[e.key])
                return
        for e in batch:
            try:
                future = (self._send(client, [e])[e.key] if self._batched else
                          client.submit(e.apply, e.fn, e.args, e.kwargs, pure=False, key=e.key,
                                        priority=e.priority))
            except Exception as exc:
                e.waiter.set_exception(_named(e, exc))
            else:
                self._resolve(e, future)

    def _resolve(self, entry: _Pending, future: Any) -> None:
        self._inflight.add(future)
        entry.waiter.set_result(future)

    def _send(self, client: Any, batch: Sequence[_Pending]) -> dict[str, Any]:
        """One ``update-graph`` message for the whole batch, built as ``Client.submit``
        builds its one-task graph; the per-key priorities travel as a key -> priority
        function (a scheduler-side annotation)."""
        from dask._expr import LLGExpr
        from dask._task_spec import Task, parse_input

        dsk = {e.key: Task(e.key, e.apply, parse_input(e.fn), parse_input(e.args),
                           parse_input(e.kwargs)) for e in batch}
        priorities = {e.key: e.priority for e in batch}
        expr = LLGExpr(dsk, _determ_token=f"{self._token}-{next(self._seq)}")
        futures: dict[str, Any] = client._graph_to_futures(
            expr, list(dsk), span_metadata={"collections": [{"type": "Future"}]},
            internal_priority=dict.fromkeys(dsk, 0),
            user_priority=priorities.__getitem__ if any(priorities.values()) else 0,
            fifo_timeout="100 ms")  # what submit() uses
        return futures


class _Pending:
    """A submission waiting for the next flush."""

    __slots__ = ("apply", "args", "fn", "key", "kwargs", "priority", "task_id", "waiter")

    def __init__(self, task_id: str, key: str, apply: Callable[..., Any],
                 fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 priority: float, waiter: asyncio.Future[Any]) -> None:
        self.task_id, self.key, self.apply, self.fn = task_id, key, apply, fn
        self.args, self.kwargs, self.priority, self.waiter = args, kwargs, priority, waiter


def _named(entry: _Pending, exc: Exception) -> Exception:
    """Arguments made at run time (upstream outputs) may not pickle: say which task's."""
    try:
        _check_pickle(entry.task_id, "arguments", (entry.args, entry.kwargs))
    except SerializationError as named:
        return named
    return exc


@functools.cache
def _can_batch() -> bool:
    """Whether this dask.distributed has what :meth:`DaskExecutor._send` builds on (private
    API, checked once per connection); without it each call is one ``Client.submit``."""
    import inspect

    try:
        from dask._expr import LLGExpr  # noqa: F401
        from dask._task_spec import Task, parse_input  # noqa: F401
        from distributed import Client

        params = inspect.signature(Client._graph_to_futures).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return {"expr", "span_metadata", "internal_priority", "user_priority",
            "fifo_timeout"} <= set(params)


def _funcname(fn: Any) -> str:
    from dask.utils import funcname

    return str(funcname(fn))


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _same_loop(client: Any) -> bool:
    import asyncio

    try:
        same: bool = client.loop.asyncio_loop is asyncio.get_running_loop()
        return same
    except (AttributeError, RuntimeError):
        return False
