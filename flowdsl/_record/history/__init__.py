"""Record: every run's journal in SQLite (standard library ``sqlite3``), and statistics from it.

Layout: ``runs`` (one row per run, with its plan's edges as JSON), ``tasks`` (one per task
of a run, with its tool's module-qualified name and the log lines it kept, as JSON; a
pipeline over items adds one per stage x item, ``stage@i``),
``attempts`` (one per call of a tool), and ``stats`` and
``task_stats`` (aggregates per flow and qualified tool, and per task, folded in by the
writer thread once a run's end is written: in the same transaction for a small run, just
after the run returns for a large one, ``runs.aggregated = 0`` marking it until then);
``PRAGMA user_version`` holds the schema version, and older files are migrated when opened.
Table and column names are constants; every value goes through a placeholder.

Writes cost the run an append per row: a writer thread drains the rows into one transaction
every ``flush_interval`` seconds (sooner when ``flush_rows`` rows wait), and the run's end
waits, in a worker thread, for its rows to be written. A run killed with SIGKILL loses at most
the last fraction of a second; its run row, still ``running``, becomes ``interrupted`` the
next time a store opens the file; a reader that never writes (the run browser) tells it at
once from the run's host, pid, process start time and the heartbeat the writer thread stamps
on its runs in progress every second (:mod:`.liveness`). Old runs are pruned in the background every
``prune_every`` finished runs. What a run reads (expected durations) comes from the aggregates:
its cost follows the flow's tools, not the number of rows in the file.

Several runs may write one file at once (threads or processes): WAL mode, a busy timeout and
``BEGIN IMMEDIATE`` with retries keep "database is locked" from reaching the caller.
"""

from __future__ import annotations

import atexit
import collections
import os
import sqlite3
import stat as stat_
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

from ..._base.errors import HistoryError
from ..._base.log import get_logger, logging_enabled
from .liveness import HEARTBEAT_EVERY, pid_alive, proc_start
from .read import HistoryReader, ToolStats, _check_scope
from .sink import (
    FINISH_RUN,
    INSERT_RUN,
    SINK_MIN_ROWS,
    Rows,
    Sink,
    Transaction,
    aggregate_once,
    configure,
    fold_runs,
    write_rows,
)
from .view import HistoryView
from .write import HEARTBEAT, HOST, TAIL, Batch, HistoryObserver, plan_keys, tool_identity

__all__ = ["HistoryObserver", "HistoryStore", "HistoryView", "ToolStats", "aopen_history",
           "default_path", "open_history", "tool_identity"]

