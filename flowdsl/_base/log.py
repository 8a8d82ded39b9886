"""Logging: structlog events rendered into the standard library's ``flowdsl`` logger.

Runs are silent unless logging is turned on (``FLOWDSL_LOG=1``, ``run(..., log=True)`` or
:func:`enable_logging`). The engine checks one flag before building any event, so a run with
logging off pays nothing per task. Events are snake_case facts bound with ``run_id`` and
``task``, logged at a level that fits them (failures ``error``, retries ``warning``, task
starts ``debug``, the rest ``info``), rendered by structlog (``key=value`` text or JSON) and
handed to ``logging.getLogger("flowdsl")``: a user's handlers, levels and formats apply. When
neither that logger nor the root logger has a handler, turning logging on adds one that
writes to stderr.

flowdsl never calls ``structlog.configure()``: its loggers carry their own processors.

Inside a tool, :func:`get_logger` returns a logger bound to the run and the task; while
logging is on, its lines are also kept on the task's record (``TaskRecord.logs``, at most
:data:`MAX_TASK_LOGS` per task) and so reach history and timelines.
"""

from __future__ import annotations

import contextvars
import json as _json
import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = [
    "MAX_TASK_LOGS",
    "enable_logging",
    "end_task_scope",
    "engine_logger",
    "get_logger",
    "logging_enabled",
    "task_scope",
]

#: The most log lines kept on one task's record; later lines go to the logger only.
MAX_TASK_LOGS = 200
LOGGER_NAME = "flowdsl"
_TRUE = ("1", "true", "yes", "on", "json", "debug", "info")

_env = os.environ.get("FLOWDSL_LOG", "").lower()
_enabled = _env in _TRUE
_json_output = _env == "json"
_handler: logging.Handler | None = None  # the stderr handler flowdsl added, if any

# The task a tool call runs for: (run id, its record, the run's clock). Set by the core
# around each call only while logging is on; copied into worker threads by anyio.
_current: contextvars.ContextVar[tuple[str, Any, Callable[[], float], Any] | None] = (
    contextvars.ContextVar("flowdsl_task", default=None))


def enable_logging(enabled: bool = True, *, json: bool | None = None,
                   level: int | str | None = None) -> None:
    """Turn flowdsl's log events on (or off) for the runs started afterwards.

    Args:
        enabled: on or off.
        json: render each event as one JSON object instead of ``event key=value`` text.
        level: the level of the ``flowdsl`` logger (``"DEBUG"`` shows task starts too).

    The events go to the standard library logger ``flowdsl``. If no handler would receive
    them (none on it, none on the root logger), a stderr handler is added, once.

    .. versionchanged:: 0.2 events go through the standard library ``logging`` module.
    """
    global _enabled, _json_output
    _enabled = enabled
    if json is not None:
        _json_output = json
    logger = logging.getLogger(LOGGER_NAME)
    if level is not None:
        logger.setLevel(level)
    if enabled:
        _ensure_handler(logger)


def logging_enabled() -> bool:
    """Whether runs emit log events unless told otherwise (``run(log=...)``)."""
    return _enabled


def _ensure_handler(logger: logging.Logger) -> None:
    global _handler
    if _handler is not None or logger.handlers or logging.getLogger().handlers:
        return
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


# -- processors -----------------------------------------------------------------------------


def _add_task(logger: Any, method: str, event: MutableMapping[str, Any]
              ) -> MutableMapping[str, Any]:
    """Bind the run and task a tool's line belongs to, and keep the line on its record."""
    current = _current.get()
    if current is None:
        return event
    run_id, record, now, masker = current
    if masker is not None:  # the run's secrets, masked before the line is kept or written
        for k, v in event.items():
            event[k] = masker.data(v)
    event.setdefault("run_id", run_id)
    event.setdefault("task", record.id)
    logs = record.logs
    if logs is None:
        logs = record.logs = []
    if len(logs) < MAX_TASK_LOGS:
        line = {"time": round(now(), 6), "level": method if method != "exception" else "error",
                "event": _plain(event.get("event"))}
        line.update((k, _plain(v)) for k, v in event.items()
                    if k not in ("run_id", "task", "event"))
        logs.append(line)
    elif len(logs) == MAX_TASK_LOGS:
        logs.append({"time": round(now(), 6), "level": "warning",
                     "event": f"more than {MAX_TASK_LOGS} log lines: the rest are not kept"})
    return event


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """The message text for the standard library (``event key=value`` or JSON); the event
    itself travels on the log record as ``record.flowdsl``, for handlers that want data."""
    if _json_output:
        data = {"event": _plain(event.get("event"))}
        data.update((k, _plain(v)) for k, v in event.items() if k != "event")
        text = _json.dumps(data, ensure_ascii=False)
    else:
        name = event.get("event", "")
        text = " ".join([str(name), *(f"{k}={_kv(v)}" for k, v in event.items()
                                       if k != "event")])
    return {"msg": text, "extra": {"flowdsl": dict(event)}}


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text) if (not text or any(c.isspace() for c in text)) else text


def _logger(name: str, *processors: Any) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name), wrapper_class=structlog.stdlib.BoundLogger,
        processors=[*processors, structlog.stdlib.filter_by_level, _render])


def engine_logger(**bound: Any) -> Any:
    """The engine's own event logger (``flowdsl``), bound to ``bound`` (the run id); a run
    with logging on makes sure its events reach stderr when no handler would take them."""
    _ensure_handler(logging.getLogger(LOGGER_NAME))
    return _logger(LOGGER_NAME).bind(**bound)


def get_logger(**bound: Any) -> Any:
    """A logger for code inside a tool: its events go to the standard library logger
    ``flowdsl.tools`` bound to the run and task ids (plus ``bound``), and while logging is
    on they are kept on the task's record (``TaskRecord.logs``).

    Example:
        >>> @tool
        ... def fetch(url: str) -> str:
        ...     log = flowdsl.get_logger()
        ...     log.info("fetching", url=url)   # run_id and task are added
        ...     ...

    .. versionadded:: 0.2
    """
    return _logger(f"{LOGGER_NAME}.tools", _add_task).bind(**bound)


def task_scope(run_id: str, record: Any, now: Callable[[], float],
               masker: Any = None) -> contextvars.Token[Any]:
    """Mark the code that runs from here (a tool call) as the task of ``record``, whose run
    masks its secrets with ``masker`` (None: it has none); pass the token to
    :func:`end_task_scope` afterwards (the core does both)."""
    return _current.set((run_id, record, now, masker))


def end_task_scope(token: contextvars.Token[Any]) -> None:
    """Undo :func:`task_scope`."""
    _current.reset(token)
