"""Failure handling: propagation, rollback, cancellation, run timeouts, interrupts, and the
process executor's kills and serialization errors. The conftest leak checks run after each
test, so no thread or process a run starts may outlive it."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import anyio
import proc_tools
import psutil
import pytest
from support import capture_events, run, tl

import flowdsl
from flowdsl import Pools, SerializationError, TaskStatus, TaskTimeout
from flowdsl._run.executors import fork_helper_pid

S = TaskStatus


class Keep:
    """An observer that keeps the result, also of a run that raised."""

    def __init__(self) -> None:
        self.result: flowdsl.RunResult | None = None
        self.started: list[str] = []

    def run_started(self, result: Any, plan: Any) -> None:
        pass

    def task_started(self, result: Any, record: Any) -> None:
        self.started.append(record.id)

    def task_finished(self, result: Any, record: Any, output: Any) -> None:
        pass

    def run_finished(self, result: Any) -> None:
        self.result = result


def _children() -> list[psutil.Process]:
    """Child processes, except multiprocessing's shared resource tracker and flowdsl's fork
    helper (one per process, shared by every run, as the tracker)."""
    helper = fork_helper_pid()
    return [c for c in psutil.Process().children()
            if c.pid != helper and "resource_tracker" not in " ".join(c.cmdline())]


def undoable(name: str, undone: list[str], *, delay: float = 0.0, fail: bool = False,
             undo_fails: bool = False) -> Any:
    """A task that records its rollback (which receives its output) in ``undone``."""

    async def fn() -> str:
        await anyio.sleep(delay)
        if fail:
            raise RuntimeError(f"{name} failed")
        return f"out-{name}"

    def rollback(output: Any) -> None:
        undone.append(f"{name}:{output}")
        if undo_fails:
            raise OSError(f"cannot undo {name}")

    fn.__name__ = name
    return tl(fn, rollback=rollback)().named(name)


# -- propagation -----------------------------------------------------------------------------
class TestPropagation:
    @pytest.mark.parametrize("mode", ["parallel", "pipeline", "conditional"])
    def test_fail_fast_cancels_running_and_never_starts_pending(self, mode: str) -> None:
        """Without continue_on_error a failure stops the run: the tasks still running are
        cancelled and pending ones never start."""
        started: list[str] = []

        async def slow() -> None:
            started.append("slow")
            await anyio.sleep(10)

        async def bad() -> None:
            await anyio.sleep(0.02)
            raise ValueError("boom")

        after = tl(lambda: started.append("after"))
        keep = Keep()
        flow = (tl(slow)().named("slow") | tl(bad)().named("bad")) >> after().named("after")
        r = run(flow, mode=mode, observers=[keep], max_concurrency=2)
        assert r.status == "failed"
        assert r.tasks["bad"].status is S.FAILED
        assert r.tasks["slow"].status is S.CANCELLED
        assert r.tasks["after"].status is S.PENDING
        assert "after" not in started
        assert r.duration < 5
        assert keep.result is r

    def test_simultaneous_failures_both_kept(self) -> None:
        """EP4: two parallel tasks failing at the same moment both keep their error."""
        async def fail(name: str) -> None:
            await anyio.sleep(0.02)
            raise ValueError(name)

        t = tl(fail)
        r = run(t("x").named("x") | t("y").named("y"), continue_on_error=True)
        assert sorted(str(e.__cause__) for e in r.errors) == ["x", "y"]
        assert r.tasks["x"].status is S.FAILED and r.tasks["y"].status is S.FAILED
        assert r.error is r.errors[0]

    def test_simultaneous_failures_fail_fast(self) -> None:
        """EP4: failing together in fail-fast mode, neither error is swallowed. Both wake from
        one event, in the same turn of the loop (two timers could fire in different turns on
        a loaded machine, and then the second task had truly not raised when it was
        cancelled)."""
        state: dict[str, Any] = {"waiting": 0}

        async def fail(name: str) -> None:
            state.setdefault("event", anyio.Event())
            state["waiting"] += 1
            await state["event"].wait()
            raise ValueError(name)

        async def release() -> None:
            while state["waiting"] < 2:
                await anyio.sleep(0.001)
            state["event"].set()

        t = tl(fail)
        r = run(t("x").named("x") | t("y").named("y") | tl(release)().named("go"))
        assert sorted(str(e.__cause__) for e in r.errors) == ["x", "y"]


# -- rollback ----------------------------------------------------------------------------------
class TestRollback:
    def test_reverse_order_exactly_once(self, mode: str) -> None:
        """CP1: a>>b>>c, c fails: b then a are rolled back, once each, with their outputs;
        the failed task is not."""
        undone: list[str] = []
        flow = (undoable("a", undone) >> undoable("b", undone)
                >> undoable("c", undone, fail=True))
        r = run(flow, mode=mode, rollback_on_failure=True)
        assert undone == ["b:out-b", "a:out-a"]
        assert r.tasks["a"].status is S.ROLLED_BACK and r.tasks["b"].status is S.ROLLED_BACK
        assert r.tasks["c"].status is S.FAILED
        assert r.status == "rolled_back" and "c failed" in str(r.error)  # issue 16 item 8

    def test_reverse_completion_order_of_parallel_tasks(self) -> None:
        """CP2: (x|y) >> z, z fails: x and y are undone in reverse completion order."""
        undone: list[str] = []
        flow = (undoable("x", undone, delay=0.05) | undoable("y", undone, delay=0.0)
                ) >> undoable("z", undone, fail=True)
        r = run(flow, rollback_on_failure=True)
        assert r.tasks["y"].ended_at < r.tasks["x"].ended_at
        assert undone == ["x:out-x", "y:out-y"]

    def test_rollback_error_kept_and_rest_still_run(self) -> None:
        """CP3: a rollback that raises is recorded; the others still run; the original error
        stays the run's error."""
        undone: list[str] = []
        flow = (undoable("a", undone) >> undoable("b", undone, undo_fails=True)
                >> undoable("c", undone, fail=True))
        r = run(flow, rollback_on_failure=True)
        assert undone == ["b:out-b", "a:out-a"]
        assert r.tasks["a"].status is S.ROLLED_BACK
        assert r.tasks["b"].status is S.COMPLETED  # its undo failed: not rolled back
        assert r.tasks["b"].rollback_error.type == "OSError"
        assert [str(e) for e in r.rollback_errors] == ["cannot undo b"]
        assert "c failed" in str(r.error)

    def test_no_rollback_without_option_or_on_success(self) -> None:
        """Rollback runs only with rollback_on_failure and only when the run did not complete."""
        undone: list[str] = []
        run(undoable("a", undone) >> undoable("b", undone, fail=True))
        run(undoable("a", undone) >> undoable("b", undone), rollback_on_failure=True)
        assert undone == []

    def test_task_without_rollback_is_skipped(self) -> None:
        """CP5: a completed task with no rollback is passed over (logged), not an error."""
        undone: list[str] = []
        plain = tl(lambda: 1)().named("plain")
        flow = undoable("a", undone) >> plain >> undoable("c", undone, fail=True)
        with capture_events() as logs:
            r = run(flow, rollback_on_failure=True, log=True)
        assert undone == ["a:out-a"]
        assert r.tasks["plain"].status is S.COMPLETED
        assert r.rollback_errors == []
        assert {"event": "task_rollback_skipped", "task": "plain"}.items() <= next(
            e for e in logs if e["event"] == "task_rollback_skipped").items()

    def test_rollback_on_run_timeout(self) -> None:
        """A run past its timeout rolls back what completed."""
        undone: list[str] = []
        flow = undoable("a", undone) >> undoable("slow", undone, delay=10)
        r = run(flow, rollback_on_failure=True, timeout=0.1)
        assert r.status == "timed_out"
        assert undone == ["a:out-a"]
        assert r.tasks["slow"].status is S.CANCELLED

    def test_async_rollback_awaited(self) -> None:
        """A coroutine rollback is awaited."""
        undone: list[str] = []

        async def undo(out: Any) -> None:
            await anyio.sleep(0.01)
            undone.append(out)

        a = tl(lambda: "A", rollback=undo)().named("a")
        run(a >> tl(lambda: 1 / 0)().named("b"), rollback_on_failure=True)
        assert undone == ["A"]

    def test_rollback_per_item_in_pipeline(self) -> None:
        """Over items, each completed (task, item) is undone once, latest first."""
        undone: list[Any] = []

        def check(x: int) -> int:
            if x == 2:
                raise ValueError("bad")
            return x

        stage = tl(lambda x: x, rollback=undone.append, executor="inline")
        r = run(stage.stage() >> tl(check, executor="inline").stage(), mode="pipeline",
                items=range(3), rollback_on_failure=True, buffer=0)
        assert r.status == "rolled_back"  # issue 16 item 8
        assert sorted(undone) == [0, 1, 2] and undone[0] == 2
        assert len(undone) == len(set(undone))


