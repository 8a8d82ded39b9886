"""The result cache as one run sees it: which tasks are cached, their keys, hits and writes.

Entries are kept by a :class:`CacheBackend` (the record layer's :class:`~flowdsl.CacheStore`,
a SQLite file of its own). The run talks to it only from worker threads, never on the event
loop, and never reads a whole tool's entries:

- before the first task, one batched look-up of every key known at plan time;
- one look-up per mapped task, for all its children, before any of them runs;
- keys known only at run time are looked up in batches (the calls waiting at the same moment
  share one query);
- at the run's end (also when it failed or was cancelled), one transaction writes the new
  entries and the hits (for least-recently-hit eviction). A failure there never costs the
  result: it becomes ``result.cache_error`` and a :class:`~flowdsl.CacheWarning`.

A key is the SHA-256 of the tool's module-qualified name, its version (the hash of its source
unless ``Cache(version=...)`` is given) and a canonical JSON text of the bound arguments (or of
what ``Cache(key=...)`` returns for them). When that text holds a secret (a
:class:`~flowdsl.Secret` argument, or a registered secret's value), the key is an HMAC under
the store's private key instead, so the key says nothing about the secret.

Outputs are stored with the serializer the tool declares: the exact tagged JSON of
:mod:`flowdsl._base.codec` (an output it cannot give back exactly is not cached, and the
record says why) or pickle. Every row is signed by the store (see the record layer). A row is
decoded only with the tool's declared serializer and only when its signature matches: a
pickle row for a JSON tool, or any row whose signature does not match, is refused (never
unpickled) and the task recomputes. An output
holding a registered secret's value is not stored unless the tool says
``Cache(mask_secrets=True)``.

Identical calls in one run compute once: the first claims the key, the others wait for it
and end ``cached`` with its output.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import pickle
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._base import codec, secrets
from .._base.errors import CacheKeyError, CacheWarning, TaskInputError
from .._graph.spec import Cache
from .._graph.task import Task
from .._graph.walk import nodes
from .executors import Remote
from .result import TaskStatus

__all__ = ["CacheBackend", "Entry", "Found", "Row", "RunCache"]

#: Seconds within which a hit does not move an entry's last use (eviction order precision).
USE_GRANULARITY = 60.0
_MAX_BATCH = 500  # keys per look-up query gathered at run time
_EVERY = Cache()  # the policy of a task cached only because of run(cache=True)
COMPLETED, CACHED = TaskStatus.COMPLETED, TaskStatus.CACHED

#: (key, tool name, qualified name, created_at, expires_at, serializer, payload)
Entry = tuple[str, str, str, float, "float | None", str, bytes]
#: A stored entry as the run keeps it: (serializer, payload, signature verified)
Row = tuple[str, bytes, bool]
#: What a look-up finds for a key: a Row and when the entry was last used
Found = tuple[str, bytes, bool, float]


class CacheBackend(Protocol):
    """Where cache entries live. Every method blocks; the run calls them in worker threads."""

    def lookup(self, keys: Sequence[str], now: float) -> dict[str, Found]:
        """The live entries of ``keys`` (absent keys are missing from the answer)."""

    def commit(self, entries: Sequence[Entry], used: Sequence[tuple[str, str]],
               hits: Mapping[str, int], now: float) -> int:
        """Write ``entries``, move the last use of ``used`` ((key, tool) pairs) to ``now``,
        add ``hits`` (tool -> count) to the tools' hit counts, evict over the bounds."""

    def mac_key(self) -> bytes:
        """The store's private key (for the keys of calls that depend on a secret)."""


class _NotData(Exception):
    """A value has no canonical JSON form."""


class _Ident:
    """Builds the canonical text of a call; notes whether a Secret went into it."""

    __slots__ = ("encoder", "found", "secret")

    def __init__(self, found: list[Any] | None = None) -> None:
        self.secret = False
        self.found = found  # where to note the Secrets met (a key function may make some)
        self.encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"),
                                        allow_nan=False, default=self._default)

    def _default(self, value: Any) -> Any:
        if isinstance(value, secrets.Secret):
            self.secret = True
            if self.found is not None:
                self.found.append(value)
            return {"$secret": value.get()}
        raise _NotData(type(value).__name__)

    def text(self, value: Any) -> str:
        try:
            return "j" + self.encoder.encode(value)
        except (TypeError, ValueError) as exc:  # mixed dict keys, NaN
            raise _NotData(str(exc)) from None


def _is_data(value: Any) -> bool:
    try:
        _Ident().text(value)
    except _NotData:
        return False
    return True


