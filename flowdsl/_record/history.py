"""Record: every run's journal in SQLite (standard library ``sqlite3``), and statistics from it.

Layout: ``runs`` (one row per run), ``tasks`` (one per task of a run) and ``attempts`` (one per
call of a tool); ``PRAGMA user_version`` holds the schema version so later versions can
migrate. Table and column names are constants; every value goes through a placeholder.

Writes are cheap for the run: the observer hooks only append rows to a buffer; a small flusher
thread writes the buffer in one transaction every ``flush_interval`` seconds (sooner when
``flush_rows`` rows are waiting), and the run's first and last rows are written at once. So a
run killed with SIGKILL loses at most the last fraction of a second, and its run row, still
``running``, becomes ``interrupted`` the next time a store opens the file.

Several runs may write one file at once (threads or processes): WAL mode, a busy timeout and
``BEGIN IMMEDIATE`` with retries keep "database is locked" from reaching the caller.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._base.errors import HistoryError, RunNotFound
from .._base.limits import stored_json
from .._run.result import RunResult, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .._plan.planner import Plan

__all__ = ["HistoryError", "HistoryStore", "RunNotFound", "ToolStats", "default_path",
           "open_history"]

SCHEMA_VERSION = 1
_T = TypeVar("_T")
_HOST = socket.gethostname()
# run ids of runs in progress in this process, over every store instance: a store opening a
# file must not mark a run of its own process as interrupted.
_LIVE_RUNS: set[str] = set()
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, flow TEXT,
    mode TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    error_type TEXT, error_message TEXT, host TEXT, pid INTEGER);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, task_id TEXT NOT NULL,
    tool TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT, reason TEXT,
    output TEXT, PRIMARY KEY (run_id, task_id));
CREATE INDEX IF NOT EXISTS tasks_tool ON tasks(tool);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, task_id TEXT NOT NULL, number INTEGER NOT NULL, tool TEXT,
    started_at REAL, ended_at REAL, duration REAL, status TEXT NOT NULL, error_type TEXT,
    error_message TEXT, PRIMARY KEY (run_id, task_id, number),
    FOREIGN KEY (run_id, task_id) REFERENCES tasks(run_id, task_id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS attempts_tool ON attempts(tool);
"""
# Migrations from version N to N+1, applied in order; empty while there is one version.
_MIGRATIONS: dict[int, str] = {}

_UPSERT_TASK = (
    "INSERT INTO tasks (run_id, task_id, tool, status, started_at, ended_at, duration, "
    "attempts, error_type, error_message, reason, output) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (run_id, task_id) DO UPDATE SET tool=excluded.tool, status=excluded.status, "
    "started_at=excluded.started_at, ended_at=excluded.ended_at, duration=excluded.duration, "
    "attempts=excluded.attempts, error_type=excluded.error_type, "
    "error_message=excluded.error_message, reason=excluded.reason, "
    "output=coalesce(excluded.output, tasks.output)")
_UPSERT_ATTEMPT = (
    "INSERT OR REPLACE INTO attempts (run_id, task_id, number, tool, started_at, ended_at, "
    "duration, status, error_type, error_message) VALUES (?,?,?,?,?,?,?,?,?,?)")
_INSERT_RUN = (
    "INSERT OR REPLACE INTO runs (run_id, flow, mode, status, started_at, host, pid) "
    "VALUES (?,?,?,?,?,?,?)")
_FINISH_RUN = (
    "UPDATE runs SET status=?, ended_at=?, duration=?, error_type=?, error_message=? "
    "WHERE run_id=?")
_FAILED = (TaskStatus.FAILED.value, TaskStatus.TIMED_OUT.value)


@dataclass(frozen=True, slots=True)
class ToolStats:
    """Statistics of one tool over the history.

    Durations are those of the tool's successful calls (attempts), in seconds; ``None`` when
    no call succeeded yet.

    Attributes:
        tool: the tool's name.
        count: how many tasks of this tool ran (reached a final status after starting).
        completed: how many of them completed.
        failed: how many failed or timed out.
        success_rate: completed / (completed + failed); ``None`` before any finished.
        attempts: how many calls were made in all.
        timeouts: how many calls timed out.
        mean, p50, p95, max: of the successful calls' durations.
    """

    tool: str
    count: int
    completed: int
    failed: int
    success_rate: float | None
    attempts: int
    timeouts: int
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_path() -> Path:
    """The default history file: ``$FLOWDSL_HISTORY`` if it names a path, else
    ``$XDG_STATE_HOME/flowdsl/history.db`` (``~/.local/state/flowdsl/history.db``)."""
    env = os.environ.get("FLOWDSL_HISTORY", "").strip()
    if env and env.lower() not in ("off", "0", "false", "no", "none"):
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "flowdsl" / "history.db"


