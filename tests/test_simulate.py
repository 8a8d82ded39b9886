"""Makespan simulation: each mode's policy, invariants on random DAGs, and real runs."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdsl
from flowdsl import (
    Attempt,
    Flow,
    HistoryStore,
    ResourceError,
    RunResult,
    TaskRecord,
    TaskStatus,
    chain,
    parallel,
    simulate,
    tool,
)


@tool(executor="async", registry=False)
async def nap(x: Any = None, seconds: float = 0.0) -> float:
    """Sleep ``seconds`` and return them."""
    import anyio

    await anyio.sleep(seconds)
    return seconds


@tool(registry=False)
def work(x: Any = None) -> None:
    """A sync (thread executor) tool."""


def job(name: str, seconds: float, **options: Any) -> Any:
    """A task called ``name`` with a declared duration."""
    return nap(seconds=seconds).named(name).with_options(expected_duration=seconds, **options)


class TestModes:
    def test_sequential_runs_in_plan_order(self) -> None:
        """Sequential: back to back in plan order; makespan = total work."""
        f = job("a", 1) >> [job("b", 2), job("c", 3)] >> job("d", 4)
        sim = simulate(f, "sequential")
        assert sim.makespan == 10
        assert sim.start == {"a": 0, "b": 1, "c": 3, "d": 6}

    def test_parallel_unbounded_is_the_critical_path(self) -> None:
        """Parallel with free workers and no pools finishes on the critical path."""
        f = job("a", 1) >> [job("b", 2), job("c", 3)] >> job("d", 4)
        sim = simulate(f)
        assert sim.makespan == 8 == sim.lower_bound
        assert sim.critical_path == ["a", "c", "d"]
        assert sim.tasks["b"].start == sim.tasks["c"].start == 1

    def test_longest_remaining_path_goes_first(self) -> None:
        """With one worker, the ready task with the longest remaining path starts first."""
        f = parallel(job("short", 1), job("long", 1) >> job("tail", 5))
        sim = simulate(f, "parallel", max_concurrency=1)
        assert sim.start["long"] == 0 and sim.start["short"] == 6

    def test_explicit_priority_wins(self) -> None:
        """An explicit priority overrides the critical-path priority."""
        f = parallel(job("short", 1, priority=100), job("long", 1) >> job("tail", 5))
        sim = simulate(f, "parallel", max_concurrency=1)
        assert sim.start["short"] == 0

    def test_pool_capacity_serializes(self) -> None:
        """Tasks sharing a pool of capacity 1 never overlap; the makespan is their sum."""
        f = parallel(*(job(f"q{i}", 1, resources={"db": 1}) for i in range(4)))
        sim = simulate(f, resources={"db": 1})
        assert sim.makespan == 4 == sim.lower_bound
        assert sorted(sim.start.values()) == [0, 1, 2, 3]

    def test_pool_waiter_blocks_its_pools(self) -> None:
        """A big waiting demand is not overtaken on its pool by later small ones, as in Pools."""
        f = job("holder", 2, resources={"db": 1}) | (
            job("gate", 1) >> [job("big", 1, resources={"db": 2}, priority=10),
                               job("small", 1, resources={"db": 1}, priority=1)])
        sim = simulate(f, resources={"db": 2})
        assert sim.start["big"] == 2 and sim.start["small"] == 3

    def test_thread_executor_slots(self) -> None:
        """40 sync tools share the thread executor's 32 slots: two rounds."""
        f = parallel(*(work().named(f"w{i}").with_options(expected_duration=1)
                       for i in range(40)))
        assert simulate(f).makespan == 2
        assert simulate(f, executor_limits={}).makespan == 1

    def test_conditional_one_at_a_time(self) -> None:
        """Conditional: one task at a time in plan order by default."""
        f = job("a", 1) >> [job("b", 2), job("c", 3)]
        sim = simulate(f, "conditional")
        assert sim.makespan == 6 and sim.start == {"a": 0, "b": 1, "c": 3}
        assert simulate(f, "conditional", max_concurrency=2).makespan == 4

    def test_pipeline_items_overlap(self) -> None:
        """N items through S equal stages take N + S - 1 stage times."""
        f = chain(*(job(f"s{i}", 1) for i in range(3)))
        sim = simulate(f, "pipeline", items=range(5))
        assert sim.makespan == 5 + 3 - 1 == sim.lower_bound
        assert sim.item_spans["s1"][0] == (1, 2)
        assert simulate(f, "pipeline").makespan == 3

    def test_flow_defaults_are_used(self) -> None:
        """A Flow's mode, pools and max_concurrency apply when not given."""
        f = Flow("f", [job("a", 1, resources={"p": 1}), job("b", 1, resources={"p": 1})],
                 mode="parallel", resources={"p": 1})
        assert simulate(f).makespan == 2
        assert simulate(f, resources={"p": 2}).makespan == 1

    def test_bad_arguments(self) -> None:
        """Unknown modes, bad worker counts and unknown pools are refused with clear errors."""
        f = job("a", 1, resources={"gpu": 1})
        with pytest.raises(ValueError, match="mode='fast'"):
            simulate(f, "fast")
        with pytest.raises(ValueError, match="max_concurrency=0"):
            simulate(f, max_concurrency=0)
        with pytest.raises(ResourceError, match="gpu"):
            simulate(f, resources={"cpu": 1})


