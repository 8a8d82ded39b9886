"""Module-level tools for tests/test_dask.py: what dask workers run.

They return what they observed on the worker (its pid, the task's priority, wall-clock
spans), since side effects on a worker never reach the test process. Attempt counters live
in files because each attempt may run in another worker process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from flowdsl import tool

__all__ = ["add", "attempt", "boom", "cached_pid", "count", "flaky", "inc", "lock", "nap",
           "pair", "pid", "priority", "span", "suicide_once", "total"]


@tool(registry=False)
def inc(x: int) -> int:
    """x + 1."""
    return x + 1


@tool(registry=False)
def add(a: int, b: int = 0) -> int:
    """a + b."""
    return a + b


@tool(registry=False)
def total(values: list[int]) -> int:
    """The sum of a list (a pipeline stage with several upstream stages)."""
    return sum(values)


@tool(registry=False)
def count(a: Any = None, b: Any = None) -> int:
    """How many inputs are not None (a join after a failed upstream gets None)."""
    return sum(v is not None for v in (a, b))


@tool(registry=False)
def pair(x: int) -> dict[str, int]:
    """A dict output, for projections and to_context mappings."""
    return {"k": x, "j": x * 2}


@tool(registry=False)
async def nap(seconds: float, value: Any = None) -> Any:
    """A coroutine tool: sleep, then return ``value``."""
    await anyio.sleep(seconds)
    return value


@tool(registry=False)
def pid(after: Any = None) -> int:
    """The id of the process the call ran in."""
    return os.getpid()


@tool(registry=False, executor="inline")
def pid_here(after: Any = None) -> int:
    """The id of the process the call ran in; inline, so it never leaves the event loop."""
    return os.getpid()


@tool(registry=False)
def priority() -> Any:
    """The dask priority of the running task, as the worker sees it."""
    from distributed import get_worker
    from distributed.worker import thread_state

    return get_worker().state.tasks[thread_state.key].priority


@tool(registry=False)
def span(seconds: float, name: str) -> tuple[str, float, float]:
    """Sleep in the worker thread; return (name, start, end) in wall-clock time."""
    start = time.time()
    time.sleep(seconds)
    return name, start, time.time()


@tool(registry=False)
def boom(message: str) -> None:
    """Raise ValueError(message) on the worker."""
    raise ValueError(message)


def attempt(counter: str) -> int:
    """Count one more attempt in the file ``counter``; return the count (1 first)."""
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


@tool(registry=False)
def flaky(counter: str, fail_times: int) -> int:
    """Fail the first ``fail_times`` attempts (ConnectionError), then return the count."""
    n = attempt(counter)
    if n <= fail_times:
        msg = f"attempt {n} fails"
        raise ConnectionError(msg)
    return n


@tool(registry=False)
def suicide_once(counter: str) -> int:
    """Kill the worker process running it on the first call; return the call count after."""
    n = attempt(counter)
    if n == 1:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached: the process is gone
    return n


@tool(registry=False)
def lock() -> Any:
    """A value that cannot be pickled."""
    return threading.Lock()


@tool(registry=False, cache=True)
def cached_pid(x: int) -> dict[str, int]:
    """Cached: which process computed ``x`` (a hit returns the first run's pid)."""
    return {"x": x, "pid": os.getpid()}
