"""A whole sub-flow mapped per element (issue 27, part 2): ``Flow("per_item", a >> b).map(xs)``
and ``(a >> b).map(xs)``. Each element runs the steps as its own chain, depth-first; children
are named ``per_item[i].task`` with their own records; the sub-flow's when/timeout/retries apply
per element; the output is the list of the elements' outputs in input order; ``max_parallel``
bounds the elements in flight; a failed element fails the mapped node (SEMANTICS.md S49-S52;
the differential test draws them too). In every mode; on Dask in tests/test_dask.py."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from support import MODES, run, tl

import flowdsl
from flowdsl import CompositionError, Flow, TaskStatus, unmapped
from flowdsl._run.core import loop

S = TaskStatus


@tl
def found(n: int = 3) -> list[str]:
    return [f"u{i}" for i in range(n)]


@tl
async def fetch(url: str, lang: str = "en") -> str:
    return f"{url}:{lang}"


@tl
async def parse(text: str) -> int:
    return len(text)


@tl
async def store(n: int) -> str:
    return f"stored {n}"


@tl
def total(xs: list[Any]) -> list[Any]:
    return list(xs)


def per_item() -> Flow[Any]:
    return Flow("per_item", fetch >> parse >> store)


@pytest.mark.parametrize("mode", MODES)
def test_output_is_the_elements_outputs_in_order_and_children_are_named(mode: str) -> None:
    r = run(Flow("f", per_item().map(found(3))), mode=mode)
    assert r.status.value == "completed", r.error
    assert r.output == ["stored 5", "stored 5", "stored 5"]
    kids = [t for t in r.tasks if t.startswith("per_item[")]
    assert kids == [f"per_item[{i}].{s}" for i in range(3) for s in ("fetch", "parse", "store")]
    for k in kids:
        rec = r.tasks[k]
        assert rec.status is S.COMPLETED
        assert rec.parent == "per_item"
        assert len(rec.attempts) == 1
    assert r.tasks["per_item[2].fetch"].tool == "fetch"


@pytest.mark.parametrize("mode", MODES)
def test_fragment_and_named_form(mode: str) -> None:
    m = (fetch >> parse).map(url=found(2), lang="de")
    r = run(Flow("f", m >> total(m)), mode=mode)
    assert r.status.value == "completed", r.error
    assert r.outputs[r.id_of(m)] == [len("u0:de"), len("u1:de")]
    assert "fetch_parse[1].parse" in r.tasks
    m2 = (fetch >> parse).map(url=["a", "bb"], lang=unmapped("xy"))
    assert run(m2, mode=mode).output == [4, 5]


@pytest.mark.parametrize("mode", MODES)
def test_empty_list_gives_an_empty_output(mode: str) -> None:
    r = run(per_item().map([]), mode=mode)
    assert r.status.value == "completed"
    assert r.output == []


def test_pipeline_items_each_map_their_own_list() -> None:
    @tl
    def upto(n: int) -> list[int]:
        return list(range(n))

    @tl
    async def dbl(x: int) -> int:
        return 2 * x

    @tl
    def tot(xs: list[int]) -> int:
        return sum(xs)

    a = upto.stage()
    m = Flow("per", dbl >> dbl.stage().named("again")).map(a)
    r = run(Flow("p", a >> m >> tot(m)), mode="pipeline", items=[3, 1, 2])
    assert r.status.value == "completed", r.error
    assert r.output == [12, 0, 4]
    assert r.tasks["per[2].again"].item_count == 1  # only the first item had a third element
    assert r.tasks["per[0].again"].item_count == 3
    b = upto.stage()
    inner = Flow("outer", b >> inc.map(b).named("m")).map(a)
    r = run(Flow("p", a >> inner), mode="pipeline", items=[2])
    assert r.output == [[[], [1]]]
    assert r.tasks["outer[1].m[0]"].status is S.COMPLETED  # a child's children are listed


def test_a_downstream_task_gets_the_list() -> None:
    m = per_item().map(found(2))
    r = run(m >> total(m))
    assert r.output == ["stored 5", "stored 5"]


def _times(r: Any, i: int, step: str) -> tuple[float, float]:
    rec = r.tasks[f"per_item[{i}].{step}"]
    return rec.started_at, rec.ended_at


@tl
async def slow(x: Any) -> Any:
    await anyio.sleep(0.02)
    return x


def test_depth_first_one_element_in_flight() -> None:
    """With one element in flight, element i's last step ends before element i+1's first
    starts: each element runs its whole chain (not one step for every element at a time)."""
    flow = Flow("per_item", slow.stage() >> slow.stage().named("b") >> slow.stage().named("c"))
    r = run(flow.map(list(range(4))).with_options(max_parallel=1), mode="parallel")
    assert r.output == [0, 1, 2, 3]
    for i in range(3):
        assert r.tasks[f"per_item[{i}].c"].ended_at <= r.tasks[f"per_item[{i + 1}].slow"].started_at


@pytest.mark.parametrize("mode", ["sequential", "parallel", "conditional"])
def test_first_element_done_long_before_the_last_starts_its_last_step(mode: str) -> None:
    """Depth-first: element 0 is stored before the last element's last step starts (chained
    maps would run every element's first step before any second step)."""
    flow = Flow("per_item", slow.stage() >> slow.stage().named("b") >> slow.stage().named("c"))
    r = run(flow.map(list(range(6))).with_options(max_parallel=2), mode=mode,
            max_concurrency=2)
    first_done = r.tasks["per_item[0].c"].ended_at
    assert first_done < r.tasks["per_item[5].slow"].started_at


