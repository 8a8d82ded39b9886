"""The result cache's store: its own SQLite file, apart from the run history.

:class:`CacheStore` is the run layer's :class:`~flowdsl._run.caching.CacheBackend`. A run
talks to it at most a few times, always from a worker thread: one batched look-up of the keys
known before the first task, one per mapped task for its children, batches for keys known
only at run time, and one transaction at the run's end that writes the new entries, records
the hits (for least-recently-hit eviction) and evicts what is over the bounds. Nothing reads a
whole tool's entries, so a run's cost does not grow with the store.

One store per file and process (:func:`open_cache`), holding one connection opened on first
use (in the worker thread, never on the event loop), in WAL mode, the file 0600 like the
history's. The entry and byte counts live in a row kept up to date by triggers, so checking
the bounds costs nothing however big the file is.

Every row carries an HMAC-SHA256 of its key, serializer and payload under a key kept in a
0600 file beside the store (``<file>.key``); a row whose HMAC does not match is refused (a
pickle row is never unpickled), so a file written or altered without the key can neither run
code nor change a result. The key also derives the cache keys of calls that depend on a
:class:`~flowdsl.Secret`, so the secret cannot be recovered from the key by guessing.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import os
import secrets as _random
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._base.errors import CacheStoreError
from .._run.caching import Entry, Found
from .history import _create_private, default_path

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "CacheStore", "default_cache_path",
           "open_cache"]

#: Default bounds of a store: beyond them the least recently hit entries are evicted.
DEFAULT_MAX_ENTRIES = 1_000_000
DEFAULT_MAX_BYTES = 1 << 30
_SCHEMA_VERSION = 1
_APP_ID = 0x666C6361  # "flca": tells a cache file from a history file or any other
_CHUNK = 500  # keys per query: SQLite bounds the parameters of one statement
_OFF = ("off", "0", "false", "no", "none")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    qualname TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    used_at REAL NOT NULL,
    serializer TEXT NOT NULL,
    size INTEGER NOT NULL,
    mac BLOB,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used_at);
CREATE INDEX IF NOT EXISTS entries_tool ON entries (tool);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS tool_stats (
    tool TEXT PRIMARY KEY,
    hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes + NEW.size - OLD.size WHERE id = 0;
END;
"""
_UPSERT = (
    "INSERT INTO entries (key, tool, qualname, created_at, expires_at, used_at, serializer, "
    "size, mac, value) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
    "tool=excluded.tool, qualname=excluded.qualname, created_at=excluded.created_at, "
    "expires_at=excluded.expires_at, used_at=excluded.used_at, serializer=excluded.serializer, "
    "size=excluded.size, mac=excluded.mac, value=excluded.value")


def default_cache_path() -> Path | None:
    """The default cache file: ``$FLOWDSL_CACHE`` if it names a path (``None`` when it says
    ``off``), else ``cache.db`` beside the default history file."""
    env = os.environ.get("FLOWDSL_CACHE", "").strip()
    if env.lower() in _OFF and env:
        return None
    if env:
        return Path(env).expanduser()
    return default_path().parent / "cache.db"


