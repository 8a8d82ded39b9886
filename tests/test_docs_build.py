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


def test_every_page_is_in_a_table_of_contents() -> None:
    """A reader can reach every page from the index (Sphinx fails the build for a page in no
    toctree too; this test names the pages, and is quick)."""
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md")
             if "_build" not in p.parts}
    listed = {"index"}
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(encoding="utf-8"),
                                flags=re.DOTALL):
            folder = page.parent.relative_to(DOCS)
            for line in block.splitlines():
                entry = line.strip()
                if entry.startswith("/"):       # relative to docs/, not to this page
                    listed.add(entry.lstrip("/"))
                elif entry and not entry.startswith(":"):
                    listed.add((folder / entry).as_posix())
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


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_module_paths_named_in_the_source_exist() -> None:
    """Every ``flowdsl.x.y`` a docstring or comment names can be imported (modules were moved
    into layers once and eleven docstrings kept naming the old ones), and so can every
    private module named in double backquotes."""
    package = ROOT / "flowdsl"
    missing = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        # A name that opens a string literal ("flowdsl.task.id") is data, such as an
        # OpenTelemetry attribute namespaced by the library, not a module reference.
        for match in re.finditer(r"(?<![\"'])\bflowdsl(?:\.\w+)+", text):
            name = match.group(0)
            if name != "flowdsl.tools" and not _resolves(name):  # flowdsl.tools: a logger
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        for match in re.finditer(r"``(_\w+)``", text):
            stem = match.group(1)
            if (any(package.rglob(f"{stem}.py")) or any(package.rglob(f"{stem}/"))
                    or stem.startswith("__") or not stem[1:].islower()):
                continue
            defined = re.search(rf"^\s*(?:async def|def|class)?\s*{stem}\b", text, re.M)
            if defined is None and f"{stem} =" not in text and f"def {stem}" not in text:
                missing.append(f"{path.relative_to(ROOT)}: ``{stem}``")
    assert not missing, "names of modules that do not exist:\n" + "\n".join(missing)


def test_timeline_usage_example_runs(tmp_path: Path) -> None:
    """The usage lines in flowdsl/_report/timeline.py's docstring work as written."""
    from flowdsl._report import timeline

    usage = [line.strip() for line in (timeline.__doc__ or "").splitlines()
             if "import save_timeline" in line]
    assert usage, "the timeline module's docstring shows how to import save_timeline"
    namespace: dict[str, object] = {}
    exec(usage[0], namespace)  # our own docstring's line
    assert namespace["save_timeline"] is flowdsl.save_timeline


def test_readme_is_short_and_its_links_resolve() -> None:
    """README.md stays an entry page (<= 200 lines, the two set-up commands first) and every
    relative link in it names a file of the checkout (they are read on GitHub, where Sphinx's
    checks do not apply)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    assert first is not None
    commands = first.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("examples/demo.py")
    assert commands[1].endswith(".venv/bin/python -m pytest -q")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links
               if "://" not in link and not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
