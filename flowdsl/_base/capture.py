"""A tool's prints and standard ``logging`` records, kept with the task that made them, and
kept off a live progress display's lines.

The core marks each task's attempts with :func:`task_scope` (a context variable naming the
run, the task's record and whether its output is captured). While at least one run captures
(:func:`acquire` ... :func:`release`, reference-counted), ``sys.stdout`` and ``sys.stderr``
are :class:`_Tee` proxies and a log record factory is chained in front of the standard
library's:

- a write from a capturing task is split into lines, masked with the run's secrets, cut to
  :data:`~flowdsl._base.log.MAX_LOG_LINE` characters and kept on the task's record
  (:attr:`TaskRecord.logs`, at most :data:`~flowdsl._base.log.MAX_TASK_LOGS` lines), and
  still reaches the stream it was written to (tee);
- a log record made inside a capturing task (at a level its logger enables) is kept the
  same way; the record then goes on to the user's handlers as usual. flowdsl's own loggers
  are left out (``get_logger()`` lines are kept by its own processor).

The context variable is copied into the worker threads of thread tools and inherited by the
coroutines of async tools, so both are captured. Process tools run in another process (and
dask tools on workers): their prints go to that process's stdout and are not captured.

While a live display is attached (:func:`attach_display`), every write, from a task or not,
is cut into whole lines and handed to the display, which prints them above itself; stream
handlers of ``logging`` that write to the terminal are pointed at the proxies meanwhile, so
log lines go above it too.

A run that captures nothing pays one context variable set and reset per task; a write outside
any task pays one context variable read.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from .log import MAX_LOG_LINE, RunScope, _clip, keep_line
from .log import _current as current

__all__ = ["acquire", "attach_display", "current", "detach_display", "end_task_scope",
           "flush_task", "real_stream", "release", "shown", "task_scope"]

_lock = threading.RLock()
_users = 0  # runs and displays that need the proxies now
_installed: dict[str, _Tee] = {}
_previous_factory: Callable[..., logging.LogRecord] | None = None
# While a live display is attached: where whole lines go, and the partial lines written so
# far, by (id(record) or 0 outside any task, stream).
_display: Callable[[str], None] | None = None
shown: dict[tuple[int, str], str] = {}
_swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
_LEVEL = {"stdout": "info", "stderr": "warning"}


def task_scope(run: RunScope, record: Any, capture: bool) -> contextvars.Token[Any]:
    """Mark the code that runs from here (a task's attempts) as the task of ``record`` in
    ``run``; ``capture``: its prints and logging records are kept too. Pass the token to
    :func:`end_task_scope` afterwards (the core does both)."""
    return current.set((run, record, capture))


def end_task_scope(token: contextvars.Token[Any]) -> None:
    """Undo :func:`task_scope`; a last line the task printed with no newline is kept (and
    shown above a live display) now."""
    scope = current.get()
    current.reset(token)
    if scope is not None:
        flush_task(scope[0], scope[1])


def flush_task(run: RunScope, record: Any) -> None:
    """Keep (and show above a live display) the last line ``record``'s task wrote with no
    newline; called as its scope ends."""
    if run.pending:
        _flush_kept(run, record)
    if shown:
        _flush_shown(id(record))


# -- installing the proxies ------------------------------------------------------------------


def acquire() -> None:
    """One more run (or display) needs the proxies: install them if none is there."""
    global _users, _previous_factory
    with _lock:
        _users += 1
        if _users > 1:
            return
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, _Tee):
                tee = _installed[name] = _Tee(stream, name)
                setattr(sys, name, tee)
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_record_factory)


def release() -> None:
    """A run (or display) is done with the proxies: the last one puts the streams and the
    record factory back (unless someone replaced them since: theirs stay)."""
    global _users, _previous_factory
    with _lock:
        _users -= 1
        if _users > 0:
            return
        for name, tee in list(_installed.items()):
            if getattr(sys, name) is tee:
                setattr(sys, name, tee._target)
            del _installed[name]
        if logging.getLogRecordFactory() is _record_factory and _previous_factory is not None:
            logging.setLogRecordFactory(_previous_factory)
            _previous_factory = None


def real_stream(name: str) -> Any:
    """``sys.stdout``/``sys.stderr`` (``name``) without the proxy: where a display draws."""
    stream = getattr(sys, name)
    return stream._target if isinstance(stream, _Tee) else stream


def attach_display(write: Callable[[str], None]) -> None:
    """From now on, every write to stdout or stderr reaches ``write`` as whole lines (each
    ending with a newline), and so do the stream handlers of ``logging`` that wrote to the
    terminal: a live display prints them above itself. Installs the proxies for as long as
    the display is attached."""
    global _display
    acquire()
    with _lock:
        _display = write
        _swap_handlers()


def detach_display() -> None:
    """Undo :func:`attach_display`; partial lines still held are shown first."""
    global _display
    with _lock:
        write, _display = _display, None
        held = list(shown.values())
        shown.clear()
        _unswap_handlers()
    if write is None:
        return
    for text in held:
        if text:
            write(text + "\n")
    release()


class _Tee:
    """``sys.stdout``/``sys.stderr`` while a run captures or a display is attached: keeps a
    capturing task's lines on its record and writes everything on (to the display's lines
    when one is attached, else to the stream it replaced)."""

    def __init__(self, target: Any, name: str) -> None:
        self._target: TextIO = target
        self._name = name

    def write(self, text: str) -> int:
        if type(text) is not str:  # let the stream raise its own error
            return self._target.write(text)
        scope = current.get()
        if scope is not None and scope[2] and not _from_logging():
            try:
                _keep(scope, self._name, text)
            except Exception:  # keeping is a courtesy: it never breaks the tool's print
                pass
        if _display is None:
            return self._target.write(text)
        _show(0 if scope is None else id(scope[1]), self._name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...
        return getattr(self._target, name)


# The standard library's code that hands a record to its handlers: a write made under it is a
# log record being printed (the last-resort handler, a handler on sys.stderr), already kept.
_HANDLING = frozenset({logging.Logger.callHandlers.__code__, logging.Handler.handle.__code__})


def _from_logging() -> bool:
    frame: FrameType | None = sys._getframe(2)
    for _ in range(8):  # the handler's emit, a formatter, a stream or two: a few frames up
        if frame is None:
            return False
        if frame.f_code in _HANDLING:
            return True
        frame = frame.f_back
    return False


def _keep(scope: tuple[RunScope, Any, bool], stream: str, text: str) -> None:
    run, record, _ = scope
    key = (id(record), stream)
    with _lock:
        held = run.pending.pop(key, None)
        if held is not None:
            text = held[1] + text
        if "\n" not in text:
            run.pending[key] = (record, _bounded(text))
            return
        *lines, rest = text.split("\n")
        if rest:
            run.pending[key] = (record, _bounded(rest))
        for line in lines:
            _keep_text(run, record, stream, line)


def _bounded(partial: str) -> str:
    """A line still being written, kept from growing without end (a progress bar redrawn
    with carriage returns for hours): what a terminal would show of it, cut to what can be
    kept."""
    if len(partial) <= 2 * MAX_LOG_LINE:
        return partial
    return partial.rpartition("\r")[2][:MAX_LOG_LINE + 1]


def _keep_text(run: RunScope, record: Any, stream: str, line: str) -> None:
    line = line.rstrip("\r").rpartition("\r")[2]  # a line redrawn in place: its last state
    if not line.strip():  # blank lines say nothing in a log
        return
    if run.masker is not None:
        line = run.masker.text(line)
    keep_line(run, record, {"level": _LEVEL[stream], "event": _clip(line), "stream": stream})


def _flush_kept(run: RunScope, record: Any) -> None:
    with _lock:
        for stream in ("stdout", "stderr"):
            held = run.pending.pop((id(record), stream), None)
            if held is not None:
                _keep_text(run, record, stream, held[1])


def _show(source: int, stream: str, text: str) -> None:
    key = (source, stream)
    with _lock:
        text = shown.pop(key, "") + text
        head, newline, rest = text.rpartition("\n")
        if rest:
            shown[key] = _bounded(rest)
        write = _display
    if newline and write is not None:  # outside the lock: the display takes its own
        write(head + "\n")


def _flush_shown(source: int) -> None:
    with _lock:
        held = [shown.pop(k) for k in [k for k in shown if k[0] == source]]
        write = _display
    if write is not None:
        for text in held:
            write(text + "\n")


# -- logging records -------------------------------------------------------------------------


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    factory = _previous_factory or logging.LogRecord
    record = factory(*args, **kwargs)
    scope = current.get()
    if scope is not None and scope[2]:
        name = record.name
        if name != "flowdsl" and not name.startswith("flowdsl."):  # get_logger keeps its own
            try:
                _keep_record(scope, record)
            except Exception:  # keeping never breaks the tool's logging
                pass
    return record


def _keep_record(scope: tuple[RunScope, Any, bool], record: logging.LogRecord) -> None:
    run, rec, _ = scope
    try:
        text = record.getMessage()
    except Exception:  # bad %-arguments: the handler will report it; keep what was meant
        text = str(record.msg)
    line: dict[str, Any] = {"level": record.levelname.lower(), "event": text,
                            "logger": record.name}
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        line["error"] = f"{type(exc).__name__}: {exc}"
    if run.masker is not None:
        line = run.masker.data(line)
    line["event"] = _clip(line["event"])
    with _lock:
        keep_line(run, rec, line)


# -- logging handlers while a display is attached ---------------------------------------------


def _swap_handlers() -> None:
    """Point the stream handlers that write to the terminal at the proxies (whose lines then
    go above the display); :func:`_unswap_handlers` points them back."""
    terminal = {}
    for name in ("stdout", "stderr"):
        tee = _installed.get(name)
        if tee is not None:
            terminal[id(tee._target)] = tee
            original = getattr(sys, f"__{name}__")
            if original is not None:
                terminal.setdefault(id(original), tee)
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                     if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler or (
                    isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)):
                tee = terminal.get(id(getattr(h, "stream", None)))
                if tee is not None:
                    _swapped.append((h, h.stream))
                    h.setStream(tee)


def _unswap_handlers() -> None:
    for h, stream in _swapped:
        if isinstance(h.stream, _Tee):
            h.setStream(stream)
    _swapped.clear()