def test_max_parallel_bounds_the_elements_in_flight() -> None:
    now = {"n": 0, "most": 0}

    @tl
    async def enter(x: int) -> int:
        now["n"] += 1
        now["most"] = max(now["most"], now["n"])
        await anyio.sleep(0.01)
        return x

    @tl
    async def leave(x: int) -> int:
        await anyio.sleep(0.01)
        now["n"] -= 1
        return x

    r = run(Flow("e", enter >> leave).map(list(range(8))).with_options(max_parallel=3),
            mode="parallel")
    assert r.output == list(range(8))
    assert now["most"] == 3


def test_per_element_retries() -> None:
    calls: dict[Any, int] = {}

    @tl
    async def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if calls[x] == 1:
            raise ValueError(f"first try of {x}")
        return x * 10

    flow = Flow("per_item", flaky.stage().named("f") >> store.stage()).with_options(retries=1)
    r = run(Flow("w", flow.map([1, 2])))
    assert r.status.value == "completed", r.error
    assert r.output == ["stored 10", "stored 20"]
    assert calls == {1: 2, 2: 2}
    assert [a.status for a in r.tasks["per_item[0].f"].attempts] == [S.FAILED, S.COMPLETED]
    assert r.errors == []


def test_per_element_timeout() -> None:
    @tl
    async def nap(x: float) -> float:
        await anyio.sleep(x)
        return x

    flow = Flow("per_item", nap.stage() >> nap.stage().named("again")).with_options(timeout=0.1)
    r = run(flow.map([0.01, 0.3, 0.01]), continue_on_error=True)
    assert r.status.value == "failed"
    assert r.tasks["per_item[0].again"].status is S.COMPLETED
    assert r.tasks["per_item[1].nap"].status is S.TIMED_OUT
    assert r.tasks["per_item[2].again"].status is S.COMPLETED  # each element its own clock
    assert r.tasks["per_item"].status is S.FAILED
    assert "per_item[1].nap" in str(r.tasks["per_item"].error.message)


def test_per_element_when_skips_every_element() -> None:
    flow = per_item().when(lambda c: c.get("go", False))
    r = run(flow.map(found(2)))
    assert r.status.value == "completed"
    assert r.output == [None, None]
    assert r.tasks["per_item[1].store"].status is S.SKIPPED
    r2 = run(flow.map(found(2)), context={"go": True})
    assert r2.output == ["stored 5", "stored 5"]


