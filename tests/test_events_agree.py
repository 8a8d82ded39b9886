"""Every view of a run agrees with its event stream (issue 26 part 1), on the differential
generator's flows (tests/test_differential.py: maps, groups with retries and timeouts,
switches, trigger rules, pools, rollback, cache hits and resumes; on asyncio and on trio),
and on generated pipelines over items (each stage x item a node, with retries, failures,
timeouts and a pool): the result's statuses and attempts, the history rows and run row, live
progress (a consumer of the stream), the timelines drawn from the result and from history,
and the OpenTelemetry spans (run and attempts, pool waits, with the SDK's in-memory
exporter) all say what the events say."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential import CALLS, ROLLED, SCRIPTS, engine_run, flows

import flowdsl
from flowdsl import Event, EventKind, HistoryStore, tool
from flowdsl._report.progress import _State
from flowdsl._report.timeline import from_history, from_result

K = EventKind
_N = itertools.count()


class View:
    """What the events alone say of each node (``stage@i`` for a pipeline item)."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = list(events)
        self.final: dict[str, str] = {}  # the last task_finished (before any rollback),
        # unless a task_reset came after it
        self.rolled: set[str] = set()
        self.reset: set[str] = set()  # nodes a retried group made pending again
        self.attempts: Counter[str] = Counter()
        self.failed: set[tuple[str, int]] = set()  # (node, attempt) that failed or timed out
        self.ready: set[str] = set()
        self.waited: set[str] = set()  # nodes that waited for pools
        self.run_status: str | None = None
        for e in self.events:
            key = f"{e.task}" if e.item is None else f"{e.task}@{e.item}"
            if e.kind is K.TASK_FINISHED:
                self.final[key] = str(e.detail)
            elif e.kind is K.TASK_RESET:  # a retried group's next attempt: pending again
                del self.final[key]
                self.reset.add(key)
            elif e.kind is K.TASK_ROLLED_BACK:
                self.rolled.add(key)
            elif e.kind is K.TASK_STARTED and e.attempt is not None:
                self.attempts[key] += 1
            elif e.kind is K.ATTEMPT_FAILED and e.attempt is not None:
                self.failed.add((key, e.attempt))
            elif e.kind is K.TASK_READY:
                self.ready.add(key)
            elif e.kind is K.TASK_WAITING_FOR_POOLS:
                self.waited.add(key)
            elif e.kind is K.RUN_FINISHED:
                self.run_status = str(e.detail)

    def status(self, key: str) -> str:
        """The node's status now: pending if it never became final."""
        if key in self.rolled:
            return "rolled_back"
        return self.final.get(key, "pending")


def agree_spans(view: View, spans: Any) -> None:
    """The run span has the run's status; each node has one attempt span per attempt the
    events started, numbered as they are, in error where the events say it failed. The
    spans read are cleared: the next run's are its own."""
    from opentelemetry.trace import StatusCode

    finished = spans.get_finished_spans()
    spans.clear()
    (run,) = [s for s in finished if s.name.startswith("flowdsl.run")]
    assert run.attributes["flowdsl.status"] == view.run_status, "run span"
    numbers: dict[str, list[int]] = {}
    failed: set[tuple[str, int]] = set()
    waited: set[str] = set()  # nodes whose first attempt span has a pool wait
    for s in finished:
        if not s.name.startswith("flowdsl.task "):
            continue
        a = s.attributes
        key = (a["flowdsl.task.id"] if "flowdsl.item" not in a
               else f"{a['flowdsl.task.id']}@{a['flowdsl.item']}")
        numbers.setdefault(key, []).append(a["flowdsl.attempt"])
        if s.status.status_code is StatusCode.ERROR:
            failed.add((key, a["flowdsl.attempt"]))
        if any(ev.name == "flowdsl.pool_wait" for ev in s.events):
            waited.add(key)
    assert {k: len(v) for k, v in numbers.items()} == {
        k: n for k, n in view.attempts.items() if n}, "attempt spans"
    for key, got in numbers.items():
        assert sorted(got) == list(range(1, len(got) + 1)), (key, "attempt numbers")
    assert failed == view.failed, "failed attempt spans"
    # A wait for pools is an event of the attempt that followed it (none if none did).
    assert waited == {k for k in view.waited if view.attempts[k]}, "pool waits"


