"""The examples run from a clean checkout and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo_prints_both_runs_and_the_speedup() -> None:
    """The main demo runs sequentially and in parallel and reports speedup and efficiency."""
    out = _run("demo.py")
    assert "sequential run: completed" in out
    assert "parallel run: completed" in out
    speedup = float(out.split("parallel speedup ")[1].split("x")[0])
    assert speedup > 1.2
    assert "report for the team" in out


@pytest.mark.parametrize("name", ["agent_plan.py"])
def test_other_examples_run(name: str) -> None:
    """Every other example exits cleanly and prints something."""
    assert _run(name).strip()
