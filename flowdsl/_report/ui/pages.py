"""The run browser's pages as HTML, from what :class:`~flowdsl.HistoryStore` returns.

Pure functions of plain data (no I/O), so the app stays a thin layer of routes. Every value
from history is escaped. A page's main content is rendered on its own too (``partial``), which
is what the live view fetches and swaps in while a run is in progress.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ..timeline import COLORS, from_history, timeline_fragment
from .graph import graph_svg

__all__ = ["RUN_STATUSES", "Page", "page", "run_body", "runs_body", "tools_body"]

#: The statuses a run can have in history, for the runs page's filter.
RUN_STATUSES = ("running", "completed", "failed", "timed_out", "cancelled", "interrupted")
_E = html.escape


class Page:
    """A page's title, its main content, and whether that content is still changing."""

    __slots__ = ("body", "live", "title")

    def __init__(self, title: str, body: str, live: bool = False) -> None:
        self.title, self.body, self.live = title, body, live


def page(p: Page, *, source: str, active: str) -> str:
    """The whole document around a page's main content."""
    nav = "".join(
        f'<a href="{href}"{" class=on" if name == active else ""}>{label}</a>'
        for name, href, label in (("runs", "/", "Runs"), ("tools", "/tools", "Tools")))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_E(p.title)} · flowdsl</title>"
            '<link rel="stylesheet" href="/static/ui.css">'
            '<script src="/static/ui.js" defer></script></head><body>'
            f'<header><a class="brand" href="/">flowdsl</a><nav>{nav}</nav>'
            f'<span class="live-dot" title="updating while runs are in progress">live</span>'
            f'<span class="source" title="history file">{_E(source)}</span></header>'
            f'<main id="content" data-live="{1 if p.live else 0}">{p.body}</main>'
            "</body></html>\n")


# -- small pieces ------------------------------------------------------------------------------

def _badge(status: str | None) -> str:
    s = status or "unknown"
    return (f'<span class="badge {_E(s)}" style="--c:{COLORS.get(s, "#999999")}">'
            f"{_E(s)}</span>")


def _secs(v: float | None) -> str:
    if v is None:
        return ""
    if v < 1.0:
        return f"{v * 1000:.0f} ms" if v >= 0.001 else f"{v * 1e6:.0f} µs"
    if v < 60.0:
        return f"{v:.2f} s"
    m, s = divmod(v, 60.0)
    return f"{m:.0f} min {s:02.0f} s" if m < 60 else f"{m // 60:.0f} h {m % 60:02.0f} min"


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _error(row: Mapping[str, Any]) -> str:
    if not row.get("error_type"):
        return ""
    return f"{row['error_type']}: {row.get('error_message') or ''}"