class CacheStore:
    """A result cache in the SQLite file at ``path`` (``":memory:"`` for one in memory).

    Pass it as ``run(..., cache=store)``; most code never needs one, since ``run()`` uses the
    default file (see :func:`default_cache_path`). Nothing is opened until first use.

    Args:
        path: the SQLite file (created 0600, its folders 0700).
        max_entries: most entries kept; the least recently hit go first.
        max_bytes: most payload bytes kept, likewise.
        timeout: seconds to wait for another process's write lock before giving up.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = 30.0) -> None:
        if max_entries < 1 or max_bytes < 1:
            msg = (f"CacheStore({os.fspath(path)!r}): max_entries={max_entries} and "
                   f"max_bytes={max_bytes} must be positive")
            raise ValueError(msg)
        self.path = os.fspath(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # one connection, used by one thread at a time
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"CacheStore({self.path!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _fail(self, exc: BaseException, doing: str) -> CacheStoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            advice = ("another process holds its write lock; wait for it to finish, or "
                      "give this run another file (cache=path or FLOWDSL_CACHE)")
        elif isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.OperationalError):
            advice = ("the file is damaged or not a flowdsl cache; move it aside or delete "
                      "it (it only holds cached outputs, which are recomputed)")
        else:
            advice = ("check the disk and the file's permissions, or give another path "
                      "(cache=path or FLOWDSL_CACHE), or turn the cache off (FLOWDSL_CACHE=off)")
        return CacheStoreError(f"result cache {self.path}: {doing} failed: {text}; {advice}")

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.path != ":memory:":
            _create_private(Path(self.path))
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN")  # one snapshot: another process may be creating it
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            conn.execute("COMMIT")
            if app != _APP_ID and (app or tables):
                msg = (f"result cache {self.path} is not a flowdsl result cache (another "
                       "SQLite file, such as a history file?); give the cache its own file")
                raise CacheStoreError(msg)
            if version > _SCHEMA_VERSION:
                msg = (f"result cache {self.path} was written by a newer flowdsl (schema "
                       f"{version}); upgrade flowdsl or use another file")
                raise CacheStoreError(msg)
            if version < _SCHEMA_VERSION:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} "
                                   f"PRAGMA application_id = {_APP_ID}; "
                                   f"PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    @contextlib.contextmanager
    def _use(self, doing: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, in a transaction when ``write``; SQLite errors become a
        :class:`CacheStoreError` naming the file and what to do."""
        with self._lock:
            try:
                c = self._connect()
                if not write:
                    yield c
                    return
                c.execute("BEGIN IMMEDIATE")
                try:
                    yield c
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
            except CacheStoreError:
                raise
            except (sqlite3.Error, OSError) as exc:
                if self._conn is not None and self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise self._fail(exc, doing) from exc

    def close(self) -> None:
        """Close the connection (the next use reopens it)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def mac_key(self) -> bytes:
        """The secret key of this store (the HMAC of every row, the keys of calls that
        depend on a secret): read from, or created as, the 0600 file ``<path>.key``."""
        with self._lock:
            if self._key is not None:
                return self._key
            if self.path == ":memory:":
                self._key = _random.token_bytes(32)
                return self._key
            kpath = self.path + ".key"
            try:
                if not os.path.exists(kpath):
                    self._new_key(kpath)
                key = Path(kpath).read_bytes()
            except OSError as exc:
                msg = (f"result cache {self.path}: its key file {kpath} cannot be used: "
                       f"{exc}; fix its permissions, or delete it and the cache file")
                raise CacheStoreError(msg) from exc
            if len(key) != 32:
                msg = (f"result cache {self.path}: its key file {kpath} is damaged; delete "
                       "it and the cache file (no entry can be verified without it)")
                raise CacheStoreError(msg)
            self._key = key
            return key

    def _new_key(self, kpath: str) -> None:
        """Create the key file whole or not at all: written 0600 under a private name, then
        linked into place (a process racing to create it too finds either no file or the
        complete one, and the first link wins)."""
        _create_private(Path(self.path))  # the folder, private
        tmp = f"{kpath}.{os.getpid()}.{_random.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_random.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, kpath)
        finally:
            os.unlink(tmp)

    def _mac(self, key: str, serializer: str, payload: bytes) -> bytes:
        """The row's HMAC: over its key and serializer too, so a signed payload cannot be
        moved to another key or read with another serializer."""
        text = b"\0".join((key.encode(), serializer.encode(), payload))
        return hmac.new(self.mac_key(), text, hashlib.sha256).digest()

    # -- what a run uses -----------------------------------------------------------------

    def lookup(self, keys: Sequence[str], now: float) -> dict[str, Found]:
        """The live entries of ``keys`` (absent ones are simply missing): serializer,
        payload, whether a pickle row's HMAC matched (always True for other rows) and when
        the entry was last used."""
        rows: list[tuple[str, str, bytes, bytes | None, float]] = []
        with self._use("reading entries") as c:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i:i + _CHUNK]
                rows += c.execute(
                    "SELECT key, serializer, value, mac, used_at FROM entries WHERE key IN "
                    f"({','.join('?' * len(part))}) AND (expires_at IS NULL OR expires_at > ?)",
                    (*part, now)).fetchall()
        out: dict[str, Found] = {}
        for key, serializer, value, mac, used in rows:
            value = bytes(value)
            ok = mac is not None and hmac.compare_digest(mac, self._mac(key, serializer, value))
            out[key] = (serializer, value, ok, used)
        return out

    def commit(self, entries: Sequence[Entry], used: Sequence[tuple[str, str]],
               hits: Mapping[str, int], now: float) -> int:
        """In one transaction: write ``entries`` (replacing those of the same key), move
        the last use of ``used`` ((key, tool) pairs) to ``now``, add ``hits`` (tool ->
        count) and the entries written (misses) to the tools' counts, and evict the least
        recently used entries over the bounds. Returns how many were evicted."""
        macs = [self._mac(e[0], e[5], e[6]) for e in entries]
        per_tool: dict[str, list[int]] = {t: [n, 0] for t, n in hits.items()}
        for e in entries:
            per_tool.setdefault(e[1], [0, 0])[1] += 1
        with self._use("writing entries", write=True) as c:
            c.executemany(_UPSERT, [(k, t, q, made, exp, made, ser, len(v), mac, v)
                                    for (k, t, q, made, exp, ser, v), mac in zip(entries, macs)])
            if used:
                c.executemany("UPDATE entries SET used_at = ? WHERE key = ?",
                              [(now, k) for k, _ in used])
            c.executemany(
                "INSERT INTO tool_stats (tool, hits, misses) VALUES (?, ?, ?) ON CONFLICT(tool) "
                "DO UPDATE SET hits = hits + excluded.hits, misses = misses + excluded.misses",
                [(t, h, m) for t, (h, m) in per_tool.items()])
            return self._evict(c, self.max_entries, self.max_bytes)

    @staticmethod
    def _evict(c: sqlite3.Connection, max_entries: int, max_bytes: int) -> int:
        """Delete the least recently hit entries until both bounds hold (totals come from
        the row the triggers keep, so a store within bounds pays one indexed read)."""
        evicted = 0
        while True:
            n, size = c.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
            over = n - max_entries
            if over <= 0 and size <= max_bytes:
                return evicted
            # Over the byte bound only: drop a slice at a time (entry sizes vary).
            batch = over if over > 0 else max(1, min(1000, n // 100))
            evicted += c.execute(
                "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY used_at "
                "LIMIT ?)", (batch,)).rowcount

    # -- what the command line uses ------------------------------------------------------

    def entries(self, tool: str | None = None, limit: int | None = None
                ) -> list[dict[str, Any]]:
        """Entries, most recently used first (only ``tool``'s if given, at most ``limit``):
        key, tool, qualified name, created/expiry/last-use times (Unix seconds; the last
        use to the minute), serializer and size in bytes."""
        where, args = ("WHERE tool = ?", [tool]) if tool else ("", [])
        lim = "" if limit is None else f" LIMIT {int(limit)}"
        with self._use("listing entries") as c:
            rows = c.execute(
                "SELECT key, tool, qualname, created_at, expires_at, used_at, serializer, "
                f"size FROM entries {where} ORDER BY used_at DESC{lim}", args).fetchall()
        names = ("key", "tool", "qualname", "created_at", "expires_at", "used_at",
                 "serializer", "size")
        return [dict(zip(names, r)) for r in rows]

    def clear(self, tool: str | None = None) -> int:
        """Delete every entry, or only ``tool``'s; how many were deleted."""
        where, args = ("WHERE tool = ?", (tool,)) if tool else ("", ())
        with self._use("clearing entries", write=True) as c:
            n = int(c.execute(f"DELETE FROM entries {where}", args).rowcount)
            c.execute(f"DELETE FROM tool_stats {where}", args)
        return n

    def prune(self, max_entries: int | None = None, max_bytes: int | None = None,
              now: float | None = None) -> dict[str, int]:
        """Delete expired entries, then evict the least recently hit down to the bounds
        (the store's unless given); how many of each."""
        now = time.time() if now is None else now
        with self._use("pruning entries", write=True) as c:
            expired = int(c.execute("DELETE FROM entries WHERE expires_at IS NOT NULL AND "
                                    "expires_at <= ?", (now,)).rowcount)
            evicted = self._evict(c, self.max_entries if max_entries is None else max_entries,
                                  self.max_bytes if max_bytes is None else max_bytes)
        return {"expired": expired, "evicted": evicted}

    def stats(self) -> dict[str, Any]:
        """Entries and bytes in all and per tool, with each tool's hits, misses (entries
        computed and written) and hit rate."""
        with self._use("reading statistics") as c:
            n, size = c.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
            per = {t: {"entries": e, "bytes": b or 0, "hits": 0, "misses": 0}
                   for t, e, b in c.execute(
                       "SELECT tool, count(*), sum(size) FROM entries GROUP BY tool")}
            for t, h, m in c.execute("SELECT tool, hits, misses FROM tool_stats"):
                s = per.setdefault(t, {"entries": 0, "bytes": 0, "hits": 0, "misses": 0})
                s["hits"], s["misses"] = h, m
        for s in per.values():
            total = s["hits"] + s["misses"]
            s["hit_rate"] = s["hits"] / total if total else None
        return {"path": self.path, "entries": n, "bytes": size,
                "max_entries": self.max_entries, "max_bytes": self.max_bytes,
                "tools": dict(sorted(per.items()))}

    def integrity_check(self) -> str:
        """SQLite's ``quick_check`` verdict (``"ok"`` for a sound file)."""
        with self._use("checking the file") as c:
            return str(c.execute("PRAGMA quick_check").fetchone()[0])


_stores: dict[str, CacheStore] = {}
_stores_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    for store in list(_stores.values()):
        store.close()


def open_cache(spec: Any = None) -> CacheStore | None:
    """The store ``run(cache=...)`` means: a :class:`CacheStore` (or any object with the
    run layer's ``CacheBackend`` methods) as it is, a path's store,
    else (``None``/``True``/``False``) the default file's (:func:`default_cache_path`), or
    None when ``FLOWDSL_CACHE=off``. Stores opened from paths are kept per file for the
    process, so a file is opened once."""
    if isinstance(spec, CacheStore) or (hasattr(spec, "lookup") and hasattr(spec, "commit")):
        return spec  # type: ignore[no-any-return]  # a store, or another CacheBackend
    if spec is None or isinstance(spec, bool):
        path: Path | str | None = default_cache_path()
        if path is None:
            return None
    elif isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
    else:
        msg = (f"run(): cache={spec!r} is invalid: expected True, False, None, a path or a "
               "flowdsl.CacheStore")
        raise TypeError(msg)
    if os.fspath(path) == ":memory:":
        return CacheStore(":memory:")
    key = os.path.abspath(os.fspath(path))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = CacheStore(key)
        return store
