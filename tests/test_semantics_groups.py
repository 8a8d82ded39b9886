"""Groups (a Fragment or an embedded Flow with ``.when()``/``.with_options()``) where they meet
other features: nested calls, maps, timeouts, retries and their records (issue 20, bugs 1, 2,
3, 4, 8 and 10). Each test failed before its fix."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import MODES, run, tl

import flowdsl
from flowdsl import Backoff, CompositionError, Flow, TaskStatus, TaskTimeout

S = TaskStatus
BACKENDS = ["asyncio", "trio"]


class Calls:
    """Async tools that log their calls (name, argument) in order and fail on the calls
    asked for."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def count(self, name: str, x: Any = None) -> int:
        return sum(1 for n, v in self.log if n == name and (x is None or v == x))

    def tool(self, name: str, *, fail: Any = lambda n, x: False, seconds: Any = 0.0,
             **options: Any) -> Any:
        """A tool ``name(x=None)``: fails its n-th call (1-based, per argument) when
        ``fail(n, x)``, sleeps ``seconds`` (or ``seconds(x)``) first."""
        async def fn(x: Any = None) -> Any:
            with self.lock:
                self.log.append((name, x))
                n = self.count(name, x)
            delay = seconds(x) if callable(seconds) else seconds
            if delay:
                await anyio.sleep(delay)
            if fail(n, x):
                raise OSError(f"{name}({x!r}) failed on call {n}")
            return name if x is None else x

        return tl(fn, name=name, **options)


def _statuses(r: flowdsl.RunResult) -> dict[str, str]:
    return {k: v.status.value for k, v in r.tasks.items()}


def _no_task_running(r: flowdsl.RunResult) -> None:
    left = {k: v for k, v in _statuses(r).items() if v == "running"}
    assert not left, f"tasks left running: {left}"


# -- bug 1: a group's entry tasks, however it was written ----------------------------------

def _nested(c: Calls) -> Any:
    a, b, cc = c.tool("a"), c.tool("b"), c.tool("c")
    return cc(b(a()))


class TestGroupEntry:
    @pytest.mark.parametrize("mode", MODES)
    def test_nested_calls_start_after_the_tasks_before_the_group(self, mode: str) -> None:
        """`start >> Flow("g", c(b(a())))`: start links to g.a (the member with nothing
        before it inside the group), so nothing of g runs before start."""
        c = Calls()
        flow = c.tool("start")() >> Flow("g", _nested(c))
        p = flowdsl.plan(flow)
        assert p.predecessors["g.a"] == ("start",)
        assert p.predecessors["g.c"] == ("g.b",)
        r = run(flow, mode=mode)
        assert r.ok, r.error
        assert [n for n, _ in c.log] == ["start", "a", "b", "c"]

    @pytest.mark.parametrize("form", ["nested", "then", "par", "nested_flows", "mixed"])
    def test_entry_tasks_are_the_members_with_nothing_before_them(self, form: str) -> None:
        """The entry tasks of a unit are its members with no predecessor inside it, for
        every way of writing its body."""
        c = Calls()
        a, b, cc, d = (c.tool(n) for n in "abcd")
        body, entry = {
            "nested": (lambda: cc(b(a())), ("g.a",)),
            "then": (lambda: a() >> b() >> cc(), ("g.a",)),
            "par": (lambda: cc(b(a())) | d(), ("g.a", "g.d")),
            "nested_flows": (lambda: Flow("h", cc(b(a()))), ("g.h.a",)),
            "mixed": (lambda: (d() >> cc(b(a()))), ("g.d", "g.a")),
        }[form]
        unit = Flow("g", body()).when(lambda ctx: True)
        p = flowdsl.plan(c.tool("start")() >> unit)
        group, = [g for g in p.groups if g.unit.name == "g"]
        assert set(group.sources) == set(entry)
        assert all(p.predecessors[e] == ("start",) for e in entry)
        assert {m.rpartition(".")[2] for m in group.members} >= {"a", "b", "c"}

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_false_condition_skips_all_of_it(self, mode: str, backend: str) -> None:
        """`.when(False)` on `Flow("g", c(b(a())))` skips every task of it, none called."""
        c = Calls()
        unit = Flow("g", _nested(c)).when(lambda ctx: ctx.get("go"))
        r = run(c.tool("start")() >> unit, mode=mode, backend=backend)
        why = "group 'g' was skipped: its condition was false"
        assert {t: r.tasks[t].status for t in ("g.a", "g.b", "g.c")} == dict.fromkeys(
            ("g.a", "g.b", "g.c"), S.SKIPPED)
        assert all(r.tasks[t].reason == why for t in ("g.a", "g.b", "g.c"))
        assert [n for n, _ in c.log] == ["start"]
        r = run(c.tool("start")() >> unit, mode=mode, backend=backend, context={"go": 1})
        assert r.ok and [n for n, _ in c.log] == ["start", "start", "a", "b", "c"]

    @pytest.mark.parametrize("mode", MODES)
    def test_retries_cover_the_tasks_of_nested_calls(self, mode: str) -> None:
        """A retried `Flow("g", c(b(a())))` whose a fails once completes: a is inside it."""
        c = Calls()
        a = c.tool("a", fail=lambda n, x: n == 1)
        b, cc = c.tool("b"), c.tool("c")
        r = run(Flow("g", cc(b(a()))).with_options(retries=1), mode=mode)
        assert r.ok and r.errors == [], r.errors
        assert [n for n, _ in c.log] == ["a", "a", "b", "c"]
        assert [a.status for a in r.tasks["a"].attempts] == [S.FAILED, S.COMPLETED]

    def test_a_fragment_leaves_tasks_its_arguments_bring_outside(self) -> None:
        """A Fragment has no name to claim them: a task only an argument brings in stays an
        input of the group (the group starts once it is ready)."""
        c = Calls()
        other = c.tool("other")()
        right = c.tool("right")(other)
        p = flowdsl.plan(c.tool("src")() >> (c.tool("left")() | right).when(lambda ctx: True))
        assert p.groups[0].members == ("left", "right")
        assert set(p.groups[0].sources) == {"left", "right"}


