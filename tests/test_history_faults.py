"""History faults (issue 16): text SQLite cannot encode, writer failures, a full disk, files
that cannot be opened, file modes; the schema migration; and the cost of what a run reads
from a large store (issue 15)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

import flowdsl
from flowdsl import Flow, HistoryError, HistoryWarning, tool
from flowdsl._record import history as history_module
from flowdsl._record.history import SCHEMA_VERSION, HistoryStore, close_cached
from flowdsl._record.history import write as history_write
from flowdsl._run.result import Attempt, RunResult, TaskRecord, TaskStatus

BAD_NAME = os.fsdecode(b"report-\xff.csv")  # a lone surrogate, as os.listdir gives it


@pytest.fixture(autouse=True)
def _no_default_history(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FLOWDSL_HISTORY", "off")
    yield
    close_cached()


@tool(executor="async", registry=False)
async def ok(value: Any = None) -> Any:
    """Return ``value``."""
    return value


@tool(executor="async", registry=False)
async def bad_file() -> None:
    """Fail with a file name that is not valid UTF-8."""
    raise FileNotFoundError(f"cannot read {BAD_NAME}")


def tables(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        return {
            "runs": conn.execute("SELECT run_id, status, history_error FROM runs").fetchall(),
            "tasks": conn.execute("SELECT task_id, status, error_message FROM tasks "
                                  "ORDER BY task_id").fetchall()}
    finally:
        conn.close()


class TestEncoding:
    def test_surrogate_in_an_error_message_is_recorded_escaped(self, tmp_path: Path) -> None:
        """A tool error naming an undecodable file gives a failed result, a finished run row
        and the message with the surrogate escaped (16.1)."""
        path = tmp_path / "h.db"
        f = Flow("files", ok(1).named("first") >> bad_file().named("read"))
        result = flowdsl.run(f, history=path)
        assert result.status == "failed" and result.history_error is None
        close_cached()
        rows = tables(path)
        assert rows["runs"] == [(result.run_id, "failed", None)]
        assert rows["tasks"] == [("first", "completed", None),
                                 ("read", "failed", "cannot read report-\\udcff.csv")]

    def test_surrogate_in_a_task_id_does_not_lose_the_batch(self, tmp_path: Path) -> None:
        """A row with an unencodable id is written escaped, with every other row of its
        batch; nothing is reported lost (16.1)."""
        with HistoryStore(tmp_path / "h.db") as store:
            result = RunResult("r1", "f", "parallel")
            obs = store.observer("f")
            obs.run_started(result, None)
            for tid in ("plain", "a\ud800"):
                rec = TaskRecord(tid, "t", TaskStatus.COMPLETED,
                                 [Attempt(1, 0.0, 0.1, TaskStatus.COMPLETED)], 0.0, 0.1)
                result.tasks[tid] = rec
                obs.task_finished(result, rec, None)
            result.status = "completed"
            obs.run_finished(result)
            assert store._settle("r1") is None
            run = store.get_run("r1")
        assert run["status"] == "completed"
        assert sorted(t["task_id"] for t in run["tasks"]) == ["a\\ud800", "plain"]


class TestWriterFailures:
    def test_a_writer_failure_is_reported_logged_and_the_run_row_finished(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bug inside the writer loses rows only with a report: on the result, as a
        warning, in the log and on the run row, which is finished (16.1)."""
        def broken(self: Any, *args: Any) -> Any:
            raise RuntimeError("writer bug")

        monkeypatch.setattr(history_write.Batch, "with_qualnames", broken)
        logs: list[dict[str, Any]] = []

        class Recorder:  # whatever structlog's configuration, the writer's event is seen
            def __init__(self, **bound: Any) -> None:
                self.bound = bound

            def error(self, event: str, **kw: Any) -> None:
                logs.append({"event": event, **self.bound, **kw})

            warning = error

        monkeypatch.setattr(history_module, "get_logger", Recorder)
        path = tmp_path / "h.db"
        flowdsl.enable_logging(True)
        try:
            with pytest.warns(HistoryWarning, match="writer bug"):
                result = flowdsl.run(Flow("w", ok(1).named("a") >> ok(2).named("b")),
                                     history=path)
        finally:
            flowdsl.enable_logging(False)
        assert result.ok and result.outputs == {"a": 1, "b": 2}
        assert isinstance(result.history_error, HistoryError)
        assert "writer bug" in str(result.history_error) and str(path) in str(
            result.history_error)
        assert result.to_dict()["history_error"] == str(result.history_error)
        assert any(e["event"] == "history_write_failed" and e["path"] == str(path)
                   for e in logs)
        close_cached()
        (run,) = tables(path)["runs"]
        assert run[0] == result.run_id and run[1] == "completed" and "writer bug" in run[2]

    def test_disk_full_after_the_tasks_ran_returns_the_result(self, tmp_path: Path) -> None:
        """SQLite's 'database or disk is full' when writing the run costs the rows, never
        the RunResult: it is returned with the error attached and a warning (16.4)."""
        path = tmp_path / "h.db"
        with HistoryStore(path, store_outputs=True) as store:
            assert flowdsl.run(ok(1).named("warm"), history=store).ok
            pages = store._query("PRAGMA page_count")[0]["page_count"]
            store._conn.execute(f"PRAGMA max_page_count = {pages}")
            big = Flow("big", [ok("x" * 20_000).named(f"t{i}") for i in range(20)])
            with pytest.warns(HistoryWarning, match="full"):
                result = flowdsl.run(big, history=store)
            assert result.ok and len(result.outputs) == 20
            assert isinstance(result.history_error, HistoryError)
            assert "database or disk is full" in str(result.history_error)
            store._conn.execute(f"PRAGMA max_page_count = {pages * 1000}")
            again = flowdsl.run(ok(3).named("after"), history=store)  # room again: all well
            assert again.history_error is None
            assert store.get_run(again.run_id)["status"] == "completed"


