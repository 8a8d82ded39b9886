"""Bounds that know pools and maps (issue 26, part 3): the lower bound counts a mapped task as
its children's work over the lanes they can use and each pool's work over its capacity; the
drawn critical path goes through pool waits and shows them as waits; benchmark()'s
efficiency never exceeds 1, and its runs use no cache and write no file."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdsl
from flowdsl import Flow, tool
from flowdsl._report.timeline import from_result, legend_items, timeline_html

CALLS: list[str] = []
_lock = threading.Lock()


@tool(registry=False)
def numbers(n: int = 8) -> list[int]:
    return list(range(n))


@tool(registry=False)
def child(x: int) -> int:
    time.sleep(0.05)
    return x


@tool(registry=False, resources={"remote": 1})
def remote(i: int) -> int:
    time.sleep(0.1)
    return i


@tool(registry=False)
def join() -> int:
    return 0


@tool(registry=False, cache=True)
def cached(x: int) -> int:
    with _lock:
        CALLS.append(f"cached{x}")
    time.sleep(0.01)
    return x


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


def _map_flow() -> Flow:
    """8 children of 0.05 s, at most 4 at once: no schedule beats 0.1 s."""
    return Flow("map", child.map(numbers()).with_options(max_parallel=4))


def _pool_flow() -> Flow:
    """6 tasks of 0.1 s through a pool of 3, then a join: no schedule beats 0.2 s."""
    return Flow("pool", [remote(i) for i in range(6)] >> join(), resources={"remote": 3})


def _own_bound(result: flowdsl.RunResult, capacities: dict[str, int],
               workers: int | None) -> float:
    """The plan's lower bound from one run's own measured durations and children."""
    p = result.plan
    assert p is not None
    dur = dict.fromkeys(p.tasks, 0.0)
    kids: dict[str, list[float]] = {}
    for tid, rec in result.tasks.items():
        if rec.duration is None:
            continue
        if rec.parent is not None:
            kids.setdefault(rec.parent, []).append(rec.duration)
        else:
            dur[tid] = rec.duration
    return p.lower_bound(dur, capacities, workers, kids)


class TestPlanBound:
    def test_a_map_counts_as_its_children_over_its_lanes(self) -> None:
        """8 children x 0.05 s with max_parallel=4: span 0.1 s (not 0.4 s, the children in
        a row, nor 0.05 s, one child); 2 workers make it 0.2 s."""
        p = flowdsl.plan(_map_flow())
        mapped = next(t for t, task in p.tasks.items() if getattr(task, "fan", None))
        dur = dict.fromkeys(p.tasks, 0.0) | {mapped: 0.4}
        kids = {mapped: [0.05] * 8}
        assert p.lower_bound(dur, children=kids) == pytest.approx(0.1)
        assert p.lower_bound(dur, None, 2, kids) == pytest.approx(0.2)
        assert p.lower_bound(dur, None, 1, kids) == pytest.approx(0.4)
        # One long child bounds the span however many lanes there are.
        assert p.lower_bound(dur, children={mapped: [0.3] + [0.01] * 7}) == pytest.approx(0.3)
        span, work = p.spans(dur, kids)
        assert span[mapped] == pytest.approx(0.1) and work[mapped] == pytest.approx(0.4)

    def test_a_pool_bounds_the_fan_out(self) -> None:
        """6 x 0.1 s through a pool of 3: 0.2 s, though the longest path is 0.1 s."""
        p = flowdsl.plan(_pool_flow())
        dur = {t: (0.1 if t.startswith("remote") else 0.0) for t in p.tasks}
        assert p.critical_path(dur)[1] == pytest.approx(0.1)
        assert p.lower_bound(dur, {"remote": 3}) == pytest.approx(0.2)
        assert p.lower_bound(dur, {"remote": 1}) == pytest.approx(0.6)
        # Five of them still take two waves: 0.2 s, where work / capacity says 0.167 s.
        five = flowdsl.plan(Flow("five", [remote(i) for i in range(5)] >> join()))
        dur5 = {t: (0.1 if t.startswith("remote") else 0.0) for t in five.tasks}
        assert five.lower_bound(dur5, {"remote": 3}) == pytest.approx(0.2)
        # Unequal calls: total / capacity wins when it is larger.
        dur5["remote"] = 0.5
        assert five.lower_bound(dur5, {"remote": 3}) == pytest.approx(0.5)

    def test_lanes_bound(self) -> None:
        """The least time of calls on k lanes: total / k, the longest call, or k + 1 calls
        of the (k x lanes + 1)-th longest in a row."""
        from flowdsl._plan.planner import _lanes_bound

        assert _lanes_bound([], 3) == 0.0
        assert _lanes_bound([0.1] * 6, 3) == pytest.approx(0.2)
        assert _lanes_bound([0.1] * 7, 3) == pytest.approx(0.3)
        assert _lanes_bound([1.0, 0.1, 0.1], 2) == pytest.approx(1.0)
        assert _lanes_bound([0.3, 0.3, 0.3, 0.3], 4) == pytest.approx(0.3)

    def test_a_pool_limits_a_maps_lanes(self) -> None:
        """Children needing a pool of 2 run at most 2 at once, and count as pool work."""
        @tool(registry=False, resources={"gpu": 1})
        def on_gpu(x: int) -> int:
            return x

        p = flowdsl.plan(Flow("m", on_gpu.map(numbers())))
        mapped = next(t for t, task in p.tasks.items() if getattr(task, "fan", None))
        dur = dict.fromkeys(p.tasks, 0.0)
        assert p.lower_bound(dur, {"gpu": 2}, None, {mapped: [0.1] * 8}) == pytest.approx(0.4)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans(),
                              st.lists(st.integers(0, 30), max_size=3)),
                    min_size=1, max_size=12),
           st.integers(1, 3), st.one_of(st.none(), st.integers(1, 4)))
    def test_the_bound_never_beats_a_schedule(
            self, spec: list[tuple[float, bool, list[int]]], cap: int,
            workers: int | None) -> None:
        """Property: for random DAGs with tasks in a pool, the bound is at most the
        makespan of the schedule the simulator builds (a real, feasible schedule)."""
        tasks: list[flowdsl.Task] = []
        edges = []
        durations: dict[str, float] = {}
        for n, (d, pooled, deps) in enumerate(spec):
            t = join().named(f"t{n}").with_options(resources={"p": 1} if pooled else {})
            edges += [tasks[k] >> t for k in set(deps) if k < n]
            tasks.append(t)
            durations[f"t{n}"] = d
        p = flowdsl.plan(flowdsl.parallel(*tasks, *edges))
        sim = flowdsl.simulate(p, "parallel", resources={"p": cap}, max_concurrency=workers,
                               durations=durations, history=False)
        bound = p.lower_bound(durations, {"p": cap}, workers)
        assert bound <= sim.makespan + 1e-9


class TestMeasured:
    def test_map_bound_and_efficiency(self) -> None:
        """The bound of a map flow is at most what each mode measured (it was 2.3-3x the
        parallel makespan when the map counted as one node of its sequential span)."""
        res = flowdsl.benchmark(_map_flow(), repeat=2, warmup=1)
        seq, par = res.modes["sequential"], res.modes["parallel"]
        assert res.lower_bound >= 0.1  # 8 x 0.05 s over 4 lanes at the least
        assert res.lower_bound <= 1.05 * par.min  # a little noise between runs allowed
        for s in (seq, par):
            assert s.efficiency is not None and 0 < s.efficiency <= 1.0
            assert s.efficiency == pytest.approx(min(1.0, res.lower_bound / s.median))
        assert res.critical_path_duration == pytest.approx(res.lower_bound)
        # Each run against the bound of its own measured durations (sequential: 1 worker).
        assert _own_bound(res.last["parallel"], {}, None) <= res.last["parallel"].duration
        assert _own_bound(res.last["sequential"], {}, 1) <= res.last["sequential"].duration

    def test_pool_bound_and_efficiency(self) -> None:
        """6 x 0.1 s through a pool of 3: bound >= 0.2 s and at most the makespans."""
        res = flowdsl.benchmark(_pool_flow(), repeat=2, warmup=1)
        par = res.modes["parallel"]
        assert res.lower_bound >= 0.2
        assert res.lower_bound <= 1.05 * par.min
        assert par.efficiency is not None and 0.5 < par.efficiency <= 1.0
        caps = {"remote": 3}
        for mode, workers in (("parallel", None), ("sequential", 1)):
            last = res.last[mode]
            assert 0.2 <= _own_bound(last, caps, workers) <= last.duration

    def test_the_drawn_path_goes_through_the_pool_wait(self) -> None:
        """The critical path drawn for the pool run: a first-wave task, the task that
        waited for the pool (its wait drawn as a wait) and the join; its length is the
        makespan, where the path of work alone (0.1 s) was half of it."""
        result = flowdsl.run(_pool_flow(), mode="parallel", history=False)
        tl = from_result(result)
        bars = {b.id: b for b in tl.bars}
        path = tl.critical_path
        assert path[-1] == "join" and len(path) == 3, path
        first, second = bars[path[0]], bars[path[1]]
        assert first.id.startswith("remote") and second.id.startswith("remote")
        assert second.queued is not None and second.queued[2] == "pool remote"
        ready, start, _ = second.queued
        assert start - ready >= 0.08 and start >= first.end - 0.02  # type: ignore[operator]
        assert first.queued is None and bars["join"].queued is None
        assert ("queued", "wait for a pool (on the critical path)") in legend_items(tl)
        page = timeline_html(tl)
        assert 'class="bar queued"' in page and "waited" in page

    def test_a_history_run_draws_the_same_path(self, tmp_path: Path) -> None:
        """From history with the flow's plan: the same path and wait; from the recorded
        edges alone (pools unknown) the path of work, with no wait claimed."""
        from flowdsl import HistoryStore
        from flowdsl._report.timeline import from_history

        store = HistoryStore(tmp_path / "h.db")
        try:
            result = flowdsl.run(_pool_flow(), mode="parallel", history=store)
            run = store.get_run(result.run_id)
        finally:
            store.close()
        live, kept = from_result(result), from_history(run, result.plan)
        assert kept.critical_path == live.critical_path and len(kept.critical_path) == 3
        assert [b.queued is not None for b in kept.bars] == \
            [b.queued is not None for b in live.bars]
        bare = from_history(run)
        assert len(bare.critical_path) == 2 and all(b.queued is None for b in bare.bars)

    def test_a_path_without_waits_shows_none(self) -> None:
        """Plenty of pool: the path is one remote task and the join, with no wait."""
        flow = Flow("roomy", [remote(i) for i in range(3)] >> join(), resources={"remote": 3})
        tl = from_result(flowdsl.run(flow, mode="parallel", history=False))
        assert len(tl.critical_path) == 2 and tl.critical_path[-1] == "join"
        assert all(b.queued is None for b in tl.bars)
        assert "queued" not in [k for k, _ in legend_items(tl)]


class TestBenchmarkIsolation:
    def test_no_cache_and_no_history_file_by_default(self) -> None:
        """A cached tool is called in every repeat, and neither the history file nor the
        cache file is ever created."""
        path = Path(os.environ["FLOWDSL_HISTORY"])
        cache_file = Path(os.environ["FLOWDSL_CACHE"])
        assert not path.exists() and not cache_file.exists()
        flow = Flow("c", [cached(i) for i in range(3)])
        res = flowdsl.benchmark(flow, repeat=3, warmup=1)
        assert len(CALLS) == (1 + 3) * 2 * 3 and not res.cache
        assert not path.exists() and not cache_file.exists()

    def test_cache_true_measures_the_cache(self) -> None:
        """cache=True: the runs read the result cache, so later repeats are hits."""
        flow = Flow("c", [cached(i) for i in range(3)])
        res = flowdsl.benchmark(flow, repeat=3, warmup=1, cache=True)
        assert len(CALLS) == 3  # the first run computes, every other run hits
        assert res.cache and res.to_dict()["cache"] is True
        assert "result cache on" in res._repr_html_()

    def test_cache_must_be_a_bool(self) -> None:
        with pytest.raises(ValueError, match="cache="):
            flowdsl.benchmark(Flow("c", [cached(1)]), cache="yes")  # type: ignore[arg-type]

