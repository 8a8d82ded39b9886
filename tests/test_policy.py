"""The one scheduling policy: its rules one by one, and the proof that the simulator and a
real parallel run follow it alike (same start order, makespan within 5%) on seeded DAGs."""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
import pytest

import flowdsl
from flowdsl import Flow, ResourceError, parallel, simulate, tool
from flowdsl._plan import policy
from flowdsl._plan.policy import AGING, Grants, Mode


@tool(executor="async", registry=False)
async def nap(x: Any = None, seconds: float = 0.0) -> float:
    """Sleep ``seconds`` and return them."""
    await anyio.sleep(seconds)
    return seconds


def job(name: str, seconds: float, **options: Any) -> Any:
    """A task called ``name`` sleeping ``seconds``, declared as its expected duration."""
    return nap(seconds=seconds).named(name).with_options(expected_duration=seconds, **options)


class TestMode:
    def test_listed_once(self) -> None:
        """flowdsl.Mode, the runners, the document schema and compat all use the policy's
        enum."""
        from flowdsl._data.plan_schema import MODES
        from flowdsl._run.runners import RUNNERS

        assert flowdsl.Mode is Mode is flowdsl.ExecutionMode
        assert MODES == tuple(RUNNERS) == tuple(m.value for m in Mode)

    def test_parse_names_the_call(self) -> None:
        """An unknown mode raises ValueError naming the call and listing the modes."""
        assert Mode.parse("pipeline") is Mode.PIPELINE
        with pytest.raises(ValueError, match=r"simulate\(\): unknown mode='fast': expected "
                                             "one of sequential, parallel, pipeline"):
            Mode.parse("fast", "simulate()")


class TestDurations:
    def test_given_declared_history_default(self) -> None:
        """given > declared expected_duration > history > 1 s, with the source of each."""
        f = [job("g", 5), job("d", 3), nap().named("h"), nap().named("u")]
        p = flowdsl.plan(f)
        dur, src = policy.estimate_durations(p, {"g": 2}, lambda: {"d": 9, "h": 7, "g": 8})
        assert dur == {"g": 2, "d": 3, "h": 7, "u": 1}
        assert src == {"g": "given", "d": "declared", "h": "history", "u": "default"}

    def test_history_is_read_only_when_needed(self) -> None:
        """When every task is given or declared, the history is never read."""
        def unreadable() -> Mapping[str, float]:
            raise AssertionError("history was read")

        p = flowdsl.plan([job("a", 1), nap().named("b")])
        dur, _ = policy.estimate_durations(p, {"b": 4}, unreadable)
        assert dur == {"a": 1, "b": 4}

    def test_run_ranks_tasks_as_simulate_does(self) -> None:
        """run() and simulate() see the same durations when declared and history disagree:
        the declared estimate wins in both (one worker shows the ranking)."""
        f = Flow("rank", parallel(job("short", 0.01) >> job("tail", 0.001),
                                  job("long", 0.03)))
        for _ in range(3):  # history now says 'short' takes ~0.01 s, as declared
            assert flowdsl.run(f).ok
        sim = simulate(f, max_concurrency=1)
        real = flowdsl.run(f, max_concurrency=1)
        sim_order = sorted(sim.start, key=sim.start.__getitem__)
        real_order = sorted(real.tasks, key=lambda t: real.tasks[t].started_at)
        assert sim_order == real_order == ["long", "short", "tail"]


class TestSettings:
    def test_flow_defaults_under_the_call(self) -> None:
        """The call's settings win; the Flow's fill the rest, also through a Plan."""
        f = Flow("s", job("a", 1), mode="conditional", context={"k": 1, "j": 2},
                 resources={"db": 2}, max_concurrency=3)
        for target in (f, f.plan()):
            st = policy.resolve_settings(target, flowdsl.plan(f), context={"j": 5})
            assert (st.mode, st.context, dict(st.resources), st.max_concurrency) == (
                Mode.CONDITIONAL, {"k": 1, "j": 5}, {"db": 2}, 3)
        st = policy.resolve_settings(f, f.plan(), mode="parallel", resources={"db": 1},
                                     max_concurrency=2)
        assert (st.mode, dict(st.resources), st.max_concurrency) == (Mode.PARALLEL,
                                                                     {"db": 1}, 2)
        assert f.context == {"k": 1, "j": 2}

    def test_bad_max_concurrency(self) -> None:
        """max_concurrency must be a whole number > 0; the error names the call."""
        p = flowdsl.plan(job("a", 1))
        with pytest.raises(ValueError, match=r"simulate\(\): max_concurrency=0"):
            policy.resolve_settings(p, p, max_concurrency=0, where="simulate()")

    def test_worker_limits(self) -> None:
        """Sequential: 1; conditional: 1 unless told; parallel and pipeline: 1000."""
        assert [policy.worker_limit(m, None) for m in Mode] == [1, 1000, 1000, 1]
        assert [policy.worker_limit(m, 4) for m in Mode] == [1, 4, 4, 4]


