"""A Sphinx directive that inserts the ``--help`` text of every ``flowdsl`` command.

The CLI is built with typer, which carries its own copy of click, so sphinx-click cannot read
it. The help the CLI itself prints is the reference: each command's ``--help`` is run in a
child process at build time (a fixed width, no colour) and shown as a literal block, so the
page cannot drift from the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _commands() -> list[tuple[str, ...]]:
    """Every command path of the CLI, breadth first: (), ("run",), ("history", "list"), ..."""
    import typer

    from flowdsl._report.cli import app

    paths: list[tuple[str, ...]] = []
    todo: list[tuple[tuple[str, ...], Any]] = [((), typer.main.get_command(app))]
    while todo:
        path, cmd = todo.pop(0)
        paths.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                todo.append(((*path, name), sub))
    return paths


def _help(path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "96", "TERMINAL_WIDTH": "96", "NO_COLOR": "1",
           "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    proc = subprocess.run([sys.executable, "-m", "flowdsl", *path, "--help"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"flowdsl {' '.join(path)} --help exited {proc.returncode}: "
                           f"{proc.stderr.strip()}")
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip() + "\n"


class CliHelp(SphinxDirective):
    """``{cli-help}``: one section per command, each with its ``--help`` output."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for path in _commands():
            title = " ".join(("flowdsl", *path))
            section = nodes.section(ids=[nodes.make_id("cli " + title)])
            section += nodes.title(text=title)
            block = nodes.literal_block(text=_help(path))
            block["language"] = "text"
            section += block
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
