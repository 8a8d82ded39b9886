"""The four runners: same results and errors in every mode; concurrency shown by measured
overlap of recorded start/end times, dependencies by recorded order; pipelines and
conditional branches; run() inside a running event loop; arun on both anyio backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import trio
from support import run, tl

import flowdsl
from flowdsl import Mode, TaskFailed, TaskStatus, branch, ctx

S = TaskStatus


class Timeline:
    """Instrumented tools record (name, start, end) on one clock."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}
        self.order: list[str] = []

    def sleeper(self, name: str, seconds: float = 0.0, value: Any = None) -> Any:
        async def fn(*args: Any) -> Any:
            start = time.perf_counter()
            self.order.append(name)
            await anyio.sleep(seconds)
            self.spans[name] = (start, time.perf_counter())
            return value if value is not None else name

        fn.__name__ = name
        return tl(fn)(*()).named(name)

    def max_overlap(self) -> int:
        """The most spans open at one instant."""
        points = sorted([(s, 1) for s, _ in self.spans.values()]
                        + [(e, -1) for _, e in self.spans.values()], key=lambda p: (p[0], p[1]))
        now = best = 0
        for _, d in points:
            now += d
            best = max(best, now)
        return best

    def before(self, a: str, b: str) -> bool:
        """``a`` ended before ``b`` started."""
        return self.spans[a][1] <= self.spans[b][0]


def diamond() -> Any:
    src = tl(lambda: 2)
    double = tl(lambda x: x * 2)
    square = tl(lambda x: x * x)
    add = tl(lambda a, b: a + b)
    s = src().named("src")
    d, q = double(s).named("double"), square(s).named("square")
    return s >> (d | q) >> add(d, q).named("add")


# -- one behaviour in every mode ------------------------------------------------------------------
class TestEveryMode:
    def test_same_results(self, mode: str) -> None:
        """A diamond gives the same outputs and statuses in every mode."""
        r = run(diamond(), mode=mode)
        assert r.ok and r.status == "completed" and r.mode == mode
        assert r.outputs == {"src": 2, "double": 4, "square": 4, "add": 8}
        assert all(rec.status is S.COMPLETED for rec in r.tasks.values())
        assert list(r.tasks) == ["src", "double", "square", "add"]

    def test_mode_enum_accepted(self) -> None:
        """``Mode`` members work like the strings."""
        assert run(diamond(), mode=Mode.SEQUENTIAL).outputs["add"] == 8
        assert Mode("pipeline") is Mode.PIPELINE

    def test_unknown_mode(self) -> None:
        """An unknown mode raises ValueError listing the modes; nothing runs."""
        calls: list[int] = []
        with pytest.raises(ValueError, match="sequential, parallel, pipeline, conditional"):
            run(tl(lambda: calls.append(1))(), mode="fast")
        assert calls == []

    def test_dependencies_hold(self, mode: str) -> None:
        """Every task starts after all its dependencies ended (recorded times)."""
        tl_ = Timeline()
        a, b, c = (tl_.sleeper(n, 0.01) for n in "abc")
        d, e = tl_.sleeper("d", 0.01), tl_.sleeper("e")
        r = run(a >> (b | c) >> d >> e, mode=mode)
        assert r.ok
        for x, y in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]:
            assert tl_.before(x, y), (x, y)
        for x, y in [("a", "b"), ("b", "d"), ("d", "e")]:
            assert r.tasks[x].ended_at <= r.tasks[y].started_at

    def test_failure_same_everywhere(self, mode: str) -> None:
        """A failing task fails the run the same way in every mode; downstream never runs."""
        ran: list[str] = []
        ok = tl(lambda: ran.append("ok"))
        bad = tl(lambda: 1 / 0)
        after = tl(lambda: ran.append("after"))
        r = run(ok().named("ok") >> bad().named("bad") >> after().named("after"), mode=mode)
        assert r.status == "failed" and not r.ok
        assert r.tasks["bad"].status is S.FAILED
        assert r.tasks["after"].status in (S.PENDING, S.UPSTREAM_FAILED)
        assert ran == ["ok"]
        assert isinstance(r.error, TaskFailed) and r.error.task_id == "bad"
        assert isinstance(r.error.__cause__, ZeroDivisionError)
        assert [type(e) for e in r.errors] == [TaskFailed]

    def test_conditions_and_mapping_same_everywhere(self, mode: str) -> None:
        """Conditions, output mapping and ctx() mean the same in every mode."""
        put = tl(lambda: {"flag": True, "n": 3})
        use = tl(lambda n: n * 10)
        never = tl(lambda: "no")
        p = put().named("put").to_context({"flag": "flag", "n": "n"})
        yes = use(ctx("n")).named("yes").when(lambda c: c["flag"])
        no = never().named("no").when(lambda c: not c["flag"])
        r = run(p >> (yes | no), mode=mode)
        assert r.ok
        assert r.outputs["yes"] == 30
        assert r.tasks["no"].status is S.SKIPPED
        assert r.context == {"flag": True, "n": 3}

    def test_continue_on_error_same_everywhere(self, mode: str) -> None:
        """EP1: with continue_on_error the failed task's downstream is upstream_failed and an
        independent branch completes, in every mode."""
        ok, bad, dep = tl(lambda: 1), tl(lambda: 1 / 0), tl(lambda: 2)
        a = bad().named("a")
        r = run((a >> dep().named("c")) | ok().named("b"), mode=mode, continue_on_error=True)
        assert r.status == "failed"
        assert r.tasks["a"].status is S.FAILED
        assert r.tasks["b"].status is S.COMPLETED
        assert r.tasks["c"].status is S.UPSTREAM_FAILED
        assert r.tasks["c"].attempts == [] and "'a'" in r.tasks["c"].reason
        assert r.summary() == {"failed": 1, "upstream_failed": 1, "completed": 1}

    def test_run_timeout(self, mode: str) -> None:
        """A run past its timeout stops: status timed_out, running task cancelled."""

        async def slow() -> None:
            await anyio.sleep(10)

        r = run(tl(lambda: 1)().named("a") >> tl(slow)().named("slow"), mode=mode,
                timeout=0.1)
        assert r.status == "timed_out"
        assert isinstance(r.error, TimeoutError)
        assert r.tasks["a"].status is S.COMPLETED
        assert r.tasks["slow"].status is S.CANCELLED
        assert r.duration < 5