class TestGrants:
    def test_all_or_nothing(self) -> None:
        """A demand is granted whole or not at all."""
        g: Grants[str] = Grants({"a": 1, "b": 1})
        assert g.take_now({"a": 1})
        g.enqueue({"a": 1, "b": 1}, 0.0, "both")
        assert g.grant() == [] and g.free == {"a": 0, "b": 1}
        g.release({"a": 1})
        assert [w.token for w in g.grant()] == ["both"] and g.free == {"a": 0, "b": 0}

    def test_priority_then_arrival(self) -> None:
        """Waiters are served highest priority first, equal priorities in arrival order."""
        g: Grants[str] = Grants({"p": 1})
        assert g.take_now({"p": 1})
        for name, prio in (("low", 1.0), ("high1", 5.0), ("high2", 5.0)):
            g.enqueue({"p": 1}, prio, name)
        served = []
        for _ in range(3):
            g.release({"p": 1})
            served += [w.token for w in g.grant()]
        assert served == ["high1", "high2", "low"]

    def test_head_of_line_blocks_only_its_pools(self) -> None:
        """A waiter that cannot be served blocks its pools for those behind it, while
        work on other pools flows."""
        g: Grants[str] = Grants({"db": 2, "cpu": 1})
        assert g.take_now({"db": 1})
        g.enqueue({"db": 2}, 9.0, "big")
        g.enqueue({"db": 1}, 1.0, "small")   # fits, but big is ahead on db
        g.enqueue({"cpu": 1}, 0.0, "other")  # another pool: not blocked
        assert [w.token for w in g.grant()] == ["other"]
        assert not g.try_take({"db": 1})  # a queued waiter holds the pool
        g.release({"db": 1})
        assert [w.token for w in g.grant()] == ["big"]

    def test_aging(self) -> None:
        """A waiter overtaken AGING times by later arrivals goes to the front."""
        g: Grants[str] = Grants({"p": 1})
        assert g.take_now({"p": 1})
        g.enqueue({"p": 1}, 0.0, "low")
        served: list[str] = []
        for k in range(AGING + 5):
            g.enqueue({"p": 1}, 10.0, f"high{k}")
            g.release({"p": 1})
            served += [w.token for w in g.grant()]
        assert served.index("low") == AGING

    def test_checks_name_task_and_pool(self) -> None:
        """Unknown pools and demands over capacity raise ResourceError naming both."""
        g: Grants[str] = Grants({"db": 1})
        with pytest.raises(ResourceError, match="'t' needs unknown pool 'gpu'"):
            g.check({"gpu": 1}, "t")
        with pytest.raises(ResourceError, match="'t' needs 2 of pool 'db' \\(capacity 1\\)"):
            g.check({"db": 2}, "t")


# -- the simulator predicts the runner ----------------------------------------------------------

def dag(seed: int, pools: bool) -> tuple[Flow, dict[str, int]]:
    """A seeded random DAG of 8-14 sleeping tasks (40-120 ms, declared), each depending on
    0-3 recent tasks; with ``pools``, about half of them need a unit of "db" (capacity 1-2)
    and some a unit of "api" (capacity 1)."""
    rng = random.Random(seed)
    n = rng.randint(8, 14)
    ids = [f"t{i:02d}" for i in range(n)]
    caps = {"db": rng.randint(1, 2), "api": 1} if pools else {}
    tasks = {}
    for tid in ids:
        need = {}
        if pools and rng.random() < 0.5:
            need["db"] = 1
        if pools and rng.random() < 0.25:
            need["api"] = 1
        tasks[tid] = job(tid, round(rng.uniform(0.04, 0.12), 4), resources=need)
    parts = []
    for i, tid in enumerate(ids):
        k = min(i, rng.choice((0, 1, 1, 2, 3)))
        preds = rng.sample(ids[max(0, i - 5):i], k) if k else []
        parts += [tasks[p] >> tasks[tid] for p in preds] or [tasks[tid]]
    return Flow(f"dag{seed}{'p' if pools else ''}", parallel(*parts), resources=caps), caps


