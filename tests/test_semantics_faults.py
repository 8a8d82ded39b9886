"""Issue 20, where features meet: what flowdsl reports must be what happened.

Regression tests for: a task waiting out its retry backoff when the run stops (item 5), two
sync tools failing at the same moment (item 6), a switch that matches no case and a task
shared by two cases (item 7), map children's ids, resume of a map, generators given to map
and a process tool's forked grandchild (item 9)."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import run, tl

import flowdsl
from flowdsl import TaskStatus, open_history

S = TaskStatus


# -- 5: a task waiting to retry when the run stops ------------------------------------------
@tl
async def fails_soon() -> None:
    await anyio.sleep(0.05)
    raise ValueError("boom")


@tl(retries=3, backoff=30.0)
async def retried_slowly() -> None:
    raise RuntimeError("flaky")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", ["parallel", "conditional"])
def test_waiting_to_retry_ends_cancelled_everywhere(tmp_path: Path, backend: str,
                                                    mode: str) -> None:
    """The retried task is in its 30 s backoff when its sibling fails: it ends cancelled
    with that reason, in the result and in the history rows, and the run does not wait."""
    hist = tmp_path / "h.db"
    t0 = time.monotonic()
    r = run(fails_soon() | retried_slowly(), mode=mode, backend=backend, history=hist,
            max_concurrency=2)
    assert time.monotonic() - t0 < 10
    assert not r.ok and r.status == "failed"
    rec = r.tasks["retried_slowly"]
    assert rec.status is S.CANCELLED
    assert rec.reason == ("cancelled while waiting to retry: the run stopped after "
                          "'fails_soon' failed")
    assert len(rec.attempts) == 1 and rec.attempts[0].status is S.FAILED
    assert [e.task_id for e in r.errors] == ["fails_soon"]  # type: ignore[attr-defined]
    with open_history(hist) as store:
        rows = {t["task_id"]: t for t in store.get_run(r.run_id)["tasks"]}
    assert rows["retried_slowly"]["status"] == "cancelled"
    assert rows["retried_slowly"]["reason"] == rec.reason
    assert rows["fails_soon"]["status"] == "failed"


@tl(retries=3, backoff=30.0, retry_on=RuntimeError)
async def child(x: int) -> int:
    if x == 0:
        raise RuntimeError("retry me")
    await anyio.sleep(0.05)
    raise ValueError(f"child {x} failed")


def test_map_child_waiting_to_retry_ends_cancelled() -> None:
    """A map child in its backoff when a sibling fails ends cancelled, naming the sibling."""
    r = run(child.map([0, 1]), mode="parallel")
    assert not r.ok
    rec = r.tasks["child[0]"]
    assert rec.status is S.CANCELLED
    assert rec.reason == "cancelled while waiting to retry: a sibling, 'child[1]', failed"
    assert r.tasks["child[1]"].status is S.FAILED
    assert not [t for t in r.tasks.values() if t.status is S.RUNNING]


def test_pipeline_item_waiting_to_retry_ends_cancelled() -> None:
    """In a pipeline, item 0 waits to retry in the second stage when item 1 fails in the
    first: item 0's record ends cancelled, not running."""

    @tl
    async def first(x: int) -> int:
        if x == 1:
            await anyio.sleep(0.05)
            raise ValueError("item 1 failed")
        return x

    @tl(retries=2, backoff=30.0)
    async def second(x: int) -> int:
        raise RuntimeError("retry me")

    t0 = time.monotonic()
    r = run(first.stage() >> second.stage(), mode="pipeline", items=[0, 1])
    assert time.monotonic() - t0 < 10
    assert not r.ok
    rec = r.tasks["second"]
    assert rec.status is S.CANCELLED
    assert rec.reason == ("cancelled while waiting to retry: the run stopped after "
                          "'first' failed")


# -- 6: two sync tools failing at the same moment -------------------------------------------
class _Hold:
    """An observer that holds the event loop when task 'a' fails, until the other thread
    tool has raised too: the second failure then waits for the loop while the first one
    stops the run (the moment at which it used to be lost)."""

    def __init__(self, go: threading.Event, raised: threading.Event) -> None:
        self.go, self.raised = go, raised

    def run_started(self, result: Any, plan: Any) -> None:
        pass

    def task_started(self, result: Any, record: Any) -> None:
        pass

    def task_finished(self, result: Any, record: Any, output: Any) -> None:
        if record.id == "a":
            self.go.set()
            assert self.raised.wait(5)
            time.sleep(0.02)  # from the tool's finally to the pool's record: microseconds

    def run_finished(self, result: Any) -> None:
        pass


