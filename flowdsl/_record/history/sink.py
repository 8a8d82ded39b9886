"""Record: the statements that write a batch of history rows, and a helper process that runs
them for large runs, off this process's GIL.

Why a process: the ``sqlite3`` module holds the GIL while it binds each statement's
parameters and takes it back after every step. Written by a thread of the run's process, a
10,000-task run's rows cost the event loop about as much as its tasks (``async`` no-op tools:
32-35 us per task with history against 11-13 without; the same run whose writer discards
its rows instead: 14-15). The helper takes a batch as one ``marshal`` blob through a pipe
and writes it on its own connection, in its own process; the writer thread only encodes the
blob and waits on the pipe (the GIL free meanwhile).

When: the writer thread starts the helper the first time a batch of at least
:data:`SINK_MIN_ROWS` rows is to be written to a file, writes in this process until the
helper says it is ready (it boots in 35-40 ms: this module imports the standard library
only, and runs by its path), and then sends it every batch that large. Smaller batches (the
small runs, whose end waits for a write that folds their statistics in the same transaction)
stay in this process. The helper ends with the store, or when this process ends (its end of
the pipe closes): a store that wrote a large batch keeps it between runs (starting one took
the first 35-40 ms of writes of each large run back to this process). It runs in a session of
its own, so the Ctrl-C a terminal sends to the run's process group does not reach it. A
process forked from this one (``multiprocessing``) writes in its own process: the pipe is
its parent's.

What cannot go wrong: a helper that cannot start, is not ready, dies or answers nothing
makes the batch be written in this process, as before (every statement here is idempotent:
rows are upserts, the run row is ``INSERT OR IGNORE``, its end an ``UPDATE``). A batch the
helper cannot write (a lone surrogate, a locked file) raises the helper's error here, as the
same write in this process would. Rows whose values ``marshal`` cannot encode are written in
this process.

This module imports nothing from flowdsl: the helper runs it as a script
(``python -I sink.py PATH``).
"""

from __future__ import annotations

import marshal
import os
import pickle
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
from array import array
from typing import Any

__all__ = ["CLAIM", "FINISH_RUN", "INSERT_RUN", "ROWS_PER_STATEMENT", "SINK_MIN_ROWS", "WINDOW",
           "Sink", "Transaction", "aggregate_once", "aggregate_run", "configure", "fold_runs",
           "insert_rows", "unpack", "write_rows"]

#: A batch of this many rows or more is written by the helper process (see above).
SINK_MIN_ROWS = 1024

_TASK_HEAD = (
    "INSERT INTO tasks (run_id, task_id, tool, status, started_at, ended_at, duration, "
    "attempts, error_type, error_message, reason, item, items, logs, output, qualname) "
    "VALUES ")
_TASK_TAIL = (
    " ON CONFLICT (run_id, task_id) DO UPDATE SET tool=excluded.tool, status=excluded.status, "
    "started_at=excluded.started_at, ended_at=excluded.ended_at, duration=excluded.duration, "
    "attempts=excluded.attempts, error_type=excluded.error_type, "
    "error_message=excluded.error_message, reason=excluded.reason, item=excluded.item, "
    "items=excluded.items, logs=coalesce(excluded.logs, tasks.logs), "
    "output=coalesce(excluded.output, tasks.output), qualname=excluded.qualname")
_ATTEMPT_HEAD = (
    "INSERT OR REPLACE INTO attempts (run_id, task_id, number, tool, started_at, ended_at, "
    "duration, status, error_type, error_message, qualname) VALUES ")
