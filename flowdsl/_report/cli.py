"""The ``flowdsl`` command line (also ``python -m flowdsl``): run, inspect and picture flows.

Built on typer (arguments, help, shell completion) and rich (tables, live progress); both come
with ``pip install 'flowdsl[cli]'`` and are imported only by this module, so ``import flowdsl``
stays light. Every command goes through the public engine (plan, run, history, simulate,
analyze, render, timeline), never around it. This module holds the app, target loading, the
shared helpers and ``main``; the ``history`` commands and ``timeline`` are in
``flowdsl._report.cli_history``.

A TARGET is ``path/to/file.py:name`` or ``package.module:name`` (a Flow, a fragment, a Task or
a zero-argument function returning one), or a ``.json``/``.yaml`` workflow document.

Exit codes: 0 success, 1 the run failed, 2 usage or plan error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .._plan.policy import Mode
from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    GraphFormat,
    ImportOpt,
    JsonOpt,
    MaxConcurrencyOpt,
    ParamOpt,
    ResourcesOpt,
    SetOpt,
    Target,
    TargetError,
    _err,
    _fail,
    _history,
    _Interrupt,
    _load,
    _options,
    _out,
    _pairs,
    _pipe_closed,
    _plan,
    _plan_error,
    _print_json,
    _resources,
    app,
    load_target,
    tidy_help,
    value_of,
)

__all__ = ["TargetError", "app", "load_target", "main"]

@app.command(epilog="Example: flowdsl run examples/reference_workflow.py:reference_flow "
                    "-r http=3 -r api=2 -r db=1")
def run(target: Target,
        mode: Annotated[Mode | None, typer.Option("--mode", "-m", help="How to run it "
                                                  "(default: the flow's, else parallel; "
                                                  "pipeline with --items).")] = None,
        set_: SetOpt = None,
        context: Annotated[Path | None, typer.Option(
            "--context", "-c", metavar="FILE.json", help="Initial context from a JSON "
            "object file.")] = None,
        imports: ImportOpt = None,
        params: ParamOpt = None,
        input_: Annotated[str | None, typer.Option(
            "--input", metavar="JSON", help="The value the first pipeline stages receive "
            "(JSON or text).")] = None,
        items: Annotated[str | None, typer.Option(
            "--items", metavar="FILE|-", help="Values to stream through a pipeline: a JSON "
            "array, or one JSON value (or text) per line; - reads stdin.")] = None,
        resources: ResourcesOpt = None,
        max_concurrency: MaxConcurrencyOpt = None,
        continue_on_error: Annotated[bool, typer.Option(
            "--continue-on-error", help="A failure stops only its downstream tasks.")] = False,
        rollback: Annotated[bool, typer.Option(
            "--rollback", help="Undo completed tasks if the run fails or is "
            "cancelled.")] = False,
        timeout: Annotated[float | None, typer.Option(
            "--timeout", metavar="SECONDS",
            help="Time limit for the whole run.")] = None,
        as_json: JsonOpt = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="The full table of "
                                              "tasks instead of the compact summary.")
                           ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no "
                                            "summary; only the exit code.")] = False) -> None:
    """Run a flow with live progress (on a terminal), then a summary and the flow's output.

    Exit code 0 when it completed, 1 when it failed, timed out or was cancelled, 2 for a
    usage or plan error, 130 after Ctrl-C and 143 after SIGTERM (the first cancels cleanly:
    rollbacks and history; the second exits at once).
    """
    flow = _load(target, imports, params)
    ctx: dict[str, Any] = {}
    if context is not None:
        try:
            ctx = json.loads(context.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(f"--context {str(context)!r}: {exc}") from None
        if not isinstance(ctx, dict):
            raise _fail(f"--context {str(context)!r}: expected a JSON object")
    ctx.update(_pairs(set_, "--set"))
    values = _read_items(items) if items is not None else None
    if values is not None and mode not in (None, Mode.PIPELINE):
        raise _fail(f"--items streams values through a pipeline; use --mode pipeline "
                    f"(got --mode {mode.value})")
    chosen = Mode.PIPELINE.value if values is not None and mode is None else (
        mode.value if mode else None)
    out = _out()
    live = None
    if not (as_json or quiet):
        from .progress import LiveProgress

        if out.is_terminal and not out.is_dumb_terminal:
            live = LiveProgress(out)
    stop = _Interrupt(live)
    history = _options["history"]
    result = _run(flow, stop, live, mode=chosen, context=ctx,
                  input=None if input_ is None else value_of(input_, "--input"), items=values,
                  resources=_resources(flow, resources), max_concurrency=max_concurrency,
                  continue_on_error=continue_on_error, rollback_on_failure=rollback,
                  timeout=timeout, history=history)
    interrupted = result is None
    result = stop.result if result is None else result
    code = stop.exit_code if interrupted else EXIT_OK if result.ok else EXIT_FAILED
    try:
        if as_json and result is not None:
            _print_json(result.to_dict())
        elif not quiet and result is not None:
            _report(out, result, verbose=verbose, history_on=_history_on(history))
        sys.stdout.flush()
    except BrokenPipeError:  # `flowdsl run ... | head -1`: the reader has had enough
        _pipe_closed()
    raise typer.Exit(code)


def _read_items(source: str) -> list[Any]:
    """The --items values: a JSON array, else one JSON value (or text) per non-blank line.
    Read whole before the run starts, so no file I/O happens on the event loop."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"--items {source!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _fail(f"--items {source!r}: not UTF-8 text ({exc.reason})") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _fail(f"--items {source!r}: not a valid JSON array ({exc})") from None
        return list(data)
    return [value_of(line, f"--items {source!r} line {n}:")
            for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _history_on(spec: str | None) -> bool:
    if spec is not None:
        return spec.lower() != "off"
    return os.environ.get("FLOWDSL_HISTORY", "").lower() != "off"


def _report(out: Any, result: Any, *, verbose: bool, history_on: bool) -> None:
    """The summary (compact, or the full table), the error, the output and the hint."""
    from .progress import compact_summary, output_preview, summary_table

    out.print(summary_table(result) if verbose else compact_summary(result))
    if not result.ok and result.error is not None:
        _err().print(f"[bold red]{result.status}:[/] {type(result.error).__name__}: "
                     f"{result.error}", soft_wrap=True, markup=True)
    shown = result.output
    if shown is not None and not (isinstance(shown, list) and all(v is None for v in shown)):
        out.print("[bold]output:[/]", markup=True)
        out.print(output_preview(result.output))
    if history_on:
        out.print(f"[dim]timeline: flowdsl timeline {result.run_id} -o run.html[/]")


def _option_error(message: str) -> str:
    """run()'s words for a bad option value, in the command line's: `run(): timeout=-1 is
    invalid: ...` becomes `--timeout -1 is invalid: ...`."""
    import re

    m = re.match(r"run\(\): (\w+)=(\S+) is invalid: (.*)", message, re.S)
    if m is None:
        return message
    name, value, why = m.groups()
    return f"--{name.replace('_', '-')} {value} is invalid: {why}"


def _run(flow: Any, stop: _Interrupt, live: Any, **options: Any) -> Any:
    """Run with the progress display and SIGINT/SIGTERM handling; ``None`` when
    interrupted."""
    from .._base.errors import PlanError
    from .entry import run as run_flow

    observers = [stop] if live is None else [stop, live]
    try:
        with stop.installed():
            return run_flow(flow, observers=observers, **options)
    except PlanError as exc:
        raise _fail(_plan_error(exc)) from None
    except ValueError as exc:  # an option value run() refused
        raise _fail(_option_error(str(exc))) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        return None
    finally:
        if live is not None:
            live.close()


@app.command(epilog="Example: flowdsl plan flows.py:etl --json")
def plan(target: Target, imports: ImportOpt = None, params: ParamOpt = None,
         as_json: JsonOpt = False) -> None:
    """Show a flow's plan: levels, width, critical path, lower bound and problems.

    Durations are declared estimates, else history, else 1 s (as a run ranks tasks).
    """
    from .._base.errors import ResourceError
    from .._record.simulate import resolve_durations

    flow = _load(target, imports, params)
    p = _plan(flow)
    dur, sources = resolve_durations(p, history=_history() or False)
    durations = sorted(i for i, s in sources.items() if s == "history")
    path, length = p.critical_path(dur)
    caps = getattr(flow, "resources", None) or {}
    problems = []
    try:
        p.check_resources(caps)
    except ResourceError as exc:
        problems.append(str(exc))
    data = {"name": p.name, "tasks": len(p), "edges": len(p.edges), "width": p.width,
            "levels": [list(lv) for lv in p.levels], "critical_path": path,
            "critical_path_duration": length,
            "lower_bound": p.lower_bound(dur, caps, getattr(flow, "max_concurrency", None)),
            "durations": dur, "durations_from_history": durations,
            "problems": problems}
    if as_json:
        _print_json(data)
    else:
        out = _out()
        out.print(f"[bold]{p.name or 'flow'}[/]: {len(p)} tasks, {len(p.edges)} edges, "
                  f"{len(p.levels)} levels, width {p.width}")
        table = Table("level", "tasks", title="levels", title_justify="left")
        for n, lv in enumerate(p.levels):
            table.add_row(str(n), ", ".join(lv))
        out.print(table)
        known = f" ({len(durations)} from history)" if durations else ""
        out.print(f"critical path{known}: {' -> '.join(path)} = {length:.3f}s")
        out.print(f"lower bound: {data['lower_bound']:.3f}s")
        for msg in problems:
            _err().print(f"[bold red]problem:[/] {msg}", soft_wrap=True)
        if not problems:
            out.print("[green]no plan-time problems[/]")
    if problems:
        raise typer.Exit(EXIT_USAGE)


@app.command(epilog="Example: flowdsl graph flows.py:etl --format svg -o etl.svg")
def graph(target: Target, imports: ImportOpt = None, params: ParamOpt = None,
          fmt: Annotated[GraphFormat, typer.Option("--format", "-f", help="mermaid and dot "
                                                   "are text; svg and png need graphviz."
                                                   )] = GraphFormat.mermaid,
          output: Annotated[Path | None, typer.Option(
              "--output", "-o", metavar="FILE", help="Write here instead of stdout.")] = None,
          ) -> None:
    """Draw the DAG as mermaid or dot text, or as SVG/PNG through graphviz."""
    from .render import render_graphviz, to_dot, to_mermaid

    p = _plan(_load(target, imports, params))
    if fmt in (GraphFormat.mermaid, GraphFormat.dot):
        text = to_mermaid(p) if fmt is GraphFormat.mermaid else to_dot(p)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
        return
    if output is None and fmt is GraphFormat.png:
        raise _fail("--format png needs -o FILE")
    try:
        data = render_graphviz(p, fmt.value)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    if output is None:
        sys.stdout.write(data.decode())
    else:
        output.write_bytes(data)


@app.command(epilog="Example: flowdsl simulate flows.py:etl -r db=2 --mode parallel")
def simulate(target: Target,
             mode: Annotated[Mode | None, typer.Option("--mode", "-m", help="Simulate this "
                                                       "mode in detail (default: compare "
                                                       "all).")] = None,
             resources: ResourcesOpt = None,
             max_concurrency: MaxConcurrencyOpt = None,
             imports: ImportOpt = None, params: ParamOpt = None,
             as_json: JsonOpt = False) -> None:
    """Predict the makespan of each mode without running any tool.

    Durations are declared estimates, else history, else 1 s (as a run ranks tasks).
    """
    from .._base.errors import PlanError
    from .._record.simulate import simulate as sim

    flow = _load(target, imports, params)
    store = _history() or False
    caps = _resources(flow, resources)
    modes = [mode.value] if mode else [m.value for m in Mode]
    try:
        sims = {m: sim(flow, m, resources=caps, max_concurrency=max_concurrency,
                       history=store) for m in modes}
    except (PlanError, ValueError) as exc:
        raise _fail(_plan_error(exc)) from None
    if as_json:
        _print_json({m: dataclasses.asdict(s) for m, s in sims.items()})
        return
    out = _out()
    table = Table("mode", "makespan", "lower bound", "critical path", title="simulation",
                  title_justify="left")
    for m, s in sims.items():
        table.add_row(m, f"{s.makespan:.3f}s", f"{s.lower_bound:.3f}s",
                      " -> ".join(s.critical_path))
    out.print(table)
    if mode:
        s = sims[mode.value]
        detail = Table("task", "start", "end", "duration", "source", title=f"{mode.value}",
                       title_justify="left")
        for tid, t in s.tasks.items():
            detail.add_row(tid, f"{t.start:.3f}", f"{t.end:.3f}", f"{s.durations[tid]:.3f}",
                           s.sources.get(tid, ""))
        out.print(detail)


@app.command(epilog="Example: flowdsl analyze flows.py:etl --json")
def analyze(target: Target, imports: ImportOpt = None, params: ParamOpt = None,
            as_json: JsonOpt = False) -> None:
    """Find bottlenecks and suggest improvements from the flow's history."""
    from .._base.errors import PlanError
    from .._record.optimizer import analyze as analyze_flow

    flow = _load(target, imports, params)
    try:
        a = analyze_flow(flow, _history() or False)
    except PlanError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        _print_json(a.to_dict())
        return
    out = _out()
    cp = ("?" if a.critical_path_duration is None else f"{a.critical_path_duration:.3f}s")
    out.print(f"[bold]{a.name or 'flow'}[/]: {a.total_tasks} tasks, {a.levels} levels, "
              f"width {a.width}; critical path {' -> '.join(a.critical_path)} = {cp}")
    out.print("predicted: " + ", ".join(f"{m} {v:.3f}s" for m, v in a.makespans.items()))
    if a.bottlenecks:
        table = Table("task", "tool", "estimate", "why", title="bottlenecks",
                      title_justify="left")
        for b in a.bottlenecks:
            table.add_row(b.task_id, b.tool, "?" if b.estimate is None else
                          f"{b.estimate:.3f}s", "; ".join(b.reasons))
        out.print(table)
    for s in a.suggestions:
        out.print(f"• {s.message}", soft_wrap=True)
    if not a.suggestions:
        out.print("[green]no suggestions[/]")


# `timeline` and the `history` group live in _cli_history; registered here, so that
# `flowdsl --help` keeps listing timeline between analyze and bench.
from .cli_history import (  # noqa: E402, F401 (re-exported)
    history_app,
    history_list,
    history_show,
    history_stats,
    register,
    timeline,
)

register(app)

# `ui` (the run browser) lives in cli_ui.
from .cli_ui import register as register_ui  # noqa: E402

register_ui(app)

# `cache list|clear` lives in cli_cache.
from .cli_cache import register as register_cache  # noqa: E402

register_cache(app)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Example: flowdsl bench examples/reference_workflow.py:reference_flow "
                    "--repeat 3 -r http=3 -r api=2 -r db=1 --gantt run.html")
def bench(ctx: typer.Context,
          target: Annotated[str | None, typer.Argument(
              help="The flow to benchmark (as for run).")] = None,
          modes: Annotated[list[Mode] | None, typer.Option(
              "--modes", "--mode", "-m", help="A mode to measure (repeatable; default: "
              "sequential and parallel).")] = None,
          repeat: Annotated[int, typer.Option("--repeat", "-n", min=1, metavar="N",
                                              help="Measured runs per mode.")] = 5,
          warmup: Annotated[int, typer.Option("--warmup", min=0, metavar="N",
                                              help="Runs per mode made first and not "
                                              "counted.")] = 1,
          resources: ResourcesOpt = None,
          max_concurrency: MaxConcurrencyOpt = None,
          set_: SetOpt = None,
          imports: ImportOpt = None, params: ParamOpt = None,
          input_: Annotated[str | None, typer.Option(
              "--input", metavar="JSON", help="The value the first pipeline stages receive "
              "in every run (JSON or text).")] = None,
          items: Annotated[str | None, typer.Option(
              "--items", metavar="FILE|-", help="Values every run streams through the "
              "pipeline (as for run; read once); measures --mode pipeline.")] = None,
          json_file: Annotated[Path | None, typer.Option(
              "--json", metavar="FILE", help="Write the figures as JSON to FILE.")] = None,
          gantt: Annotated[Path | None, typer.Option(
              "--gantt", metavar="FILE", help="Timeline of the last run of the last mode "
              "(.html, .png or .svg).")] = None,
          harness: Annotated[bool, typer.Option(
              "--harness", hidden=True, help="Gone: run python -m benchmarks.")] = False
          ) -> None:
    """Benchmark a flow: median makespan of each mode over repeated runs, its spread, the
    speedup over sequential and the efficiency against the lower bound.

    Runs keep no history, so every repeat does the whole work again.
    """
    legacy = bool(target is None and ctx.args) or (target or "").startswith("-")
    if harness or legacy:
        # The project's harness is not part of the library: importing it meant putting the
        # working directory on sys.path and running whatever `benchmarks` package was there.
        raise _fail("flowdsl bench benchmarks a flow (flowdsl bench TARGET); the project's own "
                    "benchmarks run from a source checkout's root with `python -m benchmarks"
                    + "".join(f" {a}" for a in [*([target] if target else []), *ctx.args])
                    + "`")
    if target is None:
        raise _fail("bench needs a TARGET (path/to/file.py:flow); the project's own "
                    "benchmarks run with `python -m benchmarks` from a source checkout")
    if ctx.args:
        raise _fail(f"bench: unexpected argument(s) {' '.join(ctx.args)}")
    from .._base.errors import PlanError, RunFailed
    from .benchmark import benchmark

    # Everything that can be refused is refused before the first run: the output paths, the
    # values, the modes.
    if json_file is not None:
        _writable(json_file, "--json")
    if gantt is not None:
        _gantt_path(gantt)
    flow = _load(target, imports, params)
    context = _pairs(set_, "--set")
    options: dict[str, Any] = {}
    if input_ is not None:
        options["input"] = value_of(input_, "--input")
    if items is not None:
        options["items"] = _read_items(items)
        wrong = [m.value for m in modes or () if m is not Mode.PIPELINE]
        if wrong:
            raise _fail(f"--items streams values through a pipeline; use --mode pipeline "
                        f"(got --mode {', '.join(wrong)})")
    chosen = [m.value for m in modes] if modes else (
        ["pipeline"] if items is not None else ["sequential", "parallel"])
    err = _err()
    try:
        with _runs_progress(err) as shown:
            result = benchmark(flow, chosen, repeat=repeat, warmup=warmup,
                               on_run=None if shown is None else shown.step,
                               resources=_resources(flow, resources),
                               max_concurrency=max_concurrency, context=context, **options)
    except PlanError as exc:
        raise _fail(_plan_error(exc)) from None
    except RunFailed as exc:
        raise _fail(f"a benchmark run did not complete: {exc}", EXIT_FAILED) from None
    except ValueError as exc:  # an option value run() refused
        raise _fail(_option_error(str(exc))) from None
    out = _out()
    table = Table("mode", "median", "range", "speedup", "efficiency",
                  title=f"{result.name or 'flow'}: {repeat} run(s) per mode after {warmup} "
                        "warm-up", title_justify="left")
    for row in result.rows():
        table.add_row(*row)
    out.print(table)
    out.print(f"lower bound {result.lower_bound:.3f}s; critical path "
              f"{' -> '.join(result.critical_path)} = {result.critical_path_duration:.3f}s")
    if json_file is not None:
        json_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        out.print(f"wrote {json_file}")
    if gantt is not None:
        try:
            out.print(f"wrote {result.gantt(gantt)}")
        except (ValueError, ImportError) as exc:
            raise _fail(str(exc)) from None


def _runs_progress(console: Any) -> Any:
    """A progress bar of the benchmark's runs on a terminal (stderr), else nothing."""
    import contextlib

    if console.is_terminal and not console.is_dumb_terminal:
        from .progress import RunsProgress

        return RunsProgress(console)
    return contextlib.nullcontext()


def _writable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    folder = path.parent
    if path.is_dir():
        raise _fail(f"{flag} {str(path)!r} is a folder: give a file name")
    if not folder.is_dir():
        raise _fail(f"{flag} {str(path)!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise _fail(f"{flag} {str(path)!r}: cannot write there (permission denied)")


def _gantt_path(path: Path) -> None:
    """--gantt: a writable path with a format the timeline writer knows, and matplotlib
    installed for the image formats."""
    import importlib.util

    from .timeline import FORMATS

    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise _fail(f"--gantt {str(path)!r}: expected a name ending in {', '.join(FORMATS)}")
    if suffix != ".html" and importlib.util.find_spec("matplotlib") is None:
        raise _fail(f"--gantt {str(path)!r}: a {suffix} timeline needs matplotlib: pip "
                    "install 'flowdsl[plot]' (or write .html)")
    _writable(path, "--gantt")


def main(argv: list[str] | None = None) -> None:
    """The ``flowdsl`` console script."""
    tidy_help(typer.main.get_command(app))(args=argv, prog_name="flowdsl")
