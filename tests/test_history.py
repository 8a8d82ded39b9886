"""History store: recording, statistics, safety (HS1-HS5, SE3) and resume."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import flowdsl
from flowdsl import (
    Attempt,
    ErrorInfo,
    Flow,
    HistoryError,
    RunNotFound,
    RunResult,
    TaskRecord,
    TaskStatus,
    tool,
)
from flowdsl._record.history import (
    SCHEMA_VERSION,
    HistoryStore,
    close_cached,
    default_path,
    open_history,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_default_history(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs in these tests never touch the user's default history file."""
    monkeypatch.setenv("FLOWDSL_HISTORY", "off")
    yield
    close_cached()


def record(store: HistoryStore, run_id: str, tasks: list[tuple[str, str, str, float]], *,
           flow: str = "f", outputs: dict[str, Any] | None = None,
           finish: bool = True, plan: Any = None) -> RunResult:
    """Feed one synthetic run of (task id, tool, status, duration) rows to the store, and
    wait for them to be written as run() does (``plan`` gives the tools' qualified names;
    without one, tasks count under the bare tool name)."""
    result = RunResult(run_id, flow, "parallel")
    obs = store.observer(flow)
    obs.run_started(result, plan)
    t = 0.0
    for tid, tool_name, status, dur in tasks:
        rec = TaskRecord(tid, tool_name, started_at=t)
        result.tasks[tid] = rec
        obs.task_started(result, rec)
        st = TaskStatus(status)
        err = ErrorInfo("ValueError", "boom") if st.failed else None
        rec.attempts = [Attempt(1, t, t + dur, st, err)]
        rec.status, rec.ended_at, rec.error = st, t + dur, err
        t += dur
        obs.task_finished(result, rec, (outputs or {}).get(tid))
    if finish:
        result.status = "completed"
        result.duration = t
        obs.run_finished(result)
        assert store._settle(run_id) is None
    return result


@tool(executor="async", registry=False)
async def nap(seconds: float = 0.0, value: Any = None) -> Any:
    """Sleep, then return ``value``."""
    import anyio

    await anyio.sleep(seconds)
    return value


class TestRecording:
    def test_run_tasks_and_attempts_are_recorded(self, tmp_path: Path) -> None:
        """A run's row, its tasks and each attempt with error type and message are stored."""
        with HistoryStore(tmp_path / "h.db") as store:
            record(store, "r1", [("a", "load", "completed", 0.5), ("b", "parse", "failed", 1)])
            run = store.get_run("r1")
        assert run["status"] == "completed" and run["flow"] == "f"
        tasks = {t["task_id"]: t for t in run["tasks"]}
        assert tasks["a"]["tool"] == "load" and tasks["a"]["duration"] == pytest.approx(0.5)
        assert tasks["b"]["status"] == "failed" and tasks["b"]["error_type"] == "ValueError"
        assert tasks["b"]["attempts"][0]["error_message"] == "boom"

    def test_run_via_flowdsl_run(self, tmp_path: Path) -> None:
        """flowdsl.run(history=path) records every task with its attempts."""
        f = Flow("two", nap(0.01, 1).named("x") >> nap(0.01, 2).named("y"))
        result = flowdsl.run(f, history=tmp_path / "h.db")
        store = open_history(tmp_path / "h.db")
        assert store is not None
        run = store.get_run(result.run_id)
        assert run["status"] == "completed" and run["mode"] == result.mode
        assert [t["task_id"] for t in run["tasks"]] == ["x", "y"]
        assert all(len(t["attempts"]) == 1 for t in run["tasks"])

    def test_retries_give_one_attempt_row_each(self, tmp_path: Path) -> None:
        """A task that fails twice then succeeds has three attempt rows (RT8)."""
        calls = []

        @tool(executor="async", retries=2, backoff=0, registry=False)
        async def flaky() -> int:
            calls.append(1)
            if len(calls) < 3:
                raise ValueError("again")
            return 7

        with HistoryStore(tmp_path / "h.db") as store:
            result = flowdsl.run(flaky().named("fl"), history=store)
            attempts = store.get_run(result.run_id)["tasks"][0]["attempts"]
        assert [a["status"] for a in attempts] == ["failed", "failed", "completed"]
        assert attempts[0]["error_type"] == "ValueError"

    def test_rows_reach_the_file_without_further_events(self, tmp_path: Path) -> None:
        """A finished task is written by the flusher while the run is still going."""
        path = tmp_path / "h.db"
        store = HistoryStore(path, flush_interval=0.05)
        try:
            result = record(store, "r1", [("a", "t", "completed", 0.1)], finish=False)
            deadline = time.monotonic() + 10
            found = None
            while time.monotonic() < deadline and not found:
                with sqlite3.connect(path) as c:
                    found = c.execute("SELECT status FROM tasks WHERE task_id='a'").fetchone()
                c.close()
                time.sleep(0.02)
            assert found == ("completed",)
            result.status = "completed"
            store.observer("f").run_finished(result)
        finally:
            store.close()

    def test_runs_lists_newest_first_and_filters(self, tmp_path: Path) -> None:
        """runs() gives the newest run first and filters by flow and status."""
        with HistoryStore(tmp_path / "h.db") as store:
            record(store, "r1", [("a", "t", "completed", 1)], flow="f")
            record(store, "r2", [("a", "t", "completed", 1)], flow="g")
            assert [r["run_id"] for r in store.runs()] == ["r2", "r1"]
            assert [r["run_id"] for r in store.runs(flow="f")] == ["r1"]
            assert store.runs(status="interrupted") == []

    def test_unknown_run_raises(self, tmp_path: Path) -> None:
        """get_run and load_outputs name the run id that is missing."""
        with HistoryStore() as store, pytest.raises(RunNotFound, match="nope") as info:
            store.get_run("nope")
        assert info.value.run_id == "nope"