@tl
async def picky(url: str) -> str:
    if url == "u1":
        raise ValueError("bad url")
    await anyio.sleep(0.05)
    return url


@pytest.mark.parametrize("mode", ["sequential", "parallel", "conditional"])
def test_a_failed_element_fails_the_mapped_node(mode: str) -> None:
    flow = Flow("per_item", picky >> parse)
    m = flow.map(found(4))
    r = run(Flow("f", m >> total(m)), mode=mode)
    assert r.status.value == "failed"
    node = r.tasks["per_item"]
    assert node.status is S.FAILED
    assert "1 of 4 elements failed" in node.error.message
    assert "'per_item[1].picky'" in node.error.message
    assert r.tasks["per_item[1].picky"].status is S.FAILED
    assert r.tasks["per_item[1].parse"].status is S.UPSTREAM_FAILED
    assert r.tasks["total"].status is S.PENDING  # the run stopped (fail fast)
    # the siblings not yet done are cancelled (running) or never started (recorded cancelled)
    assert r.tasks["per_item[3].parse"].status is S.CANCELLED
    for k, rec in r.tasks.items():
        assert k == "total" or rec.status is not S.PENDING, k


def test_continue_on_error_runs_every_element() -> None:
    r = run(Flow("per_item", picky >> parse).map(found(4)), continue_on_error=True)
    assert r.tasks["per_item"].status is S.FAILED
    assert [r.tasks[f"per_item[{i}].parse"].status for i in range(4)] == [
        S.COMPLETED, S.UPSTREAM_FAILED, S.COMPLETED, S.COMPLETED]


def test_max_children_and_run_time_errors() -> None:
    r = run(per_item().map(found(5)).with_options(max_children=3))
    assert r.status.value == "failed"
    assert "over its limit of 3" in r.tasks["per_item"].error.message
    r = run(per_item().map(found(1)[0]))  # not a list at run time
    assert r.status.value == "failed"
    assert "needs a list for its parameter 'url'" in r.tasks["per_item"].error.message
    two = Flow("two", fetch | parse)
    r = run(two.map(url=["a", "b"], text=["x"]))
    msg = r.tasks["two"].error.message
    assert "'text' has 1 elements but 'url' has 2" in msg


def test_composition_errors_name_the_flow_and_parameter() -> None:
    two = Flow("two", fetch | parse)
    with pytest.raises(CompositionError, match=r"sub-flow 'two' by position: it has 2 entry "
                       r"tasks .*'fetch' \(url, lang\), 'parse' \(text\).*\.map\(<param>="):
        two.map(["a"])
    with pytest.raises(CompositionError, match="no entry task has a parameter 'uri'"):
        per_item().map(uri=["a"])
    with pytest.raises(CompositionError, match="maps nothing"):
        per_item().map(lang="de")
    with pytest.raises(CompositionError, match="not both"):
        per_item().map(["a"], lang="de")
    with pytest.raises(CompositionError, match="no free parameter"):
        Flow("bound", fetch("x") >> parse).map(["a"])
    with pytest.raises(CompositionError, match="at most one positional"):
        per_item().map(["a"], ["b"])


def test_named_form_overrides_a_bound_parameter_of_every_entry() -> None:
    both = Flow("both", fetch("x") | fetch("y").named("g"))
    r = run(both.map(url=["a", "b"]))
    assert r.output == [{"fetch": "a:en", "g": "a:en"}, {"fetch": "b:en", "g": "b:en"}]


def test_elements_are_fed_by_the_loop() -> None:
    before = dict(loop.DRIVES)
    run(per_item().map(found(3)), mode="parallel")
    n = {k: loop.DRIVES[k] - before[k] for k in before}
    assert n == {"plan": 1, "group": 3, "map": 1}  # one drive per element's chain


