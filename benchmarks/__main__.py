"""``python -m benchmarks [--quick] [--json FILE] [--gantt PNG] [--only NAME ...]``.

Progress goes to stderr, the tables (markdown, pasteable into docs/performance.md) to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._harness import Config, Progress, SuiteResult, markdown_table
from ._suites_default import suite_default
from ._suites_engine import core_count, suite_cpu, suite_overhead
from ._suites_flows import (
    suite_levels,
    suite_pipeline,
    suite_random,
    suite_reference,
    suite_wfcommons,
)
from ._suites_history import suite_history

Suite = Callable[[Config, Progress, dict[str, Any]], SuiteResult]

#: Run order matters: "levels" summarises figures the reference and random suites leave.
SUITES: dict[str, Suite] = {
    "default": suite_default, "reference": suite_reference, "random": suite_random,
    "levels": suite_levels, "wfcommons": suite_wfcommons, "overhead": suite_overhead,
    "cpu": suite_cpu, "pipeline": suite_pipeline, "history": suite_history,
}
#: Opt-in suites (``--only``): slower or needing extras; not part of the default run.
EXTRA: dict[str, str] = {"dask": "benchmarks.dask_bench:suite_dask"}
DEFAULT_GANTT = Path(__file__).resolve().parents[1] / "docs" / "img" / "reference_gantt.png"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    p.add_argument("--gantt", type=Path, metavar="PNG",
                   help="Gantt chart of the reference workflow (full mode default: "
                        "docs/img/reference_gantt.png; quick mode: none)")
    p.add_argument("--only", nargs="+", choices=[*SUITES, *EXTRA], metavar="SUITE",
                   help=f"run only these suites ({', '.join(SUITES)}; opt-in: "
                        f"{', '.join(EXTRA)})")
    return p


def _suite(name: str) -> Suite:
    if name in SUITES:
        return SUITES[name]
    module, _, attr = EXTRA[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # imported only when asked for


def _meta(cfg: Config, argv: Sequence[str]) -> dict[str, Any]:
    import flowdsl

    return {"command": " ".join(["python -m benchmarks", *argv]), "quick": cfg.quick,
            "python": platform.python_version(), "platform": platform.platform(),
            "cores": core_count(), "cpu_count": os.cpu_count(),
            "flowdsl": getattr(flowdsl, "__version__", "?"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _header(meta: dict[str, Any]) -> str:
    return (f"# flowdsl benchmarks ({'quick' if meta['quick'] else 'full'} mode)\n"
            f"`{meta['command']}` on {meta['cores']} cores, Python {meta['python']}, "
            f"{meta['platform']}, {meta['date']}")


def _section(r: SuiteResult) -> str:
    parts = [f"\n## {r.title}"]
    if r.skipped:
        return f"{parts[0]}\nskipped: {r.skipped}"
    parts.append(markdown_table(r.columns, r.rows))
    parts.extend(f"\n_{note}_" for note in r.notes)
    return "\n".join(parts)


def _targets(results: list[SuiteResult]) -> str:
    rows = [[t.name, t.goal, t.measured,
             {True: "met", False: "MISSED", None: "not measured"}[t.ok]]
            for r in results for t in r.targets]
    if not rows:
        return ""
    return "\n## Targets\n" + markdown_table(["target", "goal", "measured", ""], rows)


def _write_json(path: Path, meta: dict[str, Any], results: list[SuiteResult]) -> None:
    doc = {"meta": meta, "suites": {r.name: r.to_dict() for r in results},
           "targets": [t.to_dict() for r in results for t in r.targets]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected suites; print the tables; write JSON when asked."""
    args = _parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = Config.make(quick=args.quick)
    names = [n for n in [*SUITES, *EXTRA] if n in (args.only or SUITES)]
    gantt = args.gantt or (None if cfg.quick else DEFAULT_GANTT)
    progress = Progress(len(names))
    meta = _meta(cfg, argv)
    print(_header(meta), flush=True)
    shared: dict[str, Any] = {}
    results: list[SuiteResult] = []
    for name in names:
        progress.start(name)
        start = time.perf_counter()
        if name == "reference":
            result = suite_reference(cfg, progress, shared, gantt=gantt)
        else:
            result = _suite(name)(cfg, progress, shared)
        result.seconds = time.perf_counter() - start
        progress.step(f"done in {result.seconds:.1f} s"
                      + (f" (skipped: {result.skipped})" if result.skipped else ""))
        results.append(result)
        print(_section(result), flush=True)  # each table as soon as its suite ends
        if args.json:  # kept up to date, so an interrupted run still leaves its figures
            _write_json(args.json, meta, results)
    print(_targets(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
