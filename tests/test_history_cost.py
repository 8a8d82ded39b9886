"""What recording costs (issue 26 part 5): rows go to SQLite in a few multi-row statements,
a task's start costs the run three fields, and a large flow's expected durations are not
read back at every run's end. Each test checks that the records stay true as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import flowdsl
from flowdsl import Attempt, ErrorInfo, RunResult, TaskRecord, TaskStatus, tool
from flowdsl._record.history import HistoryStore, close_cached
from flowdsl._record.history import read as history_read
from flowdsl._record.history import write as history_write
from flowdsl._record.history.sink import ROWS_PER_STATEMENT


@pytest.fixture(autouse=True)
def _no_default_history(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FLOWDSL_HISTORY", "off")
    yield
    close_cached()


@tool(executor="async", registry=False)
async def quick(after: Any = None) -> None:
    """Do nothing."""


@tool(executor="async", registry=False)
async def nap() -> None:
    """Sleep 2 ms."""
    await anyio.sleep(0.002)


def _feed(store: HistoryStore, run_id: str, n: int, *, retried: int = 0,
          finish: bool = True) -> RunResult:
    """A synthetic run of ``n`` tasks fed to the store's observer as a run feeds it; the
    first ``retried`` tasks fail once before they complete (attempt rows of their own)."""
    result = RunResult(run_id, "f", "parallel")
    obs = store.observer("f")
    obs.run_started(result, None)
    for i in range(n):
        rec = TaskRecord(f"t{i}", "noop", TaskStatus.RUNNING, started_at=float(i))
        result.tasks[rec.id] = rec
        obs.task_started(result, rec)
        if i < retried:
            rec.attempts.append(Attempt(1, float(i), i + 0.25, TaskStatus.FAILED,
                                        ErrorInfo("ValueError", f"boom {i}")))
        # A single attempt that spans its task has no row of its own (readers imply it).
        rec.attempts.append(Attempt(len(rec.attempts) + 1, i + 0.25 if i < retried else i,
                                    i + 0.5, TaskStatus.COMPLETED))
        rec.status, rec.ended_at = TaskStatus.COMPLETED, i + 0.5
        obs.task_finished(result, rec, None)
    if finish:
        result.status = "completed"
        result.duration = float(n)
        obs.run_finished(result)
        assert store._settle(run_id) is None
    return result


class TestMultiRowWrites:
    @pytest.mark.parametrize("n", [1, ROWS_PER_STATEMENT - 1, 2 * ROWS_PER_STATEMENT + 77])
    def test_every_row_is_written_as_fed(self, tmp_path: Path, n: int) -> None:
        """Full statements, powers of two left over, and attempt rows: each task and each
        attempt has exactly the row its record gives."""
        with HistoryStore(tmp_path / "h.db") as store:
            _feed(store, "r1", n, retried=min(n, 300))
            tasks = store._rows("SELECT task_id, status, started_at, ended_at, attempts "
                                "FROM tasks WHERE run_id = 'r1' ORDER BY started_at", ())
            attempts = store._rows("SELECT task_id, number, status, error_message FROM "
                                   "attempts WHERE run_id = 'r1' ORDER BY task_id, number", ())
        assert tasks == [(f"t{i}", "completed", float(i), i + 0.5, 2 if i < 300 else 1)
                         for i in range(n)]
        want = sorted((f"t{i}", k, s, m) for i in range(min(n, 300)) for k, s, m in
                      ((1, "failed", f"boom {i}"), (2, "completed", None)))
        assert attempts == want

    def test_a_batch_costs_a_few_statements_not_one_per_row(self, tmp_path: Path) -> None:
        """The sqlite3 module hands the GIL over at every statement step: 1,000 tasks with
        attempt rows are written in a handful of statements (it was one per row)."""
        with HistoryStore(tmp_path / "h.db", flush_interval=60.0, flush_rows=10**9) as store:
            steps: list[str] = []
            store._conn.set_trace_callback(steps.append)
            _feed(store, "r1", 1000, retried=1000)
            store._conn.set_trace_callback(None)
            (count,) = store._rows("SELECT count(*) FROM attempts WHERE run_id = 'r1'", ())[0]
        inserts = [s for s in steps if s.startswith(("INSERT INTO tasks",
                                                     "INSERT OR REPLACE INTO attempts"))]
        assert count == 2000
        assert 2 <= len(inserts) <= 20, len(inserts)

    def test_two_runs_in_one_batch_keep_their_own_rows(self, tmp_path: Path) -> None:
        """Rows of two runs with the same task ids, queued in turn into one batch (the
        batch keeps them by run, then task): each run gets its own rows and attempts."""
        with HistoryStore(tmp_path / "h.db", flush_interval=60.0, flush_rows=10**9) as store:
            results, observers = {}, {}
            for run_id in ("r1", "r2"):
                results[run_id] = RunResult(run_id, "f", "parallel")
                observers[run_id] = store.observer("f")
                observers[run_id].run_started(results[run_id], None)
            for i in range(3):
                for k, run_id in enumerate(("r1", "r2")):
                    rec = TaskRecord(f"t{i}", "noop", TaskStatus.RUNNING,
                                     started_at=float(10 * k + i))
                    results[run_id].tasks[rec.id] = rec
                    observers[run_id].task_started(results[run_id], rec)
                    rec.attempts.append(Attempt(1, rec.started_at, rec.started_at + 0.1,
                                                TaskStatus.FAILED, ErrorInfo("E", run_id)))
                    rec.attempts.append(Attempt(2, rec.started_at + 0.1,
                                                rec.started_at + 0.5, TaskStatus.COMPLETED))
                    rec.status, rec.ended_at = TaskStatus.COMPLETED, rec.started_at + 0.5
                    observers[run_id].task_finished(results[run_id], rec, None)
            for run_id in ("r1", "r2"):
                results[run_id].status, results[run_id].duration = "completed", 1.0
                observers[run_id].run_finished(results[run_id])
            assert store._settle("r1") is None and store._settle("r2") is None
            tasks = store._rows("SELECT run_id, task_id, started_at, qualname FROM tasks "
                                "ORDER BY run_id, task_id", ())
            attempts = store._rows("SELECT run_id, task_id, number, error_message FROM "
                                   "attempts ORDER BY run_id, task_id, number", ())
        assert tasks == [(r, f"t{i}", float(10 * k + i), "noop")
                         for k, r in enumerate(("r1", "r2")) for i in range(3)]
        assert attempts == [(r, f"t{i}", n, r if n == 1 else None)
                            for r in ("r1", "r2") for i in range(3) for n in (1, 2)]

    def test_a_later_row_of_a_task_wins_within_one_statement(self, tmp_path: Path) -> None:
        """A task written twice in one batch (rolled back after it completed) keeps its
        last status, and the output stored with its first row."""
        with HistoryStore(tmp_path / "h.db", store_outputs=True, flush_interval=60.0,
                          flush_rows=10**9) as store:
            result = RunResult("r1", "f", "parallel")
            obs = store.observer("f")
            obs.run_started(result, None)
            rec = TaskRecord("a", "noop", started_at=0.0)
            result.tasks["a"] = rec
            obs.task_started(result, rec)
            rec.attempts.append(Attempt(1, 0.0, 1.0, TaskStatus.COMPLETED))
            rec.status, rec.ended_at = TaskStatus.COMPLETED, 1.0
            obs.task_finished(result, rec, {"x": 1})
            rec.status = TaskStatus.ROLLED_BACK
            result.status, result.duration = "rolled_back", 1.0
            obs.run_finished(result)
            assert store._settle("r1") is None
            row = store._rows("SELECT status, output FROM tasks WHERE task_id = 'a'", ())
        assert row == [("rolled_back", '{"x":1}')]


def _started(store: HistoryStore, **record: Any) -> tuple[RunResult, Any, TaskRecord]:
    """Run ``r1`` of flow ``f`` begun on the store, with task ``a`` started (the record's
    fields as given; running by default)."""
    result = RunResult("r1", "f", "parallel")
    obs = store.observer("f")
    obs.run_started(result, None)
    rec = TaskRecord("a", "noop", record.pop("status", TaskStatus.RUNNING), **record)
    obs.task_started(result, rec)
    return result, obs, rec


class TestRunningRows:
    def test_a_running_task_is_recorded_while_it_runs(self, tmp_path: Path) -> None:
        """A start whose row is made in the writer thread still reaches the file while the
        task runs, with its tool, start and attempt count."""
        with HistoryStore(tmp_path / "h.db") as store:
            result, obs, rec = _started(store, started_at=5.0)
            store.flush()
            row = store._rows("SELECT tool, status, started_at, ended_at, attempts FROM tasks "
                              "WHERE task_id = 'a'", ())
            rec.attempts.append(Attempt(1, 5.0, 6.0, TaskStatus.COMPLETED))
            rec.status, rec.ended_at = TaskStatus.COMPLETED, 6.0
            obs.task_finished(result, rec, None)
            result.status, result.duration = "completed", 1.0
            obs.run_finished(result)
            assert store._settle("r1") is None
            final = store._rows("SELECT status, ended_at FROM tasks WHERE task_id = 'a'", ())
        assert row == [("noop", "running", 5.0, None, 0)]
        assert final == [("completed", 6.0)]

    def test_a_start_after_a_final_row_in_one_batch_keeps_the_output(
            self, tmp_path: Path) -> None:
        """A group's retry starts a task again after its final row, in the same batch: the
        running row wins and the stored output is kept, as with rows made on the loop."""
        with HistoryStore(tmp_path / "h.db", store_outputs=True, flush_interval=60.0,
                          flush_rows=10**9) as store:
            result, obs, rec = _started(store, started_at=0.0)
            rec.attempts.append(Attempt(1, 0.0, 1.0, TaskStatus.COMPLETED))
            rec.status, rec.ended_at = TaskStatus.COMPLETED, 1.0
            obs.task_finished(result, rec, [1, 2])
            rec.status, rec.ended_at = TaskStatus.RUNNING, None  # rewound by its group
            obs.task_started(result, rec)
            store.flush()
            row = store._rows("SELECT status, attempts, output FROM tasks WHERE task_id = 'a'",
                              ())
        assert row == [("running", 1, "[1,2]")]

    def test_a_running_row_is_written_once(self, tmp_path: Path) -> None:
        """The writer makes a running task's row at its first write only: later writes
        while it runs send no statement for it (a long task costs one row, not one per
        write), unless it starts again."""
        with HistoryStore(tmp_path / "h.db", flush_interval=60.0,
                          flush_rows=10**9) as store:
            result, obs, rec = _started(store, started_at=1.0)
            sent: list[str] = []
            store._conn.set_trace_callback(sent.append)
            store.flush()
            first = [q for q in sent if "INTO tasks" in q]
            sent.clear()
            store.flush()
            second = [q for q in sent if "INTO tasks" in q]
            rec.attempts.append(Attempt(1, 1.0, 2.0, TaskStatus.FAILED))
            obs.task_started(result, rec)  # its next attempt: the row shows two attempts
            store.flush()
            store._conn.set_trace_callback(None)
            row = store._rows("SELECT status, attempts FROM tasks WHERE task_id = 'a'", ())
        assert len(first) == 1 and second == []
        assert row == [("running", 1)]

    def test_a_start_with_a_reason_is_recorded_as_it_was(self, tmp_path: Path) -> None:
        """A start whose record carries a reason is snapshotted on the loop, as before."""
        with HistoryStore(tmp_path / "h.db") as store:
            *_, rec = _started(store, started_at=1.0, reason="waiting for resources")
            rec.reason = "changed later"
            store.flush()
            row = store._rows("SELECT status, reason FROM tasks WHERE task_id = 'a'", ())
        assert row == [("running", "waiting for resources")]


@tool(executor="async", registry=False)
async def items(n: int) -> list[int]:
    """``n`` items to map over."""
    return list(range(n))


@tool(executor="async", registry=False)
async def double(x: int) -> int:
    """Twice ``x``."""
    return 2 * x


class TestDurationsCache:
    def _flow(self, n: int) -> flowdsl.Flow:
        return flowdsl.Flow("cached", flowdsl.parallel(*[quick().named(f"q{i}")
                                                         for i in range(n)]))

    @pytest.mark.parametrize("n", [3, history_read.REFRESH_MAX + 1])
    def test_figures_taken_in_memory_are_those_sql_gives(self, tmp_path: Path,
                                                         n: int) -> None:
        """After each run, the cached figures (brought up to date in memory, never re-read)
        are exactly what reading task_stats gives: counts, sums and the median of the
        latest five, over more runs than the window holds."""
        path = tmp_path / "h.db"
        flow = self._flow(n)
        p = flowdsl.plan(flow)
        flowdsl.run(flow, history=path).raise_for_error()
        store = flowdsl._record.history.open_history(path)
        assert store is not None
        store.durations(p)  # cached now
        reads: list[Any] = []
        real = store._read_flow
        store._read_flow = lambda *a, **k: reads.append(a) or real(*a, **k)  # type: ignore
        for _ in range(6):
            flowdsl.run(flow, history=path).raise_for_error()
            # The writer folds a run into SQL just after the run returns; the tasks' own
            # figures take it in memory before (expected() makes sure, as the next run's
            # start does), and answer then what SQL answers once it is folded.
            early = store.expected(p)
            store.flush()
            cached = store.cached_durations(p)
            ((key, (_, tasks, tools, sums)),) = store._flow_cache.items()
            assert (tasks, tools, sums) == real(key[0], key[1], flush=False)
            assert cached == store.durations(p)
            assert early == cached
            store._flow_cache[key] = (0.0, tasks, tools, sums)  # aged: durations() reads it
            assert store.cached_durations(p) is None
            store.durations(p)
        assert len(reads) == 12  # the durations() calls above only: no re-read at run ends
        counts = dict(store._rows("SELECT task_id, n FROM task_stats", ()))
        assert counts == {f"q{i}": 7 for i in range(n)}

    def test_a_plans_keys_are_made_once_per_run_however_many_batches(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The writer names every batch's rows by the plan's keys: a run of many batches
        looks them up once (at each batch, a 100,000-task run took 2.5x its time without
        history, not 2.2x), and every row is named by its tool."""
        calls: list[int] = []
        real = history_write.plan_keys
        monkeypatch.setattr("flowdsl._record.history.plan_keys",
                            lambda plan: calls.append(len(plan.tasks)) or real(plan))
        flow = flowdsl.Flow("napping", flowdsl.chain(*[nap().named(f"n{i}") for i in range(40)]))
        with HistoryStore(tmp_path / "h.db", flush_rows=1, flush_interval=0.005) as store:
            result = flowdsl.run(flow, history=store)
            batches = store._commits
            names = {n for (n,) in store._rows("SELECT DISTINCT qualname FROM tasks", ())}
        assert result.ok and batches >= 5
        assert calls == [40]
        assert names == {history_write.plan_keys(flowdsl.plan(flow))[0]["n0"]}

    def test_two_plans_of_one_name_keep_entries_of_their_own(self, tmp_path: Path) -> None:
        """Runs alternating between two plans of one name each find their own figures in
        memory (they used to evict each other and read from SQLite at every start)."""
        path = tmp_path / "h.db"
        a, b = self._flow(3), self._flow(4)
        for f in (a, b):
            flowdsl.run(f, history=path).raise_for_error()
        store = flowdsl._record.history.open_history(path)
        assert store is not None
        pa, pb = flowdsl.plan(a), flowdsl.plan(b)
        store.durations(pa)
        store.durations(pb)
        flowdsl.run(a, history=path).raise_for_error()
        flowdsl.run(b, history=path).raise_for_error()
        store.flush()  # the runs' figures are folded in just after they return
        assert store.cached_durations(pa) == store.durations(pa)
        assert store.cached_durations(pb) == store.durations(pb)
        assert set(store.cached_durations(pb) or ()) == {"q0", "q1", "q2", "q3"}

    def test_plans_of_one_name_are_kept_up_to_a_bound(self, tmp_path: Path) -> None:
        """Every unnamed flow shares one name: the oldest of its plans make way (each entry
        holds figures per task), the newest are answered from memory."""
        path = tmp_path / "h.db"
        flows = [self._flow(k) for k in range(1, 8)]
        for f in flows:
            flowdsl.run(f, history=path).raise_for_error()
        store = flowdsl._record.history.open_history(path)
        assert store is not None
        for f in flows:
            store.durations(flowdsl.plan(f))
        assert len(store._flow_cache) == history_read._PLANS_PER_FLOW
        assert store.cached_durations(flowdsl.plan(flows[0])) is None
        assert store.cached_durations(flowdsl.plan(flows[-1])) == store.durations(
            flowdsl.plan(flows[-1]))

    def test_a_mapped_flow_is_read_again(self, tmp_path: Path) -> None:
        """Pooled children cannot be brought up to date in memory: the entry is re-read
        (small) and still gives what SQL gives."""
        path = tmp_path / "h.db"
        flow = flowdsl.Flow("mapped", double.map(items(3)))
        flowdsl.run(flow, history=path).raise_for_error()
        store = flowdsl._record.history.open_history(path)
        assert store is not None
        p = flowdsl.plan(flow)
        store.durations(p)
        flowdsl.run(flow, history=path).raise_for_error()
        store.flush()
        ((key, (_, tasks, tools, sums)),) = store._flow_cache.items()
        assert sums is None and any(t.endswith("[]") for _, t in key[1])
        assert (tasks, tools) == store._read_flow(key[0], key[1], flush=False)[:2]
        assert store.cached_durations(p) == store.durations(p)

    def test_a_pipeline_over_items_is_read_again(self, tmp_path: Path) -> None:
        """A pipeline's stages count one figure per item under the stage's id (SQL pools
        the ``stage@i`` rows): the entry is re-read at the run's end, and gives what SQL
        gives, the stage's per-item time."""
        path = tmp_path / "h.db"
        flow = flowdsl.Flow("piped", double.stage() >> double.stage())
        def run() -> None:
            flowdsl.run(flow, mode="pipeline", items=[1, 2, 3, 4],
                        history=path).raise_for_error()

        run()
        store = flowdsl._record.history.open_history(path)
        assert store is not None
        p = flowdsl.plan(flow)
        store.durations(p)
        for _ in range(2):
            run()
            store.flush()
            ((key, (_, tasks, tools, sums)),) = store._flow_cache.items()
            assert (tasks, tools, sums) == store._read_flow(key[0], key[1], flush=False)
            assert store.cached_durations(p) == store.durations(p)
        counts = dict(store._rows("SELECT task_id, n FROM task_stats", ()))
        assert counts == {"double": 12, "double_2": 12}  # 3 runs x 4 items, per stage


