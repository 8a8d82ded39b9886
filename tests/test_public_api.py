"""The public API: every exported name resolves and is documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flowdsl


@pytest.mark.parametrize("name", flowdsl.__all__)
def test_exported_name_resolves_and_has_a_docstring(name: str) -> None:
    """Each name in __all__ can be imported from flowdsl and carries a docstring."""
    obj = getattr(flowdsl, name)
    assert obj is not None
    assert (getattr(obj, "__doc__", None) or "").strip(), f"{name} has no docstring"


def test_all_has_no_duplicates_and_dir_lists_everything() -> None:
    """__all__ names each export once, and dir(flowdsl) shows the lazy ones too."""
    assert len(flowdsl.__all__) == len(set(flowdsl.__all__))
    assert set(flowdsl.__all__) <= set(dir(flowdsl))


def test_unknown_attribute_raises_attribute_error() -> None:
    """A misspelt name gives the usual AttributeError, naming it."""
    with pytest.raises(AttributeError, match="no attribute 'rnu'"):
        _ = flowdsl.rnu  # type: ignore[attr-defined]


def test_import_is_light() -> None:
    """`import flowdsl` loads none of the optional or heavy dependencies."""
    code = ("import sys, flowdsl; heavy = {'pydantic', 'dask', 'distributed', 'rich', "
            "'typer', 'matplotlib', 'sqlite3', 'yaml'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_version_matches_the_package_metadata() -> None:
    """flowdsl.__version__ agrees with the installed distribution."""
    from importlib.metadata import version

    assert flowdsl.__version__ == version("flowdsl")
