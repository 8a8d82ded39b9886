"""What a user of flowdsl sees in a type checker, checked by tests/test_typing.py with
``mypy --strict``: a line ending in ``# E: <text>`` must be reported with ``<text>`` in its
message, and every other line must be clean (``assert_type`` lines check inferred types).

Only type-checked, never run or imported: everything sits in functions.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from typing_extensions import assert_type

import flowdsl
from flowdsl import Flow, RunResult, RunStatus, Task, TaskRecord, Tool, run, tool


@tool
def fetch(url: str) -> dict[str, int]:
    return {"n": len(url)}


@tool(retries=2, timeout=5.0, executor="async")
async def double(x: int) -> int:
    return 2 * x


@tool
def total(values: list[int]) -> int:
    return sum(values)


def tools_and_tasks() -> None:
    assert_type(fetch("a"), Task[dict[str, int]])
    assert_type(double(1), Task[int])  # an async tool: the awaited type
    assert_type(double.map([1, 2, 3]), Task[list[int]])
    assert_type(fetch.map(["a", "b"]), Task[list[dict[str, int]]])
    raw: Callable[[int], Coroutine[Any, Any, int]] = double.fn
    del raw
    assert_type(fetch.name, str)
    fetch(123)  # E: Argument 1 to "__call__" of "Tool" has incompatible type "int"
    total(double.map([1, 2]))  # a Task stands for its value
    double(fetch("a")["n"])  # so does a projection


def mapped_sub_flows() -> None:
    per = Flow("per", fetch("a") >> double(1))
    assert_type(per.map(url=["a", "b"]), Task[list[int]])  # the sub-flow's output, per element
    assert_type((fetch("a") >> double(1)).map(url=["a"]), Task[list[int]])
    total(per.map(url=["a"]).with_options(max_parallel=2))


def tool_options() -> None:
    same: Tool[[str], dict[str, int]] = fetch.with_options(timeout=3.0, retries=1)
    del same
    fetch.with_options(timout=3.0)  # E: Unexpected keyword argument "timout"
    fetch.with_options(retries="3")  # E: Argument "retries" to "with_options" of "Tool"
    fetch.with_options(cache="refresh", backoff={"initial": 0.1}, retry_on=(OSError,))
    task = fetch("a").with_options(timeout=1.0, trigger="all_done")
    assert_type(task, Task[dict[str, int]])
    double.map([1, 2]).with_options(max_parallel=2, max_children=10)
    fetch("a").with_options(name="x")  # E: Unexpected keyword argument "name"

    @tool(retires=2)  # E: Unexpected keyword argument "retires" for overloaded function "tool"
    def misspelt() -> None: ...

    @tool(name="renamed", capture=False)
    def renamed(x: int) -> str:
        return str(x)

    assert_type(renamed(1), Task[str])


def run_options() -> None:
    flow = total(double.map([1, 2, 3]))
    result = run(flow, mode="parallel", max_concurrency=4, history=False)
    assert_type(result, RunResult[int])
    run(flow, mod="parallel")  # E: Unexpected keyword argument "mod" for overloaded function "run"
    run(flow, mode="paralel")  # E: No overload variant of "run" matches argument types
    run(flow, timeout="5")  # E: No overload variant of "run" matches argument types
    run(flow, mode=flowdsl.Mode.SEQUENTIAL, backend="trio")
    named = Flow("named", [flow])
    assert_type(run(named).output, Any | None)  # a Flow's output type is not tracked
    seen: list[flowdsl.Event] = []
    run(flow, observers=[seen.extend])  # an event consumer: a callable taking a batch

    def consume(batch: Sequence[flowdsl.Event]) -> None:
        for event in batch:
            assert_type(event.kind, flowdsl.EventKind)
            assert_type(event.seq, int)

    run(flow, observers=[consume])
    run(flow, observers=[lambda batch: None, consume])
    run(flow, observers=[1])  # E: List item 0 has incompatible type "int"


async def arun_options() -> None:
    flow = fetch("a")
    result = await flowdsl.arun(flow, mode="sequential", continue_on_error=True)
    assert_type(result, RunResult[dict[str, int]])
    await flowdsl.arun(flow, retries=2)  # E: Unexpected keyword argument "retries" for overloaded


def result_fields() -> None:
    result = run(double(2))
    assert_type(result.output, int | None)
    assert_type(result.outputs, dict[str, Any])
    assert_type(result.status, RunStatus)
    assert_type(result.ok, bool)
    assert_type(result.tasks, dict[str, TaskRecord])
    assert_type(result.run_id, str)
    assert_type(result.duration, float)
    assert_type(result.started_at, datetime)
    assert_type(result.error, BaseException | None)
    assert_type(result.raise_for_error(), RunResult[Any])


def plan_simulate_benchmark() -> None:
    flow = total(double.map([1, 2, 3]))
    flowdsl.plan(flow, max_nodes=100)
    flowdsl.plan(flow, max_node=100)  # E: Unexpected keyword argument "max_node"
    flowdsl.simulate(flow, max_concurrency=2)
    flowdsl.simulate(flow, max_concurency=2)  # E: Unexpected keyword argument "max_concurency"
    flowdsl.benchmark(flow, repeat=1, max_concurrency=2)
    flowdsl.benchmark(flow, mode="parallel")  # E: Unexpected keyword argument "mode"
    flowdsl.benchmark(flow, max_concurrency="2")  # E: Argument "max_concurrency" to "benchmark"


def groups() -> None:
    part = fetch("a") >> total(double.map([1]))
    assert_type(part.with_options(timeout=5.0, retries=1), flowdsl.Fragment[int])
    named = Flow("g", [fetch("a")])
    assert_type(named.with_options(retries=2).when(lambda c: True), Flow[Any])
    named.with_options(retry=2)  # E: Argument "retry" to "with_options" of "_Grouped"
