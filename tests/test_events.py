"""The run's event stream (issue 26 part 1; docs/SEMANTICS.md, "The event stream"): one event
per transition, in order, with sequence numbers and the run's clock; consumers read it in
batches in a thread of their own; a raising or slow consumer never fails or blocks the run.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import flowdsl
from flowdsl import Backoff, Event, EventConsumerWarning, EventKind, tool
from flowdsl._run import events as events_module

K = EventKind


class Collect:
    """A consumer that keeps every batch it is given, and the threads it ran in."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: Sequence[Event]) -> None:
        self.batches.append(list(batch))
        self.threads.add(threading.current_thread().name)

    @property
    def events(self) -> list[Event]:
        return [e for b in self.batches for e in b]

    def of(self, task: str) -> list[tuple[str, int | None]]:
        return [(e.kind.value, e.attempt) for e in self.events if e.task == task]


def run(flow: Any, **options: Any) -> tuple[flowdsl.RunResult[Any], Collect]:
    got = Collect()
    result = flowdsl.run(flow, history=False, observers=[got, *options.pop("also", ())],
                         **options)
    return result, got


def check_stream(events: list[Event]) -> None:
    """Sequence numbers from 0 with no gap, times in order, run_started first and
    run_finished last."""
    assert [e.seq for e in events] == list(range(len(events)))
    times = [e.time for e in events]
    assert times == sorted(times)
    assert events[0].kind is K.RUN_STARTED
    assert events[-1].kind is K.RUN_FINISHED


@tool(registry=False)
def one() -> int:
    return 1


@tool(registry=False)
async def nap(x: float) -> float:
    await anyio.sleep(x)
    return x


@tool(registry=False)
def boom(x: Any = None) -> None:
    msg = "boom"
    raise ValueError(msg)


def test_a_retried_task_goes_through_every_transition_in_order() -> None:
    calls = {"n": 0}

    @tool(registry=False, retries=1, backoff=Backoff(initial=0.01, jitter="none"))
    def flaky(x: int) -> int:
        calls["n"] += 1
        print("call", calls["n"])
        if calls["n"] == 1:
            raise ValueError("first call fails")
        return x + 1

    a = one()
    result, got = run(a >> flaky(a))
    assert result.ok
    ev = got.events
    check_stream(ev)
    assert got.of("one") == [("task_ready", None), ("task_started", 1),
                             ("task_finished", 1)]
    assert got.of("flaky") == [
        ("task_ready", None), ("task_started", 1), ("attempt_failed", 1),
        ("task_waiting_to_retry", 1), ("task_started", 2), ("log", None), ("log", None),
        ("task_finished", 2)]
    by = {(e.kind, e.task, e.attempt): e for e in ev}
    failed = by[K.ATTEMPT_FAILED, "flaky", 1]
    assert failed.detail.type == "ValueError"
    assert by[K.TASK_WAITING_TO_RETRY, "flaky", 1].detail == 0.01
    assert [e.detail["event"] for e in ev if e.kind is K.LOG] == ["call 1", "call 2"]
    rec = result.tasks["flaky"]
    # the events' times are the record's clock
    assert by[K.TASK_STARTED, "flaky", 1].time == pytest.approx(rec.started_at, abs=1e-3)
    assert by[K.TASK_FINISHED, "flaky", 2].time >= rec.ended_at  # type: ignore[operator]
    assert by[K.TASK_FINISHED, "flaky", 2].detail is flowdsl.TaskStatus.COMPLETED
    assert ev[-1].detail is flowdsl.RunStatus.COMPLETED
    start = ev[0].detail
    assert (start.run_id, start.mode, list(start.plan.order)) == (result.run_id, "parallel",
                                                             ["one", "flaky"])
    assert got.threads == {"flowdsl-events"}  # never the event loop's thread


def test_waiting_for_pools_only_when_the_pool_is_taken() -> None:
    pooled = nap.with_options(resources={"p": 1})
    flow = flowdsl.parallel(pooled(0.05), pooled(0.05))
    result, got = run(flow, resources={"p": 1})
    assert result.ok
    waits = [e for e in got.events if e.kind is K.TASK_WAITING_FOR_POOLS]
    assert len(waits) == 1 and waits[0].detail == {"p": 1}
    waiter = waits[0].task
    assert got.of(waiter)[:3] == [("task_ready", None), ("task_waiting_for_pools", None),
                                  ("task_started", 1)]


