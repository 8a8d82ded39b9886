"""Report: a run's timeline as a Gantt chart (PNG/SVG through matplotlib) or a self-contained
HTML page, from a :class:`~flowdsl.RunResult` or from a run kept in history.

Both pictures are drawn from one :class:`Timeline` value: one :class:`Bar` per task with its
attempts, status, error and swimlane (the pools it used), and the critical path. A pipeline
over items adds a bar per stage x item (``stage@i``, drawn under its stage, whose own bar is
drawn pale: it spans its items, it is no call of its own). For a result
the critical path comes from its plan and the measured durations; a history run keeps its plan's
edges, which give it the same way; only a run recorded without them (an older file) falls back
to the chain of tasks that each started right as the one before ended
(``critical_source = "timings"``).

    from flowdsl import save_timeline
    save_timeline(result, "run.html")          # or "run.png", "run.svg"
    save_timeline("3f2a9c1b7e0d", "run.png")   # a run id from history
"""

from __future__ import annotations

import bisect
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .palette import STATUS_COLORS, WAIT_COLOR

__all__ = [
    "Bar",
    "Span",
    "Timeline",
    "child_of",
    "from_history",
    "from_result",
    "legend_items",
    "save_timeline",
    "timeline_fragment",
    "timeline_html",
]

#: Fill colour of each status: the one palette (``flowdsl._report.palette.STATUS_COLORS``).
COLORS: Mapping[str, str] = STATUS_COLORS
CRITICAL = "#1f1f1f"
NO_POOL = "no pool"
FORMATS = (".html", ".png", ".svg")


@dataclass(slots=True)
class Span:
    """One attempt of a task: seconds since the run started, its status and error text."""

    number: int
    start: float
    end: float
    status: str
    error: str | None = None


@dataclass(slots=True)
class Bar:
    """One task on the timeline (``start``/``end`` are ``None`` for a task that never ran)."""

    id: str
    tool: str
    status: str
    start: float | None
    end: float | None
    attempts: list[Span] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    lane: str = NO_POOL
    critical: bool = False
    logs: list[str] = field(default_factory=list)
    #: On the critical path, the time this task waited, ready but not started, as
    #: ``(ready, start, why)`` ("pool db", "a worker"): part of the path, drawn as a wait.
    queued: tuple[float, float, str] | None = None
    #: A pipeline stage's item bar (``stage@i``): the item's index; else ``None``.
    item: int | None = None
    #: A pipeline stage's own bar: how many item bars it spans; else ``None``.
    items: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    @property
    def retried(self) -> bool:
        return len(self.attempts) > 1

    def waits(self) -> list[tuple[float, float]]:
        """The gaps between attempts (a retry's backoff): time waited, not worked."""
        return [(a.end, b.start) for a, b in zip(self.attempts, self.attempts[1:])
                if b.start > a.end]


@dataclass(slots=True)
class Timeline:
    """Everything a timeline picture shows, independent of how it is drawn."""

    title: str
    run_id: str
    status: str
    duration: float
    bars: list[Bar]
    critical_path: list[str]
    critical_source: str = "plan"

    @property
    def lanes(self) -> list[str]:
        """The swimlanes in first-use order; one lane when no task used a pool."""
        seen = dict.fromkeys(b.lane for b in self.bars)
        if NO_POOL in seen:  # tasks without a pool go last, below the pools' lanes
            seen.pop(NO_POOL)
            seen[NO_POOL] = None
        return list(seen)

    @property
    def end(self) -> float:
        """The right edge of the time axis: the run's duration or the last task's end."""
        ends = [b.end for b in self.bars if b.end is not None]
        return max([self.duration, *ends, 1e-9])

    def rows(self) -> list[Bar]:
        """Bars grouped by lane, each lane in start order (tasks that never ran last); a
        pipeline stage's item bars follow their stage's bar, in item order."""
        order = {lane: n for n, lane in enumerate(self.lanes)}
        items: dict[str, list[Bar]] = {}
        stages = {b.id for b in self.bars if b.items is not None}
        for b in self.bars:
            if b.item is not None and child_of(b.id) in stages:
                items.setdefault(child_of(b.id), []).append(b)
        top = sorted((b for b in self.bars if not (b.item is not None and child_of(b.id)
                                                   in stages)),
                     key=lambda b: (order[b.lane], b.start is None, b.start or 0.0, b.id))
        if not items:
            return top
        out = []
        for b in top:
            out.append(b)
            out += sorted(items.get(b.id, ()), key=lambda c: c.item or 0)
        return out