class TestDeferredStatistics:
    """A large run returns once its rows are written; the writer folds it into the
    statistics just after. Readers wait for that, so no figure misses a run that returned.
    (Every run counts as large here; a small one is folded in before it returns.)"""

    @pytest.fixture(autouse=True)
    def _every_run_large(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("flowdsl._record.history.FOLD_INLINE_MAX", 0)

    def _flow(self) -> flowdsl.Flow:
        return flowdsl.Flow("deferred", quick().named("a") >> quick().named("b"))

    @staticmethod
    def _hold_folds(monkeypatch: pytest.MonkeyPatch, why: str) -> tuple[Any, Any]:
        """Hold every fold the writer starts until ``gate`` is set (``entered`` once one
        began); ``why`` is the failure when the gate stays shut."""
        import threading

        from flowdsl._record.history import sink

        gate, entered = threading.Event(), threading.Event()
        real = sink.aggregate_once

        def held(c: Any, run_id: str) -> Any:
            entered.set()
            assert gate.wait(30.0), why
            return real(c, run_id)

        monkeypatch.setattr(sink, "aggregate_once", held)  # (fold_runs calls it)
        return gate, entered

    def test_a_run_does_not_wait_for_its_statistics(self, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        gate, entered = self._hold_folds(
            monkeypatch, "the run never returned while its statistics waited")
        with HistoryStore(tmp_path / "h.db") as store:
            result = flowdsl.run(self._flow(), history=store)
            assert result.ok and result.history_error is None
            assert entered.wait(10.0)  # the writer is folding it in, held, and run() returned
            gate.set()
            stats = store.tool_stats()
            (row,) = store._rows("SELECT aggregated FROM runs", ())
        assert row == (None,)
        assert sum(s.count for s in stats.values()) == 2

    def test_the_next_run_does_not_wait_for_the_fold(self, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """While the writer folds a run in (held here), the tasks' own figures in memory
        take it already: the next run's expected durations come from memory, and are those
        SQL gives once the fold is done. A task new to the flow takes its tool's figures,
        which do wait for the fold."""
        p = flowdsl.plan(self._flow())
        grown = flowdsl.plan(flowdsl.Flow("deferred", quick().named("a") >> quick().named("b")
                                          >> quick().named("c")))
        with HistoryStore(tmp_path / "h.db") as store:
            flowdsl.run(self._flow(), history=store).raise_for_error()
            before = store.durations(p)  # the flow's figures in memory now
            assert set(store.durations(grown)) == {"a", "b", "c"}  # "c": its tool's
            gate, entered = self._hold_folds(
                monkeypatch, "the figures were not answered while the fold waited")
            flowdsl.run(self._flow(), history=store).raise_for_error()
            assert entered.wait(10.0)  # the writer is folding the second run in, held
            early = store.expected(p)
            assert store.expected(grown) is None  # "c" is new: its tool's figures wait
            gate.set()
            store.flush()
            assert early is not None and set(early) == {"a", "b"}
            assert early == store.durations(p) != before
            assert set(store.expected(grown) or ()) == {"a", "b", "c"}

    def test_a_pipeline_run_not_folded_is_not_answered_from_memory(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A pipeline over items counts per item under its stage: the figures in memory
        cannot take it before its fold, so they are dropped, and expected durations wait."""
        p = flowdsl.plan(self._flow())
        with HistoryStore(tmp_path / "h.db") as store:
            flowdsl.run(self._flow(), history=store).raise_for_error()
            assert set(store.durations(p)) == {"a", "b"}  # in memory now
            gate, entered = self._hold_folds(
                monkeypatch, "the fold of the pipeline run was never let go")
            flowdsl.run(self._flow(), mode="pipeline", items=[1, 2, 3],
                        history=store).raise_for_error()
            assert entered.wait(10.0)
            assert store.expected(p) is None
            gate.set()
            store.flush()
            assert set(store.durations(p)) == {"a", "b"}

    def test_readers_see_the_run_that_returned(self, tmp_path: Path) -> None:
        with HistoryStore(tmp_path / "h.db") as store:
            for _ in range(3):
                flowdsl.run(self._flow(), history=store).raise_for_error()
                counts = dict(store._rows("SELECT task_id, n FROM task_stats", ()))
                assert set(counts.values()) == {counts["a"]}
            assert counts == {"a": 3, "b": 3}
            p = flowdsl.plan(self._flow())
            assert set(store.durations(p)) == {"a", "b"}

    def test_a_run_left_unfolded_is_folded_in_when_a_store_opens_the_file(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A process that ended between writing a run and folding it in (killed): the next
        store to open the file folds it in, once."""
        path = tmp_path / "h.db"
        store = HistoryStore(path)
        monkeypatch.setattr(store, "_aggregate", lambda: None)  # the writer never gets to it
        flowdsl.run(self._flow(), history=store).raise_for_error()
        store.close()
        with HistoryStore(path) as other:
            (flag,) = other._rows("SELECT aggregated FROM runs", (), flush=False)
            counts = dict(other._rows("SELECT task_id, n FROM task_stats", ()))
        assert flag == (None,) and counts == {"a": 1, "b": 1}
        with HistoryStore(path) as again:  # and only once
            assert dict(again._rows("SELECT task_id, n FROM task_stats", ())) == counts

    def test_two_stores_fold_a_run_in_once(self, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """The store that wrote a run and another that opened the file meanwhile both try to
        fold it in: one claims it, the other finds it done (no double count) and reads the
        figures again instead of adding the run to its memory."""
        path = tmp_path / "h.db"
        with HistoryStore(path) as first:
            p = flowdsl.plan(self._flow())
            flowdsl.run(self._flow(), history=first).raise_for_error()
            first.durations(p)  # figures in memory
            with monkeypatch.context() as m:
                m.setattr(first, "_aggregate", lambda: None)
                flowdsl.run(self._flow(), history=first).raise_for_error()
            assert first._pending
            with HistoryStore(path) as second:
                assert dict(second._rows("SELECT task_id, n FROM task_stats", ())) == {
                    "a": 2, "b": 2}
            first.flush()  # claims nothing: the second store folded it in
            assert not first._pending
            counts = dict(first._rows("SELECT task_id, n FROM task_stats", ()))
            cached = first.cached_durations(p)
            assert cached == first.durations(p)
        assert counts == {"a": 2, "b": 2}


def test_a_small_run_is_in_the_statistics_when_it_returns(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Under FOLD_INLINE_MAX task rows, the run's statistics are written with its end, in
    the transaction run() waits for: another connection sees them as soon as it returns,
    and the writer has nothing left to fold in."""
    import sqlite3

    from flowdsl._record import history

    folded: list[str] = []
    real = history.aggregate_once
    monkeypatch.setattr(history, "aggregate_once",
                        lambda c, run_id: folded.append(run_id) or real(c, run_id))
    path = tmp_path / "h.db"
    with HistoryStore(path) as store:
        flow = flowdsl.Flow("small", quick().named("a") >> quick().named("b"))
        result = flowdsl.run(flow, history=store)
        assert folded == [result.run_id] and not store._pending
        with sqlite3.connect(path) as other:
            counts = dict(other.execute("SELECT task_id, n FROM task_stats").fetchall())
            (flag,) = other.execute("SELECT aggregated FROM runs").fetchone()
        other.close()
    assert counts == {"a": 1, "b": 1} and flag is None