def test_history_progress_and_timeline_see_every_child(tmp_path: Any) -> None:
    """Each element's steps are real tasks: history rows, log events (what progress lines
    show) and timeline bars for ``per_item[i].step``."""
    from support import capture_events

    from flowdsl._report.timeline import from_history, from_result

    store = flowdsl.HistoryStore(tmp_path / "h.db")
    try:
        with capture_events() as events:
            r = flowdsl.run(per_item().map(found(2)), history=store, log=True)
        stored = store.get_run(r.run_id)
    finally:
        store.close()
    assert r.status.value == "completed"
    kids = [f"per_item[{i}].{s}" for i in range(2) for s in ("fetch", "parse", "store")]
    rows = {t["task_id"]: t for t in stored["tasks"]}
    assert set(kids) <= set(rows)
    assert all(rows[k]["status"] == "completed" for k in kids)
    done = [e["task"] for e in events if e.get("event") == "task_completed"]
    assert set(kids) <= set(done)
    bars = {b.id for b in from_result(r).bars}
    assert set(kids) <= bars
    assert set(kids) <= {b.id for b in from_history(stored).bars}


def test_workflow_documents_refuse_it_clearly() -> None:
    from flowdsl._data.documents import flow_to_dict

    with pytest.raises(CompositionError, match=r"task 'per_item': it is a mapped sub-flow "
                       r"\(per_item\.map\(\.\.\.\).*cannot express"):
        flow_to_dict(Flow("f", per_item().map(["a"])))