@tool(registry=False)
def chatter(n: int, secret: Any = None) -> int:
    """Log ``n`` lines (the secret's value in the first one, if given)."""
    log = flowdsl.get_logger()
    for i in range(n):
        log.info("step", i=i, **({"token": secret.get()} if secret is not None and not i
                                 else {}))
    return n


class TestLogsAndEdges:
    """Issue 17: each task's kept log lines and the run's edges are in its history record."""

    def test_log_lines_are_kept_with_their_task(self, tmp_path: Path) -> None:
        """get_run gives each task the lines its record kept (capped there), [] for none;
        a run's secret is masked in them, in the file too."""
        from flowdsl._base import log as flog

        canary = "hist-log-canary-5521"
        f = Flow("logs", chatter(2, flowdsl.Secret(canary)).named("a")
                 >> chatter(flog.MAX_TASK_LOGS + 3).named("b") >> nap(0, 1).named("quiet"))
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(f, history=store, log=True)
            run = store.get_run(r.run_id)
        logs = {t["task_id"]: t["logs"] for t in run["tasks"]}
        assert logs["a"] == r.tasks["a"].logs and logs["a"][0]["token"] == "***"
        assert [x["i"] for x in logs["a"]] == [0, 1] and logs["a"][0]["event"] == "step"
        assert len(logs["b"]) == flog.MAX_TASK_LOGS + 1 and "not kept" in logs["b"][-1]["event"]
        assert logs["quiet"] == []
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("h.db*"))
        assert canary.encode() not in raw and b"hist-log" not in raw

    def test_pipeline_stage_lines_of_every_item(self, tmp_path: Path) -> None:
        """A stage run over items keeps the lines of every item, as its merged record, and
        each item's row (``stage@i``) its own."""
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(chatter, mode="pipeline", items=[1, 2, 3], history=store, log=True)
            rows = store.get_run(r.run_id)["tasks"]
        (task,) = [t for t in rows if t["items"] is not None]
        assert len(task["logs"]) == 6 == len(r.tasks[task["task_id"]].logs or ())
        items = sorted((t for t in rows if t["item"] is not None), key=lambda t: t["item"])
        assert [t["task_id"] for t in items] == [f"{task['task_id']}@{i}" for i in range(3)]
        assert [len(t["logs"]) for t in items] == [1, 2, 3]  # item n logs n lines

    def test_edges_are_the_plans(self, tmp_path: Path) -> None:
        """The run row keeps the plan's edges as task id pairs; a run fed without a plan
        has none (None, not [])."""
        a = nap(0, 1).named("a")
        f = Flow("edges", a >> (nap(0, 2).named("b") | nap(0, 3).named("c"))
                 >> nap(0, 4).named("d"))
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(f, history=store)
            run = store.get_run(r.run_id)
            assert r.plan is not None
            assert sorted(map(tuple, run["edges"])) == sorted(r.plan.edges)
            assert len(run["edges"]) == 4
            record(store, "bare", [("x", "t", "completed", 0.1)])
            assert store.get_run("bare")["edges"] is None
            one = flowdsl.run(nap(0, 1).named("solo"), history=store)
            assert store.get_run(one.run_id)["edges"] == []

    def test_mapped_children_need_no_edges(self, tmp_path: Path) -> None:
        """A mapped task is one node of the edges; its children are rows with no edges."""
        f = Flow("mapped", nap.map([0, 0, 0]).named("m") >> nap(0, 9).named("after"))
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(f, history=store)
            run = store.get_run(r.run_id)
        assert run["edges"] == [["m", "after"]]
        assert {"m[0]", "m[1]", "m[2]"} <= {t["task_id"] for t in run["tasks"]}


