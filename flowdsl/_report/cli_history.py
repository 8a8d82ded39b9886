"""The history commands of the ``flowdsl`` command line: ``history list/show/stats`` and
``timeline``, which read past runs back from the history file (``--history``).

They are registered on the same typer app as the rest (``cli_common.app``) by
:func:`register`, which ``cli`` calls where ``timeline`` belongs in ``flowdsl --help``; the
app, target loading, the shared helpers and ``main`` stay in ``cli_common`` and ``cli``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from .cli_common import (
    DOC_SUFFIXES,
    JsonOpt,
    _err,
    _fail,
    _history,
    _load,
    _out,
    _plan,
    _print_json,
)

__all__ = ["history_app", "history_list", "history_show", "history_stats", "register",
           "timeline"]

history_app = typer.Typer(help="Runs kept in history: list them, show one, tool statistics.",
                          invoke_without_command=True)


def register(app: typer.Typer) -> None:
    """Add ``timeline`` and the ``history`` group to the ``flowdsl`` app."""
    app.command(epilog="Example: flowdsl timeline last -o run.html")(timeline)
    app.add_typer(history_app, name="history")


def _note(message: str) -> None:
    _err().print(f"[yellow]note:[/] {message}", markup=True, soft_wrap=True)


def _flow_names(names: Iterable[str | None]) -> str:
    return ", ".join(repr(n) if n is not None else "(unnamed)" for n in names)


def _known_flow(store: Any, flow: str) -> None:
    """Exit 2 when no run of ``flow`` is in the history, naming the flows that have runs."""
    flows = store.flows()
    if flow not in flows:
        have = f"flows with runs: {_flow_names(flows)}" if flows else "it holds no runs"
        raise _fail(f"no run of flow {flow!r} in the history at {store.path} ({have})")


def _other_flows(store: Any, shown: Iterable[str | None]) -> None:
    """Say when what is shown mixes flows, or leaves others out."""
    flows = store.flows()
    if len(flows) > 1:
        _note(f"runs of {len(flows)} flows are in this history ({_flow_names(flows)}); "
              f"shown: {_flow_names(sorted(set(shown), key=str))}. --flow NAME picks one")


def _is_target(spec: str) -> bool:
    return ":" in spec or Path(spec).suffix.lower() in DOC_SUFFIXES


def timeline(run_id: Annotated[str, typer.Argument(help="A run id from `flowdsl history`, "
                                                   "or `last`.")],
             output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE",
                                                  help=".html (self-contained), .png or "
                                                  ".svg (matplotlib).")],
             flow: Annotated[str | None, typer.Option(
                 "--flow", metavar="TARGET|NAME", help="The run's flow: a target (its edges "
                 "give the true critical path and its pools the swimlanes) or a flow name. "
                 "With `last`, the last run of that flow.")] = None) -> None:
    """Draw a run's timeline (Gantt chart) from history."""
    from .._base.errors import HistoryError
    from .timeline import save_timeline

    store = _history()
    if store is None:
        raise _fail("history is off (FLOWDSL_HISTORY=off): no runs to draw")
    p = _plan(_load(flow)) if flow and _is_target(flow) else None
    name = (p.name if p is not None else flow) if flow else None
    if run_id == "last":
        if flow is not None and name is None:
            raise _fail(f"--flow {flow}: that flow has no name, so its runs cannot be told "
                        "apart; name it (Flow('name', ...)) or give a run id")
        if name is not None:
            _known_flow(store, name)
        runs = store.runs(1, flow=name)
        if not runs:
            raise _fail(f"no runs in the history at {store.path}")
        run_id = runs[0]["run_id"]
        if name is None:
            _other_flows(store, [runs[0]["flow"]])
    try:
        run_ = store.get_run(run_id)
        if name is not None and run_["flow"] != name:
            _note(f"run {run_id} is of flow {run_['flow']!r}, not {name!r}")
        path = save_timeline(run_id, output, history=store, plan=p)
    except (HistoryError, ValueError, ImportError) as exc:
        raise _fail(str(exc)) from None
    _out().print(f"wrote {path}")


@history_app.callback()
def _history_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        history_list(limit=20, flow=None, status=None, as_json=False)


