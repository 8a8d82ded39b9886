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
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the shell's code for a SIGTERM
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


class _Console(Console):
    """rich's Console, except that a closed pipe is left to the command: rich would exit 1
    at once, but `flowdsl run ... | head -1` must end with the run's own exit code."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to write
        raise BrokenPipeError


def _out() -> Console:
    console = _Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # files and pipes: rich's 80 columns would fold the tables
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    from rich.markup import escape

    # The message is text: "[int]" in "Optional[int]" must not read as a style tag.
    _err().print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _history() -> Any:
    from .._record.history import open_history

    return open_history(_options["history"])


def _print_json(data: Any) -> None:
    # Plain print, not rich: JSON must come out byte for byte, with no wrapping or colour.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def load_target(spec: str, params: dict[str, Any] | None = None) -> Any:
    """Load what a TARGET names: a Flow, fragment, Task or Tool (a function is called with
    ``params`` as keyword arguments), or a workflow document through
    :func:`flowdsl.load_flow`.

    Raises:
        TargetError: the target cannot be found, is not a flow, or does not take ``params``.
        PlanValidationError: a workflow document has problems.
    """
    from .._graph.task import Flow, Fragment, Task
    from .._graph.tool import Tool

    path = Path(spec)
    if path.suffix.lower() in DOC_SUFFIXES:
        if not path.is_file():
            msg = f"workflow document {spec!r} not found"
            raise TargetError(msg)
        if params:
            msg = (f"--param is for a flow factory (module:function); {spec!r} is a workflow "
                   "document: use --set KEY=VALUE for its context")
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
        obj = _call_factory(spec, obj, params or {})  # a factory: build the flow now
    elif params:
        msg = (f"--param {', '.join(params)}: target {spec!r} is a {type(obj).__name__}, "
               "not a function; --param passes keyword arguments to a flow factory")
        raise TargetError(msg)
    if not isinstance(obj, kinds):
        msg = (f"target {spec!r} is a {type(obj).__name__}: expected a Flow, fragment, Task "
               "or a function returning one")
        raise TargetError(msg)
    return obj


def _call_factory(spec: str, factory: Any, params: dict[str, Any]) -> Any:
    """Call a flow factory with the --param values, checking them against its signature
    and its annotations first, so a wrong name or a value of the wrong type reads as a CLI
    error naming the --param, not as the factory's own traceback."""
    import inspect

    try:
        sig = inspect.signature(factory)
        sig.bind(**params)
    except TypeError as exc:
        given = ", ".join(f"{k}=" for k in params) or "no --param"
        msg = f"target {spec!r} cannot be called with {given}: {exc}"
        raise TargetError(msg) from None
    except ValueError:  # no signature to check (a builtin): let the call speak
        sig = None
    if sig is not None and params:
        params = _typed_params(spec, factory, sig, params)
    else:
        params = {k: _json_or_text(str(v), f"--param {k}=") for k, v in params.items()}
    if not params:
        return factory()
    try:
        return factory(**params)
    except Exception as exc:  # the values were accepted by type, refused by the factory
        given = " ".join(f"--param {k}={_shown(v)}" for k, v in params.items())
        msg = (f"target {spec!r} could not build a flow from {given}: "
               f"{type(exc).__name__}: {exc}")
        raise TargetError(msg) from None


class _Raw(str):
    """A --param value as typed (JSON or text): parsed once its parameter's type is known."""

    __slots__ = ()


def _shown(value: Any) -> str:
    return str(value) if isinstance(value, _Raw) else json.dumps(value, default=str)


def _typed_params(spec: str, factory: Any, sig: Any, params: dict[str, Any]
                  ) -> dict[str, Any]:
    """The --param values converted to the factory's annotated parameter types (``int``,
    ``float``, ``bool``, ``str``, ``Path``, enums, literals, lists, dicts, optionals);
    unannotated parameters get the JSON value, else the text."""
    import typing

    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # annotations that do not resolve: take what is written
        hints = {n: p.annotation for n, p in sig.parameters.items()
                 if p.annotation is not p.empty and not isinstance(p.annotation, str)}
    out: dict[str, Any] = {}
    for name, raw in params.items():
        hint = hints.get(name)
        text = str(raw)
        try:
            out[name] = _json_or_text(text, f"--param {name}=") if hint is None else (
                _convert(text, hint, f"--param {name}="))
        except _Mismatch as exc:
            msg = (f"--param {name}={text}: {exc} (parameter {name!r} of target {spec!r} "
                   f"is annotated {_hint_name(hint)})")
            raise TargetError(msg) from None
    return out


