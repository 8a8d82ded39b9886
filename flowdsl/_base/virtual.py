"""Virtual time: an asyncio event loop whose clock jumps to the next timer when nothing is
runnable (trio's ``MockClock(autojump_threshold=0)``, for asyncio).

:func:`flowdsl.simulate` runs the real engine on it, with every tool call replaced by a
virtual sleep of its predicted duration; the differential test runs real flows on it. A
run then takes no wall time beyond its own work, and a task takes exactly its sleep: the
clock only moves when every coroutine waits for a timer.

Worker threads are the one thing such a clock cannot see: while a thread works (a history
or cache read through ``anyio.to_thread``) the loop has nothing runnable, and jumping would
make the thread's work look free *and* reorder it against timers. :func:`run_virtual` with
``count_threads=True`` counts those calls and makes the clock wait for real while any is in
flight; code that must be deterministic (``simulate``) does no thread work at all.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["VirtualLoop", "counting_threads", "run_virtual"]

#: Worker-thread calls in flight (see :func:`counting_threads`), and the trio clock of the
#: run in progress (its autojump is turned off while a thread works).
_BUSY = [0]
_CLOCK: list[Any] = [None]


class _JumpSelector(selectors.DefaultSelector):
    """A selector that, when nothing is ready and a timer is due later, moves its loop's
    virtual clock to that timer instead of sleeping. With no timer, or while a counted
    worker thread is busy (its answer comes through the loop's self-pipe), it waits for
    real."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None or timeout <= 0 or _BUSY[0]:
            return super().select(timeout)
        ready = super().select(0)
        if ready:
            return ready
        self.loop.virtual += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time, starting at 0.0 (``loop_factory`` for
    ``anyio.run(..., backend_options={"loop_factory": VirtualLoop})``)."""

    def __init__(self) -> None:
        sel = _JumpSelector()
        super().__init__(sel)
        sel.loop = self
        self.virtual = 0.0

    def time(self) -> float:
        return self.virtual


_to_thread = anyio.to_thread.run_sync


async def _counted_to_thread(*args: Any, **kwargs: Any) -> Any:
    _BUSY[0] += 1
    clock = _CLOCK[0]
    if clock is not None:
        clock.autojump_threshold = math.inf
    try:
        return await _to_thread(*args, **kwargs)
    finally:
        _BUSY[0] -= 1
        if clock is not None and not _BUSY[0]:
            clock.autojump_threshold = 0


@contextmanager
def counting_threads() -> Iterator[None]:
    """While inside, ``anyio.to_thread.run_sync`` calls are counted and virtual time stands
    still while one is in flight (a process-wide patch: for tests, one run at a time)."""
    anyio.to_thread.run_sync = _counted_to_thread  # type: ignore[assignment]
    try:
        yield
    finally:
        anyio.to_thread.run_sync = _to_thread


def run_virtual(fn: Callable[[], Any], backend: str = "asyncio", *,
                count_threads: bool = False) -> Any:
    """``anyio.run(fn)`` on virtual time: asyncio on a :class:`VirtualLoop`, or trio under
    ``MockClock(autojump_threshold=0)`` (trio must be installed). With ``count_threads``,
    worker-thread calls through anyio stop the clock while they run (see
    :func:`counting_threads`). Must be called with no event loop running in this thread
    (see :func:`flowdsl._base.loop.in_fresh_thread`)."""
    if backend not in ("asyncio", "trio"):
        msg = f"run_virtual(): backend={backend!r} is invalid: expected 'asyncio' or 'trio'"
        raise ValueError(msg)
    patch = counting_threads() if count_threads else _nothing()
    with patch:
        if backend == "trio":
            from trio.testing import MockClock

            clock = MockClock(autojump_threshold=0)
            _CLOCK[0] = clock if count_threads else None
            try:
                return anyio.run(fn, backend="trio", backend_options={"clock": clock})
            finally:
                _CLOCK[0] = None
        return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": VirtualLoop})


@contextmanager
def _nothing() -> Iterator[None]:
    yield


