"""Helpers shared by the runner test modules."""

from __future__ import annotations

from typing import Any

import flowdsl
from flowdsl import tool

MODES = ["sequential", "parallel", "pipeline", "conditional"]


def tl(fn: Any = None, /, **options: Any) -> Any:
    """@tool without touching the default registry."""
    return tool(fn, registry=False, **options)


def run(flow: Any, **options: Any) -> flowdsl.RunResult:
    """flowdsl.run without history, unless a test asks for it."""
    options.setdefault("history", False)
    return flowdsl.run(flow, **options)