class TestImpliedAttempts:
    """Issue 15: a task that completed at its first attempt writes no attempt row; readers
    imply it from the task row, and every figure stays the same."""

    def test_rows_written_and_read_back(self, tmp_path: Path) -> None:
        """One completed attempt: no row, yet get_run shows it; a retried or failed task
        keeps its rows; statistics count the implied calls."""
        calls: list[int] = []

        @tool(executor="async", retries=1, backoff=0, registry=False)
        async def once_flaky() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("first")
            return 1

        f = Flow("implied", nap(0.01, 1).named("ok") >> once_flaky().named("retried"))
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(f, history=store)
            rows = store._rows("SELECT task_id, number FROM attempts WHERE run_id = ? "
                               "ORDER BY task_id, number", (r.run_id,))
            assert rows == [("retried", 1), ("retried", 2)]
            tasks = {t["task_id"]: t for t in store.get_run(r.run_id)["tasks"]}
            (only,) = tasks["ok"]["attempts"]
            rec = r.tasks["ok"]
            assert only == {"number": 1, "started_at": rec.started_at,
                            "ended_at": rec.ended_at, "duration": rec.duration,
                            "status": "completed", "error_type": None, "error_message": None}
            assert [a["status"] for a in tasks["retried"]["attempts"]] == ["failed",
                                                                           "completed"]
            stats = {st.name: st for st in store.tool_stats(flow="implied").values()}
        assert (stats["nap"].attempts, stats["nap"].completed) == (1, 1)
        assert stats["nap"].mean == pytest.approx(rec.duration)
        assert stats["once_flaky"].attempts == 2

    def test_an_explicit_row_is_not_counted_twice(self, tmp_path: Path) -> None:
        """A run written before (every attempt has its row) aggregates as it did: its
        completed single attempts count once."""
        from flowdsl._record.history.sink import aggregate_run

        with HistoryStore(tmp_path / "h.db") as store:
            c = store._conn
            c.execute("INSERT INTO runs (run_id, flow, status) VALUES ('r0', 'f', 'completed')")
            for tid, d in (("a", 0.5), ("b", 1.5)):
                c.execute("INSERT INTO tasks (run_id, task_id, tool, status, started_at, "
                          "ended_at, duration, attempts, qualname) VALUES ('r0', ?, 't', "
                          "'completed', 0, ?, ?, 1, 't')", (tid, d, d))
            c.execute("INSERT INTO attempts (run_id, task_id, number, tool, started_at, "
                      "ended_at, duration, status, qualname) VALUES ('r0', 'a', 1, 't', 0, "
                      "0.5, 0.5, 'completed', 't')")  # "b" has none: implied
            with store._transaction():
                aggregate_run(c, "r0")
            (st,) = store.tool_stats("t").values()
            assert (st.attempts, st.completed, st.mean) == (2, 2, 1.0)
            assert [len(t["attempts"]) for t in store.get_run("r0")["tasks"]] == [1, 1]


