"""The one task-execution core: conditions, inputs, output mapping, retries, timeouts, errors
and events. Each behaviour is tested once here; test_runners checks that every mode agrees."""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import capture_events, run, tl

import flowdsl
from flowdsl import Backoff, Pools, RunFailed, TaskFailed, TaskStatus, TaskTimeout, ctx

S = TaskStatus


class Sleeps:
    """A fake ``sleep=``: records each backoff delay, takes no time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# -- conditions ------------------------------------------------------------------------------
class TestConditions:
    def test_true_condition_runs(self) -> None:
        """A task whose condition is true runs and completes."""
        add = tl(lambda: 1)
        r = run(add().named("a").when(lambda c: c["go"]), context={"go": True})
        assert r.tasks["a"].status is S.COMPLETED
        assert r.outputs["a"] == 1

    def test_false_condition_skips_with_reason(self) -> None:
        """A false condition skips the task without calling it and records why."""
        calls: list[int] = []
        t = tl(lambda: calls.append(1))
        r = run(t().named("a").when(lambda c: c.get("go")), context={"go": False})
        assert calls == []
        assert r.ok
        assert r.tasks["a"].status is S.SKIPPED
        assert "condition" in r.tasks["a"].reason
        assert r.tasks["a"].attempts == []

    def test_condition_sees_upstream_to_context(self) -> None:
        """A condition is evaluated against the live context, holding upstream outputs."""
        produce = tl(lambda: 7)
        use = tl(lambda: "ran")
        seen: list[dict[str, Any]] = []

        def cond(c: Any) -> bool:
            seen.append(dict(c))
            return c["n"] > 5

        r = run(produce().named("p").to_context("n") >> use().named("u").when(cond))
        assert seen == [{"n": 7}]
        assert r.tasks["u"].status is S.COMPLETED

    def test_condition_gets_read_only_view(self) -> None:
        """A condition cannot change the context (it receives a read-only view)."""
        t = tl(lambda: 1)

        def cond(c: Any) -> bool:
            c["x"] = 1
            return True

        r = run(t().named("a").when(cond))
        assert r.tasks["a"].status is S.FAILED
        assert "x" not in r.context

    def test_condition_that_raises_names_task_and_is_not_retried(self) -> None:
        """A condition that raises fails its task with a message naming it; no attempt runs."""
        calls: list[int] = []
        t = tl(lambda: calls.append(1), retries=3)
        r = run(t().named("guarded").when(lambda c: 1 / 0), sleep=Sleeps())
        rec = r.tasks["guarded"]
        assert rec.status is S.FAILED
        assert calls == []
        assert "condition of task 'guarded'" in rec.error.message
        assert "ZeroDivisionError" in rec.error.message
        assert isinstance(r.error, TaskFailed) and r.error.task_id == "guarded"


# -- inputs ------------------------------------------------------------------------------------
class TestInputs:
    def test_upstream_output_is_argument(self) -> None:
        """A task given another task as argument receives its output."""
        one = tl(lambda: 1)
        inc = tl(lambda x: x + 1)
        a = one().named("a")
        r = run(inc(a).named("b"))
        assert r.outputs == {"a": 1, "b": 2}

    def test_projection_of_output(self) -> None:
        """``task["k"][0]`` passes a part of the upstream output."""
        src = tl(lambda: {"rows": [10, 20]})
        ident = tl(lambda v: v)
        s = src().named("s")
        r = run(ident(s["rows"][1]).named("b"))
        assert r.outputs["b"] == 20

    def test_references_nested_in_containers(self) -> None:
        """References inside lists and dicts are resolved too."""
        one = tl(lambda: 1)
        two = tl(lambda: 2)
        ident = tl(lambda v: v)
        a, b = one().named("a"), two().named("b")
        r = run(ident({"xs": [a, b], "c": ctx("k")}).named("c"), context={"k": "v"})
        assert r.outputs["c"] == {"xs": [1, 2], "c": "v"}

    def test_projection_missing_key_names_task(self) -> None:
        """A projection the output lacks fails the task, naming it and the key."""
        src = tl(lambda: {"a": 1})
        ident = tl(lambda v: v)
        s = src().named("s")
        r = run(ident(s["nope"]).named("reader"))
        rec = r.tasks["reader"]
        assert rec.status is S.FAILED
        assert "'reader'" in rec.error.message and "'nope'" in rec.error.message

    def test_ctx_reads_run_context(self) -> None:
        """``ctx("k")`` reads the context when the task starts, after upstream mappings."""
        put = tl(lambda: 5)
        ident = tl(lambda v: v)
        r = run(put().named("p").to_context("k") >> ident(ctx("k")).named("r"))
        assert r.outputs["r"] == 5

    def test_ctx_default(self) -> None:
        """``ctx("k", default)`` falls back to the default when the key is missing."""
        ident = tl(lambda v: v)
        r = run(ident(ctx("missing", 3)).named("r"))
        assert r.outputs["r"] == 3

    def test_missing_ctx_key_names_task_and_key(self) -> None:
        """A ``ctx("k")`` that a task's ``to_context`` promised but never wrote (it was
        skipped) fails the reading task with a message naming both. (A key nothing provides
        is refused when the run starts: see test_identity.)"""
        ident = tl(lambda v: v)
        writer = tl(lambda: "k")().named("w").to_context("api_key").when(lambda c: False)
        r = run(writer | ident(ctx("api_key")).named("call"), context={"other": 1},
                continue_on_error=True)
        rec = r.tasks["call"]
        assert rec.status is S.FAILED
        assert "'call'" in rec.error.message and "'api_key'" in rec.error.message
        assert "other" in rec.error.message

    def test_context_is_copied_never_mutated(self) -> None:
        """The caller's context dict is copied; mappings go to the result's context."""
        put = tl(lambda: 1)
        given = {"a": 0}
        r = run(put().named("p").to_context("b"), context=given)
        assert given == {"a": 0}
        assert r.context == {"a": 0, "b": 1}


# -- output mapping ----------------------------------------------------------------------------
class TestOutputMapping:
    def test_whole_output_under_key(self) -> None:
        """``to_context("k")`` stores the whole output."""
        src = tl(lambda: [1, 2])
        r = run(src().named("s").to_context("k"))
        assert r.context["k"] == [1, 2]

    def test_mapping_of_keys(self) -> None:
        """``to_context({"out": "ctx"})`` stores selected output keys under context keys."""
        src = tl(lambda: {"a": 1, "b": 2})
        r = run(src().named("s").to_context({"a": "first", "b": "second"}))
        assert r.context == {"first": 1, "second": 2}

    def test_mapping_missing_key_fails_naming_task(self) -> None:
        """A mapping naming a key the output lacks fails the task, naming task and key."""
        src = tl(lambda: {"a": 1})
        after = tl(lambda: 0)
        r = run(src().named("s").to_context({"zz": "k"}) >> after().named("next"))
        rec = r.tasks["s"]
        assert rec.status is S.FAILED
        assert "'s'" in rec.error.message and "'zz'" in rec.error.message
        assert "a" in rec.error.message  # the keys it does have
        assert r.tasks["next"].status is not S.COMPLETED
        assert not r.ok

    def test_mapping_of_non_mapping_output_fails(self) -> None:
        """Mapping keys out of an output that is not a mapping fails the task clearly."""
        src = tl(lambda: 3)
        r = run(src().named("s").to_context({"a": "k"}))
        assert r.tasks["s"].status is S.FAILED
        assert "int" in r.tasks["s"].error.message


# -- retries -----------------------------------------------------------------------------------
class TestRetries:
    def test_exhausted_retries(self) -> None:
        """RT1: retries=2 makes exactly 3 calls; the error names attempts and chains the last."""
        calls: list[int] = []

        def always() -> None:
            calls.append(1)
            raise ValueError(f"bad {len(calls)}")

        t = tl(always, retries=2, backoff=0.0)
        r = run(t().named("x"), sleep=Sleeps())
        assert len(calls) == 3
        rec = r.tasks["x"]
        assert rec.status is S.FAILED
        assert [a.number for a in rec.attempts] == [1, 2, 3]
        assert all(a.status is S.FAILED for a in rec.attempts)
        assert isinstance(r.error, TaskFailed)
        assert r.error.attempts == 3 and r.error.task_id == "x"
        assert isinstance(r.error.__cause__, ValueError)
        assert str(r.error.__cause__) == "bad 3"

    def test_exact_backoff_sequence(self) -> None:
        """RT2: initial=1, factor=2, max=5 over 6 attempts sleeps exactly [1, 2, 4, 5, 5]."""
        sleeps = Sleeps()
        t = tl(lambda: 1 / 0, retries=5, backoff=Backoff(initial=1, factor=2, max_delay=5))
        start = time.perf_counter()
        r = run(t().named("x"), sleep=sleeps)
        assert sleeps.delays == [1, 2, 4, 5, 5]
        assert len(r.tasks["x"].attempts) == 6
        assert time.perf_counter() - start < 5  # the fake clock took none of those 17 s

    def test_backoff_delay_is_pure(self) -> None:
        """``Backoff.delays`` gives the same exact sequence without running anything."""
        b = Backoff(initial=0.5, factor=3, max_delay=10)
        assert b.delays(5) == [0.5, 1.5, 4.5, 10]

    def test_jitter_seeded_and_bounded(self) -> None:
        """RT3: full jitter draws each delay in [0, computed] from the injected RNG."""
        b = Backoff(initial=1, factor=2, max_delay=5, jitter="full")
        t = tl(lambda: 1 / 0, retries=5, backoff=b)
        first, second = Sleeps(), Sleeps()
        run(t().named("x"), sleep=first, rng=random.Random(42))
        run(t().named("x"), sleep=second, rng=random.Random(42))
        assert first.delays == second.delays
        bounds = [1, 2, 4, 5, 5]
        assert all(0 <= d <= cap for d, cap in zip(first.delays, bounds, strict=True))
        assert first.delays != bounds  # jitter actually applied

    @settings(max_examples=50, deadline=None)
    @given(seed=st.integers(0, 2**32), initial=st.floats(0, 10), factor=st.floats(1, 4),
           cap=st.floats(0, 60), n=st.integers(1, 12))
    def test_jitter_bounds_property(self, seed: int, initial: float, factor: float,
                                    cap: float, n: int) -> None:
        """RT3: for any seed and policy, jittered delays lie in [0, min(initial*f^(n-1), max)]
        and a seed always gives the same sequence."""
        b = Backoff(initial=initial, factor=factor, max_delay=cap, jitter="full")
        one = b.delays(n, random.Random(seed))
        assert one == b.delays(n, random.Random(seed))
        for k, d in enumerate(one, start=1):
            assert 0 <= d <= min(initial * factor ** (k - 1), cap)

    def test_error_not_in_retry_on_is_not_retried(self) -> None:
        """RT4: an error outside ``retry_on`` fails at once, after one call."""
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise ValueError("permanent")

        t = tl(fn, retries=5, retry_on=(ConnectionError,))
        sleeps = Sleeps()
        r = run(t().named("x"), sleep=sleeps)
        assert calls == [1]
        assert sleeps.delays == []
        assert r.tasks["x"].status is S.FAILED

    def test_error_in_retry_on_is_retried(self) -> None:
        """A subclass of a ``retry_on`` class is retried."""
        calls: list[int] = []

        def fn() -> int:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionResetError
            return 1

        t = tl(fn, retries=5, retry_on=ConnectionError)
        assert run(t().named("x"), sleep=Sleeps()).ok
        assert len(calls) == 3

    @pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
    def test_base_exceptions_never_retried(self, exc: type[BaseException]) -> None:
        """RT6: KeyboardInterrupt and SystemExit are never retried, even with retry_on."""
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise exc

        t = tl(fn, retries=3, retry_on=BaseException, executor="inline")
        with pytest.raises(exc):
            run(t().named("x"), sleep=Sleeps())
        assert calls == [1]

    def test_cancellation_never_retried(self) -> None:
        """RT6: an attempt cut by the run's cancellation is not retried."""
        calls: list[int] = []

        async def slow() -> None:
            calls.append(1)
            await anyio.sleep(10)

        t = tl(slow, retries=3, retry_on=BaseException)

        async def main() -> None:
            with anyio.move_on_after(0.05):
                await flowdsl.arun(t().named("x"), history=False, sleep=Sleeps())

        anyio.run(main)
        assert calls == [1]

    def test_fails_twice_then_succeeds(self) -> None:
        """RT8: two failures then success: result kept, attempts recorded, downstream once."""
        calls: list[int] = []
        downstream: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise OSError("transient")
            return "ok"

        t = tl(flaky, retries=2)
        after = tl(lambda v: downstream.append(v))
        f = t().named("x")
        r = run(f >> after(f).named("y"), sleep=Sleeps())
        assert r.ok and r.outputs["x"] == "ok"
        assert [a.status for a in r.tasks["x"].attempts] == [S.FAILED, S.FAILED, S.COMPLETED]
        assert r.tasks["x"].attempts[0].error.type == "OSError"
        assert downstream == ["ok"]

    def test_retrying_event(self) -> None:
        """Each retry emits task_retrying with the attempt and its delay."""
        t = tl(lambda: 1 / 0, retries=2, backoff=Backoff(initial=1, factor=3))
        with capture_events() as logs:
            run(t().named("x"), sleep=Sleeps(), log=True)
        retries = [e for e in logs if e["event"] == "task_retrying"]
        assert [(e["attempt"], e["delay"]) for e in retries] == [(1, 1), (2, 3)]


