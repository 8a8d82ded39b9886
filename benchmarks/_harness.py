"""Harness: settings per mode, repeated measurements, progress on stderr, tables on stdout."""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Config", "Progress", "Stat", "SuiteResult", "Target", "default_history",
           "markdown_table", "timed"]


@dataclass(frozen=True)
class Config:
    """Sizes and repeat counts of one benchmark run; ``quick`` keeps the whole under a minute."""

    quick: bool
    repeats: int
    reference_scale: float
    random_dags: int
    random_cp: float
    wf_files: int
    wf_parallel_target: float
    wf_sequential_cap: float
    overhead_sizes: tuple[int, ...]
    overhead_repeats: int
    dask_max_tasks: int
    cpu_task_seconds: float
    cpu_tasks_per_core: int
    cpu_repeats: int
    pipeline: tuple[int, int, float]  # items, stages, seconds per stage
    default_sizes: tuple[int, ...] = (2_000,)  # the default-path suite's flow sizes
    default_repeats: int = 1  # its repeats at sizes up to 10,000 (one above)
    fixed_runs: int = 10  # runs of the 10-task flow per variant, for the history's fixed cost
    seed: int = 20240601

    @classmethod
    def make(cls, *, quick: bool) -> Config:
        if quick:
            return cls(quick=True, repeats=2, reference_scale=0.4, random_dags=3, random_cp=0.2,
                       wf_files=2, wf_parallel_target=0.5, wf_sequential_cap=1.5,
                       overhead_sizes=(2_000,), overhead_repeats=2, dask_max_tasks=2_000,
                       cpu_task_seconds=0.2, cpu_tasks_per_core=2, cpu_repeats=2,
                       pipeline=(10, 3, 0.03), default_sizes=(2_000,), default_repeats=1,
                       fixed_runs=5)
        return cls(quick=False, repeats=5, reference_scale=1.0, random_dags=12, random_cp=0.4,
                   wf_files=8, wf_parallel_target=1.5, wf_sequential_cap=5.0,
                   overhead_sizes=(10_000, 100_000), overhead_repeats=3, dask_max_tasks=10_000,
                   cpu_task_seconds=0.25, cpu_tasks_per_core=8, cpu_repeats=3,
                   pipeline=(20, 4, 0.04), default_sizes=(10_000, 100_000), default_repeats=3,
                   fixed_runs=10)


@dataclass(frozen=True)
class Stat:
    """The median of repeated measurements with their spread."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}

    def fmt(self, spec: str = ".3f", suffix: str = "") -> str:
        """``median [min-max]``; the spread is left out for a single measurement."""
        text = f"{self.median:{spec}}{suffix}"
        if self.n > 1:
            text += f" [{self.lo:{spec}}–{self.hi:{spec}}]"
        return text


@dataclass
class Target:
    """One goal of the issue and the figure measured for it."""

    name: str
    goal: str
    measured: str
    ok: bool | None  # None: not measured in this run (skipped suite, missing extra)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "ok": self.ok}


@dataclass
class SuiteResult:
    """What one suite measured: rows for the table, raw figures for JSON, and its targets."""

    name: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "skipped": self.skipped, "seconds": self.seconds,
                "data": self.data, "targets": [t.to_dict() for t in self.targets],
                "notes": self.notes}


class Progress:
    """One line per step on stderr, prefixed with the suite and the time elapsed."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.index = 0
        self.suite = ""
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def start(self, suite: str) -> None:
        self.index += 1
        self.suite = suite
        self.step("started")

    def step(self, message: str) -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.index}/{self.total} {elapsed:6.1f}s] {self.suite}: {message}",
              file=self.stream, flush=True)


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed seconds (perf_counter)."""
    gc.collect()  # garbage from the previous measurement is not charged to this one
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


@contextmanager
def default_history() -> Iterator[Path]:
    """The default store (``history=None``) in a fresh file for the suite, so the figures
    are the default path's without touching the user's own history."""
    old = os.environ.get("FLOWDSL_HISTORY")
    with tempfile.TemporaryDirectory(prefix="flowdsl-bench-") as tmp:
        path = Path(tmp) / "history.db"
        os.environ["FLOWDSL_HISTORY"] = str(path)
        try:
            yield path
        finally:
            if old is None:
                os.environ.pop("FLOWDSL_HISTORY", None)
            else:
                os.environ["FLOWDSL_HISTORY"] = old


def repeat(fn: Callable[[], float], n: int) -> Stat:
    """Call ``fn`` ``n`` times; each call returns one measurement."""
    return Stat.of([fn() for _ in range(n)])


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, padded so it also reads well in a terminal."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(columns)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in rows)])
