"""Suites over sleeping (I/O-bound) flows: the reference workflow, the level-by-level
baseline, seeded random DAGs, WfCommons replays and pipeline streaming.

Sleeping tools make every bound exact (a sleep takes what it says, whatever the core count),
so the gap between a bound and a measured makespan is the engine's and the policy's alone.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flowdsl

from . import _dags
from ._baselines import levels_seconds, sleeping_floor
from ._harness import Config, Progress, Stat, SuiteResult, Target
from ._tools import hop

__all__ = ["suite_levels", "suite_pipeline", "suite_random", "suite_reference",
           "suite_wfcommons"]

Shared = dict[str, Any]  # figures one suite leaves for a later one (levels reads two)


def _load_reference() -> Any:
    """``examples/reference_workflow.py``, loaded by path (examples/ is not a package)."""
    name = "reference_workflow"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot load the reference workflow from {path}"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _run(flow: Any, **options: Any) -> flowdsl.RunResult:
    result = flowdsl.run(flow, history=False, **options)
    result.raise_for_error()
    return result


def suite_reference(cfg: Config, progress: Progress, shared: Shared,
                    gantt: Path | None = None) -> SuiteResult:
    """Sequential vs parallel on the reference workflow, against plan.lower_bound."""
    ref = _load_reference()
    pools = ref.POOLS
    flow = ref.reference_flow(cfg.reference_scale)
    fcfs_flow = ref.reference_flow(cfg.reference_scale, priority=0)
    plan = flowdsl.plan(flow)
    durations = ref.reference_durations(cfg.reference_scale)
    bound = plan.lower_bound(durations, pools)
    path, _ = plan.critical_path(durations)
    seq, par, fcfs, lev = [], [], [], []
    last: dict[str, flowdsl.RunResult] = {}
    for r in range(cfg.repeats):
        progress.step(f"repeat {r + 1}/{cfg.repeats}")
        last["sequential"] = _run(flow, mode="sequential", resources=pools)
        last["parallel"] = _run(flow, mode="parallel", resources=pools)
        seq.append(last["sequential"].duration)
        par.append(last["parallel"].duration)
        fcfs.append(_run(fcfs_flow, mode="parallel", resources=pools).duration)
        lev.append(levels_seconds(flow, pools))
    speedup = Stat.of([s / p for s, p in zip(seq, par)])
    eff = Stat.of([bound / p for p in par])
    out = SuiteResult("reference", "Reference workflow (19 tools, pools http=3 api=2 db=1)")
    out.columns = ["figure", "value (median [min–max])"]
    out.rows = [
        ["tasks / edges / levels", f"{len(plan)} / {len(plan.edges)} / {len(plan.levels)}"],
        ["sequential time", Stat.of(seq).fmt(".3f", " s")],
        ["parallel time", Stat.of(par).fmt(".3f", " s")],
        ["lower bound (plan.lower_bound)", f"{bound:.3f} s"],
        ["speedup", speedup.fmt(".2f", "x")],
        ["improvement", Stat.of([100 * (1 - p / s) for s, p in zip(seq, par)]).fmt(".1f", " %")],
        ["efficiency = bound / parallel", eff.fmt(".3f")],
        ["parallel, FCFS (equal priorities)", Stat.of(fcfs).fmt(".3f", " s")],
        ["level-by-level baseline", Stat.of(lev).fmt(".3f", " s")],
    ]
    out.data = {"tasks": len(plan), "scale": cfg.reference_scale, "bound": bound,
                "critical_path": path, "sequential": Stat.of(seq).to_dict(),
                "parallel": Stat.of(par).to_dict(), "fcfs": Stat.of(fcfs).to_dict(),
                "levels": Stat.of(lev).to_dict(), "speedup": speedup.to_dict(),
                "improvement_pct": 100 * (1 - 1 / speedup.median),
                "efficiency": eff.to_dict()}
    out.targets = [Target("reference efficiency", ">= 0.95", eff.fmt(".3f"),
                          eff.median >= 0.95),
                   Target("reference improvement over sequential", ">= 60 %",
                          f"{out.data['improvement_pct']:.1f} %",
                          out.data["improvement_pct"] >= 60)]
    shared["reference"] = {"ready": par, "levels": lev, "bound": bound}
    if gantt is not None:
        from .gantt import save_gantt

        try:
            save_gantt([("sequential", last["sequential"]), ("parallel", last["parallel"])],
                       gantt, highlight=path, title="Reference workflow")
            out.data["gantt"] = str(gantt)
        except ImportError as exc:
            out.notes.append(f"Gantt chart not drawn: {exc}")
    return out


_CONFIGS: tuple[tuple[str, int | None], ...] = (("unconstrained", None), ("pool cap 2", 2),
                                                 ("pool cap 4", 4))


def suite_random(cfg: Config, progress: Progress, shared: Shared) -> SuiteResult:
    """Seeded random DAGs, unconstrained and under pools, critical path vs FCFS."""
    runs: list[dict[str, Any]] = []
    for k in range(cfg.random_dags):
        seed = cfg.seed + k
        base = _dags.random_dag(seed, cfg.random_cp)
        progress.step(f"DAG {k + 1}/{cfg.random_dags} ({len(base.preds)} tasks)")
        for label, cap in _CONFIGS:
            spec = base.with_pool("p", 0.5, seed) if cap else base
            caps = {"p": cap} if cap else {}
            flow = _dags.to_flow(spec)
            bound = flowdsl.plan(flow).lower_bound(None, caps)
            cp = _run(flow, resources=caps).duration
            fcfs = _run(_dags.to_flow(spec, priority=0), resources=caps).duration
            runs.append({"dag": spec.name, "tasks": len(spec.preds), "config": label,
                         "bound": bound, "cp": cp, "fcfs": fcfs,
                         "sim_cp": _dags.simulate(spec, caps),
                         "sim_fcfs": _dags.simulate(spec, caps, critical_path_first=False),
                         "levels": levels_seconds(flow, caps),
                         "floor": None if cap else sleeping_floor(spec.preds, spec.durations)})
    out = SuiteResult("random", f"Random DAGs ({cfg.random_dags} seeded DAGs of 30–200 tasks, "
                      f"critical path {cfg.random_cp} s, half the tasks in pool p)")
    out.columns = ["config", "efficiency CP: median (worst)", "efficiency FCFS: median (worst)",
                   "policy limit CP (sim)", "raw-asyncio floor", "CP / FCFS time",
                   "levels / ready"]
    summary: dict[str, Any] = {}
    for label, _ in _CONFIGS:
        rs = [r for r in runs if r["config"] == label]
        e_cp = [r["bound"] / r["cp"] for r in rs]
        e_fc = [r["bound"] / r["fcfs"] for r in rs]
        floor = [r["bound"] / r["floor"] for r in rs if r["floor"]]
        summary[label] = s = {
            "efficiency_cp": Stat.of(e_cp).to_dict(), "efficiency_fcfs": Stat.of(e_fc).to_dict(),
            "sim_efficiency_cp": Stat.of([r["bound"] / r["sim_cp"] for r in rs]).to_dict(),
            "floor_efficiency": Stat.of(floor).to_dict() if floor else None,
            "cp_over_fcfs": Stat.of([r["cp"] / r["fcfs"] for r in rs]).to_dict(),
            "levels_over_ready": Stat.of([r["levels"] / r["cp"] for r in rs]).to_dict()}
        out.rows.append([label, f"{s['efficiency_cp']['median']:.3f} ({min(e_cp):.3f})",
                         f"{s['efficiency_fcfs']['median']:.3f} ({min(e_fc):.3f})",
                         f"{s['sim_efficiency_cp']['median']:.3f}",
                         f"{Stat.of(floor).median:.3f}" if floor else "n/a",
                         f"{s['cp_over_fcfs']['median']:.3f}",
                         f"{s['levels_over_ready']['median']:.2f}x"])
    pooled = [r["bound"] / r["cp"] for r in runs if r["config"] != "unconstrained"]
    free = summary["unconstrained"]["efficiency_cp"]["median"]
    out.data = {"summary": summary, "runs": runs,
                "pools_median_efficiency_cp": statistics.median(pooled)}
    out.targets = [
        Target("random DAGs, unconstrained, median efficiency", ">= 0.95", f"{free:.3f}",
               free >= 0.95),
        Target("random DAGs, under pools, median efficiency", ">= 0.90",
               f"{statistics.median(pooled):.3f}", statistics.median(pooled) >= 0.90)]
    out.notes.append("efficiency = plan.lower_bound / makespan; policy limit = the same for a "
                     "zero-overhead list schedule; raw-asyncio floor = one coroutine per task "
                     "awaiting events, then sleeping (the event loop's own limit)")
    shared["random"] = runs
    return out


def suite_levels(cfg: Config, progress: Progress, shared: Shared) -> SuiteResult:
    """The level-by-level baseline next to the ready queue, on the flows above."""
    out = SuiteResult("levels", "Level-by-level baseline vs the ready queue (same flows)")
    out.columns = ["flows", "ready queue", "level by level", "levels / ready (median [min–max])"]
    ref = shared.get("reference")
    if ref:
        ratio = Stat.of([lv / rd for lv, rd in zip(ref["levels"], ref["ready"])])
        out.rows.append(["reference workflow", Stat.of(ref["ready"]).fmt(".3f", " s"),
                         Stat.of(ref["levels"]).fmt(".3f", " s"), ratio.fmt(".2f", "x")])
        out.data["reference"] = {"ratio": ratio.to_dict(),
                                 "levels_efficiency": ref["bound"] / Stat.of(ref["levels"]).median}
    for label, _ in _CONFIGS:
        rs = [r for r in shared.get("random", ()) if r["config"] == label]
        if rs:
            ratio = Stat.of([r["levels"] / r["cp"] for r in rs])
            eff = Stat.of([r["bound"] / r["levels"] for r in rs])
            out.rows.append([f"random DAGs, {label}",
                             f"efficiency {Stat.of([r['bound'] / r['cp'] for r in rs]).median:.3f}",
                             f"efficiency {eff.median:.3f}", ratio.fmt(".2f", "x")])
            out.data[label] = {"ratio": ratio.to_dict(), "levels_efficiency": eff.to_dict()}
    if not out.rows:
        out.skipped = "needs the reference and random suites"
    progress.step("summarised")
    return out


def suite_wfcommons(cfg: Config, progress: Progress, shared: Shared) -> SuiteResult:
    """Replay WfCommons traces, time-scaled, under 8 and 48 workers."""
    out = SuiteResult("wfcommons", "WfCommons traces (recorded DAGs and runtimes, time-scaled)")
    folder = _dags.workloads_dir()
    if folder is None:
        out.skipped = ("no WfCommons traces found: set FLOWDSL_WORKLOADS or provide "
                       "../shared/workloads/wfcommons next to the repository")
        return out
    specs = sorted((_dags.load_wfcommons(f) for f in folder.glob("*.json")),
                   key=lambda s: (len(s.preds) if cfg.quick else 0, s.name))[:cfg.wf_files]
    out.columns = ["trace", "tasks", "scale", "sequential", "workers", "makespan",
                   "bound", "efficiency", "policy limit (sim)", "vs list schedule", "speedup",
                   "recorded (scaled)"]
    rows: list[dict[str, Any]] = []
    # The parallel replays record into a history store, as a user's default run does (a
    # private file, so the user's own history is left alone).
    tmp = tempfile.TemporaryDirectory()
    store = flowdsl.HistoryStore(Path(tmp.name) / "history.db")
    for k, raw in enumerate(specs):
        bound8 = max(raw.critical_path(), raw.work / 8)
        # A few seconds per replay: the 8-worker bound near the target, sequential capped.
        scale = min(cfg.wf_parallel_target / bound8, cfg.wf_sequential_cap / raw.work)
        spec = raw.scaled(scale)
        progress.step(f"{k + 1}/{len(specs)} {raw.name} ({len(spec.preds)} tasks)")
        flow = _dags.to_flow(spec)
        seq = _run(flow, mode="sequential").duration
        for workers in (8, 48):
            bound = max(spec.critical_path(), spec.work / workers)
            result = flowdsl.run(flow, max_concurrency=workers, history=store)
            result.raise_for_error()
            made = result.duration
            sim = _dags.simulate(spec, None, workers)
            rows.append({"trace": raw.name, "tasks": len(spec.preds), "scale": scale,
                         "workers": workers, "sequential": seq, "makespan": made,
                         "bound": bound, "efficiency": bound / made, "speedup": seq / made,
                         "sim": sim, "vs_schedule": made / sim,
                         "recorded": spec.recorded_makespan})
            out.rows.append([raw.name.split("-chameleon")[0], str(len(spec.preds)),
                             f"{scale:.2e}", f"{seq:.2f} s", str(workers), f"{made:.3f} s",
                             f"{bound:.3f} s", f"{bound / made:.3f}", f"{bound / sim:.3f}",
                             f"{made / sim:.3f}x", f"{seq / made:.1f}x",
                             f"{spec.recorded_makespan:.2f} s"])
    store.close()
    tmp.cleanup()
    effs = [r["efficiency"] for r in rows]
    versus = {w: Stat.of([r["vs_schedule"] for r in rows if r["workers"] == w]).to_dict()
              for w in (8, 48)}
    out.data = {"folder": str(folder), "runs": rows, "efficiency": Stat.of(effs).to_dict(),
                "vs_schedule": versus}
    out.notes.append("makespan vs a zero-overhead critical-path list schedule of the same "
                     "DAG, default history on: median " + ", ".join(
                         f"{versus[w]['median']:.3f}x at {w} workers" for w in (8, 48)))
    out.notes.append("bound = max(critical path, work / workers); policy limit = bound / the "
                     "makespan of a zero-overhead critical-path list schedule (what the policy "
                     "allows); recorded = the production makespan under the same time scale "
                     "(Pegasus/Makeflow on a cluster)")
    return out


def suite_pipeline(cfg: Config, progress: Progress, shared: Shared) -> SuiteResult:
    """N items through S stages: one at a time vs streamed, against (N + S - 1) stage-times."""
    n, s, t = cfg.pipeline
    flow = flowdsl.chain(*(hop.stage(seconds=t).named(f"stage{k}") for k in range(s)))
    seq, streamed = [], []
    for r in range(cfg.repeats):
        progress.step(f"repeat {r + 1}/{cfg.repeats}")
        start = time.perf_counter()
        for item in range(n):  # no streaming: each item goes through every stage, in turn
            _run(flow, mode="sequential", input=item)
        one = time.perf_counter() - start
        many = _run(flow, mode="pipeline", items=range(n))
        if list(many.output) != list(range(n)):
            msg = f"pipeline lost or reordered items: {many.output!r}"
            raise AssertionError(msg)
        seq.append(one)
        streamed.append(many.duration)
    ideal = (n + s - 1) * t
    eff = Stat.of([ideal / x for x in streamed])
    title = f"Pipeline streaming ({n} items x {s} stages x {t * 1000:.0f} ms)"
    out = SuiteResult("pipeline", title)
    out.columns = ["figure", "value (median [min–max])"]
    out.rows = [["one item at a time (a sequential run per item)", Stat.of(seq).fmt(".3f", " s")],
                ["N x S stage-times", f"{n * s * t:.3f} s"],
                ["streamed", Stat.of(streamed).fmt(".3f", " s")],
                ["(N + S - 1) stage-times", f"{ideal:.3f} s"],
                ["speedup streamed / one at a time",
                 Stat.of([a / b for a, b in zip(seq, streamed)]).fmt(".2f", "x")],
                ["efficiency (N + S - 1)t / streamed", eff.fmt(".3f")]]
    out.data = {"items": n, "stages": s, "stage_seconds": t, "sequential": Stat.of(seq).to_dict(),
                "streamed": Stat.of(streamed).to_dict(), "ideal": ideal,
                "speedup": Stat.of([a / b for a, b in zip(seq, streamed)]).to_dict(),
                "efficiency": eff.to_dict()}
    return out
