"""The result cache commands of the ``flowdsl`` command line: ``cache list`` and
``cache clear``, over the cache table of the history file (``--history``).

Registered on the ``flowdsl`` app by :func:`register`, as the history commands are.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column, Table

from .cli_common import JsonOpt, _options, _out, _print_json

__all__ = ["cache_app", "cache_clear", "cache_list", "register"]

cache_app = typer.Typer(help="Cached task outputs (tools declared with cache=): list, clear.",
                        invoke_without_command=True)
ToolOpt = Annotated[str | None, typer.Option("--tool", help="Only this tool's entries.")]


def register(app: typer.Typer) -> None:
    """Add the ``cache`` group to the ``flowdsl`` app."""
    app.add_typer(cache_app, name="cache")


def _cache() -> Any:
    from .._record.cache import open_cache

    return open_cache(_options["history"])


@cache_app.callback()
def _cache_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        cache_list(tool=None, as_json=False)


@cache_app.command("list", epilog="Example: flowdsl cache list --tool fetch")
def cache_list(tool: ToolOpt = None, as_json: JsonOpt = False) -> None:
    """The entries, newest first: tool, key, size, when written and when they expire."""
    import datetime as dt

    store = _cache()
    rows = store.entries(tool) if store is not None else []
    if as_json:
        _print_json(rows)
        return

    def when(t: float | None) -> str:
        return "never" if t is None else dt.datetime.fromtimestamp(t).strftime(
            "%Y-%m-%d %H:%M:%S")

    table = Table("tool", Column("key", no_wrap=True), "size", "written", "expires",
                  title=f"cache in {store.path if store is not None else '(history off)'}",
                  title_justify="left")
    for r in rows:
        table.add_row(r["tool"], r["key"][:16], f"{r['size']} B", when(r["created_at"]),
                      when(r["expires_at"]))
    _out().print(table)


@cache_app.command("clear", epilog="Example: flowdsl cache clear --tool fetch")
def cache_clear(tool: ToolOpt = None) -> None:
    """Delete the entries (only one tool's with --tool); the next runs recompute them."""
    store = _cache()
    n = store.clear(tool) if store is not None else 0
    what = f"of tool {tool!r} " if tool else ""
    _out().print(f"deleted {n} cache entr{'y' if n == 1 else 'ies'} {what}".rstrip())
