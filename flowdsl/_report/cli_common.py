"""What every ``flowdsl`` command shares: the typer app, TARGET loading, option types, the
history option, console helpers and Ctrl-C handling. The commands themselves are in ``cli``
(run, plan, graph, simulate, analyze, bench) and ``cli_history`` (history, timeline)."""

from __future__ import annotations

import asyncio
import enum
import importlib
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["JsonOpt", "Target", "TargetError", "app", "load_target"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DOC_SUFFIXES = (".json", ".yaml", ".yml")

app = typer.Typer(name="flowdsl", no_args_is_help=True, rich_markup_mode="rich",
                  help="Run, inspect and picture flowdsl workflows.",
                  context_settings={"help_option_names": ["-h", "--help"]})


class GraphFormat(str, enum.Enum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    png = "png"


class TargetError(Exception):
    """Raised when a TARGET cannot be loaded (bad syntax, missing file or name, wrong type)."""


# -- shared state and helpers ------------------------------------------------------------------

_options: dict[str, Any] = {"history": None}


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # files and pipes: rich's 80 columns would fold the tables
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _history() -> Any:
    from .._record.history import open_history

    return open_history(_options["history"])


def _print_json(data: Any) -> None:
    # Plain print, not rich: JSON must come out byte for byte, with no wrapping or colour.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def load_target(spec: str) -> Any:
    """Load what a TARGET names: a Flow, fragment, Task or Tool (a zero-argument function is
    called), or a workflow document through :func:`flowdsl.load_flow`.

    Raises:
        TargetError: the target cannot be found or is not a flow.
        PlanValidationError: a workflow document has problems.
    """
    from .._graph.task import Flow, Fragment, Task
    from .._graph.tool import Tool

    path = Path(spec)
    if path.suffix.lower() in DOC_SUFFIXES:
        if not path.is_file():
            msg = f"workflow document {spec!r} not found"
            raise TargetError(msg)
        from .._data.documents import load_flow

        return load_flow(path)
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        msg = (f"target {spec!r}: expected path/to/file.py:name, package.module:name or a "
               ".json/.yaml workflow document")
        raise TargetError(msg)
    module = _import(where)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            msg = f"target {spec!r}: {where!r} has no attribute {part!r}"
            raise TargetError(msg)
        obj = getattr(obj, part)
    kinds = (Flow, Fragment, Task, Tool, list, tuple)
    if callable(obj) and not isinstance(obj, kinds):
        obj = obj()  # a factory: build the flow now
    if not isinstance(obj, kinds):
        msg = (f"target {spec!r} is a {type(obj).__name__}: expected a Flow, fragment, Task "
               "or a function returning one")
        raise TargetError(msg)
    return obj


def _import(where: str) -> Any:
    if where.endswith(".py") or os.sep in where or "/" in where:
        file = Path(where).resolve()
        if not file.is_file():
            msg = f"target file {where!r} not found"
            raise TargetError(msg)
        # The file's folder goes on sys.path and the module keeps its own name, so its tools
        # can be imported again by name (process executors, sibling imports).
        folder = str(file.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = file.stem
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            msg = f"target file {where!r} is not a Python module"
            raise TargetError(msg)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script does not see the current folder
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        msg = f"target module {where!r} cannot be imported: {exc}"
        raise TargetError(msg) from exc


def _load(spec: str) -> Any:
    """load_target for commands: problems become a readable message and exit code 2."""
    from .._base.errors import FlowError, PlanValidationError

    try:
        return load_target(spec)
    except PlanValidationError as exc:
        raise _problems(exc) from None
    except (TargetError, FlowError) as exc:
        raise _fail(str(exc)) from None


def _problems(exc: Any) -> typer.Exit:
    err = _err()
    err.print(f"[bold red]error:[/] {len(exc.problems)} problem(s) in the workflow document:")
    for p in exc.problems:
        err.print(f"  [bold]{p.get('path', '?')}[/]: {p.get('message', p)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _plan(flow: Any) -> Any:
    from .._base.errors import PlanError
    from .._plan.planner import plan

    try:
        return plan(flow)
    except PlanError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None


def _pairs(values: list[str] | None, what: str, *, integer: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _fail(f"{what} {item!r}: expected key=value")
        if integer:
            try:
                out[key] = int(raw)
            except ValueError:
                raise _fail(f"{what} {item!r}: {raw!r} is not a whole number") from None
        else:
            try:
                out[key] = json.loads(raw)  # numbers, booleans, lists... else the text itself
            except ValueError:
                out[key] = raw
    return out


# -- Ctrl-C ---------------------------------------------------------------------------------------


class _Interrupt:
    """A RunObserver that remembers the run's event loop and task, so the first SIGINT can
    cancel the run (rollbacks run, history records it cancelled) and the second exits at
    once."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.count = 0

    def run_started(self, result: Any, plan: Any) -> None:
        self.result = result
        try:
            self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        except RuntimeError:  # not on asyncio: SIGINT keeps its usual meaning
            self.loop = self.task = None

    def task_started(self, result: Any, record: Any) -> None:
        pass

    def task_finished(self, result: Any, record: Any, output: Any) -> None:
        pass

    def run_finished(self, result: Any) -> None:
        self.task = None  # nothing left to cancel

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(EXIT_INTERRUPTED)  # the user insists: no cleanup, no waiting
        if self.task is None or self.loop is None:
            raise KeyboardInterrupt  # nothing is running yet (or any more) to roll back
        self.loop.call_soon_threadsafe(self.task.cancel)
        sys.stderr.write("\ncancelling the run (rollbacks and history first); "
                         "press Ctrl-C again to exit at once\n")

    @contextmanager
    def installed(self) -> Iterator[None]:
        if sys.platform == "win32" or not _main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- commands -------------------------------------------------------------------------------------


@app.callback()
def _root(history: Annotated[str | None, typer.Option(
        "--history", metavar="PATH", help="History file (default: $FLOWDSL_HISTORY, else "
        "~/.local/state/flowdsl/history.db; FLOWDSL_HISTORY=off for none).")] = None) -> None:
    """Run, inspect and picture flowdsl workflows.

    A TARGET is [bold]path/to/file.py:name[/], [bold]package.module:name[/] (a Flow, a
    fragment, a Task or a function returning one) or a [bold].json/.yaml[/] workflow document.
    """
    _options["history"] = history


Target = Annotated[str, typer.Argument(help="file.py:name, package.module:name, or a "
                                            ".json/.yaml workflow document")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ResourcesOpt = Annotated[list[str] | None, typer.Option(
    "--resources", "-r", metavar="POOL=N", help="Pool capacity (repeatable).")]


