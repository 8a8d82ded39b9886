"""nox sessions: ``nox -s tests`` runs the suite on every supported Python found here,
``nox -s lint`` runs ruff, ``nox -s typecheck`` runs ``mypy --strict`` over the package,
``nox -s docs`` builds the site with warnings as errors.

Supported Pythons are 3.10 to 3.13 (pyproject.toml's classifiers). An interpreter is taken from
``PATH`` (``python3.12``) or, where pyenv is installed, from pyenv's versions even when pyenv
does not expose it globally; one that is not found is skipped, and the session says which
were skipped (and fails if none was found).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ROOT = Path(__file__).resolve().parent

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


def find_python(version: str) -> str | None:
    """The path of a working interpreter of ``version`` (``"3.12"``), or None."""
    candidates = [shutil.which(f"python{version}")]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"),
                         reverse=True)
    for path in filter(None, candidates):
        # a pyenv shim exists for every installed version but fails unless it is selected
        probe = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return path
    return None


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The whole suite (``pytest -q``, extra arguments after ``--``) on each supported Python
    found, each in its own virtual environment under .nox/."""
    skipped: list[str] = []
    for version in PYTHONS:
        python = find_python(version)
        if python is None:
            session.warn(f"Python {version}: no interpreter found (PATH or pyenv), skipped")
            skipped.append(version)
            continue
        venv = ROOT / ".nox" / f"tests-{version}"
        if not (venv / "bin" / "python").exists():
            session.run(python, "-m", "venv", str(venv), external=True)
        py = str(venv / "bin" / "python")
        session.run(py, "-m", "pip", "install", "-q", "-e", ".[test]", external=True)
        session.log(f"Python {version} ({python}): the test suite")
        session.run(py, "-m", "pytest", "-q", *session.posargs, external=True)
    tested = [v for v in PYTHONS if v not in skipped]
    if not tested:
        session.error(f"no supported Python found (looked for {', '.join(PYTHONS)})")
    session.log(f"tested on Python {', '.join(tested)}"
                + (f"; skipped (not installed): {', '.join(skipped)}" if skipped else ""))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests, the benchmarks and the examples."""
    session.install("ruff>=0.4")
    session.run("ruff", "check", "flowdsl", "tests", "benchmarks", "examples", "noxfile.py",
                "conftest.py", "docs/conf.py", "docs/_ext")


@nox.session
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` over the package ([tool.mypy] in pyproject.toml), with the test
    extra installed so the optional dependencies' types are checked against too."""
    session.install("-e", ".[test]")
    session.run("mypy", "--strict", "flowdsl")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors, into docs/_build/html."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs",
                "docs/_build/html")