# -- cancellation and interrupts ----------------------------------------------------------------
class TestCancellation:
    @pytest.mark.anyio
    async def test_outer_cancel_scope(self, anyio_backend: str, mode: str) -> None:
        """CX1: an outer cancel scope stops the run: running tasks cancelled, pending ones
        never started, nothing left running, completed tasks rolled back."""
        undone: list[str] = []
        keep = Keep()
        flow = undoable("a", undone) >> undoable("slow", undone, delay=10) >> undoable(
            "never", undone)
        with anyio.move_on_after(0.1) as scope:
            await flowdsl.arun(flow, mode=mode, history=False, observers=[keep],
                               rollback_on_failure=True)
        assert scope.cancelled_caught
        r = keep.result
        assert r is not None and r.status == "cancelled"
        assert r.tasks["slow"].status is S.CANCELLED
        assert r.tasks["never"].status is S.PENDING and "never" not in keep.started
        assert r.tasks["a"].status is S.ROLLED_BACK
        assert undone == ["a:out-a"]
        assert not any(rec.status is S.RUNNING for rec in r.tasks.values())

    @pytest.mark.anyio
    async def test_rollback_shielded_from_outer_cancel(self, anyio_backend: str) -> None:
        """CP4: a rollback still running when the outer scope is cancelled runs to its end."""
        undone: list[str] = []

        async def undo(out: Any) -> None:
            await anyio.sleep(0.1)
            undone.append(out)

        async def slow() -> None:
            outer.cancel()  # 'a' has completed by now: cancel the caller (not a timer, which
            await anyio.sleep(10)  # a loaded machine could fire before 'a' ends)

        a = tl(lambda: "A", rollback=undo)().named("a")
        with anyio.CancelScope() as outer:
            await flowdsl.arun(a >> tl(slow)().named("slow"), history=False,
                               rollback_on_failure=True)
        assert outer.cancelled_caught
        assert undone == ["A"]

    @pytest.mark.parametrize("executor", ["inline", "thread"])
    def test_keyboard_interrupt_sequential(self, executor: str) -> None:
        """CX2: KeyboardInterrupt in the sequential runner stops the run, rolls back, marks
        the task cancelled, never starts the rest, and is re-raised."""
        undone: list[str] = []
        keep = Keep()

        def interrupt() -> None:
            raise KeyboardInterrupt

        flow = (undoable("a", undone) >> tl(interrupt, executor=executor)().named("ctrl_c")
                >> undoable("never", undone))
        with pytest.raises(KeyboardInterrupt):
            run(flow, mode="sequential", observers=[keep], rollback_on_failure=True)
        r = keep.result
        assert r is not None and r.status == "cancelled"
        assert r.tasks["ctrl_c"].status is S.CANCELLED
        assert r.tasks["never"].status is S.PENDING and "never" not in keep.started
        assert undone == ["a:out-a"]
        assert isinstance(r.error, KeyboardInterrupt)


