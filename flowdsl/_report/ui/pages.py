"""The run browser's pages as HTML, from what :class:`~flowdsl.HistoryStore` returns.

Pure functions of plain data (no I/O), so the app stays a thin layer of routes. Every value
from history is escaped. A page's main content is rendered on its own too (``partial``), which
is what the live view fetches and swaps in while a run is in progress.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ..._run.result import RunStatus
from ..timeline import COLORS, child_of, from_history, kin, timeline_fragment
from .graph import graph_svg

__all__ = ["BADGES", "RUN_STATUSES", "Page", "badge_colors", "contrast", "page", "run_body",
           "runs_body", "tools_body"]

#: The statuses a run can have in history, for the runs page's filter (every RunStatus, and
#: ``interrupted``: a run whose process is gone).
RUN_STATUSES = (*(s.value for s in RunStatus), "interrupted")
#: Log lines shown in a running task's live tail.
TAIL = 200
_E = html.escape
_DARK, _LIGHT = "#1d2433", "#ffffff"


def _luminance(color: str) -> float:
    """WCAG relative luminance of ``#rrggbb``."""
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def badge_colors(color: str) -> tuple[str, str]:
    """A badge's background and text for a status colour, at WCAG AA contrast (>= 4.5:1):
    dark or white text, whichever reads better; a colour too mid-toned for either is darkened
    until white text reads on it."""
    text = max((_DARK, _LIGHT), key=lambda t: contrast(color, t))
    while contrast(color, text) < 4.5:
        text = _LIGHT
        color = "#" + "".join(f"{int(int(color[i:i + 2], 16) * 0.92):02x}" for i in (1, 3, 5))
    return color, text


#: Each status's badge (background, text), from the one palette.
BADGES = {s: badge_colors(c) for s, c in COLORS.items()}


class Page:
    """A page's title, its main content, and whether that content is still changing."""

    __slots__ = ("body", "live", "title")

    def __init__(self, title: str, body: str, live: bool = False) -> None:
        self.title, self.body, self.live = title, body, live


def page(p: Page, *, source: str, active: str, snapshot: str | None = None) -> str:
    """The whole document around a page's main content (``snapshot``: why the pages come
    from a snapshot copy of the history file, said on every page)."""
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
            f'<span class="source" title="history file (read-only)">{_E(source)}</span>'
            "</header>"
            + (f'<p class="snapshot" id="snapshot">Read from a snapshot copy: {_E(snapshot)}. '
               "It is taken again when the file changes.</p>" if snapshot else "")
            + '<p class="notice" id="notice" role="status" hidden></p>'
            f'<main id="content" data-live="{1 if p.live else 0}">{p.body}</main>'
            "</body></html>\n")


# -- small pieces ------------------------------------------------------------------------------

