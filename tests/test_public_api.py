"""The public API: every exported name resolves and is documented."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

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


# -- one list of public names --------------------------------------------------------------------

INIT = Path(flowdsl.__file__)
#: Public sub-packages and modules: imported by name (``flowdsl.compat``), so they may appear as
#: attributes of the package once loaded.
SUBMODULES = {"compat", "mcp"}


def _declared(source: str) -> list[tuple[str, str, str | None]]:
    """The (module, name, alias) of each import in the TYPE_CHECKING block of ``source``."""
    tree = ast.parse(source)
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    out = []
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        out += [("." * node.level + (node.module or ""), a.name, a.asname) for a in node.names]
    return out


def _disagreements(source: str) -> list[str]:
    """How the TYPE_CHECKING block of ``source`` differs from the package's table."""
    declared = _declared(source)
    problems = [f"{name} is imported as {alias!r}: write `import {name} as {name}` so type "
                f"checkers see it re-exported" for _, name, alias in declared if alias != name]
    seen = {name: module for module, name, _ in declared}
    if len(seen) != len(declared):
        problems.append("a name is imported twice in the TYPE_CHECKING block")
    for name, module in sorted(flowdsl._HOME.items()):
        if seen.get(name) != module:
            problems.append(f"{name}: the table says {module}, the block says {seen.get(name)}")
    problems += [f"{name}: in the block, not in the table" for name in sorted(seen)
                 if name not in flowdsl._HOME]
    return problems


def test_the_type_checking_block_is_the_table() -> None:
    """The type checker's view (the TYPE_CHECKING block of flowdsl/__init__.py) names exactly
    the names of the one table, each from the module the table says, re-exported as itself."""
    problems = _disagreements(INIT.read_text())
    expected = "".join(f"    from {m} import {n} as {n}\n"
                       for n, m in sorted(flowdsl._HOME.items(), key=lambda x: (x[1], x[0])))
    assert not problems, "\n".join([*problems, "the block should read:", expected])


def test_the_block_check_can_fail() -> None:
    """A line missing from the block, a name it adds and a wrong module are each reported."""
    source = INIT.read_text()
    line = "    from ._graph.task import Flow as Flow\n"
    assert line in source
    assert _disagreements(source.replace(line, "")) == [
        "Flow: the table says ._graph.task, the block says None"]
    extra = line + "    from ._graph.task import Ref as Ref\n"
    assert _disagreements(source.replace(line, extra)) == ["Ref: in the block, not in the table"]
    moved = line.replace("._graph.task", "._graph.tool")
    assert _disagreements(source.replace(line, moved)) == [
        "Flow: the table says ._graph.task, the block says ._graph.tool"]


def test_all_the_loader_and_dir_derive_from_the_table() -> None:
    """__all__ is the table's names; each resolves (eagerly or lazily) to the object its module
    defines under that name; and the package shows no other public name."""
    assert flowdsl.__all__ == sorted(flowdsl._HOME)
    for name, module in flowdsl._HOME.items():
        home = importlib.import_module(module, "flowdsl")
        assert getattr(flowdsl, name) is getattr(home, name), name
        assert name in getattr(home, "__all__", [name]), f"{module}.__all__ lacks {name}"
    extra = {n for n, v in vars(flowdsl).items() if not n.startswith("_")
             and n not in flowdsl._HOME and not (n in SUBMODULES and inspect.ismodule(v))}
    assert not extra, extra
    assert set(dir(flowdsl)) >= set(flowdsl.__all__)


def test_only_the_lazy_modules_wait() -> None:
    """The modules loaded with the package are light: a name from a lazy module is not yet in
    the package's namespace after a fresh import, and one from an eager module is."""
    code = ("import flowdsl; g = vars(flowdsl); "
            "print(sorted(n for n, m in flowdsl._HOME.items() "
            "if (n in g) != (m in flowdsl._AT_IMPORT)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_the_reference_faces_live_in_flowdsl_compat() -> None:
    """The reference design's seven faces are defined in one public module, flowdsl.compat,
    and are the same objects at the top level."""
    import flowdsl.compat as compat

    faces = {"Workflow", "WorkflowEngine", "WorkflowTask", "ExecutionMode", "WorkflowOptimizer",
             "DependencyResolver", "ResourceManager"}
    assert set(compat.__all__) == faces
    for name in faces:
        assert getattr(flowdsl, name) is getattr(compat, name)
        assert flowdsl._HOME[name] == ".compat"
    assert {getattr(compat, n).__module__ for n in faces - {"ExecutionMode"}} == {
        "flowdsl.compat"}
    assert compat.ExecutionMode is flowdsl.Mode
    assert "public" in (compat.__doc__ or "") and "flowdsl" in (compat.__doc__ or "")
