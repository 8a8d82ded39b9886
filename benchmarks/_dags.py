"""Workloads as plain DAG specs: seeded random DAGs and WfCommons traces, turned into flows of
sleeping tools, plus a zero-overhead list-scheduling simulator to tell the scheduling policy's
limits apart from the engine's costs."""

from __future__ import annotations

import heapq
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import flowdsl

from ._tools import nap

__all__ = ["DagSpec", "load_wfcommons", "random_dag", "simulate", "to_flow", "workloads_dir"]

#: Environment variable naming the folder of WfCommons traces (default ../shared/workloads).
WORKLOADS_ENV = "FLOWDSL_WORKLOADS"


@dataclass
class DagSpec:
    """A DAG with a duration (seconds) and pool needs per task; ids are in topological order."""

    name: str
    preds: dict[str, list[str]]
    durations: dict[str, float]
    resources: dict[str, dict[str, int]] = field(default_factory=dict)
    recorded_makespan: float | None = None  # WfCommons: the production run, same scale

    @property
    def work(self) -> float:
        return sum(self.durations.values())

    def critical_path(self) -> float:
        finish: dict[str, float] = {}
        for i, ps in self.preds.items():  # ids are topologically ordered
            finish[i] = self.durations[i] + max((finish[p] for p in ps), default=0.0)
        return max(finish.values(), default=0.0)

    def scaled(self, factor: float) -> DagSpec:
        return DagSpec(self.name, self.preds, {k: v * factor for k, v in self.durations.items()},
                       self.resources, None if self.recorded_makespan is None
                       else self.recorded_makespan * factor)

    def with_pool(self, pool: str, share: float, seed: int) -> DagSpec:
        """A copy where a seeded ``share`` of the tasks needs one unit of ``pool``."""
        rng = random.Random(seed)
        res = {i: {pool: 1} for i in self.preds if rng.random() < share}
        return DagSpec(self.name, self.preds, self.durations, res, self.recorded_makespan)


def random_dag(seed: int, critical_path: float, n: int | None = None) -> DagSpec:
    """A seeded random DAG of 30-200 tasks with heterogeneous (log-normal) durations, scaled
    so its critical path takes ``critical_path`` seconds.

    Each task depends on 0-3 tasks among the recent ones (a window of n/4), which gives
    fan-outs, joins and a depth that grows with n, like real pipelines.
    """
    rng = random.Random(seed)
    n = n or rng.randint(30, 200)
    window = max(5, n // 4)
    preds: dict[str, list[str]] = {}
    ids = [f"t{i:03d}" for i in range(n)]
    for i, tid in enumerate(ids):
        k = min(i, rng.choice((0, 1, 1, 2, 2, 3)))
        preds[tid] = sorted(rng.sample(ids[max(0, i - window):i], k)) if k else []
    durations = {tid: rng.lognormvariate(0.0, 0.8) for tid in ids}
    spec = DagSpec(f"random-{seed}-n{n}", preds, durations)
    return spec.scaled(critical_path / spec.critical_path())


def workloads_dir() -> Path | None:
    """The WfCommons folder: ``$FLOWDSL_WORKLOADS`` or ``../shared/workloads/wfcommons``
    next to the repository; ``None`` when absent."""
    env = os.environ.get(WORKLOADS_ENV)
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "workloads"
    folder = root / "wfcommons" if (root / "wfcommons").is_dir() else root
    return folder if folder.is_dir() and any(folder.glob("*.json")) else None


def load_wfcommons(path: Path) -> DagSpec:
    """A WfFormat trace as a DagSpec: its DAG, recorded runtimes and makespan (seconds)."""
    doc = json.loads(path.read_text())
    wf = doc["workflow"]
    runtime = {t["id"]: float(t.get("runtimeInSeconds") or 0.0)
               for t in wf["execution"]["tasks"]}
    parents = {t["id"]: list(dict.fromkeys(t.get("parents") or ()))
               for t in wf["specification"]["tasks"]}
    # Topological order (Kahn, file order first) so DagSpec's invariant holds.
    indeg = {i: len(ps) for i, ps in parents.items()}
    children: dict[str, list[str]] = {i: [] for i in parents}
    for i, ps in parents.items():
        for p in ps:
            children[p].append(i)
    order = [i for i in parents if not indeg[i]]
    for node in order:  # grows while iterating: a breadth-first sweep
        for c in children[node]:
            indeg[c] -= 1
            if not indeg[c]:
                order.append(c)
    preds = {i: parents[i] for i in order}
    return DagSpec(path.stem, preds, {i: runtime.get(i, 0.0) for i in order},
                   recorded_makespan=float(wf["execution"]["makespanInSeconds"]))


def to_flow(spec: DagSpec, *, priority: float | None = None) -> flowdsl.Flow:
    """The DAG as a flow of ``nap`` tasks; each declares its duration (critical-path priority)
    and pool needs. ``priority`` set gives every task the same explicit priority (FCFS)."""
    built: dict[str, flowdsl.Task] = {}
    extra = {} if priority is None else {"priority": priority}
    for tid, ps in spec.preds.items():
        d = spec.durations[tid]
        t = nap(d, after=[built[p] for p in ps] or None).named(tid)
        built[tid] = t.with_options(expected_duration=max(d, 1e-6),
                                    resources=spec.resources.get(tid) or None, **extra)
    return flowdsl.Flow(spec.name, list(built.values()))


def simulate(spec: DagSpec, capacities: dict[str, int] | None = None,
             max_concurrency: int | None = None, *, critical_path_first: bool = True
             ) -> float:
    """The makespan of greedy list scheduling with zero overhead: at each event, start every
    ready task that fits, highest priority first (longest remaining path, or plan order)."""
    ids = list(spec.preds)
    succs: dict[str, list[str]] = {i: [] for i in ids}
    for i, ps in spec.preds.items():
        for p in ps:
            succs[p].append(i)
    rem: dict[str, float] = {}
    for i in reversed(ids):
        rem[i] = spec.durations[i] + max((rem[s] for s in succs[i]), default=0.0)
    rank = {i: (-rem[i] if critical_path_first else 0.0, n) for n, i in enumerate(ids)}
    free = dict(capacities or {})
    slots = max_concurrency or len(ids)
    waiting = {i: len(ps) for i, ps in spec.preds.items()}
    ready = sorted((i for i in ids if not waiting[i]), key=rank.__getitem__)
    running: list[tuple[float, int, str]] = []
    now, seq = 0.0, 0
    while ready or running:
        for i in list(ready):
            need = spec.resources.get(i, {})
            if slots and all(free.get(p, 0) >= a for p, a in need.items()):
                ready.remove(i)
                slots -= 1
                for p, a in need.items():
                    free[p] -= a
                seq += 1
                heapq.heappush(running, (now + spec.durations[i], seq, i))
        now, _, done = heapq.heappop(running)
        slots += 1
        for p, a in spec.resources.get(done, {}).items():
            free[p] += a
        for s in succs[done]:
            waiting[s] -= 1
            if not waiting[s]:
                ready.append(s)
        ready.sort(key=rank.__getitem__)
    return now