def agree_stream(view: View, result: Any, progress: _State, spans: Any) -> None:
    """The stream is whole and ends with the run's status; live progress and the spans
    (where the SDK is installed) say what it says."""
    assert [e.seq for e in view.events] == list(range(len(view.events)))
    assert view.run_status == result.status.value
    if spans is not None:  # OpenTelemetry
        agree_spans(view, spans)
    assert progress.finished == view.final, "progress"


def agree_row(view: View, key: str, rows: dict[str, Any]) -> None:
    """The node's history row has the events' status and attempts (none while pending)."""
    row = rows.get(key)
    if row is None:
        assert view.status(key) == "pending", (key, "no history row")
        return
    assert row["status"] == view.status(key), (key, "history status")
    assert len(row["attempts"]) == view.attempts[key], (key, "history attempts")


def agree(result: Any, events: Sequence[Event], progress: _State, path: Path,
          spans: Any = None) -> None:
    view = View(events)
    agree_stream(view, result, progress, spans)
    # RunResult
    for tid, rec in result.tasks.items():
        assert rec.status.value == view.status(tid), (tid, rec.status, view.status(tid))
        assert len(rec.attempts) == view.attempts[tid], (tid, "attempts")
    assert set(view.final) <= set(result.tasks)
    # live progress (a consumer of the stream): every final node (agree_stream), no more
    assert not progress.running
    assert progress.status == result.status
    # history: the run row and one row per node that became final
    store = HistoryStore(path)
    try:
        run = store.get_run(result.run_id)
    finally:
        store.close()
    assert run["status"] == view.run_status
    rows = {r["task_id"]: r for r in run["tasks"]}
    for tid in result.tasks:
        agree_row(view, tid, rows)
    # timelines: one bar per node, with the events' status
    for tl in (from_result(result), from_history(run, result.plan)):
        for bar in tl.bars:
            assert bar.status == view.status(bar.id), (bar.id, "timeline")


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=flows())
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_view_agrees_with_the_event_stream(backend: str, case: tuple[Any, str],
                                                 tmp_path: Path, spans: Any) -> None:
    fd, scenario = case
    CALLS.clear()
    ROLLED.clear()
    SCRIPTS.clear()
    SCRIPTS.update(fd.scripts)
    path = tmp_path / f"h{next(_N)}.db"
    runs = [{}, {}] if scenario == "cache" else [{}]
    first: Any = None
    for options in runs:
        if scenario == "resume" and first is not None:
            options = {"resume": first.run_id}
        got: list[Event] = []
        progress = _State()
        result = engine_run(fd, backend, path, observers=[got.extend, progress],
                            **options)
        agree(result, got, progress, path, spans)
        first = first or result
    if scenario == "resume":
        got = []
        progress = _State()
        result = engine_run(fd, backend, path, observers=[got.extend, progress],
                            resume=first.run_id)
        agree(result, got, progress, path, spans)


def test_progress_forgets_a_reset_node(tmp_path: Path) -> None:
    """A member a retried group resets and never runs again is pending in the result, the
    stream and live progress (progress kept its first final status while it had hooks of
    its own)."""
    from reference import FlowD, GroupD, Script, TaskD

    def t(tid: str, **kw: Any) -> TaskD:
        return TaskD(id=tid, deps=[], **kw)

    fd = FlowD([[GroupD("g", [["a"], ["b"]], retries=1)]],
               {"a": t("a", timeout=1.0), "b": t("b")},
               {"a": Script(2.0, (), None), "b": Script(1.0, (), None)}, {})
    SCRIPTS.clear()
    SCRIPTS.update(fd.scripts)
    got: list[Event] = []
    progress = _State()
    result = engine_run(fd, "asyncio", tmp_path / "h.db", observers=[got.extend, progress])
    assert result.tasks["b"].status == "pending"
    assert View(got).status("b") == "pending"
    assert "b" not in progress.finished


# -- pipelines over items (not in the differential generator): each stage x item a node ------

