"""The result cache against the size of its store (issue 24 item 7).

For a store holding ``small`` (100) and then ``big`` (1,000,000) other entries:

- hit: ``n`` independent tasks of a cached no-op tool, every one a hit, against ``n`` tasks of
  the plain no-op tool; the figure is the ratio of the per-task costs (goal: <= 2x at both
  sizes).
- fixed cost: a run of one cached task that hits, and a run of one cached task that misses
  (computes, then writes its entry, counts the hit bookkeeping and checks the bounds at the
  run's end); the goal is that neither grows with the store.

The million-entry store is built quickly: synthetic rows of another tool inserted with one
``executemany`` in one transaction (the time it took is reported). Every figure is the best
of ``repeats`` runs, the runs compared being interleaved; runs keep no history. Figures taken
on a loaded machine are noisy: compare the ratios measured in one sitting.

Run it alone: ``python -m benchmarks.cache_bench [--quick] [--json out.json]``
(``--quick``: 10,000 entries instead of a million, for a smoke test).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flowdsl
from flowdsl import CacheStore, tool

from ._tools import noop


@tool(registry=False, cache=True)
async def cached_noop(after: Any = None) -> None:
    """A no-op whose output is cached by its argument."""


@tool(registry=False, cache=True)
async def cached_miss(after: Any = None) -> None:
    """A no-op that always misses (each run passes a new argument)."""


def fill(store: CacheStore, count: int) -> float:
    """Insert ``count`` synthetic entries of another tool in one transaction; seconds."""
    t0 = time.perf_counter()
    conn = store._connect()  # the benchmark's own shortcut to the connection
    now = time.time()
    payload = b'{"filler":true,"n":12345}'
    # Keys in order, so the primary-key index is filled by appending (random keys would
    # make each insert touch a random page); a large page cache for the one transaction.
    keys = sorted(hashlib.sha256(b"filler%d" % i).hexdigest() for i in range(count))
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO entries (key, tool, qualname, created_at, expires_at, used_at, "
        "serializer, size, mac, value) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ((k, "filler", "bench.filler", now - 3600, None, now - 3600 + i * 1e-6, "json",
          len(payload), None, payload) for i, k in enumerate(keys)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA cache_size = -2000")
    return time.perf_counter() - t0


def _best(*fns: Callable[[], Any], repeats: int) -> list[float]:
    """The best time of each of ``fns``, run in turn ``repeats`` times (interleaved, so a
    change of load on the machine hits them alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            t0 = time.perf_counter()
            r = fn()
            acc.append(time.perf_counter() - t0)
            assert r.ok, r.error
    return [min(t) for t in times]


def measure(path: str, entries: int, n: int, repeats: int) -> dict[str, Any]:
    """The figures for one store size."""
    store = CacheStore(path, max_entries=2 * entries + 10 * n, max_bytes=1 << 34)
    built = fill(store, entries)
    opts: dict[str, Any] = {"history": False, "cache": store}
    plain = flowdsl.plan(flowdsl.parallel(*[noop(i).named(f"n{i}") for i in range(n)]))
    cached = flowdsl.plan(flowdsl.parallel(*[cached_noop(i).named(f"c{i}")
                                             for i in range(n)]))
    one_hit = flowdsl.plan(cached_noop(-1).named("one"))
    flowdsl.run(cached, **opts)  # writes the n entries
    flowdsl.run(one_hit, **opts)
    hits = flowdsl.run(cached, **opts)
    assert all(r.status is flowdsl.TaskStatus.CACHED for r in hits.tasks.values())
    t_plain, t_hit = _best(lambda: flowdsl.run(plain, history=False),
                           lambda: flowdsl.run(cached, **opts), repeats=repeats)
    counter = iter(range(10**9))
    t_one_plain, t_one_hit, t_one_miss = _best(
        lambda: flowdsl.run(noop(0).named("p"), history=False),
        lambda: flowdsl.run(one_hit, **opts),
        lambda: flowdsl.run(cached_miss(next(counter)).named("m"), **opts), repeats=repeats)
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    store.close()
    us = 1e6 / n
    return {"entries": entries, "build_s": built, "file_mb": size / 1e6,
            "noop_us_per_task": t_plain * us, "hit_us_per_task": t_hit * us,
            "hit_vs_noop": t_hit / t_plain, "one_task_run_ms": t_one_plain * 1e3,
            "one_hit_run_ms": t_one_hit * 1e3, "one_miss_run_ms": t_one_miss * 1e3}


def run(small: int = 100, big: int = 1_000_000, n: int = 1_000,
        repeats: int = 5) -> dict[str, Any]:
    """The figures for both sizes, and how the fixed costs grew from one to the other."""
    with tempfile.TemporaryDirectory() as tmp:
        a = measure(os.path.join(tmp, "small.db"), small, n, repeats)
        b = measure(os.path.join(tmp, "big.db"), big, n, repeats)
    return {"n": n, "repeats": repeats, "small": a, "big": b,
            "one_hit_growth": b["one_hit_run_ms"] / a["one_hit_run_ms"],
            "one_miss_growth": b["one_miss_run_ms"] / a["one_miss_run_ms"]}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    figures = run(big=10_000 if quick else 1_000_000, n=200 if quick else 1_000,
                  repeats=2 if quick else 9)
    for size in ("small", "big"):
        print(f"-- store with {figures[size]['entries']:,} other entries")
        for k, v in figures[size].items():
            print(f"  {k:20} {v:.3f}" if isinstance(v, float) else f"  {k:20} {v}")
    for k in ("one_hit_growth", "one_miss_growth"):
        print(f"{k:22} {figures[k]:.3f}")
    if "--json" in argv:
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