class TestOptionValidation:
    @pytest.mark.parametrize(("option", "value"), [
        ("retries", -1), ("retries", 1.5), ("timeout", 0), ("timeout", -1),
        ("timeout", math.nan), ("backoff", -1), ("backoff", math.inf),
        ("backoff", Backoff(factor=0.5)), ("backoff", Backoff(initial=math.nan)),
        ("resources", {"db": 0}),
    ])
    def test_bad_option_raises_naming_it(self, option: str, value: Any) -> None:
        """RT7: a bad retry/timeout/backoff/resource value raises ValueError naming it."""
        with pytest.raises(ValueError, match=option):
            tl(lambda: 1, **{option: value})

    @pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
    def test_bad_pool_capacity(self, capacity: Any) -> None:
        """RT7: a pool capacity that is not an integer >= 1 raises ValueError naming it."""
        with pytest.raises(ValueError, match="capacity"):
            Pools({"db": capacity})

    @pytest.mark.parametrize(("option", "value"),
                             [("timeout", 0), ("timeout", -2), ("max_concurrency", 0)])
    def test_bad_run_option(self, option: str, value: Any) -> None:
        """run() rejects a non-positive timeout or max_concurrency before running anything."""
        calls: list[int] = []
        t = tl(lambda: calls.append(1))
        with pytest.raises(ValueError, match=option):
            run(t(), **{option: value})
        assert calls == []