# -- concurrency ------------------------------------------------------------------------------
class TestConcurrency:
    def test_sequential_one_at_a_time(self) -> None:
        """Sequential mode never overlaps two tasks, in topological order."""
        tl_ = Timeline()
        flow = [tl_.sleeper(n, 0.01) for n in "abcd"]
        assert run(flow, mode="sequential").ok
        assert tl_.max_overlap() == 1
        assert tl_.order == list("abcd")

    def test_conditional_one_at_a_time_by_default(self) -> None:
        """Conditional mode runs one task at a time unless max_concurrency says otherwise."""
        tl_ = Timeline()
        assert run([tl_.sleeper(n, 0.01) for n in "abc"], mode="conditional").ok
        assert tl_.max_overlap() == 1
        tl2 = Timeline()
        assert run([tl2.sleeper(n, 0.05) for n in "abc"], mode="conditional",
                   max_concurrency=3).ok
        assert tl2.max_overlap() == 3

    @pytest.mark.parametrize("m", ["parallel", "pipeline"])
    def test_independent_tasks_overlap(self, m: str) -> None:
        """Parallel (and pipeline without items) run independent tasks at the same time."""
        tl_ = Timeline()
        assert run([tl_.sleeper(n, 0.05) for n in "abcd"], mode=m).ok
        assert tl_.max_overlap() == 4

    def test_threads_overlap(self) -> None:
        """Sync tools run in worker threads, so they overlap too."""
        spans: dict[int, tuple[float, float]] = {}

        def work(i: int) -> None:
            start = time.perf_counter()
            time.sleep(0.05)
            spans[i] = (start, time.perf_counter())

        t = tl(work)
        assert run([t(i) for i in range(3)]).ok
        latest_start = max(s for s, _ in spans.values())
        earliest_end = min(e for _, e in spans.values())
        assert latest_start < earliest_end

    def test_max_concurrency_bounds_parallel(self) -> None:
        """max_concurrency=2 keeps at most two tasks running, and reaches two."""
        tl_ = Timeline()
        assert run([tl_.sleeper(f"t{i}", 0.02) for i in range(6)], max_concurrency=2).ok
        assert tl_.max_overlap() == 2

    def test_no_level_barrier(self) -> None:
        """A task starts the moment its own dependencies finish, not when its level does."""
        tl_ = Timeline()
        fast, slow = tl_.sleeper("fast", 0.01), tl_.sleeper("slow", 0.2)
        nxt = tl_.sleeper("next", 0.01)
        assert run((fast >> nxt) | (slow >> tl_.sleeper("tail"))).ok
        assert tl_.spans["next"][0] < tl_.spans["slow"][1]

    def test_critical_path_first_under_max_concurrency(self) -> None:
        """With one worker, the task heading the longest remaining path goes first."""
        tl_ = Timeline()
        shorts = [tl_.sleeper(f"s{i}") for i in range(3)]
        chain = tl_.sleeper("l1") >> tl_.sleeper("l2") >> tl_.sleeper("l3")
        assert run([*shorts, chain], max_concurrency=1).ok
        assert tl_.order[0] == "l1"

    def test_sequential_keyboard_order(self) -> None:
        """Sequential mode follows the plan's topological order exactly."""
        tl_ = Timeline()
        a, b, c, d = (tl_.sleeper(n) for n in "abcd")
        p = flowdsl.plan((a | b) >> (c | d))
        assert run(p, mode="sequential").ok
        assert tl_.order == list(p.order)