class _Mismatch(ValueError):
    """A --param value that does not fit its parameter's annotation."""


def _hint_name(hint: Any) -> str:
    import typing

    if typing.get_origin(hint) is None and getattr(hint, "__name__", None):
        return str(hint.__name__)
    return str(hint).replace("typing.", "")


def _convert(text: str, hint: Any, what: str = "--param") -> Any:
    """``text`` (a --param value) as a value of type ``hint``."""
    import enum
    import types
    import typing
    from pathlib import PurePath

    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return _json_or_text(text, what)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and text in ("null", "None", ""):
            return None
        kinds = [o for o in options if o is not type(None)]
        if len(kinds) == 1:  # Optional[X]: what X says
            return _convert(text, kinds[0], what)
        for option in kinds:
            try:
                return _convert(text, option, what)
            except _Mismatch:
                continue
        raise _Mismatch(f"{text!r} is none of {_hint_name(hint)}")
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == text or (not isinstance(choice, str)
                                       and _loads(text) == choice):
                return choice
        raise _Mismatch(f"{text!r} is not one of "
                        f"{', '.join(map(repr, typing.get_args(hint)))}")
    if hint is str:
        return text
    if hint is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise _Mismatch(f"{text!r} is not a boolean (true/false, yes/no, 1/0)")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise _Mismatch(f"{text!r} is not a whole number") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise _Mismatch(f"{text!r} is not a number") from None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if text in (member.name, str(member.value)):
                return member
        raise _Mismatch(f"{text!r} is not one of "
                        f"{', '.join(m.name for m in hint)}")
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return hint(text)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        value = _loads(text)
        if not isinstance(value, list):
            raise _Mismatch(f"{text!r} is not a JSON array")
        return (origin or hint)(value) if (origin or hint) is not list else value
    if origin is dict or hint is dict or origin is typing.Mapping:
        value = _loads(text)
        if not isinstance(value, dict):
            raise _Mismatch(f"{text!r} is not a JSON object")
        return value
    return _json_or_text(text, what)  # a type the command line cannot build: as given


_NO_JSON = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NO_JSON


def _json_or_text(text: str, what: str) -> Any:
    """A command-line value: JSON (numbers, booleans, lists, objects, "strings") or else the
    text itself; text that starts like JSON (``{``, ``[`` or ``"``) but is not valid JSON is
    an error naming ``what`` and the value, not silently taken as text."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            given = f"{what}{text!r}" if what.endswith("=") else f"{what} {text!r}"
            msg = (f"{given} is not valid JSON ({exc}); fix it, or pass text that does not "
                   "start with {, [ or \"")
            raise _BadValue(msg) from None
        return text


class _BadValue(TargetError):
    """A command-line value that cannot be read; the message names the flag and value."""


def import_modules(names: list[str] | None) -> None:
    """Import the ``--import`` modules, so the tools they register are known to workflow
    documents. Only modules named on the command line are imported, never one a document
    names.

    Raises:
        TargetError: a module cannot be imported.
    """
    for name in names or ():
        if name.endswith(".py") or "/" in name or os.sep in name:
            _import(name)
            continue
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except ImportError as exc:
            msg = f"--import {name!r}: the module cannot be imported ({exc})"
            raise TargetError(msg) from exc


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


def _load(spec: str, imports: list[str] | None = None,
          params: list[str] | None = None) -> Any:
    """load_target for commands (after the ``--import`` modules, with the ``--param``
    values): problems become a readable message and exit code 2."""
    from .._base.errors import FlowError, PlanValidationError

    try:
        import_modules(imports)
        return load_target(spec, _pairs(params, "--param", raw=True) or None)
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


def _pairs(values: list[str] | None, what: str, *, integer: bool = False,
           raw: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict: whole numbers (``integer``), the text as typed
    (``raw``: --param, converted later by the factory's annotations), else JSON or text."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise _fail(f"{what} {item!r}: expected key=value")
        if integer:
            try:
                out[key] = int(text)
            except ValueError:
                raise _fail(f"{what} {item!r}: {text!r} is not a whole number") from None
        elif raw:
            out[key] = _Raw(text)
        else:
            out[key] = value_of(text, f"{what} {key}=")
    return out


def value_of(text: str, what: str) -> Any:
    """A JSON-or-text command-line value, or a usage error (exit 2) naming ``what`` when it
    starts like JSON but is not."""
    try:
        return _json_or_text(text, what)
    except _BadValue as exc:
        raise _fail(str(exc)) from None


def _resources(flow: Any, values: list[str] | None) -> dict[str, int] | None:
    """The pools of a run: the flow's own, with each ``-r pool=N`` overriding that pool."""
    given = _pairs(values, "--resources", integer=True)
    own = getattr(flow, "resources", None) or {}
    return {**own, **given} if (own or given) else None


