"""A Sphinx directive that inserts the ``--help`` text of every ``flowdsl`` command.

The CLI is built with typer, which carries its own copy of click, so sphinx-click cannot read
it. The help the CLI itself prints is the reference: every command's ``--help`` is captured
at build time, in one child process (a fixed width, no colour), and shown as a literal
block, so the page cannot drift from the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# Run in one child process (one start-up, not one per command): prints each command's path,
# a separator line, its --help text, and another separator.
_CHILD = r"""
import contextlib, io, sys
import typer
from flowdsl._report.cli import app, main

todo = [((), typer.main.get_command(app))]
while todo:
    path, cmd = todo.pop(0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"])
        except SystemExit as exc:
            if exc.code:
                raise
    sys.stdout.write("\x00" + " ".join(path) + "\x00" + out.getvalue())
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            todo.append(((*path, name), sub))
"""


def _helps() -> list[tuple[str, str]]:
    """(command path, its --help text) for every command of the CLI, breadth first."""
    env = {**os.environ, "COLUMNS": "96", "TERMINAL_WIDTH": "96", "NO_COLOR": "1",
           "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"collecting the CLI's --help texts failed: {proc.stderr.strip()}")
    parts = proc.stdout.split("\x00")[1:]
    out = []
    for path, text in zip(parts[::2], parts[1::2]):
        lines = [line.rstrip() for line in text.splitlines()]
        while lines and not lines[0]:
            lines.pop(0)
        out.append((path, "\n".join(lines).rstrip() + "\n"))
    return out


class CliHelp(SphinxDirective):
    """``{cli-help}``: one section per command, each with its ``--help`` output."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for path, text in _helps():
            title = f"flowdsl {path}".strip()
            section = nodes.section(ids=[nodes.make_id("cli " + title)])
            section += nodes.title(text=title)
            block = nodes.literal_block(text=text)
            block["language"] = "text"
            section += block
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
