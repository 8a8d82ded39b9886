"""Suites on the engine itself: per-task overhead of no-op tasks against a raw-asyncio floor
(and dask), and CPU-bound tasks on the inline, thread and process executors."""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import flowdsl

from ._baselines import asyncio_floor, dask_threaded
from ._harness import Config, Progress, Stat, SuiteResult, Target, default_history
from ._tools import burn, burn_loops, noop

Tool = Any  # a flowdsl tool (called to make tasks)

__all__ = ["core_count", "suite_cpu", "suite_overhead"]


def core_count() -> int:
    """Cores this process may run on (the affinity mask, else os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _wide(n: int, rng: random.Random, t: Tool = noop) -> list[flowdsl.Task]:
    return [t() for _ in range(n)]


def _chain(n: int, rng: random.Random, t: Tool = noop) -> list[flowdsl.Task]:
    prev = t()
    out = [prev]
    for _ in range(n - 1):
        prev = t(after=prev)
        out.append(prev)
    return out


def _layered(n: int, rng: random.Random, t: Tool = noop, width: int = 100
             ) -> list[flowdsl.Task]:
    """Layers of ``width`` tasks; each depends on 1-3 random tasks of the layer above."""
    out: list[flowdsl.Task] = [t() for _ in range(min(width, n))]
    while len(out) < n:
        above = out[-width:]
        out.extend(t(after=rng.sample(above, rng.randint(1, 3)))
                   for _ in range(min(width, n - len(out))))
    return out


#: Shapes of no-op flows: ``SHAPES[name](n, rng, tool)`` gives the tasks (tool: noop default).
SHAPES: dict[str, Callable[..., list[flowdsl.Task]]] = {
    "wide": _wide, "chain": _chain, "layered": _layered}


def _compose(shape: str, n: int, seed: int) -> tuple[flowdsl.Fragment, float]:
    gc.collect()
    start = time.perf_counter()
    flow = flowdsl.parallel(*SHAPES[shape](n, random.Random(seed)))
    return flow, time.perf_counter() - start


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak(fn: Callable[[], Any]) -> int:
    """Peak bytes traced while ``fn`` runs (allocations made before it are not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _measure(cfg: Config, shape: str, n: int, repeats: int, *, memory: bool
             ) -> dict[str, Any]:
    comp, plan_t, run_t, floor_t, dask_t = [], [], [], [], []
    for r in range(repeats):
        flow, c = _compose(shape, n, cfg.seed + r)
        comp.append(c)
        plan_t.append(_timed(lambda: flowdsl.plan(flow)))  # noqa: B023 (called at once)
        p = flowdsl.plan(flow)
        floor_t.append(asyncio_floor(p))
        run_t.append(_timed(lambda: flowdsl.run(flow, history=False)))  # noqa: B023
        if n <= cfg.dask_max_tasks:
            d = dask_threaded(p)
            if d is not None:
                dask_t.append(d)
    mem_run: float | None = None
    mem_floor: float | None = None
    if memory:  # tracemalloc slows a run several times over: measured at one size only
        flow, _ = _compose(shape, n, cfg.seed)
        p = flowdsl.plan(flow)
        # The run (its plan included) with the flow already built, vs the floor with the
        # plan already built.
        mem_run = _peak(lambda: flowdsl.run(flow, history=False))
        mem_floor = _peak(lambda: asyncio_floor(p))

    def us(values: list[float]) -> Stat:
        return Stat.of([v / n * 1e6 for v in values])

    return {"shape": shape, "tasks": n, "compose_us": us(comp), "plan_us": us(plan_t),
            "plan_s": Stat.of(plan_t), "run_us": us(run_t), "floor_us": us(floor_t),
            "dask_us": us(dask_t) if dask_t else None,
            "ratio": Stat.of([a / b for a, b in zip(run_t, floor_t)]),
            "mem_run_b": mem_run and mem_run / n, "mem_floor_b": mem_floor and mem_floor / n}


def _bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"  # None: not measured at this size


def suite_overhead(cfg: Config, progress: Progress, shared: dict[str, Any]) -> SuiteResult:
    """Microseconds and bytes per no-op task: compose, plan, run; floor and dask alongside."""
    out = SuiteResult("overhead", "Engine overhead (no-op async tasks, parallel mode)")
    out.columns = ["shape", "tasks", "compose µs/task", "plan µs/task", "run µs/task",
                   "asyncio floor µs/task", "run / floor", "dask threaded µs/task",
                   "peak mem run B/task", "floor B/task"]
    rows = []
    for n in cfg.overhead_sizes:
        repeats = cfg.overhead_repeats if n <= 10_000 else 1
        for shape in SHAPES:
            progress.step(f"{shape} x {n:,} ({repeats} repeats)")
            m = _measure(cfg, shape, n, repeats, memory=n == min(cfg.overhead_sizes))
            rows.append(m)
            out.rows.append([shape, f"{n:,}", m["compose_us"].fmt(".1f"), m["plan_us"].fmt(".1f"),
                             m["run_us"].fmt(".1f"), m["floor_us"].fmt(".1f"),
                             m["ratio"].fmt(".2f", "x"),
                             m["dask_us"].fmt(".1f") if m["dask_us"] else "n/a",
                             _bytes(m["mem_run_b"]), _bytes(m["mem_floor_b"])])
    out.notes.append(f"dask measured up to {cfg.dask_max_tasks:,} tasks: a first full run with "
                     "dask at 100,000 layered tasks grew past 18 GB and was stopped; peak "
                     "memory (tracemalloc) measured at the smallest size")
    out.data = {"runs": [{k: v.to_dict() if isinstance(v, Stat) else v for k, v in m.items()}
                         for m in rows]}
    biggest = max(cfg.overhead_sizes)
    worst = max(rows, key=lambda m: m["ratio"].median)
    plan_big = max(m["plan_s"].median for m in rows if m["tasks"] == biggest)
    out.targets = [
        Target("run cost per task vs raw-asyncio floor", "<= 2x",
               f"{worst['ratio'].median:.2f}x (worst: {worst['shape']} x {worst['tasks']:,}); "
               f"best {min(m['ratio'].median for m in rows):.2f}x",
               worst["ratio"].median <= 2.0),
        Target(f"planning {biggest:,} tasks", "< 1 s" + (" (at 100,000)" if biggest < 100_000
                                                          else ""),
               f"{plan_big:.3f} s (slowest shape)",
               plan_big < 1.0 if biggest >= 100_000 else None)]
    return out


def suite_cpu(cfg: Config, progress: Progress, shared: dict[str, Any]) -> SuiteResult:
    """Independent pure-Python tasks: inline (sequential) vs thread vs process executor."""
    cores = core_count()
    start = time.perf_counter()
    burn_loops(200_000)
    loops = int(200_000 * cfg.cpu_task_seconds / (time.perf_counter() - start))
    n = cores * cfg.cpu_tasks_per_core

    def flow(executor: str) -> flowdsl.Fragment:
        return flowdsl.parallel(*(burn(loops).named(f"burn{i}").with_options(executor=executor)
                                  for i in range(n)))

    def startup() -> float:
        # One trivial task per core: what a run pays to start its worker processes.
        f = flowdsl.parallel(*(burn(1).named(f"warm{i}") for i in range(cores)))
        return _timed(lambda: flowdsl.run(f, history=False).raise_for_error())

    def raw_pool(method: str) -> float:
        # The same tasks on a bare process pool: the floor for any process executor on this
        # machine right now (other jobs on the cores show up here too).
        ctx = multiprocessing.get_context(method)
        gc.collect()
        start = time.perf_counter()
        with ProcessPoolExecutor(cores, mp_context=ctx) as pool:
            list(pool.map(burn_loops, [loops] * n))
        return time.perf_counter() - start

    bare_fork = "bare ProcessPoolExecutor (fork)"
    times: dict[str, list[float]] = {"sequential": [], "thread": [], "process": [],
                                     "process (default history)": [],
                                     "bare ProcessPoolExecutor (spawn)": []}
    if "fork" in multiprocessing.get_all_start_methods():
        times[bare_fork] = []
    starts: list[float] = []
    with default_history():
        for r in range(cfg.cpu_repeats):
            progress.step(f"repeat {r + 1}/{cfg.cpu_repeats} ({n} tasks of "
                          f"~{cfg.cpu_task_seconds} s)")
            times["sequential"].append(_timed(lambda: flowdsl.run(
                flow("inline"), mode="sequential", history=False).raise_for_error()))
            times["thread"].append(_timed(lambda: flowdsl.run(
                flow("thread"), history=False).raise_for_error()))
            times["process"].append(_timed(lambda: flowdsl.run(
                flow("process"), history=False).raise_for_error()))
            times["process (default history)"].append(_timed(lambda: flowdsl.run(
                flow("process")).raise_for_error()))
            times["bare ProcessPoolExecutor (spawn)"].append(raw_pool("spawn"))
            if bare_fork in times:
                times[bare_fork].append(raw_pool("fork"))
            starts.append(startup())
    out = SuiteResult("cpu", f"CPU-bound tasks ({n} x ~{cfg.cpu_task_seconds} s, {cores} cores)")
    out.columns = ["executor", "wall time", "speedup vs sequential", "speedup per core"]
    out.data = {"cores": cores, "tasks": n, "task_seconds": cfg.cpu_task_seconds}
    for name, ts in times.items():
        sp = Stat.of([a / b for a, b in zip(times["sequential"], ts)])
        per = Stat.of([a / b / cores for a, b in zip(times["sequential"], ts)])
        out.rows.append([name, Stat.of(ts).fmt(".3f", " s"), sp.fmt(".2f", "x"), per.fmt(".2f")])
        out.data[name] = {"seconds": Stat.of(ts).to_dict(), "speedup": sp.to_dict(),
                          "per_core": per.to_dict()}
    out.data["process_startup"] = Stat.of(starts).to_dict()
    out.notes.append(f"pool start-up (a run of {cores} trivial process tasks): "
                     f"{Stat.of(starts).fmt('.3f', ' s')}; workers are forked (by the process "
                     "while it has one thread, else by its fork helper), so nothing is "
                     "re-imported; a run pays it once, so the speedup grows with the work per "
                     "core")
    per_core = out.data["process"]["per_core"]["median"]
    bare = out.data["bare ProcessPoolExecutor (spawn)"]["per_core"]["median"]
    out.targets = [Target("process executor speedup per core (tasks >= 0.2 s)", ">= 0.85",
                          f"{per_core:.2f} ({cores} cores; a bare process pool: {bare:.2f})",
                          per_core >= 0.85)]
    if bare_fork in times:  # paired per repeat: the same machine state for both
        vs = Stat.of([b / a for a, b in zip(times["process (default history)"],
                                            times[bare_fork])])
        out.data["history_vs_bare_fork"] = vs.to_dict()
        out.targets.append(Target(
            "process executor with the default history vs a bare fork pool (speedup)",
            ">= 0.95x", f"{vs.median:.2f}x ({cores} cores)", vs.median >= 0.95))
    out.notes.append("wall time of run() includes starting and stopping the worker pool")
    return out
