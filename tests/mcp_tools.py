"""Tools and flows the MCP server tests serve (``flowdsl mcp serve --import mcp_tools``)."""

from __future__ import annotations

import os

import anyio

import flowdsl
from flowdsl import tool


@tool
def add(a: int, b: int = 1) -> int:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


@tool
async def nap(seconds: float, label: str = "nap") -> str:
    """Sleep, then say which nap ended."""
    await anyio.sleep(seconds)
    return label


@tool
def shout(text: str) -> dict[str, str]:
    """Upper-case a text."""
    return {"text": text.upper()}


@tool
def explode(reason: str) -> None:
    """Fail with the reason given."""
    raise RuntimeError(reason)


def sums(n: int, start: int = 0) -> flowdsl.Flow:
    """Add one to each of n numbers, side by side, and sum them up."""
    return flowdsl.Flow("sums", total([add(start + i) for i in range(n)]))


@tool
def total(values: list[int]) -> int:
    """Sum a list of numbers."""
    return sum(values)


slow_flow = flowdsl.Flow("slow_flow", nap(0.05, "a") | nap(0.05, "b") | nap(0.05, "c"))


def naps(first: float = 0.05, then: float = 30.0) -> flowdsl.Flow:
    """A short nap, then a long one (for cancelling a run half way)."""
    return flowdsl.Flow("naps", nap(first, "first") >> nap(then, "long"))


@tool
def where(variable: str) -> dict[str, str | None]:
    """The server's working directory and one of its environment variables."""
    return {"cwd": os.getcwd(), "value": os.environ.get(variable)}
