"""Flows that test_identity builds in several processes: ids must not depend on the process.

``FLOWDSL_TEST_CALLS`` (a file path) records each tool call as one line; ``FLOWDSL_TEST_FAIL``
names a tool that raises, so a first run can fail half-way and a second one resume it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import flowdsl
from flowdsl import Flow, tool


def _note(name: str) -> None:
    path = os.environ.get("FLOWDSL_TEST_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if os.environ.get("FLOWDSL_TEST_FAIL") == name:
        msg = f"{name} was told to fail"
        raise RuntimeError(msg)


@tool(registry=False)
def fetch(url: str) -> str:
    _note("fetch")
    return f"<{url}>"


@tool(registry=False)
def parse(page: str) -> int:
    _note("parse")
    return len(page)


@tool(registry=False)
def total(*counts: int) -> int:
    _note("total")
    return sum(counts)


def ingest(url: str) -> Flow:
    """A sub-flow built by a factory: two copies of it go into one flow."""
    return Flow("ingest", parse(fetch(url)))


def build() -> Flow:
    """Automatic ids throughout: three fetches, two embedded copies of ingest, one named task."""
    pages = [fetch(u) for u in ("a", "bb", "ccc")]
    counts = [parse(p) for p in pages]
    subs = [ingest("dddd"), ingest("eeeee")]
    return Flow("site", [*counts, *subs] >> total(*counts).named("sum"))


def describe(flow: Any) -> dict[str, Any]:
    """The plan as data: order and edges by id, and each task's tool."""
    p = flowdsl.plan(flow)
    return {"order": list(p.order), "preds": {k: list(v) for k, v in p.predecessors.items()},
            "tools": {k: t.tool.name for k, t in p.tasks.items()}}


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "plan":
        if len(sys.argv) > 2:  # build unrelated flows first: ids must not care
            for _ in range(int(sys.argv[2])):
                flowdsl.plan(fetch("x") >> parse(fetch("y")))
        print(json.dumps(describe(build())))
    elif command == "run":
        history = flowdsl.HistoryStore(sys.argv[2], store_outputs=True)
        resume = sys.argv[3] if len(sys.argv) > 3 else None
        result = flowdsl.run(build(), history=history, resume=resume)
        history.close()
        print(json.dumps({"run_id": result.run_id, "status": result.status,
                          "reasons": {k: r.reason for k, r in result.tasks.items()},
                          "statuses": {k: r.status.value for k, r in result.tasks.items()},
                          "output": result.output}))
