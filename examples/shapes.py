"""Shapes decided at run time, in one flow: a search whose results are fetched one task per
result (``tool.map``), inside a sub-flow run as one unit (a time bound and a retry for the
group, and its own context defaults); a classifier that picks one of several paths
(``flowdsl.switch``) joined by a ``none_failed_min_one_success`` task; and a cached tool
whose output is reused by the second run (status ``cached``; entries live in the history
file, here a temporary one).

Run it: ``python examples/shapes.py``.
"""

from __future__ import annotations

import os
import tempfile

import flowdsl
from flowdsl import Cache, ctx, switch, tool

CALLS: list[str] = []


@tool(registry=False)
def search(query: str) -> list[str]:
    """Pretend search: a few result URLs."""
    return [f"https://example.org/{query}/{i}" for i in range(4)]


@tool(registry=False, retries=2, timeout=5)
def fetch(url: str) -> str:
    """Fetch one page (one child task per URL)."""
    return f"page {url.rsplit('/', 1)[1]} about {url.split('/')[3]}"


@tool(registry=False, cache=Cache(ttl=3600))
def classify(pages: list[str]) -> str:
    """An expensive model call: cached by its input."""
    CALLS.append("classify")
    return "long" if len(pages) > 3 else "short"


@tool(registry=False)
def write(kind: str, pages: list[str]) -> str:
    return f"{kind} report of {len(pages)} pages"


@tool(registry=False)
def publish(note: str = "") -> str:
    return "published"


def build() -> flowdsl.Fragment:
    found = search(ctx("query")).named("search")
    pages = fetch.map(found).named("fetch").with_options(max_parallel=2)
    research = flowdsl.Flow("research", found >> pages,
                            context={"query": "flowdsl"}).with_options(timeout=30, retries=1)
    kind = classify(pages).named("classify")
    paths = switch(kind, {"long": write("long", pages).named("long"),
                          "short": write("short", pages).named("short")},
                   default=write("odd", pages).named("odd"), name="by_length")
    done = publish().named("publish").with_options(trigger="none_failed_min_one_success")
    return research >> kind >> paths >> done


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        history = os.path.join(tmp, "history.db")
        for n in (1, 2):
            r = flowdsl.run(build(), history=history)
            statuses = {t: r.tasks[t].status.value for t in ("classify", "long", "short")}
            print(f"run {n}: {r.status}; fetched {len(r.outputs['fetch'])} pages as "
                  f"{[t for t in r.tasks if t.startswith('fetch[')]}")
            print(f"  {statuses}; {r.outputs['long']!r}; {r.output}")
            print(f"  'short' skipped because: {r.tasks['short'].reason}")
            print(f"  context: {r.context}")
        print(f"classify was called {len(CALLS)} time(s) over two runs")


if __name__ == "__main__":
    main()