class TestStatistics:
    def test_tool_stats(self) -> None:
        """count, success rate, mean, p50, p95 and max come from the recorded calls."""
        with HistoryStore() as store:
            rows = [(f"t{i}", "work", "completed", float(i)) for i in range(1, 21)]
            rows += [("bad1", "work", "failed", 0.5), ("bad2", "work", "timed_out", 9.0)]
            record(store, "r1", rows)
            st = store.tool_stats("work")["work"]
        assert (st.count, st.completed, st.failed) == (22, 20, 2)
        assert st.success_rate == pytest.approx(20 / 22)
        assert st.mean == pytest.approx(10.5) and st.p50 == pytest.approx(10.5)
        assert st.p95 == pytest.approx(19.05) and st.max == 20.0
        assert (st.attempts, st.timeouts) == (22, 1)

    def test_durations_per_task_of_the_same_flow_then_per_tool(self) -> None:
        """durations(plan) prefers the task's own history in that flow, else its tool's in
        that flow; other flows count only with scope='all'."""
        with HistoryStore() as store:
            fa = Flow("flow-a", nap().named("x") >> nap().named("y"))
            record(store, "r1", [("x", "nap", "completed", 2.0), ("y", "nap", "completed", 4)],
                   flow="flow-a", plan=fa.plan())
            fa2 = Flow("flow-a", nap().named("x") >> nap().named("new"))
            fb = Flow("flow-b", nap().named("z"))
            assert store.durations(fa.plan()) == {"x": 2.0, "y": 4.0}
            assert store.durations(fa2.plan()) == {"x": 2.0, "new": 3.0}
            assert store.durations(fb.plan()) == {}
            assert store.durations(fb.plan(), scope="all") == {"z": 3.0}
            assert store.durations(fb.plan(), stat="mean", scope="all") == {"z": 3.0}
            with pytest.raises(ValueError, match="scope='both'"):
                store.durations(fb.plan(), scope="both")


class TestSafety:
    def test_sql_quotes_stored_verbatim(self, tmp_path: Path) -> None:
        """A task id and flow name with SQL quotes are stored as given; tables survive (HS2)."""
        evil = "x'); DROP TABLE runs;--"
        f = Flow(evil, nap(0, evil).named(evil))
        with HistoryStore(tmp_path / "h.db", store_outputs=True) as store:
            result = flowdsl.run(f, history=store)
            run = store.get_run(result.run_id)
            assert run["flow"] == evil and run["tasks"][0]["task_id"] == evil
            assert store.load_outputs(result.run_id) == {evil: evil}
            tables = {r["name"] for r in store._query(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "tasks", "attempts"} <= tables

    def test_file_is_owner_only(self, tmp_path: Path) -> None:
        """A new history file is mode 0600 and its new folder is not world-writable (HS3)."""
        old = os.umask(0o022)
        try:
            path = tmp_path / "new" / "dir" / "h.db"
            with HistoryStore(path) as store:
                record(store, "r1", [("a", "t", "completed", 1)])
        finally:
            os.umask(old)
        for p in path.parent.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert not path.parent.stat().st_mode & stat.S_IWOTH
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    def test_outputs_not_stored_unless_asked(self, tmp_path: Path) -> None:
        """Without store_outputs nothing of the output reaches the file."""
        path = tmp_path / "h.db"
        with HistoryStore(path) as store:
            record(store, "r1", [("a", "t", "completed", 1)], outputs={"a": "canary-7f3a"})
            assert store.load_outputs("r1") == {}
        assert b"canary-7f3a" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())

    def test_outputs_are_json_and_non_json_is_skipped(self) -> None:
        """JSON outputs round-trip; an output that is not JSON is left out, never pickled."""
        with HistoryStore(store_outputs=True) as store:
            record(store, "r1", [("a", "t", "completed", 1), ("b", "t", "completed", 1)],
                   outputs={"a": {"k": [1, 2.5, None]}, "b": threading.Lock()})
            assert store.load_outputs("r1") == {"a": {"k": [1, 2.5, None]}}

    @pytest.mark.parametrize("raw", [pickle.dumps({"a": 1}), "c__builtin__\neval\n."])
    def test_pickle_rows_are_rejected(self, raw: Any) -> None:
        """A row crafted to hold pickle bytes is refused on load (SE3)."""
        with HistoryStore(store_outputs=True) as store:
            record(store, "r1", [("a", "t", "completed", 1)], outputs={"a": 1})
            store._conn.execute("UPDATE tasks SET output = ? WHERE task_id = 'a'", (raw,))
            with pytest.raises(HistoryError, match="not JSON"):
                store.load_outputs("r1")

    def test_schema_version_and_newer_files(self, tmp_path: Path) -> None:
        """The schema version is stored; a file from a newer schema is refused."""
        path = tmp_path / "h.db"
        HistoryStore(path).close()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        with pytest.raises(HistoryError, match="newer"):
            HistoryStore(path)


