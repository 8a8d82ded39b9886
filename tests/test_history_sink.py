"""S44 through the helper process that writes a store's large batches and folds its large runs
(``flowdsl/_record/history/sink.py``): what it writes is what the run did, it never loses a
row when it dies or fails, it is not the terminal's to interrupt, and it ends with the store.
Each run here is checked row by row against its records."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import flowdsl
from flowdsl import tool
from flowdsl._record.history import HistoryStore, close_cached, sink

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the helper is POSIX only")


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every batch of 8 rows or more goes to the helper (1,024 by default)."""
    monkeypatch.setenv("FLOWDSL_HISTORY", "off")
    monkeypatch.setattr("flowdsl._record.history.SINK_MIN_ROWS", 8)
    yield
    close_cached()


calls = {"n": 0}


@tool(executor="async", registry=False)
async def step(i: int) -> int:
    """Fail the first call of every tenth task once (attempt rows), else return."""
    calls["n"] += 1
    if i % 10 == 0 and calls.setdefault(f"seen{i}", 0) == 0:
        calls[f"seen{i}"] = 1
        raise ValueError(f"first call of {i}")
    return i


@tool(executor="async", registry=False)
async def noop(i: int) -> int:
    """Return."""
    return i


def _flow(n: int) -> Any:
    for k in [k for k in calls if k.startswith("seen")]:
        del calls[k]
    return flowdsl.parallel(*[step.with_options(retries=1)(i) for i in range(n)])


def _flow_ids(n: int) -> set[str]:
    return set(flowdsl.plan(_flow(n)).order)


def _ready(store: HistoryStore) -> sink.Sink:
    """The store's helper, once it said it is ready (started by a first large batch)."""
    deadline = time.monotonic() + 30.0
    while True:
        helper = store._sink
        if helper is not None and helper.ready():
            return helper
        assert time.monotonic() < deadline, "the helper never became ready"
        if helper is None or helper.dead:
            flowdsl.run(_flow(40), history=store).raise_for_error()
        time.sleep(0.01)


def _check_rows(store: HistoryStore, result: flowdsl.RunResult[Any]) -> None:
    """The run's rows in the file are its records: status, start, end and every attempt."""
    run = store.get_run(result.run_id)
    assert run["status"] == result.status.value
    rows = {r["task_id"]: r for r in run["tasks"]}
    assert set(rows) == set(result.tasks)
    for tid, rec in result.tasks.items():
        row = rows[tid]
        assert (row["status"], row["started_at"], row["ended_at"]) == (
            rec.status.value, rec.started_at, rec.ended_at), tid
        assert [(a["number"], a["status"]) for a in row["attempts"]] == [
            (a.number, a.status.value) for a in rec.attempts], tid
    assert any(len(rec.attempts) == 2 for rec in result.tasks.values())