class TestDurations:
    def test_sources_in_order_of_precedence(self) -> None:
        """The run's precedence: given durations beat declared estimates, declared beat
        history (of the task, else of its tool), history beats 1 s."""
        store = HistoryStore()
        f = Flow("d", [job("g", 5), job("h", 5), nap().named("hist"), work().named("none"),
                       work().named("decl").with_options(expected_duration=3)])
        result = RunResult("r", "d", "parallel")
        obs = store.observer("d")
        # An earlier run of flow "d" had a task "h" of tool nap (the plan gives history the
        # tool's identity): task "hist", new to the flow, takes its tool's figures.
        obs.run_started(result, Flow("d", nap().named("h")).plan())
        rec = TaskRecord("h", "nap", TaskStatus.COMPLETED,
                         [Attempt(1, 0, 7, TaskStatus.COMPLETED)], 0.0, 7.0)
        result.tasks["h"] = rec
        obs.task_finished(result, rec, None)
        result.status = "completed"
        obs.run_finished(result)
        sim = simulate(f, durations={"g": 2}, history=store)
        store.close()
        assert sim.durations == {"g": 2, "h": 5, "hist": 7, "decl": 3, "none": 1}
        assert sim.sources == {"g": "given", "h": "declared", "hist": "history",
                               "decl": "declared", "none": "default"}

    def test_history_none_is_the_default_store_and_false_is_none(self) -> None:
        """As in run(): history=None reads the default store, history=False reads none."""
        f = Flow("dflt", nap(seconds=0.03).named("slow"))
        assert flowdsl.run(f).ok  # recorded in the default store (FLOWDSL_HISTORY)
        by_default = simulate(f)
        assert by_default.sources == {"slow": "history"}
        assert 0.03 <= by_default.durations["slow"] < 1
        assert simulate(f, history=False).sources == {"slow": "default"}


@st.composite
def dags(draw: st.DrawFn) -> tuple[Any, dict[str, float], dict[str, int], int | None]:
    """A random DAG of tasks with random durations, pool demands and a worker limit."""
    n = draw(st.integers(1, 14))
    rng = random.Random(draw(st.integers(0, 10**6)))
    tasks = []
    for i in range(n):
        res = {"p": rng.randint(1, 2)} if rng.random() < 0.4 else {}
        t = nap(seconds=0).named(f"t{i}").with_options(
            expected_duration=rng.choice([0.5, 1, 2, 3]), resources=res)
        tasks.append(t)
    edges = [(a, b) for b in range(n) for a in range(b) if rng.random() < 0.25]
    parts = [tasks[i] for i in range(n)] + [tasks[a] >> tasks[b] for a, b in edges]
    mc = draw(st.one_of(st.none(), st.integers(1, 4)))
    return parallel(*parts), {}, {"p": 2}, mc


class TestInvariants:
    @settings(max_examples=60, deadline=None)
    @given(dags(), st.sampled_from(["sequential", "parallel", "conditional"]))
    def test_schedule_is_feasible(self, case: Any, mode: str) -> None:
        """No task starts before its predecessors end; pools and workers are never
        over-used; the makespan lies between the lower bound and the sequential time."""
        f, _, caps, mc = case
        sim = simulate(f, mode, resources=caps, max_concurrency=mc)
        p = f.plan()
        for t in p.order:
            for q in p.predecessors[t]:
                assert sim.start[t] >= sim.end[q]
        limit = 1 if mode != "parallel" and mc is None else mc
        for t in p.order:  # at each start, count what is running
            at = sim.start[t]
            live = [u for u in p.order if sim.start[u] <= at < sim.end[u]]
            assert sum(p.tasks[u].spec.resources.get("p", 0) for u in live) <= caps["p"]
            if limit is not None:
                assert len(live) <= limit
        total = sum(sim.durations.values())
        assert sim.lower_bound - 1e-9 <= sim.makespan <= total + 1e-9
        if mode == "sequential":
            assert sim.makespan == pytest.approx(total)