def test_pipeline_items_start_and_finish() -> None:
    @tool(registry=False)
    def double(x: int) -> int:
        return 2 * x

    @tool(registry=False)
    def inc(x: int) -> int:
        return x + 1

    result, got = run(double.stage() >> inc.stage(), mode="pipeline", items=[1, 2, 3])
    assert result.output == [3, 5, 7]
    ev = got.events
    check_stream(ev)
    assert [e.item for e in ev if e.kind is K.ITEM_STARTED] == [0, 1, 2]
    assert sorted(e.item for e in ev if e.kind is K.ITEM_FINISHED) == [0, 1, 2]
    done = [(e.task, e.item) for e in ev if e.kind is K.TASK_FINISHED]
    assert sorted(done) == [(s, i) for s in ("double", "inc") for i in range(3)]
    for i in range(3):  # an item finishes after its last stage
        at = [n for n, e in enumerate(ev) if e.item == i]
        assert ev[at[-1]].kind is K.ITEM_FINISHED and ev[at[0]].kind is K.ITEM_STARTED


def test_skips_and_upstream_failures_are_final_without_a_start() -> None:
    c = nap(0.0).when(lambda ctx: False)
    result, got = run(flowdsl.parallel(boom() >> one(), c), continue_on_error=True)
    assert not result.ok
    finals = {e.task: e.detail for e in got.events if e.kind is K.TASK_FINISHED}
    assert finals == {tid: rec.status for tid, rec in result.tasks.items()}
    assert {str(s) for s in finals.values()} == {"failed", "upstream_failed", "skipped"}
    for tid, status in finals.items():
        kinds = [k for k, _ in got.of(tid)]
        if status in ("upstream_failed", "skipped"):
            assert kinds == ["task_ready", "task_finished"], (tid, kinds)


def test_a_timeout_is_an_attempt_failed_then_timed_out() -> None:
    result, got = run(nap.with_options(timeout=0.05)(5.0))
    assert result.status == "failed"
    assert got.of("nap") == [("task_ready", None), ("task_started", 1), ("attempt_failed", 1),
                             ("task_finished", 1)]
    ev = {e.kind: e for e in got.events if e.task == "nap"}
    assert ev[K.ATTEMPT_FAILED].detail.type == "TaskTimeout"
    assert ev[K.TASK_FINISHED].detail is flowdsl.TaskStatus.TIMED_OUT


def test_an_attempt_cut_by_its_groups_deadline_is_an_attempt_failed() -> None:
    """The group's timeout ends the attempt in flight timed out (its record says so): the
    stream says so too, before the task's timed-out finish (it said nothing of it)."""
    result, got = run(flowdsl.Flow("g", nap(5.0)).with_options(timeout=0.05))
    assert result.status == "failed"
    (att,) = result.tasks["nap"].attempts
    assert att.status is flowdsl.TaskStatus.TIMED_OUT
    assert got.of("nap") == [("task_ready", None), ("task_started", 1), ("attempt_failed", 1),
                             ("task_finished", 1)]
    ev = {e.kind: e for e in got.events if e.task == "nap"}
    assert ev[K.ATTEMPT_FAILED].detail == att.error
    assert ev[K.TASK_FINISHED].detail is flowdsl.TaskStatus.TIMED_OUT


def test_fail_fast_cancels_the_running_ones() -> None:
    result, got = run(flowdsl.parallel(boom(), nap(5.0)))
    assert result.status == "failed"
    finals = {e.task: str(e.detail) for e in got.events if e.kind is K.TASK_FINISHED}
    assert finals == {"boom": "failed", "nap": "cancelled"}
    assert got.events[-1].detail is flowdsl.RunStatus.FAILED


