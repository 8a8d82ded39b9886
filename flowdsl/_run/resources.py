"""Named resource pools with capacities: atomic multi-pool acquisition with real, fair waiting.

Who gets units, and when a waiter is passed over, is decided by the scheduling policy's
:class:`~flowdsl._plan.policy.Grants` (all or nothing per demand, (aged, -priority, arrival)
order, head-of-line blocking per pool, aging) — the same object the simulator uses. This
module adds the waiting: an event per waiter, cancellation, and when to grant.

Units released by a finishing task are granted three scheduler ticks later, not at once: the
tasks that the finish made ready (often the next ones on the critical path) get to queue
first, and the units go to the best of all of them — list scheduling, not first come.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from .._base.loop import call_soon
from .._plan.policy import Grants

__all__ = ["Pools"]


class _Ticket:
    """What a waiting acquire holds: its event and whether it was served."""

    __slots__ = ("event", "granted", "task_id")

    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self.event = anyio.Event()
        self.granted = False


class Pools:
    """Resource pools by name, shareable by several concurrent runs on one event loop.

    Args:
        capacities: pool name -> capacity (an integer >= 1).
    """

    def __init__(self, capacities: Mapping[str, int] | None = None) -> None:
        self._grants: Grants[_Ticket] = Grants()
        self._free = self._grants.free  # the policy's own dict: read here on the hot path
        self._grant_pending = False
        for name, cap in (capacities or {}).items():
            self.add(name, cap)

    def add(self, name: str, capacity: int) -> None:
        """Define (or resize) pool ``name``."""
        self._grants.resize(name, capacity)
        self._grant()

    @property
    def capacities(self) -> dict[str, int]:
        return dict(self._grants.cap)

    def available(self, pool: str) -> int:
        """Free units of ``pool`` now."""
        return self._free[pool]

    def in_use(self) -> dict[str, int]:
        return self._grants.in_use()

    def waiting(self) -> list[str | None]:
        """Task ids waiting, in the order they will be served."""
        return [w.token.task_id for w in self._grants.waiters]

    def try_acquire(self, demand: Mapping[str, int], task_id: str | None = None) -> bool:
        """Take ``demand`` now if it fits and no waiter is queued for those pools."""
        self._grants.check(demand, task_id)
        return self._grants.try_take(demand)

    async def acquire(self, demand: Mapping[str, int], priority: float = 0.0,
                      task_id: str | None = None) -> None:
        """Wait until all of ``demand`` can be taken at once, then take it.

        Higher ``priority`` is served first; equal priorities in arrival order.
        """
        grants = self._grants
        grants.check(demand, task_id)
        if grants.take_now(demand):
            return
        ticket = _Ticket(task_id)
        w = grants.enqueue(demand, priority, ticket)
        self._grant()
        if ticket.granted:
            return
        try:
            await ticket.event.wait()
        except BaseException:
            if ticket.granted:  # granted and cancelled in the same instant: hand it back
                self.release(demand)
            else:
                grants.withdraw(w)
                self._grant()
            raise

    def release(self, demand: Mapping[str, int]) -> None:
        """Give ``demand`` back; the waiters it lets through are served a few ticks later."""
        self._grants.release(demand)
        if self._grants.waiters and not self._grant_pending:
            self._grant_pending = call_soon(self._deferred_grant)
            if not self._grant_pending:  # no event loop here: serve them now
                self._grant()

    def _deferred_grant(self, hops: int = 2) -> None:
        # The ticks after a finish: (0) the finishing worker releases, takes the best ready
        # task and schedules this; (1) the drive loop wakes or starts a worker for each other
        # ready task; (2) those workers take their tasks and queue them; (3) grant, to the
        # best of all of them — what the simulator assumes. Granting at (2) gave the units
        # to an older waiter ahead of a better task the same finish made ready.
        if hops:
            call_soon(lambda: self._deferred_grant(hops - 1))
            return
        self._grant_pending = False
        self._grant()

    def _grant(self) -> None:
        for w in self._grants.grant():
            ticket = w.token
            ticket.granted = True
            ticket.event.set()

    def statistics(self) -> dict[str, Any]:
        return {"capacity": self.capacities, "in_use": self.in_use(),
                "waiting": len(self._grants.waiters)}

    def __repr__(self) -> str:
        pools = ", ".join(f"{p}={self._free[p]}/{c}" for p, c in self._grants.cap.items())
        return f"<Pools {pools}>"