def test_an_outer_retried_group_reruns_only_the_failed_elements() -> None:
    calls: dict[int, int] = {}

    @tl
    async def once(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 1 and calls[x] == 1:
            raise ValueError("once")
        return x

    m = Flow("per", once >> store).map([0, 1, 2])
    r = run(Flow("outer", Flow("g", m).with_options(retries=1)))
    assert r.status.value == "completed", r.error
    assert r.output == ["stored 0", "stored 1", "stored 2"]
    assert calls == {0: 1, 1: 2, 2: 1}  # the completed elements are kept
    assert r.errors == []


def test_an_outer_group_timeout_cuts_the_elements_off() -> None:
    @tl
    async def nap(x: float) -> float:
        await anyio.sleep(x)
        return x

    m = Flow("per", nap >> store).map([0.01, 0.5, 0.01])
    r = run(Flow("outer", Flow("g", m).with_options(timeout=0.2)), mode="sequential")
    assert r.status.value == "failed"
    st = {k: v.status for k, v in r.tasks.items()}
    assert st["g.per"] is S.TIMED_OUT
    assert st["g.per[0].store"] is S.COMPLETED
    assert st["g.per[1].nap"] is S.TIMED_OUT
    assert st["g.per[2].store"] is S.TIMED_OUT  # could not start


def test_task_options_on_the_mapped_node_are_refused() -> None:
    with pytest.raises(CompositionError, match=r"task 'per_item' is a mapped sub-flow: it "
                       r"takes max_parallel, max_children and trigger; retries belong"):
        per_item().map(["a"]).with_options(retries=2)


def test_rollback_reaches_the_steps() -> None:
    undone: list[Any] = []

    @tl(rollback=undone.append)
    async def make(x: str) -> str:
        return f"made {x}"

    @tl
    def boom(xs: list[Any]) -> None:
        raise RuntimeError("late failure")

    m = Flow("per", make >> parse).map(["a", "b"])
    r = run(Flow("f", m >> boom(m)), rollback_on_failure=True)
    assert r.status.value == "rolled_back"
    assert sorted(undone) == ["made a", "made b"]
    assert r.tasks["per[1].make"].status is S.ROLLED_BACK


def test_benchmark_runs_and_a_first_element_is_done_sooner() -> None:
    """benchmarks/subflow_bench.py at a small size: its figures are there, and the mapped
    sub-flow's first element is done before the chained maps' (depth-first)."""
    from benchmarks import subflow_bench

    f = subflow_bench.run(n=60, repeats=1, step_ms=10.0, width=20)
    assert f["subflow_first_done_s"] < f["chained_first_done_s"]
    assert {"subflow_vs_static", "chained_vs_static", "subflow_makespan_s"} <= set(f)


@tl
def upto(n: int) -> list[int]:
    return list(range(n))


@tl
async def inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_a_map_inside_a_mapped_sub_flow(mode: str) -> None:
    """A sub-flow's step may be a mapped task or a mapped sub-flow itself: its children are
    named under the element, and result.tasks lists them after their parent."""
    a = upto.stage()
    inner = Flow("inner", inc >> inc.stage().named("again"))
    r = run(Flow("outer", a >> inner.map(a)).map([1, 2]), mode=mode)
    assert r.status.value == "completed", r.error
    assert r.output == [[2], [2, 3]]
    assert list(r.tasks)[:5] == ["outer", "outer[0].upto", "outer[0].inner",
                                 "outer[0].inner[0].inc", "outer[0].inner[0].again"]
    b = upto.stage()
    r = run(Flow("outer", b >> inc.map(b).named("m")).map([2]), mode=mode)
    assert r.output == [[1, 2]]
    assert r.tasks["outer[0].m[1]"].parent == "outer[0].m"


def test_a_run_timeout_cancels_the_elements() -> None:
    @tl
    async def slow(x: int) -> int:
        await anyio.sleep(5)
        return x

    r = run(Flow("per", slow >> inc).map([1, 2, 3]), timeout=0.1)
    assert r.status.value == "timed_out"
    assert r.tasks["per"].status is S.CANCELLED
    assert {r.tasks[f"per[{i}].{s}"].status for i in range(3) for s in ("slow", "inc")} == {
        S.CANCELLED}


def test_steps_never_started_are_recorded_with_their_own_tool() -> None:
    r = run(Flow("per_item", picky >> parse).map(["u1", "u2", "u3"]).with_options(
        max_parallel=1))
    rec = r.tasks["per_item[2].parse"]
    assert rec.status is S.CANCELLED
    assert rec.tool == "parse"
    assert rec.started_at is None
    assert rec.reason == "not started: a sibling element, 'per_item[0]', failed"


def test_resume_reuses_a_completed_mapped_sub_flow_whole_and_reruns_an_unfinished_one(
        tmp_path: Any) -> None:
    """SEMANTICS S52: a resumed run reuses a completed mapped sub-flow (its output) whole,
    and runs every element of an unfinished one again (no per-element reuse yet)."""
    calls: list[str] = []
    fail = {"u1"}

    @tl
    async def get(url: str) -> str:
        calls.append(url)
        if url in fail:
            raise ValueError(url)
        return url.upper()

    @tl
    def src() -> list[str]:
        calls.append("src")
        return ["u0", "u1", "u2"]

    s = src()
    m = Flow("per", get >> parse).map(s)
    flow = Flow("f", s >> m)
    store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
    try:
        first = flowdsl.run(flow, history=store, continue_on_error=True)
        assert first.tasks["per"].status is S.FAILED
        calls.clear()
        fail.clear()
        second = flowdsl.run(flow, history=store, resume=first.run_id)
        assert second.ok, second.error
        assert second.output == [2, 2, 2]
        assert sorted(calls) == ["u0", "u1", "u2"]  # src reused, every element again
        calls.clear()
        third = flowdsl.run(flow, history=store, resume=second.run_id)
        assert third.output == [2, 2, 2] and calls == []
    finally:
        store.close()


def test_a_mapped_sub_flow_runs_as_cleanup_after_a_fail_fast_stop() -> None:
    """S39: a node whose trigger rule is one_failed runs after the stop; a mapped sub-flow's
    elements run then too (they were left pending)."""
    @tl
    def bad() -> None:
        raise RuntimeError("down")

    m = per_item().map(["a", "b"]).with_options(trigger="one_failed")
    r = run(Flow("f", bad() >> m))
    assert r.status.value == "failed"
    assert r.tasks["per_item"].status is S.COMPLETED
    assert r.outputs["per_item"] == ["stored 4", "stored 4"]
    assert r.tasks["per_item[1].store"].status is S.COMPLETED
