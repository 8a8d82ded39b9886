"""A sub-flow of 3 steps mapped over N elements, against the same written as three chained
maps and as 3N static tasks (issue 27, part 3).

- timing: steps of ``step_ms`` (an async sleep), at most ``width`` elements (or children) in
  flight, parallel mode. Time to the first element done (its third step's end) and makespan,
  for ``Flow("per", a >> b >> c).map(xs)`` against ``c.map(b.map(a.map(xs)))``.
- overhead: the same shapes with no-op steps, against N static chains of 3 tasks (3N tasks,
  planned beforehand); the figure is the per-element cost of the mapped sub-flow against 3
  static tasks (goal: <= 1.5x), and of the chained maps for comparison.

No history; each figure is the best of ``repeats`` runs.
Run it alone: ``python -m benchmarks.subflow_bench [--quick] [--json out.json]``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

import flowdsl
from flowdsl import Flow, tool


@tool(registry=False)
async def step(x: Any) -> Any:
    """A no-op step: passes its input on."""
    return x


@tool(registry=False)
async def slow_step(x: Any, ms: float = 10.0) -> Any:
    """A step that takes ``ms`` milliseconds (an async sleep)."""
    await anyio.sleep(ms / 1000)
    return x


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, kept = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        t = time.perf_counter() - t0
        assert r.ok, r.error
        if t < best:
            best, kept = t, r
    return best, kept


def shapes(tool_: Any, n: int, width: int | None, **kw: Any
           ) -> tuple[flowdsl.Plan, flowdsl.Plan]:
    """The mapped sub-flow and the three chained maps over ``range(n)``, planned."""
    sub = Flow("per", tool_.stage(**kw).named("a") >> tool_.stage(**kw).named("b")
               >> tool_.stage(**kw).named("c"))
    opts = {} if width is None else {"max_parallel": width}
    mapped = sub.map(list(range(n))).named("per").with_options(**opts)
    m1 = tool_.map(list(range(n)), **kw).named("a").with_options(**opts)
    m2 = tool_.map(m1, **kw).named("b").with_options(**opts)
    m3 = tool_.map(m2, **kw).named("c").with_options(**opts)
    return flowdsl.plan(mapped), flowdsl.plan(m1 >> m2 >> m3)


def timing(n: int, step_ms: float, width: int, repeats: int) -> dict[str, Any]:
    """Time to the first element done, and makespan, of both shapes (seconds)."""
    sub, chained = shapes(slow_step, n, width, ms=step_ms)
    opts: dict[str, Any] = {"history": False, "mode": "parallel", "max_concurrency": width}
    t_sub, r_sub = _best(lambda: flowdsl.run(sub, **opts), repeats)
    t_chain, r_chain = _best(lambda: flowdsl.run(chained, **opts), repeats)
    first_sub = min(r_sub.tasks[f"per[{i}].c"].ended_at for i in range(n))
    first_chain = min(r_chain.tasks[f"c[{i}]"].ended_at for i in range(n))
    return {"timing_n": n, "step_ms": step_ms, "width": width,
            "subflow_first_done_s": first_sub, "chained_first_done_s": first_chain,
            "subflow_makespan_s": t_sub, "chained_makespan_s": t_chain,
            "first_done_speedup": first_chain / first_sub}


def overhead(n: int, repeats: int) -> dict[str, Any]:
    """Per-element engine cost of both shapes against 3 static tasks per element."""
    sub, chained = shapes(step, n, None)
    static = flowdsl.plan(flowdsl.parallel(*[
        flowdsl.chain(step(i).named(f"a{i}"), step.stage().named(f"b{i}"),
                      step.stage().named(f"c{i}")) for i in range(n)]))
    opts: dict[str, Any] = {"history": False, "mode": "parallel"}
    t_static, _ = _best(lambda: flowdsl.run(static, **opts), repeats)
    t_sub, _ = _best(lambda: flowdsl.run(sub, **opts), repeats)
    t_chain, _ = _best(lambda: flowdsl.run(chained, **opts), repeats)
    us = 1e6 / n
    return {"overhead_n": n, "static_us_per_element": t_static * us,
            "subflow_us_per_element": t_sub * us, "chained_us_per_element": t_chain * us,
            "subflow_vs_static": t_sub / t_static, "chained_vs_static": t_chain / t_static}


def run(n: int = 1_000, repeats: int = 3, step_ms: float = 10.0, width: int = 100
        ) -> dict[str, Any]:
    """The figures as a dict."""
    return {**timing(n, step_ms, width, repeats), **overhead(n, repeats)}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    figures = run(n=200 if quick else 1_000, repeats=1 if quick else 3)
    for k, v in figures.items():
        print(f"{k:26} {v:.4f}" if isinstance(v, float) else f"{k:26} {v}")
    if "--json" in argv:
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
