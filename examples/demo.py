"""The main demo: a small research workflow run sequentially, then in parallel.

Three sources are fetched at different speeds, parsed and validated, joined, enriched through
a rate-limited API pool (capacity 2), scored two ways side by side, then reported. The script
prints what ran, in which order, when each task started and how long it took, and what
parallel execution bought against the theoretical lower bound of this flow.

Run it with ``python examples/demo.py``.
"""

from __future__ import annotations

import anyio

import flowdsl
from flowdsl import Flow, ctx, tool


@tool(expected_duration=0.3)
async def fetch(source: str, latency: float) -> dict:
    """Fetch a source (simulated network latency)."""
    await anyio.sleep(latency)
    return {"source": source, "rows": [f"{source}-{i}" for i in range(3)]}


@tool(expected_duration=0.1)
async def parse(doc: dict) -> list[str]:
    """Parse a fetched document into rows."""
    await anyio.sleep(0.1)
    return doc["rows"]


@tool(retries=2, backoff=0.05, expected_duration=0.05)
async def validate(rows: list[str]) -> list[str]:
    """Drop malformed rows."""
    await anyio.sleep(0.05)
    return [r for r in rows if "-" in r]


@tool(expected_duration=0.05)
async def join(a: list[str], b: list[str], c: list[str]) -> list[str]:
    """Join the validated rows of every source."""
    await anyio.sleep(0.05)
    return sorted(a + b + c)


@tool(resources={"api": 1}, timeout=5, expected_duration=0.2)
async def enrich(rows: list[str], part: int) -> list[str]:
    """Enrich half of the rows through a rate-limited API (pool ``api``)."""
    await anyio.sleep(0.2)
    return [f"{r}+meta" for r in rows[part::2]]


@tool(expected_duration=0.15)
async def score(rows: list[str], method: str) -> float:
    """Score the enriched rows."""
    await anyio.sleep(0.15)
    return len(rows) * (1.0 if method == "fast" else 0.9)


@tool(expected_duration=0.1)
async def report(fast: float, careful: float, audience: str) -> str:
    """Write the report."""
    await anyio.sleep(0.1)
    return f"report for {audience}: fast={fast:.1f} careful={careful:.1f}"


def build() -> Flow:
    """The flow: fetch x3 -> parse -> validate -> join -> enrich x2 (api pool) -> score x2."""
    docs = [fetch(name, latency).named(f"fetch_{name}")
            for name, latency in [("news", 0.3), ("papers", 0.5), ("forum", 0.2)]]
    valid = [validate(parse(d).named(f"parse_{d.id[6:]}")).named(f"validate_{d.id[6:]}")
             for d in docs]
    joined = join(*valid).named("join")
    parts = [enrich(joined, part).named(f"enrich_{part}") for part in (0, 1)]
    merged = [score(parts[0], "fast").named("score_fast"),
              score(parts[1], "careful").named("score_careful")]
    final = report(merged[0], merged[1], ctx("audience")).named("report").to_context("report")
    return Flow("research", final, "Fetch, clean, enrich and score three sources.",
                resources={"api": 2}, context={"audience": "the team"})


def show(result: flowdsl.RunResult) -> None:
    """Print what ran, in start order, with start offsets and durations."""
    print(f"\n{result.mode} run: {result.status} in {result.duration:.2f}s")
    records = sorted(result.tasks.values(), key=lambda r: r.started_at or 0.0)
    for rec in records:
        bar = " " * int((rec.started_at or 0) * 20) + "#" * max(1, int((rec.duration or 0) * 20))
        print(f"  {rec.id:<16} {rec.status.value:<10} start {rec.started_at or 0:5.2f}s  "
              f"took {rec.duration or 0:4.2f}s  |{bar}")


def main() -> None:
    flow = build()
    plan = flow.plan()
    print(f"{flow!r}\n{plan!r}")
    print("levels:", " | ".join(", ".join(level) for level in plan.levels))
    path, length = plan.critical_path()
    print(f"critical path ({length:.2f}s estimated): {' -> '.join(path)}")
    seq = flowdsl.run(flow, mode="sequential", history=False)
    show(seq)
    par = flowdsl.run(flow, mode="parallel", history=False)
    show(par)
    bound = plan.lower_bound(
        {t: r.duration or 0.0 for t, r in par.tasks.items()}, capacities={"api": 2})
    print(f"\n{par.context['report']}")
    print(f"parallel speedup {seq.duration / par.duration:.2f}x "
          f"({100 * (1 - par.duration / seq.duration):.0f}% faster); lower bound "
          f"{bound:.2f}s, efficiency {bound / par.duration:.2f}")


if __name__ == "__main__":
    main()
