"""Defaults at the top (issue 22 part 4): ``flowdsl.run``/``arun`` assemble the default
history store, cache store and progress display and pass them down; the run layer knows no
defaults and reaches no layer above it; the fork helper is a property of the plan; and
``history=False`` holds in ``analyze``, ``optimize`` and ``simulate`` too."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import flowdsl
from flowdsl import tool

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowdsl"


@tool(registry=False)
def one(x: int) -> int:
    return x


@tool(registry=False)
def total(xs: list[int]) -> int:
    return sum(xs)


def _mapped() -> flowdsl.Flow:
    """A flow with a mapped task: its estimates read the map counts history keeps."""
    return flowdsl.Flow("mapped", total(one.map([1, 2, 3])))


def _script(code: str, tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("FLOWDSL_HISTORY", None)  # the default file lives under XDG_STATE_HOME
    env.pop("FLOWDSL_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


# -- the run layer reaches nothing above it ------------------------------------------------

RUN_NOTHING = """
    import sys
    import flowdsl

    @flowdsl.tool(registry=False)
    def one(x: int) -> int:
        return x

    @flowdsl.tool(registry=False)
    def total(xs: list) -> int:
        return sum(xs)

    flow = flowdsl.Flow("m", total(one.map([1, 2, 3])))
    {call}
    assert r.ok, r.error
    print(sorted(m for m in sys.modules
                 if m.startswith(("flowdsl._record", "flowdsl._report"))))