def child_of(tid: str) -> str:
    """The task a recorded id belongs to: ``parent`` for a mapped task's child ``parent[i]``
    and for a pipeline stage's item ``parent@i``; ``""`` for any other id (callers check that
    ``parent`` is a task of the run: ``switch['b']`` is no child)."""
    if tid.endswith("]"):
        return tid.rpartition("[")[0]
    head, at, tail = tid.rpartition("@")
    return head if at and tail.isdigit() else ""


def _lane(resources: Mapping[str, int] | None) -> str:
    pools = sorted(p for p, n in (resources or {}).items() if n)
    return " + ".join(pools) if pools else NO_POOL


def _err(error: Any) -> str | None:
    return None if error is None else f"{error.type}: {error.message}"


def _log_lines(logs: Sequence[Mapping[str, Any] | str] | None) -> list[str]:
    """A task's kept log lines as text: ``[level] event key=value ...`` (a line that is
    already text is kept as it is)."""
    out = []
    for line in logs or ():
        if not isinstance(line, Mapping):
            out.append(str(line))
            continue
        rest = " ".join(f"{k}={v}" for k, v in line.items()
                        if k not in ("time", "level", "event"))
        out.append(f"[{line.get('level', '')}] {line.get('event', '')}"
                   + (f" {rest}" if rest else ""))
    return out


def from_result(result: Any) -> Timeline:
    """The timeline of a :class:`~flowdsl.RunResult`; the critical path is the run's, along
    its plan's edges and through the pool waits that held tasks up (:func:`_run_path`)."""
    bars = []
    for rec in result.tasks.values():
        # A pipeline stage: its items' bars, and its own (no attempts: the items hold them)
        for r in (rec, *(rec.items or ())):
            spans = [] if r.items is not None else [
                Span(a.number, a.started_at, a.ended_at if a.ended_at is not None
                     else a.started_at, str(a.status), _err(a.error)) for a in r.attempts]
            bars.append(Bar(r.id if r.item is None else f"{r.id}@{r.item}", r.tool,
                            str(r.status), r.started_at, r.ended_at, spans, _err(r.error),
                            r.reason, _lane(r.resources), logs=_log_lines(r.logs),
                            item=r.item, items=r.item_count))
        if rec.items is not None and len(rec.items) < (rec.item_count or 0):
            bars[-1 - len(rec.items)].reason = (
                f"{len(rec.items)} of its {rec.item_count} items drawn: a result keeps the "
                "first items and those that did not complete; the run's history keeps all")
    path: list[str] = []
    if result.plan is not None and bars:
        path = _run_path(bars, result.plan.predecessors)
    return _mark(Timeline(f"{result.flow_name or 'flow'} ({result.mode})", result.run_id,
                          result.status, result.duration, bars, path))


