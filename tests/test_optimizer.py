"""analyze() and optimize(): analysis, suggestions on crafted flows, tuned copies (OP1)."""

from __future__ import annotations

import random
import textwrap
import types
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdsl
from flowdsl import (
    Attempt,
    ErrorInfo,
    Flow,
    HistoryStore,
    RunResult,
    TaskRecord,
    TaskStatus,
    WorkflowOptimizer,
    analyze,
    optimize,
    parallel,
    simulate,
    tool,
)


@tool(executor="async", registry=False)
async def fetch(x: Any = None, n: int = 0) -> int:
    """Return n + 1 (or x + 1)."""
    return (x if isinstance(x, int) else n) + 1


@tool(executor="async", registry=False)
async def merge(*parts: Any) -> list[Any]:
    """Collect the parts."""
    return list(parts)


@tool(executor="async", registry=False, timeout=0.5)
async def slow(x: Any = None) -> None:
    """Has a timeout below what history shows."""


@pytest.fixture
def store() -> Iterator[HistoryStore]:
    with HistoryStore() as s:
        yield s


def feed(store: HistoryStore, tool_name: str, durations: list[float],
         statuses: list[str] | None = None, flow: str | None = None) -> None:
    """Record one run of flow ``flow`` (``None``: an unnamed flow, as the fragments analysed
    here) with one task per duration, all of the tool ``tool_name`` of this module."""
    result = RunResult(f"{tool_name}-{len(store.runs(10_000))}", flow, "parallel")
    obs = store.observer(flow)
    fn = globals()[tool_name]
    # The run's plan tells history each task's tool, hence its qualified name.
    tasks = {f"{tool_name}{n}": SimpleNamespace(tool=fn) for n in range(len(durations))}
    obs.run_started(result, SimpleNamespace(tasks=tasks))
    for n, d in enumerate(durations):
        status = TaskStatus((statuses or [])[n] if statuses else "completed")
        err = ErrorInfo("OSError", "flaky") if status.failed else None
        rec = TaskRecord(f"{tool_name}{n}", tool_name, status,
                         [Attempt(1, 0.0, d, status, err)], 0.0, d, err)
        result.tasks[rec.id] = rec
        obs.task_finished(result, rec, None)
    result.status = "completed"
    obs.run_finished(result)
    assert store._settle(result.run_id) is None


def fanout() -> Any:
    """a >> [b, c, d] >> e, with declared durations."""
    a = fetch(n=1).named("a").with_options(expected_duration=1)
    mids = [fetch(a).named(k).with_options(expected_duration=d)
            for k, d in (("b", 2), ("c", 5), ("d", 1))]
    e = merge(*mids).named("e").with_options(expected_duration=1)
    return a >> mids >> e


class TestAnalyze:
    def test_shape(self) -> None:
        """Counts, levels, width, parallel opportunities and the critical path."""
        a = analyze(fanout())
        assert (a.total_tasks, a.levels, a.width, a.parallel_opportunities) == (5, 3, 3, 2)
        assert a.critical_path == ["a", "c", "e"] and a.critical_path_duration == 7
        assert a.makespans == {"sequential": 10, "parallel": 7}
        d = a.to_dict()
        assert d["dependency_levels"] == 3 and d["optimization_suggestions"] == [
            s.message for s in a.suggestions]

    def test_unknown_estimates(self) -> None:
        """Without history or declarations, durations are unknown and so is the path's."""
        a = analyze(fetch(n=1).named("u1") >> fetch(n=2).named("u2"))
        assert a.estimates == {"u1": None, "u2": None}
        assert set(a.sources.values()) == {"unknown"}
        assert a.critical_path == ["u1", "u2"] and a.critical_path_duration is None

    def test_history_estimates_and_slow_bottleneck(self, store: HistoryStore) -> None:
        """History gives estimates; a tool slow in history is a bottleneck."""
        feed(store, "fetch", [6.0, 7.0, 8.0], flow="x")
        f = Flow("x", fetch(n=1).named("f1") | merge().named("m1"))
        a = analyze(f, store)
        assert a.estimates["f1"] == 7.0 and a.sources == {"f1": "history", "m1": "unknown"}
        top = a.bottlenecks[0]
        assert top.task_id == "f1" and any("slow in history" in r for r in top.reasons)
        assert "m1" not in {b.task_id for b in a.bottlenecks if "slow" in " ".join(b.reasons)}


