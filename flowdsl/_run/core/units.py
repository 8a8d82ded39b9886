"""Groups of tasks that run as one unit: a Fragment or an embedded Flow with ``.when()`` or
``.with_options(timeout=, trigger=)``, as the core applies them.

The planner flattens every group into its tasks (a unit adds no node), and materialize lists
each group's members and entry tasks. At run time:

- *condition*: when the first member of a group is ready, the group's conditions are tested
  once for that item (on the context, or on other tasks' outputs); if one fails, that member
  and every later one are skipped with the group's reason.
- *timeout*: the group's clock starts when its first member starts; each member runs under a
  cancel scope with the group's deadline, and a member cut off (or not yet started) when it
  passes ends ``timed_out`` with a :class:`~flowdsl.TaskTimeout` of kind ``"group"``.
- *trigger*: the group's entry tasks apply the group's trigger rule (unless they set their
  own) to the tasks before the group.
- *retries* (groups.py): the first of its members the runner hands to the core drives the group
  (every input it takes from outside is ready then: materialize made its entry tasks wait
  for all of them); the other members' turns wait for it and find their tasks final.

  The group-retry rule: after an attempt, the failed part (its failed, timed-out and
  cancelled members, and every member that depends on them inside the group) is reset and
  run again, after the group's backoff; the completed members are kept, and they are not
  rolled back between attempts (rollback runs only when the run ends failed). A mapped
  member re-runs only its children that did not complete, unless its input is computed
  again (a member before it re-runs), when all of them run again. Every call made stays an
  attempt on its member's (or child's) record, numbered across the group's attempts. Until
  the last attempt, a failure (a child's included) neither stops the run nor counts among
  its errors; if the run stops meanwhile, the failures held so far stand, and a failed
  part waiting out the backoff ends cancelled. Nested retried groups: the outermost one's
  retries apply.

Only groups with a condition or a timeout cost anything per task, and only for their members.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from ..._base.errors import TaskTimeout
from ..._graph.task import Group, Task, eval_condition

__all__ = ["Units", "context_defaults", "group_timeout"]


def context_defaults(groups: Sequence[Group]) -> dict[str, Any]:
    """The context defaults of the embedded flows, an outer flow's values over an inner
    one's (groups come inner first)."""
    out: dict[str, Any] = {}
    for g in groups:
        if g.unit.context:
            out.update(g.unit.context)
    return out


class Units:
    """The run-time side of a plan's groups (see the module docstring)."""

    def __init__(self, groups: Sequence[Group], tasks: Mapping[str, Task[Any]]) -> None:
        self.groups = list(groups)
        self.gated: dict[str, tuple[int, ...]] = {}  # member -> its conditioned groups
        self.timed: dict[str, tuple[int, ...]] = {}  # member -> its timed groups
        self.trigger: dict[str, str] = {}  # entry task -> the group's trigger rule
        self.retried: dict[str, int] = {}  # member -> its outermost retried group
        gated: dict[str, list[int]] = {}
        timed: dict[str, list[int]] = {}
        for n in range(len(self.groups) - 1, -1, -1):  # outer groups first
            g = self.groups[n]
            u = g.unit
            if u.condition is not None or u.guards:
                for m in g.members:
                    gated.setdefault(m, []).append(n)
            if u.timeout is not None:
                for m in g.members:
                    timed.setdefault(m, []).append(n)
            if u.retries:
                for m in g.members:
                    self.retried.setdefault(m, n)
            if u.trigger is not None:
                for s in g.sources:
                    if tasks[s].trigger == "all_success":  # a task's own rule wins
                        self.trigger[s] = u.trigger
        self.gated = {m: tuple(v) for m, v in gated.items()}
        self.timed = {m: tuple(v) for m, v in timed.items()}

    async def gate(self, tid: str, state: dict[Any, Any], context: Mapping[str, Any],
                   test_guards: Callable[[Any, str], Awaitable[str | None]]) -> str | None:
        """Why member ``tid`` is skipped by one of its groups (tested once per group and
        item, when its first member is ready), or None."""
        for n in self.gated[tid]:
            key = ("gate", n)
            if key not in state:
                state[key] = await self._test(n, context, test_guards)
            if state[key] is not None:
                return str(state[key])
        return None

    async def _test(self, n: int, context: Mapping[str, Any],
                    test_guards: Callable[[Any, str], Awaitable[str | None]]) -> str | None:
        u = self.groups[n].unit
        if u.condition is not None:
            ok = eval_condition(u.condition, context, f"the condition of group {u.name!r}")
            if not ok:
                return f"group {u.name!r} was skipped: its condition was false"
        if u.guards:
            why = await test_guards(u.guards, f"group {u.name!r}")
            if why is not None:
                return f"group {u.name!r} was skipped: {why}"
        return None

    def deadline(self, tid: str, state: dict[Any, Any]) -> tuple[float, str, float]:
        """The earliest deadline among member ``tid``'s timed groups (their clocks start
        with their first member), its group's name and timeout."""
        best: tuple[float, str, float] | None = None
        now = anyio.current_time()
        for n in self.timed[tid]:
            u = self.groups[n].unit
            at = state.setdefault(("deadline", n), now + u.timeout)  # type: ignore[operator]
            if best is None or at < best[0]:
                best = (at, u.name, u.timeout)  # type: ignore[assignment]
        assert best is not None
        return best


def group_timeout(tid: str, name: str, timeout: float, started: bool,
                  attempts: int) -> TaskTimeout:
    """The error of a member cut off by its group's timeout."""
    what = "was cut off" if started else "could not start"
    msg = f"task {tid!r} {what}: group {name!r} ran past its {timeout:g}s timeout"
    return TaskTimeout(msg, task_id=tid, attempts=attempts, kind="group")