# -- run() where an event loop already runs; arun on both backends ---------------------------
class TestEntryPoints:
    def test_run_inside_asyncio(self) -> None:
        """run() works from inside a running asyncio loop (a notebook cell), unchanged."""

        async def cell() -> flowdsl.RunResult:
            return run(diamond())

        assert asyncio.run(cell()).outputs["add"] == 8

    def test_run_inside_trio(self) -> None:
        """run() works from inside a running trio loop."""

        async def cell() -> flowdsl.RunResult:
            return run(diamond(), mode="sequential")

        assert trio.run(cell).outputs["add"] == 8

    def test_run_inside_loop_reraises(self) -> None:
        """A plan-time error from run() inside a running loop reaches the caller."""
        a = tl(lambda: 1)().named("dup")
        b = tl(lambda: 2)().named("dup")

        async def cell() -> None:
            run(a >> b)

        with pytest.raises(flowdsl.DuplicateTaskError):
            asyncio.run(cell())

    def test_run_on_trio_backend(self) -> None:
        """run(backend="trio") runs the flow on trio."""
        assert run(diamond(), backend="trio").outputs["add"] == 8

    @pytest.mark.anyio
    async def test_arun(self, anyio_backend: str, mode: str) -> None:
        """arun works under both anyio backends, in every mode."""
        tl_ = Timeline()
        flow = tl_.sleeper("a", 0.01) >> (tl_.sleeper("b", 0.01) | tl_.sleeper("c", 0.01))
        r = await flowdsl.arun(flow, mode=mode, history=False)
        assert r.ok and set(r.outputs) == {"a", "b", "c"}
        assert tl_.before("a", "b") and tl_.before("a", "c")

    @pytest.mark.anyio
    async def test_arun_concurrent_runs(self, anyio_backend: str) -> None:
        """Several arun calls can share one event loop at the same time."""
        results: list[flowdsl.RunResult] = []

        async def one() -> None:
            results.append(await flowdsl.arun(diamond(), history=False))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
        assert [r.outputs["add"] for r in results] == [8] * 5