def _fail_together(backend: str) -> flowdsl.RunResult:
    go, raised = threading.Event(), threading.Event()

    @tl
    def a() -> None:
        raise ValueError("a")

    @tl
    def b() -> None:
        assert go.wait(5)
        try:
            raise ValueError("b")
        finally:
            raised.set()

    return run(a() | b(), mode="parallel", backend=backend, observers=[_Hold(go, raised)])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_simultaneous_thread_failures_are_all_recorded(backend: str) -> None:
    """Two thread tools fail at the same moment (the second raises while the engine handles
    the first, before the cancel reaches it): both end failed and both are in
    result.errors; the one already raised is not reported cancelled. 20 runs, all checked."""
    for _ in range(20):
        r = _fail_together(backend)
        statuses = {k: v.status for k, v in r.tasks.items()}
        assert statuses == {"a": S.FAILED, "b": S.FAILED}, statuses
        assert sorted(e.task_id for e in r.errors) == ["a", "b"]  # type: ignore[attr-defined]
        assert r.error is not None and r.error.task_id == "a"  # type: ignore[attr-defined]


# -- 7: a switch that matches no case; a task shared by two cases ---------------------------
MODES = ["sequential", "parallel", "pipeline", "conditional"]


def _route(value: str) -> Any:
    return tl(lambda: value, name="route")().named("route")


@pytest.mark.parametrize("mode", MODES)
def test_switch_without_match_or_default_fails(mode: str) -> None:
    """No case matches and no default: the switch fails (its first gate), naming the value
    and the cases; nothing of any case runs and the run is not ok."""
    route = _route("z")
    work = tl(lambda label: label, name="work")
    flow = route >> flowdsl.switch(route, {"a": work("A").named("A"),
                                           "b": work("B").named("B")})
    r = run(flow, mode=mode)
    assert not r.ok and r.status == "failed"
    assert r.tasks["switch['a']"].status is S.FAILED
    msg = str(r.error)
    assert "switch on 'route' matched no case: got 'z' (cases: 'a', 'b')" in msg
    assert "default=flowdsl.SKIP" in msg
    assert "A" not in r.outputs and "B" not in r.outputs


@pytest.mark.parametrize("mode", MODES)
def test_switch_default_skip_skips_every_case(mode: str) -> None:
    """default=flowdsl.SKIP: matching nothing skips every case on purpose; the run is ok."""
    route = _route("z")
    work = tl(lambda label: label, name="work")
    r = run(route >> flowdsl.switch(route, {"a": work("A").named("A")},
                                    default=flowdsl.SKIP), mode=mode)
    assert r.ok
    assert r.tasks["A"].status is S.SKIPPED
    assert r.tasks["A"].reason == "switch on 'route' matched no case (got 'z')"
    assert repr(flowdsl.SKIP) == "flowdsl.SKIP"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("choice", ["a", "b", "c"])
def test_task_shared_by_two_cases_runs_when_either_is_chosen(mode: str, choice: str) -> None:
    """One task given as the path of cases 'a' and 'b' runs when 'a' or 'b' is chosen,
    once; it is skipped (with the switch's reason) when 'c' is."""
    route = _route(choice)
    work = tl(lambda label: label, name="work")
    shared = work("AB").named("AB")
    r = run(route >> flowdsl.switch(route, {"a": shared, "b": shared,
                                            "c": work("C").named("C")}), mode=mode)
    assert r.ok, r.error
    if choice == "c":
        assert r.tasks["AB"].status is S.SKIPPED
        assert r.tasks["AB"].reason == "switch on 'route' chose 'c'"
        assert r.outputs["C"] == "C"
    else:
        assert r.tasks["AB"].status is S.COMPLETED and r.outputs["AB"] == "AB"
        assert len(r.tasks["AB"].attempts) == 1
        assert r.tasks["C"].status is S.SKIPPED
    assert r.tasks["switch['a', 'b']"].status is (
        S.SKIPPED if choice == "c" else S.COMPLETED)


# -- 9a: map children's ids never collide with a task's id ---------------------------------
@tl
def inc(x: int) -> int:
    return x + 1


@tl
def show(value: Any) -> Any:
    return value


