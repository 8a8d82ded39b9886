"""The tools benchmarks/mcp_bench.py serves with ``flowdsl mcp serve``."""

from __future__ import annotations

import anyio

from flowdsl import tool


@tool(executor="inline")
def ping(x: int) -> int:
    """Answer at once with the number given."""
    return x


@tool
async def snooze(seconds: float, x: int = 0) -> int:
    """Sleep, then answer with the number given."""
    await anyio.sleep(seconds)
    return x