def inversions(predicted: Mapping[str, float], real: Mapping[str, float],
               tol: float) -> list[tuple[str, str]]:
    """Pairs (a, b) predicted to start in the order a, b (a strictly earlier) that really
    started b first by more than ``tol`` seconds."""
    order = sorted(predicted, key=lambda t: (predicted[t], real[t]))
    out = []
    for n, a in enumerate(order):
        for b in order[n + 1:]:
            if predicted[a] < predicted[b] and real[b] < real[a] - tol:
                out.append((a, b))
    return out


def starts(result: flowdsl.RunResult) -> dict[str, float]:
    return {t: r.started_at for t, r in result.tasks.items()}  # type: ignore[misc]


async def run_all(plans: list[Any], **options: Any) -> list[flowdsl.RunResult]:
    """Run the plans side by side on one event loop."""
    results: list[Any] = [None] * len(plans)

    async def one(n: int) -> None:
        results[n] = await flowdsl.arun(plans[n], history=False, **options)

    async with anyio.create_task_group() as tg:
        for n in range(len(plans)):
            tg.start_soon(one, n)
    return results


CASES = [dag(seed, pools) for seed in range(20) for pools in (False, True)]


class TestSimulatorPredictsTheRunner:
    #: Real starts this close together may come in either order (scheduler noise).
    TIE = 0.005

    def test_inversions_are_found(self) -> None:
        """The order check fails when the real order differs beyond the tie tolerance."""
        predicted = {"a": 0.0, "b": 0.01, "c": 0.02}
        assert inversions(predicted, {"a": 0.0, "b": 0.0125, "c": 0.0115}, 0.004) == []
        assert inversions(predicted, {"a": 0.03, "b": 0.01, "c": 0.02}, 0.004) == [
            ("a", "b"), ("a", "c")]

    @pytest.mark.parametrize(("mode", "max_concurrency"), [
        ("parallel", None), ("parallel", 2), ("conditional", None), ("conditional", 3)])
    def test_exact_under_a_virtual_clock(self, mode: str, max_concurrency: int | None) -> None:
        """The real runner (drive loop, pools, core) under trio's MockClock, where a task
        takes exactly its sleep: every task starts when simulate() says, to the float, on
        20 seeded DAGs with and without pools. No noise, so no tolerance."""
        from trio.testing import MockClock

        plans = [f.plan() for f, _ in CASES]
        results = anyio.run(partial(run_all, plans, mode=mode, max_concurrency=max_concurrency),
                            backend="trio",
                            backend_options={"clock": MockClock(autojump_threshold=0)})
        for (f, _), result in zip(CASES, results):
            assert result.ok, result.error
            sim = simulate(f, mode, max_concurrency=max_concurrency, history=False)
            real = starts(result)
            off = {t: (real[t], sim.start[t]) for t in real if abs(real[t] - sim.start[t]) > 1e-9}
            assert not off, f"{f.name}: real vs predicted starts differ: {off}"
            assert result.duration == pytest.approx(sim.makespan, abs=1e-9)

    @pytest.mark.slow
    def test_same_start_order_and_makespan_in_real_time(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """In real time (asyncio, real sleeps), on the same 40 DAGs, simulate() predicts the
        start order (up to near-ties) and the makespan within 5%. Runs go 8 at a time on one
        loop to keep the test short; one whose timing machine load disturbed gets up to two
        reruns alone, and a policy that differs fails every one."""
        plans = [f.plan() for f, _ in CASES]
        results: list[flowdsl.RunResult] = []
        for k in range(0, len(plans), 8):
            results += anyio.run(run_all, plans[k:k + 8])
        worst, reruns = 0.0, 0
        for (f, _), result in zip(CASES, results):
            sim = simulate(f, history=False)
            for attempt in range(3):
                if attempt:
                    reruns += 1
                    result = flowdsl.run(f, history=False)
                assert result.ok, result.error
                bad = inversions(sim.start, starts(result), self.TIE)
                err = abs(result.duration - sim.makespan) / sim.makespan
                if not bad and err <= 0.05:
                    break
            assert not bad, f"{f.name}: started out of the predicted order: {bad}"
            assert err <= 0.05, f"{f.name}: makespan off by {err:.1%}"
            worst = max(worst, err)
        with capsys.disabled():
            print(f"\n40 DAGs in real time: worst makespan error {worst:.1%}, "
                  f"{reruns} rerun(s)")

    def test_a_different_policy_is_caught(self) -> None:
        """Against a simulation of another policy (plan order, one worker), the same check
        reports start-order inversions: the comparison can fail."""
        f, _ = CASES[7]
        result = flowdsl.run(f, history=False)
        other = simulate(f, "conditional", history=False)
        assert inversions(other.start, starts(result), self.TIE)
