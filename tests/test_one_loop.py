"""One scheduling loop (issue 22, part 1) and a core with a real interface (part 2).

Every kind of node goes through ``core.loop.drive``: a runner's tasks (sequential included),
each attempt of a retried group, a mapped task's children. These tests fail if a second
scheduler comes back: a run is counted through ``drive``, and the core package (where the
group and map code live) creates no task group or capacity limiter outside the loop. And no
module declares a ``Protocol`` listing private members (the core's interface is public)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import run, tl

import flowdsl
from flowdsl import Flow, TaskStatus
from flowdsl._run.core import loop

PACKAGE = Path(flowdsl.__file__).resolve().parent
CORE = PACKAGE / "_run" / "core"


@pytest.fixture
def drives() -> Iterator[dict[str, int]]:
    """How many times ``drive`` ran during the test, by what it drove."""
    before = dict(loop.DRIVES)
    counts: dict[str, int] = {}
    yield counts
    counts.update({k: loop.DRIVES[k] - before[k] for k in before})


def _counted(fn: Any) -> dict[str, int]:
    before = dict(loop.DRIVES)
    fn()
    return {k: loop.DRIVES[k] - before[k] for k in before}


@tl
async def noop(x: int = 0) -> int:
    return x


@pytest.mark.parametrize("mode", ["sequential", "parallel", "conditional", "pipeline"])
def test_every_mode_drives_its_tasks_through_the_loop(mode: str) -> None:
    n = _counted(lambda: run(noop(1) >> noop(2), mode=mode))
    assert n == {"plan": 1, "group": 0, "map": 0}


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_map_children_are_fed_by_the_loop(mode: str) -> None:
    seen: list[int] = []

    @tl
    async def rec(x: int) -> int:
        seen.append(x)
        return x

    n = _counted(lambda: run(rec.map(list(range(7))), mode=mode))
    assert n == {"plan": 1, "group": 0, "map": 1}
    assert seen == list(range(7))  # children start in index order


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_each_group_attempt_is_a_drive_over_its_members(mode: str) -> None:
    calls: list[int] = []

    @tl
    async def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) <= 2:  # the first two calls fail: the group needs three attempts
            raise ValueError("not yet")
        return x

    holder: dict[str, Any] = {}
    n = _counted(lambda: holder.setdefault(
        "r", run(Flow("g", flaky(1) >> noop(2)).with_options(retries=2), mode=mode)))
    assert holder["r"].ok
    assert n["group"] == 3 and n["plan"] == 1


def test_a_group_attempt_takes_its_members_in_the_runners_order() -> None:
    """Parallel mode with one worker: among a retried group's ready members, an explicit
    priority goes first, as it does for the run's other tasks (the group's attempt is the
    runner's loop over its members, not a scheduler of its own)."""
    order: list[str] = []

    def step(name: str) -> Any:
        async def fn() -> str:
            order.append(name)
            await anyio.sleep(0)
            return name

        fn.__name__ = name
        return tl(fn)

    low, high = step("low"), step("high")
    g = Flow("g", low().named("low") | high().with_options(priority=10).named("high"))
    r = run(g.with_options(retries=1), mode="parallel", max_concurrency=1)
    assert r.ok
    assert order == ["high", "low"]


def test_sequential_is_the_loop_in_plan_order() -> None:
    """With one worker and the plan's order as its rank, the loop's greedy order is the plan
    order, whatever the shape."""
    started: list[str] = []

    def step(name: str) -> Any:
        async def fn(*_: Any) -> str:
            started.append(name)
            return name

        fn.__name__ = name
        return tl(fn)().named(name)

    a, b, c, d, e = (step(n) for n in "abcde")
    p = flowdsl.plan(((a | b) >> c) | (d >> e))
    assert run(p, mode="sequential").ok
    assert started == list(p.order)


def test_drive_stops_when_told() -> None:
    """The stop predicate is checked before each node starts."""
    done: list[int] = []

    async def call(i: int) -> None:
        done.append(i)

    async def main() -> None:
        await loop.drive(range(10), call, workers=1, stop=lambda: len(done) >= 3, kind="map")

    anyio.run(main)
    assert done == [0, 1, 2]