def from_history(run: Mapping[str, Any], plan: Any = None) -> Timeline:
    """The timeline of a run as :meth:`HistoryStore.get_run` returns it.

    Args:
        run: the run's mapping (with ``tasks`` and their ``attempts``).
        plan: the flow's :class:`~flowdsl.Plan`, when known: its edges give the true
            critical path and its tasks' pools the swimlanes.
    """
    bars = []
    for t in run.get("tasks", []):
        spans = [Span(a["number"], a["started_at"], a["ended_at"] if a["ended_at"] is not None
                      else a["started_at"], a["status"],
                      f"{a['error_type']}: {a['error_message']}" if a.get("error_type")
                      else None) for a in t.get("attempts", []) if a["started_at"] is not None]
        error = f"{t['error_type']}: {t['error_message']}" if t.get("error_type") else None
        task = plan.tasks.get(t["task_id"]) if plan is not None else None
        if task is None and plan is not None and t.get("item") is not None:
            task = plan.tasks.get(child_of(t["task_id"]))  # a pipeline stage's item
        lane = _lane(getattr(getattr(task, "spec", None), "resources", None))
        bars.append(Bar(t["task_id"], t["tool"] or "", t["status"], t["started_at"],
                        t["ended_at"], spans, error, t.get("reason"), lane,
                        logs=_log_lines(t.get("logs")), item=t.get("item"),
                        items=t.get("items")))
    tl = Timeline(f"{run.get('flow') or 'flow'} ({run.get('mode') or '?'})", run["run_id"],
                  run["status"], run.get("duration") or 0.0, bars, [])
    if plan is not None and bars:
        tl.critical_path = _run_path(bars, plan.predecessors)
    elif run.get("edges") is not None and bars:
        # Without the plan the tasks' pools are unknown: no pool wait can be told apart.
        tl.critical_path = _run_path(bars, _edge_preds(bars, run["edges"]), pools=False)
    else:
        tl.critical_path, tl.critical_source = _timing_chain(bars), "timings"
    return _mark(tl)


def _run_path(bars: Sequence[Bar], preds: Mapping[str, Sequence[str]], *,
              pools: bool = True) -> list[str]:
    """The critical path as the run went: from the task that ended last, back to what held
    up its start. That is its latest-ending predecessor, unless the task needs a pool and
    started well after that one ended while a task of the same pool ended in between: then
    it waited for the pool, the path goes on from the task that freed it (the latest to end
    before the start), and the wait is kept on the bar (``queued``). So pool waits show on
    the path, instead of a path of work alone, shorter than any schedule the pools allow.
    Map children are not nodes: their parent's bar spans them. ``pools``: whether the bars'
    lanes are known (from a result or a plan); without them no wait is inferred. Waits for
    a worker slot (``max_concurrency``, sequential mode) are not inferred either: engine
    latency would read as such waits."""
    ran: dict[str, tuple[Bar, float, float]] = {
        b.id: (b, b.start, b.end) for b in bars
        if b.start is not None and b.end is not None and b.id in preds}
    if not ran:
        return []
    # Bars of each pool by end time, to find the latest to end before a start by bisection
    # (100,000 tasks through a pool of 1 each wait once).
    rows = sorted(ran.values(), key=lambda r: r[2])
    last = rows[-1]
    by_pool: dict[str, list[tuple[Bar, float, float]]] = {}
    for r in rows:
        for pool in (r[0].lane.split(" + ") if r[0].lane != NO_POOL else ()):
            by_pool.setdefault(pool, []).append(r)
    ends = {key: [r[2] for r in rs] for key, rs in by_pool.items()}
    # A start this much after the task was ready may be a wait (below it: the engine's own
    # latency), if a task ended in between to free what it waited for; that task may have
    # been stamped ended a hair after the start it allowed.
    late, slack = min(0.02 * last[2], 0.01) + 1e-3, 1e-3
    cur, start, _ = last
    chain, seen = [cur.id], {cur.id}

    def freed(key: str, rs: list[tuple[Bar, float, float]], ready: float, start: float
              ) -> tuple[Bar, float, float] | None:
        for n in range(bisect.bisect_right(ends[key], start + slack) - 1, -1, -1):
            if rs[n][2] <= ready:  # ended before this task was ready: did not hold it up
                return None
            if rs[n][0].id not in seen and rs[n][1] < start:
                return rs[n]
        return None

    while True:
        before = [ran[p] for p in preds[cur.id] if p in ran]
        nxt = max(before, key=lambda r: r[2], default=None)
        ready = 0.0 if nxt is None else nxt[2]
        if pools and cur.lane != NO_POOL and start - ready > late:  # waited for a pool?
            found = [f for f in (freed(u, by_pool[u], ready, start)
                                 for u in cur.lane.split(" + ")) if f is not None]
            if found:
                cur.queued = (ready, start, f"pool {cur.lane}")
                nxt = max(found, key=lambda r: r[2])
        if nxt is None or nxt[0].id in seen:
            break
        cur, start, _ = nxt
        chain.append(cur.id)
        seen.add(cur.id)
    return chain[::-1]