_SCALARS = frozenset({str, int, bool, type(None)})  # floats go through JSON (NaN, -0.0)
_versions: dict[Any, str] = {}


def _version(fn: Any) -> str:
    """A hash of the function's source, computed once per function object (an edited and
    re-run notebook cell makes a new object, so a new version)."""
    v = _versions.get(fn)
    if v is None:
        try:
            text = inspect.getsource(fn).encode()
        except (OSError, TypeError):  # no source file (built at run time): hash the code
            code = getattr(fn, "__code__", None)
            text = code.co_code + repr(code.co_consts).encode() if code else repr(fn).encode()
        v = _versions[fn] = hashlib.sha256(text).hexdigest()[:16]
    return v


def _holds_secret(value: Any, payload: bytes, masker: secrets.Masker) -> bool:
    """Whether a registered secret's value is in the payload's text or in bytes inside the
    value (stored as base64, so the payload's text would not show them)."""
    if masker.found_in(payload.decode("utf-8", "replace")):
        return True
    for node in nodes(value):
        if node.__class__ in (bytes, bytearray) and masker.found_in(
                bytes(node).decode("utf-8", "replace")):
            return True
        if node.__class__ is dict and any(k.__class__ is bytes and masker.found_in(
                k.decode("utf-8", "replace")) for k in node):
            return True
    return False


