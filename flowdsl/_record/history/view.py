"""Record: a history file opened to read only, as the run browser reads it.

:class:`HistoryView` never writes, migrates or changes the mode of the file: SQLite opens it
with the URI ``mode=ro`` and ``PRAGMA query_only``. (In WAL mode SQLite itself may create the
empty ``-wal`` and ``-shm`` files beside it when the folder allows: they are the log's shared
index, not history data, and a writer uses them as they are.)

Where even those cannot be created (a read-only mount with no ``-shm`` file), SQLite cannot
open a WAL file read-only; the view then reads a consistent snapshot instead: the database
file and its ``-wal`` are copied, unchanged while copied, into a private temporary folder,
opened there (SQLite applies the log to the copy) and copied with SQLite's backup API into
memory; the temporary copy is removed at once. The snapshot is taken again when the files
change. It never opens the file with ``immutable=1``, which would hide the rows still in the
log.

Runs still marked ``running`` whose writer is gone read as ``interrupted`` (computed when
read, see :mod:`.liveness`); nothing is written back.

A read waits at most ``busy_timeout`` seconds (1 s) for a lock another process holds, then
raises :class:`_HistoryBusy`, which says so (the run browser answers 503).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..._base.errors import HistoryError
from .liveness import writer_gone
from .read import HistoryReader, _json_list
from .write import HOST

__all__ = ["OLDEST_READ", "HistoryView"]

_T = TypeVar("_T")
#: The oldest history schema the view reads (edges and log lines came with schema 3).
OLDEST_READ = 3
_LIVE = ("running", "interrupted")


class _HistoryBusy(HistoryError):
    """Raised when another process held a lock on the history file for longer than the
    view waits (``busy_timeout``). Private: the run browser answers it with a 503 page
    that says so; no public call raises it."""


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _cannot_open(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "unable to open" in text or "readonly" in text or "read-only" in text


class HistoryView(HistoryReader):
    """A history file, read-only: the query methods of :class:`HistoryStore` (``runs``,
    ``get_run``, ``flows``, ``tool_stats``...) and :meth:`read`, which runs several of them
    in one consistent read transaction.

    Args:
        path: the history file.
        busy_timeout: the most seconds a read waits for a lock held by another process.

    Raises:
        HistoryError: (when first read) the path is no history file, its schema is older or
            newer than this flowdsl reads, or it cannot be read at all.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.scope = "flow"
        self.busy_timeout = busy_timeout
        self.closed = False
        #: Why the view reads a snapshot copy instead of the file (``None``: the file itself).
        self.snapshot: str | None = None
        self._snap_key: tuple[Any, ...] | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._liveness = False  # the runs table has the writer liveness columns
        self._init_reader()

    # -- opening ---------------------------------------------------------------------------

    def _files(self) -> tuple[Any, ...]:
        """What identifies the file's content now: size and change time of it and its log."""
        out: list[tuple[int, int, int] | None] = []
        for p in (self.path, self.path + "-wal"):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                out.append(None)
            else:
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def _open(self) -> sqlite3.Connection:
        if self.closed:
            msg = f"the history view of {self.path} is closed"
            raise HistoryError(msg)
        if self._conn is not None:
            if self.snapshot is not None and self._files() != self._snap_key:
                self._conn.close()  # the file changed: take a fresh snapshot
                self._conn = self._take_snapshot(self.snapshot)
            return self._conn
        if not os.path.isfile(self.path):
            msg = (f"no history file at {self.path}: run a flow with history on first, or pass "
                   "--history PATH")
            raise HistoryError(msg)
        try:
            conn = self._open_in_place()
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                raise self._busy() from None
            if not _cannot_open(exc):
                raise self._unreadable(exc) from None
            why = (f"SQLite cannot open {self.path} read-only in place ({exc}): its folder "
                   "is read-only and the log's shared-memory file (-shm) is missing")
            conn = self._take_snapshot(why)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        self._conn = conn
        return conn

    def _open_in_place(self) -> sqlite3.Connection:
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            self._check_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_snapshot(self, why: str) -> sqlite3.Connection:
        """A consistent in-memory copy of the file and its log (see the module's text)."""
        for _ in range(5):
            before = self._files()
            with tempfile.TemporaryDirectory(prefix="flowdsl-view-") as tmp:
                copy = os.path.join(tmp, "history.db")
                try:
                    shutil.copyfile(self.path, copy)
                    if before[1] is not None:
                        shutil.copyfile(self.path + "-wal", copy + "-wal")
                except FileNotFoundError:
                    continue  # the log was checkpointed away meanwhile: copy again
                except OSError as exc:
                    msg = (f"cannot read {self.path}: {why}, and copying it for a snapshot "
                           f"failed too ({exc})")
                    raise HistoryError(msg) from None
                if self._files() != before:
                    continue  # written while copied: the copy may be torn
                mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                try:
                    src = sqlite3.connect(copy, timeout=self.busy_timeout)
                    try:
                        src.backup(mem)
                    finally:
                        src.close()
                    self._check_schema(mem)
                except sqlite3.DatabaseError as exc:
                    mem.close()
                    raise self._unreadable(exc) from None
                except BaseException:
                    mem.close()
                    raise
            self.snapshot, self._snap_key = why, before
            return mem
        msg = (f"cannot read {self.path}: {why}, and it kept changing while a snapshot copy "
               "was taken (5 tries); try again in a moment")
        raise _HistoryBusy(msg)

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        from . import SCHEMA_VERSION

        version = conn.execute("PRAGMA user_version").fetchone()[0]
        cols = {r[1] for r in conn.execute("PRAGMA table_info(runs)").fetchall()}
        if not cols:
            msg = f"{self.path} is no flowdsl history file (it has no runs table)"
            raise HistoryError(msg)
        if version < OLDEST_READ:
            msg = (f"history file {self.path} has schema version {version}, older than the "
                   f"run browser reads ({OLDEST_READ} and later), and the browser never "
                   "changes a file: run any flow with this history once (which upgrades it), "
                   "then browse again")
            raise HistoryError(msg)
        if version > SCHEMA_VERSION:
            msg = (f"history file {self.path} has schema version {version}, newer than this "
                   f"flowdsl's {SCHEMA_VERSION}; upgrade flowdsl to browse it")
            raise HistoryError(msg)
        self._liveness = "heartbeat" in cols

    def _busy(self) -> _HistoryBusy:
        msg = (f"the history file {self.path} is locked by another process: no answer within "
               f"{self.busy_timeout:g} s (the page tries again)")
        return _HistoryBusy(msg)

    def _unreadable(self, exc: BaseException) -> HistoryError:
        return HistoryError(f"cannot read the history file {self.path}: {exc}")

    def close(self) -> None:
        """Close the file (or drop the snapshot); later calls do nothing."""
        with self._lock:
            self.closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> HistoryView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HistoryView {self.path} (read-only)>"

    # -- reading ---------------------------------------------------------------------------

    def read(self, fn: Callable[[HistoryView], _T]) -> _T:
        """``fn(self)`` inside one read transaction: every query it makes sees the same
        state of the file. Waits at most ``busy_timeout`` seconds in all for locks.

        Raises:
            _HistoryBusy: another process held the file past ``busy_timeout``.
            HistoryError: the file cannot be read.
        """
        deadline = time.monotonic() + self.busy_timeout
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise self._busy()
        try:
            conn = self._open()
            left = max(deadline - time.monotonic(), 0.0)
            conn.execute(f"PRAGMA busy_timeout = {int(left * 1000):d}")
            try:
                conn.execute("BEGIN")
                try:
                    return fn(self)
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if _locked(exc):
                    raise self._busy() from None
                raise self._unreadable(exc) from None
        finally:
            self._lock.release()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._open().execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def _rows(self, sql: str, params: tuple[Any, ...], *, flush: bool = True
              ) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._open().execute(sql, params).fetchall()

    # -- runs, with the writer's liveness ------------------------------------------------------

    def _live_cols(self) -> str:
        return ", host, pid" + (", proc_start, heartbeat" if self._liveness else "")

    def _judge(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        """A run row with its liveness columns folded into its status: a ``running`` run
        whose writer is gone reads ``interrupted``, with the reason in ``interrupted_why``."""
        host, pid = row.pop("host", None), row.pop("pid", None)
        started, beat = row.pop("proc_start", None), row.pop("heartbeat", None)
        if row.get("status") == "running":
            why = writer_gone(host, pid, started, beat, here=HOST, now=now)
            if why is not None:
                row["status"] = "interrupted"
                row["interrupted_why"] = why
        return row

    def runs(self, limit: int = 20, *, flow: str | None = None, status: str | None = None,
             offset: int = 0) -> list[dict[str, Any]]:
        """The newest runs first (as :meth:`HistoryStore.runs`), ``offset`` runs skipped; a
        run whose writer is gone reads ``interrupted`` (and filters as such)."""
        self._open()
        where, params = [], []
        if flow is not None:
            where.append("flow = ?")
            params.append(flow)
        judged = status in _LIVE  # the stored status may not be the one shown
        if judged:
            where.append("status IN ('running', 'interrupted')")
        elif status is not None:
            where.append("status = ?")
            params.append(status)
        sql = ("SELECT run_id, flow, mode, status, started_at, ended_at, duration, error_type, "
               f"error_message, history_error{self._live_cols()} FROM runs"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC")
        now = time.time()
        if not judged:
            rows = self._query(sql + " LIMIT ? OFFSET ?", (*params, limit, offset))
            return [self._judge(r, now) for r in rows]
        rows = [self._judge(r, now) for r in self._query(sql, params)]
        return [r for r in rows if r["status"] == status][offset:offset + limit]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run (as :meth:`HistoryStore.get_run`, with ``nodes``: its plan's task ids in
        order, ``None`` when not recorded); when its writer is gone it reads ``interrupted``,
        and so do its tasks still marked ``running``."""
        self._open()
        run = super().get_run(run_id)
        nodes = ", nodes" if self._liveness else ""
        live = self._query(f"SELECT status{nodes}{self._live_cols()} FROM runs WHERE "
                           "run_id = ?", (run_id,))
        run["nodes"] = None
        if live:
            run["nodes"] = _json_list(live[0].pop("nodes", None))
            judged = self._judge(live[0], time.time())
            if judged.get("interrupted_why") and run["status"] == "running":
                run["status"] = "interrupted"
                run["interrupted_why"] = judged["interrupted_why"]
                for t in run["tasks"]:
                    if t["status"] == "running":
                        t["status"] = "interrupted"
        return run

    def statuses(self) -> list[str]:
        """The run statuses found in the file."""
        return [s for (s,) in self._rows("SELECT DISTINCT status FROM runs", ())]