class TestOpening:
    def ran_nothing(self, history: Any) -> tuple[list[str], pytest.ExceptionInfo[Any]]:
        calls: list[str] = []

        @tool(executor="async", registry=False)
        async def mark() -> None:
            calls.append("ran")

        with pytest.raises(HistoryError) as info:
            flowdsl.run(mark(), history=history)
        return calls, info

    def test_corrupt_file(self, tmp_path: Path) -> None:
        """A file that is not a database: HistoryError naming the path and the cause, before
        any task runs (16.4)."""
        path = tmp_path / "h.db"
        path.write_bytes(b"this is not a database, just text " * 200)
        calls, info = self.ran_nothing(path)
        assert calls == [] and str(path) in str(info.value)
        assert "not a database" in str(info.value) and "history=False" in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)

    def test_a_file_where_a_folder_should_be(self, tmp_path: Path) -> None:
        """A path through a regular file: HistoryError naming the path, not a bare
        NotADirectoryError (16.4)."""
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / "sub" / "h.db"
        calls, info = self.ran_nothing(path)
        assert calls == [] and str(path) in str(info.value)
        assert isinstance(info.value.__cause__, OSError)

    def test_a_folder_where_the_file_should_be(self, tmp_path: Path) -> None:
        """The history path is a folder: HistoryError naming it (16.4)."""
        (tmp_path / "h.db").mkdir()
        calls, info = self.ran_nothing(tmp_path / "h.db")
        assert calls == [] and str(tmp_path / "h.db") in str(info.value)

    def test_the_default_store_that_cannot_open_raises_too(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """FLOWDSL_HISTORY naming a corrupt file: the same HistoryError from run()."""
        path = tmp_path / "h.db"
        path.write_bytes(b"\x00garbage" * 500)
        monkeypatch.setenv("FLOWDSL_HISTORY", str(path))
        calls, info = self.ran_nothing(None)
        assert calls == [] and str(path) in str(info.value)


class TestModes:
    def test_folders_0700_and_file_0600_under_umask_000(self, tmp_path: Path) -> None:
        """Every folder flowdsl creates is 0700 and the file and its WAL files 0600, even
        under umask 000 (16.10)."""
        old = os.umask(0)
        try:
            path = tmp_path / "a" / "b" / "c" / "h.db"
            with HistoryStore(path) as store:
                assert flowdsl.run(ok(1), history=store).ok
                files = list(path.parent.iterdir())
                assert {p.name for p in files} >= {"h.db", "h.db-wal", "h.db-shm"}
                for p in files:
                    assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        finally:
            os.umask(old)
        for folder in (tmp_path / "a", tmp_path / "a" / "b", path.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    def test_an_existing_file_is_tightened_to_0600(self, tmp_path: Path) -> None:
        """A history file left readable by others is made 0600 when flowdsl opens it."""
        path = tmp_path / "h.db"
        HistoryStore(path).close()
        os.chmod(path, 0o644)
        with HistoryStore(path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


V1_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, flow TEXT,
    mode TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    error_type TEXT, error_message TEXT, host TEXT, pid INTEGER);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE tasks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, task_id TEXT NOT NULL,
    tool TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT, reason TEXT,
    output TEXT, PRIMARY KEY (run_id, task_id));
CREATE INDEX tasks_tool ON tasks(tool);
CREATE TABLE attempts (
    run_id TEXT NOT NULL, task_id TEXT NOT NULL, number INTEGER NOT NULL, tool TEXT,
    started_at REAL, ended_at REAL, duration REAL, status TEXT NOT NULL, error_type TEXT,
    error_message TEXT, PRIMARY KEY (run_id, task_id, number),
    FOREIGN KEY (run_id, task_id) REFERENCES tasks(run_id, task_id) ON DELETE CASCADE);
CREATE INDEX attempts_tool ON attempts(tool);
PRAGMA user_version = 1;
"""


class TestMigration:
    def test_a_version_1_file_is_migrated(self, tmp_path: Path) -> None:
        """A file of schema 1 opens at the current version: its runs are kept, its
        statistics built under the bare tool names it knew, and new runs are recorded."""
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO runs (run_id, flow, mode, status, duration) VALUES "
                     "('old1', 'legacy', 'parallel', 'completed', 3.0)")
        for tid, d in (("a", 1.0), ("b", 2.0)):
            conn.execute("INSERT INTO tasks (run_id, task_id, tool, status, started_at, "
                         "ended_at, duration, attempts) VALUES ('old1', ?, 'load', "
                         "'completed', 0, ?, ?, 1)", (tid, d, d))
            conn.execute("INSERT INTO attempts (run_id, task_id, number, tool, started_at, "
                         "ended_at, duration, status) VALUES ('old1', ?, 1, 'load', 0, ?, ?, "
                         "'completed')", (tid, d, d))
        conn.commit()
        conn.close()
        with HistoryStore(path) as store:
            assert store._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION
            run = store.get_run("old1")
            assert [t["qualname"] for t in run["tasks"]] == ["load", "load"]
            st = store.tool_stats("load")["load"]
            assert (st.completed, st.attempts, st.mean, st.flows) == (2, 2, 1.5, ("legacy",))
            result = flowdsl.run(Flow("legacy", ok(1).named("a")), history=store)
            assert store.get_run(result.run_id)["status"] == "completed"
            assert store.integrity_check() == "ok"
        with HistoryStore(path) as store:  # opening a migrated file again changes nothing
            assert len(store.runs()) == 2


V2_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, flow TEXT,
    mode TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    error_type TEXT, error_message TEXT, host TEXT, pid INTEGER, history_error TEXT);
CREATE INDEX runs_status ON runs(status);
CREATE INDEX runs_flow ON runs(flow, seq);
CREATE TABLE tasks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, task_id TEXT NOT NULL,
    tool TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT, reason TEXT,
    output TEXT, qualname TEXT, PRIMARY KEY (run_id, task_id));
CREATE TABLE attempts (
    run_id TEXT NOT NULL, task_id TEXT NOT NULL, number INTEGER NOT NULL, tool TEXT,
    started_at REAL, ended_at REAL, duration REAL, status TEXT NOT NULL, error_type TEXT,
    error_message TEXT, qualname TEXT, PRIMARY KEY (run_id, task_id, number),
    FOREIGN KEY (run_id, task_id) REFERENCES tasks(run_id, task_id) ON DELETE CASCADE);
CREATE TABLE stats (
    flow TEXT NOT NULL, tool TEXT NOT NULL, name TEXT,
    tasks INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
    attempts INTEGER NOT NULL, timeouts INTEGER NOT NULL, task_n INTEGER NOT NULL,
    task_sum REAL NOT NULL, task_recent BLOB, call_n INTEGER NOT NULL, call_sum REAL NOT NULL,
    call_max REAL, call_recent BLOB, PRIMARY KEY (flow, tool)) WITHOUT ROWID;
CREATE INDEX stats_tool ON stats(tool);
CREATE TABLE task_stats (
    flow TEXT NOT NULL, tool TEXT NOT NULL, task_id TEXT NOT NULL, n INTEGER NOT NULL,
    total REAL NOT NULL, d1 REAL, d2 REAL, d3 REAL, d4 REAL, d5 REAL,
    PRIMARY KEY (flow, tool, task_id)) WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def test_a_version_2_file_is_migrated(tmp_path: Path) -> None:
    """A file of schema 2 (no log lines, no edges) opens at the current version: its runs
    read back with no lines and edges ``None`` (the page falls back to timings), its
    statistics still count, and a new run keeps both."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(V2_SCHEMA)
    conn.execute("INSERT INTO runs (run_id, flow, mode, status, duration) VALUES "
                 "('old2', 'legacy', 'parallel', 'completed', 1.0)")
    conn.execute("INSERT INTO tasks (run_id, task_id, tool, status, started_at, ended_at, "
                 "duration, attempts, qualname) VALUES ('old2', 'a', 'ok', 'completed', 0, 1, "
                 "1, 1, 'm.ok')")
    conn.execute("INSERT INTO stats VALUES ('legacy', 'm.ok', 'ok', 1, 1, 0, 1, 0, 1, 1.0, "
                 "NULL, 1, 1.0, 1.0, NULL)")
    conn.commit()
    conn.close()
    with HistoryStore(path) as store:
        assert store._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION == 6
        old = store.get_run("old2")
        assert old["edges"] is None and old["tasks"][0]["logs"] == []
        assert store.tool_stats("m.ok")["m.ok"].completed == 1
        result = flowdsl.run(Flow("legacy", ok(1).named("a") >> ok(2).named("b")),
                             history=store)
        assert store.get_run(result.run_id)["edges"] == [["a", "b"]]
        assert store.integrity_check() == "ok"


class TestReadCost:
    def steps(self, store: HistoryStore, f: Flow) -> int:
        """SQLite virtual-machine steps spent by one run on this store's connection."""
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        store._conn.set_progress_handler(tick, 100)
        try:
            assert flowdsl.run(f, history=store).ok
            store.flush()  # and its statistics, folded in just after it returns
        finally:
            store._conn.set_progress_handler(None, 100)
        return count[0]

    def test_a_run_costs_the_same_on_a_large_store(self, tmp_path: Path) -> None:
        """The work SQLite does for a run (expected durations, writing, statistics) does not
        grow with the rows other runs left in the file (issue 15): counted in SQLite VM
        steps, which do not depend on the machine's speed."""
        f = Flow("ten", ok(0).named("a") >> [ok(i).named(f"t{i}") for i in range(9)])
        with HistoryStore(tmp_path / "h.db", keep_last=10_000) as store:
            flowdsl.run(f, history=store)
            small = min(self.steps(store, f) for _ in range(3))
            # 20,000 rows: 30 runs of 500 tasks of other flows, 500 more runs of this one.
            for r in range(530):
                mine = r >= 30
                result = RunResult(f"fill{r}", "ten" if mine else f"other{r}", "parallel")
                obs = store.observer(result.flow_name)
                obs.run_started(result, f.plan() if mine else None)
                for tid in (f.plan().order if mine else [f"x{k}" for k in range(500)]):
                    rec = TaskRecord(tid, "ok", TaskStatus.COMPLETED,
                                     [Attempt(1, 0.0, 0.01, TaskStatus.COMPLETED)], 0.0, 0.01)
                    result.tasks[tid] = rec
                    obs.task_finished(result, rec, None)
                result.status = "completed"
                obs.run_finished(result)
                store._settle(result.run_id)
            assert store._query("SELECT count(*) AS n FROM tasks")[0]["n"] > 19_000
            large = min(self.steps(store, f) for _ in range(3))
        assert large < 1.5 * small + 50, (small, large)


    def test_other_tasks_of_the_same_flow_name_are_not_read(self, tmp_path: Path) -> None:
        """Expected durations read the plan's own tasks by key: 20,000 statistics rows of
        other task ids under the same flow name (an unnamed flow's "" collects every
        unnamed run) cost a run nothing more, and its figures are still found."""
        f = Flow("ten", ok(0).named("a") >> [ok(i).named(f"t{i}") for i in range(9)])
        with HistoryStore(tmp_path / "h.db", keep_last=10_000) as store:
            flowdsl.run(f, history=store)
            small = min(self.steps(store, f) for _ in range(3))
            for r in range(40):
                result = RunResult(f"fill{r}", "ten", "parallel")
                obs = store.observer("ten")
                obs.run_started(result, None)
                for k in range(500):
                    tid = f"other{r}-{k}"
                    rec = TaskRecord(tid, "ok", TaskStatus.COMPLETED,
                                     [Attempt(1, 0.0, 0.01, TaskStatus.COMPLETED)], 0.0, 0.01)
                    result.tasks[tid] = rec
                    obs.task_finished(result, rec, None)
                result.status = "completed"
                obs.run_finished(result)
                store._settle(result.run_id)
            assert store._query("SELECT count(*) AS n FROM task_stats WHERE flow = 'ten'"
                                )[0]["n"] > 20_000
            store._flow_cache.clear()  # read from SQLite, not from memory
            large = min(self.steps(store, f) for _ in range(3))
            assert sorted(store.durations(f.plan())) == sorted(f.plan().tasks)
            # A big plan of the same name ran last: the small one's runs (and the writer's
            # refresh after each) still read only the small plan's tasks.
            big = [ok(0).named("a"), *(ok(i).named(f"t{i}") for i in range(9)),
                   *(ok(i).named(f"b{i}") for i in range(2000))]
            assert flowdsl.run(Flow("ten", big), history=store).ok
            after_big = min(self.steps(store, f) for _ in range(3))
        assert large < 1.5 * small + 50, (small, large)
        assert after_big < 1.5 * small + 50, (small, after_big)


class TestRunEnd:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_the_writer_wakes_the_run_on_either_backend(self, tmp_path: Path,
                                                        backend: str) -> None:
        """The run's end waits for the writer thread, which wakes it through the loop's own
        thread-safe call: the rows are in the file when run() returns."""
        path = tmp_path / "h.db"
        result = flowdsl.run(Flow("b", ok(1).named("a") >> ok(2).named("b")), history=path,
                             backend=backend)
        assert result.ok and result.history_error is None
        conn = sqlite3.connect(path)  # another connection: only what was written shows
        try:
            status = conn.execute("SELECT status FROM runs WHERE run_id = ?",
                                  (result.run_id,)).fetchone()
            done = conn.execute("SELECT count(*) FROM tasks WHERE run_id = ? AND status = "
                                "'completed'", (result.run_id,)).fetchone()
        finally:
            conn.close()
        assert status == ("completed",) and done == (2,)

    def test_the_default_store_is_opened_once(self, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """Runs with the default history share one store, found without resolving the path
        again; a store closed under a run ends it with a history error, not a hang."""
        from flowdsl._record import history

        monkeypatch.setenv("FLOWDSL_HISTORY", str(tmp_path / "h.db"))
        first = flowdsl.run(ok(1).named("a"))
        store = history._cached(None)
        assert isinstance(store, HistoryStore) and store.path == str(tmp_path / "h.db")
        monkeypatch.setattr(history.os.path, "realpath", lambda p: pytest.fail("resolved"))
        second = flowdsl.run(ok(2).named("a"))
        assert history._cached(None) is store
        assert [r["run_id"] for r in store.runs()] == [second.run_id, first.run_id]

        @tool(executor="async", registry=False)
        async def closer() -> None:
            store.close()

        with pytest.warns(HistoryWarning, match="closed"):
            third = flowdsl.run(closer(), history=store)
        assert third.ok and isinstance(third.history_error, HistoryError)
