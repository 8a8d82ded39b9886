"""Gantt charts of runs (PNG via matplotlib, the optional ``flowdsl[plot]`` extra).

Self-contained on purpose: it reads only ``RunResult.tasks[id].started_at/ended_at`` (seconds
since the run's start), so it works on any result, and draws several runs one above the other
on one time axis, e.g. the sequential run above the parallel one::

    from benchmarks.gantt import save_gantt
    save_gantt([("sequential", seq), ("parallel", par)], "run.png", highlight=critical_path)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bars", "save_gantt"]

Bar = tuple[str, float, float]  # task id, start, end (seconds since the run's start)


def bars(result: Any) -> list[Bar]:
    """The tasks of a RunResult that ran, as (id, start, end), in start order."""
    out = [(tid, rec.started_at, rec.ended_at) for tid, rec in result.tasks.items()
           if rec.started_at is not None and rec.ended_at is not None]
    return sorted(out, key=lambda b: (b[1], b[0]))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        msg = "Gantt charts need matplotlib: pip install 'flowdsl[plot]'"
        raise ImportError(msg) from exc
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_gantt(runs: Sequence[tuple[str, Any]], path: str | Path, *,
               highlight: Iterable[str] = (), title: str | None = None) -> Path:
    """Draw ``runs`` (label, RunResult or list of bars) one above the other on a shared time
    axis and save the PNG; tasks in ``highlight`` (the critical path) are drawn in red.

    Returns:
        the path written.
    """
    plt = _pyplot()
    panels = [(label, bars(r) if hasattr(r, "tasks") else list(r)) for label, r in runs]
    hot = set(highlight)
    heights = [max(len(b), 1) for _, b in panels]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(11, 1.2 + 0.22 * sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    end = max((e for _, b in panels for _, _, e in b), default=1.0)
    for ax, (label, items) in zip(axes[:, 0], panels):
        for row, (tid, start, stop) in enumerate(items):
            color = "#d62728" if tid in hot else "#4c72b0"
            ax.barh(row, stop - start, left=start, height=0.7, color=color)
            ax.text(stop + end * 0.004, row, tid, va="center", fontsize=7)
        span = max((e for _, _, e in items), default=0.0)
        ax.axvline(span, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_yticks([])
        ax.invert_yaxis()
        ax.set_ylabel(label, fontsize=9)
        ax.set_title(f"{label}: {span:.2f} s", fontsize=9, loc="left")
        ax.set_xlim(0, end * 1.18)  # room for the labels of the last bars
    axes[-1, 0].set_xlabel("seconds since the run started (red: critical path)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
