"""Report: benchmark a flow in several modes and compare the makespans with the bound no
schedule can beat.

:func:`benchmark` runs the flow ``warmup`` + ``repeat`` times per mode, interleaving the modes
within each repeat (so a slow drift of the machine affects them alike), with no history, no
result cache (unless ``cache=True``), no resume and so no reuse between runs: every repeat
does the whole work again, and no file is written. The makespan of a mode is the median of
its repeats, given with its spread; the speedup is the sequential median over the mode's;
the efficiency is the lower bound (:meth:`Plan.lower_bound`, from the tasks' and map
children's measured durations, the pools and ``max_concurrency``) over the mode's median,
at most 1.0, which means no scheduler could have done better.

    result = flowdsl.benchmark(flow, repeat=5, resources={"db": 2})
    result                      # a table and a small chart in a notebook
    result.to_dict()            # the figures as data
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._base.typed import Unpack
from .._run.options import BenchmarkRunOptions
from .._run.result import RunResult

__all__ = ["BenchmarkResult", "ModeStats", "benchmark"]

#: run() options that would make repeats depend on each other (or on earlier runs).
_REFUSED = {"history": "runs keep no history, so no repeat reuses another's outputs",
            "resume": "a resumed run skips work, so its makespan measures less than the flow"}


@dataclass(slots=True)
class ModeStats:
    """The makespans of one mode over the measured repeats (seconds)."""

    mode: str
    runs: list[float]
    speedup: float | None = None
    efficiency: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    @property
    def spread(self) -> float:
        """max - min, in seconds."""
        return self.max - self.min

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "median": self.median, "min": self.min, "max": self.max,
                "spread": self.spread, "runs": list(self.runs), "speedup": self.speedup,
                "efficiency": self.efficiency}


@dataclass(slots=True)
class BenchmarkResult:
    """What :func:`benchmark` measured.

    Attributes:
        name: the flow's name.
        modes: mode -> :class:`ModeStats`, in the order asked for.
        lower_bound: seconds no schedule can beat (critical path, pools, concurrency).
        critical_path: the task ids of the longest path, with measured durations.
        critical_path_duration: its length in seconds.
        durations: task id -> median measured duration, the figures behind the bound.
        repeat, warmup: runs measured and discarded per mode.
        last: mode -> the last measured :class:`RunResult` (for its timeline).
        cache: whether the runs used the result cache (``benchmark(cache=True)``): then
            the makespans after the first run measure cache hits.
    """

    name: str | None
    modes: dict[str, ModeStats]
    lower_bound: float
    critical_path: list[str]
    critical_path_duration: float
    durations: dict[str, float]
    repeat: int
    warmup: int
    last: dict[str, RunResult[Any]] = field(default_factory=dict, repr=False)
    cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-friendly data."""
        return {"flow": self.name, "repeat": self.repeat, "warmup": self.warmup,
                "cache": self.cache,
                "lower_bound": self.lower_bound, "critical_path": list(self.critical_path),
                "critical_path_duration": self.critical_path_duration,
                "durations": dict(self.durations),
                "modes": {m: s.to_dict() for m, s in self.modes.items()}}

    def gantt(self, path: str | Path, mode: str | None = None) -> Path:
        """Write the timeline of ``mode``'s last measured run (default: the last mode
        benchmarked) to ``path`` (``.html``, ``.png`` or ``.svg``)."""
        from .timeline import save_timeline

        mode = mode or next(reversed(self.last))
        if mode not in self.last:
            msg = f"gantt(): mode {mode!r} was not benchmarked (modes: {', '.join(self.last)})"
            raise ValueError(msg)
        return save_timeline(self.last[mode], path)

    def rows(self) -> list[list[str]]:
        """The table as text cells: mode, median, spread, speedup, efficiency."""
        return [[s.mode, f"{s.median:.3f}s", f"{s.min:.3f}–{s.max:.3f}s",
                 "" if s.speedup is None else f"{s.speedup:.2f}x",
                 "" if s.efficiency is None else f"{100 * s.efficiency:.0f}%"]
                for s in self.modes.values()]

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.mode} {s.median:.3f}s" for s in self.modes.values())
        return (f"<BenchmarkResult {self.name or 'flow'}: {parts}; lower bound "
                f"{self.lower_bound:.3f}s>")

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{h}</th>" for h in ("mode", "median", "range", "speedup",
                                                  "efficiency"))
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows())
        path = " → ".join(self.critical_path)
        return (f"<div><b>{esc(self.name or 'flow')}</b>: {self.repeat} repeat(s) per mode "
                f"after {self.warmup} warm-up{' (result cache on)' if self.cache else ''}; "
                f"lower bound {self.lower_bound:.3f}s "
                f"(critical path {esc(path)} = {self.critical_path_duration:.3f}s)"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"{self.svg()}</div>")

    def svg(self, width: int = 460) -> str:
        """A small bar chart: each mode's median with its min–max whisker, and the lower
        bound as a dashed line. Plain SVG, so it needs no plotting library."""
        label_w, row_h, pad = 90, 22, 6
        scale_w = width - label_w - 70
        top = max([s.max for s in self.modes.values()] + [self.lower_bound, 1e-9])

        def x(v: float) -> float:  # a local scale
            return label_w + scale_w * v / top

        height = pad * 2 + row_h * len(self.modes) + 14
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
                 f'height="{height}" font-family="sans-serif" font-size="11">']
        for n, s in enumerate(self.modes.values()):
            y = pad + n * row_h
            parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">'
                         f"{html.escape(s.mode)}</text>")
            parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{x(s.median) - label_w:.1f}"'
                         f' height="{row_h - 8}" fill="#5b8cc9"/>')
            parts.append(f'<line x1="{x(s.min):.1f}" x2="{x(s.max):.1f}" y1="{y + 11}" '
                         f'y2="{y + 11}" stroke="#1f1f1f" stroke-width="1.5"/>')
            parts.append(f'<text x="{x(s.max) + 4:.1f}" y="{y + 14}">{s.median:.3f}s</text>')
        lb, bottom = x(self.lower_bound), pad + row_h * len(self.modes)
        parts.append(f'<line x1="{lb:.1f}" x2="{lb:.1f}" y1="{pad}" y2="{bottom}" '
                     'stroke="#d0453f" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{lb:.1f}" y="{bottom + 12}" text-anchor="middle" '
                     f'fill="#d0453f">lower bound {self.lower_bound:.3f}s</text></svg>')
        return "".join(parts)