# -- bug 2: a retried group over a map -----------------------------------------------------

def _flaky_map(c: Calls) -> Any:
    """Element 2 fails on its first call, after the others completed."""
    flaky = c.tool("flaky", fail=lambda n, x: x == 2 and n == 1,
                   seconds=lambda x: 0.05 if x == 2 else 0)
    return flaky.map([1, 2, 3])


class TestMapInARetriedGroup:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_only_the_children_that_did_not_complete_run_again(self, mode: str,
                                                               backend: str) -> None:
        """The retry runs element 2 again, not 1 and 3; the run completes with no error."""
        c = Calls()
        r = run(Flow("batch", _flaky_map(c)).with_options(retries=1), mode=mode,
                backend=backend)
        assert r.status == "completed" and r.ok, r.error
        assert r.error is None and r.errors == []
        assert r.output == [1, 2, 3]
        assert {x: c.count("flaky", x) for x in (1, 2, 3)} == {1: 1, 2: 2, 3: 1}
        kids = [r.tasks[f"flaky[{i}]"] for i in range(3)]
        assert [len(k.attempts) for k in kids] == [1, 2, 1]
        assert all(k.status is S.COMPLETED for k in kids)
        assert [a.status for a in kids[1].attempts] == [S.FAILED, S.COMPLETED]

    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    def test_a_downstream_member_reads_every_element(self, mode: str) -> None:
        """The member after the map gets the kept and the re-run outputs, in order."""
        c = Calls()
        total = tl(lambda xs: sum(xs), name="total")
        mapped = _flaky_map(c)
        r = run(Flow("batch", mapped >> total(mapped)).with_options(retries=2), mode=mode)
        assert r.ok, r.error
        assert r.output == 6


