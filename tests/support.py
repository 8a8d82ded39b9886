"""Helpers shared by the runner test modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = dict(getattr(record, "flowdsl", {}))
        event["log_level"] = record.levelname.lower()
        event["logger"] = record.name
        self.events.append(event)


@contextmanager
def capture_events(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """The event dicts flowdsl logs through the standard library while the block runs, each
    with its ``log_level`` and ``logger`` name."""
    logger = logging.getLogger("flowdsl")
    handler, old = _Events(), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
