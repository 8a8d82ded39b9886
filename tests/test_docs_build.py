"""The documentation site builds with warnings as errors, and covers every public name.

The examples of the pages themselves run as tests of their own (the root conftest.py collects
them with Sybil); this file checks the site as a whole: ``sphinx-build -W`` (a broken link, a
missing reference, a page in no table of contents, a docstring autodoc cannot read all fail
it), and that the API reference names every public name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowdsl

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_api_reference_lists_every_public_name() -> None:
    """docs/reference/api.md documents each name of flowdsl.__all__ (and nothing else)."""
    text = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\.\. auto(?:class|function|exception|data):: (\w+)$", text,
                            flags=re.MULTILINE)
    assert sorted(documented) == sorted(flowdsl.__all__)


def test_every_page_is_in_a_table_of_contents_or_written_elsewhere() -> None:
    """The pages other branches write are the only ones the toctrees may leave out (Sphinx
    itself fails the build for any other; this names the pages a reader could not reach)."""
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md")
             if "_build" not in p.parts}
    listed = {"index"}
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(encoding="utf-8"),
                                flags=re.DOTALL):
            folder = page.parent.relative_to(DOCS)
            for line in block.splitlines():
                if line and not line.startswith(":"):
                    listed.add((folder / line.strip()).as_posix())
    assert pages <= listed, f"pages in no toctree: {sorted(pages - listed)}"


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """``sphinx-build -W --keep-going -b html docs OUT`` succeeds, as CI runs it."""
    pytest.importorskip("sphinx", reason="building the docs needs the docs extra (sphinx)")
    pytest.importorskip("myst_parser", reason="building the docs needs the docs extra (myst)")
    pytest.importorskip("furo", reason="building the docs needs the docs extra (furo)")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index", "reference/api", "reference/cli", "howto/retries-timeouts"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    cli = (tmp_path / "html" / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "flowdsl history list" in cli and "Usage:" in cli
