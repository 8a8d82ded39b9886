"""The one backend-specific helper: which event loop runs this thread, and a callback on it.

anyio hides the backend everywhere else; these two need it, and work without sniffio (anyio
no longer depends on it).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["call_soon", "current_loop", "in_fresh_thread", "loop_clock", "threadsafe_caller"]


def current_loop() -> str | None:
    """``"asyncio"`` or ``"trio"`` when an event loop runs in this thread, else ``None``."""
    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")  # trio cannot be running if it was never imported
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
            return "trio"
        except RuntimeError:
            pass
    return None


def call_soon(fn: Callable[[], None]) -> bool:
    """Run ``fn`` on this thread's event loop after the tasks already scheduled to run;
    returns False (and does nothing) outside an event loop."""
    loop = current_loop()
    if loop == "asyncio":
        asyncio.get_running_loop().call_soon(fn)
    elif loop == "trio":
        sys.modules["trio"].lowlevel.current_trio_token().run_sync_soon(fn)
    else:
        return False
    return True


def loop_clock() -> Callable[[], float]:
    """The clock of this thread's event loop (seconds; the loop's own, so a virtual clock
    such as trio's ``MockClock`` is honoured), else :func:`time.perf_counter`."""
    loop = current_loop()
    if loop == "asyncio":
        running = asyncio.get_running_loop()
        if type(running).time is asyncio.BaseEventLoop.time:
            return time.monotonic  # what the standard loops read, without their extra frame
        return running.time
    if loop == "trio":
        trio_time: Callable[[], float] = sys.modules["trio"].current_time
        return trio_time
    return time.perf_counter


def threadsafe_caller() -> Callable[[Callable[[], None]], object] | None:
    """A function that runs a callback on this thread's event loop and may be called from
    any thread (so a thread can wake a waiting task); ``None`` outside an event loop."""
    loop = current_loop()
    if loop == "asyncio":
        return asyncio.get_running_loop().call_soon_threadsafe
    if loop == "trio":
        token = sys.modules["trio"].lowlevel.current_trio_token()
        run_sync_soon: Callable[[Callable[[], None]], object] = token.run_sync_soon
        return run_sync_soon
    return None


def in_fresh_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread of its own, joined before returning (its result or its
    exception): how code that starts an event loop runs from a thread whose loop is
    already running (a notebook cell)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="flowdsl-virtual")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