# -- pipeline ------------------------------------------------------------------------------------
class TestPipeline:
    def test_input_flows_through_stages(self) -> None:
        """``load >> clean >> score`` with input x gives score(clean(load(x)))."""
        load, clean, score = tl(lambda x: x + 1), tl(lambda x: x * 2), tl(lambda x: x - 3)
        r = run(load.stage() >> clean.stage() >> score.stage(), mode="pipeline", input=5)
        assert r.output == 9

    def test_tools_compose_directly(self) -> None:
        """Tools compose as stages without calling .stage()."""
        inc, dbl = tl(lambda x: x + 1), tl(lambda x: x * 2)
        assert run(inc >> dbl, mode="pipeline", input=1).output == 4

    def test_stage_with_bound_arguments(self) -> None:
        """A stage's other parameters can be bound; the first free one takes the data."""
        scale = tl(lambda x, by: x * by)
        assert run(scale.stage(by=10) >> scale.stage(by=2), mode="pipeline",
                   input=1).output == 20

    def test_fan_out_gives_list(self) -> None:
        """``|`` inside a pipeline fans the value out; the next stage gets the list."""
        src = tl(lambda x: x)
        a, b = tl(lambda x: x + 1), tl(lambda x: x * 10)
        join = tl(lambda xs: xs)
        r = run(src.stage() >> (a.stage() | b.stage()) >> join.stage(), mode="pipeline",
                input=3)
        assert r.output == [4, 30]

    def test_items_in_input_order(self) -> None:
        """Over items, result.output lists each item's result in input order, even when
        later items finish their stage sooner."""

        async def uneven(x: int) -> int:
            await anyio.sleep(0.001 * ((7 - x) % 4))
            return x

        inc = tl(lambda x: x + 1)
        r = run(tl(uneven).stage() >> inc.stage(), mode="pipeline", items=range(8))
        assert r.ok
        assert r.output == [x + 1 for x in range(8)]

    def test_items_need_pipeline_mode(self) -> None:
        """items= outside pipeline mode is a clear error."""
        with pytest.raises(ValueError, match="pipeline"):
            run(tl(lambda x: x).stage(), mode="parallel", items=[1])

    def test_stages_overlap_n_plus_s_minus_1(self) -> None:
        """N items through S equal stages take about N+S-1 stage-times: all S stages run at
        once and each stage takes the items in order (recorded times)."""
        spans: list[tuple[int, int, float, float]] = []

        def stage(k: int) -> Any:
            async def fn(x: int) -> int:
                start = time.perf_counter()
                await anyio.sleep(0.03)
                spans.append((k, x, start, time.perf_counter()))
                return x

            fn.__name__ = f"stage{k}"
            return tl(fn).stage()

        n, s = 6, 3
        r = run(stage(0) >> stage(1) >> stage(2), mode="pipeline", items=range(n))
        assert r.output == list(range(n))
        for k in range(s):
            assert [x for kk, x, *_ in sorted(spans, key=lambda p: p[2]) if kk == k] == list(
                range(n))
        span = {(k, x): (a, b) for k, x, a, b in spans}
        for x in range(n):  # one item goes through the stages in order
            for k in range(s - 1):
                assert span[k, x][1] <= span[k + 1, x][0]
        # while the last stage works on item 0, the first stage already works on item 2
        assert span[0, 2][0] < span[2, 0][1]
        mean = sum(b - a for *_, a, b in spans) / len(spans)
        makespan = max(b for *_, b in spans) - min(a for *_, a, _ in spans)
        assert makespan / mean < (n * s + n + s - 1) / 2  # nearer N+S-1=8 than N*S=18

    def test_backpressure_bounds_buffers(self) -> None:
        """A slow stage makes the stages before it (and item pulling) wait: the lead of the
        producer over the consumer stays bounded by the buffers."""
        pulled: list[int] = []
        lead: list[int] = []

        def source() -> Iterator[int]:
            for i in range(40):
                pulled.append(i)
                yield i

        async def slow(x: int) -> int:
            lead.append(len(pulled) - x)
            await anyio.sleep(0.005)
            return x

        fast = tl(lambda x: x, executor="inline")
        r = run(fast.stage() >> tl(slow).stage(), mode="pipeline", items=source(), buffer=2)
        assert r.output == list(range(40))
        assert max(lead) <= 2 * 2 + 4  # two buffers of 2, plus the items held in hand
        assert max(lead) >= 2  # the fast stage did run ahead while it could

    def test_failing_item_stops_pulling(self) -> None:
        """PL1: an item that fails fails the run and no further items are pulled."""
        pulled: list[int] = []
        closed: list[bool] = []

        def source() -> Iterator[int]:
            try:
                for i in range(1000):
                    pulled.append(i)
                    yield i
            finally:
                closed.append(True)

        def check(x: int) -> int:
            if x == 3:
                raise ValueError("bad item 3")
            return x

        r = run(tl(check).stage() >> tl(lambda x: x).stage(), mode="pipeline",
                items=source(), buffer=1)
        assert r.status == "failed"
        assert "bad item 3" in str(r.error.__cause__)
        assert len(pulled) <= 3 + 8
        assert closed == [True]  # the item generator was closed, not left suspended

    def test_continue_on_error_reports_per_item(self) -> None:
        """With continue_on_error a failing item is reported per item; the others go on."""

        def check(x: int) -> int:
            if x % 3 == 1:
                raise ValueError(f"bad {x}")
            return x * 10

        r = run(tl(check).stage() >> tl(lambda x: x + 1).stage(), mode="pipeline",
                items=range(6), continue_on_error=True)
        assert r.status == "failed"
        assert r.output == [1, None, 21, 31, None, 51]
        assert sorted(r.item_errors) == [1, 4]
        assert "bad 4" in r.item_errors[4].message

    def test_no_items(self) -> None:
        """An empty items iterable gives an empty list of outputs."""
        r = run(tl(lambda x: x).stage(), mode="pipeline", items=[])
        assert r.ok and r.output == []

    def test_async_generator_items_closed_on_failure(self) -> None:
        """PL1: items may come from an async generator; when an item fails, it is acloseed
        and no further items are pulled."""
        pulled: list[int] = []
        closed: list[bool] = []

        async def source() -> Any:
            try:
                for i in range(1000):
                    pulled.append(i)
                    yield i
            finally:
                closed.append(True)

        def check(x: int) -> int:
            if x == 2:
                raise ValueError("bad")
            return x

        r = run(tl(check).stage(), mode="pipeline", items=source(), buffer=1)
        assert r.status == "failed"
        assert len(pulled) <= 2 + 4
        assert closed == [True]

    def test_async_generator_items(self) -> None:
        """Items from an async generator stream through in order."""

        async def source() -> Any:
            for i in range(5):
                yield i

        r = run(tl(lambda x: x * 2).stage(), mode="pipeline", items=source())
        assert r.output == [0, 2, 4, 6, 8]

    def test_item_records_merged(self) -> None:
        """Over items, a task's record holds every item's attempt and the worst status."""
        r = run(tl(lambda x: x).stage(), mode="pipeline", items=range(4))
        rec = next(iter(r.tasks.values()))
        assert rec.status is S.COMPLETED and len(rec.attempts) == 4