def _plan_error(exc: Exception) -> str:
    """A plan-time error in command-line terms: a pool problem names the ``-r`` to add."""
    from .._base.errors import ResourceError

    if isinstance(exc, ResourceError) and exc.pool is not None and exc.task_id is not None:
        if "not defined" in str(exc):
            return (f"task {exc.task_id!r} needs pool {exc.pool!r}, which neither the flow "
                    f"nor the command line defines: add -r {exc.pool}=N")
        return f"{exc}: raise it with -r {exc.pool}=N"
    return f"{type(exc).__name__}: {exc}"


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------


class _Interrupt:
    """A RunObserver that remembers the run's event loop and task, so the first SIGINT or
    SIGTERM can cancel the run (rollbacks run, history records it cancelled) and the second
    exits at once.

    Args:
        live: the progress display, stopped before any message is written so that no
            stale progress lines stay on the terminal.
    """

    def __init__(self, live: Any = None) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.live = live
        self.count = 0
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM (128 + the signal, as shells report it)."""
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

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
        self.signum = self.signum or signum
        if self.count > 1:
            os._exit(self.exit_code)  # the user insists: no cleanup, no waiting
        if self.task is None or self.loop is None:
            raise KeyboardInterrupt  # nothing is running yet (or any more) to roll back
        self.loop.call_soon_threadsafe(self._cancel, signal.Signals(signum).name)

    def _cancel(self, name: str) -> None:
        # On the run's loop: the display goes first (it erases itself), then the message,
        # so the terminal keeps no half-drawn progress lines.
        if self.live is not None:
            self.live.close()
        again = "press Ctrl-C" if name == "SIGINT" else "send it"
        sys.stderr.write(f"\n{name}: cancelling the run (rollbacks and history first); "
                         f"{again} again to exit at once\n")
        if self.task is not None:
            self.task.cancel()

    @contextmanager
    def installed(self) -> Iterator[None]:
        if sys.platform == "win32" or not _main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _pipe_closed() -> None:
    """stdout's reader went away (``flowdsl run ... | head -1``): send the rest of our output,
    and the interpreter's final flush, to /dev/null, so the command ends quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test's captured stdout)
        pass
    finally:
        os.close(devnull)


def tidy_help(command: Any) -> Any:
    """Drop the ``<bool>`` type label typer shows next to every flag (``--json <bool>``),
    on every command and group, their help options included; returns ``command``."""
    todo = [command]
    while todo:
        cmd = todo.pop()
        # typer may bring its own copy of click: use the command's classes, not click's
        ctx = cmd.context_class(cmd, info_name=cmd.name, help_option_names=["-h", "--help"])
        for param in [*cmd.params, cmd.get_help_option(ctx)]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        todo.extend(getattr(cmd, "commands", {}).values())
    return command


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
    "--resources", "-r", metavar="POOL=N", help="Pool capacity; overrides that pool of the "
    "flow and keeps its others (repeatable).")]
ImportOpt = Annotated[list[str] | None, typer.Option(
    "--import", "-i", metavar="MODULE", help="Import this module (or file.py) first, so the "
    "tools it defines are known to a workflow document (repeatable).")]
ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="KEY=VALUE", help="Keyword argument for a flow factory "
    "module:function (JSON or text; repeatable).")]
MaxConcurrencyOpt = Annotated[int | None, typer.Option(
    "--max-concurrency", min=1, metavar="N", help="Most tasks running at once.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Context value (JSON or text; repeatable).")]