def test_a_retried_group_over_a_map_in_a_pipeline_over_items() -> None:
    """Per item, the retry runs only that item's failed child; the run completes."""
    c = Calls()
    flaky = c.tool("flaky", fail=lambda n, x: x % 10 == 2 and n == 1)
    expand = tl(lambda base: [base, base + 1, base + 2], name="expand").stage()
    flow = Flow("batch", expand >> flaky.map(expand)).with_options(retries=1)
    r = run(flow, mode="pipeline", items=[0, 10, 20])
    assert r.ok and r.errors == [], r.errors
    assert r.output == [[0, 1, 2], [10, 11, 12], [20, 21, 22]]
    assert sorted(x for _, x in c.log) == [0, 1, 2, 2, 10, 11, 12, 12, 20, 21, 22, 22]
    assert [len(r.tasks[f"flaky[{i}]"].attempts) for i in range(3)] == [3, 3, 6]


# -- bug 3: a group timeout over a map -----------------------------------------------------

class TestGroupTimeoutOverAMap:
    @pytest.mark.parametrize("mode", MODES)
    def test_cut_off_children_time_out_and_the_run_fails(self, mode: str) -> None:
        """The children cut off, and those that could not start, end timed out, and so does
        the mapped task; the run is not ok and its error is the group's TaskTimeout."""
        c = Calls()
        slow = c.tool("slow", seconds=lambda x: x)
        after = c.tool("after")
        flow = Flow("g", slow.map([0.05, 0.5, 1.0])).with_options(timeout=0.2) >> after()
        t0 = time.perf_counter()
        r = run(flow, mode=mode)
        assert time.perf_counter() - t0 < 3  # the 1s child did not run to its end
        assert not r.ok and r.status == "failed"
        assert isinstance(r.error, TaskTimeout) and r.error.kind == "group"
        assert r.tasks["g.slow[0]"].status is S.COMPLETED
        for t in ("g.slow", "g.slow[1]", "g.slow[2]"):
            rec = r.tasks[t]
            assert rec.status is S.TIMED_OUT, (t, rec.status)
            assert "group 'g' ran past its 0.2s timeout" in rec.error.message
        assert r.tasks["after"].status is S.PENDING  # fail-fast: it never starts
        assert c.count("after") == 0
        _no_task_running(r)

    def test_continue_on_error_marks_what_follows_upstream_failed(self) -> None:
        """With continue_on_error the task after the group is upstream_failed, and the
        run still fails."""
        slow = Calls().tool("slow", seconds=lambda x: x)
        flow = (Flow("g", slow.map([0.05, 0.5])).with_options(timeout=0.2)
                >> tl(lambda: 1, name="after")())
        r = run(flow, mode="parallel", continue_on_error=True)
        assert r.status == "failed" and not r.ok
        assert r.tasks["after"].status is S.UPSTREAM_FAILED
        assert r.tasks["g.slow[1]"].status is S.TIMED_OUT
        assert r.tasks["g.slow[1]"].error.message == (
            "task 'g.slow[1]' was cut off: group 'g' ran past its 0.2s timeout")

    def test_children_that_could_not_start_say_so(self) -> None:
        """In sequential mode the last child never starts: it is timed out too, with the
        reason it could not start."""
        slow = Calls().tool("slow", seconds=lambda x: x)
        r = run(Flow("g", slow.map([0.5, 0.5])).with_options(timeout=0.2), mode="sequential")
        assert r.tasks["slow[1]"].status is S.TIMED_OUT
        assert r.tasks["slow[1]"].error.message == (
            "task 'slow[1]' could not start: group 'g' ran past its 0.2s timeout")

    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    def test_a_retried_timed_group_runs_only_the_cut_off_children_again(self,
                                                                          mode: str) -> None:
        """Timeout and retries together: the children cut off run again under a fresh
        clock; the one that completed is kept."""
        c = Calls()
        slow = c.tool("slow", seconds=lambda x: 5 if x == 2 and c.count("slow", 2) == 1
                      else 0.01)
        r = run(Flow("g", slow.map([1, 2])).with_options(timeout=0.3, retries=1), mode=mode)
        assert r.ok and r.errors == [], r.errors
        assert {x: c.count("slow", x) for x in (1, 2)} == {1: 1, 2: 2}
        assert [a.status for a in r.tasks["slow[1]"].attempts] == [S.TIMED_OUT,
                                                                    S.COMPLETED]


# -- bug 4: every call is an attempt on its record -----------------------------------------