# -- conditional -------------------------------------------------------------------------------
class TestConditional:
    def _branch(self, flag: bool) -> flowdsl.RunResult:
        start = tl(lambda: flag)().named("start").to_context("flag")
        yes = tl(lambda: "yes")().named("yes")
        yes2 = tl(lambda: "yes2")().named("yes2")
        no = tl(lambda: "no")().named("no")
        join = tl(lambda: "joined")().named("join").with_options(trigger="none_failed")
        return run(start >> branch(lambda c: c["flag"], yes >> yes2, no) >> join,
                   mode="conditional")

    def test_branch_then(self) -> None:
        """branch() takes the then-path when the predicate holds; else-path skipped."""
        r = self._branch(True)
        assert r.ok
        assert r.tasks["yes"].status is S.COMPLETED and r.tasks["yes2"].status is S.COMPLETED
        assert r.tasks["no"].status is S.SKIPPED
        assert r.tasks["join"].status is S.COMPLETED

    def test_branch_else(self) -> None:
        """EP2: the path not taken and its all_success descendants are skipped (never
        upstream_failed); a none_failed join still runs."""
        r = self._branch(False)
        assert r.ok
        assert r.tasks["no"].status is S.COMPLETED
        assert r.tasks["yes"].status is S.SKIPPED and r.tasks["yes2"].status is S.SKIPPED
        assert "skipped" in r.tasks["yes2"].reason
        assert r.tasks["join"].status is S.COMPLETED

    def test_skip_propagates_through_chain(self, mode: str) -> None:
        """A skipped task skips its all_success descendants in every mode."""
        a = tl(lambda: 1)().named("a").when(lambda c: False)
        b, c = tl(lambda: 2)().named("b"), tl(lambda: 3)().named("c")
        r = run(a >> b >> c, mode=mode)
        assert r.ok
        assert [r.tasks[t].status for t in "abc"] == [S.SKIPPED] * 3

    def test_condition_evaluated_just_in_time(self) -> None:
        """A condition sees the context written by tasks that finished before it was ready,
        even ones on another branch."""
        setter = tl(lambda: True)().named("setter").to_context("go")
        gated = tl(lambda: "ran")().named("gated").when(lambda c: c.get("go", False))
        r = run(setter >> gated, mode="conditional")
        assert r.tasks["gated"].status is S.COMPLETED