@history_app.command("list", epilog="Example: flowdsl history list --limit 5 --json")
def history_list(limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N",
                                                   help="Show at most N runs.")] = 20,
                 flow: Annotated[str | None, typer.Option(
                     "--flow", metavar="NAME",
                     help="Only the runs of this flow (exit 2 if it has none).")] = None,
                 status: Annotated[str | None, typer.Option(
                     "--status", metavar="STATUS", help="Only runs that ended so "
                     "(completed, failed, cancelled, timed_out).")] = None,
                 as_json: JsonOpt = False) -> None:
    """The newest runs first."""
    import datetime as dt

    store = _history()
    if store is not None and flow is not None:
        _known_flow(store, flow)
    runs = store.runs(limit, flow=flow, status=status) if store is not None else []
    if store is not None and flow is None and not as_json:  # JSON rows name their flow
        _other_flows(store, [r["flow"] for r in runs])
    if as_json:
        _print_json(runs)
        return
    table = Table(Column("run", no_wrap=True), "flow", "mode", "status",
                  Column("started", no_wrap=True), "duration", "error",
                  title=f"runs in {store.path if store is not None else '(history off)'}",
                  title_justify="left")
    for r in runs:
        when = (dt.datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
                if r["started_at"] else "")
        d = r["duration"]
        table.add_row(r["run_id"], r["flow"] or "", r["mode"] or "", r["status"], when,
                      "" if d is None else f"{d:.3f}s",
                      f"{r['error_type']}: {r['error_message']}" if r["error_type"] else "")
    _out().print(table)


@history_app.command("show", epilog="Example: flowdsl history show 3f2a9c1b7e0d")
def history_show(run_id: Annotated[str, typer.Argument(help="A run id, or `last`.")],
                 as_json: JsonOpt = False) -> None:
    """One run with its tasks and their attempts."""
    from .._base.errors import RunNotFound

    store = _history()
    if store is None:
        raise _fail("history is off (FLOWDSL_HISTORY=off)")
    if run_id == "last":
        runs = store.runs(1)
        run_id = runs[0]["run_id"] if runs else run_id
    try:
        run_ = store.get_run(run_id)
    except RunNotFound as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(run_)
        return
    if run_.get("history_error"):
        _note(f"some rows of this run were not recorded: {run_['history_error']}")
    d = run_["duration"]
    table = Table("task", "tool", "status", "attempts", "start", "duration", "error",
                  title=f"run {run_['run_id']} of {run_['flow'] or 'flow'} ({run_['mode']}): "
                        f"{run_['status']}" + ("" if d is None else f" in {d:.3f}s"),
                  title_justify="left")
    for t in run_["tasks"]:
        table.add_row(t["task_id"], t["tool"] or "", t["status"], str(len(t["attempts"])),
                      "" if t["started_at"] is None else f"{t['started_at']:.3f}",
                      "" if t["duration"] is None else f"{t['duration']:.3f}s",
                      f"{t['error_type']}: {t['error_message']}" if t["error_type"]
                      else (t["reason"] or ""))
    _out().print(table)


@history_app.command("stats", epilog="Example: flowdsl history stats fetch --json")
def history_stats(tool: Annotated[str | None, typer.Argument(
                      help="Only this tool (its short or module-qualified name).")] = None,
                  flow: Annotated[str | None, typer.Option(
                      "--flow", help="Only the runs of this flow.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Per-tool statistics (tools by module-qualified name): calls, success rate, timeouts
    and durations, over every flow unless --flow picks one."""
    store = _history()
    if store is not None and flow is not None:
        _known_flow(store, flow)
    stats = store.tool_stats(tool, flow=flow) if store is not None else {}
    if store is not None and flow is None and not as_json:
        _other_flows(store, [f or None for s in stats.values() for f in s.flows])
    if as_json:
        _print_json({k: v.to_dict() for k, v in stats.items()})
        return

    def sec(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}s"

    table = Table("tool", "flows", "tasks", "ok", "failed", "success", "attempts", "timeouts",
                  "mean", "p50", "p95", "max", title="tool statistics", title_justify="left")
    for s in stats.values():
        rate = "" if s.success_rate is None else f"{100 * s.success_rate:.0f}%"
        flows = ", ".join(f or "(unnamed)" for f in s.flows)
        table.add_row(s.tool, flows, str(s.count), str(s.completed), str(s.failed), rate,
                      str(s.attempts), str(s.timeouts), sec(s.mean), sec(s.p50), sec(s.p95),
                      sec(s.max))
    _out().print(table)

