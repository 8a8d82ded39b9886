"""``python -m flowdsl``: the same command line as the ``flowdsl`` console script."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run the command line; without the ``cli`` extra, say how to install it."""
    try:
        from ._report.cli import main as cli
        from .mcp.cli import register
    except ImportError as exc:  # typer or rich missing
        msg = f"the flowdsl command needs the cli extra: pip install 'flowdsl[cli]' ({exc})"
        raise SystemExit(msg) from None
    register()  # `flowdsl mcp`: its layer sits above the CLI's, so it is added from here
    cli(argv)


if __name__ == "__main__":
    main()