class TestSuggestions:
    def kinds(self, a: Any) -> dict[str, set[Any]]:
        out: dict[str, set[Any]] = {}
        for s in a.suggestions:
            out.setdefault(s.kind, set()).add(s.target)
        return out

    def test_parallel_mode_for_a_sequential_wide_flow(self) -> None:
        """A sequential flow with side-by-side tasks gets the parallel suggestion."""
        a = analyze(Flow("w", fanout(), mode="sequential"))
        (msg,) = [s.message for s in a.suggestions if s.kind == "parallel_mode"]
        assert "10s -> 7s" in msg
        assert "parallel_mode" not in self.kinds(analyze(Flow("w", fanout(), mode="parallel")))

    def test_no_parallel_suggestion_for_a_chain(self) -> None:
        """A chain gains nothing from parallel mode, so none is suggested."""
        f = Flow("c", fetch(n=1).named("c1") >> fetch(n=1).named("c2"), mode="sequential")
        assert "parallel_mode" not in self.kinds(analyze(f))

    def test_raise_pool_capacity(self) -> None:
        """A pool that serialises independent tasks: raise it, to the capacity that helps."""
        tasks = [fetch(n=i).named(f"q{i}").with_options(expected_duration=1,
                                                        resources={"db": 1}) for i in range(4)]
        a = analyze(Flow("p", parallel(*tasks), resources={"db": 1}))
        (s,) = [s for s in a.suggestions if s.kind == "pool_capacity"]
        assert s.target == "db" and "from 1 to 4" in s.message and "4s -> 1s" in s.message
        big = analyze(Flow("p", parallel(*tasks), resources={"db": 4}))
        assert "pool_capacity" not in self.kinds(big)

    def test_add_timeout(self, store: HistoryStore) -> None:
        """A tool with no timeout gets one suggested, sized from its p95 when known."""
        feed(store, "fetch", [1.0] * 10 + [2.0] * 10)
        a = analyze(fetch(n=1).named("t1") | slow().named("t2"), store)
        (s,) = [s for s in a.suggestions if s.kind == "add_timeout"]
        assert s.target == "fetch" and "timeout=6" in s.message

    def test_timeout_below_p95(self, store: HistoryStore) -> None:
        """A timeout below the observed p95 is flagged, with a better value."""
        feed(store, "slow", [0.8, 0.9, 1.0, 1.2])
        a = analyze(slow().named("s1"), store, floor=0.1)
        (s,) = [s for s in a.suggestions if s.kind == "raise_timeout"]
        assert s.target == "slow" and "(0.5s)" in s.message

    def test_fails_often_without_retries(self, store: HistoryStore) -> None:
        """A tool failing in 2 runs of 5, without retries, gets a retries suggestion."""
        feed(store, "fetch", [1.0] * 5, ["completed", "failed", "completed", "timed_out",
                                          "completed"])
        assert "add_retries" in self.kinds(analyze(fetch(n=1).named("r1"), store))
        retried = fetch(n=1).named("r2").with_options(retries=2)
        assert "add_retries" not in self.kinds(analyze(retried, store))

    def test_healthy_flow_gets_no_tool_suggestions(self, store: HistoryStore) -> None:
        """A tool with a fitting timeout, retries and good history gets no suggestion."""
        feed(store, "fetch", [1.0] * 10)
        t = fetch(n=1).named("ok").with_options(timeout=5, retries=1)
        assert analyze(t, store).suggestions == []