"""


def test_run_without_history_cache_or_progress_loads_no_record_or_report_module(
        tmp_path: Path) -> None:
    """``run(history=False, cache=False, progress=False)`` imports no record module and, of
    the report layer, only the entry module that assembles the (here absent) defaults."""
    out = _script(RUN_NOTHING.format(
        call="r = flowdsl.run(flow, history=False, cache=False, progress=False)"), tmp_path)
    assert out == "['flowdsl._report', 'flowdsl._report.entry']"
    assert not (tmp_path / "state").exists()  # no history file, no cache file


def test_the_run_layer_alone_loads_no_record_or_report_module(tmp_path: Path) -> None:
    """The run layer's entry, given no stores and no observers, runs without importing
    anything of the record or report layers (before, it reached them through hooks)."""
    out = _script(RUN_NOTHING.format(
        call="import anyio; from flowdsl._run.api import execute; r = anyio.run(execute, flow)"),
        tmp_path)
    assert out == "[]"
    assert not (tmp_path / "state").exists()


def test_the_default_run_opens_the_default_history(tmp_path: Path) -> None:
    """The other side: ``run()`` with the defaults records in the default history file
    (the top opened it and passed it down)."""
    out = _script("""
        import flowdsl

        @flowdsl.tool(registry=False)
        def one() -> int:
            return 1

        r = flowdsl.run(flowdsl.Flow("f", one()))
        print(r.ok, flowdsl.open_history().get_run(r.run_id)["status"])
        """, tmp_path)
    assert out == "True completed"
    assert (tmp_path / "state" / "flowdsl" / "history.db").exists()


def _hook_calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "hooks" and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def test_string_hooks_only_for_methods_users_call() -> None:
    """No hook serves a run: the run layer asks for none but the two ``RunResult`` methods a
    user calls (its notebook repr and ``gantt()``), and every hook asked for anywhere
    is one ``flowdsl._base.hooks.SERVICES`` lists with the reason it is a hook."""
    from flowdsl._base import hooks

    asked: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _hook_calls(path):
            asked.setdefault(name, set()).add(str(path.relative_to(PACKAGE)))
    assert set(asked) == set(hooks.SERVICES), "hooks asked for vs hooks.SERVICES"
    in_run = {n for n, files in asked.items() if any(f.startswith("_run") for f in files)}
    assert in_run == {"result_html", "save_timeline"}
    assert not {"aopen_history", "open_history", "progress", "in_notebook"} & set(asked)
    with pytest.raises(LookupError, match="not a service"):
        hooks.provide("progress", "flowdsl._report.progress:progress")


def test_public_arun_takes_the_run_layers_options_plus_the_defaults() -> None:
    """One list of run options: the public ``arun`` has the run layer's, with ``history``
    and ``progress`` in place of the concrete ``history_store`` and ``cache_store``."""
    from flowdsl._run.api import execute

    public = inspect.signature(flowdsl.arun).parameters
    inner = inspect.signature(execute).parameters
    assert set(public) == (set(inner) - {"history_store", "cache_store"}) | {"history",
                                                                            "progress"}
    for name in set(public) & set(inner):
        if name != "cache":  # a spec above (path, store), the policy below
            assert public[name].default == inner[name].default, name


def test_no_module_global_wires_the_default_registry() -> None:
    """``@tool`` registers in the default registry by a direct import (the registry module
    no longer patches a global into the tool module)."""
    import flowdsl._graph.tool as tool_module

    assert not hasattr(tool_module, "_default_registry")

    @tool
    def registered_here() -> None: ...

    assert flowdsl.default_registry["registered_here"] is registered_here


# -- the fork helper is the plan's business ---------------------------------------------------


@tool(registry=False, executor="process")
def in_a_process(x: int) -> int:
    return x


def test_needs_fork_is_a_property_of_the_plan() -> None:
    assert flowdsl.plan(in_a_process(1)).needs_fork
    assert flowdsl.plan(one(1) >> in_a_process.map([1, 2])).needs_fork
    assert not flowdsl.plan(one(1)).needs_fork
    assert not flowdsl.plan(in_a_process(1).with_options(executor="thread")).needs_fork
    assert flowdsl.plan(one(1).with_options(executor="process")).needs_fork


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_the_fork_helper_starts_for_a_plan_that_needs_it(tmp_path: Path) -> None:
    """A run of a plan with no process task starts no helper process, whatever tools were
    declared (before, declaring one anywhere made every later run start it); a run of a plan
    with one starts it before anything of the run (the default history store) starts a
    thread, so its workers are forked."""
    (tmp_path / "ptools.py").write_text(textwrap.dedent("""
        import flowdsl

        @flowdsl.tool(registry=False, executor="process")
        def far(x: int) -> int:
            return x

        @flowdsl.tool(registry=False, executor="inline")
        def near(x: int) -> int:
            return x
        """))
    head = """
        import sys
        sys.path.insert(0, ".")
        import flowdsl, ptools
        from flowdsl._run.executors import fork_helper_pid
        """
    assert _script(head + """
        r = flowdsl.run(ptools.near(1), backend="trio")
        print(r.ok, fork_helper_pid())
        """, tmp_path) == "True None"
    assert _script(head + """
        r = flowdsl.run(ptools.far(2))
        print(r.ok, fork_helper_pid() is not None, r.output)
        """, tmp_path) == "True True 2"


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_a_process_tool_in_the_default_registry_starts_the_helper_early(
        tmp_path: Path) -> None:
    """A process tool declared in the default registry: the first run, even one with no
    process task, starts the helper while the process has one thread, so a later run that
    needs workers forks them although the first run's history writer is alive by then
    (they see ``__main__``, not a spawned ``__mp_main__``)."""
    (tmp_path / "dtools.py").write_text(textwrap.dedent("""
        import sys
        import flowdsl

        @flowdsl.tool(executor="process")
        def far(i: int) -> str:
            return sys.modules["__main__"].__name__

        @flowdsl.tool(executor="inline")
        def near(i: int) -> int:
            return i
        """))
    out = _script("""
        import sys
        sys.path.insert(0, ".")
        import threading
        import flowdsl, dtools
        from flowdsl._run.executors import fork_helper_pid
        assert flowdsl.default_registry.forks
        assert flowdsl.run(dtools.near(1)).ok  # the default history: its writer stays
        print(fork_helper_pid() is not None, threading.active_count() > 1)
        r = flowdsl.run(flowdsl.parallel(dtools.far(1).named("a"), dtools.far(2).named("b")))
        print(sorted(r.outputs.values()))
        """, tmp_path)
    assert out.splitlines() == ["True True", "['__main__', '__main__']"]


def test_a_registry_knows_whether_it_holds_a_forking_tool() -> None:
    reg = flowdsl.ToolRegistry()
    reg.register(one)
    assert not reg.forks
    reg.register(in_a_process, name="p")
    assert reg.forks


# -- history=False holds everywhere ----------------------------------------------------------


@pytest.fixture
def default_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the default history file would be (a fresh folder, empty)."""
    home = tmp_path / "state"
    monkeypatch.delenv("FLOWDSL_HISTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def test_analyze_with_history_false_creates_no_default_history(default_history: Path) -> None:
    """Issue 22's bug: analyze() re-derived its settings and its simulations opened the
    default history for a flow with a mapped task (fixed before this test was written: it
    guards the fix, also for optimize, simulate, run and benchmark below)."""
    a = flowdsl.analyze(_mapped(), history=False)
    assert a.total_tasks == 2
    assert not default_history.exists()


def test_optimize_with_history_false_creates_no_default_history(default_history: Path) -> None:
    flowdsl.optimize(_mapped(), history=False)
    assert not default_history.exists()


def test_simulate_with_history_false_creates_no_default_history(default_history: Path) -> None:
    for mode in ("sequential", "parallel", "pipeline", "conditional"):
        sim = flowdsl.simulate(_mapped(), mode, history=False)
        assert sim.children == {"one": 1}  # no recorded count: the default
    assert not default_history.exists()


def test_run_and_benchmark_with_history_false_create_no_default_history(
        default_history: Path) -> None:
    assert flowdsl.run(_mapped(), history=False).output == 6
    flowdsl.benchmark(_mapped(), modes=("parallel",), repeat=1, warmup=0)
    assert not default_history.exists()


def test_history_default_is_the_default_file(default_history: Path) -> None:
    """The other side of the tests above: with ``history=None`` a run records in the
    default file, and analyze() reads its map counts from there."""
    r = flowdsl.run(_mapped())
    assert r.ok
    assert (default_history / "flowdsl" / "history.db").exists()
    assert flowdsl.simulate(_mapped()).sources["total"] == "history"
