"""The options of a run as type checkers and IDEs see them.

``run(flow, **options)`` and ``benchmark(flow, **run_options)`` pass their options on to
:func:`flowdsl.arun`; typed ``**options: Unpack[RunOptions]``, each option is completed by an
IDE and a misspelt one (``mod="parallel"``) or a value of the wrong kind is a type error.
The keys are exactly ``arun``'s keyword parameters (tests/test_typing.py checks it; ``arun``'s
overloads make mypy check the value types against its parameters).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from .._plan.policy import Mode
from .events import EventConsumer
from .resources import Pools
from .result import RunObserver

__all__ = ["BenchmarkRunOptions", "ModeName", "RunOptions"]

#: The modes by name (``Mode`` has the same four as members).
ModeName = Literal["sequential", "parallel", "pipeline", "conditional"]


class BenchmarkRunOptions(TypedDict, total=False):
    """The options of :func:`flowdsl.benchmark`'s runs: a run's, less those it sets itself
    (``mode``, ``cache``) or refuses (``history``, ``resume``: repeats must not depend on
    each other)."""

    context: Mapping[str, Any] | None
    input: Any
    items: Iterable[Any] | None
    continue_on_error: bool
    rollback_on_failure: bool
    timeout: float | None
    max_concurrency: int | None
    resources: Mapping[str, int] | Pools | None
    executor: Any  # "dask" or an Executor object
    observers: Sequence[RunObserver | EventConsumer]
    durations: Mapping[str, float] | None
    rng: random.Random | None
    sleep: Callable[[float], Awaitable[Any]] | None
    log: bool | None
    buffer: int
    store_outputs: bool | None
    progress: bool
    compensation_timeout: float | None
    max_nodes: int | None
    max_edges: int | None
    keep_outputs: bool
    capture_output: bool


class RunOptions(BenchmarkRunOptions, total=False):
    """The keyword options of :func:`flowdsl.run` (and :func:`flowdsl.arun`), described in
    :func:`flowdsl.run`'s documentation."""

    mode: ModeName | Mode | None
    history: Any  # None (the default store), False (none), a path or a HistoryStore
    resume: str | None
    cache: Any  # None, True, False, a path or a CacheStore
