"""Packaging metadata: a license file, an SPDX licence, classifiers that match
``requires-python``, project URLs and extras that install what they promise."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_license_is_an_spdx_expression_with_a_file(project: dict[str, Any]) -> None:
    """license = "MIT" (PEP 639) and the LICENSE file it ships is the MIT text."""
    meta = project["project"]
    assert meta["license"] == "MIT"
    assert meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    # setuptools reads SPDX expressions from version 77 on; an older one rejects the table.
    build = " ".join(project["build-system"]["requires"])
    minimum = re.search(r"setuptools>=(\d+)", build)
    assert minimum is not None and int(minimum.group(1)) >= 77
    assert not any(c.startswith("License ::") for c in meta["classifiers"]), \
        "PEP 639 forbids licence classifiers next to an SPDX expression"


def test_one_classifier_per_supported_python(project: dict[str, Any]) -> None:
    """Every 3.x from requires-python's floor to 3.13 has its classifier, and no other."""
    meta = project["project"]
    floor = re.fullmatch(r">=3\.(\d+)", meta["requires-python"])
    assert floor is not None
    expected = {f"3.{m}" for m in range(int(floor.group(1)), 14)}
    listed = {c.rsplit(" :: ", 1)[1] for c in meta["classifiers"]
              if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert listed == expected


def test_no_dependency_marker_below_requires_python(project: dict[str, Any]) -> None:
    """A python_version < X marker with X at or below the floor can never apply."""
    meta = project["project"]
    floor = tuple(int(p) for p in meta["requires-python"].removeprefix(">=").split("."))
    every = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        every += extra
    for req in every:
        m = re.search(r"python_version\s*<\s*['\"](\d+)\.(\d+)['\"]", req)
        assert m is None or (int(m.group(1)), int(m.group(2))) > floor, req


def test_project_urls(project: dict[str, Any]) -> None:
    """Homepage, source and issue tracker are declared."""
    urls = project["project"]["urls"]
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def test_extras(project: dict[str, Any]) -> None:
    """ruff lives in `dev` (no test runs it); `notebook` brings Jupyter and a kernel; `test`
    pulls in every optional library the suite imports."""
    extras = project["project"]["optional-dependencies"]
    assert "ruff" not in _names(extras["test"])
    assert "ruff" in _names(extras["dev"]) and "flowdsl[test]" in extras["dev"]
    assert {"jupyterlab", "ipykernel"} <= _names(extras["notebook"])
    assert any(r.startswith("flowdsl[") and "cli" in r and "plot" in r
               for r in extras["test"])
    assert {"nbclient", "ipykernel", "nbformat", "pytest"} <= _names(extras["test"])
    # no test runs the linter, so the test extra may leave it out
    assert not any("ruff" in p.read_text(encoding="utf-8")
                   for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