# -- timeouts ----------------------------------------------------------------------------------
class TestTimeouts:
    def test_async_timeout_cancels_and_runs_finally(self) -> None:
        """TO1: an async task past its timeout is cancelled (its finally runs): timed_out."""
        cleaned: list[bool] = []

        async def slow() -> None:
            try:
                await anyio.sleep(10)
            finally:
                cleaned.append(True)

        t = tl(slow, timeout=0.05)
        r = run(t().named("x"))
        assert cleaned == [True]
        rec = r.tasks["x"]
        assert rec.status is S.TIMED_OUT
        assert isinstance(r.error, TaskTimeout) and isinstance(r.error, TimeoutError)
        assert "0.05s timeout" in str(r.error)
        assert rec.duration < 5

    def test_thread_timeout_abandons_and_discards_late_result(self) -> None:
        """TO2: a sync call past its timeout is abandoned; its late result is never used."""
        finished = threading.Event()
        release = threading.Event()  # set by the test once run() has returned
        downstream: list[Any] = []

        def blocking() -> str:
            release.wait(10)  # a run that waited for this thread would take 10 s
            finished.set()
            return "late"

        t = tl(blocking, timeout=0.05)
        after = tl(lambda v: downstream.append(v))
        b = t().named("b")
        r = run(b >> after(b).named("c").with_options(trigger="all_done"),
                continue_on_error=True)
        rec = r.tasks["b"]
        assert rec.status is S.TIMED_OUT
        assert not finished.is_set()  # the run did not wait for the thread
        release.set()
        assert "abandoned" in rec.reason
        assert finished.wait(5)
        assert "b" not in r.outputs
        assert downstream == [None]

    def test_timeout_is_per_attempt_and_retried(self) -> None:
        """TO6: a timed-out attempt counts as an attempt and is retried with backoff."""
        calls: list[int] = []

        async def fn() -> str:
            calls.append(1)
            if len(calls) < 3:
                await anyio.sleep(10)
            return "done"

        sleeps = Sleeps()
        t = tl(fn, timeout=0.05, retries=3, backoff=Backoff(initial=2))
        r = run(t().named("x"), sleep=sleeps)
        assert r.ok and r.outputs["x"] == "done"
        st_ = [a.status for a in r.tasks["x"].attempts]
        assert st_ == [S.TIMED_OUT, S.TIMED_OUT, S.COMPLETED]
        assert sleeps.delays == [2, 4]


