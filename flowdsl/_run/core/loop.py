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
from typing import TypeVar

import anyio

from ..._base.loop import call_soon

__all__ = ["drive", "inside"]

N = TypeVar("N")
R = TypeVar("R")

#: How many times :func:`drive` has started, by what it drove ("plan", "group", "map");
#: tests/test_one_loop.py reads it to check no second scheduler comes back. One dict
#: increment per drive (not per node).
DRIVES: dict[str, int] = {"plan": 0, "group": 0, "map": 0}


async def drive(ranked: Sequence[N], call: Callable[[N], Awaitable[R] | None], *,
                workers: int, stop: Callable[[], bool],
                then: Callable[[N, R], None] | None = None,
                succs: Mapping[N, Sequence[N]] | None = None,
                waiting: dict[N, int] | None = None, ordered: bool = False,
                kind: str = "plan") -> None:
    """Await ``call(node)`` for every node of ``ranked`` (best first), each once its
    predecessors are done, at most ``workers`` at once, until all are done or ``stop()``
    says so (checked before each node starts). ``call`` may return None (nothing to await:
    the node is done at once); ``then(node, result)``, when given, sees each awaited result.
    (``call`` is a plain function returning the awaitable, so a node costs no coroutine of
    the loop's own: a wide map's children pay only for the core's.)

    ``ordered`` says ``ranked`` respects the edges (a topological order): with one worker,
    no node can then be waiting when its turn comes, so the edges need no counting and the
    nodes go in ``ranked`` order as if independent (sequential mode is this case).

    ``succs`` and ``waiting`` (node -> its successors, node -> how many predecessors it
    waits for, both within the set; ``waiting`` is consumed) give the edges; without them
    the nodes are independent. ``kind`` only labels the count in :data:`DRIVES`."""
    DRIVES[kind] += 1
    total = len(ranked)
    if not total:
        return
    push, pop = heapq.heappush, heapq.heappop
    rank: dict[N, int] = {}
    if ordered and workers <= 1:
        succs = None
    if succs is None:  # independent nodes: every one is ready, taken in rank order
        ready = list(range(total - 1, -1, -1))
        pop = list.pop
    else:
        assert waiting is not None
        # The heap holds ranks (plain ints compare fastest); ranked[r] is the node.
        rank = dict(zip(ranked, range(total)))
        ready = [rank[t] for t, n in waiting.items() if not n]
        heapq.heapify(ready)
    done = 0
    idle: list[anyio.Event] = []
    limit = max(1, min(workers, total))
    alive = 0
    coming = 0  # workers started or woken that have not looked at the heap yet
    topping = False
    spawn: Callable[[int], None] = _no_spawn  # set once the group exists

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
        # The loop's own names as locals: a closure cell costs more to read per node.
        heap, take, put, node_at, edges, count = ready, pop, push, ranked, succs, waiting
        start, after, halt = call, then, stop
        while done < total and not halt():
            if not heap:
                ev = anyio.Event()
                idle.append(ev)
                await ev.wait()
                coming -= 1
                continue
            node = node_at[take(heap)]
            if heap and not topping and (idle or alive < limit):
                topping = call_soon(top_up)
            aw = start(node)
            if aw is not None:
                result = await aw
                if after is not None:
                    after(node, result)
            done += 1
            if edges is not None:
                for s in edges[node]:
                    left = count[s] - 1  # type: ignore[index]
                    count[s] = left  # type: ignore[index]
                    if not left:
                        put(heap, rank[s])
        while idle:  # the work is done or the loop stopped: let everyone out
            idle.pop().set()
            coming += 1  # (each woken worker counts itself off again)

    if limit == 1:
        # One worker, run here: nobody to wake or top up, and with one worker a node is
        # ready or everything is done, so the same loop needs no counts and no cells.
        while ready and not stop():
            node = ranked[pop(ready)]
            aw = call(node)
            if aw is not None:
                result = await aw
                if then is not None:
                    then(node, result)
            if succs is not None:
                for s in succs[node]:
                    left = waiting[s] - 1  # type: ignore[index]
                    waiting[s] = left  # type: ignore[index]
                    if not left:
                        push(ready, rank[s])
        return
    try:
        async with anyio.create_task_group() as tg:

            def spawn(k: int) -> None:
                nonlocal alive, coming
                while k > 0 and alive < limit:
                    alive += 1
                    coming += 1
                    k -= 1
                    tg.start_soon(worker)

            spawn(len(ready))  # the first ready nodes start together (remote executors batch)
    finally:
        # spawn -> worker -> top_up -> spawn is a cycle of closures, and through ``call``
        # it holds the core and every record of the run: left to the cyclic collector, a
        # 10,000-task run's 30,000 objects cost a later run a full collection (30-40 ms).
        # Emptying one cell lets them all go by reference counting as soon as the run ends.
        spawn = _no_spawn


def _no_spawn(k: int) -> None:
    """:func:`drive`'s ``spawn`` before its task group exists and after it is gone."""


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
