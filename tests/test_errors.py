"""One error hierarchy (flowdsl._base.errors), the run's status enum and the executor
interface: what callers may rely on without probing."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest
from support import run, tl

import flowdsl
from flowdsl import Executor, FlowError, RunStatus, RunTimeout


def test_a_run_timeout_is_a_flow_error_and_a_timeout_error() -> None:
    @tl
    async def slow() -> None:
        await anyio.sleep(5)

    result = run(slow(), timeout=0.05)
    assert result.status is RunStatus.TIMED_OUT
    assert result.status == "timed_out"  # a str enum: string comparisons keep working
    assert isinstance(result.error, RunTimeout)
    assert isinstance(result.error, FlowError) and isinstance(result.error, TimeoutError)
    assert result.error.timeout == 0.05
    with pytest.raises(FlowError):
        result.raise_for_error()


def test_run_status_reads_as_its_value() -> None:
    @tl
    def one() -> int:
        return 1

    result = run(one())
    assert result.status is RunStatus.COMPLETED
    assert f"{result.status}" == str(result.status) == "completed"
    assert result.to_dict()["status"] == "completed"


def test_every_public_error_is_a_flow_error() -> None:
    errors = [getattr(flowdsl, n) for n in flowdsl.__all__
              if isinstance(getattr(flowdsl, n), type)
              and issubclass(getattr(flowdsl, n), BaseException)]
    assert {e.__name__ for e in errors} >= {"HistoryError", "RunNotFound", "RunTimeout"}
    assert all(issubclass(e, FlowError) for e in errors)
    assert all(e.__module__ == "flowdsl._base.errors" for e in errors)


class _Recording(Executor):
    name = "recording"

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def prepare(self, tasks: Mapping[str, Any], priorities: Mapping[str, float]) -> None:
        self.seen = {t: priorities[t] for t in tasks}

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, task_id: str) -> Any:
        return fn(*args, **kwargs)


def test_executor_interface_declares_remote_and_prepare() -> None:
    """An executor says whether it is remote and gets its tasks and their priorities before
    any task runs, through methods the base class declares (no probing with getattr)."""
    assert Executor.remote is False

    @tl(expected_duration=2.0)
    def a() -> float:
        return time.monotonic()

    @tl(expected_duration=1.0)
    def b(x: float) -> float:
        return x

    ex = _Recording()
    first = a()
    result = run(first >> b(first), executor=ex)
    assert result.ok, result.error
    assert ex.seen == {"a": 3.0, "b": 1.0}  # critical-path remaining time as priority