OK, FAIL, SKIP = "ok", "fail", "skip"
EXPECTED = {  # rule -> {upstream states: join status}
    "all_success": {(OK, OK): S.COMPLETED, (OK, FAIL): S.UPSTREAM_FAILED,
                    (OK, SKIP): S.SKIPPED, (FAIL, FAIL): S.UPSTREAM_FAILED,
                    (FAIL, SKIP): S.UPSTREAM_FAILED, (SKIP, SKIP): S.SKIPPED},
    "all_done": dict.fromkeys([(OK, OK), (OK, FAIL), (OK, SKIP), (FAIL, FAIL),
                               (FAIL, SKIP), (SKIP, SKIP)], S.COMPLETED),
    "none_failed": {(OK, OK): S.COMPLETED, (OK, FAIL): S.UPSTREAM_FAILED,
                    (OK, SKIP): S.COMPLETED, (FAIL, FAIL): S.UPSTREAM_FAILED,
                    (FAIL, SKIP): S.UPSTREAM_FAILED, (SKIP, SKIP): S.COMPLETED},
    "one_success": {(OK, OK): S.COMPLETED, (OK, FAIL): S.COMPLETED,
                    (OK, SKIP): S.COMPLETED, (FAIL, FAIL): S.UPSTREAM_FAILED,
                    (FAIL, SKIP): S.UPSTREAM_FAILED, (SKIP, SKIP): S.SKIPPED},
    "one_failed": {(OK, OK): S.SKIPPED, (OK, FAIL): S.COMPLETED,
                   (OK, SKIP): S.SKIPPED, (FAIL, FAIL): S.COMPLETED,
                   (FAIL, SKIP): S.COMPLETED, (SKIP, SKIP): S.SKIPPED},
}
CASES = [(rule, ups, want) for rule, table in EXPECTED.items() for ups, want in table.items()]


def _upstream(state: str, name: str) -> Any:
    if state == FAIL:
        return tl(lambda: 1 / 0)().named(name)
    t = tl(lambda: name)().named(name)
    return t.when(lambda c: False) if state == SKIP else t


@pytest.mark.parametrize(("rule", "ups", "want"), CASES,
                         ids=[f"{r}-{'-'.join(u)}" for r, u, _ in CASES])
def test_trigger_rule_matrix(rule: str, ups: tuple[str, str], want: TaskStatus,
                             mode: str) -> None:
    """Each trigger rule gives the documented join status for each pair of upstream
    states, in every mode (continue_on_error, so a failure does not stop the run)."""
    calls: list[int] = []
    join = tl(lambda: calls.append(1))().named("join").with_options(trigger=rule)
    r = run([_upstream(ups[0], "u1"), _upstream(ups[1], "u2")] >> join, mode=mode,
            continue_on_error=True)
    assert r.tasks["join"].status is want
    assert calls == ([1] if want is S.COMPLETED else [])
    assert r.ok == (FAIL not in ups)


def test_all_done_join_sees_failure(mode: str) -> None:
    """EP3: an all_done join after an upstream failure runs (the failed input is None) and
    the run still reports the failure."""
    got: list[Any] = []
    bad = tl(lambda: 1 / 0)().named("bad")
    good = tl(lambda: 5)().named("good")
    join = tl(lambda a, b: got.append((a, b)))(bad, good).named("join").with_options(
        trigger="all_done")
    r = run(join, mode=mode, continue_on_error=True)
    assert got == [(None, 5)]
    assert r.tasks["join"].status is S.COMPLETED
    assert r.status == "failed" and r.error.task_id == "bad"


class TestPipelineConcurrency:
    def test_max_concurrency_bounds_item_stages(self) -> None:
        """With items, max_concurrency bounds how many item-stages work at once."""
        active = [0]
        peak = [0]

        async def stage(x: int) -> int:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            await anyio.sleep(0.01)
            active[0] -= 1
            return x

        a, b = tl(stage, name="s1").stage(), tl(stage, name="s2").stage()
        r = run(a >> b, mode="pipeline", items=range(6), max_concurrency=1)
        assert r.output == list(range(6))
        assert peak[0] == 1
        active[0] = peak[0] = 0
        r = run(a >> b, mode="pipeline", items=range(6))
        assert peak[0] == 2  # without a bound both stages overlap


def test_result_gantt_writes_a_timeline(tmp_path: Any) -> None:
    """RunResult.gantt writes a self-contained HTML timeline of the run."""
    r = run(tl(lambda: 1)().named("a"))
    out = r.gantt(str(tmp_path / "run.html"))
    text = (tmp_path / "run.html").read_text()
    assert str(out).endswith("run.html")
    assert "<html" in text.lower() and "a" in text
