"""The result cache as one run sees it: which tasks are cached, their keys, hits and writes.

Entries are kept by a :class:`CacheBackend` (the record layer's SQLite table, next to the run
history). The run talks to it twice, both times in a worker thread, never on the event loop:
once before the first task starts, to load the live entries of the run's cached tools, and
once at the end (also when the run fails or is cancelled), to write the new ones. In between,
a hit is a dict lookup.

A key is the SHA-256 of the tool's module-qualified name, its version (the hash of its source
unless ``Cache(version=...)`` is given) and a canonical JSON text of the bound arguments (or
of what ``Cache(key=...)`` returns for them).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio

from .._base.errors import CacheKeyError
from .._graph.spec import Cache
from .._graph.task import Task

__all__ = ["CacheBackend", "Entry", "RunCache"]

_EVERY = Cache()  # the policy of a task cached only because of run(cache=True)

#: (key, tool name, qualified name, created_at, expires_at, serializer, payload)
Entry = tuple[str, str, str, float, "float | None", str, bytes]


class CacheBackend(Protocol):
    """Where cache entries live. Both methods block; the run calls them in a worker thread."""

    def load(self, tools: Sequence[str], now: float) -> dict[str, Any]:
        """The decoded values of the live entries of ``tools``, by key."""

    def save(self, entries: Sequence[Entry]) -> None:
        """Insert or replace ``entries`` (a concurrent writer of the same key may win)."""


class _NotData(Exception):
    """A value has no canonical JSON form."""


def _refuse(value: Any) -> Any:
    raise _NotData(type(value).__name__)


def _is_data(value: Any) -> bool:
    try:
        _canonical(value)
    except _NotData:
        return False
    return True


_SCALARS = frozenset({str, int, bool, type(None)})  # floats go through JSON (NaN, -0.0)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False,
                            default=_refuse)


def _canonical(value: Any) -> str:
    try:
        return "j" + _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:  # mixed dict keys, NaN
        raise _NotData(str(exc)) from None


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


class RunCache:
    """The cache of one run (see the module docstring).

    Args:
        backend: where entries live.
        tasks: the plan's tasks.
        ids: the plan's Task -> id (a mapped task's children share their task's policy).
        read: look entries up (``run(cache=False)`` only writes).
        every: cache every task that can be (``run(cache=True)``), not just the tools
            declared with ``cache=``.
    """

    def __init__(self, backend: CacheBackend, tasks: Mapping[str, Task],
                 ids: Mapping[Task, str], *, read: bool, every: bool) -> None:
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
        self.entries: dict[str, Any] = {}
        self.pending: list[Entry] = []
        self._qualnames: dict[str, str] = {}
        self._prefixes: dict[tuple[Any, Cache], str] = {}
        self.static: dict[str, str] = {}  # task id -> key, for arguments fixed beforehand
        # Arguments known now are keyed now: a bad one fails before anything runs.
        for tid in list(self.policies):
            task = tasks[tid]
            if not task.dynamic and task.stage_param is None:
                try:
                    key = self.key(tid, task, task.args, task.kwargs)
                except CacheKeyError:
                    if tid in self._declared:
                        raise
                    key = None
                if key is None:
                    del self.policies[tid]  # run(cache=True): cache what can be cached
                else:
                    self.static[tid] = key
        self.tools = sorted({tasks[tid].tool.name for tid in self.policies})

    @staticmethod
    def wanted(tasks: Mapping[str, Task], every: bool) -> bool:
        """Whether a run of ``tasks`` needs the cache at all."""
        return every or any(t.spec.cache is not None for t in tasks.values())

    def key(self, tid: str, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> str | None:
        """The key of a call of ``task`` with these arguments; None when the task is only
        cached run-wide and its arguments cannot be hashed.

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
        try:
            if policy.key is None and all(v.__class__ in _SCALARS for v in bound.values()):
                # Only plain scalars (the common case): their repr is canonical, and about
                # twice as fast as JSON. The "r" marks the scheme, so the two never collide.
                ident = "r" + repr(sorted(bound.items()))
            else:
                ident = _canonical(bound if policy.key is None else policy.key(**bound))
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
        return hashlib.sha256((prefix + ident).encode()).hexdigest()

    def _prefix(self, task: Task, policy: Cache) -> str:
        """What every key of this tool and policy starts with (computed once per run)."""
        fn, name = task.tool.fn, task.tool.name
        qual = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', name)}"
        self._qualnames[name] = qual
        # The tool's name too: two lambdas of one module share a qualified name.
        prefix = f"{qual}\0{name}\0{policy.version or _version(fn)}\0"
        self._prefixes[(fn, policy)] = prefix
        return prefix

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, output)`` on a live hit, else ``(False, None)``."""
        if not self.read or key not in self.entries:
            return False, None
        return True, self.entries[key]

    def put(self, key: str, task: Task, value: Any) -> str | None:
        """Queue ``value`` under ``key``; a reason when it cannot be stored."""
        policy = self.policies[self.ids[task]]
        try:
            if policy.serializer == "pickle":
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                payload = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
        except Exception as exc:
            return (f"not cached: its output is not JSON data ({type(exc).__name__}); use "
                    "cache=flowdsl.Cache(serializer='pickle') for trusted data")
        now = time.time()
        expires = None if policy.ttl is None else now + policy.ttl
        name = task.tool.name
        self.pending.append((key, name, self._qualnames.get(name, name), now, expires,
                             policy.serializer, payload))
        self.entries[key] = value
        return None

    async def open(self) -> None:
        """Load the live entries of the run's cached tools (in a worker thread)."""
        if not self.read or not self.policies:
            return
        self.entries = await anyio.to_thread.run_sync(self.backend.load, self.tools,
                                                      time.time())

    async def flush(self) -> None:
        """Write the new entries (in a worker thread); called once, at the run's end."""
        if self.pending:
            entries, self.pending = self.pending, []
            await anyio.to_thread.run_sync(self.backend.save, entries)