class TestAttemptsAreCalls:
    @pytest.mark.parametrize("mode", MODES)
    def test_each_group_retry_is_an_attempt(self, mode: str, tmp_path: Path) -> None:
        """A group retried 3 times calls its tool 4 times: its record, its error and its
        history rows show 4 attempts, numbered 1 to 4."""
        c = Calls()
        bad = c.tool("bad", fail=lambda n, x: True)
        r = flowdsl.run(Flow("g", bad()).with_options(retries=3), mode=mode,
                        history=tmp_path / "h.db")
        assert c.count("bad") == 4
        rec = r.tasks["bad"]
        assert [a.number for a in rec.attempts] == [1, 2, 3, 4]
        assert all(a.status is S.FAILED for a in rec.attempts)
        assert rec.status is S.FAILED and len(r.errors) == 1
        assert "after 4 attempt(s)" in str(r.error)
        assert rec.started_at == rec.attempts[0].started_at
        store = flowdsl.open_history(tmp_path / "h.db")
        assert store is not None
        row, = store.get_run(r.run_id)["tasks"]
        assert [a["number"] for a in row["attempts"]] == [1, 2, 3, 4]

    @pytest.mark.parametrize("mode", MODES)
    def test_task_retries_inside_group_retries(self, mode: str) -> None:
        """Task retries and group retries multiply; every call is on the record."""
        c = Calls()
        bad = c.tool("bad", fail=lambda n, x: True, retries=1, backoff=0)
        r = run(Flow("g", c.tool("ok")() >> bad()).with_options(retries=2), mode=mode)
        assert c.count("bad") == 6 and c.count("ok") == 1
        assert len(r.tasks["bad"].attempts) == 6
        assert len(r.tasks["ok"].attempts) == 1

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_no_child_is_left_running(self, mode: str, backend: str) -> None:
        """The children of a map in a retried group that finally fails are final, each
        with one attempt per call made."""
        c = Calls()
        bad = c.tool("bad", fail=lambda n, x: True)
        r = run(Flow("g", bad.map([1, 2, 3])).with_options(retries=2), mode=mode,
                backend=backend)
        assert r.status == "failed"
        _no_task_running(r)
        assert r.tasks["bad"].status is S.FAILED
        for i, x in enumerate([1, 2, 3]):
            kid = r.tasks[f"bad[{i}]"]
            assert len(kid.attempts) == c.count("bad", x), (kid.id, kid.attempts)
            assert kid.status in (S.FAILED, S.CANCELLED)
        assert r.tasks["bad[0]"].status is S.FAILED and c.count("bad", 1) == 3

    @pytest.mark.parametrize("mode", MODES)
    def test_calls_equal_attempts_across_shapes(self, mode: str) -> None:
        """A group mixing a flaky task, a map and a downstream task, retried: the attempts
        on the records add up to the calls made, and nothing is left running."""
        c = Calls()
        first = c.tool("first", fail=lambda n, x: n <= 2)()
        m = c.tool("m", fail=lambda n, x: x == 1 and n == 1).map([0, 1, 2])
        last = c.tool("last")(m)
        r = run(Flow("g", first >> m >> last).with_options(retries=3), mode=mode)
        assert r.ok, r.error
        calls = len(c.log)
        attempts = sum(len(rec.attempts) for rec in r.tasks.values())
        assert attempts == calls == 3 + 4 + 1
        _no_task_running(r)


# -- bug 8: a group conditioned on its own member ------------------------------------------

class TestConditionOnOwnMember:
    def test_refused_when_composed(self) -> None:
        """`Flow("g", a >> b).when(on=a, ...)` is refused at once, naming the group and
        the member."""
        c = Calls()
        a = c.tool("a")().named("a")
        b = c.tool("b")().named("b")
        with pytest.raises(CompositionError, match=r"group 'g' is conditioned on its own "
                                                   r"member 'a'"):
            Flow("g", a >> b).when(on=a, equals="a")
        with pytest.raises(CompositionError, match="its own member 'a'"):
            (a >> b).with_options(name="f").when(lambda v: v, on=a["k"])

    def test_a_member_an_argument_brings_in_is_refused_at_planning(self) -> None:
        """Inside a Flow, a task only an argument refers to is a member too: refused when
        the flow is planned; composed before the group, it is an input and allowed."""
        c = Calls()
        x = c.tool("x")()
        y = c.tool("y")(x)
        unit = Flow("g", y).when(on=x, equals="x")
        with pytest.raises(CompositionError, match=r"its own member 'g\.x'"):
            flowdsl.plan(c.tool("before")() >> unit)
        r = run(x >> unit)
        assert r.ok and r.tasks["g.y"].status is S.COMPLETED


