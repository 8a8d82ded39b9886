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
- *retries*: the first of its members the runner hands to the core drives the whole group
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
from typing import Any, Protocol

import anyio
import anyio.abc

from .._base.errors import TaskTimeout
from .._graph.task import Group, Task, eval_condition
from .result import TaskRecord, TaskStatus

__all__ = ["Units", "context_defaults", "group_timeout", "group_turn"]


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

    def __init__(self, groups: Sequence[Group], tasks: Mapping[str, Task]) -> None:
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


_AGAIN = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED,
                    TaskStatus.UPSTREAM_FAILED})


class _Core(Protocol):
    """What the group driver needs of the core (see ``core.Core``)."""

    units: Units | None
    child_limit: int
    stopped: bool
    held: dict[tuple[str, int], list[BaseException]]
    preds: Mapping[str, tuple[str, ...]]
    plan: Any
    children: dict[str, list[str]]
    rng: Any

    async def run_task(self, tid: str, item: Any, driven: bool = False) -> TaskStatus: ...
    def release(self, errors: list[tuple[str, Any, BaseException]]) -> None: ...
    def sleep(self, seconds: float) -> Awaitable[Any]: ...
    def _finish(self, tid: str, item: Any, rec: TaskRecord | None, status: TaskStatus, *,
                reason: str | None = None) -> TaskStatus: ...


async def group_turn(core: _Core, tid: str, item: Any) -> TaskStatus:
    """The runner's turn for member ``tid`` of a retried group: the first turn drives the
    group, the others wait for it; then the member is final (or the run stopped)."""
    units = core.units
    assert units is not None
    key = ("run", units.retried[tid])
    done = item.units.get(key)
    if done is None:
        done = item.units[key] = anyio.Event()
        try:
            await _drive(core, units.retried[tid], item)
        finally:
            done.set()
    else:
        await done.wait()
    return item.status.get(tid, TaskStatus.PENDING)  # type: ignore[no-any-return]


async def _drive(core: _Core, n: int, item: Any) -> None:
    """Run group ``n``'s members, then its failed part again while retries are left (the
    group-retry rule in the module docstring)."""
    units = core.units
    assert units is not None
    group = units.groups[n]
    unit = group.unit
    inside = set(group.members)
    todo = [t for t in core.plan.order if t in inside]  # topological
    tries = unit.retries + 1
    for attempt in range(1, tries + 1):
        last = attempt == tries
        if not last:  # failures are held back: a retry may still mend them
            for t in todo:
                core.held[(t, item.index)] = []
        try:
            await _run_members(core, todo, item)
        except BaseException:  # the run stopped: the failures held so far stand
            if not last:
                core.release(_unhold(core, todo, item))
            raise
        held = _unhold(core, todo, item) if not last else []
        again = _failed_part(core, todo, item)
        if not again or last or core.stopped:
            core.release(held)  # these failures stand: the run hears of them now
            return
        delay = unit.backoff.delay(attempt, core.rng) if unit.backoff is not None else 0.0
        if delay > 0:
            try:
                await core.sleep(delay)
            except BaseException:
                why = f"the run stopped while it waited to retry with group {unit.name!r}"
                _give_up(core, again, item, why)
                raise
        _reset(core, again, item)
        # S30: the clocks of this group and of the groups inside it start over, and only
        # theirs. (Every group's clock was reset here: a member of a timed group beside this
        # one that started after the retry got a new, later deadline, and ran past it.)
        for k in range(len(units.groups)):
            if ("deadline", k) in item.units and inside.issuperset(units.groups[k].members):
                del item.units[("deadline", k)]
        todo = again


def _unhold(core: _Core, todo: Sequence[str], item: Any) -> list[tuple[str, Any, BaseException]]:
    """Take the failures held back for ``todo``'s attempt (a child's under its mapped task's
    id; each error names its own task)."""
    return [(getattr(e, "task_id", None) or t, item, e) for t in todo
            for e in core.held.pop((t, item.index), [])]


def _reset(core: _Core, again: Sequence[str], item: Any) -> None:
    """Make ``again`` (the failed part) ready to run: statuses and outputs go, records are
    rewound (their attempts stay)."""
    redo = set(again)
    for t in again:
        kids = core.children.get(t)
        if kids is not None:
            # Its input is the same unless a member before it runs again: then the children
            # that completed are kept, and only the others run again.
            same = not any(p in redo for p in core.preds[t])
            keep = frozenset(i for i, c in enumerate(kids)
                             if same and item.status.get(c) is TaskStatus.COMPLETED)
            for i, c in enumerate(kids):
                if i not in keep:
                    _rewind(item, c)
            item.units[("redo", t)] = keep
        _rewind(item, t)


def _rewind(item: Any, tid: str) -> None:
    item.status.pop(tid, None)
    item.outputs.pop(tid, None)
    rec = item.records.get(tid)
    if rec is not None:
        rec.status = TaskStatus.PENDING
        rec.error = rec.reason = rec.ended_at = None


def _give_up(core: _Core, again: Sequence[str], item: Any, why: str) -> None:
    """The run stopped while the group waited to retry: its failed part (and the failed
    children of its mapped members) will not run again and ends cancelled, the failures
    it was waiting to mend kept on the attempts of each record."""
    for t in again:
        for c in core.children.get(t, ()):
            if item.status.get(c) in _AGAIN:
                _cancel(core, item, c, why)
        _cancel(core, item, t, why)


def _cancel(core: _Core, item: Any, tid: str, why: str) -> None:
    rec = item.records.get(tid)
    if rec is not None:
        rec.error = None
    core._finish(tid, item, rec, TaskStatus.CANCELLED, reason=why)


def _failed_part(core: _Core, todo: Sequence[str], item: Any) -> list[str]:
    """The members to run again: those that failed, timed out or were cancelled, and every
    member downstream of them (in topological order)."""
    again: set[str] = set()
    for t in todo:
        if item.status.get(t) in _AGAIN or any(p in again for p in core.preds[t]):
            again.add(t)
    return [t for t in todo if t in again]


async def _run_members(core: _Core, todo: Sequence[str], item: Any) -> None:
    """Run ``todo`` (members, topological) as their dependencies inside the group finish,
    at most ``core.child_limit`` at once."""
    pending = set(todo)
    waiting = {t: sum(1 for p in core.preds[t] if p in pending) for t in todo}
    succs: dict[str, list[str]] = {t: [] for t in todo}
    for t in todo:
        for p in core.preds[t]:
            if p in pending:
                succs[p].append(t)
    limiter = anyio.CapacityLimiter(max(1, core.child_limit))

    async def one(t: str, tg: anyio.abc.TaskGroup) -> None:
        async with limiter:
            await core.run_task(t, item, True)
        for s in succs[t]:
            waiting[s] -= 1
            if not waiting[s]:
                tg.start_soon(one, s, tg)

    async with anyio.create_task_group() as tg:
        for t in todo:
            if not waiting[t]:
                tg.start_soon(one, t, tg)