def test_a_map_starts_its_children_and_rollback_is_an_event() -> None:
    undone: list[Any] = []

    @tool(registry=False, rollback=undone.append)
    def sq(x: int) -> int:
        return x * x

    flow = sq.map([1, 2, 3]) >> boom()
    result, got = run(flow, rollback_on_failure=True)
    assert result.status == "rolled_back"
    ids = [t for t in result.tasks if t.startswith("sq")]
    assert got.of("sq")[:2] == [("task_ready", None), ("task_started", None)]
    for c in ("sq[0]", "sq[1]", "sq[2]"):
        assert got.of(c)[:2] == [("task_ready", None), ("task_started", 1)]
    rolled = {e.task for e in got.events if e.kind is K.TASK_ROLLED_BACK}
    assert rolled == {t for t in ids if str(result.tasks[t].status) == "rolled_back"}
    assert rolled  # the children completed and were undone


def test_on_trio_too() -> None:
    got = Collect()
    result = flowdsl.run(one(), history=False, observers=[got], backend="trio")
    assert result.ok
    assert [e.kind.value for e in got.events] == [
        "run_started", "task_ready", "task_started", "task_finished", "run_finished"]


def test_a_raising_consumer_is_detached_with_a_warning() -> None:
    seen: list[int] = []

    def bad(batch: Sequence[Event]) -> None:
        seen.append(len(batch))
        raise RuntimeError("consumer bug")

    good = Collect()
    with pytest.warns(EventConsumerWarning, match=r"'test_a_raising.*bad'.*RuntimeError: "
                      "consumer bug"):
        result = flowdsl.run(nap(0.2) >> one(), history=False, observers=[bad, good])
    assert result.ok and result.error is None
    assert len(seen) == 1  # detached after its first batch
    check_stream(good.events)  # the other consumer read everything


def test_a_slow_consumer_loses_the_oldest_events_not_the_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stated overflow policy: the log holds MAX_PENDING unread events; past that the
    oldest go, and the reader hands one events_lost (detail: how many) in their place."""
    monkeypatch.setattr(events_module, "MAX_PENDING", 20)
    gate = threading.Event()
    got = Collect()

    def slow(batch: Sequence[Event]) -> None:
        gate.wait(10)  # held until the flow's last task ran: the loop did not wait for it
        got(batch)

    @tool(registry=False)
    def last(x: Any = None) -> str:
        gate.set()
        return "done"

    flow = flowdsl.parallel(*[one() for _ in range(30)]) >> last()
    t0 = time.monotonic()
    result = flowdsl.run(flow, history=False, observers=[slow])
    assert result.ok
    assert time.monotonic() - t0 < 9  # the run never waited out the consumer's gate
    ev = got.events
    lost = [e for e in ev if e.kind is K.EVENTS_LOST]
    assert lost and all(e.detail > 0 for e in lost)
    # every sequence number is accounted for: delivered, or counted in an events_lost
    count = sum(e.detail if e.kind is K.EVENTS_LOST else 1 for e in ev)
    assert count == ev[-1].seq + 1
    assert ev[-1].kind is K.RUN_FINISHED


def test_a_consumer_still_reading_at_the_end_is_detached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "CLOSE_WAIT", 0.2)
    release = threading.Event()

    def stuck(batch: Sequence[Event]) -> None:
        release.wait(10)

    t0 = time.monotonic()
    try:
        with pytest.warns(EventConsumerWarning, match="still reading 0.2s after"):
            result = flowdsl.run(one(), history=False, observers=[stuck])
    finally:
        release.set()
    assert result.ok
    assert time.monotonic() - t0 < 5


def test_a_run_without_consumers_has_no_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no consumer: no event log")

    monkeypatch.setattr(events_module.EventLog, "__init__", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert flowdsl.run(one() >> one(), history=False).ok


def test_hook_observers_and_event_consumers_together() -> None:
    class Hooks:
        def __init__(self) -> None:
            self.finished: list[str] = []

        def run_started(self, result: Any, plan: Any) -> None: ...
        def task_started(self, result: Any, record: Any) -> None: ...

        def task_finished(self, result: Any, record: Any, output: Any) -> None:
            self.finished.append(record.id)

        def run_finished(self, result: Any) -> None: ...

    hooks = Hooks()
    a = one()
    result, got = run(a >> nap(0.01), also=[hooks])
    assert result.ok
    assert hooks.finished == [e.task for e in got.events if e.kind is K.TASK_FINISHED]