def test_drive_honours_edges_and_rank() -> None:
    """Nodes wait for their predecessors inside the set; among ready ones the best rank goes
    first (one worker makes the order deterministic)."""
    preds = {"a": (), "b": ("a",), "c": (), "d": ("b", "c", "x")}  # x: outside the set
    ranked = ["c", "d", "b", "a"]
    succs, waiting = loop.inside(ranked, preds)
    seen: list[str] = []

    async def call(t: str) -> None:
        seen.append(t)

    async def main() -> None:
        await loop.drive(ranked, call, workers=1, stop=lambda: False, succs=succs,
                         waiting=waiting, kind="group")

    anyio.run(main)
    assert seen == ["c", "a", "b", "d"]


def _calls(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
    return out


def test_no_second_scheduler_in_the_core_package() -> None:
    """Only the loop creates a task group in the core package (groups, maps and the core
    itself live there), and nothing there bounds concurrency with a limiter of its own."""
    offenders = {}
    for path in sorted(CORE.glob("*.py")):
        names = _calls(ast.parse(path.read_text()))
        bad = names & {"create_task_group", "CapacityLimiter", "start_soon"}
        if path.name != "loop.py" and bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, f"a scheduler outside core/loop.py: {offenders}"
    seq = (PACKAGE / "_run" / "runners" / "sequential.py").read_text()
    assert "for " not in seq, "sequential mode is the loop with one worker, not a for-loop"


def test_no_protocol_lists_private_members() -> None:
    """The core's interface is public: no module describes it (or anything) as a Protocol
    over underscore-named members. One naming convention is not privacy: a Tool is a wrapt
    ObjectProxy, and wrapt requires a proxy's own attributes to start with ``_self_`` (so
    they are not forwarded to the wrapped function); _graph/spec.py's ToolLike lists two."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in ast.walk(tree):
            if not isinstance(cls, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in cls.bases}
            if "Protocol" not in bases:
                continue
            for stmt in cls.body:
                name = None
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = stmt.name
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    name = stmt.target.id
                if (name and name.startswith("_") and not name.startswith("__")
                        and not name.startswith("_self_")):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{cls.name}.{name}")
    assert not offenders, f"Protocols over private members: {offenders}"


def test_map_children_statuses_unchanged_by_the_loop() -> None:
    """A failed child still stops its siblings (they end cancelled) under the loop."""

    @tl
    async def boom(x: int) -> int:
        if x == 1:
            raise ValueError("bad")
        await anyio.sleep(0.2)
        return x

    r = run(boom.map([0, 1, 2, 3]), mode="parallel", max_concurrency=2)
    assert not r.ok
    st = {k: v.status for k, v in r.tasks.items()}
    assert st["boom[1]"] is TaskStatus.FAILED
    assert st["boom[2]"] is TaskStatus.CANCELLED and st["boom[3]"] is TaskStatus.CANCELLED


@pytest.mark.parametrize("shape", ["wide", "map", "group"])
def test_a_finished_run_leaves_no_cycle_holding_its_records(shape: str) -> None:
    """The loop's closures refer to each other (spawn, worker, top_up) and to the core:
    left as a cycle, they kept every record of a run for the cyclic collector, and a
    10,000-task run cost a later run a full collection. Once the result is dropped, the
    records go by reference counting (with the collector off, none is left as garbage)."""
    import gc

    from flowdsl import TaskRecord

    flows = {"wide": flowdsl.parallel(*[noop(i) for i in range(50)]),
             "map": noop.map(list(range(50))),
             "group": Flow("g", flowdsl.parallel(*[noop(i) for i in range(50)])
                           ).with_options(retries=1)}
    flow = flows[shape]
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        r = run(flow, mode="parallel", max_concurrency=4)
        assert r.ok and len(r.tasks) >= 50
        del r
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, TaskRecord)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert left == []
