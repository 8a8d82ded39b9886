"""The default path: what a first flow pays. No-op ``def`` tools (the thread executor) and
``async def`` tools, each with the default history and without, against the raw-asyncio floor
and a raw ``loop.run_in_executor`` floor; and the default history's fixed cost per run.

Every variant runs the same DAG in the same process, one after the other within a repeat, so
the ratios compare like with like on a machine whose speed drifts.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flowdsl
from flowdsl._record.history import open_history

from ._baselines import asyncio_floor, executor_floor
from ._harness import Config, Progress, Stat, SuiteResult, Target, default_history
from ._suites_engine import SHAPES
from ._tools import def_noop, noop

__all__ = ["suite_default"]

#: (label, tool, history=): None is the default store, False none.
VARIANTS: tuple[tuple[str, Any, Any], ...] = (
    ("async", noop, False), ("async + history", noop, None),
    ("def", def_noop, False), ("def + history", def_noop, None))


def _timed(fn: Callable[[], Any]) -> float:
    # As _harness.timed: the cyclic collector starts each variant at zero, so the counts one
    # variant ran up do not trigger a collection during the next (a full collection of a
    # large heap took 15-40 ms, and with runs in turn it always landed on the same variant).
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _flow(shape: str, n: int, seed: int, tool: Any) -> flowdsl.Fragment:
    return flowdsl.parallel(*SHAPES[shape](n, random.Random(seed), tool))


def _repeat(shape: str, n: int, seed: int) -> dict[str, float]:
    """Seconds of each variant and floor on one DAG (the same seed gives the same DAG)."""
    out: dict[str, float] = {}
    flows = {tool: _flow(shape, n, seed, tool) for tool in (noop, def_noop)}
    out["asyncio floor"] = asyncio_floor(flowdsl.plan(flows[noop]))
    out["run_in_executor floor"] = executor_floor(flowdsl.plan(flows[def_noop]))
    for label, tool, history in VARIANTS:
        r: list[flowdsl.RunResult] = []
        out[label] = _timed(lambda: r.append(  # noqa: B023 (called at once)
            flowdsl.run(flows[tool], history=history)))  # noqa: B023
        r[0].raise_for_error()
        if history is None:
            # A large run's statistics are folded in just after it returns: what that
            # costs is timed apart (it would land on the next variant's run otherwise).
            store = open_history(None)
            if store is not None:
                out[f"{label}: statistics after"] = _timed(store.flush)
    return out


def _fixed_cost(runs: int) -> dict[str, float]:
    """Milliseconds the default history adds to one run of a 10-task flow: the median wall
    time of ``run()`` with it minus the median without (runs alternate)."""
    flow = _flow("layered", 10, 0, noop)
    on: list[float] = []
    off: list[float] = []
    for _ in range(runs):
        on.append(_timed(lambda: flowdsl.run(flow).raise_for_error()))
        off.append(_timed(lambda: flowdsl.run(flow, history=False).raise_for_error()))
    return {"with_ms": statistics.median(on) * 1e3, "without_ms": statistics.median(off) * 1e3,
            "cost_ms": (statistics.median(on) - statistics.median(off)) * 1e3}


def _task_rows(path: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    except sqlite3.Error:
        return -1  # the store's layout changed: the count is left out


def suite_default(cfg: Config, progress: Progress, shared: dict[str, Any]) -> SuiteResult:
    """Per-task cost of the default path against the floors, and the history's fixed cost."""
    out = SuiteResult("default", "The default path: plain def and async no-op tools, default "
                                 "history on and off (parallel mode, µs per task)")
    labels = [label for label, _, _ in VARIANTS]
    out.columns = ["shape", "tasks", "asyncio floor", "run_in_executor floor", *labels,
                   "async + history: statistics after", "def + history / asyncio floor",
                   "def + history / executor floor", "def / asyncio floor",
                   "async + history / async"]
    runs: list[dict[str, Any]] = []
    with default_history() as path:
        _repeat("wide", 200, cfg.seed)  # warm-up: imports, the store's file and schema
        progress.step(f"history fixed cost, fresh store ({cfg.fixed_runs} runs each)")
        fresh = _fixed_cost(cfg.fixed_runs)
        for n in cfg.default_sizes:
            repeats = cfg.default_repeats if n <= 10_000 else 1
            for shape in SHAPES:
                progress.step(f"{shape} x {n:,} ({repeats} repeats)")
                reps = [_repeat(shape, n, cfg.seed + r) for r in range(repeats)]
                runs.append(_summary(shape, n, reps))
        rows = _task_rows(path)
        progress.step(f"history fixed cost, store of {rows:,} task rows")
        full = _fixed_cost(cfg.fixed_runs)
    for m in runs:
        us = m["us"]
        out.rows.append([m["shape"], f"{m['tasks']:,}", *(us[k].fmt(".1f") for k in
                        ["asyncio floor", "run_in_executor floor", *labels,
                         "async + history: statistics after"]),
                        m["def_vs_floor"].fmt(".2f", "x"), m["def_vs_executor"].fmt(".2f", "x"),
                        m["bare_def_vs_floor"].fmt(".2f", "x"),
                        m["history_vs_none"].fmt(".2f", "x")])
    out.notes.append(
        f"default history's fixed cost per run (10-task flow, median of {cfg.fixed_runs} runs "
        f"with it minus {cfg.fixed_runs} without): {fresh['cost_ms']:.2f} ms on a fresh store "
        f"({fresh['without_ms']:.2f} ms without history), {full['cost_ms']:.2f} ms on a store "
        f"of {rows:,} task rows; the floors exclude planning, the runs include it")
    out.data = {"runs": [{k: ({kk: vv.to_dict() for kk, vv in v.items()} if k == "us"
                              else v.to_dict() if isinstance(v, Stat) else v)
                          for k, v in m.items()} for m in runs],
                "fixed_cost": {"fresh": fresh, "filled": {**full, "task_rows": rows}}}
    out.targets = _targets(runs, fresh, full, rows)
    return out