def _wrap(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record each request the helper answers: its op, and whether it was done there (or
    the type of the error it answered)."""
    seen: list[tuple[str, Any]] = []
    real = sink.Sink._call

    def call(self: sink.Sink, op: str, payload: Any) -> tuple[bool, Any]:
        try:
            out = real(self, op, payload)
        except Exception as exc:
            seen.append((op, type(exc)))
            raise
        seen.append((op, out[0]))
        return out

    monkeypatch.setattr(sink.Sink, "_call", call)
    return seen


def test_large_batches_and_folds_go_to_the_helper(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run is folded after it returns (a run under 1,000 tasks is folded in the
    # transaction of its end row otherwise, in this process when that row came in a small
    # batch, as it can on a slow machine).
    monkeypatch.setattr("flowdsl._record.history.FOLD_INLINE_MAX", 0)
    with HistoryStore(tmp_path / "h.db", flush_rows=16) as store:
        helper = _ready(store)
        assert helper.pid is not None and helper.pid != os.getpid()
        seen = _wrap(monkeypatch)
        results = [flowdsl.run(_flow(300), history=store) for _ in range(2)]
        store.flush()
        assert ("w", True) in seen and ("f", True) in seen  # written and folded there
        for result in results:
            assert result.ok and result.history_error is None
            _check_rows(store, result)
        (folded,) = store._rows("SELECT count(*) FROM runs WHERE aggregated = 0", ())
        assert folded == (0,)
        # Both runs folded, once each: the tasks past the warm-up runs' 40 ran in them only.
        counts = dict(store._rows("SELECT task_id, n FROM task_stats", ()))
        later = [t for t in results[0].tasks if t not in _flow_ids(40)]
        assert len(later) == 260 and {counts[t] for t in later} == {2}
        pid = helper.pid
    # The store closed: its helper ended (reaped by the store, so no zombie is left).
    assert helper.dead and helper.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_helper_that_dies_loses_no_row(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with HistoryStore(tmp_path / "h.db", flush_rows=16) as store:
        helper = _ready(store)
        assert helper.pid is not None
        os.kill(helper.pid, signal.SIGKILL)
        seen = _wrap(monkeypatch)
        result = flowdsl.run(_flow(300), history=store)
        store.flush()
        assert result.ok and result.history_error is None
        assert ("w", False) in seen  # found dead: written here instead
        _check_rows(store, result)
        (folded,) = store._rows("SELECT count(*) FROM runs WHERE aggregated = 0", ())
        assert folded == (0,)


def test_what_the_helper_cannot_write_is_written_as_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone surrogate in an error message: the helper's UnicodeEncodeError comes back, and
    the batch is escaped and written again, as a batch written here would be."""

    @tool(executor="async", registry=False)
    async def odd(i: int) -> None:
        raise ValueError(f"bad \udcff byte {i}")

    with HistoryStore(tmp_path / "h.db", flush_rows=16) as store:
        _ready(store)
        seen = _wrap(monkeypatch)
        flow = flowdsl.parallel(*[odd(i) for i in range(40)])
        result = flowdsl.run(flow, history=store, continue_on_error=True)
        assert result.history_error is None
        assert ("w", UnicodeEncodeError) in seen and ("w", True) in seen
        rows = store.get_run(result.run_id)["tasks"]
        assert len(rows) == 40
        assert all(r["error_message"].startswith("bad \\udcff byte") for r in rows)


def test_the_terminals_ctrl_c_does_not_reach_the_helper(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db", flush_rows=16) as store:
        helper = _ready(store)
        assert helper.pid is not None
        assert os.getsid(helper.pid) != os.getsid(0)
        assert os.getpgid(helper.pid) != os.getpgid(0)


def test_an_in_memory_store_never_starts_one(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    monkeypatch.setattr(sink.Sink, "start", classmethod(lambda cls, path: started.append(path)))
    with HistoryStore(":memory:", flush_rows=16) as store:
        result = flowdsl.run(_flow(300), history=store)
        assert result.ok and len(store.get_run(result.run_id)["tasks"]) == 300
    assert started == []


def test_a_helper_that_cannot_start_leaves_the_writing_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink.sys, "executable", "/nonexistent/python3")
    with HistoryStore(tmp_path / "h.db", flush_rows=16) as store:
        for _ in range(2):
            result = flowdsl.run(_flow(300), history=store)
            assert result.ok and result.history_error is None
            _check_rows(store, result)
        assert store._sink is not None and store._sink.dead


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 25), reason="no window functions")
def test_many_tools_fold_as_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of more tools than the per-tool statements serve is folded by one windowed
    statement: the statistics it gives are those of the per-tool statements, the latest
    WINDOW durations of each tool included."""
    monkeypatch.setattr("flowdsl._record.history.FOLD_INLINE_MAX", 0)
    path = tmp_path / "h.db"
    store = HistoryStore(path)
    monkeypatch.setattr(store, "_aggregate", lambda: None)  # left unfolded in the file
    tools = [noop.with_options(name=f"k{j}") for j in range(sink._PER_TOOL_MAX + 3)]
    flow = flowdsl.parallel(*[tools[i % len(tools)](i + 1) for i in range(80 * len(tools))])
    flowdsl.run(flow, history=store).raise_for_error()
    store.close()
    stats = []
    for per_tool_max in (0, 10**6):
        copy = tmp_path / f"copy{per_tool_max}.db"
        shutil.copy(path, copy)
        monkeypatch.setattr(sink, "_PER_TOOL_MAX", per_tool_max)
        c = sqlite3.connect(copy, isolation_level=None)
        (run_id,) = c.execute("SELECT run_id FROM runs").fetchone()
        assert sink.aggregate_once(c, run_id)[1]
        stats.append(c.execute(
            "SELECT tool, tasks, completed, task_n, task_sum, task_recent, call_n, call_sum, "
            "call_max, call_recent FROM stats ORDER BY tool").fetchall())
        c.close()
    assert len(stats[0]) == len(tools)
    assert stats[0] == stats[1]
    windows = [sink.unpack(row[i]) for row in stats[0] for i in (5, 9)]  # the recents
    assert {len(w) for w in windows} == {sink.WINDOW}