# -- bug 10: a group's backoff; Flow(..., retries=) ----------------------------------------

class TestGroupBackoff:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("backoff", [0.2, Backoff(initial=0.2), {"initial": 0.2}])
    def test_retries_wait_out_the_backoff(self, mode: str, backoff: Any) -> None:
        """`.with_options(retries=2, backoff=...)` waits before each re-run: 0.2s then
        0.4s (the task's exponential Backoff)."""
        c = Calls()
        bad = c.tool("bad", fail=lambda n, x: n <= 2)
        r = run(Flow("g", bad()).with_options(retries=2, backoff=backoff), mode=mode)
        assert r.ok, r.error
        a1, a2, a3 = r.tasks["bad"].attempts
        assert a2.started_at - a1.ended_at >= 0.19
        assert a3.started_at - a2.ended_at >= 0.39

    def test_a_bad_backoff_is_refused_naming_the_group(self) -> None:
        with pytest.raises(CompositionError, match=r"group 'g': option backoff=-1"):
            Flow("g", Calls().tool("a")()).with_options(retries=1, backoff=-1)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_stop_during_the_backoff_cancels_the_failed_part(self, backend: str) -> None:
        """The run stops while the group waits to retry: its failed member ends cancelled
        with that reason, at once; the run's error is the failure that stopped it."""
        c = Calls()
        flaky = c.tool("flaky", fail=lambda n, x: n == 1)
        boom = c.tool("boom", fail=lambda n, x: True, seconds=0.1)
        group = Flow("g", flaky().named("flaky")).with_options(retries=1, backoff=10)
        t0 = time.perf_counter()
        r = run(group | boom(), mode="parallel", backend=backend)
        assert time.perf_counter() - t0 < 5
        rec = r.tasks["flaky"]
        assert rec.status is S.CANCELLED
        assert rec.reason == "the run stopped while it waited to retry with group 'g'"
        assert [a.status for a in rec.attempts] == [S.FAILED]
        assert [e.task_id for e in r.errors] == ["boom"]  # type: ignore[attr-defined]
        _no_task_running(r)

    def test_flow_options_point_to_with_options(self) -> None:
        """`Flow("t", x, retries=3)` is refused with the advice to use .with_options()."""
        x = Calls().tool("x")()
        with pytest.raises(CompositionError, match=r"\.with_options\(retries=3\)") as err:
            Flow("t", x, retries=3)  # type: ignore[call-overload]
        assert isinstance(err.value, TypeError)
        with pytest.raises(CompositionError, match=r"\.with_options\(timeout=5, retries=1\)"):
            Flow("t", x, timeout=5, retries=1)  # type: ignore[call-overload]


# -- the group-retry rule and rollback -----------------------------------------------------

class TestRetriedGroupRollback:
    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    def test_kept_members_are_rolled_back_only_when_the_run_fails(self, mode: str) -> None:
        """Completed members are kept, not rolled back, between attempts; when the last
        attempt fails too, each completion is rolled back once, at the end of the run."""
        c = Calls()
        undone: list[Any] = []
        keep = c.tool("keep", rollback=lambda out: undone.append((out, len(c.log))))
        m = c.tool("m", fail=lambda n, x: x == 2,
                   rollback=lambda out: undone.append((out, len(c.log)))).map([1, 2])
        r = run(Flow("g", keep() >> m).with_options(retries=2), mode=mode,
                rollback_on_failure=True)
        assert r.status == "rolled_back"
        assert [n for n, _ in c.log].count("keep") == 1 and c.count("m", 1) == 1
        assert c.count("m", 2) == 3
        # Both rollbacks ran after every call had been made (the run's end), once each.
        assert sorted(str(u) for u, _ in undone) == ["1", "keep"]
        assert all(at == len(c.log) for _, at in undone)

    def test_nothing_is_rolled_back_when_a_retry_mends_the_group(self) -> None:
        c = Calls()
        undone: list[Any] = []
        keep = c.tool("keep", rollback=undone.append)
        flaky = c.tool("flaky", fail=lambda n, x: n == 1)
        r = run(Flow("g", keep() >> flaky()).with_options(retries=1),
                rollback_on_failure=True)
        assert r.ok and undone == []


