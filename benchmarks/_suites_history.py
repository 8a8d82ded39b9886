"""Suite on the history store: the default history's fixed cost per run, against the number
of task rows already in the store (it must stay flat: what a run reads costs its flow's
tools, never the rows of earlier runs)."""

from __future__ import annotations

import gc
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import flowdsl
from flowdsl._record.history import close_cached, open_history

from ._harness import Config, Progress, Stat, SuiteResult, Target
from ._tools import noop

__all__ = ["fill", "fixed_cost", "suite_history"]

_TASKS_PER_RUN = 1_000


def _flow() -> flowdsl.Flow:
    first = noop().named("first")
    return flowdsl.Flow("ten", first >> [noop(after=first).named(f"t{i}") for i in range(9)])


def fixed_cost(flow: flowdsl.Flow, repeats: int) -> tuple[Stat, Stat, float]:
    """Wall time of ``run()`` with the default history and with ``history=False`` (seconds,
    interleaved so drift hits both), and the difference of their medians."""
    on: list[float] = []
    off: list[float] = []
    for _ in range(repeats):
        for history, out in ((None, on), (False, off)):
            gc.collect()
            start = time.perf_counter()
            flowdsl.run(flow, history=history)
            out.append(time.perf_counter() - start)
    return Stat.of(on), Stat.of(off), statistics.median(on) - statistics.median(off)


def fill(path: Path, rows: int, first_run: int) -> int:
    """Add ``rows`` task rows (and as many attempts), in finished runs of 1,000 tasks of
    other flows and of the measured one, straight through SQLite (the store's own path costs
    far longer for a million rows). Returns the number of runs added."""
    conn = sqlite3.connect(path)
    runs = rows // _TASKS_PER_RUN
    try:
        with conn:
            for r in range(first_run, first_run + runs):
                run_id = f"fill{r}"
                conn.execute(
                    "INSERT INTO runs (run_id, flow, mode, status, started_at, ended_at, "
                    "duration) VALUES (?, ?, 'parallel', 'completed', 0, 1, 1)",
                    (run_id, "ten" if r % 4 == 0 else f"other{r % 7}"))
                tasks = [(run_id, f"x{k}", "noop", "benchmarks._tools.noop", "completed", 0.0,
                          0.001, 0.001, 1) for k in range(_TASKS_PER_RUN)]
                conn.executemany(
                    "INSERT INTO tasks (run_id, task_id, tool, qualname, status, started_at, "
                    "ended_at, duration, attempts) VALUES (?,?,?,?,?,?,?,?,?)", tasks)
                conn.executemany(
                    "INSERT INTO attempts (run_id, task_id, number, tool, started_at, "
                    "ended_at, duration, status) VALUES (?, ?, 1, 'noop', 0, 0.001, 0.001, "
                    "'completed')", [(run_id, t[1]) for t in tasks])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as the rows would be, over time
    finally:
        conn.close()
    return runs


def suite_history(cfg: Config, progress: Progress, shared: dict[str, Any]) -> SuiteResult:
    """The default history's fixed cost per run (10 tasks) from an empty store to a full
    one."""
    out = SuiteResult("history", "History: fixed cost per run against the rows in the store")
    out.columns = ["task rows in store", "runs in store", "run() with history ms",
                   "history=False ms", "fixed cost ms"]
    sizes = (0, 10_000, 100_000) if cfg.quick else (0, 10_000, 100_000, 1_000_000)
    repeats = 7 if cfg.quick else 10
    folder = tempfile.mkdtemp(prefix="flowdsl-bench-history-")
    path = Path(folder) / "history.db"
    old_env = os.environ.get("FLOWDSL_HISTORY")
    os.environ["FLOWDSL_HISTORY"] = str(path)
    flow = _flow()
    figures = []
    try:
        store = open_history(None)  # the default store, opened once, as a process would
        assert store is not None
        store.keep_last = 10_000  # nothing is pruned while the store grows
        store.prune_every = 10_000
        flowdsl.run(flow)  # warm: the flow's statistics exist, as after its first run
        flowdsl.run(flow, history=False)
        added = 0
        for size in sizes:
            if size > added:
                progress.step(f"filling the store to {size:,} task rows")
                store.flush()
                added_runs = fill(path, size - added, first_run=added // _TASKS_PER_RUN)
                added += added_runs * _TASKS_PER_RUN
            counts = store._query("SELECT (SELECT count(*) FROM tasks) AS tasks, "
                                  "(SELECT count(*) FROM runs) AS runs")[0]
            progress.step(f"{counts['tasks']:,} task rows: {repeats} runs each way")
            on, off, cost = fixed_cost(flow, repeats)
            figures.append({"rows": counts["tasks"], "runs": counts["runs"],
                            "on": on.to_dict(), "off": off.to_dict(), "fixed_ms": cost * 1e3})
            out.rows.append([f"{counts['tasks']:,}", f"{counts['runs']:,}",
                             f"{on.median * 1e3:.2f}",
                             f"{off.median * 1e3:.2f}", f"{cost * 1e3:.2f}"])
    finally:
        close_cached()
        if old_env is None:
            os.environ.pop("FLOWDSL_HISTORY", None)
        else:
            os.environ["FLOWDSL_HISTORY"] = old_env
        for p in Path(folder).iterdir():
            p.unlink()
        os.rmdir(folder)
    out.data = {"sizes": figures}
    costs = [f["fixed_ms"] for f in figures]
    worst = max(costs)
    spread = worst - min(costs)
    out.notes.append(f"a 10-task flow of no-op tools; medians of {repeats} runs each way, "
                     "interleaved; rows added straight through SQLite in runs of 1,000 tasks")
    out.targets = [
        Target("default history fixed cost per run", "<= 5 ms at every size",
               f"{worst:.2f} ms at most (sizes {sizes[0]:,}-{sizes[-1]:,} task rows)",
               worst <= 5.0),
        Target("flat in the store's size", "largest - smallest <= 2 ms",
               f"{spread:.2f} ms", spread <= 2.0)]
    return out
