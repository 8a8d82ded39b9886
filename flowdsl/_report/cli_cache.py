"""The result cache commands of the ``flowdsl`` command line: ``cache list``, ``stats``,
``prune`` and ``clear``, over the cache file (``--cache``, else ``$FLOWDSL_CACHE``, else
``cache.db`` beside the default history file).

A file that cannot be used (corrupt, not a cache, locked past ``--wait``) gives a one-line
message and exit status 2, never a traceback. Registered on the ``flowdsl`` app by
:func:`register`, as the history commands are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.table import Column, Table

from .cli_common import JsonOpt, _fail, _out, _print_json

__all__ = ["cache_app", "cache_clear", "cache_list", "cache_prune", "cache_stats", "register"]

EXIT_STORE = 2
cache_app = typer.Typer(help="Cached task outputs: list, stats, prune, clear.",
                        invoke_without_command=True)
ToolOpt = Annotated[str | None, typer.Option("--tool", help="Only this tool's entries.")]
_state: dict[str, Any] = {"path": None, "wait": 10.0}
F = TypeVar("F", bound=Callable[..., Any])


def register(app: typer.Typer) -> None:
    """Add the ``cache`` group to the ``flowdsl`` app."""
    app.add_typer(cache_app, name="cache")


def _store() -> Any:
    from .._record.cache import CacheStore, default_cache_path

    path = _state["path"] or default_cache_path()
    if path is None:
        raise _fail("the result cache is off (FLOWDSL_CACHE=off); give --cache PATH",
                    EXIT_STORE)
    return CacheStore(path, timeout=_state["wait"])


def _guarded(fn: F) -> F:
    """Run a command; a store that cannot be used exits 2 with its message."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .._base.errors import CacheStoreError

        try:
            return fn(*args, **kwargs)
        except CacheStoreError as exc:
            raise _fail(str(exc), EXIT_STORE) from None

    return cast(F, wrapper)


@cache_app.callback()
def _cache_default(ctx: typer.Context, path: Annotated[str | None, typer.Option(
        "--cache", metavar="PATH", help="Cache file (default: $FLOWDSL_CACHE, else cache.db "
        "beside the default history file).")] = None,
        wait: Annotated[float, typer.Option(
            "--wait", metavar="SECONDS", help="How long to wait for another process's write "
            "lock.")] = 10.0) -> None:
    _state["path"], _state["wait"] = path, wait
    if ctx.invoked_subcommand is None:
        cache_list(tool=None, limit=50, as_json=False)


def _when(t: float | None) -> str:
    import datetime as dt

    return "never" if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@cache_app.command("list", epilog="Example: flowdsl cache list --tool fetch")
@_guarded
def cache_list(tool: ToolOpt = None, limit: Annotated[int, typer.Option(
        "--limit", min=1, help="Most entries shown (most recently used first).")] = 50,
        as_json: JsonOpt = False) -> None:
    """The entries, most recently used first: tool, key, size, when written, last used
    (to the minute) and when they expire."""
    store = _store()
    try:
        rows = store.entries(tool, limit=limit)
    finally:
        store.close()
    if as_json:
        _print_json(rows)
        return
    table = Table("tool", Column("key", no_wrap=True), "size", "written", "used",
                  "expires", title=f"cache in {store.path}", title_justify="left")
    for r in rows:
        table.add_row(r["tool"], r["key"][:16], f"{r['size']} B",
                      _when(r["created_at"]), _when(r["used_at"]), _when(r["expires_at"]))
    _out().print(table)


@cache_app.command("stats", epilog="Example: flowdsl cache stats --json")
@_guarded
def cache_stats(as_json: JsonOpt = False) -> None:
    """Entries and bytes, in all and per tool, with each tool's hits, misses and hit rate."""
    store = _store()
    try:
        s = store.stats()
    finally:
        store.close()
    if as_json:
        _print_json(s)
        return
    table = Table("tool", "entries", "bytes", "hits", "misses", "hit rate",
                  title=(f"cache in {s['path']}: {s['entries']} entries, {s['bytes']} B "
                         f"(bounds {s['max_entries']} entries, {s['max_bytes']} B)"),
                  title_justify="left")
    for tool, t in s["tools"].items():
        rate = "-" if t["hit_rate"] is None else f"{t['hit_rate']:.0%}"
        table.add_row(tool, str(t["entries"]), str(t["bytes"]), str(t["hits"]),
                      str(t["misses"]), rate)
    _out().print(table)


@cache_app.command("prune", epilog="Example: flowdsl cache prune --max-entries 10000")
@_guarded
def cache_prune(max_entries: Annotated[int | None, typer.Option(
        "--max-entries", min=1, help="Evict the least recently hit beyond this many.")] = None,
        max_bytes: Annotated[int | None, typer.Option(
            "--max-bytes", min=1, help="Evict the least recently hit beyond this many "
            "payload bytes.")] = None,
        as_json: JsonOpt = False) -> None:
    """Delete expired entries, then evict the least recently hit down to the bounds."""
    store = _store()
    try:
        done = store.prune(max_entries, max_bytes)
    finally:
        store.close()
    if as_json:
        _print_json(done)
        return
    _out().print(f"deleted {done['expired']} expired and evicted {done['evicted']} "
                 "least recently hit cache entries")


@cache_app.command("clear", epilog="Example: flowdsl cache clear --tool fetch")
@_guarded
def cache_clear(tool: ToolOpt = None) -> None:
    """Delete the entries (only one tool's with --tool); the next runs recompute them."""
    store = _store()
    try:
        n = store.clear(tool)
    finally:
        store.close()
    what = f"of tool {tool!r} " if tool else ""
    _out().print(f"deleted {n} cache entr{'y' if n == 1 else 'ies'} {what}".rstrip())