class TestIdentity:
    """Statistics are keyed by the tool's module-qualified name and the flow (issue 13)."""

    def other_fetch(self) -> Any:
        """A tool also called ``fetch``, from another module (another project)."""
        mod = types.ModuleType("otherproject.jobs")
        exec(textwrap.dedent("""
            from flowdsl import tool

            @tool(executor="async", registry=False)
            async def fetch(n: int = 0) -> int:
                return n
        """), mod.__dict__)
        return mod.fetch

    def test_same_short_name_in_another_module_gives_no_advice(self,
                                                              store: HistoryStore) -> None:
        """Runs of another module's ``fetch`` in a flow of the same name do not size this
        ``fetch``'s timeout, nor give it estimates."""
        other = self.other_fetch()
        for i in range(4):
            assert flowdsl.run(Flow("etl", other(n=i).named("f1")), history=store).ok
        (theirs,) = store.tool_stats("fetch").values()
        assert theirs.tool == "otherproject.jobs.fetch" and theirs.completed == 4
        a = analyze(Flow("etl", fetch(n=1).named("f1")), store)
        assert a.stats == {} and a.sources == {"f1": "unknown"}
        (s,) = [s for s in a.suggestions if s.kind == "add_timeout"]
        assert "observed" not in s.message
        own = analyze(Flow("etl", other(n=1).named("f1")), store)
        (s,) = [s for s in own.suggestions if s.kind == "add_timeout"]
        assert "observed p95" in s.message and own.sources == {"f1": "history"}

    def test_other_flows_count_only_when_asked(self, store: HistoryStore) -> None:
        """The same tool's history in another flow is read with scope='all' only."""
        feed(store, "fetch", [2.0, 2.0, 4.0], flow="elsewhere")
        f = Flow("mine", fetch(n=1).named("m1"))
        assert analyze(f, store).sources == {"m1": "unknown"}
        wide = analyze(f, store, scope="all")
        assert wide.estimates == {"m1": 2.0} and wide.sources == {"m1": "history"}
        (st_,) = wide.stats.values()
        assert st_.flows == ("elsewhere",) and st_.name == "fetch"
        assert simulate(f, history=store).sources == {"m1": "default"}
        assert simulate(f, history=store, scope="all").durations == {"m1": 2.0}
        widened = HistoryStore(scope="all")
        assert widened.scope == "all"
        widened.close()


