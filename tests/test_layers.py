"""The house rule: each module imports only from its own layer or lower ones, and no two
modules import each other through a cycle, counting imports made inside functions and under
``TYPE_CHECKING``. Read from the source with ``ast``, so nothing has to be imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowdsl"

# Lowest first. A module's layer is the longest prefix of its dotted name listed here.
LAYERS = [
    "flowdsl._base",
    "flowdsl._graph",
    "flowdsl._plan",
    "flowdsl._run",
    "flowdsl._data",
    "flowdsl._record.history",
    "flowdsl._record",          # simulate, optimizer: they read history
    "flowdsl._report",
    "flowdsl.compat",           # the app layer's reference-design faces (public)
    "flowdsl.mcp",              # the app layer's MCP face: client, server, `flowdsl mcp`
    "flowdsl.__main__",
    "flowdsl",                  # the package root wires the hooks and re-exports
]
RANK = {name: i for i, name in enumerate(LAYERS)}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> str:
    best = max((name for name in LAYERS if module == name or module.startswith(name + ".")),
               key=len)
    return best


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in known and n != module}
    # A package re-exporting its own modules does not depend on them.
    return {t for t in found if not (path.name == "__init__.py" and t.startswith(module + "."))}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_layers_are_known() -> None:
    """Every module belongs to a listed layer (a new sub-package must be placed)."""
    for module in _modules():
        assert _layer(module) in RANK, module


def test_no_module_imports_from_a_higher_layer() -> None:
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            if RANK[_layer(target)] > RANK[_layer(module)]:
                bad.append(f"{module} imports {target} ({_layer(target)} is above "
                           f"{_layer(module)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components, iteratively; any component of two or more
    modules is a cycle."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"import cycles: {cycles}"


#: Public sub-packages are faces of the app layer that users import by name (``flowdsl.mcp``,
#: ``flowdsl.compat``), not the private layers this count keeps few.
PUBLIC = {"flowdsl.compat", "flowdsl.mcp"}


def test_at_most_eight_modules_at_the_top_level() -> None:
    top = [m for m in _modules() if m.count(".") == 1 and m not in PUBLIC]
    assert len(top) <= 8, sorted(top)


def test_the_checks_can_fail() -> None:
    """The import reader sees imports inside functions and under TYPE_CHECKING."""
    source = PACKAGE / "_graph" / "task.py"
    known = set(_modules())
    assert "flowdsl._graph.spec" in _imports("flowdsl._graph.task", source, known)
    fake = PACKAGE.parent / "tests" / "_layer_probe.py"
    try:
        fake.write_text("def f():\n    from flowdsl._report import render\n"
                        "from typing import TYPE_CHECKING\n"
                        "if TYPE_CHECKING:\n    from flowdsl._record import history\n")
        found = _imports("flowdsl._base.probe", fake, known)
    finally:
        fake.unlink()
    assert {"flowdsl._report.render", "flowdsl._record.history"} <= found