def _run_href(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def _select(name: str, current: str | None, options: Iterable[str], everything: str) -> str:
    opts = [f'<option value="">{_E(everything)}</option>']
    opts += [f'<option value="{_E(o)}"{" selected" if o == current else ""}>{_E(o)}</option>'
             for o in options]
    return f'<select name="{name}" aria-label="{name}">{"".join(opts)}</select>'


# -- the runs page -----------------------------------------------------------------------------

def runs_body(runs: Sequence[Mapping[str, Any]], *, flows: Sequence[str], flow: str | None,
              status: str | None, page_no: int, has_more: bool, source: str) -> Page:
    """The newest runs first, one page of them, with the flow and status filters."""
    statuses = list(dict.fromkeys([*RUN_STATUSES, *([status] if status else [])]))
    flow_opts = list(dict.fromkeys([*flows, *([flow] if flow else [])]))
    form = ('<form class="filters" method="get" action="/">'
            f'{_select("flow", flow, flow_opts, "every flow")}'
            f'{_select("status", status, statuses, "any status")}'
            '<button type="submit">Filter</button>'
            + ('<a href="/">clear</a>' if flow or status else "") + "</form>")
    if not runs:
        what = "no run matches these filters" if flow or status or page_no > 1 else (
            f"no runs in {source} yet: run a flow with history on and it appears here")
        return Page("Runs", f"<h1>Runs</h1>{form}<p class=empty>{_E(what)}.</p>")
    rows = []
    for r in runs:
        err = _error(r)
        rows.append(
            f'<tr class="run {_E(r["status"])}"><td><a class="run-link" '
            f'href="{_run_href(r["run_id"])}"><code>{_E(r["run_id"])}</code></a></td>'
            f'<td>{_E(r.get("flow") or "")}</td><td>{_E(r.get("mode") or "")}</td>'
            f"<td>{_badge(r['status'])}</td><td>{_when(r.get('started_at'))}</td>"
            f'<td class="num">{_secs(r.get("duration"))}</td>'
            f'<td class="err" title="{_E(err)}">{_E(err)}</td></tr>')
    table = ('<table class="runs"><thead><tr><th>run</th><th>flow</th><th>mode</th>'
             "<th>status</th><th>started</th><th>duration</th><th>error</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")

    def link(n: int, label: str) -> str:
        query = {k: v for k, v in (("flow", flow), ("status", status)) if v}
        if n > 1:
            query["page"] = str(n)
        href = f"/?{urlencode(query)}" if query else "/"
        return f'<a href="{href}" rel="{label}">{label}</a>'

    pager = ('<nav class="pager">' + (link(page_no - 1, "newer") if page_no > 1 else "")
             + f"<span>page {page_no}</span>" + (link(page_no + 1, "older") if has_more else "")
             + "</nav>")
    live = any(r["status"] == "running" for r in runs)
    return Page("Runs", f"<h1>Runs</h1>{form}{table}{pager}", live)


# -- the run page ------------------------------------------------------------------------------

def _log_line(entry: Any) -> str:
    """One kept log line: text as is; a structured event as ``level event key=value ...``."""
    if not isinstance(entry, Mapping):
        return str(entry)
    rest = {k: v for k, v in entry.items() if k not in ("level", "event", "timestamp", "time")}
    head = " ".join(str(entry[k]) for k in ("timestamp", "time", "level", "event")
                    if entry.get(k) is not None)
    tail = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in rest.items())
    return f"{head} {tail}".strip()


def _attempts(t: Mapping[str, Any]) -> str:
    attempts = t.get("attempts") or []
    if len(attempts) <= 1:
        return str(len(attempts)) if attempts else ""
    items = "".join(
        f"<li>#{a['number']} {_badge(a['status'])} {_secs(a.get('duration'))}"
        + (f' <span class="err">{_E(_error(a))}</span>' if a.get("error_type") else "")
        + "</li>" for a in attempts)
    return f"<details><summary>{len(attempts)}</summary><ol>{items}</ol></details>"