def test_a_member_waiting_for_its_pool_is_cut_off() -> None:
    """A member still waiting for its pool when the group's time is up is cut off too,
    never called (the same message as the member holding the pool)."""
    c = Calls()
    hold = c.tool("hold", seconds=5, resources={"db": 1})().named("hold")
    wait = c.tool("wait", resources={"db": 1})().named("wait")
    r = run(Flow("g", hold | wait).with_options(timeout=0.2), mode="parallel",
            resources={"db": 1}, continue_on_error=True)
    assert {t: r.tasks[t].status for t in ("hold", "wait")} == dict.fromkeys(
        ("hold", "wait"), S.TIMED_OUT)
    assert r.tasks["hold"].error.message.startswith("task 'hold' was cut off")
    assert r.tasks["wait"].error.message.startswith("task 'wait' was cut off")
    assert r.tasks["wait"].attempts == []
    assert c.count("wait") == 0


class TestThreadTools:
    """The same rules for sync tools on the thread executor (real threads, real time)."""

    def test_a_retried_group_over_a_map(self) -> None:
        calls: list[int] = []
        lock = threading.Lock()

        def flaky(x: int) -> int:
            with lock:
                calls.append(x)
                n = calls.count(x)
            if x == 2 and n == 1:
                time.sleep(0.05)
                raise OSError("once")
            return x

        tool = tl(flaky, executor="thread")
        r = run(Flow("batch", tool.map([1, 2, 3])).with_options(retries=1), mode="parallel")
        assert r.ok and r.errors == [] and r.output == [1, 2, 3]
        assert sorted(calls) == [1, 2, 2, 3]
        assert [len(r.tasks[f"flaky[{i}]"].attempts) for i in range(3)] == [1, 2, 1]

    def test_a_group_timeout_over_a_map(self) -> None:
        def slow(x: float) -> float:
            time.sleep(x)
            return x

        tool = tl(slow, executor="thread")
        r = run(Flow("g", tool.map([0.01, 0.6])).with_options(timeout=0.2), mode="parallel")
        assert not r.ok and r.status == "failed"
        assert r.tasks["slow[0]"].status is S.COMPLETED
        assert r.tasks["slow[1]"].status is S.TIMED_OUT
        assert r.tasks["slow"].status is S.TIMED_OUT
        _no_task_running(r)


class TestGroupTimeoutDuringBackoff:
    @pytest.mark.parametrize("mode", MODES)
    def test_cut_off_while_waiting_to_retry(self, mode: str) -> None:
        """A member waiting out its own backoff when its group's timeout passes ends
        ``timed_out`` (it used to raise KeyError out of run()), and the attempt that had
        already failed keeps its own outcome: only an attempt cut off in flight is
        recorded timed out."""
        c = Calls()
        bad = c.tool("bad", fail=lambda n, x: True, retries=3, backoff=1)
        r = run(Flow("g", bad()).with_options(timeout=0.2), mode=mode)
        rec = r.tasks["bad"]
        assert c.count("bad") == 1
        assert rec.status is S.TIMED_OUT and not r.ok
        assert [a.status for a in rec.attempts] == [S.FAILED]
        assert rec.attempts[0].error is not None and rec.attempts[0].error.type == "OSError"
        assert "group 'g' ran past its 0.2s timeout" in str(r.error)