# OR IGNORE, never OR REPLACE: replacing a run row would delete its tasks (ON DELETE CASCADE).
INSERT_RUN = (
    "INSERT OR IGNORE INTO runs (run_id, flow, mode, status, started_at, host, pid, edges, "
    "nodes, proc_start, heartbeat) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
# ``aggregated = 0``: the run's statistics are still to be folded in (aggregate_once).
FINISH_RUN = (
    "UPDATE runs SET status=?, ended_at=?, duration=?, error_type=?, error_message=?, "
    "history_error=?, aggregated=0 WHERE run_id=?")

#: Rows per multi-row statement (16 columns: 4,096 parameters, under SQLite's 32,766).
ROWS_PER_STATEMENT = 256
_multi: dict[tuple[str, int], str] = {}


def _multi_sql(head: str, tail: str, width: int, rows: int) -> str:
    key = (head, rows)
    sql = _multi.get(key)
    if sql is None:
        one = f"({','.join('?' * width)})"
        sql = _multi[key] = f"{head}{','.join([one] * rows)}{tail}"
    return sql


def insert_rows(c: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]],
                names: list[str]) -> None:
    """Write ``rows`` (``"tasks"`` or ``"attempts"``), each with its qualified tool name
    from ``names``, with a few multi-row statements: one per :data:`ROWS_PER_STATEMENT`
    rows, then one per power of two left. The ``sqlite3`` module releases the GIL around
    every statement step, and a one-row statement is a step per row: written during a run,
    each of those steps handed the GIL to the event loop and waited to get it back (a row of
    10,000 tasks cost the loop as much as the task itself). Each statement's parameters are
    one flat list (a row copied with its name appended was an object per row for the cyclic
    collector). Rows are written in order, so a later row of a key wins, as one at a time."""
    if not rows:
        return
    head, tail, width = ((_TASK_HEAD, _TASK_TAIL, 16) if table == "tasks"
                         else (_ATTEMPT_HEAD, "", 11))

    def flat(lo: int, hi: int) -> list[Any]:
        out: list[Any] = []
        put, add = out.extend, out.append
        for row, name in zip(rows[lo:hi], names[lo:hi]):
            put(row)
            add(name)
        return out

    k = ROWS_PER_STATEMENT
    full = len(rows) - len(rows) % k
    if full:
        c.executemany(_multi_sql(head, tail, width, k),
                      [flat(i, i + k) for i in range(0, full, k)])
    i = full
    while i < len(rows):
        n = 1 << ((len(rows) - i).bit_length() - 1)  # the largest power of two left
        c.execute(_multi_sql(head, tail, width, n), flat(i, i + n))
        i += n


#: What one batch writes: the run rows that start, the task rows and their qualified names,
#: the attempt rows and theirs, and the run ends (``FINISH_RUN`` parameters).
Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str], list[tuple[Any, ...]],
             list[str], list[tuple[Any, ...]]]


def write_rows(c: sqlite3.Connection, rows: Rows) -> None:
    """Write one batch, in the caller's transaction, on either side of the pipe."""
    starts, tasks, names, attempts, attempt_names, ends = rows
    c.executemany(INSERT_RUN, starts)
    insert_rows(c, "tasks", tasks, names)
    insert_rows(c, "attempts", attempts, attempt_names)
    c.executemany(FINISH_RUN, ends)


class Transaction:
    """``with Transaction(c):`` one write transaction (the store's and the helper's)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so two
        # writers never deadlock upgrading read locks.
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def configure(c: sqlite3.Connection, path: str) -> None:
    """A writing connection's settings (the store's and the helper's)."""
    c.execute("PRAGMA busy_timeout = 30000")
    c.execute("PRAGMA foreign_keys = ON")
    if path != ":memory:":
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = NORMAL")  # durable across a process crash in WAL
        # No checkpoint inside a commit (a run's end would pay for copying the WAL): the
        # writer thread checkpoints in the background (HistoryStore._write_loop).
        c.execute("PRAGMA wal_autocheckpoint = 0")


# -- the statistics ----------------------------------------------------------------------------

#: Durations kept per statistics row: quantiles are over a tool's latest calls.
WINDOW = 64

#: Claims a finished run's aggregation: one writer, once (transactions are exclusive).
CLAIM = "UPDATE runs SET aggregated = NULL WHERE run_id = ? AND aggregated = 0"


def unpack(blob: bytes | None) -> array[float]:
    """The durations kept in a statistics row (little-endian float64s)."""
    out = array("d")
    if blob:
        out.frombytes(blob)
        if sys.byteorder == "big":
            out.byteswap()
    return out


def _pack(values: array[float]) -> bytes:
    if sys.byteorder == "big":
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def _window(old: bytes | None, new: list[float]) -> bytes | None:
    if not new:
        return old
    values = unpack(old)
    values.extend(new)
    if len(values) > WINDOW:
        del values[:len(values) - WINDOW]
    return _pack(values)