# -- threads -----------------------------------------------------------------------------------
class TestThreads:
    def test_abandoned_thread_reported_and_ends(self) -> None:
        """TO2: a sync call past its timeout is abandoned and recorded; the run returns at
        once; the thread ends on its own (the leak check waits for it)."""
        release = threading.Event()
        done = threading.Event()

        def stuck() -> None:
            release.wait(5)
            done.set()

        r = run(tl(stuck, timeout=0.05)().named("stuck"))
        assert r.tasks["stuck"].status is S.TIMED_OUT
        assert "abandoned" in r.tasks["stuck"].reason
        assert not done.is_set()
        release.set()
        assert done.wait(5)


# -- process executor ------------------------------------------------------------------------------
class TestProcessExecutor:
    def test_results_from_worker_processes(self) -> None:
        """Process tools run in other processes and return their results."""
        r = run([proc_tools.square(i).named(f"sq{i}") for i in range(3)]
                + [proc_tools.worker_pid().named("pid")])
        assert r.ok
        assert [r.outputs[f"sq{i}"] for i in range(3)] == [0, 1, 4]
        assert r.outputs["pid"] != os.getpid()

    def test_real_cpu_parallelism(self) -> None:
        """Two CPU-bound process tasks overlap in time (recorded by the workers)."""
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("needs two CPUs")
        warm = proc_tools.worker_pid().named("w1") | proc_tools.worker_pid().named("w2")
        r = run(warm >> (proc_tools.busy(0.5).named("a") | proc_tools.busy(0.5).named("b")))
        assert r.outputs["w1"] != r.outputs["w2"]  # two workers, started before the work
        (s1, e1), (s2, e2) = r.outputs["a"], r.outputs["b"]
        assert max(s1, s2) < min(e1, e2)

    def test_worker_error_reraised_with_its_traceback(self) -> None:
        """An exception in the worker fails the task with its type, message and the worker's
        traceback text."""
        r = run(proc_tools.fails("from the worker").named("f"))
        err = r.tasks["f"].error
        assert err.type == "ValueError" and err.message == "from the worker"
        assert "proc_tools.py" in err.traceback

    def test_timeout_kills_and_reaps_worker(self, tmp_path: Any) -> None:
        """TO3: an endless call past its timeout: the worker is killed and reaped."""
        pid_file = tmp_path / "pid"
        start = time.perf_counter()
        r = run(proc_tools.spin_forever(str(pid_file)).named("spin").with_options(timeout=1.0))
        assert time.perf_counter() - start < 10
        rec = r.tasks["spin"]
        assert rec.status is S.TIMED_OUT
        assert isinstance(r.error, TaskTimeout)
        pid = int(pid_file.read_text())
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() != "zombie"
        assert not psutil.pid_exists(pid)
        assert _children() == []

    def test_timeout_kills_subprocesses_of_the_tool(self, tmp_path: Any) -> None:
        """TO4: a subprocess started by a process tool dies with its timed-out worker."""
        pid_file = tmp_path / "pid"
        r = run(proc_tools.spawn_and_spin(str(pid_file)).named("spawn").with_options(
            timeout=1.5))
        assert r.tasks["spawn"].status is S.TIMED_OUT
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break  # killed; its new parent reaps it
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the tool's subprocess {pid} outlived its worker")

    def test_unpicklable_result(self) -> None:
        """SE2: a result pickle cannot carry back is a SerializationError naming the task and
        the type; the worker is not left behind and pool slots are released."""
        pools = Pools({"cpu": 1})
        r = run(proc_tools.returns_lock().named("lock").with_options(resources={"cpu": 1}),
                resources=pools)
        assert isinstance(r.error, SerializationError)
        assert r.error.task_id == "lock"
        assert "'lock'" in str(r.error) and "lock" in str(r.error).split(":", 1)[1]
        assert pools.available("cpu") == 1

    def test_unpicklable_argument(self) -> None:
        """An argument pickle cannot send fails the task before any worker call."""
        r = run(proc_tools.echo(threading.Lock()).named("echo"))
        assert isinstance(r.error, SerializationError)
        assert r.error.task_id == "echo" and "'echo'" in str(r.error)
        assert "lock" in str(r.error)

    def test_local_function_refused(self) -> None:
        """A process tool that is not importable (a local function) fails with a clear
        SerializationError naming the task."""

        def local(x: int) -> int:
            return x

        r = run(tl(local, executor="process")(1).named("loc"))
        assert isinstance(r.error, SerializationError)
        assert "'loc'" in str(r.error) and "module level" in str(r.error)

    def test_cancel_kills_worker(self) -> None:
        """A run stopped by another task's failure kills its busy worker processes."""

        async def bad() -> None:
            await anyio.sleep(0.3)
            raise ValueError("stop")

        r = run(proc_tools.busy(30).named("cpu") | tl(bad)().named("bad"))
        assert r.tasks["cpu"].status is S.CANCELLED
        assert r.duration < 10
        assert _children() == []


