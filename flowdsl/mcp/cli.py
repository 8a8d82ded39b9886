"""``flowdsl mcp serve``: the MCP server on the command line.

Added to the ``flowdsl`` command by :mod:`flowdsl.__main__` (this layer sits above the CLI's),
and importing the ``mcp`` package only when a command runs, so ``flowdsl`` works without it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .._base.errors import FlowError
from .._report.cli_common import EXIT_USAGE, ImportOpt, TargetError, _fail, app, import_modules

__all__ = ["mcp_app", "register"]

mcp_app = typer.Typer(help="The Model Context Protocol: serve flowdsl tools and flows to "
                           "agents.", no_args_is_help=True)


@mcp_app.command(epilog='Client configuration: {"command": "flowdsl", "args": ["mcp", '
                        '"serve", "--import", "mytools"]}')
def serve(targets: Annotated[list[str] | None, typer.Argument(
              metavar="[TARGET]...", help="Flows to serve as tools: file.py:name, "
              "package.module:name (a flow, or a function building one from its arguments) "
              "or a .json/.yaml workflow document.")] = None,
          imports: ImportOpt = None,
          registry: Annotated[str | None, typer.Option(
              "--registry", metavar="MODULE:NAME", help="Serve this ToolRegistry's tools "
              "(default: every tool the imported modules declared).")] = None,
          transport: Annotated[str, typer.Option(
              "--transport", "-t", help="stdio (a client starts this command) or http "
              "(streamable HTTP at http://HOST:PORT/mcp).")] = "stdio",
          host: Annotated[str, typer.Option("--host", help="Address to listen on (http)."
                                            )] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=1, max=65535,
                                            help="Port to listen on (http).")] = 8000) -> None:
    """Serve the registry's tools, the TARGET flows, run_plan and get_run over MCP."""
    try:
        import mcp  # noqa: F401

        from .server import build_server, entries, run_server
    except ImportError as exc:
        raise _fail(f"flowdsl mcp serve needs the mcp extra: pip install 'flowdsl[mcp]' "
                    f"({exc})") from None
    if transport not in ("stdio", "http"):
        raise _fail(f"--transport {transport!r}: expected stdio or http", EXIT_USAGE)
    try:
        import_modules(imports)
        reg = _registry(registry) if registry else None
        served = entries(targets or (), reg)  # problems are reported before serving
    except (TargetError, FlowError) as exc:
        raise _fail(str(exc)) from None
    run_server(build_server(served), transport=transport, host=host, port=port)


def _registry(spec: str) -> Any:
    from .._graph.registry import ToolRegistry
    from .._report.cli_common import _import

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise TargetError(f"--registry {spec!r}: expected module:name")
    obj: Any = _import(where)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, ToolRegistry):
        raise TargetError(f"--registry {spec!r} is not a flowdsl ToolRegistry")
    return obj


def register() -> None:
    """Add ``flowdsl mcp`` to the command line (once)."""
    if not any(g.name == "mcp" for g in app.registered_groups):
        app.add_typer(mcp_app, name="mcp")
