"""flowdsl on dask.distributed: per-task overhead against ``dask.delayed``, CPU-bound speedup
and the reference workflow's efficiency, all on one ``LocalCluster`` of 2 worker processes
started once for the suite (starting it is not counted; ``executor="dask"`` pays it per run).

- overhead: the same graph of no-op tasks as a flowdsl flow run with
  ``DaskExecutor(cluster)`` and as ``dask.delayed`` computed on the same cluster, in the same
  process run; the ratio of the two per-task costs is the figure (goal: <= 1.5x).
- cpu: independent pure-Python tasks, sequential inline run vs the cluster (goal: >= 1.7x
  on 2 cores).
- reference: the reference workflow (sleeping async tools, pools) on the cluster against
  ``plan.lower_bound`` with the cluster's task slots as the concurrency limit.

Use it from the harness (``suite_dask(cfg, progress, shared)``) or alone
(``python -m benchmarks.dask_bench [--quick]``, or ``run(quick)`` for a dict of figures).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import flowdsl
from flowdsl import tool

from ._harness import Config, Progress, Stat, SuiteResult, Target
from ._tools import burn_loops

__all__ = ["run", "suite_dask"]

WORKERS = 2


@tool(registry=False)
def touch(after: Any = None) -> None:
    """A sync no-op task (the thread executor's default, sent to the cluster)."""


@tool(registry=False)
def burn_remote(loops: int) -> int:
    """CPU-bound pure Python; the default (thread) executor, so a dask run takes it."""
    return burn_loops(loops)


def _noop(*deps: Any) -> None:
    return None


def _graph(shape: str, n: int, seed: int) -> dict[int, list[int]]:
    """Task index -> predecessors: ``wide`` (independent), ``layered`` (width 50, 1-3
    parents in the layer above) or ``chain``."""
    rng = random.Random(seed)
    if shape == "wide":
        return {i: [] for i in range(n)}
    if shape == "chain":
        return {i: [i - 1] if i else [] for i in range(n)}
    width = 50
    preds: dict[int, list[int]] = {}
    for i in range(n):
        layer = i // width
        above = range((layer - 1) * width, layer * width) if layer else range(0)
        preds[i] = rng.sample(list(above), rng.randint(1, 3)) if layer else []
    return preds


def _flow(preds: dict[int, list[int]]) -> flowdsl.Fragment:
    tasks: dict[int, flowdsl.Task] = {}
    for i, ps in preds.items():
        tasks[i] = touch(after=[tasks[p] for p in ps] or None).named(f"t{i}")
    return flowdsl.parallel(*tasks.values())


def _delayed_seconds(client: Any, preds: dict[int, list[int]]) -> float:
    import dask

    start = time.perf_counter()
    nodes: dict[int, Any] = {}
    for i, ps in preds.items():
        nodes[i] = dask.delayed(_noop, pure=False)(*(nodes[p] for p in ps))
    sinks = set(preds) - {p for ps in preds.values() for p in ps}
    client.gather(client.compute([nodes[s] for s in sorted(sinks)]))
    return time.perf_counter() - start


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ok(result: flowdsl.RunResult) -> None:
    result.raise_for_error()


def _run_on(flow: Any, cluster: Any) -> None:
    from flowdsl import DaskExecutor

    _ok(flowdsl.run(flow, executor=DaskExecutor(cluster), history=False))


def _overhead(cfg: Config, progress: Progress, cluster: Any, client: Any,
              out: SuiteResult) -> Stat:

    n = 200 if cfg.quick else 1000
    ratios_all: list[float] = []
    for shape in ("wide", "layered", "chain"):
        size = n if shape != "chain" else n // 4
        preds = _graph(shape, size, cfg.seed)
        flow = _flow(preds)
        ours, theirs = [], []
        for r in range(cfg.repeats):
            progress.step(f"overhead {shape} {size} tasks, repeat {r + 1}/{cfg.repeats}")
            ours.append(_timed(partial(_run_on, flow, cluster)))
            theirs.append(_delayed_seconds(client, preds))
        ratio = Stat.of([a / b for a, b in zip(ours, theirs)])
        if shape != "chain":
            ratios_all.extend(a / b for a, b in zip(ours, theirs))
        us = Stat.of([t / size * 1e6 for t in ours])
        dus = Stat.of([t / size * 1e6 for t in theirs])
        out.rows.append([f"per-task cost, {shape} ({size} tasks)",
                         f"flowdsl {us.fmt('.0f', ' µs')} / dask.delayed "
                         f"{dus.fmt('.0f', ' µs')} = {ratio.fmt('.2f', 'x')}"])
        out.data[f"overhead_{shape}"] = {"tasks": size, "flowdsl_us": us.to_dict(),
                                         "delayed_us": dus.to_dict(),
                                         "ratio": ratio.to_dict()}
    return Stat.of(ratios_all)


def _cpu(cfg: Config, progress: Progress, cluster: Any, out: SuiteResult) -> Stat:
    from flowdsl import DaskExecutor

    # Calibrate on a warm function, best of 5: a single cold timing ran slow and made the
    # tasks about half the nominal length (0.13 s instead of 0.25 s), so fixed per-run costs
    # weighed double. The rows report the length measured by the sequential run.
    burn_loops(50_000)
    probe = []
    for _ in range(5):
        start = time.perf_counter()
        burn_loops(200_000)
        probe.append(time.perf_counter() - start)
    loops = int(200_000 * cfg.cpu_task_seconds / min(probe))
    n = WORKERS * cfg.cpu_tasks_per_core

    def flow(executor: str | None) -> flowdsl.Fragment:
        tasks = (burn_remote(loops).named(f"burn{i}") for i in range(n))
        if executor is not None:
            tasks = (t.with_options(executor=executor) for t in tasks)
        return flowdsl.parallel(*tasks)

    seq, par = [], []
    for r in range(cfg.repeats):
        progress.step(f"cpu {n} x ~{cfg.cpu_task_seconds} s, repeat {r + 1}/{cfg.repeats}")
        seq.append(_timed(lambda: _ok(flowdsl.run(flow("inline"), mode="sequential",
                                                  history=False))))
        par.append(_timed(lambda: _ok(flowdsl.run(flow(None), executor=DaskExecutor(cluster),
                                                  history=False))))
    speedup = Stat.of([s / p for s, p in zip(seq, par)])
    task = Stat.of(seq).median / n
    out.rows += [[f"CPU-bound, {n} x ~{cfg.cpu_task_seconds} s (measured {task:.3f} s): "
                  "sequential (inline)", Stat.of(seq).fmt(".3f", " s")],
                 [f"CPU-bound on the cluster ({WORKERS} workers)", Stat.of(par).fmt(".3f", " s")],
                 ["CPU-bound speedup", speedup.fmt(".2f", "x")]]
    out.data["cpu"] = {"tasks": n, "task_seconds": cfg.cpu_task_seconds,
                       "measured_task_seconds": task,
                       "sequential": Stat.of(seq).to_dict(), "dask": Stat.of(par).to_dict(),
                       "speedup": speedup.to_dict()}
    return speedup


def _reference(cfg: Config, progress: Progress, cluster: Any, out: SuiteResult) -> Stat:
    from flowdsl import DaskExecutor

    from ._suites_flows import _load_reference

    ref = _load_reference()
    flow = ref.reference_flow(cfg.reference_scale)
    durations = ref.reference_durations(cfg.reference_scale)
    plan = flowdsl.plan(flow)
    # Each worker runs one task at a time (threads_per_worker=1), coroutine tools included.
    bound = plan.lower_bound(durations, ref.POOLS, WORKERS)
    times = []
    for r in range(cfg.repeats):
        progress.step(f"reference workflow, repeat {r + 1}/{cfg.repeats}")
        res = flowdsl.run(flow, executor=DaskExecutor(cluster), resources=ref.POOLS,
                          history=False)
        _ok(res)
        times.append(res.duration)
    eff = Stat.of([bound / t for t in times])
    out.rows += [["reference workflow on the cluster", Stat.of(times).fmt(".3f", " s")],
                 [f"its lower bound ({WORKERS} task slots, pools)", f"{bound:.3f} s"],
                 ["reference efficiency = bound / run", eff.fmt(".3f")]]
    out.data["reference"] = {"scale": cfg.reference_scale, "bound": bound,
                             "seconds": Stat.of(times).to_dict(), "efficiency": eff.to_dict()}
    return eff


def suite_dask(cfg: Config, progress: Progress, shared: dict[str, Any]) -> SuiteResult:
    """flowdsl on a LocalCluster of 2 worker processes (see the module docstring)."""
    out = SuiteResult("dask", f"dask.distributed (LocalCluster, {WORKERS} worker processes)")
    out.columns = ["figure", "value (median [min–max])"]
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        out.skipped = "dask.distributed is not installed (pip install flowdsl[dask])"
        return out
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"}
                      ) as cluster, Client(cluster, set_as_default=False) as client:
        ratio = _overhead(cfg, progress, cluster, client, out)
        speedup = _cpu(cfg, progress, cluster, out)
        eff = _reference(cfg, progress, cluster, out)
    out.targets = [
        Target("dask per-task cost vs dask.delayed (wide, layered)", "<= 1.5x",
               ratio.fmt(".2f", "x"), ratio.median <= 1.5),
        Target(f"dask CPU-bound speedup ({WORKERS} workers)", ">= 1.7x",
               speedup.fmt(".2f", "x"), speedup.median >= 1.7),
        Target("reference efficiency on the cluster", "reported", eff.fmt(".3f"), None)]
    out.notes.append("cluster start-up is not counted; every flowdsl run connects its own "
                     "client (counted) and gathers all outputs at the end (counted)")
    return out


def run(quick: bool) -> dict[str, Any]:
    """Run the suite alone; returns its figures (``SuiteResult.to_dict()`` plus the rows)."""
    cfg = Config.make(quick=quick)
    progress = Progress(1)
    progress.start("dask")
    result = suite_dask(cfg, progress, {})
    return {**result.to_dict(), "rows": result.rows}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