# -- S36: the cache and a group's retry ----------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_member_run_again_by_its_group_finds_its_own_entry(backend: str,
                                                              tmp_path: Path) -> None:
    """S36, S30: `p >> m` in a retried group, p failing once, m (cached, all_done) taking
    nothing from p. Attempt 1 calls m; attempt 2 runs m again (downstream of p) and finds
    the entry its own call stored: m ends cached, with its one call kept as its attempt
    and its start that of that attempt (it was reset to the lookup's), saying why."""
    c = Calls()
    p = c.tool("p", fail=lambda n, x: n == 1, seconds=0.05)
    m = c.tool("m", cache=True, seconds=0.01)
    group = Flow("g", p() >> m().with_options(trigger="all_done")).with_options(retries=1)
    store = flowdsl.CacheStore(tmp_path / "cache.db")
    try:
        r = run(group, backend=backend, cache=store)
    finally:
        store.close()
    assert r.ok, r.error
    assert c.count("m") == 1 and c.count("p") == 2
    rec = r.tasks["m"]
    assert rec.status is S.CACHED
    assert [a.status for a in rec.attempts] == [S.COMPLETED]
    assert rec.started_at == rec.attempts[0].started_at
    assert rec.started_at < r.tasks["p"].attempts[1].started_at
    assert rec.reason == "output of its own call in an earlier attempt of its group"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_group_retry_leaves_the_clock_of_a_group_beside_it(backend: str) -> None:
    """S29, S30: a retry of group r starts the clocks of r and the groups inside it over,
    no other. Timed group t (`a >> b`, 0.5 s) runs beside r, whose member fails once at
    0.1 s: b, started at 0.3 s, is still cut off at 0.5 s. (A retry used to reset every
    group's clock, so b got a fresh 0.5 s and completed; found by the differential test.)"""
    c = Calls()
    timed = Flow("t", c.tool("a", seconds=0.3)() >> c.tool("b", seconds=0.3)()
                 ).with_options(timeout=0.5)
    retried = Flow("r", c.tool("f", fail=lambda n, x: n == 1, seconds=0.1)()
                   ).with_options(retries=1)
    r = run(flowdsl.parallel(timed, retried), backend=backend, continue_on_error=True)
    assert r.tasks["r.f"].status is S.COMPLETED
    assert r.tasks["t.a"].status is S.COMPLETED
    assert r.tasks["t.b"].status is S.TIMED_OUT, r.tasks["t.b"]
    assert not r.ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reset_child_the_stop_left_unstarted_is_pending(backend: str) -> None:
    """S30: a mapped member's child cut off by its group's timeout (could not start) and
    reset for the group's next attempt, which the run stops before it starts, is pending:
    not the timed_out of the attempt before (the reference said so; the engine is right)."""
    c = Calls()
    slow = c.tool("slow", seconds=lambda x: 0.3 if x == 0 else 0.01)
    group = Flow("g", slow.map([0, 1]).with_options(max_parallel=1)).with_options(
        timeout=0.1, retries=2)
    stop = c.tool("stop", fail=lambda n, x: True, seconds=0.25)()
    r = run(flowdsl.parallel(group, stop), backend=backend)
    assert r.tasks["stop"].status is S.FAILED
    kid = r.tasks["g.slow[1]"]
    assert kid.status is S.PENDING and kid.attempts == [], kid
    assert r.tasks["g.slow[0]"].status is S.CANCELLED
    assert c.count("slow", 1) == 0


def test_a_reset_member_is_rolled_back_with_its_calls_output() -> None:
    """S37, S30: b (one_failed) completes in the group's first attempt, is reset for the
    second, and the run stops (a fails again) before it runs again: its rollback still gets
    what its call returned. (It got None: the reset had dropped the output.)"""
    undone: list[Any] = []
    c = Calls()
    a = c.tool("a", fail=lambda n, x: True, seconds=0.02)
    b = c.tool("b", rollback=undone.append)
    flow = Flow("g", a() >> c.tool("mid")() >> b("out").with_options(trigger="one_failed")
                ).with_options(retries=1)
    r = run(flow, rollback_on_failure=True)
    assert c.count("a") == 2 and c.count("b") == 1
    assert undone == ["out"]
    assert r.tasks["b"].status is S.ROLLED_BACK and r.status == "rolled_back"