_cache: dict[str, HistoryStore] = {}
_cache_lock = threading.Lock()


def open_history(spec: Any = None) -> HistoryStore | None:
    """Resolve ``run()``'s ``history=`` argument to a store (or ``None`` for no history).

    Args:
        spec: ``None`` for the default store (``FLOWDSL_HISTORY`` = a path, or ``off``/``0``/
            ``false`` to disable), ``False`` for none, a path (str or Path) for a SQLite file
            there, or a :class:`HistoryStore`, returned as is. Stores opened from paths are
            cached per path in this process and closed at exit.

    Raises:
        TypeError: ``spec`` is none of these.
    """
    if spec is False:
        return None
    if isinstance(spec, HistoryStore):
        return spec
    if spec is None or spec is True:
        env = os.environ.get("FLOWDSL_HISTORY", "").strip().lower()
        if env in ("off", "0", "false", "no", "none"):
            return None
        spec = default_path()
    if not isinstance(spec, (str, os.PathLike)):
        msg = f"history= expects None, False, a path or a HistoryStore, got {spec!r}"
        raise TypeError(msg)
    key = str(spec) if str(spec) == ":memory:" else os.path.realpath(os.fspath(spec))
    with _cache_lock:
        store = _cache.get(key)
        if store is None or store.closed or key == ":memory:":
            store = _cache[key] = HistoryStore(spec)
        return store


@atexit.register
def close_cached() -> None:
    """Close every store :func:`open_history` opened (also called at interpreter exit)."""
    with _cache_lock:
        stores = list(_cache.values())
        _cache.clear()
    for store in stores:
        store.close()


