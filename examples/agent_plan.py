"""An agent's plan as data: register a few local tools, show their schemas, reject a broken
plan with one grouped report, then run the good plan in parallel and print the timings.

The plan is the JSON an LLM planner would emit for "research these three topics and write a
brief": three searches side by side, a fetch and an extract per topic, a ranking and a
summary. Nothing here touches the network; the search sleeps to stand in for latency.
Run it with ``python examples/agent_plan.py`` (needs ``flowdsl[schema]``).
"""

from __future__ import annotations

import json
import time

import flowdsl
from flowdsl import ToolRegistry, tool

registry = ToolRegistry()


@tool(registry=registry, name="search.web", executor="async")
async def search(query: str, limit: int = 3) -> list[str]:
    """Search the (fake) web.

    Args:
        query: what to look for.
        limit: how many result URLs to return.
    """
    import anyio

    await anyio.sleep(0.3)  # stands in for network latency
    return [f"https://example.org/{query.replace(' ', '-')}/{i}" for i in range(limit)]


@tool(registry=registry, executor="async")
async def fetch(url: str) -> str:
    """Fetch a page.

    Args:
        url: the page's address.
    """
    import anyio

    await anyio.sleep(0.1)
    return f"<html>{url} says hello</html>"


@tool(registry=registry)
def extract(html: str) -> str:
    """Pull the text out of a page.

    Args:
        html: the page.
    """
    return html.removeprefix("<html>").removesuffix("</html>")


@tool(registry=registry)
def rank(texts: list[str], top: int = 2) -> list[str]:
    """Keep the most relevant texts (here: the longest).

    Args:
        texts: candidate texts.
        top: how many to keep.
    """
    return sorted(texts, key=len, reverse=True)[:top]


@tool(registry=registry)
def summarize(texts: list[str], style: str = "brief") -> str:
    """Write a summary.

    Args:
        texts: what to summarize.
        style: "brief" or "long".
    """
    return f"{style.upper()}: " + " | ".join(texts)


TOPICS = ["solar storage", "heat pumps", "grid batteries"]


def good_plan() -> dict:
    """The plan a planner model would produce."""
    tasks: list[dict] = []
    for n, topic in enumerate(TOPICS):
        tasks += [
            {"id": f"search_{n}", "tool": "search.web", "args": {"query": topic, "limit": 2},
             "timeout": 5, "retries": 1},
            {"id": f"fetch_{n}", "tool": "fetch",
             "args": {"url": {"$task": f"search_{n}", "path": [0]}}},
            {"id": f"extract_{n}", "tool": "extract", "args": {"html": {"$task": f"fetch_{n}"}}},
        ]
    tasks += [
        {"id": "rank", "tool": "rank",
         "args": {"texts": [{"$task": f"extract_{n}"} for n in range(len(TOPICS))],
                  "top": {"$ctx": "top"}}},
        {"id": "brief", "tool": "summarize", "args": {"texts": {"$task": "rank"}},
         "when": {"ctx": "top", "op": ">=", "value": 1}, "to_context": "brief"},
    ]
    return {"name": "research-brief", "mode": "parallel", "context": {"top": 2},
            "tasks": tasks}


def broken_plan() -> dict:
    """The same plan with the mistakes models make."""
    plan = good_plan()
    plan["tasks"][0]["tool"] = "search.wbe"                 # a misspelt tool
    plan["tasks"][1]["args"] = {"link": "https://x"}        # unknown and missing arguments
    plan["tasks"][3]["args"]["limit"] = "lots"              # wrong type
    plan["tasks"][-2]["depends_on"] = ["summary"]           # unknown task
    plan["tasks"][-1]["trigger"] = "whenever"               # unknown trigger rule
    return plan


def main() -> None:
    print("== tool schemas (OpenAI function-calling shape) ==")
    for schema in registry.schemas("openai")[:2]:
        print(json.dumps(schema, indent=2))
    print(f"... and {len(registry) - 2} more; flowdsl.plan_schema(registry) describes whole plans")

    print("\n== a broken plan: every problem, nothing run ==")
    try:
        flowdsl.load_flow(broken_plan(), registry)
    except flowdsl.PlanValidationError as exc:
        print(exc)

    print("\n== the good plan, in parallel ==")
    flow = flowdsl.load_flow(good_plan(), registry)
    print(f"levels: {[list(level) for level in flow.plan().levels]}")
    started = time.perf_counter()
    result = flowdsl.run(flow, history=False)
    wall = time.perf_counter() - started
    result.raise_for_error()
    for task_id, rec in result.tasks.items():
        print(f"  {task_id:<10} {rec.status.value:<9} {rec.started_at:6.3f}s -> "
              f"{rec.ended_at:6.3f}s")
    serial = sum((r.ended_at or 0) - (r.started_at or 0) for r in result.tasks.values())
    print(f"wall {wall:.2f}s for {serial:.2f}s of task time")
    print(result.context["brief"])


if __name__ == "__main__":
    main()
