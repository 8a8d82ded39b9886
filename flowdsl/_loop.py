"""The one backend-specific helper: run a callback on the current event loop, soon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sniffio

__all__ = ["call_soon"]


def call_soon(fn: Callable[[], None]) -> bool:
    """Run ``fn`` on this thread's event loop after the tasks already scheduled to run;
    returns False (and does nothing) outside an event loop."""
    try:
        lib = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    if lib == "trio":
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(fn)
    else:
        asyncio.get_running_loop().call_soon(fn)
    return True