def test_explicit_id_of_a_map_child_is_refused_at_plan_time() -> None:
    """An explicit id 'inc[0]' beside inc.map(...) would be overwritten by child 0 (and its
    reader would get the child's output): refused when planned, naming both and the fix."""
    flow = inc.map([10, 20]) | show(inc(100).named("inc[0]"))
    with pytest.raises(flowdsl.DuplicateTaskError,
                       match=r"task id 'inc\[0\]' is also the id of child 0 of mapped task "
                             r"'inc'.*\.named\(\)") as caught:
        flowdsl.plan(flow)
    assert caught.value.task_id == "inc[0]"
    with pytest.raises(flowdsl.DuplicateTaskError):
        run(flow)
    # Inside an embedded flow the children carry the prefix: the same check applies.
    with pytest.raises(flowdsl.DuplicateTaskError, match=r"'g\.inc'"):
        flowdsl.plan(show(0) >> flowdsl.Flow(
            "g", inc.map([1]) | show(inc(1).named("g.inc[0]"))))
    # Ids that only look alike are fine.
    ok = run(inc.map([10, 20]) | show(inc(100).named("inc[x]")) | inc(5).named("inc_0"))
    assert ok.ok and ok.outputs["inc"] == [11, 21] and ok.outputs["inc[x]"] == 101


def test_document_with_a_child_id_is_refused() -> None:
    """The same flow written as a document is refused the same way."""
    reg = flowdsl.ToolRegistry()
    reg.register(inc)
    reg.register(show)
    doc = {"name": "d", "tasks": [
        {"id": "inc", "tool": "inc", "map": [10, 20]},
        {"id": "inc[0]", "tool": "inc", "args": {"x": 100}},
        {"id": "reader", "tool": "show", "args": {"value": {"$task": "inc[0]"}}}]}
    with pytest.raises(flowdsl.PlanError, match=r"child 0 of mapped task 'inc'"):
        run(flowdsl.load_flow(doc, reg))


# -- 9c: a generator given to map -------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_generator_given_to_map_is_read_once_when_composed(mode: str) -> None:
    """A generator is materialized when the flow is composed: every run maps over the same
    elements (it used to be used up by the first run)."""
    flow = inc.map(x * 10 for x in range(3))
    assert run(flow, mode=mode).outputs["inc"] == [1, 11, 21]
    assert run(flow, mode=mode).outputs["inc"] == [1, 11, 21]

    @tl
    def add(x: int, y: int) -> int:
        return x + y

    zipped = add.map(iter([1, 2]), y=flowdsl.each(v for v in (10, 20)))
    assert run(zipped).outputs["add"] == [11, 22]
    assert run(zipped).outputs["add"] == [11, 22]


# -- 9d: a process tool's forked grandchild never answers for it -----------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_forked_grandchild_never_answers_for_a_process_tool(mode: str) -> None:
    """A process tool forks and the forked child returns: the task's output is the
    worker's own answer, every time (the child's answer used to be taken for it, and the
    child went on reading the worker's next call)."""
    import proc_tools

    flow = proc_tools.forks_and_returns.map([1, 2, 3])
    r = run(flow, mode=mode, max_concurrency=1)
    assert r.ok, r.error
    assert r.outputs["forks_and_returns"] == ["worker 1", "worker 2", "worker 3"]