SCHEMA_VERSION = 6
#: A run of fewer task rows is folded into the statistics in the transaction that writes its
#: end; a larger one just after it returns (see HistoryStore._write).
FOLD_INLINE_MAX = 1000
_T = TypeVar("_T")
# run ids of runs in progress in this process, over every store instance: a store opening a
# file must not mark a run of its own process as interrupted.
_LIVE_RUNS: set[str] = set()
_OFF = ("off", "0", "false", "no", "none")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, flow TEXT,
    mode TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    error_type TEXT, error_message TEXT, host TEXT, pid INTEGER, history_error TEXT,
    edges TEXT, nodes TEXT, proc_start TEXT, heartbeat REAL, aggregated INTEGER);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_flow ON runs(flow, seq);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, task_id TEXT NOT NULL,
    tool TEXT, status TEXT NOT NULL, started_at REAL, ended_at REAL, duration REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT, reason TEXT,
    output TEXT, qualname TEXT, logs TEXT, item INTEGER, items INTEGER,
    PRIMARY KEY (run_id, task_id));
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, task_id TEXT NOT NULL, number INTEGER NOT NULL, tool TEXT,
    started_at REAL, ended_at REAL, duration REAL, status TEXT NOT NULL, error_type TEXT,
    error_message TEXT, qualname TEXT, PRIMARY KEY (run_id, task_id, number),
    FOREIGN KEY (run_id, task_id) REFERENCES tasks(run_id, task_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS stats (
    flow TEXT NOT NULL, tool TEXT NOT NULL, name TEXT,
    tasks INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
    attempts INTEGER NOT NULL, timeouts INTEGER NOT NULL, task_n INTEGER NOT NULL,
    task_sum REAL NOT NULL, task_recent BLOB, call_n INTEGER NOT NULL, call_sum REAL NOT NULL,
    call_max REAL, call_recent BLOB, PRIMARY KEY (flow, tool)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stats_tool ON stats(tool);
CREATE TABLE IF NOT EXISTS task_stats (
    flow TEXT NOT NULL, tool TEXT NOT NULL, task_id TEXT NOT NULL, n INTEGER NOT NULL,
    total REAL NOT NULL, d1 REAL, d2 REAL, d3 REAL, d4 REAL, d5 REAL,
    PRIMARY KEY (flow, tool, task_id)) WITHOUT ROWID;
"""


def _migrate_1(c: sqlite3.Connection) -> None:
    """Version 1 -> 2: qualified tool names, the run's history error, aggregates. Version 1
    kept only bare tool names, so its rows count under the bare name (never matching a
    qualified tool by default); their aggregates are built once, here."""
    c.execute("ALTER TABLE runs ADD COLUMN history_error TEXT")
    c.execute("ALTER TABLE tasks ADD COLUMN qualname TEXT")
    c.execute("UPDATE tasks SET qualname = tool")
    c.execute("ALTER TABLE attempts ADD COLUMN qualname TEXT")
    c.execute("UPDATE attempts SET qualname = tool")
    c.execute("DROP INDEX IF EXISTS tasks_tool")
    c.execute("DROP INDEX IF EXISTS attempts_tool")
    _create(c)
    _migrate_4_pipeline_items(c)  # the aggregates' SQL reads the columns it adds
    _migrate_5_deferred_aggregates(c)
    c.execute("UPDATE runs SET aggregated = 0 WHERE status NOT IN ('running', 'interrupted')")
    # folded in by _setup, once every migration is done


def _migrate_2(c: sqlite3.Connection) -> None:
    """Version 2 -> 3: each task's kept log lines, each run's plan edges (older runs have
    neither: their tasks show no lines, their graphs no arrows)."""
    c.execute("ALTER TABLE tasks ADD COLUMN logs TEXT")
    c.execute("ALTER TABLE runs ADD COLUMN edges TEXT")


def _migrate_3_writer_liveness(c: sqlite3.Connection) -> None:
    """Version 3 -> 4 (writer liveness, for the run browser): each run's writer process start
    time and heartbeat, so a reader tells a run whose writer is gone without writing (older
    runs have neither: a reader falls back to their host and pid), and the plan's task ids
    (``nodes``), so a live run's graph shows the tasks not started yet."""
    c.execute("ALTER TABLE runs ADD COLUMN nodes TEXT")
    c.execute("ALTER TABLE runs ADD COLUMN proc_start TEXT")
    c.execute("ALTER TABLE runs ADD COLUMN heartbeat REAL")


def _migrate_4_pipeline_items(c: sqlite3.Connection) -> None:
    """Version 4 -> 5 (pipelines recorded per item): a stage's per-item row (``stage@i``)
    holds its item's index in ``item``, and the stage's summary row the number of its items
    in ``items`` (statistics count the item rows, not the summary). Older runs have neither:
    their pipeline stages read back as one row each, as they were written."""
    have = {row[1] for row in c.execute("PRAGMA table_info(tasks)")}
    for col in ("item", "items"):
        if col not in have:  # version 1 files got them early (see _migrate_1)
            c.execute(f"ALTER TABLE tasks ADD COLUMN {col} INTEGER")


def _migrate_5_deferred_aggregates(c: sqlite3.Connection) -> None:
    """Version 5 -> 6: a finished run's statistics are folded in after its rows are written,
    not in the same transaction (a run no longer waits for them). ``runs.aggregated = 0``
    marks a run whose statistics are still to come; older runs have NULL: folded in."""
    have = {row[1] for row in c.execute("PRAGMA table_info(runs)")}
    if "aggregated" not in have:
        c.execute("ALTER TABLE runs ADD COLUMN aggregated INTEGER")


def _create(c: sqlite3.Connection) -> None:
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            c.execute(stmt)


# Migrations from version N to N+1, applied in order inside the opening transaction.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1, 2: _migrate_2, 3: _migrate_3_writer_liveness,
    4: _migrate_4_pipeline_items, 5: _migrate_5_deferred_aggregates}


class _Unfolded:
    """A run written whose statistics are still to be folded in: what it ran (task id ->
    (qualified tool, duration) of its completed tasks; None for a pipeline over items), its
    flow (None when its row is gone), and whether the tasks' own cached figures took it."""

    __slots__ = ("applied", "flow", "had", "run_id")

    def __init__(self, run_id: str, had: dict[str, tuple[str, float] | None] | None,
                 flow: str | None) -> None:
        self.run_id, self.had, self.flow = run_id, had, flow
        self.applied = False


def _pairs(had: dict[str, tuple[str, float] | None]) -> dict[tuple[str, str], float]:
    """What a run added to ``task_stats``, by (qualified tool, task id), from what the
    writer kept of its completed tasks (task id -> (qualified tool, duration))."""
    return {(v[0], tid): v[1] for tid, v in had.items() if v is not None}


def default_path() -> Path:
    """The default history file: ``$FLOWDSL_HISTORY`` if it names a path, else
    ``$XDG_STATE_HOME/flowdsl/history.db`` (``~/.local/state/flowdsl/history.db``)."""
    env = os.environ.get("FLOWDSL_HISTORY", "").strip()
    if env and env.lower() not in _OFF:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "flowdsl" / "history.db"


_cache: dict[str, HistoryStore] = {}
# What a spec resolved to last time, so the default store costs a dict lookup per run (no
# path resolution): the spec as given (with the variables the default path depends on) ->
# cache key.
_resolved: dict[tuple[str, ...], str] = {}
_cache_lock = threading.Lock()


def _spec_key(spec: Any) -> tuple[str, ...] | None:
    if spec is None or spec is True:
        env = os.environ.get
        return ("", env("FLOWDSL_HISTORY") or "", env("XDG_STATE_HOME") or "", env("HOME") or "")
    if isinstance(spec, (str, os.PathLike)) and os.path.isabs(spec):  # relative: cwd-bound
        return (os.fspath(spec),)
    return None


def _cached(spec: Any) -> HistoryStore | Literal[False] | None:
    """The store a spec names if it is open already, ``None`` for no history, ``False``
    when it has to be opened."""
    if spec is False:
        return None
    if isinstance(spec, HistoryStore):
        return spec
    key = _spec_key(spec)
    if key is None:
        return False
    if key[0] == "" and key[1].strip().lower() in _OFF:
        return None
    store = _cache.get(_resolved.get(key, ""))
    return store if store is not None and not store.closed else False


def open_history(spec: Any = None) -> HistoryStore | None:
    """Resolve ``run()``'s ``history=`` argument to a store (or ``None`` for no history).

    Args:
        spec: ``None`` for the default store (``FLOWDSL_HISTORY`` = a path, or ``off``/``0``/
            ``false`` to disable), ``False`` for none, a path (str or Path) for a SQLite file
            there, or a :class:`HistoryStore`, returned as is. Stores opened from paths are
            cached per path in this process (opening is paid once) and closed at exit.

    Raises:
        TypeError: ``spec`` is none of these.
        HistoryError: the file cannot be opened or created; the message names the path and
            the cause.
    """
    found = _cached(spec)
    if found is not False:
        return found
    if not (spec is None or spec is True or isinstance(spec, (str, os.PathLike))):
        msg = f"history= expects None, False, a path or a HistoryStore, got {spec!r}"
        raise TypeError(msg)
    path = default_path() if spec is None or spec is True else spec
    if str(path) == ":memory:":
        return HistoryStore(path)
    key = os.path.realpath(os.fspath(path))
    with _cache_lock:
        store = _cache.get(key)
        if store is None or store.closed:
            store = _cache[key] = HistoryStore(path)
        spec_key = _spec_key(spec)
        if spec_key is not None:
            _resolved[spec_key] = key
        return store


async def aopen_history(spec: Any = None) -> HistoryStore | None:
    """:func:`open_history` for the event loop: a store already open costs a lookup; opening
    one (SQLite, files, migrations) happens in a worker thread."""
    found = _cached(spec)
    if found is not False:
        return found
    return await anyio.to_thread.run_sync(open_history, spec)


@atexit.register
def close_cached() -> None:
    """Close every store :func:`open_history` opened (also called at interpreter exit)."""
    with _cache_lock:
        stores = list(_cache.values())
        _cache.clear()
        _resolved.clear()
    for store in stores:
        store.close()


def _create_private(path: Path) -> None:
    """Folders flowdsl creates are 0700 and the file 0600 (whatever the umask); an existing
    history file (and its -wal/-shm files) is tightened to 0600 when it is readable by
    others. SQLite gives new -wal and -shm files the database file's mode."""
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass  # made by another process meanwhile
        else:
            os.chmod(folder, 0o700)  # mkdir's mode passes through the umask
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        return
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = p.stat()
            getuid = getattr(os, "getuid", None)  # None on Windows, which has no uids
            mine = getuid is None or st.st_uid == getuid()
            if stat_.S_ISREG(st.st_mode) and st.st_mode & 0o077 and mine:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            continue


class HistoryStore(HistoryReader):
    """A SQLite journal of runs: the default sink of :func:`flowdsl.run`'s ``history=``.

    Args:
        path: the database file (created owner-only, with its folder), or ``":memory:"``.
        keep_last: how many finished runs to keep; older ones are deleted in the background
            every ``prune_every`` finished runs (so fewer than ``keep_last + 2 *
            prune_every`` are kept in between; :meth:`prune` prunes now).
        store_outputs: also store each completed task's output, as JSON (needed to resume a
            run); outputs that are not JSON are not stored. Never pickle.
        flush_interval: at most this many seconds pass between a task ending and its rows
            reaching the file.
        flush_rows: write at once when this many rows are waiting (by default
            :data:`~.sink.SINK_MIN_ROWS`, 1,024: a batch the helper process writes, so
            the end of a large run waits for a short batch in flight, not a long one).
        prune_every: prune after this many finished runs (default ``keep_last // 10``,
            between 1 and 100).
        scope: which history expected durations and statistics read by default: ``"flow"``
            (the same flow's runs of the same qualified tool) or ``"all"`` (the same
            qualified tool in any flow).

    Raises:
        HistoryError: the file cannot be opened or created (a corrupt file, an unwritable
            folder, a file where a folder should be), or was written by a newer schema.
        ValueError: ``keep_last``, ``prune_every`` or ``scope`` is invalid.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, keep_last: int = 1000,
                 store_outputs: bool = False, flush_interval: float = 0.2,
                 flush_rows: int = SINK_MIN_ROWS, prune_every: int | None = None,
                 scope: str = "flow") -> None:
        for name, value in (("keep_last", keep_last), ("prune_every", prune_every)):
            if value is None and name == "prune_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"HistoryStore({name}={value!r}): expected an integer >= 1"
                raise ValueError(msg)
        _check_scope("HistoryStore", scope)
        self.path = os.fspath(path)
        self.keep_last = keep_last
        self.prune_every = prune_every or max(1, min(100, keep_last // 10))
        self.store_outputs = store_outputs
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.scope = scope
        self.closed = False
        self._db_lock = threading.RLock()  # one connection, shared by the writer and callers
        self._state = threading.Lock()  # the writer thread, the active runs, the counters
        # Task and attempt rows, and (kind, row) pairs for the others (write.TASK_WIDTH).
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._active: dict[str, Any] = {}  # run id -> its observer, while it runs
        self._plans: dict[str, Any] = {}  # run id -> plan, until the run's end is written
        # run id -> its plan's qualified tool names by task id (write.plan_keys), as long:
        # looked up once per run, not at each batch (finding them made three tuples of the
        # plan's size: a 100,000-task run took 2.5x its time without history, not 2.2x).
        # Kept per run, not per plan object: plans kept past their runs were freed at later
        # runs' starts (a 100,000-task plan: about 10 ms).
        self._names: dict[str, dict[str, str]] = {}
        # run id -> task id -> (qualified tool, duration) of its completed tasks written so
        # far (None for the others), until the run's end is written (see _write)
        self._ran: dict[str, dict[str, tuple[str, float] | None] | None] = {}
        # Runs written whose statistics are still to be folded in (see _aggregate), each
        # with what it ran; expected durations are read from memory once the tasks' own
        # figures took them (_apply_pending).
        self._pending: list[_Unfolded] = []
        self._apply_lock = threading.Lock()  # _apply_pending, from the writer or a run
        self._sizes: dict[str, int] = {}  # run id -> its task rows written, until its end
        self._errors: dict[str, HistoryError] = {}  # run id -> the first write failure
        # runs whose end waits for their rows: (run id, called with the run's write error)
        self._settles: list[tuple[str, Callable[[HistoryError | None], None]]] = []
        self._ended = 0  # runs ended since the last prune
        self._commits = 0  # transactions since the last WAL checkpoint
        self._ckpt_conn: sqlite3.Connection | None = None  # the writer thread's, for those
        self._checkpointed = time.monotonic()
        # The helper process that writes large batches (sink.py): None until one is wanted,
        # then kept (dead, if it could not start or died) until the store closes.
        self._sink: Sink | None = None
        self._init_reader()
        self._conn = self._connect()

    # -- connection and schema -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = None
        try:
            if self.path != ":memory:":
                _create_private(Path(self.path))
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            self._conn = conn
            self._retry(self._setup)
        except HistoryError:
            if conn is not None:
                conn.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            msg = (f"cannot open the history file {self.path}: {type(exc).__name__}: {exc}; "
                   "give another path (history=... or FLOWDSL_HISTORY), move the file aside, "
                   "or turn history off (history=False or FLOWDSL_HISTORY=off)")
            raise HistoryError(msg) from exc
        return conn

    def _setup(self) -> None:
        c = self._conn
        configure(c, self.path)
        with self._transaction():
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                msg = (f"history file {self.path} has schema version {version}, newer than "
                       f"this flowdsl's {SCHEMA_VERSION}; upgrade flowdsl or use another file")
                raise HistoryError(msg)
            if version == 0:  # a new file: the current schema, nothing to migrate
                _create(c)
                version = SCHEMA_VERSION
            for v in range(version, SCHEMA_VERSION):
                _MIGRATIONS[v](c)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            self._mark_interrupted()
            # Runs whose statistics a writer did not fold in before its process ended.
            for (run_id,) in c.execute("SELECT run_id FROM runs WHERE aggregated = 0 "
                                       "ORDER BY seq").fetchall():
                aggregate_once(c, run_id)

    def _mark_interrupted(self) -> None:
        """Runs left 'running' by a process that is gone become 'interrupted'."""
        rows = self._conn.execute(
            "SELECT run_id, host, pid, proc_start FROM runs WHERE status = 'running'"
        ).fetchall()
        dead = []
        for run_id, host, pid, started in rows:
            if run_id in _LIVE_RUNS or host != HOST:
                continue  # still running here, or on another machine we cannot check
            if (pid is None or pid == os.getpid() or not pid_alive(pid)
                    or (started is not None and proc_start(pid) not in (started, None))):
                dead.append((run_id,))  # gone, or its pid now names another process
        self._conn.executemany(
            "UPDATE runs SET status = 'interrupted' WHERE run_id = ?", dead)
        self._conn.executemany(
            "UPDATE tasks SET status = 'interrupted' WHERE run_id = ? AND status = 'running'",
            dead)

    def _transaction(self) -> Transaction:
        return Transaction(self._conn)

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
        """Write what is waiting, prune if a prune is due, and close the file; later calls
        do nothing."""
        if self.closed:
            return
        with self._state:
            thread, self._writer = self._writer, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30.0)
        try:
            with self._state:
                settles, self._settles = self._settles, []
            self.flush()
            self._answer(settles)
            if self._ended >= self.prune_every:
                self.prune()
        finally:
            self.closed = True
            self._close_sink()
            with self._db_lock:
                self._conn.close()
            if self._ckpt_conn is not None:
                self._ckpt_conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HistoryStore {self.path} keep_last={self.keep_last}>"

    # -- writing ---------------------------------------------------------------------------

    def observer(self, flow_name: str | None = None, store_outputs: bool | None = None
                 ) -> HistoryObserver:
        """A :class:`~flowdsl._run.result.RunObserver` that records one run in this store.

        Args:
            flow_name: the flow's name, stored with the run (the result's name wins if set).
            store_outputs: override the store's ``store_outputs`` for this run.
        """
        self._check_open()
        keep = self.store_outputs if store_outputs is None else store_outputs
        return HistoryObserver(self, flow_name, keep)

    def flush(self) -> None:
        """Write every waiting row now, in one transaction, and fold the finished runs into
        the statistics. A write that fails is never raised here: it is logged and kept for
        the runs it concerns (see ``_settle``)."""
        self._flush_rows()
        self._aggregate()

    def _flush_rows(self) -> None:
        """Write every waiting row now, in one transaction (what a run's end waits for)."""
        # Taking the connection first keeps batches in order between the writer thread and
        # a caller flushing at the same moment.
        with self._db_lock:
            if self.closed:
                return
            # Taken before the drain: an observer active now queued its run's start row
            # before it became active, so the drain below holds it (running rows need it).
            with self._state:
                observers = [o for o in self._active.values() if o is not None]
            batch = Batch()
            pop, queue = self._queue.popleft, self._queue
            while queue:  # only this thread pops (under the lock); the run appends meanwhile
                batch.extend([pop() for _ in range(len(queue))])
            self._plans.update(batch.plans)
            for run_id, p in batch.plans.items():
                self._names[run_id] = plan_keys(p)[0]
            for obs in observers:
                obs.running_rows(batch.tasks)
            if batch:
                self._write_batch(batch)

    def _write_batch(self, batch: Batch) -> None:
        try:
            try:
                self._retry(lambda: self._write(batch))
            except UnicodeEncodeError:  # a lone surrogate somewhere: escape it, write again
                batch.sanitize()
                self._retry(lambda: self._write(batch))
        except Exception as exc:  # the writer never dies; the runs hear of it
            self._lost(batch, exc)
        for end in batch.ends:
            self._plans.pop(end[-1], None)
            self._names.pop(end[-1], None)
            self._ran.pop(end[-1], None)
            self._sizes.pop(end[-1], None)
            _LIVE_RUNS.discard(end[-1])

    def _write(self, batch: Batch) -> None:
        errors = self._errors
        ends = [(*e[:5], str(errors[e[-1]]) if e[-1] in errors else None, e[-1])
                for e in batch.ends]
        sizes = self._sizes
        tasks, names, attempts, attempt_names = batch.with_qualnames(self._names)
        rows = (batch.start_rows(self._plans), tasks, names, attempts, attempt_names, ends)
        added = {run_id: len(by_task) for run_id, by_task in batch.tasks.items()}
        if self._sent(batch, rows):  # a helper process wrote them: the figures fold later
            inline: list[tuple[str | None, bool] | None] = [None] * len(ends)
        else:
            with self._transaction() as c:
                write_rows(c, rows)
                # A small run is folded into the statistics here, in the transaction its
                # end waits for (a transaction of its own, and the next run's wait for it,
                # would cost more than the folding); a large one just after it returns
                # (_aggregate).
                inline = [aggregate_once(c, e[-1]) if sizes.get(e[-1], 0) + added.get(e[-1], 0)
                          < FOLD_INLINE_MAX else None for e in ends]
        for run_id, n in added.items():
            sizes[run_id] = sizes.get(run_id, 0) + n
        # What each run adds to task_stats (as _TASK_STATS selects it: the last row written
        # of each task, completed with a start and a duration), for the cached figures.
        # A pipeline over items (a row with ``item`` or ``items`` set) adds one figure per
        # item under its stage's id: its flow's cached figures are read again instead.
        ran = self._ran
        for row, name in zip(tasks, names):
            if row[0] in ran and ran[row[0]] is None:
                continue
            if row[11] is not None or row[12] is not None:
                ran[row[0]] = None
                continue
            done = ran.get(row[0])
            if done is None:
                done = ran[row[0]] = {}
            done[row[1]] = ((name, row[6]) if row[3] == "completed" and row[4] is not None
                            and row[6] is not None else None)
        for e, folded in zip(ends, inline):  # _write_batch drops the ended runs' sizes
            had = ran.pop(e[-1], {})
            if folded is not None:
                self._refreshed(folded, had, False)
                continue
            # Folded into SQL just after the run returns (_aggregate); the tasks' own figures
            # in memory take it before (_apply_pending), so that the next run's expected
            # durations need not wait for the fold.
            flow = self._conn.execute("SELECT flow FROM runs WHERE run_id = ?",
                                      (e[-1],)).fetchone()
            self._pending.append(_Unfolded(e[-1], had, None if flow is None else flow[0] or ""))
        self._commits += 1
        self._ended += len(ends)
        if self._ended >= self.prune_every:
            self._wake.set()  # the writer thread prunes, in the background

    def _sent(self, batch: Batch, rows: Rows) -> bool:
        """Whether the helper process wrote ``rows`` (sink.py): a batch of
        :data:`~.sink.SINK_MIN_ROWS` rows or more, to a file. The first such batch starts the
        helper and is written here, as is every batch until the helper is ready, and every
        one after it died or could not start."""
        if batch.rows() < SINK_MIN_ROWS or self.path == ":memory:":
            return False
        sink = self._sink
        if sink is None:
            self._sink = Sink.start(self.path)
            return False
        return sink.ready() and sink.write(rows)

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def _apply_pending(self) -> None:
        """Bring the tasks' own cached figures up to date with the runs written but not
        folded into SQL yet, in memory, as the fold will (HistoryReader._refresh_flow). The
        writer thread does it just after the runs return, before the fold; a run that asks for
        expected durations meanwhile does it itself (``expected``) rather than wait for the
        fold: a 10,000-task run waited 60-110 ms for the previous one's."""
        with self._apply_lock:
            for run in list(self._pending):
                if not run.applied:
                    if run.flow is not None:  # (a pipeline's, had None: its entries go)
                        self._refresh_flow(run.flow, None if run.had is None
                                           else _pairs(run.had), tools=False)
                    run.applied = True

    def expected(self, plan: Any) -> dict[str, float] | None:
        """In a worker thread: :meth:`cached_durations` once the runs written so far count
        in memory (None when the answer needs SQL)."""
        self._apply_pending()
        return self.cached_durations(plan)

    def _aggregate(self) -> None:
        """Fold the runs written since the last call into ``task_stats`` and ``stats``, in
        one transaction, and bring the cached figures up to date. The writer thread does it
        just after it lets the runs return; readers (:meth:`flush`) wait for it, so no figure
        misses a run that returned, and so do the next run's expected durations where the
        tasks' own figures in memory do not answer them (:meth:`_apply_pending`). A run whose
        aggregation fails keeps ``aggregated = 0`` and is folded in when a store next opens
        the file."""
        self._apply_pending()
        with self._db_lock:
            if self.closed or not self._pending:
                return
            pending = list(self._pending)
            run_ids = [run.run_id for run in pending]

            def go() -> list[tuple[str | None, bool]]:
                # In the helper process when there is one: a fold is a few statements over
                # the run's rows, and each one here waited for the GIL of the run going on.
                sink = self._sink
                if sink is not None and sink.ready():
                    done = sink.fold(run_ids)
                    if done is not None:
                        return done
                with self._transaction() as c:
                    return fold_runs(c, run_ids)

            try:
                done = self._retry(go)
            except Exception as exc:  # the rows are written; only the figures wait
                with self._cache_lock:
                    self._flow_cache.clear()
                if logging_enabled():
                    get_logger(path=self.path).warning("history_aggregate_failed",
                                                       error=str(exc))
                done = []
            # Under the lock of _apply_pending: a run it takes meanwhile (the next run's
            # expected()) is taken into memory once, there or here.
            with self._apply_lock:
                for folded, run in zip(done, pending):
                    self._refreshed(folded, run.had, run.applied)
                    run.applied = True
                del self._pending[:len(pending)]  # only _write appends, under _db_lock

    def _refreshed(self, folded: tuple[str | None, bool],
                   had: dict[str, tuple[str, float] | None] | None, applied: bool) -> None:
        """Bring the cached figures of a run's flow up to date once :func:`aggregate_once`
        gave ``folded`` (its flow, None when the run is gone, and whether this store folded
        it): in memory from what it ran, when it was this store's to fold and ``had`` says
        (a pipeline over items says None), else by reading them again. ``applied``: the
        tasks' own figures took the run already (_apply_pending); the tools' follow now."""
        flow, ours = folded
        if flow is None:
            return
        if had is None or not ours:
            self._refresh_flow(flow, None)
        else:
            self._refresh_flow(flow, {} if applied else _pairs(had))

    def _lost(self, batch: Batch, exc: BaseException) -> None:
        """A batch could not be written: every run it concerns gets the error, the log hears
        of it, and the runs that ended in it still get their end row if at all possible."""
        msg = (f"history: {batch.rows()} row(s) could not be written to {self.path} "
               f"({type(exc).__name__}: {exc}); the run itself was not affected")
        for run_id in batch.run_ids():
            self._errors.setdefault(run_id, HistoryError(msg))
        if logging_enabled():
            get_logger(path=self.path).error("history_write_failed", error=msg)
        if batch.ends:
            ends = [(*e[:5], msg, e[-1]) for e in batch.ends]
            try:
                def finish() -> None:
                    with self._transaction() as c:
                        c.executemany(INSERT_RUN, batch.start_rows(self._plans))
                        c.executemany(FINISH_RUN, ends)
                self._retry(finish)
            except Exception:
                pass

    def _run_started(self, run_id: str, observer: Any = None) -> None:
        with self._state:
            self._active[run_id] = observer
            _LIVE_RUNS.add(run_id)
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        # Under self._state.
        if self._writer is None and not self.closed:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name=f"flowdsl-history-{id(self):x}")
            self._writer.start()

    def _settle_later(self, run_id: str, done: Callable[[HistoryError | None], None]) -> None:
        """Have the writer thread write the run's rows (its end row is queued already), then
        call ``done`` with the write failure that concerned the run, if any."""
        with self._state:
            if not self.closed:
                self._settles.append((run_id, done))
                self._ensure_writer()
        if self.closed:  # closed under the run: nobody will write its rows
            msg = f"history: {self.path} was closed before run {run_id} ended; its rows are lost"
            done(HistoryError(msg))
            return
        self._wake.set()

    def _answer(self, settles: list[tuple[str, Callable[[HistoryError | None], None]]]
                ) -> None:
        for run_id, done in settles:
            try:
                done(self._errors.pop(run_id, None))
            except Exception:
                continue

    def _run_ended(self, run_id: str) -> None:
        # No wake-up here: the run's end asks for its rows next (_settle_later), and one
        # wake-up per run end keeps the writer from taking the GIL while the loop still works.
        with self._state:
            self._active.pop(run_id, None)

    def _settle(self, run_id: str) -> HistoryError | None:
        """In a worker thread at a run's end: write its rows and return the write failure
        that concerned it, if any."""
        self._flush_rows()
        self._wake.set()  # the writer folds the run into the statistics, after it returns
        if self._ended >= 2 * self.prune_every:
            # The writer thread prunes in the background; when runs end faster than it
            # keeps up, the run's end helps, so the file stays bounded.
            try:
                self.prune()
            except Exception as exc:  # the next run's end tries again
                if logging_enabled():
                    get_logger(path=self.path).warning("history_prune_failed", error=str(exc))
        return self._errors.pop(run_id, None)

    def _write_loop(self) -> None:
        me = threading.current_thread()
        idle_since = time.monotonic()
        beat = 0.0  # when the last heartbeat was written (monotonic)
        wait = min(self.flush_interval, HEARTBEAT_EVERY)
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            # Settle requests are taken before the flush: their end rows were queued before
            # them, so this flush writes them.
            with self._state:
                settles, self._settles = self._settles, []
            self._flush_rows()
            self._answer(settles)  # the runs return; their statistics follow
            self._aggregate()
            try:
                if self._ended >= self.prune_every:
                    self.prune()
                if self._commits and time.monotonic() - self._checkpointed > 1.0:
                    self._checkpoint()
                if time.monotonic() - beat >= HEARTBEAT_EVERY:
                    beat = time.monotonic()
                    self._heartbeat()
            except Exception as exc:  # a later round tries again
                if logging_enabled():
                    get_logger(path=self.path).warning("history_maintenance_failed",
                                                       error=str(exc))
            with self._state:
                if self._writer is not me:
                    return
                if self._active or self._queue or self._settles:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 0.5:
                    # Idle with no run in progress: end, so that no thread outlives the
                    # runs (a new run starts a writer again).
                    self._writer = None
                    return

    def _heartbeat(self) -> None:
        """Stamp this process's runs in progress with the time, and write the log lines
        their running tasks kept so far, here in the writer thread (never the event loop):
        readers tell from the stamp that the writer is still there, and show the lines as
        each task's live tail."""
        with self._state:
            active = list(self._active.items())
        if not active or self.path == ":memory:" or self.closed:
            return
        now = time.time()
        tails = [(obs, *obs.tails()) for _, obs in active if obs is not None]
        try:
            with self._db_lock, self._transaction() as c:
                c.executemany(HEARTBEAT, [(now, run_id) for run_id, _ in active])
                for _, rows, _ in tails:
                    c.executemany(TAIL, rows)
        except sqlite3.Error:
            return  # busy past the timeout, or a line SQLite refuses: the next round tries
        for obs, _, counts in tails:
            obs.tailed(counts)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers or writers),
        on a connection of its own, so runs writing meanwhile do not wait for its fsync."""
        self._commits = 0
        self._checkpointed = time.monotonic()
        if self.path == ":memory:" or self.closed:
            return
        if self._ckpt_conn is None:
            self._ckpt_conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None,
                                              check_same_thread=False)
            self._ckpt_conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError:
            pass  # busy: the next round copies it

    def prune(self) -> None:
        """Keep the newest ``keep_last`` finished runs now (runs in progress are kept)."""
        self._check_open()
        self.flush()
        self._ended = 0
        row = self._retry(lambda: self._conn.execute(
            "SELECT seq FROM runs WHERE status != 'running' ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (self.keep_last,)).fetchone())
        if row is None:
            return

        def chunk() -> int:
            with self._transaction() as c:
                return c.execute(
                    "DELETE FROM runs WHERE seq IN (SELECT seq FROM runs WHERE status != "
                    "'running' AND seq <= ? ORDER BY seq LIMIT 8)", row).rowcount

        # A few runs per transaction: a run writing meanwhile waits for one chunk at most.
        while self._retry(chunk):
            pass

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        self._check_open()
        self.flush()

        def go() -> list[Any]:
            cur = self._conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return self._retry(go)

    def _rows(self, sql: str, params: tuple[Any, ...], *, flush: bool = True
              ) -> list[tuple[Any, ...]]:
        """Plain tuples (cheaper than :meth:`_query`'s dicts for many rows)."""
        self._check_open()
        if flush:
            self.flush()
        return self._retry(lambda: self._conn.execute(sql, params).fetchall())

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``"ok"`` when the file is sound)."""
        return str(self._query("PRAGMA integrity_check")[0]["integrity_check"])


