"""flowdsl.benchmark and `flowdsl bench TARGET`: repeated, independent runs per mode, the
median makespan with its spread, speedup over sequential and efficiency against the bound."""

from __future__ import annotations

import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import flowdsl
from flowdsl import Flow, tool

CALLS: list[str] = []
_lock = threading.Lock()


@tool(registry=False, resources={"db": 1})
def work(name: str, seconds: float = 0.02) -> str:
    with _lock:
        CALLS.append(name)
    time.sleep(seconds)
    return name


@tool(registry=False)
def broken(x: str) -> str:
    raise ValueError(f"bad {x}")


def _wide() -> Flow:
    return Flow("wide", work("a") >> [work(f"b{i}") for i in range(3)] >> work("c"),
                resources={"db": 3})


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


class TestBenchmark:
    def test_every_repeat_runs_the_whole_flow(self) -> None:
        """warmup + repeat runs per mode, each calling every tool: no cache, no resume."""
        res = flowdsl.benchmark(_wide(), repeat=3, warmup=1)
        assert len(CALLS) == (1 + 3) * 2 * 5
        assert list(res.modes) == ["sequential", "parallel"]
        assert all(len(s.runs) == 3 for s in res.modes.values())
        assert res.repeat == 3 and res.warmup == 1

    def test_no_history_is_written(self) -> None:
        """Runs keep no history (the test's history file stays empty of runs)."""
        flowdsl.benchmark(_wide(), repeat=1, warmup=0)
        path = Path(os.environ["FLOWDSL_HISTORY"])
        if path.exists():
            store = flowdsl.open_history(path)
            assert store is not None and store.runs(10) == []

    def test_figures_agree_with_their_definitions(self) -> None:
        """median, spread, speedup = seq/mode, efficiency = bound/mode, and the bound is the
        plan's lower bound over the measured durations and the pools."""
        flow = _wide()
        res = flowdsl.benchmark(flow, repeat=3, warmup=0)
        seq, par = res.modes["sequential"], res.modes["parallel"]
        assert seq.min <= seq.median <= seq.max and seq.spread == seq.max - seq.min
        assert par.speedup == pytest.approx(seq.median / par.median)
        assert seq.speedup == pytest.approx(1.0)
        assert par.efficiency == pytest.approx(res.lower_bound / par.median)
        p = flowdsl.plan(flow)
        assert set(res.durations) == set(p.tasks)
        assert res.lower_bound == pytest.approx(p.lower_bound(res.durations, {"db": 3}))
        path, length = p.critical_path(res.durations)
        assert res.critical_path == path and res.critical_path_duration == length
        assert len(res.critical_path) == 3

    def test_the_pools_given_shape_the_bound(self) -> None:
        """resources= reaches the runs and the bound: with db=1 every task queues on the
        pool, so the bound is the total work."""
        res = flowdsl.benchmark(_wide(), ["parallel"], repeat=1, warmup=0,
                                resources={"db": 1})
        assert res.lower_bound == pytest.approx(sum(res.durations.values()))
        assert res.modes["parallel"].speedup is None  # no sequential baseline measured

    def test_to_dict_repr_and_notebook_chart(self, tmp_path: Path) -> None:
        """to_dict is JSON; the notebook repr has the table and a well-formed SVG chart;
        gantt writes the last run's timeline."""
        res = flowdsl.benchmark(_wide(), repeat=2, warmup=0)
        data = json.loads(json.dumps(res.to_dict()))
        assert data["modes"]["parallel"]["runs"] == res.modes["parallel"].runs
        assert data["lower_bound"] == res.lower_bound
        page = res._repr_html_()
        assert "<table>" in page and "sequential" in page and "lower bound" in page
        svg = ET.fromstring(res.svg())
        assert len(svg.findall("{http://www.w3.org/2000/svg}rect")) == 2
        assert "parallel" in repr(res)
        out = res.gantt(tmp_path / "run.html")
        assert "work" in out.read_text(encoding="utf-8")
        with pytest.raises(ValueError, match="'pipeline' was not benchmarked"):
            res.gantt(tmp_path / "x.html", mode="pipeline")

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"repeat": 0}, "repeat=0"), ({"warmup": -1}, "warmup=-1"),
        ({"modes": ["fast"]}, "unknown mode 'fast'"), ({"modes": "parallel"}, "modes="),
        ({"history": True}, "history= is not accepted"),
        ({"resume": "abc"}, "resume= is not accepted"),
    ])
    def test_invalid_options(self, kwargs: dict[str, object], message: str) -> None:
        """Bad options raise ValueError naming the option, before any run."""
        with pytest.raises(ValueError, match=message):
            flowdsl.benchmark(_wide(), **kwargs)  # type: ignore[arg-type]
        assert CALLS == []

    def test_a_failing_run_raises(self) -> None:
        """A run that fails stops the benchmark with RunFailed naming the task."""
        with pytest.raises(flowdsl.RunFailed, match="broken"):
            flowdsl.benchmark(broken("x").named("broken"), repeat=1, warmup=0)


class TestBenchCommand:
    def test_bench_target_json_and_gantt(self, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """`flowdsl bench TARGET` prints the table and writes --json and --gantt files."""
        typer_testing = pytest.importorskip("typer.testing")
        from flowdsl._report import cli

        monkeypatch.chdir(tmp_path)
        (tmp_path / "bench_flows.py").write_text(
            "import time\nfrom flowdsl import Flow, tool\n"
            "@tool(registry=False)\ndef nap(n: int) -> int:\n    time.sleep(0.01)\n"
            "    return n\nflow = Flow('naps', [nap(i) for i in range(3)])\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        try:
            res = typer_testing.CliRunner().invoke(cli.app, [
                "bench", "bench_flows.py:flow", "--repeat", "2", "--warmup", "0",
                "-m", "sequential", "-m", "parallel", "--json", "b.json",
                "--gantt", "g.html"])
        finally:
            import sys
            sys.modules.pop("bench_flows", None)
        assert res.exit_code == 0, res.output
        assert "naps: 2 run(s) per mode" in res.output and "efficiency" in res.output
        data = json.loads((tmp_path / "b.json").read_text())
        assert set(data["modes"]) == {"sequential", "parallel"}
        assert len(data["modes"]["parallel"]["runs"]) == 2
        assert "nap" in (tmp_path / "g.html").read_text()

    def test_harness_flag_and_missing_target(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """--harness is refused with the command that runs the project's benchmarks; no
        target is a usage error."""
        typer_testing = pytest.importorskip("typer.testing")
        from flowdsl._report import cli

        monkeypatch.chdir(Path(__file__).resolve().parents[1])
        res = typer_testing.CliRunner().invoke(cli.app, ["bench", "--harness", "--only",
                                                         "no_such_suite"])
        assert res.exit_code == 2 and "python -m benchmarks" in res.output
        res = typer_testing.CliRunner().invoke(cli.app, ["bench"])
        assert res.exit_code == 2 and "needs a TARGET" in res.output
