"""Small tools flowdsl itself composes with (the gate behind :func:`flowdsl.branch`)."""

from __future__ import annotations

from typing import Any

from ._tool import tool

__all__ = ["gate"]


@tool(executor="inline", registry=False, name="gate")
def gate(value: Any = None, label: str = "") -> Any:
    """Pass the value through; its condition decides whether the path after it runs."""
    return value
