"""The tools the benchmarks run. They live in an importable module because the process
executor pickles tools by reference (module + qualified name)."""

from __future__ import annotations

from typing import Any

import anyio

from flowdsl import tool

__all__ = ["burn", "burn_loops", "def_noop", "hop", "nap", "noop"]


@tool(registry=False)
async def nap(seconds: float, after: Any = None) -> None:
    """Sleep ``seconds`` (an I/O-bound task); ``after`` carries the dependencies."""
    await anyio.sleep(seconds)


@tool(registry=False)
async def noop(after: Any = None) -> None:
    """Do nothing: what is left of a run is the engine's own cost."""


@tool(registry=False)
def def_noop(after: Any = None) -> None:
    """Do nothing in a plain function: what a first flow of ``def`` tools pays per task
    (the thread executor by default)."""


@tool(registry=False)
async def hop(value: Any, seconds: float) -> Any:
    """A pipeline stage: sleep, then pass the item on."""
    await anyio.sleep(seconds)
    return value


def burn_loops(loops: int) -> int:
    """Pure-Python CPU work (holds the GIL the whole time)."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc


@tool(executor="process", registry=False)
def burn(loops: int, after: Any = None) -> int:
    """CPU-bound tool; per-task ``executor=`` chooses process, thread or inline."""
    return burn_loops(loops)
