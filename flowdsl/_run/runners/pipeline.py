"""Pipeline mode: data flows along ``>>``; over ``items``, stages overlap like an assembly line.

Without items this is the parallel drive loop (stage tasks receive their predecessors'
outputs, as in every mode). With items, every task is a stage that takes items one at a time,
in order, from a bounded inbox: item *i* enters a stage once every predecessor stage has
finished it, and a full inbox makes the stages before it wait (backpressure). N items through
S equal stages take about N + S - 1 stage-times instead of N x S. Items are pulled lazily;
once the run stops, no further item is pulled. Once every task has finished an item, the core
releases it (its records folded into a per-task summary, only its sinks' outputs kept), so
memory stays flat over any number of items.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..._plan.planner import Plan
from ..._plan.policy import Mode, ranked, worker_limit
from ..core import Core, Item
from .base import RunOptions, drive_plan


class PipelineRunner:
    mode: ClassVar[str] = Mode.PIPELINE.value

    async def run(self, core: Core, plan: Plan, item: Item, options: RunOptions) -> None:
        core.child_limit = worker_limit(Mode.PIPELINE, options.max_concurrency)
        if options.items is None:
            await drive_plan(core, plan, item, workers=core.child_limit,
                             ranked=ranked(plan, Mode.PIPELINE, core.priorities))
            return
        await _stream(core, plan, options)


async def _stream(core: Core, plan: Plan, options: RunOptions) -> None:
    inbox: dict[str, tuple[MemoryObjectSendStream[Item], MemoryObjectReceiveStream[Item]]]
    inbox = {t: anyio.create_memory_object_stream[Item](max(0, options.buffer))
             for t in plan.order}

    limiter = (anyio.CapacityLimiter(options.max_concurrency)
               if options.max_concurrency else None)

    async def feed(sends: list[MemoryObjectSendStream[Item]]) -> None:
        source: Any = options.items if options.items is not None else ()
        with contextlib.ExitStack() as stack:
            for s in sends:
                stack.enter_context(s)
            try:
                if inspect.isasyncgen(source) or hasattr(source, "__aiter__"):
                    i = 0
                    async for value in source:
                        if core.stopped:
                            break
                        await _put(core.new_item(i, value), sends)
                        i += 1
                else:
                    for i, value in enumerate(source):
                        if core.stopped:
                            break
                        await _put(core.new_item(i, value), sends)
            finally:
                # A generator of items left suspended would keep its resources (an open
                # file, a connection) until garbage collection: close it once we stop.
                with anyio.CancelScope(shield=True):
                    if inspect.isasyncgen(source):
                        await source.aclose()
                    elif inspect.isgenerator(source):
                        source.close()

    async def stage(tid: str, receive: MemoryObjectReceiveStream[Item],
                    outs: list[MemoryObjectSendStream[Item]]) -> None:
        need = max(1, len(plan.predecessors[tid]))
        arrived: dict[int, Item] = {}
        counts: dict[int, int] = {}
        nxt = 0
        with contextlib.ExitStack() as stack:
            stack.enter_context(receive)
            for s in outs:
                stack.enter_context(s)
            async for it in receive:
                arrived[it.index] = it
                counts[it.index] = counts.get(it.index, 0) + 1
                while counts.get(nxt) == need:  # strictly in item order
                    del counts[nxt]
                    current = arrived.pop(nxt)
                    if core.stopped:
                        return
                    if limiter is None:
                        await core.run_task(tid, current)
                    else:  # max_concurrency bounds the item-stages working at once
                        async with limiter:
                            await core.run_task(tid, current)
                    current.left -= 1
                    if not current.left:  # every task has finished this item
                        core.release_item(current)
                    for s in outs:
                        await s.send(current)
                    nxt += 1

    async with anyio.create_task_group() as tg:
        for tid in plan.order:
            succ = plan.successors[tid]
            tg.start_soon(stage, tid, inbox[tid][1], [inbox[s][0].clone() for s in succ])
        tg.start_soon(feed, [inbox[s][0].clone() for s in plan.sources])
        for send, _ in inbox.values():
            send.close()  # only the clones stay open, so each inbox ends with its senders


async def _put(it: Item, sends: list[MemoryObjectSendStream[Item]]) -> None:
    for s in sends:
        await s.send(it)
