"""The reference workflow: a realistic tool-orchestration shape with resource constraints.

Four fetches of different latency share an ``http`` pool (3 connections), their parses feed a
validation and two joins, three enrichments go through a rate-limited ``api`` pool (2 calls at
once), then a risk score, a report stored through a ``db`` pool (1 connection) and two
notifications: 19 I/O-bound tools (they sleep), 22 dependencies, 8 levels.

Run it (``python examples/reference_workflow.py``) to see the sequential and the parallel
timings side by side; ``benchmarks`` uses :func:`reference_flow` for its first suite.
"""

from __future__ import annotations

from typing import Any

import anyio

import flowdsl
from flowdsl import tool

__all__ = ["POOLS", "reference_durations", "reference_flow"]

#: Pool capacities the workflow is meant to run under.
POOLS: dict[str, int] = {"http": 3, "api": 2, "db": 1}

#: Task id -> seconds at scale 1 (what each tool sleeps, and its expected duration).
_DURATIONS: dict[str, float] = {
    "fetch_orders": 0.30, "fetch_customers": 0.20, "fetch_inventory": 0.45,
    "fetch_prices": 0.30, "parse_orders": 0.10, "parse_customers": 0.08,
    "parse_inventory": 0.20, "parse_prices": 0.05, "validate_orders": 0.06,
    "join_orders_customers": 0.10, "join_inventory_prices": 0.15, "enrich_geo": 0.25,
    "enrich_credit": 0.30, "enrich_recommendations": 0.15, "score_risk": 0.10,
    "build_report": 0.15, "store_report": 0.10, "notify_email": 0.10, "notify_slack": 0.10,
}


@tool(resources={"http": 1}, registry=False)
async def fetch(source: str, latency: float) -> dict[str, Any]:
    """Fetch a data set from a remote service (simulated latency)."""
    await anyio.sleep(latency)
    return {"source": source, "rows": 100}


@tool(registry=False)
async def parse(raw: dict[str, Any], cost: float) -> dict[str, Any]:
    """Parse a raw payload into records."""
    await anyio.sleep(cost)
    return {**raw, "parsed": True}


@tool(registry=False)
async def validate(records: dict[str, Any], reference: dict[str, Any],
                   cost: float) -> dict[str, Any]:
    """Check records against reference data."""
    await anyio.sleep(cost)
    return {**records, "valid": True}


@tool(registry=False)
async def join(left: dict[str, Any], right: dict[str, Any], cost: float) -> dict[str, Any]:
    """Join two data sets."""
    await anyio.sleep(cost)
    return {"sources": [left["source"], right["source"]], "rows": left["rows"]}


@tool(resources={"api": 1}, registry=False)
async def enrich(data: dict[str, Any], kind: str, cost: float,
                 extra: Any = None) -> dict[str, Any]:
    """Call a rate-limited enrichment API."""
    await anyio.sleep(cost)
    return {"kind": kind, "rows": data["rows"]}


@tool(registry=False)
async def score(geo: dict[str, Any], credit: dict[str, Any], cost: float) -> float:
    """Score the risk of each order."""
    await anyio.sleep(cost)
    return 0.42


@tool(registry=False)
async def report(risk: float, recommendations: dict[str, Any], stock: dict[str, Any],
                 cost: float) -> str:
    """Build the report."""
    await anyio.sleep(cost)
    return f"risk={risk} recommendations={recommendations['kind']}"


@tool(resources={"db": 1}, registry=False)
async def store(text: str, cost: float) -> int:
    """Store the report in the database."""
    await anyio.sleep(cost)
    return len(text)


@tool(registry=False)
async def notify(text: str, channel: str, cost: float) -> str:
    """Send a notification."""
    await anyio.sleep(cost)
    return channel


def reference_durations(scale: float = 1.0) -> dict[str, float]:
    """Task id -> seconds each task takes at ``scale``."""
    return {k: v * scale for k, v in _DURATIONS.items()}


def reference_flow(scale: float = 1.0, *, priority: float | None = None) -> flowdsl.Flow:
    """The reference workflow, each tool sleeping its duration x ``scale``.

    Args:
        scale: multiplies every duration (benchmarks use < 1 in quick mode).
        priority: when given, every task gets this explicit priority, which turns the
            critical-path order off (equal priorities fall back to plan order, i.e. FCFS).
    """
    d = reference_durations(scale)
    opts: dict[str, Any] = {} if priority is None else {"priority": priority}

    def named(task: flowdsl.Task, task_id: str) -> flowdsl.Task:
        # Declared durations drive critical-path priority and plan.lower_bound().
        return task.named(task_id).with_options(expected_duration=d[task_id], **opts)

    raw = {s: named(fetch(s, d[f"fetch_{s}"]), f"fetch_{s}")
           for s in ("orders", "customers", "inventory", "prices")}
    parsed = {s: named(parse(raw[s], d[f"parse_{s}"]), f"parse_{s}") for s in raw}
    valid = named(validate(parsed["orders"], parsed["customers"], d["validate_orders"]),
                  "validate_orders")
    oc = named(join(valid, parsed["customers"], d["join_orders_customers"]),
               "join_orders_customers")
    ip = named(join(parsed["inventory"], parsed["prices"], d["join_inventory_prices"]),
               "join_inventory_prices")
    geo = named(enrich(oc, "geo", d["enrich_geo"]), "enrich_geo")
    credit = named(enrich(oc, "credit", d["enrich_credit"]), "enrich_credit")
    recs = named(enrich(oc, "recommendations", d["enrich_recommendations"], extra=ip),
                 "enrich_recommendations")
    risk = named(score(geo, credit, d["score_risk"]), "score_risk")
    text = named(report(risk, recs, ip, d["build_report"]), "build_report")
    sinks = [named(store(text, d["store_report"]), "store_report"),
             named(notify(text, "email", d["notify_email"]), "notify_email"),
             named(notify(text, "slack", d["notify_slack"]), "notify_slack")]
    return flowdsl.Flow("reference", sinks, resources=POOLS)


def main() -> None:
    """Run the workflow sequentially, then in parallel, and print both timings."""
    flow = reference_flow()
    bound = flowdsl.plan(flow).lower_bound(reference_durations(), POOLS)
    seq = flowdsl.run(flow, mode="sequential", resources=POOLS, history=False)
    par = flowdsl.run(flow, mode="parallel", resources=POOLS, history=False)
    print(f"sequential {seq.duration:.2f}s, parallel {par.duration:.2f}s "
          f"(speedup {seq.duration / par.duration:.2f}x, lower bound {bound:.2f}s)")


if __name__ == "__main__":
    main()