#: S5: a stage's summary takes the worst of its items' statuses, in this order.
_WORST = ["failed", "timed_out", "cancelled", "upstream_failed", "rolled_back", "running",
          "pending", "skipped", "completed", "cached"]
#: (stage, item) -> "fail", "flaky" (fails its first call) or "slow" (outlasts the stage's
#: timeout); else the call returns at once.
_SCRIPT: dict[tuple[str, int], str] = {}
_CALLED: set[tuple[str, int]] = set()


def _stage_tool(name: str) -> Any:
    @tool(name=name, registry=False, executor="async")
    async def step(x: int) -> int:
        how = _SCRIPT.get((name, x))
        # Holds its pool unit over a scheduler step at least: stages overlap, and wait.
        await anyio.sleep(1.0 if how == "slow" else 0)  # (slow: cut at the stage's timeout)
        if how == "fail" or (how == "flaky" and (name, x) not in _CALLED):
            _CALLED.add((name, x))
            msg = f"{name} fails item {x}"
            raise ValueError(msg)
        return x

    return step


@st.composite
def pipelines(draw: st.DrawFn) -> tuple[list[tuple[str, int, bool]], int,
                                        dict[tuple[str, int], str], bool]:
    # (name, retries, whether it takes the one unit of pool "p")
    pooled = st.sampled_from([True, True, False])
    stages = [(f"s{k}", draw(st.sampled_from([0, 1])), draw(pooled))
              for k in range(draw(st.integers(1, 3)))]
    n = draw(st.integers(1, 5))
    script = {(s, i): how for s, _, _ in stages for i in range(n)
              if (how := draw(st.sampled_from(["ok", "ok", "ok", "fail", "flaky", "slow"])))
              != "ok"}
    return stages, n, script, draw(st.booleans())


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=pipelines())
def test_every_view_of_a_pipeline_agrees_with_the_event_stream(
        case: tuple[list[tuple[str, int, bool]], int, dict[tuple[str, int], str], bool],
        tmp_path: Path, spans: Any) -> None:
    """Each stage x item: the result's item records, the stage's summary (S5), the history
    rows ``stage@i``, live progress, the timelines and the attempt spans say what the
    events say."""
    stages, n, script, keep_going = case
    _SCRIPT.clear()
    _SCRIPT.update(script)
    _CALLED.clear()
    flow: Any = None
    for name, retries, pooled in stages:
        stage = _stage_tool(name).with_options(retries=retries, backoff=0, timeout=0.02,
                                               resources={"p": 1} if pooled else None
                                               ).stage()
        flow = stage if flow is None else flow >> stage
    got: list[Event] = []
    progress = _State()
    path = tmp_path / f"p{next(_N)}.db"
    with HistoryStore(path) as store:
        result = flowdsl.run(flow, mode="pipeline", items=range(n), history=store,
                             resources={"p": 1}, continue_on_error=keep_going,
                             observers=[got.extend, progress])
        run = store.get_run(result.run_id)
    view = View(got)
    agree_stream(view, result, progress, spans)
    rows = {r["task_id"]: r for r in run["tasks"]}
    for name, _, _ in stages:
        rec = result.tasks[name]
        items = {x.item: x for x in rec.items or ()}
        keys = {f"{name}@{i}" for i in items}
        assert {k for k in view.final if k.startswith(f"{name}@")} <= keys, name
        for i, x in items.items():
            key = f"{name}@{i}"
            assert x.status.value == view.status(key), (key, x.status, view.status(key))
            assert len(x.attempts) == view.attempts[key], (key, "attempts")
            agree_row(view, key, rows)
        # S5: the summary is the worst of its items (pending while none began), with every
        # item's attempts
        worst = min((x.status.value for x in items.values()), key=_WORST.index,
                    default="pending")
        assert rec.status.value == worst, (name, rec.status, worst)
        assert len(rec.attempts) == sum(len(x.attempts) for x in items.values()), name
        assert rows[name]["status"] == worst, (name, "history summary")
    for tl in (from_result(result), from_history(run, result.plan)):
        for bar in tl.bars:
            want = (view.status(bar.id) if "@" in bar.id
                    else result.tasks[bar.id].status.value)
            assert bar.status == want, (bar.id, "timeline")