class TestOptimize:
    def test_tuned_copy_leaves_the_original_alone(self, store: HistoryStore) -> None:
        """optimize() returns new tasks with timeouts from history; the user's are unchanged."""
        feed(store, "fetch", [0.5] * 10 + [1.0, 2.0], flow="t")
        f = Flow("t", fanout(), mode="sequential")
        before = dict(f.plan().tasks)
        res = optimize(f, store, k=3, floor=1)
        after = res.flow.plan()
        assert dict(f.plan().tasks) == before  # the very same Task objects
        assert all(t.spec.timeout is None for t in before.values())
        (stats,) = store.tool_stats("fetch").values()
        p95 = stats.p95
        for i in ("a", "b", "c", "d"):
            assert after.tasks[i].spec.timeout == round(max(1, 3 * p95), 3)
            assert after.tasks[i] is not before[i]
        assert after.tasks["e"].spec.timeout is None  # merge has no history
        assert res.mode == "parallel" and res.flow.mode == "parallel"
        assert {(c.target, c.field) for c in res.changes} >= {("flow", "mode"), ("a", "timeout")}
        assert "p95" in res.report()

    def test_argument_references_follow_the_tuned_tasks(self, store: HistoryStore) -> None:
        """Tasks fed by a tuned task refer to the new one, so the copy plans and runs."""
        feed(store, "fetch", [0.1] * 5, flow="refs")
        a = fetch(n=1).named("a")
        f = Flow("refs", a >> merge(a, [a], {"k": a}).named("m"))
        res = optimize(f, store)
        tuned = res.flow.plan()
        m = tuned.tasks["m"]
        assert m.upstream == (tuned.tasks["a"],) and m.args[0] is tuned.tasks["a"]
        out = flowdsl.run(res.flow, history=False)
        assert out.ok and out.outputs["m"] == [2, [2], {"k": 2}]

    def test_best_mode_of_a_chain_is_sequential(self) -> None:
        """A chain runs no faster in parallel, so the simplest mode is kept."""
        res = optimize(fetch(n=1).named("x1") >> fetch(n=1).named("x2"))
        assert res.mode == "sequential" and res.changes[0].field == "mode"

    def test_ceiling_and_no_change_when_tuned(self, store: HistoryStore) -> None:
        """The ceiling caps timeouts; a flow already at the tuned value reports no change."""
        feed(store, "fetch", [10.0] * 5)
        t = fetch(n=1).named("c1")
        res = optimize(t, store, ceiling=20)
        assert res.flow.spec.timeout == 20
        again = optimize(res.flow, store, ceiling=20)
        assert [c for c in again.changes if c.field == "timeout"] == []

    def test_workflow_optimizer_aliases(self, store: HistoryStore) -> None:
        """WorkflowOptimizer.analyze_workflow/optimize_workflow wrap analyze/optimize."""
        feed(store, "fetch", [0.2] * 5, flow="alias")
        opt = WorkflowOptimizer(store, floor=2)
        f = Flow("alias", fanout())
        assert opt.analyze_workflow(f)["total_tasks"] == 5
        tuned = opt.optimize_workflow(f)
        assert tuned.plan().tasks["a"].spec.timeout == 2
        assert opt.optimization_history[0]["mode"] == "parallel"

    def test_public_names(self) -> None:
        """flowdsl exports analyze, optimize, simulate and WorkflowOptimizer lazily."""
        assert flowdsl.analyze is analyze and flowdsl.optimize is optimize
        assert flowdsl.WorkflowOptimizer is WorkflowOptimizer
        assert flowdsl.simulate(fanout()).makespan == 7


@st.composite
def random_flows(draw: st.DrawFn) -> Any:
    """A random DAG mixing composition edges and argument references."""
    rng = random.Random(draw(st.integers(0, 10**6)))
    n = draw(st.integers(1, 10))
    tasks: list[Any] = []
    for i in range(n):
        refs = [tasks[j] for j in range(i) if rng.random() < 0.2]
        opts = {"retries": rng.randint(0, 2)}
        if rng.random() < 0.3:
            opts["resources"] = {"p": 1}
        t = (merge(*refs) if refs else fetch(n=i)).named(f"n{i}").with_options(**opts)
        tasks.append(t)
    edges = [(a, b) for b in range(n) for a in range(b) if rng.random() < 0.2]
    return Flow("rnd", parallel(*tasks, *(tasks[a] >> tasks[b] for a, b in edges)),
                resources={"p": 1})


class TestSemanticsKept:
    @settings(max_examples=30, deadline=None)
    @given(random_flows())
    def test_optimized_plan_equals_plain_plan(self, f: Any) -> None:
        """Same tasks, edges, order, sources and sinks; only timeouts differ; same outputs
        when run (OP1)."""
        with HistoryStore() as store:
            feed(store, "fetch", [0.1, 0.2, 0.3], flow="rnd")
            feed(store, "merge", [0.1, 0.2, 0.3], flow="rnd")
            res = optimize(f, store)
        p, q = f.plan(), res.flow.plan()
        assert (p.order, p.edges, p.sources, p.sinks) == (q.order, q.edges, q.sources, q.sinks)
        for i in p.order:
            a, b = p.tasks[i].spec, q.tasks[i].spec
            assert (a.retries, dict(a.resources), a.executor) == (
                b.retries, dict(b.resources), b.executor)
            assert b.timeout == 1.0
        r1 = flowdsl.run(f, history=False)
        r2 = flowdsl.run(res.flow, history=False)
        assert r1.ok and r2.ok and r1.outputs == r2.outputs