def _task_rows(tasks: Sequence[Mapping[str, Any]], anchors: Mapping[str, str]) -> str:
    rows = []
    for t in tasks:
        tid = str(t["task_id"])
        why = _error(t) or (t.get("reason") or "")
        logs = t.get("logs") or []
        log_cell = (f"<details><summary>{len(logs)} line{'s' if len(logs) != 1 else ''}"
                    f"</summary><pre>{_E(chr(10).join(_log_line(x) for x in logs))}</pre>"
                    "</details>") if logs else ""
        tool = str(t.get("tool") or "")
        rows.append(
            f'<tr id="{anchors[tid]}" class="task {_E(t["status"])}" data-task="{_E(tid)}">'
            f"<td><code>{_E(tid)}</code></td>"
            f'<td><a href="/tools#{_E(quote(tool, safe=""))}">{_E(tool)}</a></td>'
            f"<td>{_badge(t['status'])}</td><td class=num>{_attempts(t)}</td>"
            f"<td class=num>{_secs(t.get('started_at'))}</td>"
            f"<td class=num>{_secs(t.get('duration'))}</td>"
            f'<td class="{"err" if _error(t) else "why"}">{_E(why)}</td><td>{log_cell}</td></tr>')
    return ("<table class=tasks><thead><tr><th>task</th><th>tool</th><th>status</th>"
            "<th>attempts</th><th>start</th><th>duration</th><th>error / reason</th>"
            f"<th>log</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def run_body(run: Mapping[str, Any], *, plan: Any = None,
             edges: Sequence[tuple[str, str]] | None = None) -> Page:
    """A run: its facts, timeline, graph and tasks.

    Args:
        run: what :meth:`HistoryStore.get_run` returns (``edges`` in it are used when present).
        plan: the flow's plan, when known: the true critical path, pool lanes and the edges
            (ignored when the run has tasks the plan does not know).
        edges: the graph's edges when neither the record nor ``plan`` has them.
    """
    tasks = run.get("tasks") or []
    if plan is not None and not {t["task_id"] for t in tasks} <= plan.tasks.keys():
        plan = None  # another version of the flow: its edges and path would mislead
    anchors = {str(t["task_id"]): f"task-{n}" for n, t in enumerate(tasks)}
    counts = Counter(t["status"] for t in tasks)
    facts = [("run", f"<code>{_E(run['run_id'])}</code>"),
             ("mode", _E(run.get("mode") or "")), ("started", _when(run.get("started_at"))),
             ("duration", _secs(run.get("duration")) or "—"),
             ("tasks", " ".join(f"{_badge(s)}&nbsp;{n}" for s, n in counts.most_common()))]
    if run.get("error_type"):
        facts.append(("error", f'<span class="err">{_E(_error(run))}</span>'))
    if run.get("history_error"):  # some of the run's rows never reached the file
        facts.append(("history", f'<span class="err">{_E(str(run["history_error"]))}</span>'))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    graph_edges = _edges_of(run, plan, edges)
    if tasks:
        svg = graph_svg(tasks, graph_edges or (), anchors=anchors)
        note = "" if graph_edges is not None else (
            '<p class="note">This history record keeps no edges: tasks are shown in start '
            "order. Start the browser with <code>--flow TARGET</code> to draw this flow's "
            "edges.</p>")
        graph = f'<div class="graph-box">{svg}</div>{note}'
        timeline = timeline_fragment(from_history(run, plan))
    else:
        graph = timeline = '<p class="empty">no task has started yet.</p>'
    title = f"{run.get('flow') or 'flow'}"
    body = (f'<p class="crumbs"><a href="/">Runs</a> › <code>{_E(run["run_id"])}</code></p>'
            f'<h1>{_E(title)} <span id="run-status">{_badge(run["status"])}</span></h1>'
            f'<dl class="facts">{dl}</dl>'
            f"<section><h2>Timeline</h2>{timeline}</section>"
            f"<section><h2>Graph</h2>{graph}</section>"
            f"<section><h2>Tasks</h2>{_task_rows(tasks, anchors)}</section>")
    return Page(f"{title} {run['run_id']}", body, run["status"] == "running")


def _edges_of(run: Mapping[str, Any], plan: Any,
              edges: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    kept = run.get("edges")
    if kept is not None:
        return [(str(a), str(b)) for a, b in kept]
    if plan is not None:
        return list(plan.edges)
    return list(edges) if edges is not None else None


# -- the tools page ----------------------------------------------------------------------------

def tools_body(stats: Mapping[str, Any]) -> Page:
    """Per-tool statistics over the whole history (:meth:`HistoryStore.tool_stats`)."""
    if not stats:
        return Page("Tools", "<h1>Tools</h1><p class=empty>no tool has run yet.</p>")
    rows = []
    for s in stats.values():
        rate = s.success_rate
        bar = ("" if rate is None else
               f'<span class="rate"><i style="width:{100 * rate:.0f}%"></i></span>'
               f"{100 * rate:.0f}%")
        short = getattr(s, "name", "") or s.tool
        label = _E(short) if short == s.tool else f'{_E(short)} <small>{_E(s.tool)}</small>'
        rows.append(
            f'<tr id="{_E(quote(s.tool, safe=""))}"><td><code>{label}</code></td>'
            f"<td class=num>{s.count}</td><td class=num>{s.completed}</td>"
            f"<td class=num>{s.failed}</td><td>{bar}</td><td class=num>{s.attempts}</td>"
            f"<td class=num>{s.timeouts}</td>"
            + "".join(f"<td class=num>{_secs(v)}</td>" for v in (s.mean, s.p50, s.p95, s.max))
            + "</tr>")
    table = ("<table class=tools><thead><tr><th>tool</th><th>tasks</th><th>ok</th>"
             "<th>failed</th><th>success</th><th>calls</th><th>timeouts</th><th>mean</th>"
             "<th>p50</th><th>p95</th><th>max</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    return Page("Tools", "<h1>Tools</h1><p class=note>Durations are those of successful calls; "
                f"success counts tasks that finished.</p>{table}")
