"""Faults that must end as a failed result, never as a lost run: unprintable exceptions,
dead workers, unencodable ids, limits for untrusted input, secrets, pipeline memory, and the
join/rollback cases of the reliability catalogue (docs/RELIABILITY.md lists them)."""

from __future__ import annotations

import signal

import proc_tools as pt  # tests/ is on sys.path: worker processes import the tools
import pytest

import flowdsl
from flowdsl import TaskStatus, WorkerLost, tool

S = TaskStatus


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class TestUnprintableErrors:
    """Issue 16 item 3: a tool's exception that cannot be printed still fails just its task."""

    @pytest.mark.parametrize("executor", ["inline", "thread", "async"])
    def test_every_mode_returns_a_failed_result(self, mode: str, executor: str) -> None:
        """str() and repr() raising never escape run(): the task fails with a message."""
        if executor == "async":
            @tool(registry=False, executor="async")
            async def bad() -> None:
                raise Unprintable()
        else:
            @tool(registry=False, executor=executor)
            def bad() -> None:
                raise Unprintable()

        @tool(registry=False)
        def fine() -> int:
            return 1

        r = flowdsl.run(bad().named("bad") | fine().named("fine"), mode=mode, log=True)
        assert r.status == "failed"
        rec = r.tasks["bad"]
        assert rec.status is S.FAILED
        assert rec.error is not None and rec.error.type == "Unprintable"
        assert "unprintable Unprintable" in rec.error.message
        assert "bad" in str(r.error)
        r.to_dict()  # JSON-friendly, no second error
        with pytest.raises(flowdsl.RunFailed, match="unprintable"):
            r.raise_for_error()

    def test_process_worker(self) -> None:
        """An unprintable exception raised in a worker process fails its task too."""
        r = flowdsl.run(pt.raises_unprintable(), history=False)
        assert r.tasks["raises_unprintable"].status is S.FAILED
        assert r.tasks["raises_unprintable"].error is not None


class TestDeadProcessWorker:
    """Issue 16 item 5: a worker process that dies fails its task and says how it died."""

    def test_os_exit(self) -> None:
        """os._exit(3) in the tool: WorkerLost with the exit code, the run goes on."""
        r = flowdsl.run([pt.exits(3), pt.square(4)], continue_on_error=True, history=False)
        rec = r.tasks["exits"]
        assert rec.status is S.FAILED
        assert rec.error is not None and rec.error.type == "WorkerLost"
        assert "worker process died (exit code 3)" in rec.error.message
        assert isinstance(r.error.__cause__, WorkerLost)
        assert r.error.__cause__.exitcode == 3
        assert r.outputs["square"] == 16

    def test_segfault(self) -> None:
        """A worker killed by SIGSEGV: the message names the signal; a retry gets a new worker."""
        r = flowdsl.run(pt.kills_itself(int(signal.SIGSEGV)).with_options(retries=1),
                        history=False)
        rec = r.tasks["kills_itself"]
        assert rec.status is S.FAILED and len(rec.attempts) == 2
        assert rec.error is not None
        assert "worker process died (signal SIGSEGV)" in rec.error.message
