"""Smoke test of ``python -m benchmarks --quick``: every suite reports sane figures.

Timings on shared machines are noisy, so nothing here is a tight threshold: the test checks
that each suite ran and that its figures make sense (a speedup above 1, efficiencies in (0, 1]
give or take the clock), not that a target was met.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("default", "reference", "random", "levels", "wfcommons", "overhead", "cpu",
          "pipeline", "history")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of one quick run (in a subprocess: its own event loops and worker processes)."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out / "q.json"),
           "--gantt", str(out / "gantt.png")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "q.json").read_text())
    doc["_stdout"], doc["_stderr"], doc["_dir"] = proc.stdout, proc.stderr, out
    return doc


def _ok(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_suite_reported(report: dict[str, Any]) -> None:
    """The JSON has every suite, and the table every suite's title."""
    assert set(SUITES) <= set(report["suites"])
    for name in SUITES:
        suite = report["suites"][name]
        assert suite["title"] in report["_stdout"]
        if name != "wfcommons":
            assert suite["skipped"] is None, name


def test_progress_on_stderr(report: dict[str, Any]) -> None:
    """Progress lines name each suite."""
    for name in SUITES:
        assert f"{name}: started" in report["_stderr"]


def test_reference_parallel_beats_sequential(report: dict[str, Any]) -> None:
    """Parallel is faster than sequential, and no faster than the lower bound allows."""
    data = report["suites"]["reference"]["data"]
    assert data["speedup"]["median"] > 1.0
    eff = data["efficiency"]["median"]
    assert 0.3 < eff <= 1.05  # the bound is a bound; a little slack for clock granularity
    assert data["critical_path"]
    assert (report["_dir"] / "gantt.png").stat().st_size > 1000


def test_random_dags_and_levels(report: dict[str, Any]) -> None:
    """Efficiencies are in (0, 1] and the level baseline is no faster than the ready queue
    on average."""
    summary = report["suites"]["random"]["data"]["summary"]
    for cfg in summary.values():
        assert 0.0 < cfg["efficiency_cp"]["median"] <= 1.05
        assert 0.0 < cfg["sim_efficiency_cp"]["median"] <= 1.0 + 1e-9
    levels = report["suites"]["levels"]["data"]
    assert levels["reference"]["ratio"]["median"] > 0.9


def test_wfcommons_replays(report: dict[str, Any]) -> None:
    """Replays report a makespan no shorter than the bound (minus clock slack), or skip."""
    suite = report["suites"]["wfcommons"]
    if suite["skipped"]:
        assert "FLOWDSL_WORKLOADS" in suite["skipped"]
        return
    for run in suite["data"]["runs"]:
        assert run["makespan"] >= 0.95 * run["bound"]
        assert run["speedup"] > 1.0


def test_overhead_and_floor(report: dict[str, Any]) -> None:
    """Every per-task cost is positive; three shapes were measured."""
    runs = report["suites"]["overhead"]["data"]["runs"]
    assert {r["shape"] for r in runs} == {"wide", "chain", "layered"}
    for r in runs:
        for key in ("compose_us", "plan_us", "run_us", "floor_us"):
            assert _ok(r[key]["median"]), key
        assert _ok(r["mem_run_b"])


def test_default_path(report: dict[str, Any]) -> None:
    """The default-path suite times def and async tools with and without the default history
    on three shapes, beside both floors, and the history's fixed cost per run."""
    data = report["suites"]["default"]["data"]
    assert {r["shape"] for r in data["runs"]} == {"wide", "chain", "layered"}
    for r in data["runs"]:
        for key in ("asyncio floor", "run_in_executor floor", "async", "async + history", "def",
                    "def + history"):
            assert _ok(r["us"][key]["median"]), key
        ratio = r["us"]["def + history"]["median"] / r["us"]["asyncio floor"]["median"]
        assert math.isclose(r["def_vs_floor"]["median"], ratio, rel_tol=1e-9)  # one repeat
        assert _ok(r["def_vs_executor"]["median"]) and _ok(r["history_vs_none"]["median"])
        # A run of 2,000 tasks has its statistics folded in after it returns: timed apart,
        # and counted in the ratio that includes them.
        assert _ok(r["us"]["async + history: statistics after"]["median"])
        assert r["history_all_vs_none"]["median"] > r["history_vs_none"]["median"]
    for store in ("fresh", "filled"):
        fixed = data["fixed_cost"][store]
        assert _ok(fixed["with_ms"]) and _ok(fixed["without_ms"])
        assert math.isclose(fixed["cost_ms"], fixed["with_ms"] - fixed["without_ms"])
    assert data["fixed_cost"]["filled"]["task_rows"] > 0


def test_cpu_and_pipeline(report: dict[str, Any]) -> None:
    """The CPU suite knows the core count; streaming beats one item at a time."""
    cpu = report["suites"]["cpu"]["data"]
    assert cpu["cores"] >= 1
    assert _ok(cpu["process"]["speedup"]["median"])
    pipe = report["suites"]["pipeline"]["data"]
    assert pipe["speedup"]["median"] > 1.0


def test_targets_listed(report: dict[str, Any]) -> None:
    """Every target comes with a measured figure."""
    names = " ".join(t["name"] for t in report["targets"])
    for word in ("reference efficiency", "unconstrained", "pools", "floor", "planning",
                 "process", "run_in_executor", "fixed cost"):
        assert word in names


def test_wfcommons_skips_without_traces(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """Without the traces folder the suite is skipped with a message saying what to provide."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("FLOWDSL_WORKLOADS", str(tmp_path / "absent"))
    from benchmarks._harness import Config, Progress
    from benchmarks._suites_flows import suite_wfcommons

    result = suite_wfcommons(Config.make(quick=True), Progress(1), {})
    assert result.skipped is not None
    assert "FLOWDSL_WORKLOADS" in result.skipped


def test_history_fixed_cost_does_not_grow_with_the_store(report: dict[str, Any]) -> None:
    """The history suite filled the store to 100,000 task rows and measured the fixed cost at
    each size; it stays within noise of the empty store's (reading every row, as before the
    aggregates, cost 148 ms per run at 100,000 rows)."""
    sizes = report["suites"]["history"]["data"]["sizes"]
    assert [s["rows"] >= n for s, n in zip(sizes, (0, 10_000, 100_000))] == [True] * 3
    costs = [s["fixed_ms"] for s in sizes]
    assert all(math.isfinite(c) for c in costs)
    assert max(costs) < min(costs) + 25.0, costs