def _summary(shape: str, n: int, reps: list[dict[str, float]]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> Stat:
        return Stat.of([r[a] / r[b] for r in reps])

    return {"shape": shape, "tasks": n,
            "us": {k: Stat.of([r[k] / n * 1e6 for r in reps]) for k in reps[0]},
            "def_vs_floor": ratio("def + history", "asyncio floor"),
            "def_vs_executor": ratio("def + history", "run_in_executor floor"),
            "bare_def_vs_floor": ratio("def", "asyncio floor"),
            "history_vs_none": ratio("async + history", "async"),
            # The run's wall time and its statistics folded in after (large runs; 0 when
            # they were folded in before it returned).
            "history_all_vs_none": Stat.of([
                (r["async + history"] + r.get("async + history: statistics after", 0.0))
                / r["async"] for r in reps])}


def _targets(runs: list[dict[str, Any]], fresh: dict[str, float], full: dict[str, float],
             rows: int) -> list[Target]:
    def worst(key: str) -> tuple[float, str]:
        m = max(runs, key=lambda m: m[key].median)
        best = min(r[key].median for r in runs)
        return m[key].median, (f"{m[key].median:.2f}x (worst: {m['shape']} x {m['tasks']:,}); "
                               f"best {best:.2f}x")

    def worst_of(key: str, shapes: tuple[str, ...]) -> tuple[float, str]:
        picked = [m for m in runs if m["shape"] in shapes]
        m = max(picked, key=lambda m: m[key].median)
        return m[key].median, f"{m[key].median:.2f}x (worst: {m['shape']} x {m['tasks']:,})"

    floor, floor_text = worst_of("def_vs_floor", ("wide", "layered"))
    execu, execu_text = worst_of("def_vs_executor", ("chain",))
    hist, hist_text = worst("history_vs_none")
    whole, whole_text = worst("history_all_vs_none")
    cost = max(fresh["cost_ms"], full["cost_ms"])
    return [
        Target("def tools, default history vs raw-asyncio floor (wide, layered)", "<= 3x",
               floor_text, floor <= 3.0),
        Target("def tools, default history vs raw run_in_executor floor (chain)", "<= 1.2x",
               execu_text, execu <= 1.2),
        Target("async tools, default history vs none (stretch 1.5x)", "<= 2x", hist_text,
               hist <= 2.0),
        Target("the same, with a large run's statistics folded in after it returned",
               "<= 2x", whole_text, whole <= 2.0),
        Target("default history fixed cost per run (10 tasks)", "<= 5 ms",
               f"{fresh['cost_ms']:.2f} ms fresh, {full['cost_ms']:.2f} ms with {rows:,} rows",
               cost <= 5.0)]