_KEY = "coalesce(t.qualname, t.tool, '?')"
# A pipeline stage's summary row (``items`` set) is no call: its item rows count instead.
_RAN = ("t.run_id = ? AND t.started_at IS NOT NULL AND t.items IS NULL AND t.status NOT IN "
        "('running', 'interrupted', 'pending')")
# Per task: count, sum and the latest five durations, shifted in SQL (the right-hand sides
# of an UPDATE see the old row), so a run of 10,000 tasks costs one statement, no Python.
# A pipeline stage's item rows (``stage@i``) count under the stage: its per-item time.
_TASK_STATS = (
    "INSERT INTO task_stats (flow, tool, task_id, n, total, d1) "
    f"SELECT ?, {_KEY}, CASE WHEN t.item IS NULL THEN t.task_id ELSE substr(t.task_id, 1, "
    "length(t.task_id) - length(t.item) - 1) END, 1, t.duration, t.duration FROM tasks t "
    f"WHERE {_RAN} AND t.status = 'completed' AND t.duration IS NOT NULL "
    "ON CONFLICT (flow, tool, task_id) DO UPDATE SET n = n + 1, total = total + "
    "excluded.total, d5 = d4, d4 = d3, d3 = d2, d2 = d1, d1 = excluded.d1")
# Per tool: counts and sums by GROUP BY; the latest WINDOW durations by row_number().
_TOOL_TASKS = (
    f"SELECT {_KEY} AS q, max(t.tool), count(*), sum(t.status = 'completed'), "
    "sum(t.status IN ('failed', 'timed_out')), count(CASE WHEN t.status = 'completed' THEN "
    "t.duration END), total(CASE WHEN t.status = 'completed' THEN t.duration END) "
    f"FROM tasks t WHERE {_RAN} GROUP BY q")
# A run's calls: its attempt rows, and the attempt a completed single-attempt task implies
# when it has no row (the writer leaves out the row that would repeat the task's own).
_CALLS = (
    "(SELECT coalesce(a.qualname, a.tool, '?') AS q, a.status AS status, a.duration AS "
    "duration, a.ended_at AS ended_at FROM attempts a WHERE a.run_id = ?1 UNION ALL "
    f"SELECT {_KEY}, 'completed', t.duration, t.ended_at FROM tasks t WHERE t.run_id = ?1 AND "
    "t.attempts = 1 AND t.status = 'completed' AND t.items IS NULL AND NOT EXISTS (SELECT 1 "
    "FROM attempts a WHERE a.run_id = t.run_id AND a.task_id = t.task_id))")
_TOOL_CALLS = (
    "SELECT q, count(*), sum(status = 'timed_out'), "
    "max(CASE WHEN status = 'completed' THEN duration END), count(CASE WHEN status = "
    "'completed' THEN duration END), total(CASE WHEN status = 'completed' THEN "
    f"duration END) FROM {_CALLS} GROUP BY q")
# The latest WINDOW durations of each tool in the run, oldest first. Per tool, a bounded sort
# of the run's rows (2-3 ms for 10,000 rows); with many tools, one window function over the
# run's rows (about 20 ms, whatever the number of tools: a statement per tool scanned them
# all once per tool, and a flow of 10,000 tools took its fold 55 s).
# (An SQLite older than 3.25, which Python 3.10 may be built with, has no window functions:
# a statement per tool there.)
_PER_TOOL_MAX = 8 if sqlite3.sqlite_version_info >= (3, 25) else 1 << 62
_TASK_DURS = (f"FROM tasks t WHERE {_RAN} AND t.status = 'completed' AND t.duration IS NOT "
              "NULL")
_CALL_DURS = f"FROM {_CALLS} WHERE status = 'completed' AND duration IS NOT NULL"
#: (per tool, every tool) for the tasks' durations, then for the calls'.
_TOOL_DURS = (
    (f"SELECT {_KEY}, t.duration {_TASK_DURS} AND {_KEY} = ?2 ORDER BY t.ended_at DESC "
     f"LIMIT {WINDOW}",
     f"SELECT q, d FROM (SELECT {_KEY} AS q, t.duration AS d, row_number() OVER (PARTITION "
     f"BY {_KEY} ORDER BY t.ended_at DESC) AS k {_TASK_DURS}) WHERE k <= {WINDOW} ORDER BY "
     "q, k DESC"),
    (f"SELECT q, duration {_CALL_DURS} AND q = ?2 ORDER BY ended_at DESC LIMIT {WINDOW}",
     "SELECT q, duration FROM (SELECT q, duration, row_number() OVER (PARTITION BY q ORDER "
     f"BY ended_at DESC) AS k {_CALL_DURS}) WHERE k <= {WINDOW} ORDER BY q, k DESC"))
