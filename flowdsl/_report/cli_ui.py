"""The ``flowdsl ui`` command: the run browser (:mod:`flowdsl._report.ui`) from the command
line. Registered on the shared typer app by :func:`register`, which ``cli`` calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import _err, _fail, _load, _options, _out, _plan

__all__ = ["register", "ui"]

_OFF = ("off", "0", "false", "no", "none")


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the ``flowdsl`` app."""
    app.command(epilog="Example: flowdsl ui --port 8765 --no-browser")(ui)


def ui(history: Annotated[Path | None, typer.Option(
           "--history", metavar="PATH", help="The history file to browse (default: the "
           "global --history, $FLOWDSL_HISTORY, else ~/.local/state/flowdsl/history.db).")]
       = None,
       host: Annotated[str, typer.Option(
           "--host", metavar="HOST", help="Address to listen on. The default keeps the browser "
           "on this machine; another address shows your history to anyone who can reach it.")]
       = "127.0.0.1",
       port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, metavar="PORT",
                                         help="TCP port (0 picks a free one).")] = 8765,
       no_browser: Annotated[bool, typer.Option(
           "--no-browser", help="Do not open a web browser; just print the address.")]
       = False,
       flow: Annotated[list[str] | None, typer.Option(
           "--flow", metavar="TARGET", help="A flow whose runs get their graph's edges, "
           "critical path and pool lanes drawn (repeatable).")] = None,
       allow_host: Annotated[list[str] | None, typer.Option(
           "--allow-host", metavar="NAME", help="Also answer requests for this host name "
           "(repeatable). Only the loopback names and the --host address are answered "
           "otherwise, which keeps web pages elsewhere out (DNS rebinding).")] = None) -> None:
    """Browse the runs kept in history in a web browser (read-only; Ctrl-C stops it)."""
    from .._record.history import default_path
    from .ui import UiError, is_loopback, serve

    given = history or _options["history"]
    if given is None and os.environ.get("FLOWDSL_HISTORY", "").strip().lower() in _OFF:
        raise _fail("history is off (FLOWDSL_HISTORY=off): there are no runs to browse; "
                    "pass --history PATH")
    path = Path(given or default_path()).expanduser()
    if not path.is_file():
        raise _fail(f"no history file at {path}: run a flow with history on first, or pass "
                    "--history PATH")
    plans = {}
    for target in flow or ():
        p = _plan(_load(target))
        plans[p.name or target] = p
    if not is_loopback(host):
        _err().print(f"[yellow]warning:[/] serving on {host}: anyone who can reach it can read "
                     "this history (there is no login)", soft_wrap=True)

    def ready(url: str) -> None:
        _out().print(f"flowdsl ui: browsing {path} at {url} (Ctrl-C stops)", soft_wrap=True)
        sys.stdout.flush()  # a pipe is block-buffered: whoever reads it wants the address now

    try:
        serve(path, host=host, port=port, open_browser=not no_browser, plans=plans,
              on_ready=ready, allow_hosts=allow_host or ())
    except UiError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        pass