@pytest.mark.slow
class TestAgainstRealRuns:
    def test_prediction_close_to_real_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The predicted makespan of a small flow of sleeps is close to the measured one."""
        f = Flow("sleepy", job("load", 0.1) >> [
            job("a", 0.2, resources={"db": 1}), job("b", 0.15, resources={"db": 1}),
            job("c", 0.05)] >> job("join", 0.1), resources={"db": 1})
        errors = {}
        for mode in ("sequential", "parallel", "conditional"):
            sim = simulate(f, mode)
            real = flowdsl.run(f, mode=mode, history=False)
            assert real.ok
            errors[mode] = abs(real.duration - sim.makespan) / sim.makespan
        with capsys.disabled():
            print("\nsimulation error vs real run:",
                  {m: f"{e:.1%}" for m, e in errors.items()})
        assert all(e < 0.5 for e in errors.values()), errors

    def test_pipeline_prediction_close_to_real_run(self) -> None:
        """Over items, the predicted pipeline makespan is close to the measured one."""
        f = chain(job("s0", 0.02), job("s1", 0.05), job("s2", 0.02))
        sim = simulate(f, "pipeline", items=6)
        real = flowdsl.run(f, mode="pipeline", items=list(range(6)), history=False)
        assert real.ok
        assert abs(real.duration - sim.makespan) / sim.makespan < 0.5


# -- simulate is the runner: where the old per-mode models disagreed with a run ------------------

@tool(executor="async", registry=False)
async def numbers(n: int = 4, seconds: float = 1.0) -> list[int]:
    """The list 0..n-1, after ``seconds``."""
    import anyio

    await anyio.sleep(seconds)
    return list(range(n))


@tool(executor="async", registry=False)
async def child(x: Any = None, seconds: float = 1.0) -> float:
    """One mapped child: sleep ``seconds``."""
    import anyio

    await anyio.sleep(seconds)
    return seconds


def virtual_run(flow: Any, history: Any = False, **options: Any) -> flowdsl.RunResult:
    """A real run of ``flow`` (real tools, real inputs) on the virtual clock: a task takes
    exactly its sleep, so a correct prediction matches it to the float."""
    from flowdsl._base.virtual import run_virtual

    async def go() -> flowdsl.RunResult:
        return await flowdsl.arun(flow, history=history, **options)

    result = run_virtual(go, count_threads=True)
    assert result.ok, result.error
    return result


def assert_same(sim: Any, real: flowdsl.RunResult) -> None:
    """Every task's start and end and the makespan, predicted == run (a mapped task's
    children are in the run's records, not in the plan's tasks)."""
    got = {t: (r.started_at, r.ended_at) for t, r in real.tasks.items() if t in sim.tasks}
    want = {t: (s.start, s.end) for t, s in sim.tasks.items()}
    assert want.keys() == got.keys()
    assert sim.lower_bound <= sim.makespan + 1e-9
    off = {t: (want[t], got[t]) for t in got
           if any(abs(want[t][k] - got[t][k]) > 1e-9 for k in (0, 1))}  # type: ignore
    assert not off, f"predicted vs run (start, end) differ: {off}"
    assert sim.makespan == pytest.approx(real.duration, abs=1e-9)


class TestSameAsTheRunner:
    """simulate() runs the runner itself, so it agrees with a run of the same flow whose
    tools take exactly their declared durations. The cases are the ones the former
    discrete-event model got wrong (its figure in each docstring)."""

    STAGES = (("s0", 1), ("s1", 3), ("s2", 1))

    def pipeline(self) -> Any:
        return chain(*(job(n, s) for n, s in self.STAGES))

    def test_pipeline_max_concurrency(self) -> None:
        """5 items through stages of 1, 3, 1 s with max_concurrency=1: one call at a time
        across the stages, 25 s (the old model ignored max_concurrency: 17 s)."""
        f = self.pipeline()
        sim = simulate(f, "pipeline", items=5, max_concurrency=1, history=False)
        real = virtual_run(f, mode="pipeline", items=list(range(5)), max_concurrency=1)
        assert_same(sim, real)
        assert sim.makespan == 25

    @pytest.mark.parametrize("buffer", [0, 1, 2, 8])
    def test_pipeline_buffer(self, buffer: int) -> None:
        """A fast stage before a slow one is held back by the buffer between them: with
        buffer=0 the first stage hands over its 5th item at 11 s, not 5 s (the old model
        had no buffers); the per-item spans are the run's too."""
        f = self.pipeline()
        given = {} if buffer == 2 else {"buffer": buffer}  # 2: a run's default
        sim = simulate(f, "pipeline", items=5, history=False, **given)
        real = virtual_run(f, mode="pipeline", items=list(range(5)), buffer=buffer)
        assert_same(sim, real)
        assert [len(sim.item_spans[s]) for s, _ in self.STAGES] == [5, 5, 5]
        assert sim.item_spans["s0"][-1][1] == sim.end["s0"]
        if buffer == 0:
            assert sim.end["s0"] == 11

    def mapped(self, **options: Any) -> Any:
        src = numbers(6).named("src").with_options(expected_duration=1)
        m = child.map(src).named("m").with_options(expected_duration=1, **options)
        return Flow("fan", [m, job("other", 2, resources={"db": 1})], resources={"db": 2})

    def test_map_under_max_parallel(self, tmp_path: Any) -> None:
        """6 recorded children of 1 s, 2 at a time: 3 s, as the run's map lanes do (the old
        model ran a mapped task as one task of 6 s)."""
        f = self.mapped(max_parallel=2)
        store = HistoryStore(tmp_path / "h.db")
        try:
            real = virtual_run(f, history=store)
            sim = simulate(f, history=store)
        finally:
            store.close()
        assert sim.children == {"m": 6}
        assert_same(sim, real)
        assert sim.end["m"] == 1 + 3

    def test_map_children_take_pool_units(self, tmp_path: Any) -> None:
        """A mapped task's children each take its pool units: 6 children needing one of
        2 "db" units beside another task holding one for 2 s end at 5 s (the old model
        took the units once, for a 6 s task)."""
        f = self.mapped(resources={"db": 1})
        store = HistoryStore(tmp_path / "h.db")
        try:
            real = virtual_run(f, history=store)
            sim = simulate(f, history=store)
        finally:
            store.close()
        assert_same(sim, real)

    def test_thread_tools_do_no_thread_work(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Sync (thread) tools are faked by coroutines: no worker thread, no thread hop, so
        the virtual clock is never fooled, and the tool's body never runs."""
        import threading

        import anyio.to_thread

        calls: list[Any] = []

        @tool(registry=False)
        def body(x: Any = None) -> None:
            calls.append(x)

        def no_threads(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("simulate() hopped to a worker thread")

        monkeypatch.setattr(anyio.to_thread, "run_sync", no_threads)
        before = threading.active_count()
        f = parallel(*(body().named(f"w{i}").with_options(expected_duration=1)
                       for i in range(40)))
        assert simulate(f, history=False).makespan == 2
        assert threading.active_count() == before and calls == []

    def test_inside_a_running_event_loop(self) -> None:
        """From async code (a notebook cell), the simulation gets its own thread and loop."""
        import anyio

        async def go() -> float:
            return simulate(self.pipeline(), "pipeline", items=3, history=False).makespan

        assert anyio.run(go) == 1 + 3 * 3 + 1

    def test_history_false_touches_no_file(self, tmp_path: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """simulate(flow, history=False) of a flow with a mapped task opens no history
        (nor cache) file, even where the default store would be."""
        monkeypatch.setenv("FLOWDSL_HISTORY", str(tmp_path / "history.db"))
        monkeypatch.setenv("FLOWDSL_CACHE", str(tmp_path / "cache.db"))
        sim = simulate(self.mapped(), history=False)
        assert sim.children == {"m": 1} and list(tmp_path.iterdir()) == []

    def test_a_failed_simulated_run_is_an_error(self) -> None:
        """A run the simulation cannot complete raises, naming the flow, rather than
        reporting times of tasks that never ran."""
        from flowdsl._record import simulate as sim_module

        f = Flow("doomed", job("a", 1) >> job("b", 1))
        real = sim_module.execute

        async def failing(flow: Any, **options: Any) -> Any:
            result = await real(flow, **options)
            result.status = flowdsl.RunStatus.FAILED
            return result

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sim_module, "execute", failing)
            with pytest.raises(RuntimeError, match="simulated run of 'doomed' ended failed"):
                simulate(f, history=False)


class TestAssumptions:
    def test_every_task_runs_once(self) -> None:
        """What a prediction cannot know is assumed (docs/howto/analyze-simulate.md): every
        case of a switch, a task and a group whose condition is false, a task reading a
        context key no one gives and a task whose timeout its duration exceeds all run,
        once, for their whole duration."""
        import flowdsl as fd

        route = job("route", 1)
        sw = fd.switch(route["kind"], {"a": job("ca", 2), "b": job("cb", 3)},
                       default=job("cd", 1))
        never = job("never", 1).when(lambda c: False)
        reads = nap(fd.ctx("missing"), seconds=1).named("reads").with_options(
            expected_duration=4, timeout=0.5, retries=2)
        group = (job("g1", 1) >> job("g2", 1)).when(lambda c: False)
        f = Flow("odd", [route >> sw, never, reads, group])
        sim = simulate(f, history=False)
        assert set(sim.tasks) == set(f.plan().order)
        assert all(sim.end[t] - sim.start[t] == sim.durations[t] for t in sim.tasks)
        assert sim.end["cb"] == 1 + 1 + 3  # route, its gate (1 s: no estimate), the case
        assert sim.end["reads"] == 4 and sim.makespan == 5
