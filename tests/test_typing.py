"""The typed public surface: the option TypedDicts agree with the tables they stand for, their
annotations resolve at run time, and tests/typecheck/usage.py type-checks as it says."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import flowdsl
from flowdsl._graph.spec import OPTIONS, TaskOptions, ToolOptions
from flowdsl._graph.task import _FAN_OPTIONS
from flowdsl._report import benchmark as benchmark_module
from flowdsl._run.options import BenchmarkRunOptions, RunOptions

ROOT = Path(__file__).resolve().parent.parent
USAGE = Path(__file__).resolve().parent / "typecheck" / "usage.py"


def _keys(typed_dict: type) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def test_tool_options_are_the_option_table() -> None:
    """@tool(...) and Tool.with_options take exactly the rows of OPTIONS; Task.with_options
    the per-task rows plus the fan-out options of a mapped task."""
    assert _keys(ToolOptions) == set(OPTIONS)
    per_task = {name for name, row in OPTIONS.items() if row.per_task}
    assert _keys(TaskOptions) == per_task | set(_FAN_OPTIONS)


def test_run_options_are_aruns_parameters() -> None:
    """run(**options) and arun take the same options: RunOptions' keys are arun's keyword
    parameters; benchmark's are those less the options it sets or refuses."""
    params = inspect.signature(flowdsl.arun).parameters.values()
    keywords = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert _keys(RunOptions) == keywords
    own = {"mode", "cache"} | set(benchmark_module._REFUSED)
    assert _keys(BenchmarkRunOptions) == keywords - own


@pytest.mark.parametrize("fn", [flowdsl.run, flowdsl.arun, flowdsl.benchmark, flowdsl.tool,
                                flowdsl.Tool.with_options, flowdsl.Task.with_options])
def test_annotations_resolve(fn: object) -> None:
    """The annotations (Unpack[...] included) resolve at run time, as the documentation's API
    pages and typing.get_type_hints need."""
    assert "return" in typing.get_type_hints(fn)


def test_what_users_see_in_a_type_checker(tmp_path: Path) -> None:
    """mypy --strict on tests/typecheck/usage.py reports exactly the lines marked
    ``# E: <text>``, each with that text: a misspelt run, tool or task option, a wrong option
    value, a bad tool argument; the assert_type lines (tool calls, .map(), RunResult fields)
    hold."""
    source = USAGE.read_text()
    expected = {n: m.group(1).strip() for n, line in enumerate(source.splitlines(), 1)
                if (m := re.search(r"  # E: (.*)$", line))}
    assert len(expected) >= 10
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-error-summary", "--hide-error-context", "--no-pretty",
         "--cache-dir", str(tmp_path / ".mypy_cache"), str(USAGE)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    found: dict[int, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r".*usage\.py:(\d+): error: (.*)$", line)
        if m:
            found.setdefault(int(m.group(1)), []).append(m.group(2))
    unexpected = {n: msgs for n, msgs in found.items() if n not in expected}
    assert not unexpected, proc.stdout
    missing = {n: text for n, text in expected.items()
               if not any(text in msg for msg in found.get(n, []))}
    assert not missing, proc.stdout