# -- 9b: resume of a map runs only the children that did not finish -------------------------
class _Calls:
    """A mapped tool that records its calls and fails at one element, once the element
    before it returned (in parallel lanes the two run side by side: the one before would
    otherwise be cancelled, or not, as the threads happen to go)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail_at: int | None = None
        self.returned: collections.defaultdict[int, threading.Event] = (
            collections.defaultdict(threading.Event))

        @tl
        def work(x: int, scale: int = 2) -> int:
            self.calls.append(x)
            if x == self.fail_at:
                assert x == 0 or self.returned[x - 1].wait(10.0), f"{x - 1} never returned"
                raise ValueError(f"crash at {x}")
            self.returned[x].set()
            return x * scale

        self.tool = work


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_resume_runs_only_the_map_children_that_did_not_finish(tmp_path: Path,
                                                               mode: str) -> None:
    """A map of 10 fails at child 3 (its siblings cancelled or finished); the resume reuses
    every finished child (same index, same input) and runs only the rest. The flow is the
    map alone, so only children have stored outputs: that used to be refused."""
    w = _Calls()
    w.fail_at = 3
    flow = flowdsl.Flow("m", w.tool.map(list(range(10))).with_options(max_parallel=2))
    store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
    try:
        first = flowdsl.run(flow, history=store, mode=mode)
        assert not first.ok
        done = {int(k[5:-1]) for k, v in first.tasks.items()
                if v.parent == "work" and v.status is S.COMPLETED}
        assert done >= {0, 1, 2} and 3 not in done
        w.calls.clear()
        w.fail_at = None
        second = flowdsl.run(flow, history=store, mode=mode, resume=first.run_id)
        assert second.ok, second.error
        assert sorted(w.calls) == sorted(set(range(10)) - done)
        assert second.output == [x * 2 for x in range(10)]
        for i in done:
            rec = second.tasks[f"work[{i}]"]
            assert rec.status is S.COMPLETED
            assert rec.reason == f"reused from run {first.run_id}"
        # A resumed run can be resumed in turn: everything is reused then.
        w.calls.clear()
        third = flowdsl.run(flow, history=store, mode=mode, resume=second.run_id)
        assert third.output == second.output and w.calls == []
    finally:
        store.close()


def test_resume_reruns_a_child_whose_input_changed(tmp_path: Path) -> None:
    """A child is reused only if its input hashes the same: a changed element, or a changed
    broadcast argument, runs again under the same index."""
    w = _Calls()
    w.fail_at = 4
    store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
    try:
        first = flowdsl.run(w.tool.map([0, 1, 2, 3, 4]), history=store, mode="sequential")
        assert not first.ok and w.calls == [0, 1, 2, 3, 4]
        w.calls.clear()
        w.fail_at = None
        second = flowdsl.run(w.tool.map([0, 10, 2, 3, 4]), history=store,
                             mode="sequential", resume=first.run_id)
        assert second.output == [0, 20, 4, 6, 8]
        assert w.calls == [10, 4]
        w.calls.clear()
        other = flowdsl.run(w.tool.map([0, 1, 2, 3, 4], scale=3), history=store,
                            mode="sequential", resume=first.run_id)
        assert other.output == [0, 3, 6, 9, 12] and w.calls == [0, 1, 2, 3, 4]
    finally:
        store.close()


def test_resume_of_a_map_after_its_upstream(tmp_path: Path) -> None:
    """The map's upstream task is reused whole, its finished children one by one."""
    w = _Calls()
    w.fail_at = 2
    listing = tl(lambda: [0, 1, 2, 3], name="listing")().named("listing")
    store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
    try:
        first = flowdsl.run(listing >> w.tool.map(listing), history=store, mode="sequential")
        assert not first.ok
        w.calls.clear()
        w.fail_at = None
        second = flowdsl.run(listing >> w.tool.map(listing), history=store,
                             mode="sequential", resume=first.run_id)
        assert second.output == [0, 2, 4, 6] and w.calls == [2, 3]
        assert second.tasks["listing"].reason == f"reused from run {first.run_id}"
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_a_reused_member_run_again_by_its_group_is_called(tmp_path: Path, mode: str) -> None:
    """S38, S30: in a resumed run, a member reused from the earlier run that its group's
    retry runs again (it comes after a failed member) is called again, a mapped one with
    all its children: reuse happens where a node is first reached. (SEMANTICS.md left this
    open and the reference reused the children a second time; the engine calls them.)"""
    calls: list[Any] = []

    @tl
    def p() -> str:
        calls.append("p")
        if calls.count("p") <= 3:  # run 1: both group attempts; the resume: its first
            raise ValueError("p fails")
        return "p"

    @tl
    def m(x: int) -> int:
        calls.append(x)
        return x * 2

    flow = flowdsl.Flow("g", p() >> m.map([1, 2]).with_options(trigger="all_done")
                        ).with_options(retries=1)
    store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
    try:
        first = flowdsl.run(flow, history=store, mode=mode)
        assert not first.ok and first.tasks["m"].status is S.COMPLETED
        assert sorted(c for c in calls if c != "p") == [1, 1, 2, 2]
        calls.clear()
        calls.extend(["p"] * 2)  # p's calls go on counting
        second = flowdsl.run(flow, history=store, mode=mode, resume=first.run_id)
    finally:
        store.close()
    assert second.ok, second.error
    assert sorted(c for c in calls if c != "p") == [1, 2]  # the retry called both
    assert second.outputs["m"] == [2, 4]
    for i in (0, 1):
        kid = second.tasks[f"m[{i}]"]
        assert kid.status is S.COMPLETED and len(kid.attempts) == 1, kid