# -- records and errors ------------------------------------------------------------------------
class TestRecords:
    def test_error_record_has_type_message_traceback(self) -> None:
        """A failed task's record keeps the error type, message and traceback text."""

        def explode() -> None:
            raise KeyError("missing-thing")

        r = run(tl(explode)().named("x"))
        err = r.tasks["x"].error
        assert err.type == "KeyError"
        assert "missing-thing" in err.message
        assert "explode" in err.traceback
        assert r.tasks["x"].to_dict()["error"]["type"] == "KeyError"

    def test_times_and_attempts_recorded(self) -> None:
        """A completed task records start, end, duration and one completed attempt."""

        async def nap() -> None:
            await anyio.sleep(0.02)

        r = run(tl(nap)().named("x"))
        rec = r.tasks["x"]
        assert rec.started_at is not None and rec.ended_at >= rec.started_at
        assert rec.duration >= 0.015
        assert len(rec.attempts) == 1 and rec.attempts[0].status is S.COMPLETED
        assert r.duration >= rec.ended_at

    def test_raise_for_error(self) -> None:
        """A failed run returns its result; raise_for_error turns it into RunFailed."""
        r = run(tl(lambda: 1 / 0)().named("x"))
        assert not r.ok and r.status == "failed"
        with pytest.raises(RunFailed, match="x") as info:
            r.raise_for_error()
        assert info.value.result is r
        assert isinstance(info.value.__cause__, TaskFailed)
        ok = run(tl(lambda: 1)())
        assert ok.raise_for_error() is ok

    def test_status_is_string_enum(self) -> None:
        """Statuses are a string-valued enum with the ten documented values."""
        assert {s.value for s in S} == {
            "pending", "running", "completed", "failed", "timed_out", "skipped",
            "upstream_failed", "cancelled", "rolled_back", "cached"}
        assert S.COMPLETED == "completed"


