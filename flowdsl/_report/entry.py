"""The public entry points ``run`` and ``arun``: the run's defaults, assembled at the top.

The run layer (:func:`flowdsl._run.api.execute`) knows no defaults: it takes a history store,
a result cache store and its observers as objects, or None for none. This module sits above
the record layer (the history and cache stores) and beside the progress display, so it is
where ``run()``'s options become those objects:

- ``history``: ``None`` the default store, a path or a store (:func:`flowdsl.open_history`,
  opened off the event loop), ``False`` none;
- ``cache``: the result cache store, opened only when a task of the plan is cached or
  ``cache=True`` (:data:`NO_CACHE`: none at all); the policy (``True``/``False``/``None``)
  goes down with it;
- ``progress``: the live display, one more observer;
- the fork helper: started first when the plan needs one (:attr:`Plan.needs_fork`), or when
  the default registry holds a process tool (``ToolRegistry.forks``: a later run will need
  it), before opening history or anything else of the run starts a thread (see
  ``flowdsl._run.zygote``).

A record or report module is imported only when an option asks for it, so a run with
``history=False, cache=False, progress=False`` loads none but this one. ``flowdsl.run`` and
``flowdsl.arun``, ``benchmark()``, the ``flowdsl`` command, the MCP server and
``flowdsl.compat`` all run flows through here.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar, overload

from .._base.typed import Unpack
from .._graph.registry import default_registry
from .._graph.task import Flow, Fragment, Task
from .._plan.planner import Plan, plan
from .._plan.policy import Mode
from .._run.api import execute, run_blocking
from .._run.caching import CacheBackend, RunCache
from .._run.events import EventConsumer
from .._run.executors import start_fork_helper
from .._run.options import RunOptions
from .._run.resources import Pools
from .._run.result import RunObserver, RunResult

__all__ = ["NO_CACHE", "arun", "run"]

R = TypeVar("R")

#: ``run(cache=NO_CACHE)``: no result cache at all, not even written (for benchmark(), whose
#: repeats must each do the whole work and leave no file behind). Internal, not public API.
NO_CACHE: Any = object()


# Typed as run() is: the result's output type follows the flow's, and the options are checked.
@overload
async def arun(flow: Task[R], **options: Unpack[RunOptions]) -> RunResult[R]: ...
@overload
async def arun(flow: Fragment[R] | Flow[R], **options: Unpack[RunOptions]) -> RunResult[R]: ...
@overload
async def arun(flow: Any, **options: Unpack[RunOptions]) -> RunResult[Any]: ...


async def arun(flow: Any, *, mode: str | Mode | None = None,
               context: Mapping[str, Any] | None = None, input: Any = None,
               items: Iterable[Any] | None = None, continue_on_error: bool = False,
               rollback_on_failure: bool = False, timeout: float | None = None,
               max_concurrency: int | None = None,
               resources: Mapping[str, int] | Pools | None = None, history: Any = None,
               resume: str | None = None, executor: Any = None,
               observers: Sequence[RunObserver | EventConsumer] = (),
               durations: Mapping[str, float] | None = None,
               rng: random.Random | None = None,
               sleep: Callable[[float], Awaitable[Any]] | None = None,
               log: bool | None = None, buffer: int = 2,
               store_outputs: bool | None = None, progress: bool = False,
               cache: Any = None, compensation_timeout: float | None = None,
               max_nodes: int | None = None, max_edges: int | None = None,
               keep_outputs: bool = True, capture_output: bool = True) -> RunResult[Any]:
    """Run ``flow`` and return its :class:`RunResult` (see :func:`run` for the options)."""
    given_plan = isinstance(flow, Plan)
    p = flow if given_plan else plan(flow, max_nodes=max_nodes, max_edges=max_edges)
    # While the process may still have one thread (see flowdsl._run.zygote): for this plan,
    # or for a later run of the process tools declared in the default registry (this run's
    # history writer and worker threads would make that later moment too late).
    if p.needs_fork or default_registry.forks:
        start_fork_helper()
    cache_store = _cache_store(p, cache)
    store = None if history is False else await _history(history)
    if progress:
        shown = _progress()
        if shown is not None:
            observers = [*observers, shown]
    return await execute(
        p, mode=mode, context=context, input=input, items=items,
        continue_on_error=continue_on_error, rollback_on_failure=rollback_on_failure,
        timeout=timeout, max_concurrency=max_concurrency, resources=resources,
        history_store=store, resume=resume, executor=executor, observers=observers,
        durations=durations, rng=rng, sleep=sleep, log=log, buffer=buffer,
        store_outputs=store_outputs, cache=cache if isinstance(cache, bool) else None,
        cache_store=cache_store, compensation_timeout=compensation_timeout,
        # a plan made here was checked against the limits while it was made
        max_nodes=max_nodes if given_plan else None, max_edges=max_edges if given_plan else None,
        keep_outputs=keep_outputs, capture_output=capture_output)


def _cache_store(p: Plan, cache: Any) -> CacheBackend | None:
    """The result cache store of a run of ``p``: None when no task of it is cached (then
    caching costs nothing and the record layer's cache module is not imported), when
    ``cache`` is :data:`NO_CACHE`, or when ``FLOWDSL_CACHE=off``."""
    if cache is NO_CACHE:  # benchmark()'s runs: no cache read or written, no file opened
        return None
    if cache is not None and not isinstance(cache, bool) and not hasattr(cache, "lookup") \
            and not isinstance(cache, (str, os.PathLike)):
        msg = (f"run(): cache={cache!r} is invalid: expected True, False, None, a path or a "
               "flowdsl.CacheStore")
        raise ValueError(msg)
    if not RunCache.wanted(p.tasks, cache is True):
        return None
    from .._record.cache import open_cache

    return open_cache(cache)


async def _history(spec: Any) -> Any:
    """The history store ``history=spec`` names (None: ``FLOWDSL_HISTORY=off``); opening one
    (SQLite, files) happens off the event loop."""
    from .._record.history import aopen_history

    return await aopen_history(spec)


def _progress() -> EventConsumer | None:
    from .progress import progress

    return progress()


def _in_notebook() -> bool:
    if "IPython" not in sys.modules:  # cheap check first: no IPython, no notebook
        return False
    from .progress import in_notebook

    return in_notebook()


# A Task is accepted wherever its value is for type checkers, so it gets an overload of its own.
@overload
def run(flow: Task[R], *, backend: str = "asyncio",
        **options: Unpack[RunOptions]) -> RunResult[R]: ...
@overload
def run(flow: Fragment[R] | Flow[R], *, backend: str = "asyncio",
        **options: Unpack[RunOptions]) -> RunResult[R]: ...
@overload
def run(flow: Any, *, backend: str = "asyncio",
        **options: Unpack[RunOptions]) -> RunResult[Any]: ...


def run(flow: Any, *, backend: str = "asyncio",
        **options: Unpack[RunOptions]) -> RunResult[Any]:
    """Run ``flow`` and block until it ends; returns its :class:`RunResult`.

    Works from plain code and from a thread whose event loop is already running (a notebook
    cell): then the run gets its own thread and event loop.

    Args:
        flow: a Flow, Fragment, Task, Tool or list (or a Plan).
        backend: ``"asyncio"`` or ``"trio"``.
        mode: ``"sequential"``, ``"parallel"`` (default), ``"pipeline"`` or
            ``"conditional"`` (or a :class:`Mode`).
        context: initial context (copied, never mutated).
        input: the value the first pipeline stages receive.
        items: values to stream through a pipeline (``mode="pipeline"``).
        continue_on_error: the run goes on after a failure: each downstream task applies
            its trigger rule (the default ``all_success`` makes it ``upstream_failed``;
            ``all_done`` and ``one_failed`` tasks run); independent branches go on.
        rollback_on_failure: if the run fails, is cancelled or times out, undo completed
            tasks (their tools' ``rollback``) in reverse completion order. A failed run whose
            rollbacks all succeeded ends ``rolled_back``; one where a rollback raised ends
            ``rollback_failed``, with ``result.compensation_error`` grouping those errors.
        compensation_timeout: seconds each rollback may take (a late one is abandoned and
            recorded as a rollback error).
        max_nodes, max_edges: refuse a flow with more tasks or edges
            (:class:`~flowdsl.GraphTooLargeError`) before anything runs.
        timeout: seconds for the whole run.
        max_concurrency: most tasks running at once (parallel default 1000).
        resources: pool capacities (``{"db": 2}``) or a shared :class:`Pools`.
        history: ``None`` default store, ``False`` none, a path or a HistoryStore.
        resume: an earlier run's id: reuse its stored outputs, run only the rest.
        executor: ``"dask"`` or an Executor object: runs the sync tools there (a cluster
            runs coroutine tools too; ``inline`` tools always stay on the event loop).
        observers: hooks called as tasks start and finish (``RunObserver`` objects), and
            consumers of the run's event stream: callables given each batch of
            :class:`flowdsl.Event`, in order, in a thread of the run's (see the how-to
            "Watch a run's events").
        durations: task id -> seconds, for critical-path priority.
        rng, sleep: a seeded RNG for backoff jitter and a sleep function (tests).
        log: emit structlog events (default: :func:`flowdsl.enable_logging`).
        capture_output: keep each task's prints (stdout, stderr) and standard ``logging``
            records on its record (``TaskRecord.logs``: history, timelines, the run
            browser), capped and with secrets masked; they still reach the terminal. ``False``
            keeps only ``flowdsl.get_logger()`` lines, and those only with ``log`` on. A tool
            opts out alone with ``@tool(capture=False)``.
        buffer: pipeline buffer size between stages.
        keep_outputs: for a pipeline over ``items``: keep each item's sink outputs in the
            result (``output``, ``outputs``; the default) or none (``False``). Either way an
            item's other outputs and its state are released once every task finished it,
            so memory stays flat however many items stream through.
        progress: show live progress (a terminal display, or a bar in a notebook, where
            ``run`` turns it on by default; needs ``flowdsl[cli]``).
        store_outputs: store task outputs (JSON) in history, so the run can be resumed
            (default: the store's setting, off unless the store was opened with it).
        cache: ``None`` (default) uses the result cache of the tools declared with
            ``cache=``; ``True`` caches every task of the run whose arguments can be hashed;
            ``False`` does not read the cache (results are still written); a path or a
            :class:`~flowdsl.CacheStore` keeps the declared tools' entries there. Entries
            live in their own SQLite file, independent of ``history=``: by default
            ``cache.db`` beside the default history file (``FLOWDSL_CACHE`` names another
            path, or ``off``). A failed cache write sets ``result.cache_error`` and warns.

    Raises:
        PlanError: the flow cannot run (cycle, duplicate ids, unknown pool, ...); nothing ran.
        ValueError: an option value is invalid.
    """
    if options.get("progress") is None and _in_notebook():
        options["progress"] = True  # long notebook runs show a progress bar by default
    return run_blocking(partial(arun, flow, **options), backend)