class TestOpenHistory:
    def test_specs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """False, 'off', a path (cached) and a store resolve as documented."""
        assert open_history(False) is None
        assert open_history(None) is None  # FLOWDSL_HISTORY=off
        a = open_history(tmp_path / "h.db")
        assert a is not None and open_history(str(tmp_path / "h.db")) is a
        with HistoryStore() as mine:
            assert open_history(mine) is mine
        with pytest.raises(TypeError, match="history="):
            open_history(42)

    def test_default_location(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Unset FLOWDSL_HISTORY uses $XDG_STATE_HOME/flowdsl/history.db; a path overrides."""
        monkeypatch.delenv("FLOWDSL_HISTORY")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        assert default_path() == tmp_path / "flowdsl" / "history.db"
        store = open_history(None)
        assert store is not None and Path(store.path) == tmp_path / "flowdsl" / "history.db"
        monkeypatch.setenv("FLOWDSL_HISTORY", str(tmp_path / "other.db"))
        assert default_path() == tmp_path / "other.db"


class TestRetention:
    def test_keep_last_bounds_rows_and_bytes(self, tmp_path: Path) -> None:
        """With keep_last=50, rows stay at 50 runs and the file stops growing (HS5)."""
        path = tmp_path / "h.db"
        with HistoryStore(path, keep_last=50) as store:
            for n in range(300):
                record(store, f"r{n}", [("a", "t", "completed", 1), ("b", "t", "failed", 1)])
            store.prune()
            pages = store._query("PRAGMA page_count")[0]["page_count"]
            for n in range(300, 900):
                record(store, f"r{n}", [("a", "t", "completed", 1), ("b", "t", "failed", 1)])

            def counts() -> list[int]:  # one statement: a background prune cannot split it
                row = store._query("SELECT (SELECT count(*) FROM runs) AS r, (SELECT count(*) "
                                   "FROM tasks) AS t, (SELECT count(*) FROM attempts) AS a")[0]
                return [row["r"], row["t"], row["a"]]

            # Pruning is rare and in the background: between two prunes a few more runs stay.
            runs, tasks, attempts = counts()
            assert 50 <= runs < 50 + 2 * store.prune_every
            # "a" completed at its first attempt: its attempt row is implied by its task row
            assert [tasks, attempts] == [2 * runs, runs]
            store.prune()
            assert store._query("PRAGMA page_count")[0]["page_count"] <= pages + 2
            assert counts() == [50, 100, 50]
            assert store.runs(1)[0]["run_id"] == "r899"

    def test_memory_stays_flat_over_many_runs(self) -> None:
        """Recording thousands of runs does not accumulate memory in the process (HS5)."""
        with HistoryStore(keep_last=20) as store:
            for n in range(200):
                record(store, f"w{n}", [("a", "t", "completed", 1)])
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for n in range(2000):
                record(store, f"r{n}", [("a", "t", "completed", 1)])
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
        assert grown < 512 * 1024


class TestConcurrency:
    WRITER = textwrap.dedent("""
        import sys
        from flowdsl import Attempt, HistoryStore, RunResult, TaskRecord, TaskStatus
        path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        with HistoryStore(path) as store:
            for i in range(n):
                r = RunResult(f"{tag}-{i}", "c", "parallel")
                obs = store.observer("c")
                obs.run_started(r, None)
                for k in range(3):
                    rec = TaskRecord(f"t{k}", "w", TaskStatus.COMPLETED,
                                     [Attempt(1, 0.0, 0.1, TaskStatus.COMPLETED)], 0.0, 0.1)
                    r.tasks[rec.id] = rec
                    obs.task_finished(r, rec, None)
                r.status = "completed"
                obs.run_finished(r)
    """)

    def test_processes_and_threads_write_one_file(self, tmp_path: Path) -> None:
        """2 processes and 8 threads write at once: no 'database is locked', no lost rows
        (HS4)."""
        path = tmp_path / "h.db"
        HistoryStore(path).close()
        procs = [subprocess.Popen([sys.executable, "-c", self.WRITER, str(path), f"p{i}", "40"],
                                  cwd=ROOT, stderr=subprocess.PIPE) for i in range(2)]
        errors: list[BaseException] = []
        shared = open_history(path)

        def work(n: int) -> None:
            try:
                f = Flow("c", [nap(0, k).named(f"t{k}") for k in range(3)])
                own = HistoryStore(path) if n % 2 else shared
                for _ in range(10):
                    flowdsl.run(f, history=own)
                if own is not shared:
                    own.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            _, err = p.communicate(timeout=100)
            assert p.returncode == 0, err.decode()
        assert errors == []
        with HistoryStore(path) as store:
            assert store._query("SELECT count(*) AS n FROM runs")[0]["n"] == 80 + 80
            assert store._query("SELECT count(*) AS n FROM tasks")[0]["n"] == 3 * 160
            assert store._query("SELECT count(*) AS n FROM runs WHERE status != "
                                "'completed'")[0]["n"] == 0


    def test_runs_side_by_side_on_one_loop_each_get_their_own_rows(
            self, tmp_path: Path) -> None:
        """Four runs of one flow (the same task ids) interleave on one event loop and one
        store, with a retried task and a map, and a batch flushed mid-run: each run's rows
        are its own records exactly (status, attempt count, start and end)."""
        import anyio

        calls: dict[str, int] = {}

        @tool(executor="async", registry=False)
        async def flaky(tag: str, pause: float) -> str:
            calls[tag] = calls.get(tag, 0) + 1
            await anyio.sleep(pause)
            if calls[tag] == 1:
                raise ValueError(f"first call of {tag}")
            return tag

        @tool(executor="async", registry=False)
        async def step(x: int, pause: float) -> int:
            await anyio.sleep(pause)
            return x

        def flow(tag: str, pause: float) -> Any:
            return Flow("side", flaky(tag, pause).with_options(retries=1, backoff=0.0)
                        >> step.map(list(range(5)), pause=pause)
                        >> step(1, pause).named("last"))

        results: dict[str, flowdsl.RunResult] = {}
        with HistoryStore(tmp_path / "h.db", flush_rows=3) as store:
            async def one(tag: str, pause: float) -> None:
                results[tag] = await flowdsl.arun(flow(tag, pause), history=store)

            async def main() -> None:
                async with anyio.create_task_group() as tg:
                    for k, tag in enumerate("abcd"):
                        tg.start_soon(one, tag, 0.002 * (k + 1))

            anyio.run(main)
            runs = {tag: store.get_run(r.run_id) for tag, r in results.items()}
        assert len({r.run_id for r in results.values()}) == 4
        for tag, r in results.items():
            assert r.ok, tag
            rows = {row["task_id"]: row for row in runs[tag]["tasks"]}
            assert set(rows) == set(r.tasks), tag
            for tid, rec in r.tasks.items():
                row = rows[tid]
                assert (row["status"], len(row["attempts"]), row["started_at"],
                        row["ended_at"]) == (rec.status.value, len(rec.attempts),
                                             rec.started_at, rec.ended_at), (tag, tid)
            assert len(rows["flaky"]["attempts"]) == 2, tag


KILLED = textwrap.dedent("""
    import sys, time, anyio
    import flowdsl
    from flowdsl import Flow, tool
    from flowdsl._record.history import HistoryStore

    @tool(executor="async")
    async def step(n: int) -> dict:
        return {"n": n}

    @tool(executor="async")
    async def hang(x) -> int:
        open(sys.argv[2], "w").close()
        await anyio.sleep(60)
        return 0

    a = step(1).named("a")
    b = step(a["n"]).named("b")
    f = Flow("k9", a >> b >> [hang(b).named("c"), step(3).named("d")])
    print(flowdsl.run(f, history=HistoryStore(sys.argv[1], store_outputs=True)))
""")


class TestKilledRun:
    def test_kill_9_then_interrupted_and_resume(self, tmp_path: Path) -> None:
        """A run SIGKILLed half-way leaves a sound file, is marked interrupted, and resume
        re-runs only what did not complete (HS1)."""
        path, marker = tmp_path / "h.db", tmp_path / "started"
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path), str(marker)],
                                cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert marker.exists()
            time.sleep(0.5)  # longer than the flush interval: finished rows reach the file
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with HistoryStore(path) as store:
            assert store.integrity_check() == "ok"
            (run,) = store.runs()
            assert run["status"] == "interrupted"
            tasks = {t["task_id"]: t["status"] for t in store.get_run(run["run_id"])["tasks"]}
            assert tasks == {"a": "completed", "b": "completed", "c": "interrupted",
                             "d": "completed"}
            outputs = store.load_outputs(run["run_id"])
            assert outputs == {"a": {"n": 1}, "b": {"n": 1}, "d": {"n": 3}}

            calls: list[str] = []

            @tool(executor="async", registry=False)
            async def step(n: int) -> dict[str, int]:
                calls.append("step")
                return {"n": n}

            @tool(executor="async", registry=False)
            async def hang(x: Any) -> int:
                calls.append("hang")
                return x["n"] + 10

            a = step(1).named("a")
            b = step(a["n"]).named("b")
            f = Flow("k9", a >> b >> [hang(b).named("c"), step(3).named("d")])
            result = flowdsl.run(f, history=store, resume=run["run_id"])
        assert result.ok and calls == ["hang"]
        assert result.outputs["c"] == 11 and result.outputs["b"] == {"n": 1}

    def test_live_runs_of_other_processes_are_left_running(self, tmp_path: Path) -> None:
        """Opening a store marks only runs whose process is gone as interrupted."""
        path = tmp_path / "h.db"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with HistoryStore(path) as store:
            for run_id, pid in (("alive", os.getppid()), ("gone", dead.pid)):
                store._conn.execute("INSERT INTO runs (run_id, status, host, pid) VALUES "
                                    "(?, 'running', ?, ?)", (run_id, socket.gethostname(), pid))
        with HistoryStore(path) as store:
            status = {r["run_id"]: r["status"] for r in store.runs()}
        assert status == {"alive": "running", "gone": "interrupted"}


def test_outputs_round_trip_through_json_text(tmp_path: Path) -> None:
    """Stored outputs are plain JSON text in the file."""
    with HistoryStore(tmp_path / "h.db", store_outputs=True) as store:
        record(store, "r1", [("a", "t", "completed", 1)], outputs={"a": [1, "x"]})
        raw = store._query("SELECT output FROM tasks")[0]["output"]
    assert json.loads(raw) == [1, "x"]


def test_readme_history_example_runs(tmp_path: Path) -> None:
    """The first example of docs/concepts/history.md runs as etl.py in a fresh process and
    prints what its comments say (its tools then have etl's qualified names)."""
    from doc_pages import examples  # tests/ is on sys.path

    code = examples("concepts/history.md", "## History")[0][0]
    (tmp_path / "etl.py").write_text(code)
    env = {**os.environ, "FLOWDSL_HISTORY": str(tmp_path / "default.db"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "etl.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["None", "completed 2", "['etl.load', 'etl.total']",
                                        "['load', 'total']", "[['load', 'total']]", "[]"]
    with HistoryStore(tmp_path / "default.db") as store:  # the default file got its run
        assert [r["flow"] for r in store.runs()] == ["etl"]