# -- events ------------------------------------------------------------------------------------
class TestEvents:
    def _flow(self) -> Any:
        ok = tl(lambda: 1)
        bad = tl(lambda: 1 / 0)
        skip = tl(lambda: 2)
        return (ok().named("ok") | skip().named("skip").when(lambda c: False)) >> bad().named(
            "bad").with_options(trigger="all_done")

    def test_events_when_logging_on(self) -> None:
        """log=True emits run/task events bound with the run id and the task id."""
        with capture_events() as logs:
            r = run(self._flow(), log=True)
        names = [e["event"] for e in logs]
        assert names[0] == "run_started" and names[-1] == "run_finished"
        for name in ("task_started", "task_completed", "task_failed", "task_skipped"):
            assert name in names
        assert all(e.get("run_id") == r.run_id for e in logs)
        by_task = {e["task"]: e["event"] for e in logs if e["event"] != "task_started"
                   and "task" in e}
        assert by_task == {"ok": "task_completed", "skip": "task_skipped",
                           "bad": "task_failed"}
        assert logs[-1]["status"] == "failed"

    def test_silent_without_logging(self) -> None:
        """Without log=True (and logging not enabled) a run emits no event at all."""
        with capture_events() as logs:
            run(self._flow())
        assert logs == []


# -- retry policy: give_up_on, retry_if, deadline --------------------------------------------
class TestRetryPolicy:
    def test_give_up_on_is_never_retried(self) -> None:
        """RT4: an error class in give_up_on fails at once, even with retries left."""
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise PermissionError("denied")

        r = run(tl(fn, retries=5, give_up_on=PermissionError)().named("a"), sleep=Sleeps())
        assert calls == [1]
        assert r.tasks["a"].status is S.FAILED
        assert r.tasks["a"].error is not None and r.tasks["a"].error.type == "PermissionError"

    def test_retry_if_decides_per_exception(self) -> None:
        """retry_if retries only the errors it approves of."""
        calls: list[str] = []

        def fn() -> None:
            calls.append("x")
            raise ValueError("transient" if len(calls) < 3 else "fatal")

        sleeps = Sleeps()
        t = tl(fn, retries=5, retry_if=lambda e: "transient" in str(e))
        r = run(t().named("a"), sleep=sleeps)
        assert len(calls) == 3
        assert len(sleeps.delays) == 2
        assert r.tasks["a"].error is not None and r.tasks["a"].error.message == "fatal"

    def test_retry_predicate_that_raises_means_no_retry(self) -> None:
        """RT5: a retry predicate that raises is treated as non-retryable; the task's own
        error is kept and the predicate's error is recorded."""
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise ValueError("original")

        def broken(exc: BaseException) -> bool:
            raise RuntimeError("predicate bug")

        r = run(tl(fn, retries=3, retry_if=broken)().named("a"), sleep=Sleeps())
        rec = r.tasks["a"]
        assert calls == [1]
        assert rec.error is not None and rec.error.type == "ValueError"
        assert rec.reason is not None and "predicate bug" in rec.reason
        assert isinstance(r.error, flowdsl.TaskFailed)
        assert isinstance(r.error.__cause__, ValueError)

    def test_deadline_stops_retries(self) -> None:
        """TO5: per-attempt timeout 0.2 s, deadline 0.5 s, many attempts: the task stops at
        the deadline with a deadline TaskTimeout and no attempt starts after it."""

        async def slow() -> None:
            await anyio.sleep(10)

        t = tl(slow, timeout=0.2, retries=10, backoff=0.01, deadline=0.5)
        r = run(t().named("a"))
        rec = r.tasks["a"]
        assert rec.status is S.TIMED_OUT
        assert isinstance(r.error, flowdsl.TaskTimeout)
        assert r.error.kind == "deadline"
        assert "deadline" in str(r.error)
        assert all(a.started_at - rec.started_at < 0.5 for a in rec.attempts)  # type: ignore
        assert rec.ended_at - rec.started_at < 0.5 + 0.2  # type: ignore[operator]
        assert 2 <= len(rec.attempts) <= 3

    def test_bad_policy_values_name_the_option(self) -> None:
        """Policy options are validated when the tool is declared."""
        with pytest.raises(flowdsl.ToolDefinitionError, match="deadline=-1"):
            tl(lambda: 1, deadline=-1)
        with pytest.raises(flowdsl.ToolDefinitionError, match="retry_if"):
            tl(lambda: 1, retry_if=3)
        with pytest.raises(flowdsl.ToolDefinitionError, match="give_up_on"):
            tl(lambda: 1, give_up_on=[int])

    def test_executor_object_accepted(self) -> None:
        """An Executor object is a valid executor= value for a tool."""
        from flowdsl._run.executors import InlineExecutor

        ex = InlineExecutor()
        t = tl(lambda: 41, executor=ex)
        assert t.spec.executor is ex
        assert run(t().named("a")).outputs["a"] == 41
