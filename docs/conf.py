"""Sphinx configuration of the flowdsl documentation (Markdown pages read by MyST).

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``; the test suite
does the same (tests/test_docs_build.py), so a warning (a broken link, a missing reference)
fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))       # cli_help: the CLI reference from --help
sys.path.insert(0, str(HERE.parent))          # flowdsl itself, also from a source checkout

import flowdsl  # noqa: E402

project = "flowdsl"
author = "flowdsl developers"
copyright = "flowdsl developers, MIT License"
release = version = getattr(flowdsl, "__version__", "0.1.0")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "cli_help",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# _build: the output; img/make_ui_screenshot.py is a script, not a page.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo"
html_title = "flowdsl"
html_static_path: list[str] = []

myst_enable_extensions = ["colon_fence", "deflist"]
# `[text](#a-heading)` links within and across pages resolve to headings up to this depth.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No network at build time (CI may have none): intersphinx inventories are optional, so no
# mapping is configured; references to the standard library stay plain text.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

nitpicky = False