def benchmark(flow: Any, modes: Sequence[str] = ("sequential", "parallel"), *,
              repeat: int = 5, warmup: int = 1, cache: bool = False,
              on_run: Callable[[str, int, int, bool], Any] | None = None,
              **run_options: Unpack[BenchmarkRunOptions]) -> BenchmarkResult:
    """Run ``flow`` ``warmup + repeat`` times in each mode and report the makespans.

    Args:
        flow: anything :func:`flowdsl.run` takes.
        modes: the modes to compare; the speedup needs ``"sequential"`` among them.
        repeat: measured runs per mode (the median is reported).
        warmup: runs per mode made first and discarded (imports, caches, thread pools).
        cache: read and write the result cache of the tools declared with ``cache=`` (the
            runs then measure cache hits). By default the runs use no cache at all, so
            every repeat calls every tool and no file is written.
        on_run: called before each run with its mode, its number (from 1), the number of
            runs in all and whether it is a warm-up run (progress displays).
        **run_options: passed to every run (``resources``, ``max_concurrency``,
            ``context``, ``input``, ``items``, ...). ``history`` and ``resume`` are refused:
            repeats must not depend on each other.

    Returns:
        a :class:`BenchmarkResult`.

    Raises:
        ValueError: ``repeat``/``warmup``/``modes`` are invalid, or a refused option was
            given.
        RunFailed: a run did not complete (a benchmark of a failing flow measures nothing).
        PlanError: the flow cannot run.

    .. versionadded:: 0.2
    """
    from .._plan.planner import Plan, plan
    from .._plan.policy import Mode
    from .._run.api import NO_CACHE, run

    _check(modes, repeat, warmup, run_options)
    if not isinstance(cache, bool):
        msg = f"benchmark(): cache={cache!r} is invalid: expected True or False"
        raise ValueError(msg)
    p = flow if isinstance(flow, Plan) else plan(flow)
    wanted = [Mode(m).value for m in modes]
    makespans: dict[str, list[float]] = {m: [] for m in wanted}
    per_task: dict[str, list[float]] = {}
    per_child: dict[str, dict[str, list[float]]] = {}  # mapped task -> child -> durations
    last: dict[str, RunResult[Any]] = {}
    total = (warmup + repeat) * len(wanted)
    done = 0
    for n in range(warmup + repeat):
        for m in wanted:  # interleaved: drift of the machine hits every mode alike
            done += 1
            if on_run is not None:
                on_run(m, done, total, n < warmup)
            # NO_CACHE: no cache is read or written (cache=False would still write).
            result = run(p, mode=Mode(m), history=False, cache=None if cache else NO_CACHE,
                         **run_options)
            if not result.ok:
                result.raise_for_error()
            if n < warmup:
                continue
            makespans[m].append(result.duration)
            last[m] = result
            if m == wanted[0]:  # one mode's task durations for the bound (the first asked)
                for tid, rec in result.tasks.items():
                    if rec.duration is None:
                        continue
                    if rec.parent is not None and rec.parent in p.tasks:
                        per_child.setdefault(rec.parent, {}).setdefault(tid, []).append(
                            rec.duration)
                    else:
                        per_task.setdefault(tid, []).append(rec.duration)
    durations = {t: statistics.median(v) for t, v in per_task.items()}
    dur = {t: durations.get(t, 0.0) for t in p.tasks}
    # A mapped task counts as its children's work spread over the lanes they can use, not
    # as its own span in the first mode (in sequential mode: every child one after another).
    children = {t: [statistics.median(v) for v in kids.values()]
                for t, kids in per_child.items()}
    capacities, limit = _limits(p, flow, run_options)
    bound = p.lower_bound(dur, capacities, limit, children)
    span, _ = p.spans(dur, children, capacities, limit)
    path, length = p.critical_path(span)
    stats = {m: ModeStats(m, v) for m, v in makespans.items()}
    base = stats.get("sequential")
    for s in stats.values():
        s.speedup = None if base is None else base.median / max(s.median, 1e-12)
        # The bound comes from the first mode's durations; a mode whose tasks ran faster
        # than those (noise between runs) could show a little over 1, which would claim a
        # schedule better than possible: it is shown as 1, the most a schedule can reach.
        s.efficiency = min(1.0, bound / max(s.median, 1e-12))
    return BenchmarkResult(p.name, stats, bound, list(path), length, durations, repeat, warmup,
                           last, cache)


