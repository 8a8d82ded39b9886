"""The result cache's entries, in their own table of the history SQLite file.

:class:`SQLiteCache` is the run layer's :class:`~flowdsl._run.caching.CacheBackend`: the run
loads entries once before its first task and writes the new ones once at its end, both in a
worker thread. Every call opens its own short-lived connection, so threads and processes
never share one; writes take the write lock up front (``BEGIN IMMEDIATE``, waiting up to 30 s)
and replace an entry of the same key, so two processes filling one key both finish and the
file stays sound. This module owns the table; the history store's own tables are untouched.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._run.caching import Entry
from .history import HistoryStore, _create_private, default_path

__all__ = ["SQLiteCache", "open_cache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    qualname TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    serializer TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS result_cache_tool ON result_cache (tool);
"""
_OFF = ("off", "0", "false", "no", "none")


class SQLiteCache:
    """Result cache entries in the SQLite file at ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._memory: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # serializes use of the one in-memory connection
        if self.path == ":memory:":  # one connection, or the entries would vanish
            self._memory = sqlite3.connect(":memory:", check_same_thread=False,
                                           isolation_level=None)
            self._memory.executescript(_SCHEMA)
        else:
            _create_private(Path(self.path))

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        c.execute("PRAGMA busy_timeout = 30000")
        c.executescript(_SCHEMA)
        return c

    def _run(self, fn: Any) -> Any:
        if self._memory is not None:
            with self._lock:
                return fn(self._memory)
        c = self._connect()
        try:
            return fn(c)
        finally:
            c.close()

    def load(self, tools: Sequence[str], now: float) -> dict[str, Any]:
        """The decoded values of the live entries of ``tools``, by key."""
        def read(c: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
            rows: list[tuple[str, str, bytes]] = []
            for i in range(0, len(tools), 500):  # SQLite bounds the parameters per query
                part = list(tools[i:i + 500])
                rows += c.execute(
                    "SELECT key, serializer, value FROM result_cache WHERE tool IN "
                    f"({','.join('?' * len(part))}) AND (expires_at IS NULL OR expires_at > ?)",
                    (*part, now)).fetchall()
            return rows

        out: dict[str, Any] = {}
        for key, serializer, value in self._run(read):
            try:
                out[key] = pickle.loads(value) if serializer == "pickle" else json.loads(value)
            except Exception:
                continue
        return out

    def save(self, entries: Sequence[Entry]) -> None:
        """Insert or replace ``entries`` in one transaction."""
        def write(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany("INSERT OR REPLACE INTO result_cache VALUES (?,?,?,?,?,?,?)",
                              entries)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

        self._run(write)

    def entries(self, tool: str | None = None) -> list[dict[str, Any]]:
        """Every entry (newest first), or only ``tool``'s: key, tool, qualified name,
        created/expiry times (Unix seconds), serializer and size in bytes."""
        where, args = ("WHERE tool = ?", (tool,)) if tool else ("", ())
        rows = self._run(lambda c: c.execute(
            "SELECT key, tool, qualname, created_at, expires_at, serializer, length(value) "
            f"FROM result_cache {where} ORDER BY created_at DESC", args).fetchall())
        names = ("key", "tool", "qualname", "created_at", "expires_at", "serializer", "size")
        return [dict(zip(names, r)) for r in rows]

    def clear(self, tool: str | None = None) -> int:
        """Delete every entry, or only ``tool``'s; how many were deleted."""
        where, args = ("WHERE tool = ?", (tool,)) if tool else ("", ())
        return int(self._run(lambda c: c.execute(
            f"DELETE FROM result_cache {where}", args).rowcount))


_stores: dict[str, SQLiteCache] = {}
_stores_lock = threading.Lock()


def open_cache(history: Any = None) -> SQLiteCache | None:
    """The cache kept in the file of ``run()``'s ``history=`` argument: a store's or a
    path's file, else (``None`` or ``False``) the default history file; None when the
    default history is turned off (``FLOWDSL_HISTORY=off``)."""
    if isinstance(history, HistoryStore):
        path = history.path
    elif history is None or isinstance(history, bool):
        if os.environ.get("FLOWDSL_HISTORY", "").strip().lower() in _OFF:
            return None
        path = str(default_path())
    else:
        path = os.fspath(history)
    if path == ":memory:":
        return SQLiteCache(path)
    key = os.path.realpath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = SQLiteCache(path)
        return store
