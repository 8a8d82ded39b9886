"""The thread executor: long-lived daemon worker threads, results handed back in batches.

Each async test runs on asyncio and on trio (the ``anyio_backend`` fixture).
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import tl

import flowdsl
from flowdsl import TaskStatus as S
from flowdsl._run import threads
from flowdsl._run.executors import ThreadExecutor

ROOT = Path(__file__).resolve().parents[1]
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def arun(flow: Any, **options: Any) -> flowdsl.RunResult:
    options.setdefault("history", False)
    return await flowdsl.arun(flow, **options)


class Peak:
    """Counts the calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.anyio
class TestDispatch:
    async def test_results_errors_and_context(self, anyio_backend: str) -> None:
        """Values come back, a tool's exception fails its task with that exception, and
        the caller's context variables are visible in the worker thread."""
        seen: list[tuple[str, bool]] = []

        def read() -> str:
            seen.append((request_id.get(), threading.current_thread() is
                         threading.main_thread()))
            return request_id.get()

        def boom() -> None:
            raise KeyError("missing")

        token = request_id.set("req-42")
        try:
            r = await arun([tl(read)().named(f"r{i}") for i in range(20)]
                           + [tl(boom)().named("boom")], continue_on_error=True)
        finally:
            request_id.reset(token)
        assert [r.outputs[f"r{i}"] for i in range(20)] == ["req-42"] * 20
        assert seen == [("req-42", False)] * 20  # never on the event loop's thread
        assert r.tasks["boom"].status is S.FAILED
        assert r.tasks["boom"].error.type == "KeyError"

    async def test_stop_iteration_fails_the_task(self, anyio_backend: str) -> None:
        """A sync tool raising StopIteration fails its task (a future cannot carry it)."""

        def stops() -> None:
            raise StopIteration

        with anyio.fail_after(10):
            r = await arun(tl(stops)().named("s"))
        assert r.tasks["s"].status is S.FAILED
        assert "StopIteration" in r.tasks["s"].error.message

    async def test_thread_limit_holds(self, anyio_backend: str) -> None:
        """At most max_workers calls run at once, however many tasks are ready."""
        peak = Peak()

        def work() -> None:
            peak.enter()
            time.sleep(0.02)
            peak.leave()

        r = await arun([tl(work)().named(f"w{i}") for i in range(15)],
                       executor=ThreadExecutor(max_workers=3))
        assert r.ok
        assert peak.peak == 3

    async def test_threads_are_daemons_and_go_after_the_run(self, anyio_backend: str) -> None:
        """Worker threads are daemon threads named flowdsl-thread-N; none is left once the
        run has ended."""
        names: list[tuple[str, bool]] = []

        def who() -> None:
            t = threading.current_thread()
            names.append((t.name, t.daemon))
            time.sleep(0.01)

        await arun([tl(who)().named(f"t{i}") for i in range(6)])
        assert names and all(n.startswith("flowdsl-thread-") and d for n, d in names)
        deadline = time.monotonic() + 5
        while any(t.name.startswith("flowdsl-thread-") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "worker threads outlived the run"
            await anyio.sleep(0.01)

    async def test_timeout_abandons_with_a_warning_and_a_replacement(
            self, anyio_backend: str, caplog: pytest.LogCaptureFixture) -> None:
        """TO2: a timed-out call is abandoned with a warning event naming the task and its
        thread; with max_workers=1 the next call still runs at once on a new thread."""
        release = threading.Event()
        threads_used: list[str] = []

        def stuck() -> None:
            threads_used.append(threading.current_thread().name)
            release.wait(10)

        def after(_: Any) -> str:
            threads_used.append(threading.current_thread().name)
            return "ran"

        s = tl(stuck, timeout=0.05)().named("stuck")
        nxt = tl(after)(s).named("next").with_options(trigger="all_done")
        flowdsl.enable_logging()
        try:
            with caplog.at_level(logging.INFO, logger="flowdsl"), anyio.fail_after(5):
                r = await arun(s >> nxt, continue_on_error=True,
                               executor=ThreadExecutor(max_workers=1))
        finally:
            flowdsl.enable_logging(False)
            release.set()
        assert r.tasks["stuck"].status is S.TIMED_OUT
        assert "abandoned" in (r.tasks["stuck"].reason or "")
        assert r.outputs["next"] == "ran"
        assert threads_used[0] != threads_used[1]  # the stuck thread kept no slot
        warned = [rec for rec in caplog.records
                  if getattr(rec, "flowdsl", {}).get("event") == "task_thread_abandoned"]
        assert len(warned) == 1
        assert warned[0].levelname == "WARNING"
        event = warned[0].flowdsl  # type: ignore[attr-defined]
        assert event["task"] == "stuck" and event["thread"] == threads_used[0]

    async def test_cancelled_before_start_never_runs(self, anyio_backend: str) -> None:
        """A call still queued when the run is cancelled never runs, even after a thread
        frees up."""
        release = threading.Event()
        ran: list[str] = []

        def hold() -> None:
            ran.append("hold")
            release.wait(10)

        def queued() -> None:
            ran.append("queued")

        flow = tl(hold)().named("hold") | tl(queued)().named("queued")
        with anyio.move_on_after(0.2):
            await arun(flow, executor=ThreadExecutor(max_workers=1))
        release.set()
        await anyio.sleep(0.2)  # time for the freed thread to pick the queued call
        assert ran == ["hold"]

    async def test_results_come_back_in_batches(self, anyio_backend: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        """Many quick calls wake the event loop far fewer times than there are calls."""
        wakeups: list[int] = []

        class Counting(threads._Port):
            __slots__ = ()

            def __init__(self, lock: Any, schedule: Any, deliver: Any) -> None:
                def counted(fn: Any) -> Any:
                    wakeups.append(1)
                    return schedule(fn)

                super().__init__(lock, counted, deliver)

        monkeypatch.setattr(threads, "_Port", Counting)
        n = 400
        r = await arun([tl(lambda: 1)().named(f"q{i}") for i in range(n)],
                       executor=ThreadExecutor(max_workers=2))
        assert r.ok and sum(r.outputs.values()) == n
        assert 0 < len(wakeups) < n / 4

    async def test_one_executor_shared_by_concurrent_runs(self, anyio_backend: str) -> None:
        """Two runs sharing one ThreadExecutor both finish: the first to end does not stop
        the threads the other still uses."""
        ex = ThreadExecutor(max_workers=2)

        def slow(x: int) -> int:
            time.sleep(0.01)
            return x

        out: dict[str, flowdsl.RunResult] = {}

        async def one(name: str, delay: float) -> None:
            await anyio.sleep(delay)
            out[name] = await arun([tl(slow)(i).named(f"{name}{i}") for i in range(10)],
                                   executor=ex)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "a", 0.0)
                tg.start_soon(one, "b", 0.03)
        assert out["a"].ok and out["b"].ok


def test_invalid_max_workers() -> None:
    """max_workers must be a whole number >= 1; the message names the parameter."""
    with pytest.raises(ValueError, match="max_workers=0"):
        ThreadExecutor(max_workers=0)


# -- the process ends once the program is done --------------------------------------------------
def _python(code: str, tmp_path: Path, *, timeout: float) -> tuple[subprocess.CompletedProcess
                                                                   [str], float]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWDSL_HISTORY": "off"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    return proc, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_abandoned_call_does_not_keep_the_process_alive(tmp_path: Path, backend: str) -> None:
    """Issue 16: a script whose sync task timed out exits right after run() returns, not
    when the abandoned call ends 15 s later."""
    proc, took = _python(f"""
        import time
        from flowdsl import run, tool

        @tool(timeout=0.2, registry=False)
        def stuck() -> None:
            time.sleep(15)

        r = run(stuck().named("stuck"), backend={backend!r})
        print(r.tasks["stuck"].status.value)
        """, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["timed_out"]
    assert took < 8, f"the process lived {took:.1f} s after a 0.2 s timeout"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_a_sync_tool_blocks_exits_130(tmp_path: Path) -> None:
    """Issue 16: one Ctrl-C on `flowdsl run` while a sync tool sleeps: the run is cancelled
    and the process exits with 130 at once, without waiting for the blocked call."""
    (tmp_path / "blocking.py").write_text(textwrap.dedent("""
        import os, time
        from flowdsl import tool

        @tool(registry=False)
        def block() -> None:
            open(os.environ["MARK"], "w").close()
            time.sleep(30)

        flow = block().named("block")
        """))
    mark = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MARK": str(mark),
           "FLOWDSL_HISTORY": str(tmp_path / "h.db")}
    proc = subprocess.Popen([sys.executable, "-m", "flowdsl", "run", "blocking.py:flow"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "never started"
            time.sleep(0.05)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "cancelled" in out
    assert took < 8, f"exit took {took:.1f} s after Ctrl-C"


@pytest.mark.slow
def test_readme_example_exits_at_once(tmp_path: Path) -> None:
    """The abandoned-call example of docs/performance.md ("The default path first") prints
    what its comment says, and its process ends right after run() returns (the docs' own
    example runner skips it: in-process, its thread would stay blocked for 15 s)."""
    from doc_pages import examples  # tests/ is on sys.path

    block = examples("performance.md", "## The default path first: plain `def` tools, "
                                       "default history")[0][0]
    expected = [line.split("#", 1)[1].strip() for line in block.splitlines()
                if line.startswith("print(") and "#" in line]
    proc, took = _python(block, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected == ["timed_out"]
    assert took < 8, f"the example's process lived {took:.1f} s"
