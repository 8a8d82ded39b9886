"""Logging: structlog events, silent unless the user turns them on.

The engine checks one flag before building any event, so a run with logging off pays nothing
per task. Events are snake_case facts bound with ``run_id`` and ``task``.
"""

from __future__ import annotations

import os
from typing import Any

import structlog

__all__ = ["enable_logging", "get_logger", "logging_enabled"]

_enabled = os.environ.get("FLOWDSL_LOG", "").lower() in ("1", "true", "yes", "on")


def enable_logging(enabled: bool = True) -> None:
    """Turn flowdsl's structlog events on (or off) for the runs started afterwards.

    The events go wherever structlog is configured to send them; flowdsl never calls
    ``structlog.configure()`` itself.
    """
    global _enabled
    _enabled = enabled


def logging_enabled() -> bool:
    return _enabled


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("flowdsl").bind(**bound)
