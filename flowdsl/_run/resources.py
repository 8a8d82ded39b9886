"""Named resource pools with capacities: atomic multi-pool acquisition with real, fair waiting.

State: ``_free[pool]`` units are free; ``_waiters`` is kept sorted by (−priority, arrival).
A demand is granted all at once or not at all, so tasks needing {A, B} and {B, A} can never
deadlock holding one each. Granting walks the waiters in order and, once a waiter cannot be
served, blocks its pools for everyone behind it (lower-priority work still flows through
other pools). A waiter overtaken ``AGING`` times by later arrivals moves to the front, so no
task waits forever even under a stream of higher-priority work.

Units released by a finishing task are granted two scheduler ticks later, not at once: the
tasks that the finish made ready (often the next ones on the critical path) get to queue
first, and the units go to the best of all of them — list scheduling, not first come.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from typing import Any

import anyio

from .._base.errors import ResourceError
from .._base.loop import call_soon

__all__ = ["Pools", "ResourceManager"]

#: How many later arrivals may be served before a waiter goes to the front of the queue.
AGING = 64


class _Waiter:
    __slots__ = ("demand", "event", "granted", "key", "overtaken", "task_id")

    def __init__(self, demand: Mapping[str, int], key: tuple[int, float, int],
                 task_id: str | None) -> None:
        self.demand = demand
        self.key = key
        self.task_id = task_id
        self.event = anyio.Event()
        self.granted = False
        self.overtaken = 0


class Pools:
    """Resource pools by name, shareable by several concurrent runs on one event loop.

    Args:
        capacities: pool name -> capacity (an integer >= 1).
    """

    def __init__(self, capacities: Mapping[str, int] | None = None) -> None:
        self._cap: dict[str, int] = {}
        self._free: dict[str, int] = {}
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._grant_pending = False
        for name, cap in (capacities or {}).items():
            self.add(name, cap)

    def add(self, name: str, capacity: int) -> None:
        """Define (or resize) pool ``name``."""
        if not isinstance(name, str) or not name:
            msg = f"pool names must be non-empty strings, got {name!r}"
            raise ResourceError(msg, pool=str(name))
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            msg = f"pool {name!r}: capacity must be an integer >= 1, got {capacity!r}"
            raise ResourceError(msg, pool=name)
        used = self._cap.get(name, 0) - self._free.get(name, 0)
        self._cap[name] = capacity
        self._free[name] = capacity - used
        self._grant()

    @property
    def capacities(self) -> dict[str, int]:
        return dict(self._cap)

    def available(self, pool: str) -> int:
        """Free units of ``pool`` now."""
        return self._free[pool]

    def in_use(self) -> dict[str, int]:
        return {p: self._cap[p] - self._free[p] for p in self._cap}

    def waiting(self) -> list[str | None]:
        """Task ids waiting, in the order they will be served."""
        return [w.task_id for w in self._waiters]

    def _check(self, demand: Mapping[str, int], task_id: str | None) -> None:
        for pool, amount in demand.items():
            cap = self._cap.get(pool)
            if cap is None:
                msg = f"task {task_id!r} needs unknown pool {pool!r}"
                raise ResourceError(msg, task_id=task_id, pool=pool)
            if amount > cap:
                msg = f"task {task_id!r} needs {amount} of pool {pool!r} (capacity {cap})"
                raise ResourceError(msg, task_id=task_id, pool=pool)

    def _fits(self, demand: Mapping[str, int]) -> bool:
        free = self._free
        return all(free[p] >= n for p, n in demand.items())

    def _take(self, demand: Mapping[str, int]) -> None:
        for p, n in demand.items():
            self._free[p] -= n

    def try_acquire(self, demand: Mapping[str, int], task_id: str | None = None) -> bool:
        """Take ``demand`` now if it fits and no waiter is queued for those pools."""
        self._check(demand, task_id)
        if any(p in w.demand for w in self._waiters for p in demand):
            return False
        if not self._fits(demand):
            return False
        self._take(demand)
        return True

    async def acquire(self, demand: Mapping[str, int], priority: float = 0.0,
                      task_id: str | None = None) -> None:
        """Wait until all of ``demand`` can be taken at once, then take it.

        Higher ``priority`` is served first; equal priorities in arrival order.
        """
        self._check(demand, task_id)
        if not self._waiters and self._fits(demand):
            self._take(demand)
            return
        w = _Waiter(demand, (1, -priority, next(self._seq)), task_id)
        bisect.insort(self._waiters, w, key=lambda x: x.key)
        self._grant()
        if w.granted:
            return
        try:
            await w.event.wait()
        except BaseException:
            if w.granted:  # granted and cancelled in the same instant: hand it back
                self.release(demand)
            else:
                self._waiters.remove(w)
                self._grant()
            raise

    def release(self, demand: Mapping[str, int]) -> None:
        """Give ``demand`` back; the waiters it lets through are served on the next tick."""
        for p, n in demand.items():
            self._free[p] += n
        if self._waiters and not self._grant_pending:
            self._grant_pending = call_soon(self._deferred_grant)
            if not self._grant_pending:  # no event loop here: serve them now
                self._grant()

    def _deferred_grant(self, hops: int = 1) -> None:
        # One more hop lets the workers woken by the same finish run their first step (and
        # queue their tasks) before the units are handed out.
        if hops:
            call_soon(lambda: self._deferred_grant(hops - 1))
            return
        self._grant_pending = False
        self._grant()

    def _grant(self) -> None:
        blocked: set[str] = set()
        kept: list[_Waiter] = []
        served: list[_Waiter] = []
        for w in self._waiters:
            if blocked.isdisjoint(w.demand) and self._fits(w.demand):
                self._take(w.demand)
                w.granted = True
                w.event.set()
                served.append(w)
            else:
                blocked.update(w.demand)
                kept.append(w)
        aged = False
        for w in served:  # count who was overtaken by a later arrival on a shared pool
            for old in kept:
                if old.key[2] < w.key[2] and not old.demand.keys().isdisjoint(w.demand):
                    old.overtaken += 1
                    if old.overtaken >= AGING and old.key[0]:
                        old.key = (0, *old.key[1:])  # to the front from now on
                        aged = True
        if aged:
            kept.sort(key=lambda x: x.key)
        self._waiters = kept

    def statistics(self) -> dict[str, Any]:
        return {"capacity": self.capacities, "in_use": self.in_use(),
                "waiting": len(self._waiters)}

    def __repr__(self) -> str:
        pools = ", ".join(f"{p}={self._free[p]}/{c}" for p, c in self._cap.items())
        return f"<Pools {pools}>"


class ResourceManager:
    """The reference design's face (register, acquire, release, waiting) over :class:`Pools`."""

    def __init__(self, pools: Pools | None = None) -> None:
        self.pools = pools or Pools()
        self._held: dict[str, dict[str, int]] = {}

    def register_resource_pool(self, resource_type: str, capacity: int) -> None:
        self.pools.add(resource_type, capacity)

    async def acquire_resources(self, task_id: str, required_resources: Mapping[str, int],
                                priority: float = 0.0) -> bool:
        """Wait until the resources are free and take them; returns True."""
        await self.pools.acquire(required_resources, priority, task_id)
        self._held[task_id] = dict(required_resources)
        return True

    def release_resources(self, task_id: str,
                          released_resources: Mapping[str, int] | None = None) -> None:
        held = self._held.pop(task_id, None)
        demand = released_resources if released_resources is not None else held
        if demand:
            self.pools.release(demand)

    @property
    def waiting_tasks(self) -> list[str | None]:
        return self.pools.waiting()

    @property
    def resource_pools(self) -> dict[str, int]:
        return self.pools.capacities

    @property
    def allocated_resources(self) -> dict[str, int]:
        return self.pools.in_use()
