"""Report: live progress of a run, drawn from its event stream (flowdsl/_run/events.py).

- :class:`LiveProgress`: a rich ``Live`` display for terminals (a bar of tasks done, counts
  of running and failed tasks, elapsed time and the tasks running now), refreshed by rich's
  own thread so the elapsed time moves while a long task runs. While it is on, every line
  written to stdout or stderr (prints from any thread, log records) is printed whole above
  it (:func:`flowdsl._base.capture.attach_display`), so the display never draws over them.
- :class:`NotebookProgress`: the same picture rendered by rich as HTML into one IPython
  display that is updated in place, so it needs no widget library and stays in the saved
  notebook.

:func:`progress` picks the right one (or ``None`` when output is neither). The state
(:class:`_State`) reads the run's events in the run's reader thread, and a display's
``run_started`` and ``run_finished`` hooks start and stop it on the event loop; the state
they share with the renderer is guarded by a lock. ``run()`` calls ``run_finished`` once
every event was read, so the last picture is the run's end.

    result = flowdsl.run(flow, observers=[p] if (p := progress()) else [])
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .._base import capture
from .._run.events import Event, EventKind
from .._run.result import RunResult, TaskRecord, TaskStatus
from .palette import STATUS_COLORS

__all__ = ["LiveProgress", "NotebookProgress", "RunsProgress", "compact_summary", "in_notebook",
           "output_preview", "progress", "summary_table"]

# Terminal styles from the one status palette; failures are also bold.
_STYLE = {k: f"bold {v}" if k in ("failed", "timed_out") else v
          for k, v in STATUS_COLORS.items()}
_RUNNING_SHOWN = 8  # the most running tasks listed under the bar


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell); never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


#: The task events the display counts (ready, pool waits, log lines are not drawn).
_SHOWN = frozenset({EventKind.TASK_STARTED, EventKind.TASK_FINISHED, EventKind.TASK_RESET})


class _State:
    """What the display shows; written by the hooks, read by the renderer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.name = "flow"
        self.total = 0
        self.started = time.monotonic()
        self.running: dict[str, str] = {}  # task id -> tool
        self.finished: dict[str, str] = {}  # task id -> final status
        self.retries = 0
        self.status: str | None = None
        # A pipeline over items: its stages that have begun an item (the plan counted each
        # stage once; from then on each stage x item counts) and how many items came in.
        self.stages: set[str] = set()
        self.items = 0
        self.tasks: Any = {}  # the plan's tasks (a map child's id is not among them)

    def begin(self, flow: str | None, mode: str, plan: Any) -> None:
        with self.lock:
            self._begin(flow, mode, plan)

    def _begin(self, flow: str | None, mode: str, plan: Any) -> None:
        if self.tasks:  # begun already (by a display's run_started hook)
            return
        self.name = f"{flow or 'flow'} ({mode})"
        self.total = len(plan)
        self.tasks = plan.tasks
        self.started = time.monotonic()

    def __call__(self, batch: Sequence[Event]) -> None:
        """Read a batch of the run's events (in the run's reader thread): the display's
        state is the stream's, with no hooks of its own."""
        with self.lock:
            for e in batch:
                kind, tid = e.kind, e.task
                if tid is None:
                    if kind is EventKind.RUN_STARTED:
                        start = e.detail
                        self._begin(start.flow, start.mode, start.plan)
                    elif kind is EventKind.RUN_FINISHED:
                        self.running.clear()
                        self.status = e.detail
                    elif kind is EventKind.ITEM_STARTED and e.item is not None:
                        self.items = max(self.items, e.item + 1)
                    continue
                if kind not in _SHOWN:
                    continue
                key = tid if e.item is None else self._item(tid, e.item)
                child = tid not in self.tasks  # a mapped task's child: the plan counted
                if kind is EventKind.TASK_STARTED:  # only its parent
                    if child and key not in self.finished and key not in self.running:
                        self.total += 1
                    self.running[key] = self._tool(tid)
                elif kind is EventKind.TASK_FINISHED:
                    if child and key not in self.running and key not in self.finished:
                        self.total += 1  # a child that never started (cancelled with its
                    self.running.pop(key, None)  # siblings)
                    self.finished[key] = str(e.detail)
                    self.retries += max((e.attempt or 0) - 1, 0)
                elif kind is EventKind.TASK_RESET:  # a retried group runs it again
                    self.finished.pop(key, None)

    def _tool(self, tid: str) -> str:
        task = self.tasks.get(tid)
        if task is None:  # a map child: its mapped task's tool
            task = self.tasks.get(tid.rpartition("[")[0])
        return task.tool.name if task is not None else tid

    def _item(self, tid: str, item: int) -> str:
        """A pipeline stage x item's key (``stage@i``), counted once in the total."""
        key = f"{tid}@{item}"
        if key not in self.running and key not in self.finished:
            self.total += 1 if tid in self.stages else 0
            self.stages.add(tid)
            self.items = max(self.items, item + 1)
        return key

    def renderable(self) -> Any:
        """A rich renderable of the current state (a bar, a counts line, running tasks)."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            done = len(self.finished)
            failed = sum(1 for s in self.finished.values()
                         if s in (TaskStatus.FAILED.value, TaskStatus.TIMED_OUT.value))
            running = list(self.running.items())
            total, name, status = self.total, self.name, self.status
            elapsed = time.monotonic() - self.started
            retries = self.retries
            items = self.items
        head = Table.grid(padding=(0, 1))
        head.add_row(Text(name, style="bold"),
                     ProgressBar(total=max(total, 1), completed=min(done, total), width=30),
                     Text(f"{done}/{total} done", style=_STYLE["completed"]),
                     Text(f"{len(running)} running", style=_STYLE["running"]),
                     Text(f"{failed} failed", style=_STYLE["failed"] if failed else "dim"),
                     Text(f"{retries} retries", style="dim") if retries else Text(""),
                     Text(f"{items} item(s) in", style="dim") if items else Text(""),
                     Text(f"{elapsed:6.1f}s", style="cyan"),
                     Text(status or "", style=_STYLE.get(status or "", "bold")))
        lines: list[Any] = [head]
        for tid, tool in running[:_RUNNING_SHOWN]:
            label = tid if tool == tid else f"{tid} ({tool})"
            lines.append(Text(f"  ▸ {label}", style=_STYLE["running"]))
        if len(running) > _RUNNING_SHOWN:
            lines.append(Text(f"  … and {len(running) - _RUNNING_SHOWN} more", style="dim"))
        return Group(*lines)


class LiveProgress:
    """A terminal progress display (rich ``Live``) drawn from a run's event stream; its
    ``run_started`` and ``run_finished`` hooks only start and stop the display.

    Args:
        console: the rich ``Console`` to draw on (default: a new one on stdout).
        refresh_per_second: how often rich redraws (the elapsed time moves between events).
        transient: erase the display when the run ends (the CLI prints a summary instead).
    """

    def __init__(self, console: Any = None, *, refresh_per_second: float = 8,
                 transient: bool = True) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self._state = _State()
        self._refresh = refresh_per_second
        self._transient = transient
        self._live: Any = None

    def run_started(self, result: RunResult[Any], plan: Any) -> None:
        """The run begins (on its event loop, before any task): the display and the
        protection of printed lines start now, so a task's first print goes above it."""
        from rich.live import Live

        self._state.begin(result.flow_name, result.mode, plan)
        if self._live is None:
            console = _pin(self.console)
            # get_renderable: rich's refresh thread rebuilds the picture, so the elapsed time
            # moves between events. rich's own redirects are off: they would lose lines
            # printed from threads; flowdsl's proxy sends them above the display instead.
            self._live = Live(console=console, get_renderable=self._state.renderable,
                              refresh_per_second=self._refresh, transient=self._transient,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
            capture.attach_display(self._above)

    def _above(self, text: str) -> None:
        _print_above(self._live, self.console, text)

    def __call__(self, batch: Sequence[Event]) -> None:
        """The run's events (see :class:`_State`)."""
        self._state(batch)

    def run_finished(self, result: RunResult[Any]) -> None:
        """The run ended and every event was read: the last picture, then stop."""
        self._state.status = result.status
        self.close()

    def close(self) -> None:
        """Stop the display (idempotent; also safe when the run never started)."""
        live = self._live
        if live is not None:
            # Stopped first: lines written meanwhile wait for the display's lock and go above
            # (or after) it, never under a frame about to be erased.
            with live._lock:
                live.stop()
                self._live = None
            capture.detach_display()


def _print_above(live: Any, console: Any, text: str) -> None:
    """Print ``text`` (whole lines, from stdout, stderr or a log handler) above the live
    display ``live`` (None: it is gone). Under the display's lock: rich's refresh thread
    cannot draw a frame between erasing the display and drawing it again under the text."""
    from rich.text import Text

    lines = Text.from_ansi(text[:-1] if text.endswith("\n") else text)
    if live is None:
        console.print(lines, soft_wrap=True, highlight=False, markup=False, emoji=False)
        return
    with live._lock:
        console.print(lines, soft_wrap=True, highlight=False, markup=False, emoji=False)


def _pin(console: Any) -> Any:
    """Make ``console`` draw on the terminal itself, never through the stdout/stderr proxy
    that sends every other line above a live display; returns it."""
    file = getattr(console, "_file", None)
    if file is None:
        console.file = capture.real_stream("stderr" if console.stderr else "stdout")
    elif isinstance(file, capture._Tee):  # made while a run captured: draw under the proxy
        console.file = file._target
    return console


class RunsProgress:
    """A transient bar of repeated runs (``flowdsl bench``) on a terminal: runs done out of
    all, the mode running now, warm-up or measured, elapsed time. Lines written meanwhile
    (the flow's prints and logs) go above it. Use as a context manager; :meth:`step`
    before each run (the ``on_run`` hook of :func:`flowdsl.benchmark`).
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self._progress: Any = None
        self._bar: Any = None

    def __enter__(self) -> RunsProgress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(TextColumn("[bold]benchmark"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=_pin(self.console),
                                  transient=True)
        self._progress.start()
        self._bar = self._progress.add_task("", total=None)
        capture.attach_display(self._above)
        return self

    def _above(self, text: str) -> None:
        progress = self._progress
        _print_above(None if progress is None else progress.live, self.console, text)

    def step(self, mode: str, n: int, total: int, warmup: bool) -> None:
        """Run number ``n`` (1-based) of ``total`` is about to start, in ``mode``."""
        if self._progress is not None:
            what = "warm-up" if warmup else "measured"
            self._progress.update(self._bar, completed=n - 1, total=total,
                                  description=f"{mode} ({what})")

    def __exit__(self, *exc: object) -> None:
        progress = self._progress
        if progress is None:
            return
        with progress.live._lock:
            progress.stop()
            self._progress = None
        capture.detach_display()


class NotebookProgress:
    """A notebook progress display: rich renders the state as HTML into one IPython display,
    updated in place at most ``1 / min_interval`` times a second.

    Args:
        min_interval: seconds between two updates (the last update is always shown).
    """

    def __init__(self, *, min_interval: float = 0.2) -> None:
        self._state = _State()
        self._interval = min_interval
        self._last = 0.0
        self._handle: Any = None

    def _html(self) -> Any:
        import io

        from IPython.display import HTML
        from rich.console import Console

        console = Console(record=True, file=io.StringIO(), width=110, force_terminal=True,
                          force_jupyter=False, color_system="truecolor")
        console.print(self._state.renderable())
        return HTML(console.export_html(inline_styles=True,
                                        code_format="<pre style=\"font-size:12px;"
                                        "line-height:1.3\">{code}</pre>"))

    def _update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        if self._handle is None:
            from IPython.display import display

            self._handle = display(self._html(), display_id=True)
        else:
            self._handle.update(self._html())

    def run_started(self, result: RunResult[Any], plan: Any) -> None:
        self._state.begin(result.flow_name, result.mode, plan)
        self._update(force=True)

    def __call__(self, batch: Sequence[Event]) -> None:
        """The run's events (see :class:`_State`)."""
        self._state(batch)
        self._update()

    def run_finished(self, result: RunResult[Any]) -> None:
        self._state.status = result.status
        self._update(force=True)

    def close(self) -> None:
        """Nothing to stop: the last picture stays in the notebook."""


def progress(*, console: Any = None) -> LiveProgress | NotebookProgress | None:
    """The progress observer that fits where output goes: a notebook display in Jupyter, a
    live terminal display when stdout is a terminal, else ``None``.

    Raises:
        ImportError: rich is not installed (``pip install 'flowdsl[cli]'``).
    """
    try:
        import rich  # noqa: F401
    except ImportError as exc:
        msg = "progress displays need rich: pip install 'flowdsl[cli]'"
        raise ImportError(msg) from exc
    if in_notebook():
        return NotebookProgress()
    from rich.console import Console

    console = console if console is not None else Console()
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(console)
    return None


def summary_table(result: RunResult[Any]) -> Any:
    """A rich ``Table`` of a result: task, tool, status, attempts, duration, error."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{result.flow_name or 'flow'} ({result.mode}): {result.status} "
                        f"in {result.duration:.3f}s — run {result.run_id}",
                  title_justify="left")
    columns: tuple[tuple[str, dict[str, Any]], ...] = (
        ("task", {}), ("tool", {"style": "dim"}), ("status", {}),
        ("attempts", {"justify": "right"}), ("duration", {"justify": "right"}),
        ("error", {"overflow": "fold"}))
    for col, kw in columns:
        table.add_column(col, **kw)
    for rec in result.tasks.values():
        status = rec.status.value
        d = rec.duration
        error = f"{rec.error.type}: {rec.error.message}" if rec.error else (rec.reason or "")
        table.add_row(rec.id, rec.tool, Text(status, style=_STYLE.get(status, "")),
                      str(len(rec.attempts)), "" if d is None else f"{d:.3f}s", error)
    return table


_LISTED = 10  # the most tasks named per status group in the compact summary


def compact_summary(result: RunResult[Any]) -> Any:
    """A short rich summary of a result: a header line, the count of tasks per status, and
    the tasks that failed or did not run with their errors and reasons (a few per group).
    Tasks left ``pending`` by a stop are only counted."""
    from rich.console import Group
    from rich.text import Text

    head = Text()
    head.append(f"{result.flow_name or 'flow'} ({result.mode}): ", style="bold")
    head.append(result.status, style=_STYLE.get(result.status, "bold"))
    head.append(f" in {result.duration:.3f}s — run {result.run_id}")
    counts = Text("  ")
    for n, (status, count) in enumerate(result.summary().items()):
        counts.append(", " if n else "")
        counts.append(f"{count} {status}", style=_STYLE.get(status, ""))
    lines: list[Any] = [head, counts]
    groups: dict[str, list[TaskRecord]] = {}
    for rec in result.tasks.values():
        if rec.status in (TaskStatus.COMPLETED, TaskStatus.CACHED, TaskStatus.PENDING):
            continue
        groups.setdefault(rec.status.value, []).append(rec)
    for status, recs in groups.items():
        for rec in recs[:_LISTED]:
            why = (f"{rec.error.type}: {rec.error.message}" if rec.error
                   else rec.reason or "")
            line = Text(f"  {status} ", style=_STYLE.get(status, ""))
            line.append(rec.id, style="bold")
            line.append(f" — {why}" if why else "")
            lines.append(line)
        if len(recs) > _LISTED:
            lines.append(Text(f"  … and {len(recs) - _LISTED} more {status}", style="dim"))
    return Group(*lines)


def output_preview(value: Any, *, max_length: int = 20, max_string: int = 300,
                   max_depth: int = 4) -> Any:
    """A flow's output for a terminal: pretty-printed, with long containers, strings and
    deep nesting cut short (``--json`` prints it whole)."""
    from rich.pretty import Pretty

    return Pretty(value, max_length=max_length, max_string=max_string, max_depth=max_depth,
                  indent_guides=False)
