"""The one scheduling loop: a ready heap served by a few long-lived workers.

Every kind of node goes through :func:`drive`: a runner's tasks (parallel and conditional
with their policy's order and concurrency, sequential with one worker in plan order), a
retried group's members on each attempt (runners/base.py and groups.py), and a mapped task's
children (fanout.py: nodes without edges, as many workers as the map's width).

State: ``waiting[n]`` counts the predecessors of node ``n`` inside the set not yet done; a
node enters the ``ready`` heap when it reaches zero, keyed by its rank (its place in
``ranked``, best first). ``workers`` coroutines pop the best ready node and call ``call`` on
it; when none is ready they park on an event until a finishing node releases successors. No
coroutine is spawned per node and there are no level barriers: a node starts the moment its
last predecessor is done and a worker is free. With one worker the greedy order is exactly
``ranked`` when ``ranked`` is topological (each next node's predecessors all came before it),
so sequential mode is this loop too.

Nodes without edges (a map's children) skip the heap: the ready list holds their ranks in
reverse and a pop takes the last one, so a wide map pays O(1) per child.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from ..._base.loop import call_soon

__all__ = ["drive", "inside"]

N = TypeVar("N")

#: How many times :func:`drive` has started, by what it drove ("plan", "group", "map");
#: tests/test_one_loop.py reads it to check no second scheduler comes back. One dict
#: increment per drive (not per node).
DRIVES: dict[str, int] = {"plan": 0, "group": 0, "map": 0}


async def drive(ranked: Sequence[N], call: Callable[[N], Awaitable[Any]], *, workers: int,
                stop: Callable[[], bool], succs: Mapping[N, Sequence[N]] | None = None,
                waiting: dict[N, int] | None = None, kind: str = "plan") -> None:
    """Call ``call(node)`` for every node of ``ranked`` (best first), each once its
    predecessors are done, at most ``workers`` at once, until all are done or ``stop()``
    says so (checked before each node starts).

    ``succs`` and ``waiting`` (node -> its successors, node -> how many predecessors it
    waits for, both within the set; ``waiting`` is consumed) give the edges; without them
    the nodes are independent. ``kind`` only labels the count in :data:`DRIVES`."""
    DRIVES[kind] += 1
    total = len(ranked)
    if not total:
        return
    push, pop = heapq.heappush, heapq.heappop
    rank: dict[N, int] = {}
    if succs is None:  # independent nodes: every one is ready, taken in rank order
        ready = list(range(total - 1, -1, -1))
        pop = list.pop
    else:
        assert waiting is not None
        # The heap holds ranks (plain ints compare fastest); ranked[r] is the node.
        rank = {t: r for r, t in enumerate(ranked)}
        ready = [r for r, t in enumerate(ranked) if not waiting[t]]  # sorted: a heap
    done = 0
    idle: list[anyio.Event] = []
    limit = max(1, min(workers, total))
    alive = 0
    coming = 0  # workers started or woken that have not looked at the heap yet
    topping = False
    spawn: Callable[[int], None] = lambda k: None  # noqa: E731 -- set once the group exists

    def top_up() -> None:
        # Runs only once the worker that asked for it has actually waited: then every ready
        # node nobody is on the way to gets a worker, all in the same scheduler tick (so a
        # remote executor can batch what they submit). A flow of instant tasks never waits
        # and runs on a single worker.
        nonlocal topping, coming
        topping = False
        if done >= total:  # all done: the workers may be gone, and their task group closed
            return
        extra = len(ready) - coming
        while idle and extra > 0:
            idle.pop().set()
            coming += 1
            extra -= 1
        if extra > 0 and not stop():
            spawn(extra)

    async def worker() -> None:
        nonlocal done, coming, topping
        coming -= 1
        while done < total and not stop():
            if not ready:
                ev = anyio.Event()
                idle.append(ev)
                await ev.wait()
                coming -= 1
                continue
            node = ranked[pop(ready)]
            if ready and not topping and (idle or alive < limit):
                topping = call_soon(top_up)
            await call(node)
            done += 1
            if succs is not None:
                for s in succs[node]:
                    left = waiting[s] - 1  # type: ignore[index]
                    waiting[s] = left  # type: ignore[index]
                    if not left:
                        push(ready, rank[s])
        while idle:  # the work is done or the loop stopped: let everyone out
            idle.pop().set()
            coming += 1  # (each woken worker counts itself off again)

    if limit == 1:  # one worker, awaited here: no task group, nothing to top up
        alive = coming = 1
        await worker()
        return
    async with anyio.create_task_group() as tg:

        def spawn(k: int) -> None:
            nonlocal alive, coming
            while k > 0 and alive < limit:
                alive += 1
                coming += 1
                k -= 1
                tg.start_soon(worker)

        spawn(len(ready))  # the first ready nodes start together (remote executors batch)


def inside(nodes: Sequence[N], preds: Mapping[N, Sequence[N]]
           ) -> tuple[dict[N, list[N]], dict[N, int]]:
    """The edges among ``nodes`` only: successors and predecessor counts for :func:`drive`
    (a predecessor outside the set is taken as done)."""
    members = set(nodes)
    succs: dict[N, list[N]] = {t: [] for t in nodes}
    waiting: dict[N, int] = {}
    for t in nodes:
        n = 0
        for p in preds[t]:
            if p in members:
                succs[p].append(t)
                n += 1
        waiting[t] = n
    return succs, waiting