_STATS_COLS = ("flow, tool, name, tasks, completed, failed, attempts, timeouts, task_n, "
               "task_sum, task_recent, call_n, call_sum, call_max, call_recent")
_UPSERT_STATS = f"INSERT OR REPLACE INTO stats ({_STATS_COLS}) VALUES ({','.join('?' * 15)})"


def aggregate_run(c: sqlite3.Connection, run_id: str) -> str:
    """Fold one finished run's tasks and calls into ``task_stats`` and ``stats`` (inside the
    caller's transaction); returns the run's flow (``""`` for none). Costs the run's rows,
    in SQLite, and a lookup per tool of the run."""
    row = c.execute("SELECT flow FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return ""
    flow = row[0] or ""
    c.execute(_TASK_STATS, (flow, run_id))
    tools: dict[str, list[Any]] = {}
    for q, name, n, done, failed, tn, tsum in c.execute(_TOOL_TASKS, (run_id,)):
        # name, tasks, completed, failed, attempts, timeouts, call_max,
        # task (n, sum, durations), call (n, sum, durations)
        tools[q] = [name, n, done or 0, failed or 0, 0, 0, None, tn, tsum, [], 0, 0.0, []]
    if not tools:
        return flow
    for q, n, timeouts, cmax, cn, csum in c.execute(_TOOL_CALLS, (run_id,)):
        if q in tools:
            tools[q][4:7] = [n, timeouts or 0, cmax]
            tools[q][10:12] = [cn, csum]
    for at, (per_tool, windowed) in zip((9, 12), _TOOL_DURS):
        if len(tools) <= _PER_TOOL_MAX:
            for q, a in tools.items():
                a[at] = [d for _, d in c.execute(per_tool, (run_id, q))][::-1]
            continue
        for q, d in c.execute(windowed, (run_id,)):
            if q in tools:
                tools[q][at].append(d)
    out = []
    for q, a in tools.items():
        o = c.execute("SELECT tasks, completed, failed, attempts, timeouts, task_n, task_sum, "
                      "task_recent, call_n, call_sum, call_max, call_recent FROM stats WHERE "
                      "flow = ? AND tool = ?", (flow, q)).fetchone()
        o = o or (0, 0, 0, 0, 0, 0, 0.0, None, 0, 0.0, None, None)
        cmax = a[6] if o[10] is None or (a[6] is not None and a[6] > o[10]) else o[10]
        out.append((flow, q, a[0], o[0] + a[1], o[1] + a[2], o[2] + a[3], o[3] + a[4],
                    o[4] + a[5], o[5] + a[7], o[6] + a[8], _window(o[7], a[9]), o[8] + a[10],
                    o[9] + a[11], cmax, _window(o[11], a[12])))
    c.executemany(_UPSERT_STATS, out)
    return flow


def aggregate_once(c: sqlite3.Connection, run_id: str) -> tuple[str | None, bool]:
    """Fold a finished run into the statistics unless some writer did already (this store's
    writer after the run, or any store opening the file after a crash): its flow (None when
    the run is gone) and whether this call folded it."""
    if c.execute(CLAIM, (run_id,)).rowcount == 1:
        return aggregate_run(c, run_id), True
    row = c.execute("SELECT flow FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return (None if row is None else row[0] or ""), False


def fold_runs(c: sqlite3.Connection, run_ids: list[str]) -> list[tuple[str | None, bool]]:
    """:func:`aggregate_once` of each run, in the caller's transaction."""
    return [aggregate_once(c, run_id) for run_id in run_ids]


# -- the pipe ----------------------------------------------------------------------------------

_HEAD = struct.Struct("<Q")
_READY = b"R"


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            raise EOFError("the history helper's pipe closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _answer(error: BaseException | None, value: Any) -> bytes:
    try:
        return pickle.dumps((error, value))
    except Exception:  # an error that does not pickle: its text, as sqlite3 gives it
        return pickle.dumps((sqlite3.DatabaseError(f"{type(error).__name__}: {error}"), None))


def _serve(path: str) -> None:
    """The helper: do each request it is sent (``("w", rows)``: :func:`write_rows`;
    ``("f", run ids)``: :func:`fold_runs`) in one transaction, answer with
    ``(error, result)``, and end when the writer's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's process decides
    c = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    configure(c, path)
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    _write_all(fd_out, _READY)
    while True:
        try:
            (n,) = _HEAD.unpack(_read_exact(fd_in, _HEAD.size))
            op, payload = marshal.loads(_read_exact(fd_in, n))
        except EOFError:
            return
        error: BaseException | None = None
        value: Any = None
        try:
            with Transaction(c):
                if op == "w":
                    write_rows(c, payload)
                else:
                    value = fold_runs(c, payload)
        except Exception as exc:
            error, value = exc, None
        reply = _answer(error, value)
        _write_all(fd_out, _HEAD.pack(len(reply)) + reply)


class Sink:
    """The writer thread's handle on a helper process (see the module's docstring)."""

    __slots__ = ("_lock", "_owner", "_proc", "_ready", "dead")

    def __init__(self, proc: subprocess.Popen[bytes] | None) -> None:
        self._proc = proc
        self._owner = os.getpid()
        self._ready = False
        self._lock = threading.Lock()  # one batch on the pipe at a time
        #: True once the helper cannot be used (never started, gone, or closed).
        self.dead = proc is None

    @classmethod
    def start(cls, path: str) -> Sink:
        """Start a helper writing to ``path``; one that cannot start is dead from the start
        (its batches are written in this process)."""
        exe = sys.executable or ""
        name = os.path.basename(exe).lower()
        # A frozen or embedded interpreter may not run a script (sys.executable is the
        # application); select() on pipes is POSIX only.
        if (getattr(sys, "frozen", False) or not name.startswith(("python", "pypy"))
                or os.name != "posix"):
            return cls(None)
        try:
            proc = subprocess.Popen(
                [exe, "-I", os.path.abspath(__file__), path], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                start_new_session=True, close_fds=True)
        except (OSError, ValueError):
            return cls(None)
        return cls(proc)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def ready(self) -> bool:
        """Whether the helper said it is ready (never waits)."""
        if self.dead or os.getpid() != self._owner:
            return False
        if self._ready:
            return True
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        if select.select([fd], [], [], 0)[0]:
            if os.read(fd, 1) == _READY:
                self._ready = True
            else:  # it ended before it was ready (no sqlite3, a file it cannot open)
                self.close()
        return self._ready

    def write(self, rows: Rows) -> bool:
        """Have the helper write ``rows`` in one transaction: True once written; False
        when it could not (write them here); the helper's error raised when it failed."""
        return self._call("w", rows)[0]

    def fold(self, run_ids: list[str]) -> list[tuple[str | None, bool]] | None:
        """:func:`fold_runs` in one transaction of the helper's: what it gave, or None when
        the helper could not (fold them here); its error raised."""
        done, value = self._call("f", run_ids)
        return value if done else None

    def _call(self, op: str, payload: Any) -> tuple[bool, Any]:
        try:
            blob = marshal.dumps((op, payload))
        except ValueError:  # a value marshal cannot encode: this process writes it
            return False, None
        proc = self._proc
        with self._lock:
            if (self.dead or proc is None or proc.stdin is None or proc.stdout is None
                    or os.getpid() != self._owner):
                return False, None
            try:
                _write_all(proc.stdin.fileno(), _HEAD.pack(len(blob)) + blob)
                out = proc.stdout.fileno()
                (n,) = _HEAD.unpack(_read_exact(out, _HEAD.size))
                error, value = pickle.loads(_read_exact(out, n))
            except (OSError, EOFError):  # it died: this request and the next are done here
                self._end()
                return False, None
        if error is not None:
            raise error
        return True, value

    def close(self) -> None:
        """End the helper: it writes nothing more (a batch on the pipe is finished first)."""
        with self._lock:
            self._end()

    def _end(self) -> None:
        self.dead = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    _serve(sys.argv[1])
