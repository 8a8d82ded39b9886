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

Inside a tool, :func:`get_logger` returns a logger bound to the run and the task; its lines
are also kept on the task's record (``TaskRecord.logs``, at most :data:`MAX_TASK_LOGS` per
task) and so reach history, timelines and the run browser, as are the tool's prints and
standard ``logging`` records (see :mod:`flowdsl._base.capture`).

``FLOWDSL_LOG``: ``1``/``true``/``info`` turns the events on as ``LEVEL flowdsl: event
key=value`` lines, ``debug`` also shows task starts, ``json`` writes one JSON object per line
(nothing else on the line) on the handler flowdsl adds.
"""

from __future__ import annotations

import contextvars
import json as _json
import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = [
    "MAX_LOG_LINE",
    "MAX_TASK_LOGS",
    "RunScope",
    "enable_logging",
    "engine_logger",
    "get_logger",
    "keep_line",
    "logging_enabled",
]

#: The most log lines kept on one task's record; later lines go to the logger only.
MAX_TASK_LOGS = 200
#: The most characters kept of one log line (a print of a whole file is cut there).
MAX_LOG_LINE = 2000
LOGGER_NAME = "flowdsl"
_TRUE = ("1", "true", "yes", "on", "json", "debug", "info")

_env = os.environ.get("FLOWDSL_LOG", "").lower()
_enabled = _env in _TRUE
_json_output = _env == "json"
_handler: logging.Handler | None = None  # the stderr handler flowdsl added, if any



class RunScope:
    """What the lines of one run's tasks need: its id, clock, secrets and event logger.

    Attributes:
        run_id: the run's id, bound to a tool's get_logger() events.
        masker: the run's secrets (None: none); the core updates it when items bring more.
        log: the run's engine logger, or None when the run logs no events.
        pending: partial lines (no newline yet) written by a task, by (id(record), stream);
            see :mod:`flowdsl._base.capture`.
    """

    __slots__ = ("_clock", "_offset", "_t0", "log", "masker", "pending", "run_id")

    def __init__(self, run_id: str, clock: Callable[[], float], t0: float,
                 masker: Any = None, log: Any = None) -> None:
        # The run's clock and start, not the core's bound method: a scope referring to the
        # core would tie it into a cycle and keep a finished run's memory until a GC pass.
        self.run_id = run_id
        self._clock = clock
        self._t0 = t0
        self._offset = time.monotonic() - (clock() - t0)
        self.masker = masker
        self.log = log
        self.pending: dict[tuple[int, str], tuple[Any, str]] = {}

    def now(self) -> float:
        """Seconds since the run started, from any thread: the run's clock where it can be
        read (its event loop's thread; any thread on asyncio), else the monotonic clock
        aligned with it (trio's clock is read only on its own thread)."""
        try:
            return self._clock() - self._t0
        except RuntimeError:
            return time.monotonic() - self._offset


# The task a tool call runs for: (its run's scope, its record, whether its prints and
# logging records are captured). Set by the core around each task's attempts while the
# run captures output or logs events; copied into worker threads with the context.
_current: contextvars.ContextVar[tuple[RunScope, Any, bool] | None] = (
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
    _handler = _Stderr()
    _handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.DEBUG if _env == "debug" else logging.INFO)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """A handler on whatever ``sys.stderr`` is when a line is written (as the standard
    library's last-resort handler), so a live progress display that takes stderr over
    gets flowdsl's own lines too."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Formatter(logging.Formatter):
    """``LEVEL flowdsl: event key=value`` lines, or one JSON object per line in JSON mode
    (``FLOWDSL_LOG=json``, ``enable_logging(json=True)``): the event's fields plus its
    level, logger and time, and nothing else on the line."""

    def format(self, record: logging.LogRecord) -> str:
        if not _json_output:
            return super().format(record)
        event = getattr(record, "flowdsl", None)
        data: dict[str, Any] = {"event": _plain(event.get("event")) if event is not None
                                else record.getMessage()}
        data["level"] = record.levelname.lower()
        data["logger"] = record.name
        data["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"
        if event is not None:
            data.update((k, _plain(v)) for k, v in event.items() if k != "event")
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _json.dumps(data, ensure_ascii=False)


# -- processors -----------------------------------------------------------------------------


def _add_task(logger: Any, method: str, event: MutableMapping[str, Any]
              ) -> MutableMapping[str, Any]:
    """Bind the run and task a tool's line belongs to, and keep the line on its record."""
    current = _current.get()
    if current is None:
        return event
    run, record, _ = current
    masker = run.masker
    if masker is not None:  # the run's secrets, masked before the line is kept or written
        for k, v in event.items():
            event[k] = masker.data(v)
    event.setdefault("run_id", run.run_id)
    event.setdefault("task", record.id)
    line = {"level": method if method != "exception" else "error",
            "event": _clip(_plain(event.get("event")))}
    line.update((k, _plain(v)) for k, v in event.items()
                if k not in ("run_id", "task", "event"))
    keep_line(run, record, line)
    return event


def keep_line(run: RunScope, record: Any, line: dict[str, Any]) -> None:
    """Keep ``line`` (level, event, ...; its time is added) on ``record``: at most
    :data:`MAX_TASK_LOGS` lines per task, then one line saying the rest were not kept."""
    logs = record.logs
    if logs is None:
        logs = record.logs = []
    n = len(logs)
    if n < MAX_TASK_LOGS:
        logs.append({"time": round(run.now(), 6), **line})
    elif n == MAX_TASK_LOGS:
        logs.append({"time": round(run.now(), 6), "level": "warning",
                     "event": f"more than {MAX_TASK_LOGS} log lines: the rest are not kept"})


def _clip(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_LOG_LINE:
        return f"{text[:MAX_LOG_LINE]}… ({len(text) - MAX_LOG_LINE} more characters not kept)"
    return text


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
    ``flowdsl.tools`` bound to the run and task ids (plus ``bound``), and they are kept on
    the task's record (``TaskRecord.logs``) unless the run or the tool opted out of
    capture (``run(capture_output=False)``, ``@tool(capture=False)``) with logging off.

    Example:
        >>> @tool
        ... def fetch(url: str) -> str:
        ...     log = flowdsl.get_logger()
        ...     log.info("fetching", url=url)   # run_id and task are added
        ...     ...

    .. versionadded:: 0.2
    """
    return _logger(f"{LOGGER_NAME}.tools", _add_task).bind(**bound)