def _check(modes: Sequence[str], repeat: int, warmup: int, options: Mapping[str, Any]) -> None:
    from .._plan.policy import Mode

    for name, value, least in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            msg = f"benchmark(): {name}={value!r} is invalid: expected a whole number >= {least}"
            raise ValueError(msg)
    if isinstance(modes, str) or not modes:
        msg = f"benchmark(): modes={modes!r} is invalid: expected a list of modes"
        raise ValueError(msg)
    known = [m.value for m in Mode]
    for m in modes:
        if str(m) not in known:
            msg = f"benchmark(): unknown mode {m!r}: expected some of {', '.join(known)}"
            raise ValueError(msg)
    for opt, why in _REFUSED.items():
        if options.get(opt) not in (None, False):
            msg = f"benchmark(): {opt}= is not accepted: {why}"
            raise ValueError(msg)


def _limits(p: Any, flow: Any, options: Mapping[str, Any]) -> tuple[dict[str, int], int | None]:
    """The pools and concurrency limit the runs had: the options, else the flow's."""
    fl = flow if getattr(flow, "resources", None) is not None else p.flow
    pools = options.get("resources")
    if pools is None:
        pools = getattr(fl, "resources", None) or {}
    capacities = dict(getattr(pools, "capacities", pools))
    limit = options.get("max_concurrency") or getattr(fl, "max_concurrency", None)
    return capacities, limit
