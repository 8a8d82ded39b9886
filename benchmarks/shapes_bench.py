"""Shapes decided at run time, measured: a mapped task's children against the same tasks
written statically, and a cache hit against a no-op task.

- map: ``noop.map(range(N))`` (one node that expands into N children at run time) against
  ``parallel(*[noop(i) for i in range(N)])`` (N nodes), both planned beforehand, run in
  parallel mode; the figure is the ratio of the per-task costs (goal: <= 2x).
- cache: N independent tasks of a cached no-op tool, every one a hit (the entries were
  written by an earlier run), against N tasks of the plain no-op tool; the figure is the
  ratio of the per-task costs (goal: <= 2x). A hit run includes looking up the N keys in
  one batched query to the SQLite file in a worker thread.

Both runs of a pair use the same options (no history; the cache file is ``FLOWDSL_CACHE``,
set to a temporary file). Each figure is the best of ``repeats`` runs.
Run it alone: ``python -m benchmarks.shapes_bench [--quick] [--json out.json]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flowdsl
from flowdsl import tool

from ._tools import noop


@tool(registry=False, cache=True)
async def cached_noop(after: Any = None) -> None:
    """A no-op whose output is cached by its argument."""


def _best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - t0)
        assert r.ok, r.error
    return min(times)


def run(n: int = 10_000, repeats: int = 5) -> dict[str, Any]:
    """The figures as a dict (seconds, microseconds per task, ratios)."""
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("FLOWDSL_CACHE")
        os.environ["FLOWDSL_CACHE"] = os.path.join(tmp, "cache.db")
        try:
            static = flowdsl.plan(flowdsl.parallel(*[noop(i).named(f"n{i}")
                                                     for i in range(n)]))
            mapped = flowdsl.plan(noop.map(list(range(n))).named("n"))
            cached = flowdsl.plan(flowdsl.parallel(*[cached_noop(i).named(f"c{i}")
                                                     for i in range(n)]))
            opts: dict[str, Any] = {"history": False}
            t_static = _best(lambda: flowdsl.run(static, **opts), repeats)
            t_map = _best(lambda: flowdsl.run(mapped, **opts), repeats)
            flowdsl.run(cached, **opts)  # fills the cache
            hits = flowdsl.run(cached, **opts)
            assert all(r.status is flowdsl.TaskStatus.CACHED for r in hits.tasks.values())
            t_hit = _best(lambda: flowdsl.run(cached, **opts), repeats)
        finally:
            if old is None:
                os.environ.pop("FLOWDSL_CACHE", None)
            else:
                os.environ["FLOWDSL_CACHE"] = old
    us = 1e6 / n
    return {"n": n, "repeats": repeats,
            "static_s": t_static, "map_s": t_map, "cache_hit_s": t_hit,
            "static_us_per_task": t_static * us, "map_us_per_child": t_map * us,
            "cache_hit_us_per_task": t_hit * us,
            "map_vs_static": t_map / t_static, "cache_hit_vs_noop": t_hit / t_static}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    figures = run(n=1_000 if quick else 10_000, repeats=2 if quick else 5)
    for k, v in figures.items():
        print(f"{k:24} {v:.3f}" if isinstance(v, float) else f"{k:24} {v}")
    if "--json" in argv:
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