def _edge_preds(bars: Sequence[Bar], edges: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Task id -> predecessors from a run's recorded edges. A mapped task's children
    (``id[i]``) and a pipeline stage's items (``id@i``) are not nodes: their parent's bar
    spans them."""
    ids = {b.id for b in bars}
    preds: dict[str, list[str]] = {b.id: [] for b in bars if child_of(b.id) not in ids}
    for a, b in edges:
        if a in preds and b in preds:
            preds[b].append(a)
    return preds


def _timing_chain(bars: Sequence[Bar]) -> list[str]:
    """Without edges: from the task that ended last, walk back to the task that ended latest
    before it started (within a small slack), until the run's start.

    One pass over the bars sorted by end, latest first (ties in the bars' order): each step's
    bound ``start + slack`` only falls, and a bar that started at or after the current one
    cannot follow any later step (starts fall too), so no bar is looked at twice."""
    # (id, start, end) of the bars that ran: both times known
    ran = [(b.id, b.start, b.end) for b in bars if b.start is not None and b.end is not None]
    if not ran:
        return []
    slack = 0.02 * max(end for _, _, end in ran) + 1e-3
    order = sorted(range(len(ran)), key=lambda k: (-ran[k][2], k))
    cur = ran[order[0]]
    chain = [cur]
    for k in order[1:]:
        b = ran[k]
        if b[2] <= cur[1] + slack and b[1] < cur[1]:
            cur = b
            chain.append(cur)
    return [b[0] for b in reversed(chain)]


def _mark(tl: Timeline) -> Timeline:
    hot = set(tl.critical_path)
    for b in tl.bars:
        b.critical = b.id in hot
    return tl


# -- HTML ------------------------------------------------------------------------------------

_FAILED, _TIMED_OUT = STATUS_COLORS["failed"], STATUS_COLORS["timed_out"]
_CSS = f"""
.fdt{{font:12px/1.35 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;
 max-width:1100px}}
.fdt h3{{font-size:14px;margin:4px 0 8px}}
.fdt .row{{display:flex;align-items:center;height:20px}}
.fdt .name{{width:210px;flex:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
 padding-right:8px;text-align:right}}
.fdt .track{{position:relative;flex:1;height:16px;background:#f6f6f6;border-radius:2px}}
.fdt .bar{{position:absolute;top:1px;height:14px;border-radius:2px;min-width:2px;
 box-sizing:border-box;cursor:default}}
.fdt .bar.waited{{background:repeating-linear-gradient(90deg,{WAIT_COLOR},{WAIT_COLOR} 2px,
 #fff 2px,#fff 4px);border:1px dashed #aaa}}
.fdt .att{{position:absolute;top:0;height:100%;box-sizing:border-box}}
.fdt .att.failed{{background:repeating-linear-gradient(45deg,{_FAILED},{_FAILED} 3px,
 #f0a09c 3px,#f0a09c 6px)}}
.fdt .att.timed_out{{background:repeating-linear-gradient(45deg,{_TIMED_OUT},{_TIMED_OUT} 3px,
 #f5c39e 3px,#f5c39e 6px)}}
.fdt .bar.queued{{background:repeating-linear-gradient(90deg,{WAIT_COLOR},{WAIT_COLOR} 2px,
 #fff 2px,#fff 4px);border:1px dashed {CRITICAL}}}
.fdt .bar.stage{{opacity:.35}}
.fdt .crit{{outline:2px solid {CRITICAL};outline-offset:0}}
.fdt .tip{{display:none;position:absolute;left:0;top:18px;z-index:5;background:#fff;
 border:1px solid #999;padding:4px 6px;white-space:pre;font-size:11px;
 box-shadow:0 2px 6px rgba(0,0,0,.2);pointer-events:none}}
.fdt .bar:hover .tip{{display:block}}
.fdt .lane{{margin:8px 0 2px 0;padding:2px 6px;font-size:13px;font-weight:700;color:#333;
 background:#f0f0f0;border-left:4px solid #888;border-radius:2px}}
.fdt .axis{{position:relative;margin-left:218px;height:16px;color:#555;font-size:10px;
 background:#fff}}
.fdt .axis.top{{position:sticky;top:0;z-index:4;border-bottom:1px solid #ddd}}
.fdt .axis span{{position:absolute;transform:translateX(-50%)}}
.fdt .legend span{{display:inline-block;margin-right:10px}}
.fdt details.kids{{margin:0 0 0 12px;border-left:2px solid #ddd}}
.fdt details.kids summary{{font-size:11px;color:#444;cursor:pointer;margin-left:206px}}
.fdt .legend i{{display:inline-block;width:10px;height:10px;margin-right:3px;
 vertical-align:-1px;border-radius:2px}}
"""
#: Rows above which the time axis is drawn at the bottom as well as (sticky) at the top.
LONG = 25
_TIP_LOGS = 8  # the most log lines shown in a bar's tooltip


def _tip(b: Bar) -> str:
    lines = [f"{b.id}  (tool {b.tool})", f"status: {b.status}"]
    if b.item is not None:
        lines.append(f"pipeline item {b.item}")
    if b.items is not None:
        lines.append(f"pipeline stage over {b.items} item(s): from its first item's start "
                     "to its last item's end (each item has a bar of its own)")
    if b.duration is not None:
        lines.append(f"{b.start:.3f}s → {b.end:.3f}s ({b.duration:.3f}s)")
    if b.retried:
        lines.append(f"attempts: {len(b.attempts)}")
        lines += [f"  #{a.number} {a.status} {a.end - a.start:.3f}s"
                  + (f" — {a.error}" if a.error else "") for a in b.attempts]
        waited = sum(e - s for s, e in b.waits())
        if waited:
            lines.append(f"waited between attempts: {waited:.3f}s")
    if b.error:
        lines.append(f"error: {b.error}")
    if b.reason:
        lines.append(f"reason: {b.reason}")
    if b.lane != NO_POOL:
        lines.append(f"pools: {b.lane}")
    if b.critical:
        lines.append("on the critical path")
    if b.queued is not None:
        lines.append(f"waited {b.queued[1] - b.queued[0]:.3f}s for {b.queued[2]} "
                     f"before it started")
    if b.logs:
        lines.append(f"log ({len(b.logs)} line(s)):")
        lines += [f"  {line}" for line in b.logs[-_TIP_LOGS:]]
    return "\n".join(lines)


def _pct(x: float, end: float) -> str:
    return f"{100.0 * x / end:.3f}%"


def _bar_html(b: Bar, end: float) -> str:
    name = html.escape(b.id)
    row = "row" if b.item is None else f'row" data-item="{b.item}'
    if b.start is None or b.end is None:
        why = html.escape(b.reason or b.status)
        return (f'<div class="{row}"><div class="name" title="{name}">{name}</div>'
                f'<div class="track"><span style="color:#888;padding-left:4px">'
                f"{html.escape(b.status)}: {why}</span></div></div>")
    left, width = _pct(b.start, end), _pct(max(b.end - b.start, 0.0), end)
    span = max(b.end - b.start, 1e-9)
    # A retried task: each attempt in its own status's colour over a pale, dashed bar, so
    # the waits between attempts (backoff) read as waiting, not as work.
    inner = "".join(
        f'<div class="att {html.escape(a.status)}" style="left:{_pct(a.start - b.start, span)};'
        f"width:{_pct(max(a.end - a.start, 0.0), span)};"
        f'background-color:{COLORS.get(a.status, "#999")}"></div>'
        for a in b.attempts) if b.retried else ""
    cls = ("bar" + (" waited" if b.retried else "") + (" crit" if b.critical else "")
           + (" stage" if b.items is not None else ""))
    style = "" if b.retried else f"background:{COLORS.get(b.status, '#999')}"
    tip = html.escape(_tip(b))
    queued = ""
    if b.queued is not None:  # a wait on the critical path: drawn as waiting, not work
        q0, q1, why = b.queued
        queued = (f'<div class="bar queued" style="left:{_pct(q0, end)};'
                  f'width:{_pct(max(q1 - q0, 0.0), end)}" title="'
                  f'{html.escape(f"{b.id} waited {q1 - q0:.3f}s for {why}")}"></div>')
    return (f'<div class="{row}"><div class="name" title="{name}">{name}</div>'
            f'<div class="track">{queued}<div class="{cls}" style="left:{left};width:{width};'
            f'{style}" title="{tip}">{inner}<div class="tip">{tip}</div></div>'
            "</div></div>")


def _ticks(end: float, n: int = 6) -> list[float]:
    import math

    raw = end / n
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [k * step for k in range(int(end / step) + 1)]


def legend_items(tl: Timeline) -> list[tuple[str, str]]:
    """What a legend lists, as ``(kind, label)``: the statuses present (in the palette's
    order), then the critical path, failed attempts and waits when the picture shows them.
    ``kind`` is a status, ``"critical"``, ``"failed_attempt"`` or ``"wait"``."""
    present = {b.status for b in tl.bars}
    items = [(s, s) for s in COLORS if s in present]
    items += [(s, s) for s in sorted(present - set(COLORS))]
    if tl.critical_path:
        items.append(("critical", "critical path" if tl.critical_source == "plan"
                      else "critical chain (from timings)"))
    if any(b.retried and any(a.status in ("failed", "timed_out") for a in b.attempts)
           for b in tl.bars):
        items.append(("failed_attempt", "failed attempt (retried)"))
    if any(b.waits() for b in tl.bars):
        items.append(("wait", "wait between attempts"))
    if any(b.queued is not None for b in tl.bars):
        items.append(("queued", "wait for a pool (on the critical path)"))
    return items


def _legend_html(tl: Timeline) -> str:
    swatch = {"critical": f"background:#fff;outline:2px solid {CRITICAL}",
              "failed_attempt": f"background:repeating-linear-gradient(45deg,{_FAILED},"
                                f"{_FAILED} 2px,#f0a09c 2px,#f0a09c 4px)",
              "wait": f"background:{WAIT_COLOR};outline:1px dashed #aaa",
              "queued": f"background:{WAIT_COLOR};outline:1px dashed {CRITICAL}"}
    return "".join(f'<span><i style="{swatch.get(kind, "background:" + COLORS.get(kind, "#999"))}'
                   f'"></i>{html.escape(label)}</span>' for kind, label in legend_items(tl))


def _children(bars: Sequence[Bar]) -> dict[str, list[Bar]]:
    """A mapped task's children (``parent[i]``, where ``parent`` is a bar too), by parent."""
    ids = {b.id for b in bars}
    out: dict[str, list[Bar]] = {}
    for b in bars:
        parent = child_of(b.id)
        if parent and parent in ids:
            out.setdefault(parent, []).append(b)
    return out


def kin(children: Sequence[Any]) -> str:
    """What a group of children are called: ``items`` (a pipeline stage's), else ``map
    children``."""
    first = children[0]
    tid = first.id if isinstance(first, Bar) else str(first["task_id"])
    return "map children" if tid.endswith("]") else "items"


def timeline_fragment(tl: Timeline, *, group: bool = False) -> str:
    """The timeline as an HTML fragment (rows of bars, lanes, axis and legend) with a scoped
    style sheet; embeddable in a notebook output or a page. The time axis sticks to the top
    of the window while a long timeline scrolls, and is repeated below it. With ``group``,
    a mapped task's children follow their parent's bar, collapsed (``<details>``, open while
    one of them runs)."""
    end = tl.end
    axis = "".join(f'<span style="left:{_pct(t, end)}">{t:g}s</span>' for t in _ticks(end))
    parts = [f"<style>{_CSS}</style>", '<div class="fdt">',
             f'<div class="axis top">{axis}</div>']
    lanes = tl.lanes
    current = None
    rows = tl.rows()
    kids = _children(rows) if group else {}
    inside = {id(c) for cs in kids.values() for c in cs}
    for b in rows:
        if id(b) in inside:
            continue
        if len(lanes) > 1 and b.lane != current:
            current = b.lane
            label = current if current == NO_POOL else f"pool {current}"
            parts.append(f'<div class="lane">{html.escape(label)}</div>')
        parts.append(_bar_html(b, end))
        children = kids.get(b.id)
        if children:
            running = any(c.status == "running" for c in children)
            parts.append(f'<details class="kids" data-parent="{html.escape(b.id)}"'
                         f'{" open" if running else ""}><summary>{len(children)} '
                         f"{kin(children)} of {html.escape(b.id)}</summary>"
                         + "".join(_bar_html(c, end) for c in children) + "</details>")
    if len(rows) > LONG:
        parts.append(f'<div class="axis">{axis}</div>')
    parts.append(f'<div class="legend">{_legend_html(tl)}</div></div>')
    return "".join(parts)


def timeline_html(tl: Timeline) -> str:
    """A complete, self-contained HTML page (no scripts, no network) for the timeline."""
    title = html.escape(f"{tl.title} — run {tl.run_id}")
    head = html.escape(f"{tl.title}: {tl.status} in {tl.duration:.3f}s (run {tl.run_id})")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head><body>"
            f'<div class="fdt"><h3>{head}</h3></div>{timeline_fragment(tl)}'
            "</body></html>\n")


# -- matplotlib --------------------------------------------------------------------------------


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        msg = ("timeline images need matplotlib: pip install 'flowdsl[plot]' "
               "(or write an .html timeline, which needs nothing)")
        raise ImportError(msg) from exc
    return Figure


def draw(tl: Timeline) -> Any:
    """The timeline as a matplotlib ``Figure`` (no pyplot, so no GUI backend is touched)."""
    rows = tl.rows()
    fig = _figure_class()(figsize=(11, 1.6 + 0.26 * max(len(rows), 1)))
    ax = fig.add_subplot()
    end = tl.end
    lanes = tl.lanes
    lane_of = None
    tiny = end * 0.002
    for y, b in enumerate(rows):
        if len(lanes) > 1 and b.lane != lane_of:
            lane_of = b.lane
            ax.axhline(y - 0.5, color="0.6", linewidth=1.0)
            label = lane_of if lane_of == NO_POOL else f"pool {lane_of}"
            ax.text(end * 0.998, y - 0.42, label, fontsize=9, fontweight="bold",
                    color="0.2", va="top", ha="right",
                    bbox={"facecolor": "white", "edgecolor": "0.6", "boxstyle": "round,pad=0.2"})
        if b.start is None or b.end is None:
            ax.text(0, y, f"  {b.status}", va="center", fontsize=7, color="0.5")
            continue
        edge = {"edgecolor": CRITICAL, "linewidth": 1.8} if b.critical else {"linewidth": 0}
        if b.queued is not None:  # a wait on the critical path, drawn as waiting
            q0, q1, _ = b.queued
            ax.barh(y, max(q1 - q0, tiny), left=q0, height=0.4, color=WAIT_COLOR,
                    hatch="xx", edgecolor=CRITICAL, linewidth=0.8, linestyle="--")
        if not b.retried:  # a pipeline stage's own bar is pale: its items' bars are the work
            ax.barh(y, max(b.end - b.start, tiny), left=b.start, height=0.7,
                    color=COLORS.get(b.status, "#999999"),
                    alpha=0.35 if b.items is not None else 1.0, **edge)
            continue
        # Retried: the span is a pale wait, each attempt is painted in its own status.
        ax.barh(y, max(b.end - b.start, tiny), left=b.start, height=0.7, color=WAIT_COLOR,
                hatch="..", **(edge if b.critical else {"edgecolor": "0.7", "linewidth": 0}))
        for a in b.attempts:
            failed = a.status in ("failed", "timed_out")
            ax.barh(y, max(a.end - a.start, tiny), left=a.start, height=0.7,
                    color=COLORS.get(a.status, "#999999"), hatch="////" if failed else None,
                    edgecolor="white" if failed else None, linewidth=0)
    ax.set_yticks(range(len(rows)), [b.id for b in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, end * 1.02)
    ax.set_xlabel("seconds since the run started")
    if len(rows) > LONG:  # a long chart: the time axis at the top too, near the first rows
        ax.tick_params(axis="x", top=True, labeltop=True)
    ax.set_title(f"{tl.title}: {tl.status} in {tl.duration:.2f}s (run {tl.run_id})",
                 fontsize=10, loc="left", pad=18 if len(rows) > LONG else 6)
    ax.legend(handles=_legend_patches(tl), fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


def _legend_patches(tl: Timeline) -> list[Any]:
    from matplotlib.patches import Patch

    special: dict[str, dict[str, Any]] = {
        "critical": {"facecolor": "white", "edgecolor": CRITICAL, "linewidth": 1.8},
        "failed_attempt": {"facecolor": COLORS["failed"], "hatch": "////",
                           "edgecolor": "white"},
        "wait": {"facecolor": WAIT_COLOR, "hatch": "..", "edgecolor": "0.7"},
        "queued": {"facecolor": WAIT_COLOR, "hatch": "xx", "edgecolor": CRITICAL,
                   "linestyle": "--"},
    }
    return [Patch(label=label, **special.get(kind, {"color": COLORS.get(kind, "#999999")}))
            for kind, label in legend_items(tl)]


def save_timeline(source: Any, path: str | os.PathLike[str], *, history: Any = None,
                  plan: Any = None) -> Path:
    """Write the timeline of a run to ``path``; the suffix picks the format.

    Args:
        source: a :class:`~flowdsl.RunResult`, a :class:`Timeline`, or a run id kept in
            history.
        path: ``.html`` (self-contained page), ``.png`` or ``.svg`` (matplotlib).
        history: where to look a run id up (``None``: the default store, or a path or
            :class:`~flowdsl.HistoryStore`).
        plan: for a run id, the flow's plan (true critical path and pool lanes).

    Returns:
        the path written.

    Raises:
        ValueError: the suffix is not one of ``.html``, ``.png``, ``.svg``.
        ImportError: a PNG/SVG was asked for and matplotlib is not installed.
        RunNotFound: the run id is not in history.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        msg = f"timeline file {str(out)!r}: expected a name ending in {', '.join(FORMATS)}"
        raise ValueError(msg)
    tl = _timeline_of(source, history, plan)
    if suffix != ".html":
        _figure_class()  # fail before creating any file
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        out.write_text(timeline_html(tl), encoding="utf-8")
    else:
        draw(tl).savefig(out, dpi=110)
    return out


def _timeline_of(source: Any, history: Any, plan: Any) -> Timeline:
    if isinstance(source, Timeline):
        return source
    if isinstance(source, str):
        from .._record.history import open_history

        store = open_history(history)
        if store is None:
            msg = f"run {source!r}: history is off (FLOWDSL_HISTORY=off); nothing to look up"
            raise ValueError(msg)
        return from_history(store.get_run(source), plan)
    return from_result(source)