def _create_private(path: Path) -> None:
    """Create the file (and its folder) readable by the owner only, before SQLite opens it;
    SQLite gives the -wal and -shm files the same mode as the database file."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted ``values``, interpolated linearly."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _error(record: Any) -> tuple[str | None, str | None]:
    err = getattr(record, "error", None)
    return (err.type, err.message) if err is not None else (None, None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


class HistoryStore:
    """A SQLite journal of runs: the default sink of :func:`flowdsl.run`'s ``history=``.

    Args:
        path: the database file (created owner-only, with its folder), or ``":memory:"``.
        keep_last: how many finished runs to keep; older ones are deleted as new ones end.
        store_outputs: also store each completed task's output, as JSON (needed to resume a
            run); outputs that are not JSON are not stored. Never pickle.
        flush_interval: at most this many seconds pass between a task ending and its rows
            reaching the file.
        flush_rows: write at once when this many rows are waiting.

    Raises:
        HistoryError: the file was written by a newer schema than this flowdsl knows.
        ValueError: ``keep_last`` is below 1.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, keep_last: int = 1000,
                 store_outputs: bool = False, flush_interval: float = 0.2,
                 flush_rows: int = 256) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            msg = f"HistoryStore(keep_last={keep_last!r}): expected an integer >= 1"
            raise ValueError(msg)
        self.path = os.fspath(path)
        self.keep_last = keep_last
        self.store_outputs = store_outputs
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.closed = False
        self._db_lock = threading.RLock()  # one connection, shared by the flusher and callers
        self._buf_lock = threading.Condition(threading.Lock())
        self._buffer = _Batch()
        self._buffered = 0
        self._active = 0
        self._flusher: threading.Thread | None = None
        if self.path != ":memory:":
            _create_private(Path(self.path))
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._retry(self._setup)
        except BaseException:
            self._conn.close()
            raise

    # -- connection and schema -------------------------------------------------------------

    def _setup(self) -> None:
        c = self._conn
        c.execute("PRAGMA busy_timeout = 30000")
        c.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = NORMAL")  # durable across a process crash in WAL
        with self._transaction():
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                msg = (f"history file {self.path} has schema version {version}, newer than "
                       f"this flowdsl's {SCHEMA_VERSION}; upgrade flowdsl or use another file")
                raise HistoryError(msg)
            if version == 0:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
            for v in range(max(version, 1), SCHEMA_VERSION):
                c.execute(_MIGRATIONS[v])
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            self._mark_interrupted()

    def _mark_interrupted(self) -> None:
        """Runs left 'running' by a process that is gone become 'interrupted'."""
        rows = self._conn.execute(
            "SELECT run_id, host, pid FROM runs WHERE status = 'running'").fetchall()
        dead = []
        for run_id, host, pid in rows:
            if run_id in _LIVE_RUNS or host != _HOST:
                continue  # still running here, or on another machine we cannot check
            if pid is None or pid == os.getpid() or not _pid_alive(pid):
                dead.append((run_id,))
        self._conn.executemany(
            "UPDATE runs SET status = 'interrupted' WHERE run_id = ?", dead)
        self._conn.executemany(
            "UPDATE tasks SET status = 'interrupted' WHERE run_id = ? AND status = 'running'",
            dead)

    class _Tx:
        __slots__ = ("conn",)

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so two
            # writers never deadlock upgrading read locks.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            self.conn.execute("COMMIT" if et is None else "ROLLBACK")

    def _transaction(self) -> HistoryStore._Tx:
        return HistoryStore._Tx(self._conn)

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` under the connection lock, retrying while another writer holds the
        file past the busy timeout."""
        delay = 0.01
        deadline = time.monotonic() + 120.0
        while True:
            try:
                with self._db_lock:
                    return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _check_open(self) -> None:
        if self.closed:
            msg = f"HistoryStore({self.path!r}) is closed"
            raise HistoryError(msg)

    def close(self) -> None:
        """Write what is buffered and close the file; later calls do nothing."""
        if self.closed:
            return
        self._stop_flusher()
        try:
            self.flush()
        finally:
            self.closed = True
            with self._db_lock:
                self._conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HistoryStore {self.path} keep_last={self.keep_last}>"

    # -- writing ---------------------------------------------------------------------------

    def observer(self, flow_name: str | None = None, store_outputs: bool | None = None
                 ) -> HistoryObserver:
        """A :class:`~flowdsl._result.RunObserver` that records one run in this store.

        Args:
            flow_name: the flow's name, stored with the run (the result's name wins if set).
            store_outputs: override the store's ``store_outputs`` for this run.
        """
        self._check_open()
        keep = self.store_outputs if store_outputs is None else store_outputs
        return HistoryObserver(self, flow_name, keep)

    def _enqueue(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._buf_lock:
            self._buffer.add(sql, rows)
            self._buffered += len(rows)
            if self._buffered >= self.flush_rows:
                self._buf_lock.notify()

    def flush(self) -> None:
        """Write every buffered row now, in one transaction."""
        # Taking the connection first keeps batches in order between the flusher thread
        # and a caller flushing at the same moment.
        with self._db_lock:
            with self._buf_lock:
                batch, self._buffer, self._buffered = self._buffer, _Batch(), 0
            if batch and not self.closed:
                self._retry(lambda: self._write(batch))

    def _write(self, batch: _Batch) -> None:
        with self._transaction() as c:
            for sql, rows in batch.ordered():
                c.executemany(sql, rows)

    def _run_started(self, run_id: str) -> None:
        with self._buf_lock:
            self._active += 1
            _LIVE_RUNS.add(run_id)
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name=f"flowdsl-history-{id(self):x}")
                self._flusher.start()
        self.flush()

    def _run_finished(self, run_id: str) -> None:
        self.flush()
        self._retry(self._prune)
        with self._buf_lock:
            self._active -= 1
            _LIVE_RUNS.discard(run_id)
            last = self._active <= 0
        if last:
            self._stop_flusher()

    def _stop_flusher(self) -> None:
        with self._buf_lock:
            thread = self._flusher
            self._flusher = None
            self._buf_lock.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _flush_loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._buf_lock:
                if self._flusher is not me:
                    return
                if self._buffered < self.flush_rows:
                    self._buf_lock.wait(self.flush_interval)
                if self._flusher is not me:
                    return
            try:
                self.flush()
            except sqlite3.Error:  # reported by the next flush on the caller's side
                time.sleep(self.flush_interval)

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` finished runs (runs in progress are kept)."""
        with self._transaction() as c:
            row = c.execute("SELECT seq FROM runs WHERE status != 'running' ORDER BY seq DESC "
                            "LIMIT 1 OFFSET ?", (self.keep_last,)).fetchone()
            if row is not None:
                c.execute("DELETE FROM runs WHERE status != 'running' AND seq <= ?", row)

    # -- reading ---------------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        self._check_open()
        self.flush()

        def go() -> list[Any]:
            cur = self._conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return self._retry(go)

    def runs(self, limit: int = 20, *, flow: str | None = None,
             status: str | None = None) -> list[dict[str, Any]]:
        """The newest runs first: run id, flow, mode, status, start (Unix time), end, duration
        and the error type and message. Filter by flow name or status if given."""
        sql = ("SELECT run_id, flow, mode, status, started_at, ended_at, duration, error_type, "
               "error_message FROM runs WHERE (? IS NULL OR flow = ?) AND (? IS NULL OR "
               "status = ?) ORDER BY seq DESC LIMIT ?")
        return self._query(sql, (flow, flow, status, status, limit))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run with its ``tasks`` (in the order they started) and each task's
        ``attempts``.

        Raises:
            RunNotFound: no run has that id (or it was removed by retention).
        """
        runs = self._query("SELECT run_id, flow, mode, status, started_at, ended_at, duration, "
                           "error_type, error_message FROM runs WHERE run_id = ?", (run_id,))
        if not runs:
            msg = f"no run {run_id!r} in the history at {self.path}"
            raise RunNotFound(msg, run_id)
        run = runs[0]
        tasks = self._query(
            "SELECT task_id, tool, status, started_at, ended_at, duration, attempts, "
            "error_type, error_message, reason FROM tasks WHERE run_id = ? "
            "ORDER BY started_at IS NULL, started_at, rowid", (run_id,))
        attempts = self._query(
            "SELECT task_id, number, started_at, ended_at, duration, status, error_type, "
            "error_message FROM attempts WHERE run_id = ? ORDER BY task_id, number", (run_id,))
        by_task: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_task.setdefault(a.pop("task_id"), []).append(a)
        for t in tasks:
            t["attempts"] = by_task.get(t["task_id"], [])
        run["tasks"] = tasks
        return run

    def load_outputs(self, run_id: str) -> dict[str, Any]:
        """The stored outputs of the tasks that completed in run ``run_id`` (for resuming).

        Only JSON is ever read back: a row holding anything else is refused, never unpickled.

        Raises:
            RunNotFound: no run has that id.
            HistoryError: a stored output is not JSON text.
        """
        if not self._query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            msg = f"no run {run_id!r} in the history at {self.path}"
            raise RunNotFound(msg, run_id)
        rows = self._query("SELECT task_id, output FROM tasks WHERE run_id = ? AND status = ? "
                           "AND output IS NOT NULL", (run_id, TaskStatus.COMPLETED.value))
        out: dict[str, Any] = {}
        for row in rows:
            raw = row["output"]
            try:
                if not isinstance(raw, str):
                    raise TypeError(type(raw).__name__)
                out[row["task_id"]] = json.loads(raw)
            except (TypeError, ValueError) as exc:
                msg = (f"run {run_id!r}: the stored output of task {row['task_id']!r} is not "
                       f"JSON ({exc}); history holds JSON only and is never unpickled")
                raise HistoryError(msg) from None
        return out

    def tool_stats(self, tool: str | None = None) -> dict[str, ToolStats]:
        """Per-tool statistics (count, success rate, mean/p50/p95/max duration of successful
        calls), keyed by tool name; only ``tool`` when given."""
        tasks = self._query(
            "SELECT tool, status, count(*) AS n FROM tasks WHERE (? IS NULL OR tool = ?) AND "
            "started_at IS NOT NULL AND status NOT IN ('running', 'interrupted') GROUP BY "
            "tool, status", (tool, tool))
        calls = self._query(
            "SELECT tool, status, duration FROM attempts WHERE (? IS NULL OR tool = ?) "
            "ORDER BY tool, duration", (tool, tool))
        counts: dict[str, dict[str, int]] = {}
        for r in tasks:
            counts.setdefault(r["tool"], {})[r["status"]] = r["n"]
        durs: dict[str, list[float]] = {}
        ncalls: dict[str, list[int]] = {}
        for r in calls:
            n = ncalls.setdefault(r["tool"], [0, 0])
            n[0] += 1
            if r["status"] == TaskStatus.TIMED_OUT.value:
                n[1] += 1
            if r["status"] == TaskStatus.COMPLETED.value and r["duration"] is not None:
                durs.setdefault(r["tool"], []).append(r["duration"])
        out = {}
        for name in sorted(set(counts) | set(ncalls), key=str):
            c = counts.get(name, {})
            done = c.get(TaskStatus.COMPLETED.value, 0)
            failed = sum(c.get(s, 0) for s in _FAILED)
            d = durs.get(name, [])
            n = ncalls.get(name, [0, 0])
            out[name] = ToolStats(
                tool=name, count=sum(c.values()), completed=done, failed=failed,
                success_rate=done / (done + failed) if done + failed else None,
                attempts=n[0], timeouts=n[1], mean=sum(d) / len(d) if d else None,
                p50=_percentile(d, 0.5), p95=_percentile(d, 0.95), max=d[-1] if d else None)
        return out

    def durations(self, plan: Plan, stat: str = "p50") -> dict[str, float]:
        """Each task's expected duration from history: the median (``stat="p50"``) or mean
        (``"mean"``) of its completed runs in flows of the same name, else of its tool's
        completed tasks anywhere. Tasks with no history are left out. For a mapped task it
        is the duration of one child (see :meth:`map_counts` for how many)."""
        if stat not in ("p50", "mean"):
            msg = f"durations(stat={stat!r}): expected 'p50' or 'mean'"
            raise ValueError(msg)
        rows = self._query(
            "SELECT t.task_id, t.tool, r.flow, t.duration FROM tasks t JOIN runs r USING "
            "(run_id) WHERE t.status = ? AND t.duration IS NOT NULL ORDER BY t.duration",
            (TaskStatus.COMPLETED.value,))
        by_task: dict[str, list[float]] = {}
        by_tool: dict[str, list[float]] = {}
        by_parent: dict[str, list[float]] = {}  # a mapped task -> its children's durations
        for r in rows:
            if plan.name is not None and r["flow"] == plan.name:
                by_task.setdefault(r["task_id"], []).append(r["duration"])
                if r["task_id"].endswith("]"):
                    by_parent.setdefault(r["task_id"].rpartition("[")[0], []).append(
                        r["duration"])
            by_tool.setdefault(r["tool"], []).append(r["duration"])

        def pick(values: list[float]) -> float:
            if stat == "mean":
                return sum(values) / len(values)
            return _percentile(values, 0.5)  # type: ignore[return-value]

        out: dict[str, float] = {}
        for task_id, task in plan.tasks.items():
            own = by_parent if getattr(task, "fan", None) is not None else by_task
            values = own.get(task_id) or by_tool.get(getattr(task.tool, "name", ""))
            if values:
                out[task_id] = pick(values)
        return out

    def map_counts(self, plan: Plan) -> dict[str, int]:
        """For each mapped task of ``plan``, how many children it had in the latest run of
        a flow of the same name that ran it. Mapped tasks never recorded are left out."""
        mapped = {t for t, task in plan.tasks.items() if getattr(task, "fan", None) is not None}
        if not mapped or plan.name is None:
            return {}
        rows = self._query(
            "SELECT t.run_id, t.task_id FROM tasks t JOIN runs r USING (run_id) WHERE "
            "r.flow = ? AND t.task_id LIKE '%]' ORDER BY r.seq DESC", (plan.name,))
        latest: dict[str, str] = {}  # mapped task -> the run whose children count
        out: dict[str, int] = {}
        for r in rows:
            parent = r["task_id"].rpartition("[")[0]
            if parent in mapped and latest.setdefault(parent, r["run_id"]) == r["run_id"]:
                out[parent] = out.get(parent, 0) + 1
        return out

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``"ok"`` when the file is sound)."""
        return str(self._query("PRAGMA integrity_check")[0]["integrity_check"])


class _Batch:
    """Rows waiting to be written, in the order the foreign keys need (runs, tasks, attempts,
    run ends). A task's later row replaces its earlier one in the same batch (its 'running'
    row is never written when its final row comes along in time), keeping a stored output."""

    __slots__ = ("attempts", "ends", "starts", "tasks")

    def __init__(self) -> None:
        self.starts: list[tuple[Any, ...]] = []
        self.tasks: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.attempts: list[tuple[Any, ...]] = []
        self.ends: list[tuple[Any, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.starts or self.tasks or self.attempts or self.ends)

    def add(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if sql is _UPSERT_TASK:
            tasks = self.tasks
            for row in rows:
                key = (row[0], row[1])
                old = tasks.get(key)
                if old is not None and row[-1] is None and old[-1] is not None:
                    row = (*row[:-1], old[-1])
                tasks[key] = row
        else:
            {_INSERT_RUN: self.starts, _UPSERT_ATTEMPT: self.attempts,
             _FINISH_RUN: self.ends}[sql].extend(rows)

    def ordered(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        return [(_INSERT_RUN, self.starts), (_UPSERT_TASK, list(self.tasks.values())),
                (_UPSERT_ATTEMPT, self.attempts), (_FINISH_RUN, self.ends)]


class HistoryObserver:
    """Records one run into a :class:`HistoryStore`; the hooks only buffer rows."""

    __slots__ = ("_done", "_flow", "_outputs", "_run_id", "_store")

    def __init__(self, store: HistoryStore, flow_name: str | None, store_outputs: bool) -> None:
        self._store = store
        self._flow = flow_name
        self._outputs = store_outputs
        self._done: set[str] = set()
        self._run_id: str | None = None

    def run_started(self, result: RunResult, plan: Any) -> None:
        self._run_id = result.run_id
        self._store._enqueue(_INSERT_RUN, [(
            result.run_id, result.flow_name or self._flow, result.mode, "running",
            result.started_at.timestamp(), _HOST, os.getpid())])
        self._store._run_started(result.run_id)

    def task_started(self, result: RunResult, record: TaskRecord) -> None:
        self._store._enqueue(_UPSERT_TASK, [_task_row(result.run_id, record, None)])

    def task_finished(self, result: RunResult, record: TaskRecord, output: Any) -> None:
        encoded = None
        if self._outputs and record.status is TaskStatus.COMPLETED:
            encoded = stored_json(output, result.masker, task_id=record.id)
        store = self._store
        store._enqueue(_UPSERT_TASK, [_task_row(result.run_id, record, encoded)])
        if record.attempts:
            store._enqueue(_UPSERT_ATTEMPT, _attempt_rows(result.run_id, record))
        self._done.add(record.id)

    def run_finished(self, result: RunResult) -> None:
        store = self._store
        # Rollback changes a finished task's status after task_finished: write it again (its
        # output is gone too, so a resume re-runs it).
        rest = [r for r in result.tasks.values() if r.id not in self._done
                or r.status is TaskStatus.ROLLED_BACK or r.rollback_error is not None]
        if rest:
            # Tasks reused by a resume keep their stored output, so a resumed run can be
            # resumed in turn.
            rows = [_task_row(result.run_id, r, stored_json(result.outputs[r.id],
                                                            result.masker, task_id=r.id)
                              if self._outputs and r.status is TaskStatus.COMPLETED
                              and r.id in result.outputs else None) for r in rest]
            store._enqueue(_UPSERT_TASK, rows)
            attempts = [row for r in rest for row in _attempt_rows(result.run_id, r)]
            if attempts:
                store._enqueue(_UPSERT_ATTEMPT, attempts)
        etype, emsg = (type(result.error).__qualname__, str(result.error)) if result.error \
            else (None, None)
        ended = result.started_at.timestamp() + result.duration
        store._enqueue(_FINISH_RUN, [(result.status, ended, result.duration, etype, emsg,
                                      result.run_id)])
        store._run_finished(result.run_id)


def _task_row(run_id: str, r: TaskRecord, output: str | None) -> tuple[Any, ...]:
    etype, emsg = _error(r)
    return (run_id, r.id, r.tool, r.status.value, r.started_at, r.ended_at, r.duration,
            len(r.attempts), etype, emsg, r.reason, output)


def _attempt_rows(run_id: str, r: TaskRecord) -> list[tuple[Any, ...]]:
    rows = []
    for a in r.attempts:
        etype, emsg = _error(a)
        rows.append((run_id, r.id, a.number, r.tool, a.started_at, a.ended_at, a.duration,
                     a.status.value, etype, emsg))
    return rows