def _badge(status: str | None) -> str:
    s = status or "unknown"
    bg, fg = BADGES.get(s) or badge_colors("#999999")
    return f'<span class="badge {_E(s)}" style="--c:{bg};--t:{fg}">{_E(s)}</span>'


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
              status: str | None, page_no: int, has_more: bool, source: str,
              statuses: Sequence[str] = RUN_STATUSES, now: float | None = None) -> Page:
    """The newest runs first, one page of them, with the flow and status filters. The first
    page stays live (new runs appear as they start); a running run's duration is its elapsed
    time at ``now`` (Unix time)."""
    statuses = list(dict.fromkeys([*statuses, *([status] if status else [])]))
    flow_opts = list(dict.fromkeys([*flows, *([flow] if flow else [])]))
    form = ('<form class="filters" method="get" action="/">'
            f'{_select("flow", flow, flow_opts, "every flow")}'
            f'{_select("status", status, statuses, "any status")}'
            '<button type="submit">Filter</button>'
            + ('<a href="/">clear</a>' if flow or status else "") + "</form>")
    if not runs:
        what = "no run matches these filters" if flow or status or page_no > 1 else (
            f"no runs in {source} yet: run a flow with history on and it appears here")
        return Page("Runs", f"<h1>Runs</h1>{form}<p class=empty>{_E(what)}.</p>", page_no == 1)
    rows = []
    for r in runs:
        err = _error(r) or str(r.get("interrupted_why") or "")
        took = _secs(r.get("duration"))
        if r["status"] == "running" and r.get("started_at") is not None and now is not None:
            took = f'<span class="elapsed">{_secs(max(now - r["started_at"], 0.0))}</span>'
        rows.append(
            f'<tr class="run {_E(r["status"])}"><td><a class="run-link" '
            f'href="{_run_href(r["run_id"])}"><code>{_E(r["run_id"])}</code></a></td>'
            f'<td>{_E(r.get("flow") or "")}</td><td>{_E(r.get("mode") or "")}</td>'
            f"<td>{_badge(r['status'])}</td><td class=when>{_when(r.get('started_at'))}</td>"
            f'<td class="num">{took}</td>'
            f'<td class="err" title="{_E(err)}">{_E(err)}</td></tr>')
    table = ('<table class="runs"><thead><tr><th>run</th><th>flow</th><th>mode</th>'
             "<th>status</th><th class=when>started</th><th class=num>duration</th>"
             f"<th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def link(n: int, label: str) -> str:
        query = {k: v for k, v in (("flow", flow), ("status", status)) if v}
        if n > 1:
            query["page"] = str(n)
        href = f"/?{urlencode(query)}" if query else "/"
        return f'<a href="{_E(href)}" rel="{label}">{label}</a>'

    pager = ('<nav class="pager">' + (link(page_no - 1, "newer") if page_no > 1 else "")
             + f"<span>page {page_no}</span>" + (link(page_no + 1, "older") if has_more else "")
             + "</nav>")
    live = page_no == 1 or any(r["status"] == "running" for r in runs)
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


@functools.lru_cache(maxsize=1024)
def tool_anchor(tool: str) -> str:
    """The id of a tool's row on the tools page, from its qualified name: letters, digits,
    ``.``, ``_`` and ``-`` as they are, any other character as ``~<hex>~`` (an id a link's
    ``#fragment`` reaches as written, in every browser: no percent-encoding involved)."""
    return "tool-" + "".join(c if c.isascii() and (c.isalnum() or c in "._-")
                             else f"~{ord(c):x}~" for c in tool)


def _log_cell(t: Mapping[str, Any]) -> str:
    logs = t.get("logs") or []
    running = t.get("status") == "running"
    if not logs:
        return '<span class="why">no lines yet</span>' if running else ""
    shown = logs[-TAIL:] if running else logs
    more = f" (last {len(shown)})" if len(shown) < len(logs) else ""
    label = f"{len(logs)} line{'s' if len(logs) != 1 else ''}{more}"
    # a running task's log is open and follows its tail (the page script scrolls it down)
    return (f"<details{' open' if running else ''}><summary>{label}</summary>"
            f"<pre{' class=tail' if running else ''}>"
            f"{_E(chr(10).join(_log_line(x) for x in shown))}</pre></details>")


def _task_row(t: Mapping[str, Any], anchor: str, cls: str = "task") -> str:
    tid = str(t["task_id"])
    why = _error(t) or (t.get("reason") or "")
    tool = str(t.get("tool") or "")
    qual = str(t.get("qualname") or tool)
    tool_cell = (f'<a href="/tools#{_E(tool_anchor(qual))}" title="{_E(qual)}">{_E(tool)}</a>'
                 if tool else "")
    return (f'<tr id="{anchor}" class="{cls} {_E(t["status"])}" data-task="{_E(tid)}">'
            f"<td><code>{_E(tid)}</code></td><td>{tool_cell}</td>"
            f"<td>{_badge(t['status'])}</td><td class=num>{_attempts(t)}</td>"
            f"<td class=num>{_secs(t.get('started_at'))}</td>"
            f"<td class=num>{_secs(t.get('duration'))}</td>"
            f'<td class="{"err" if _error(t) else "why"}">{_E(why)}</td>'
            f"<td>{_log_cell(t)}</td></tr>")


_TASK_HEAD = ("<thead><tr><th>task</th><th>tool</th><th>status</th><th class=num>attempts</th>"
              "<th class=num>start</th><th class=num>duration</th><th>error / reason</th>"
              "<th>log</th></tr></thead>")


def _task_rows(tasks: Sequence[Mapping[str, Any]], anchors: Mapping[str, str],
               kids: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The task table: a mapped task's children grouped under it, collapsed, with their
    count per status (open while one of them runs)."""
    rows = []
    for t in tasks:
        tid = str(t["task_id"])
        rows.append(_task_row(t, anchors[tid]))
        children = kids.get(tid)
        if children:
            counts = Counter(c["status"] for c in children)
            summary = ", ".join(f"{_badge(s)}&nbsp;{n}" for s, n in counts.most_common())
            inner = "".join(_task_row(c, anchors[str(c["task_id"])], "task child")
                            for c in children)
            rows.append(
                f'<tr class="kids" id="{anchors[tid]}-children" data-parent="{_E(tid)}">'
                f'<td colspan="8"><details{" open" if counts.get("running") else ""}>'
                f"<summary>{len(children)} {kin(children)} of <code>{_E(tid)}</code>: "
                f'{summary}</summary><table class="tasks inner">{_TASK_HEAD}'
                f"<tbody>{inner}</tbody></table></details></td></tr>")
    return (f"<table class=tasks>{_TASK_HEAD}<tbody>{''.join(rows)}</tbody></table>")


def split_children(tasks: Sequence[Mapping[str, Any]], known: Iterable[str] = ()
                   ) -> tuple[list[Mapping[str, Any]], dict[str, list[Mapping[str, Any]]]]:
    """A run's tasks without the mapped tasks' children and the pipeline stages' items, and
    those by parent: a child's id is its parent's with ``[i]`` (an item's: ``@i``) after it,
    and its parent is a task of the run (a switch's gate ``switch['b']`` is not a child:
    ``switch`` is no task)."""
    ids = {str(t["task_id"]) for t in tasks} | set(known)
    top: list[Mapping[str, Any]] = []
    kids: dict[str, list[Mapping[str, Any]]] = {}
    for t in tasks:
        tid = str(t["task_id"])
        parent = child_of(tid)
        if parent and parent in ids:
            kids.setdefault(parent, []).append(t)
        else:
            top.append(t)
    return top, kids


def horizon(elapsed: float) -> float:
    """A live timeline's right edge: a round figure at least a fifth past ``elapsed``
    (1, 2 or 5 times a power of ten), so running bars visibly grow toward it between
    refreshes instead of being pinned to the edge; it steps out as the run goes on."""
    want = max(elapsed * 1.2, 1.0)
    mag = 10 ** math.floor(math.log10(want))
    edge: float = next(m * mag for m in (1, 2, 5, 10) if m * mag >= want)
    return edge


def _live_stages(run: Mapping[str, Any]) -> Mapping[str, Any]:
    """A running pipeline over items has rows for its stages' items (``stage@i``) but none yet
    for the stages, which are written when the run ends: each such stage is shown running
    from its first item's start, over the items recorded so far."""
    tasks = run.get("tasks") or []
    if run.get("status") != "running" or not any(t.get("item") is not None for t in tasks):
        return run
    have = {str(t["task_id"]) for t in tasks}
    stages: dict[str, dict[str, Any]] = {}
    out: list[Mapping[str, Any]] = []
    for t in tasks:
        stage = child_of(str(t["task_id"])) if t.get("item") is not None else ""
        if stage and stage not in have:
            row = stages.get(stage)
            if row is None:
                row = stages[stage] = {
                    "task_id": stage, "tool": t.get("tool"), "qualname": t.get("qualname"),
                    "status": "running", "started_at": t.get("started_at"), "ended_at": None,
                    "duration": None, "attempts": [], "error_type": None,
                    "error_message": None, "reason": None, "logs": [], "item": None,
                    "items": 0}
                out.append(row)
            row["items"] += 1
            row["reason"] = f"in progress: {row['items']} item(s) recorded so far"
            if t.get("started_at") is not None and (row["started_at"] is None
                                                     or t["started_at"] < row["started_at"]):
                row["started_at"] = t["started_at"]
        out.append(t)
    return {**run, "tasks": out}


def _as_of(run: Mapping[str, Any], now: float | None) -> tuple[dict[str, Any], float | None]:
    """The run as drawn at ``now``: while it runs, its running tasks' bars (and attempts)
    reach the present, so they grow on each refresh; also its elapsed time."""
    out = dict(run)
    start = run.get("started_at")
    if run.get("status") != "running" or start is None or now is None:
        return out, None
    elapsed = max(now - float(start), 0.0)
    tasks = []
    for t in run.get("tasks") or []:
        if t.get("status") == "running" and t.get("started_at") is not None:
            end = max(elapsed, float(t["started_at"]))
            t = {**t, "ended_at": end, "duration": end - float(t["started_at"]),
                 "attempts": [{**a, "ended_at": end, "duration": end - float(a["started_at"])}
                              if a.get("ended_at") is None and a.get("started_at") is not None
                              else a for a in t.get("attempts") or []]}
        tasks.append(t)
    out["tasks"], out["duration"] = tasks, elapsed
    return out, elapsed


def run_body(run: Mapping[str, Any], *, plan: Any = None,
             edges: Sequence[tuple[str, str]] | None = None, now: float | None = None) -> Page:
    """A run: its facts, timeline, graph and tasks.

    Args:
        run: what :meth:`HistoryStore.get_run` returns (``edges`` and ``nodes`` in it are
            used when present).
        plan: the flow's plan, when known: the true critical path, pool lanes and the edges
            (ignored when the run has tasks the plan does not know).
        edges: the graph's edges when neither the record nor ``plan`` has them.
        now: the time now (Unix time): a running run's elapsed time and growing bars.
    """
    run, elapsed = _as_of(_live_stages(run), now)
    tasks = run.get("tasks") or []
    recorded = {str(t["task_id"]) for t in tasks}
    if plan is not None and not {i for i in recorded if not child_of(i)} <= plan.tasks.keys():
        plan = None  # another version of the flow: its edges and path would mislead
    graph_edges = _edges_of(run, plan, edges)
    order = _order_of(run, plan, graph_edges)
    top, kids = split_children(tasks, order)
    anchors = {str(t["task_id"]): f"task-{n}" for n, t in enumerate(tasks)}
    live = run["status"] == "running"
    # Tasks of the plan with no row yet: waiting while the run goes on, never run after.
    missing = "pending" if live else "not_run"
    waiting: list[dict[str, Any]] = [
        {"task_id": i, "tool": "", "status": missing, "started_at": None, "ended_at": None,
         "duration": None, "attempts": [], "error_type": None,
         "reason": None if live else "no record: the run ended before it started"}
        for i in order if i not in recorded]
    for n, i in enumerate((str(t["task_id"]) for t in waiting), len(anchors)):
        anchors[i] = f"task-{n}"
    counts = Counter(t["status"] for t in [*tasks, *waiting])
    facts = [("run", f"<code>{_E(run['run_id'])}</code>"),
             ("mode", _E(run.get("mode") or "")), ("started", _when(run.get("started_at"))),
             ("duration", f'<span class="elapsed" id="elapsed">{_secs(elapsed)}</span> so far'
              if elapsed is not None else (_secs(run.get("duration")) or "—")),
             ("tasks", " ".join(f"{_badge(s)}&nbsp;{n}" for s, n in counts.most_common()))]
    if run.get("interrupted_why"):
        facts.append(("interrupted", f'<span class="err">{_E(str(run["interrupted_why"]))}'
                                     "</span> (the file still says running: the browser only "
                                     "reads)"))
    if run.get("error_type"):
        facts.append(("error", f'<span class="err">{_E(_error(run))}</span>'))
    if run.get("history_error"):  # some of the run's rows never reached the file
        facts.append(("history", f'<span class="err">{_E(str(run["history_error"]))}</span>'))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    if tasks or order:
        svg = graph_svg(top, graph_edges or (), anchors=anchors, order=order, kids=kids,
                        missing=missing)
        note = "" if graph_edges is not None else (
            '<p class="note">This history record keeps no edges: tasks are shown in start '
            "order. Start the browser with <code>--flow TARGET</code> to draw this flow's "
            "edges.</p>")
        graph = f'<div class="graph-box">{svg}</div>{_graph_kids(kids, anchors)}{note}'
    else:
        graph = '<p class="empty">no task has started yet.</p>'
    if tasks:
        tl = from_history(run, plan)
        if elapsed is not None:
            tl.duration = horizon(elapsed)
        timeline = timeline_fragment(tl, group=True)
    else:
        timeline = '<p class="empty">no task has started yet.</p>'
    title = f"{run.get('flow') or 'flow'}"
    body = (f'<p class="crumbs"><a href="/">Runs</a> › <code>{_E(run["run_id"])}</code></p>'
            f'<h1>{_E(title)} <span id="run-status">{_badge(run["status"])}</span></h1>'
            f'<dl class="facts">{dl}</dl>'
            f"<section><h2>Timeline</h2>{timeline}</section>"
            f"<section><h2>Graph</h2>{graph}</section>"
            f"<section><h2>Tasks</h2>{_task_rows([*top, *waiting], anchors, kids)}</section>")
    return Page(f"{title} {run['run_id']}", body, live)


#: Children drawn per mapped task under the graph (the task table lists them all).
CHIPS = 500


def _graph_kids(kids: Mapping[str, Sequence[Mapping[str, Any]]],
                anchors: Mapping[str, str]) -> str:
    """Under the graph, each mapped task's children, collapsed: one chip per child in its
    status's colour, linking to its row (open while one of them runs)."""
    out = []
    for parent, children in kids.items():
        counts = Counter(str(c["status"]) for c in children)
        chips = "".join(
            f'<a class="chip {_E(str(c["status"]))}" href="#{anchors[str(c["task_id"])]}" '
            'style="--c:{};--t:{}" title="{}">{}</a>'.format(
                *BADGES.get(str(c["status"])) or badge_colors("#999999"),
                _E(f'{c["task_id"]}: {c["status"]}'), _E(str(c["task_id"])))
            for c in children[:CHIPS])
        more = (f'<span class="note">and {len(children) - CHIPS:,} more in the table</span>'
                if len(children) > CHIPS else "")
        out.append(f'<details class="graph-kids" data-parent="{_E(parent)}"'
                   f'{" open" if counts.get("running") else ""}><summary><code>{_E(parent)}'
                   f"</code>: {len(children)} {kin(children)} "
                   + " ".join(f"{_badge(st)}&nbsp;{n}" for st, n in counts.most_common())
                   + f'</summary><div class="chips">{chips}{more}</div></details>')
    return "".join(out)


def _order_of(run: Mapping[str, Any], plan: Any,
              edges: Sequence[tuple[str, str]] | None) -> list[str]:
    """Every task of the run's plan, in its order: the recorded task ids, else the plan's,
    else the edges' ends (tasks without edges and no row yet are then unknown)."""
    nodes = run.get("nodes")
    if nodes is not None:
        return [str(n) for n in nodes]
    if plan is not None:
        return list(plan.order)
    return list(dict.fromkeys(n for e in edges or () for n in e))


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
            f'<tr id="{_E(tool_anchor(s.tool))}"><td><code>{label}</code></td>'
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