class TestCleanupAfterFailFast:
    def test_all_done_join_runs_after_a_fail_fast_stop(self, mode: str) -> None:
        """EP3 without continue_on_error: an all_done join still runs once its upstream
        tasks are final and receives None for the failed one; the run reports the failure;
        ordinary downstream tasks stay pending."""
        seen: list[Any] = []

        def boom() -> int:
            raise ValueError("broken")

        def join(a: Any, b: Any) -> str:
            seen.append((a, b))
            return "cleaned"

        ok = tl(lambda: 1)().named("ok")
        bad = tl(boom)().named("bad")
        j = tl(join)(ok, bad).named("join").with_options(trigger="all_done")
        after = tl(lambda x: x)(j).named("after")
        r = run(ok >> bad >> j >> after, mode=mode)
        assert r.status == "failed"
        assert "broken" in str(r.error.__cause__)
        assert r.tasks["join"].status is S.COMPLETED
        assert seen == [(1, None)]
        assert r.tasks["after"].status is S.PENDING

    def test_one_failed_notifier_runs_and_all_success_task_does_not(self) -> None:
        """A one_failed task (an alert) runs after a fail-fast stop; an all_success sibling
        waiting on the same failure does not."""
        calls: list[str] = []

        def boom() -> None:
            raise RuntimeError("down")

        bad = tl(boom)().named("bad")
        alert = tl(lambda _x: calls.append("alert"))(bad).named("alert").with_options(
            trigger="one_failed")
        normal = tl(lambda _x: calls.append("normal"))(bad).named("normal")
        r = run(bad >> (alert | normal))
        assert calls == ["alert"]
        assert r.tasks["normal"].status is S.PENDING  # fail-fast: never started
        assert not r.ok


class TestProcessWorkerStart:
    def test_single_threaded_process_forks_all_workers_at_once(self) -> None:
        """With no other thread alive, the process executor forks its workers up front (no
        re-import), and they are all gone after the run."""
        import subprocess
        import sys

        code = (
            "import sys, threading; sys.path.insert(0, 'tests')\n"
            "import flowdsl, proc_tools\n"
            "from flowdsl._run.executors import ProcessExecutor\n"
            "ex = ProcessExecutor(max_workers=2)\n"
            "import anyio\n"
            "async def main():\n"
            "    await ex.call(proc_tools.square.fn, (3,), {}, task_id='t')\n"
            "    methods = {w.proc._start_method for w in ex._all}\n"
            "    started = len(ex._all)\n"
            "    await ex.close()\n"
            "    print(len(methods) == 1 and methods.pop(), started, len(ex._all))\n"
            "anyio.run(main)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
        assert out == ["fork", "2", "0"]  # both workers forked at once, none left after