class _Batch:
    """Keys waiting for one look-up query, and the event set when it answered."""

    __slots__ = ("done", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.done = anyio.Event()


class RunCache:
    """The cache of one run (see the module docstring).

    Args:
        backend: where entries live.
        tasks: the plan's tasks.
        ids: the plan's Task -> id (a mapped task's children share their task's policy).
        read: look entries up (``run(cache=False)`` only writes).
        every: cache every task that can be (``run(cache=True)``), not just the tools
            declared with ``cache=``.
        masker: the run's secrets when it starts (None: none).
    """

    def __init__(self, backend: CacheBackend, tasks: Mapping[str, Task[Any]],
                 ids: Mapping[Task[Any], str], *, read: bool, every: bool,
                 masker: secrets.Masker | None = None) -> None:
        self.backend = backend
        self.ids = ids
        self.read = read
        self.policies: dict[str, Cache] = {}
        self._declared: set[str] = set()
        for tid, task in tasks.items():
            c = task.spec.cache
            if c is not None:
                self.policies[tid] = c
                self._declared.add(tid)
            elif every:
                self.policies[tid] = _EVERY
        self.error: BaseException | None = None  # the store could not be used: no caching
        self.rows: dict[str, Row] = {}  # looked-up (or written this run) entries
        self.looked: set[str] = set()  # keys asked of the store (found or not)
        self.shared: dict[str, Any] = {}  # outputs computed this run that were not stored
        self.pending: list[Entry] = []
        self.hits: list[tuple[str, str]] = []  # entries whose last use is to be moved on
        self.hit_count: dict[str, int] = {}  # tool -> hits in this run
        self.used: dict[str, float] = {}  # key -> when its stored entry was last used
        # A hit moves an entry's last use only when that is over a minute old: the order of
        # eviction is kept to the minute, and a run of hits on fresh entries writes no row.
        self._stale = time.time() - USE_GRANULARITY
        self._by: dict[str, str] = {}  # key -> the task that computed it in this run
        # Secrets a Cache(key=...) function returned, to register before anything is written.
        self.found: list[Any] = []
        self.running: dict[str, anyio.Event] = {}  # keys being computed now
        self._batch: _Batch | None = None
        self._mac: bytes | None = None
        self._qualnames: dict[str, str] = {}
        self._prefixes: dict[tuple[Any, Cache], str] = {}
        self.static: dict[str, str] = {}  # task id -> key, for arguments fixed beforehand
        self._later: dict[str, str] = {}  # task id -> text, keyed once the store's key is read
        # Arguments known now are keyed now: a bad one fails before anything runs. (A mapped
        # task has no key of its own: its children's are looked up together when it runs.)
        for tid in list(self.policies):
            task = tasks[tid]
            if not task.dynamic and task.stage_param is None and task.fan is None:
                try:
                    key = self.key(tid, task, task.args, task.kwargs, masker)
                except CacheKeyError:
                    if tid in self._declared:
                        raise
                    key = None
                if key is None:
                    if tid not in self._later:
                        del self.policies[tid]  # run(cache=True): cache what can be cached
                else:
                    self.static[tid] = key
        self.tools = sorted({tasks[tid].tool.name for tid in self.policies})

    @staticmethod
    def wanted(tasks: Mapping[str, Task[Any]], every: bool) -> bool:
        """Whether a run of ``tasks`` needs the cache at all."""
        return every or any(t.spec.cache is not None for t in tasks.values())

    # -- keys ----------------------------------------------------------------------------

    def key(self, tid: str, task: Task[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            masker: secrets.Masker | None = None) -> str | None:
        """The key of a call of ``task`` with these arguments; None when the task is only
        cached run-wide and its arguments cannot be hashed (or, before the run opened the
        store, when the call depends on a secret: it is keyed at :meth:`open`).

        Raises:
            CacheKeyError: for a tool declared with ``cache=``, an argument has no
                canonical form; the message names it and suggests ``Cache(key=...)``.
        """
        known = self.static.get(tid)
        if known is not None:  # arguments fixed at composition: keyed at run start
            return known
        policy = self.policies[self.ids[task]]
        # Plain signatures bind every argument by name (no positional ones are left).
        bound = kwargs if not args else task.tool.signature.bind_partial(
            *args, **kwargs).arguments
        ident = _Ident(self.found if policy.key is not None else None)
        try:
            if policy.key is None and all(v.__class__ in _SCALARS for v in bound.values()):
                # Only plain scalars (the common case): their repr is canonical, and about
                # twice as fast as JSON. The "r" marks the scheme, so the two never collide.
                text = "r" + repr(sorted(bound.items()))
            else:
                text = ident.text(bound if policy.key is None else policy.key(**bound))
        except _NotData as exc:
            if policy.key is not None:
                msg = (f"task {tid!r}: the cache key function of tool {task.tool.name!r} "
                       f"returned something that is not JSON data ({exc})")
                raise CacheKeyError(msg) from None
            if self.ids[task] not in self._declared:
                return None
            name = next(n for n, v in bound.items() if not _is_data(v))
            msg = (f"task {tid!r}: argument {name!r} of cached tool {task.tool.name!r} "
                   f"cannot be hashed canonically ({exc}); give the tool "
                   "cache=flowdsl.Cache(key=lambda **args: ...) returning JSON data that "
                   "identifies the call")
            raise CacheKeyError(msg) from None
        prefix = self._prefixes.get((task.tool.fn, policy))
        if prefix is None:
            prefix = self._prefix(task, policy)
        if ident.secret or (masker is not None and masker.found_in(text)):
            if self._mac is None:  # the store's key is read when the run opens it
                self._later[tid] = prefix + text
                return None
            return self._keyed(prefix + text)
        return hashlib.sha256((prefix + text).encode()).hexdigest()

    def _keyed(self, text: str) -> str:
        """The key of a call that depends on a secret: an HMAC under the store's key."""
        assert self._mac is not None
        return "s" + hmac.new(self._mac, text.encode(), hashlib.sha256).hexdigest()[1:]

    def _prefix(self, task: Task[Any], policy: Cache) -> str:
        """What every key of this tool and policy starts with (computed once per run)."""
        fn, name = task.tool.fn, task.tool.name
        qual = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', name)}"
        self._qualnames[name] = qual
        # The tool's name too: two lambdas of one module share a qualified name.
        prefix = f"{qual}\0{name}\0{policy.version or _version(fn)}\0"
        self._prefixes[(fn, policy)] = prefix
        return prefix

    # -- talking to the store (worker threads) -------------------------------------------

    async def open(self) -> None:
        """Before the first task: read the store's key if a secret is about (to key the
        calls that depend on one) and look up every key known now, in one query. A store
        that cannot be used turns the cache off for this run (reported at its end)."""
        if not self.policies:
            return
        try:
            if secrets.in_use():
                self._mac = await anyio.to_thread.run_sync(self.backend.mac_key)
                for tid, text in self._later.items():
                    self.static[tid] = self._keyed(text)
                self._later.clear()
            if self.read:
                keys = [k for tid, k in self.static.items()
                        if not self.policies[tid].refresh]
                if keys:
                    await self._lookup(keys)
        except Exception as exc:
            self._off(exc)

    def _off(self, exc: BaseException) -> None:
        self.error = exc
        self.policies = {}

    async def _lookup(self, keys: list[str]) -> None:
        rows = await anyio.to_thread.run_sync(self.backend.lookup, keys, time.time())
        self.looked.update(keys)
        for key, (serializer, payload, verified, used) in rows.items():
            self.rows[key] = (serializer, payload, verified)
            self.used[key] = used

    async def _find(self, key: str) -> Row | None:
        """The stored row of ``key``: from what was looked up, else in the next batch."""
        if key in self.looked or not self.read or self.error is not None:
            return self.rows.get(key)
        batch = self._batch
        if batch is not None:  # a query is being gathered: join it
            batch.keys.append(key)
            await batch.done.wait()
            return self.rows.get(key)
        batch = self._batch = _Batch()
        batch.keys.append(key)
        try:
            # Let the calls that are ready now join this query: wait while others join.
            seen = 0
            while seen != len(batch.keys) and len(batch.keys) < _MAX_BATCH:
                seen = len(batch.keys)
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
            self._batch = None
            await self._lookup(batch.keys)
        except Exception as exc:
            self._off(exc)
        finally:
            if self._batch is batch:
                self._batch = None
            batch.done.set()
        return self.rows.get(key)

    async def prefetch_children(self, core: Any, ids: list[str], task: Task[Any],
                                child_args: Callable[[int], tuple[tuple[Any, ...],
                                                                  dict[str, Any]]]) -> None:
        """Look up a mapped task's children's keys in one query, before any of them runs
        (a child whose key cannot be made fails on its own when it runs)."""
        if not self.read or self.error is not None or self.policies[self.ids[task]].refresh:
            return
        keys = []
        for i, cid in enumerate(ids):
            try:
                args, kwargs = child_args(i)
                key = self.key(cid, task, args, kwargs, core.masker)
            except (TaskInputError, CacheKeyError, TypeError):
                continue
            if key is not None:
                keys.append(key)
        if self.found:
            found, self.found = self.found, []
            core.register_secrets(found)
        want = [k for k in dict.fromkeys(keys) if k not in self.looked]
        if want and self.read and self.error is None:
            try:
                await self._lookup(want)
            except Exception as exc:
                self._off(exc)

    async def flush(self, result: Any) -> None:
        """Write the new entries and the hits in one transaction (in a worker thread);
        called once, at the run's end. A failure becomes ``result.cache_error`` and a
        :class:`CacheWarning`, never an exception: the run's result stands."""
        error = self.error
        if error is None and (self.pending or self.hit_count):
            entries, self.pending = self.pending, []
            hits, self.hits = self.hits, []
            counts, self.hit_count = self.hit_count, {}
            try:
                await anyio.to_thread.run_sync(self.backend.commit, entries, hits, counts,
                                               time.time())
            except Exception as exc:
                error = exc
        if error is None:
            return
        masker = getattr(result, "masker", None)
        text = f"result cache not used or not written: {error}"
        if masker is not None:
            text = masker.text(text)
        result.cache_error = CacheWarning(text)
        from .._base.log import get_logger, logging_enabled  # structlog: only when needed

        if logging_enabled():
            get_logger(run_id=result.run_id).error("cache_error", error=text)
        warnings.warn(text, CacheWarning, stacklevel=2)

    # -- one task ------------------------------------------------------------------------

    async def run_task(self, core: Any, tid: str, task: Task[Any], item: Any, rec: Any,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskStatus:
        """Run a cached task (or child): restore its output on a hit, wait for an identical
        call of this run, or compute it with ``core.compute`` and queue the new entry."""
        try:
            key = self.key(tid, task, args, kwargs, core.masker)
        except (TaskInputError, CacheKeyError) as exc:
            return core.fail(tid, item, rec, exc, 0)  # type: ignore[no-any-return]
        finally:
            if self.found:
                found, self.found = self.found, []
                core.register_secrets(found)
        if key is None or self.error is not None:
            return await core.compute(tid, task, item, rec, args, kwargs)  # type: ignore
        policy = self.policies.get(self.ids[task], _EVERY)
        while True:  # an identical call is computing: wait for it (then it may have failed)
            done = self.running.get(key)
            if done is None:
                break
            await done.wait()
        refused = None
        if not policy.refresh:
            same = self._same_run(key, policy)
            if same is not None:  # (S36a: a member run again by its group finds its own)
                again = (f"output of an identical call in this run ({same[1]})" if same[1] != tid
                         else "output of its own call in an earlier attempt of its group")
                return core.cached(tid, task, item, rec, same[0], reason=again)  # type: ignore
            row = self.rows.get(key)
            if row is not None:  # looked up before: a hit costs no await and no claim
                value, refused = self._decode(row, policy)
                if refused is None:
                    self._hit(key, task.tool.name)
                    return core.cached(tid, task, item, rec, value)  # type: ignore
        event = self.running[key] = anyio.Event()
        try:
            if not policy.refresh and refused is None and key not in self.looked:
                row = await self._find(key)
                if row is not None:
                    value, refused = self._decode(row, policy)
                    if refused is None:
                        self._hit(key, task.tool.name)
                        return core.cached(tid, task, item, rec, value)  # type: ignore
            status = await core.compute(tid, task, item, rec, args, kwargs)
            if status is COMPLETED:
                why = await self._remember(core, key, task, policy, item.outputs[tid], tid)
                if refused is not None:
                    why = f"{refused}; {why}" if why else refused
                if why is not None:
                    rec.reason = core.masker.text(why) if core.masker is not None else why
            return status  # type: ignore[no-any-return]
        finally:
            del self.running[key]
            event.set()

    def _hit(self, key: str, tool: str) -> None:
        """Note a hit on a stored entry, for the tool's hit count and, when the entry was
        last used over a minute ago, its place in the eviction order (written at the end)."""
        self.hit_count[tool] = self.hit_count.get(tool, 0) + 1
        used = self.used.get(key)
        if used is not None and used < self._stale:
            self.hits.append((key, tool))
            del self.used[key]

    def _same_run(self, key: str, policy: Cache) -> tuple[Any, str] | None:
        """The output an identical call computed earlier in this run, with that call's
        task id (a fresh copy when it was stored); None if none did."""
        if key in self.shared:
            return self.shared[key]  # type: ignore[no-any-return]
        by = self._by.get(key)
        if by is None:
            return None
        value, refused = self._decode(self.rows[key], policy)
        return None if refused is not None else (value, by)

    def _decode(self, row: Row, policy: Cache) -> tuple[Any, str | None]:
        """A stored row's value, or why it is refused (never unpickled unverified)."""
        serializer, payload, verified = row
        if serializer != policy.serializer:
            return None, (f"cache entry refused: stored with serializer {serializer!r} but "
                          f"the tool declares {policy.serializer!r}; recomputed")
        if not verified:
            return None, ("cache entry refused: its signature does not match this store's "
                          "key (a file written or altered elsewhere); recomputed")
        if serializer == "pickle":
            try:
                return pickle.loads(payload), None
            except Exception as exc:
                return None, f"cache entry refused: it cannot be unpickled ({exc!r}); recomputed"
        try:
            return codec.decode(payload), None
        except Exception as exc:  # a row written by someone else: any fault is a refusal
            return None, f"cache entry refused: it cannot be decoded ({exc!r}); recomputed"

    async def _remember(self, core: Any, key: str, task: Task[Any], policy: Cache, out: Any,
                        tid: str) -> str | None:
        """Queue ``out`` under ``key``; the reason when it is not stored."""
        if core.remote and isinstance(out, Remote):  # a value on a cluster: the file is here
            try:
                out = await out.fetch()
            except Exception as exc:
                return f"not cached: fetching its output failed ({exc!r})"
        self.shared.pop(key, None)  # a refreshed call replaces what this run knew
        self._by.pop(key, None)
        masker = core.masker
        try:
            payload = self._encode(out, policy)
        except Exception as exc:
            self.shared[key] = (out, tid)
            if policy.serializer == "pickle":
                return f"not cached: its output cannot be pickled ({type(exc).__name__})"
            return (f"not cached: its output cannot be stored exactly ({exc}); use "
                    "cache=flowdsl.Cache(serializer='pickle') for trusted data")
        if masker is not None and _holds_secret(out, payload, masker):
            self.shared[key] = (out, tid)  # identical calls of this run get the real value
            if not policy.mask_secrets:
                return ("not cached: its output holds a secret's value (give the tool "
                        "Cache(mask_secrets=True) to store it masked)")
            try:
                payload = self._encode(masker.data(out), policy)
            except Exception as exc:
                return f"not cached: its masked output cannot be stored ({exc})"
            if _holds_secret(masker.data(out), payload, masker):
                return "not cached: its output holds a secret's value even once masked"
        now = time.time()
        expires = None if policy.ttl is None else now + policy.ttl
        name = task.tool.name
        self.pending.append((key, name, self._qualnames.get(name, name), now, expires,
                             policy.serializer, payload))
        if key not in self.shared:
            self.rows[key] = (policy.serializer, payload, True)
            self.looked.add(key)
            self._by[key] = tid
        return None

    @staticmethod
    def _encode(value: Any, policy: Cache) -> bytes:
        if policy.serializer == "pickle":
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return codec.encode(value)
