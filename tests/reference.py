"""A reference interpreter of flowdsl's execution semantics, written from docs/SEMANTICS.md.

It shares no code with the engine and never imports flowdsl: it reads the plain-data
description of a flow below (what tests/test_differential.py generates), and simulates one run
in virtual time. Each tool has a deterministic script (which calls fail, how long each takes,
what it returns), so the interpreter predicts every task's status, output, attempts and start
time, the run's status, ``ok`` and errors: not only an order, but fail-fast, timeouts,
backoff and pools. Rule numbers (S1...) cite docs/SEMANTICS.md.

Where the outcome depends on the order of two events at the same virtual instant (which the
rules leave open), the simulation sets ``Outcome.ambiguous`` and the test does not compare.
"""

from __future__ import annotations

import heapq
import json
import zlib
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FlowD", "GroupD", "Outcome", "Record", "Script", "SwitchD", "TaskD", "simulate"]


# -- the description ---------------------------------------------------------------------------

@dataclass
class Script:
    """A tool's behaviour by call number (1-based, counted over every run of a test)."""

    duration: float = 1.0
    fail: tuple[int, ...] = ()
    ret: Any = None  # a literal output; None: "<key>#<hash of the inputs>"


@dataclass
class TaskD:
    """A task: its id, the tasks whose outputs it takes (``deps``) and its options. A mapped
    task maps over ``over`` (a task id, whose output is a list of child keys) or ``values``."""

    id: str
    deps: list[str] = field(default_factory=list)
    trigger: str = "all_success"
    retries: int = 0
    backoff: float = 0.0  # the initial delay (factor 2); 0: none
    timeout: float | None = None
    when: str | None = None  # a context flag that must be true
    pool: str | None = None
    priority: float = 0.0
    rollback: bool = False
    cache: bool = False
    over: str | None = None
    values: list[str] | None = None
    max_parallel: int | None = None
    named: bool = False  # written tool.map(key=...) (map by name): the same semantics
    # A mapped sub-flow (S49-S52) over ``values``: the names of its steps, a chain run per
    # element (step j of element e calls the script "<e>/<j>"), and the sub-flow's options
    # as a unit, applied per element.
    sub: list[str] | None = None
    sub_when: str | None = None
    sub_timeout: float | None = None
    sub_retries: int = 0
    sub_backoff: float = 0.0

    @property
    def mapped(self) -> bool:
        return self.over is not None or self.values is not None


@dataclass
class SwitchD:
    """``switch(on, cases, default)``: each case (and the default) is a chain of task ids;
    ``name`` names the gates (``name['a']``, ``name[default]``)."""

    name: str
    on: str
    cases: dict[str, list[str]]
    default: list[str] | None = None
    skip: bool = False  # default=flowdsl.SKIP: no match skips every case on purpose (S34)


@dataclass
class GroupD:
    """An embedded Flow: stages of units, composed with ``>>``; its options."""

    name: str
    stages: list[list[Any]]  # units: a task id, a GroupD or a SwitchD
    when: str | None = None
    timeout: float | None = None
    retries: int = 0
    backoff: float = 0.0


@dataclass
class FlowD:
    """A flow: ``stages`` of units composed with ``>>`` (``|`` inside a stage); ``tasks`` by
    id; ``scripts`` by key (a task's id, or a map child's element); run options."""

    stages: list[list[Any]]
    tasks: dict[str, TaskD]
    scripts: dict[str, Script]
    context: dict[str, bool] = field(default_factory=dict)
    continue_on_error: bool = False
    rollback: bool = False
    pools: dict[str, int] = field(default_factory=dict)


def output_of(key: str, inputs: list[Any], script: Script) -> Any:
    """What a tool returns for ``key`` given its resolved inputs."""
    if script.ret is not None:
        return script.ret
    h = zlib.crc32(json.dumps(inputs, sort_keys=True).encode()) % 10_000
    return f"{key}#{h}"


# -- the outcome -------------------------------------------------------------------------------

@dataclass
class Record:
    id: str
    status: str = "pending"
    output: Any = None
    started_at: float | None = None
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (start, status)
    parent: str | None = None
    has_output: bool = False
    key: str | None = None  # a map child's element: the key of its script


@dataclass
class Outcome:
    status: str
    tasks: dict[str, Record]
    errors: list[str]  # the task ids of result.errors, in order
    rolled_back: list[tuple[str, Any]]  # rollbacks called, in order: (task, its call's output)
    calls: dict[str, int]
    stored: dict[tuple[str, str], Any]  # cache entries written
    ambiguous: str | None = None
    order_free: set[str] = field(default_factory=set)  # start time depends on plan order

    @property
    def ok(self) -> bool:
        return self.status == "completed"


class Cancel(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


FINAL_OK = ("completed", "cached")
BAD = ("failed", "timed_out", "cancelled", "upstream_failed")


# -- the structure -----------------------------------------------------------------------------

class Structure:
    """Edges, groups and gates of a FlowD, as SEMANTICS.md S3, S4 and S28 say."""

    def __init__(self, flow: FlowD) -> None:
        self.flow = flow
        self.preds: dict[str, list[str]] = {}
        self.order: list[str] = []  # every node, in composition order
        self.gates: dict[str, tuple[SwitchD, str | None]] = {}  # gate id -> (switch, key)
        self.groups: list[GroupD] = []
        self.members: dict[int, list[str]] = {}  # group index -> member ids (order)
        self.group_of: dict[str, list[int]] = {}  # member -> its groups, inner first
        self.entries: dict[int, list[str]] = {}
        self.first_gate: dict[str, bool] = {}
        self.links: list[tuple[str, Any]] = []  # (x, ("group", n)): resolved once known
        self._walk(flow.stages, None)
        for tid, t in flow.tasks.items():  # data edges (S1): a task waits for its arguments
            for d in [*t.deps, *([t.over] if t.over else [])]:
                self._edge(d, tid)
        for n in range(len(self.groups) - 1, -1, -1):  # S3: inner groups first
            inside = set(self.members[n])
            self.entries[n] = [m for m in self.members[n]
                               if not any(p in inside for p in self.preds[m])]
            for a, b in list(self.links):  # `x >> group` links x to every entry task
                if b == ("group", n):
                    for e in self.entries[n]:
                        self._edge(a, e)
        for n, g in enumerate(self.groups):  # S28: a retried group's entries wait for all
            if g.retries:
                inside = set(self.members[n])
                outside = [p for m in self.members[n] for p in self.preds[m] if p not in inside]
                for e in self.entries[n]:
                    for p in outside:
                        self._edge(p, e)
        self.succs: dict[str, list[str]] = {t: [] for t in self.order}
        for t in self.order:
            for p in self.preds[t]:
                self.succs[p].append(t)
        self.topo = self._topo()

    def _node(self, tid: str) -> None:
        if tid not in self.preds:
            self.preds[tid] = []
            self.order.append(tid)

    def _edge(self, a: str, b: str) -> None:
        self._node(a)
        self._node(b)
        if a not in self.preds[b]:
            self.preds[b].append(a)

    def _walk(self, stages: list[list[Any]], group: int | None) -> tuple[list[str], list[str]]:
        """Add the nodes of a chain of stages; return its (first, last) tasks."""
        first: list[str] = []
        prev: list[str] = []
        for k, stage in enumerate(stages):
            heads: list[str] = []
            tails: list[str] = []
            for unit in stage:
                h, t = self._unit(unit, group)
                heads += h
                tails += t
            for a in prev:
                for b in heads:
                    if isinstance(b, tuple):  # a group: its entries are known at the end
                        self.links.append((a, b))
                    else:
                        self._edge(a, b)
            if k == 0:
                first = heads
            prev = tails
        return first, prev

    def _unit(self, unit: Any, group: int | None) -> tuple[list[str], list[str]]:
        if isinstance(unit, str):
            self._node(unit)
            self._member(unit, group)
            return [unit], [unit]
        if isinstance(unit, GroupD):
            n = len(self.groups)
            self.groups.append(unit)
            self.members[n] = []
            _, last = self._walk(unit.stages, n)
            return [("group", n)], last  # type: ignore[list-item]
        assert isinstance(unit, SwitchD)
        heads: list[str] = []
        tails: list[str] = []
        # S35: cases given one same path share one gate, chosen by any of their keys
        shared: list[tuple[list[str], list[str]]] = []
        for k, p in unit.cases.items():
            for keys, q in shared:
                if q is p:
                    keys.append(k)
                    break
            else:
                shared.append(([k], p))
        paths: list[tuple[str, Any, list[str]]] = [
            (f"{unit.name}[{', '.join(map(repr, ks))}]", tuple(ks), p) for ks, p in shared]
        if unit.default is not None:
            paths.append((f"{unit.name}[default]", None, unit.default))
        for n, (gid, key, path) in enumerate(paths):
            self.first_gate[gid] = n == 0
            self._node(gid)
            self._member(gid, group)
            self.gates[gid] = (unit, key)
            self._edge(unit.on, gid)
            heads.append(gid)
            prev = gid
            for tid in path:
                self._node(tid)
                self._member(tid, group)
                self._edge(prev, tid)
                prev = tid
            if prev not in tails:
                tails.append(prev)
        return heads, tails

    def _member(self, tid: str, group: int | None) -> None:
        # a node is a member of the group being walked and of every group around it
        if group is None:
            return
        chain = [group]
        for n in range(group - 1, -1, -1):  # enclosing groups were opened before
            if self._inside(group, n):
                chain.append(n)
        for n in chain:
            if tid not in self.members[n]:
                self.members[n].append(tid)
                self.group_of.setdefault(tid, []).append(n)

    def _inside(self, inner: int, outer: int) -> bool:
        stack = list(self.groups[outer].stages)
        while stack:
            stage = stack.pop()
            for u in stage:
                if u is self.groups[inner]:
                    return True
                if isinstance(u, GroupD):
                    stack.extend(u.stages)
        return False

    def _topo(self) -> list[str]:
        left = {t: len(self.preds[t]) for t in self.order}
        out: list[str] = []
        ready = [t for t in self.order if not left[t]]
        while ready:
            t = ready.pop(0)
            out.append(t)
            for s in self.succs[t]:
                left[s] -= 1
                if not left[s]:
                    ready.append(s)
        assert len(out) == len(self.order), "the description has a cycle"
        return out


# -- the simulation ----------------------------------------------------------------------------

Proc = Generator[tuple[Any, ...], Any, None]


class _P:
    """A simulated process: a generator, what it waits for, and its children."""

    __slots__ = ("done", "dying", "gen", "kids", "name", "on_done", "token")

    def __init__(self, name: str, gen: Proc) -> None:
        self.name = name
        self.gen = gen
        self.token = 0
        self.done = False
        self.dying = False
        self.kids: list[_P] = []
        self.on_done: list[Any] = []


class Sim:
    """One run in virtual time: processes are generators yielding ``("sleep", d)``,
    ``("join", procs)`` or ``("acquire", pool, priority)``; a cancellation is a
    :class:`Cancel` thrown into them."""

    def __init__(self, flow: FlowD, calls: dict[str, int],
                 cache: dict[tuple[str, str], Any] | None, cache_read: bool,
                 resumed: dict[str, Any] | None) -> None:
        self.f = flow
        self.s = Structure(flow)
        self.calls = calls
        self.cache = cache if cache is not None else {}
        self.cache_read = cache_read
        self.stored: dict[tuple[str, str], Any] = {}
        self.now = 0.0
        self.seq = 0
        self.heap: list[tuple[float, int, Any, int, Any]] = []
        self.recs: dict[str, Record] = {t: Record(t) for t in self.s.order}
        self.children: dict[str, list[str]] = {}
        self.final: dict[str, str] = {}  # node -> its status as its successors see it
        self.outputs: dict[str, Any] = {}
        self.errors: list[str] = []
        self.stopped = False
        self.stop_at: float | None = None
        self.stopper: str | None = None
        # for rollback, in completion order, each call with its output (S37: a member that its
        # group's retry reset and called again is rolled back once per completed call)
        self.completed: list[tuple[str, Any]] = []
        self.ambiguous: str | None = None
        self.free = dict(flow.pools)
        self.waiters: list[tuple[float, int, _P, str]] = []  # (-priority, arrival, proc, pool)
        self.events: list[tuple[float, str]] = []  # natural events: (time, node)
        self.active: set[_P] = set()
        self.group_state: dict[int, dict[str, Any]] = {}
        self.gate_verdict: dict[int, bool] = {}
        self.deadline: dict[int, float] = {}
        self.timed_procs: dict[int, list[_P]] = {}
        self.order_free: set[str] = set()
        self.cleanup = False
        self.left: dict[str, int] = {}
        self._self: _P | None = None
        self.arrived: dict[int, float] = {}  # process -> when it asked for a pool
        self.resumed_children: dict[str, tuple[str, Any]] = {}
        # a mapped sub-flow's step -> the failures its element's retry may still mend (S51)
        self.sub_hold: dict[str, list[str]] = {}
        for tid, out in (resumed or {}).items():
            if "[" in tid and tid not in self.recs:  # S38: (element, output) of a child
                self.resumed_children[tid] = out
            elif tid in self.recs:
                self.final[tid] = "completed"
                self.outputs[tid] = out
                r = self.recs[tid]
                r.status, r.output, r.has_output = "completed", out, True

    # -- the event loop ---------------------------------------------------------------------
    def spawn(self, name: str, gen: Proc, parent: _P | None = None) -> _P:
        p = _P(name, gen)
        self.active.add(p)
        if parent is not None:
            parent.kids.append(p)
        self._step(p, None)
        return p

    def _step(self, p: _P, value: Any, exc: BaseException | None = None) -> None:
        prev = self._self
        self._self = p
        try:
            self._advance(p, value, exc)
        finally:
            self._self = prev

    def _advance(self, p: _P, value: Any, exc: BaseException | None) -> None:
        p.token += 1
        try:
            cmd = p.gen.throw(exc) if exc is not None else p.gen.send(value)
        except (StopIteration, Cancel):
            self._end(p)
            return
        kind = cmd[0]
        if kind == "sleep":
            self._wake(p, self.now + cmd[1])
        elif kind == "join":
            procs = [q for q in cmd[1] if not q.done]
            if not procs:
                self._wake(p, self.now)
                return
            left = [len(procs)]
            tok = p.token

            def one(_q: _P) -> None:
                left[0] -= 1
                if not left[0] and p.token == tok and not p.done and not p.dying:
                    self._wake(p, self.now)  # never re-entered: resumed from the loop

            for q in procs:
                q.on_done.append(one)
        elif kind == "acquire":
            self.arrived[id(p)] = self.now
            self.seq += 1
            self.waiters.append((-cmd[2], self.seq, p, cmd[1]))
            self._grant_later()
        else:  # pragma: no cover
            raise AssertionError(cmd)

    def _wake(self, p: _P, at: float) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, p, p.token, None))

    def _end(self, p: _P) -> None:
        p.done = True
        self.active.discard(p)
        for cb in p.on_done:
            cb(p)

    def cancel(self, p: _P, why: str) -> None:
        """Throw a cancellation into ``p`` and everything it started (innermost first)."""
        if p.done:
            return
        tree, stack = [], [p]
        while stack:
            q = stack.pop()
            if not q.done and not q.dying:
                q.dying = True
                tree.append(q)
                stack.extend(q.kids)
        for q in reversed(tree):  # children record themselves before their parents
            self.waiters = [w for w in self.waiters if w[2] is not q]
            self.seq += 1  # thrown from the loop: the canceller may be running
            heapq.heappush(self.heap, (self.now, self.seq, q, -1, Cancel(why)))

    def _grant_later(self) -> None:
        # Units are granted once everything else due at this instant has happened (S8).
        heapq.heappush(self.heap, (self.now, 1 << 60, None, 0, "grant"))

    def _grant(self) -> None:
        self.waiters.sort(key=lambda w: (w[0], w[1]))
        left = []
        denied_now = [w for w in self.waiters
                      if self.arrived.get(id(w[2])) == self.now]
        for w in self.waiters:
            if self.free[w[3]] > 0:
                self.free[w[3]] -= 1
                self._wake(w[2], self.now)
            else:
                left.append(w)
        # A free unit goes to the first to ask (S8): among nodes asking at one instant, who
        # is first depends on how many steps each took to get there, which is left open.
        if any(w in left for w in denied_now) and any(w not in left for w in denied_now):
            self.ambiguous = self.ambiguous or f"a pool contested at {self.now}"
        self.waiters = left

    def run_heap(self) -> None:
        # A stale entry (a process woken or ended since) does not move the clock: the
        # engine has no such timer.
        while self.heap:
            at, _, p, tok, what = heapq.heappop(self.heap)
            if what == "grant":
                if self.waiters:
                    self.now = at
                    self._grant()
            elif isinstance(what, tuple):  # a group's deadline
                if self.deadline.get(what[0]) == what[1] and any(
                        not q.done for q in self.timed_procs.get(what[0], ())):
                    self.now = at
                    self._deadline(*what)
            elif isinstance(what, Cancel):
                if not p.done:
                    self.now = at
                    self._step(p, None, what)
            elif not p.done and not p.dying and p.token == tok:
                self.now = at
                self._step(p, None)

    def run(self) -> None:
        for t in self.s.order:
            self.left[t] = len(self.s.preds[t])
        for t in [t for t in self.s.order if not self.left[t]]:
            self._hand(t)
        self.run_heap()

    # -- the runner (S6, S7, S45) -----------------------------------------------------------
    def _hand(self, tid: str) -> None:
        """The runner hands ``tid`` over: its predecessors are final."""
        if self.stopped:
            return
        retried = [n for n in self.s.group_of.get(tid, []) if self.s.groups[n].retries]
        if retried and tid not in self.final:  # S30: the group runs as one unit
            n = retried[-1]  # the outermost retried group drives (S31)
            st = self.group_state.setdefault(n, {})
            if "proc" not in st:
                st["proc"] = self.spawn(f"group {n}", self._drive(n))
            self.spawn(f"turn {tid}", self._turn(tid, st["proc"]))
            return
        self.spawn(f"task {tid}", self._node_then_release(tid))

    def _turn(self, tid: str, gp: _P) -> Proc:
        yield ("join", [gp])
        if tid in self.final and not self.stopped:
            self._released(tid)

    def _node_then_release(self, tid: str) -> Proc:
        yield from self._node(tid)
        if tid in self.final and not self.stopped:
            self._released(tid)

    def _released(self, tid: str) -> None:
        for s in self.s.succs[tid]:
            self.left[s] -= 1
            if not self.left[s]:
                self._hand(s)

    # -- recording --------------------------------------------------------------------------
    def _finish(self, tid: str, status: str, output: Any = None, has: bool = False) -> None:
        r = self.recs[tid]
        r.status = status
        self.final[tid] = "completed" if status == "cached" else status
        if has:
            r.output, r.has_output = output, True
            self.outputs[tid] = output

    def _fail(self, tid: str, status: str, parent: str | None = None) -> None:
        """A failure (S14, S15): recorded; the run stops under fail-fast (S39), unless a
        retried group holds it (S31). A map child's failure stops only its map (S24)."""
        self._finish(tid, status)
        held = self.sub_hold.get(tid)
        if held is not None:  # S51: its element will run it again
            held.append(tid)
            return
        for n in self.s.group_of.get(parent or tid, []):
            st = self.group_state.get(n)
            if st is not None and st.get("hold"):
                st["held"].append(tid)
                return
        self.errors.append(tid)
        if parent is None and not self.f.continue_on_error:
            self.stop(tid)

    def stop(self, by: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.stop_at = self.now
        self.stopper = by
        self._tie(by, "the run's stop")
        for n, at in self.deadline.items():
            if at == self.now and any(not q.done for q in self.timed_procs.get(n, ())):
                self.ambiguous = self.ambiguous or f"the stop ties with group {n}'s deadline"
        for p in sorted(self.active, key=lambda q: q.name):
            if p.name.startswith(("task", "group")) and not p.dying:
                self.cancel(p, "stop")

    def _tie(self, by: str, what: str) -> None:
        """Flag an outcome that depends on the order of events at this same instant."""
        for at, who in self.events:
            if at == self.now and who != by and not who.startswith((by + "[", by + ".")):
                self.ambiguous = self.ambiguous or f"{what} at {at} ties with {who}"
        for at, _, p, tok, cmd in self.heap:  # a wake due at this very instant
            if (at == self.now and p is not None and cmd is None and not p.done
                    and p.token == tok and not p.dying):
                self.ambiguous = self.ambiguous or f"{what} ties with {p.name} at {at}"

    def _event(self, tid: str) -> None:
        self.events.append((self.now, tid))
        if (self.stop_at == self.now and self.stopper != tid and self.ambiguous is None
                and not self.cleanup):
            self.ambiguous = f"{tid} acts at the instant the run stopped ({self.now})"

    # -- one node (S7) ----------------------------------------------------------------------
    def verdict(self, tid: str) -> str | None:
        """S20: the trigger rule's verdict on the predecessors' statuses; None: run."""
        preds = self.s.preds[tid]
        t = self.f.tasks.get(tid)
        rule = t.trigger if t is not None else "all_success"
        if not preds:  # S20: the rules judge predecessors; with none, a node runs
            return None
        st = [self.final[p] for p in preds]
        ok = any(s == "completed" for s in st)
        skipped = any(s == "skipped" for s in st)
        bad = any(s not in ("completed", "skipped") for s in st)
        if rule == "all_done":
            return None
        if rule == "none_failed":
            return "upstream_failed" if bad else None
        if rule == "one_success" and ok:
            return None
        if rule in ("one_success", "none_failed_min_one_success"):
            if bad:
                return "upstream_failed"
            return None if ok else "skipped"
        if rule == "one_failed":
            return None if bad else "skipped"
        if bad:
            return "upstream_failed"
        return "skipped" if skipped else None

    def _node(self, tid: str) -> Proc:
        """SEMANTICS S7: one node, from ready to final."""
        if tid in self.final:
            return
        # Ready now: an event, for a decision taken without running (a skip, an input that
        # is not a list) at the instant another node stops the run is made in an order the
        # rules leave open.
        self._event(tid)
        v = self.verdict(tid)
        if v is not None:
            self._finish(tid, v)
            return
        for n in reversed(self.s.group_of.get(tid, [])):  # S27: tested once, outer first
            g = self.s.groups[n]
            if g.when is not None:
                if n not in self.gate_verdict:
                    self.gate_verdict[n] = bool(self.f.context.get(g.when))
                if not self.gate_verdict[n]:
                    self._finish(tid, "skipped")
                    return
        t = self.f.tasks.get(tid)
        if t is not None and t.when is not None and not self.f.context.get(t.when):
            self._finish(tid, "skipped")
            return
        gate = self.s.gates.get(tid)
        if gate is not None:  # S33: a gate runs only when its case is chosen
            sw, key = gate
            value = self.outputs.get(sw.on)
            if not ((value in key) if key is not None else value not in sw.cases):
                if (sw.default is None and not sw.skip and self.s.first_gate[tid]
                        and value not in sw.cases):  # S34: no match, no default: it fails
                    if not self.f.continue_on_error and len(self.s.succs[sw.on]) > 1:
                        self._tie(tid, "a switch that matched nothing")
                        self.ambiguous = self.ambiguous or "the other gates may not start"
                    self._fail(tid, "failed")
                    return
                self._finish(tid, "skipped")
                return
        timed = [n for n in self.s.group_of.get(tid, []) if self.s.groups[n].timeout is not None]
        if timed:  # S29: a group's clock starts with its first member
            at = min(self.deadline.setdefault(n, self.now + self.s.groups[n].timeout)
                     for n in timed)
            if self.now >= at:
                self._fail(tid, "timed_out")
                return
            inner = self.spawn(f"bounded {tid}", self._body(tid, t, gate), self._self)
            for n in timed:
                self.timed_procs.setdefault(n, []).append(inner)
                self._watch(n)
            yield ("join", [inner])
            return
        yield from self._body(tid, t, gate)

    def _body(self, tid: str, t: TaskD | None, gate: Any) -> Proc:
        if gate is not None:  # an instant call of the gate tool, returning on's value
            r = self.recs[tid]
            r.started_at = self.now
            r.attempts.append((self.now, "completed"))
            self._finish(tid, "completed", self.outputs.get(gate[0].on), True)
            return
        assert t is not None
        if t.sub is not None:
            yield from self._submap(tid, t)
        elif t.mapped:
            yield from self._map(tid, t)
        else:
            yield from self._pooled(tid, tid, t, [self.outputs.get(d) for d in t.deps])

    def _watch(self, n: int) -> None:
        at = self.deadline[n]  # (one entry per member: a consumed one may be needed again)
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, None, 0, (n, at)))

    def _deadline(self, n: int, at: float) -> None:
        if self.stopped and not self.cleanup:
            if self.stop_at == self.now:
                self.ambiguous = self.ambiguous or f"group {n}'s deadline ties with the stop"
            return
        self._tie(f"deadline {n}", f"group {n}'s deadline")
        for p in list(self.timed_procs.get(n, [])):
            if not p.done:
                self.cancel(p, f"group {n}")

    def _pooled(self, tid: str, key: str, t: TaskD, inputs: list[Any],
                parent: str | None = None) -> Proc:
        """S8-S11, S36: a cache lookup, pools, then the attempts."""
        r = self.recs[tid]
        ckey = (key, json.dumps(inputs, sort_keys=True))
        # S36: an entry stored earlier in this run counts (a member that its group's retry
        # runs again finds the one its own earlier attempt stored), as do earlier runs'.
        found = ckey in self.stored or (self.cache_read and ckey in self.cache)
        if t.cache and found:
            if r.started_at is None:  # S30: a re-run member's record began with its first
                r.started_at = self.now
            out = self.stored[ckey] if ckey in self.stored else self.cache[ckey]
            self._finish(tid, "cached", out, True)
            return
        if t.pool is not None:
            try:
                yield ("acquire", t.pool, t.priority)
            except Cancel as c:
                self._cut(tid, c.why, parent)
                raise
        try:
            yield from self._attempts(tid, key, t, inputs, parent)
        finally:
            if t.pool is not None:
                self.free[t.pool] += 1
                self._grant_later()
        if r.status == "completed" and t.cache:
            self.stored[ckey] = r.output

    def _cut(self, tid: str, why: str, parent: str | None) -> None:
        """A cancelled node: timed out by its group's deadline (S29), else cancelled (S18)."""
        if why.startswith("group"):
            self._fail(tid, "timed_out", parent)
        else:
            self._finish(tid, "cancelled")

    def _attempts(self, tid: str, key: str, t: TaskD, inputs: list[Any],
                  parent: str | None) -> Proc:
        r = self.recs[tid]
        script = self.f.scripts[key]
        if r.started_at is None:
            r.started_at = self.now
        n = 0
        while True:
            n += 1
            start = self.now
            self._event(tid)
            self.calls[key] = c = self.calls.get(key, 0) + 1
            d = script.duration
            limit = t.timeout
            try:
                yield ("sleep", d if limit is None else min(d, limit))
            except Cancel as cx:
                r.attempts.append((start, "cancelled"))
                self._cut(tid, cx.why, parent)
                raise
            self._event(tid)
            if limit is not None and d > limit:
                status = "timed_out"
            elif c in script.fail:
                status = "failed"
            else:
                r.attempts.append((start, "completed"))
                if self.f.rollback and t.rollback:
                    self.completed.append((tid, output_of(key, inputs, script)))
                self._finish(tid, "completed", output_of(key, inputs, script), True)
                return
            r.attempts.append((start, status))
            if n <= t.retries and not self.stopped:  # S10
                try:
                    yield ("sleep", t.backoff * 2 ** (n - 1) if t.backoff else 0.0)
                except Cancel as cx:  # S18: waiting to retry when the run stops
                    self._cut(tid, cx.why, parent)
                    raise
                continue
            self._fail(tid, status, parent)
            return

    # -- mapped tasks (S23-S25) -------------------------------------------------------------
    def _map(self, tid: str, t: TaskD) -> Proc:
        r = self.recs[tid]
        values = t.values if t.values is not None else self.outputs.get(t.over)  # type: ignore
        if not isinstance(values, list):
            self._fail(tid, "failed")
            return
        if r.started_at is None:
            r.started_at = self.now
        n = len(values)
        ids = [f"{tid}[{i}]" for i in range(n)]
        self.children[tid] = ids
        # S30: a group's next attempt runs only the children that did not complete
        todo = [i for i in range(n)
                if ids[i] not in self.recs or self.recs[ids[i]].status not in FINAL_OK]
        width = min(len(todo), t.max_parallel or len(todo), 1000)
        failed: list[int] = []
        nxt = [0]
        me = self._self
        halted = [False]

        def lane() -> Proc:
            while nxt[0] < len(todo) and not halted[0]:
                i = todo[nxt[0]]
                nxt[0] += 1
                cid = ids[i]
                if cid not in self.recs:
                    self.recs[cid] = Record(cid, parent=tid, key=values[i])
                hit = self.resumed_children.get(cid)
                if hit is not None and hit[0] == values[i]:  # S38: same index, same input
                    self._finish(cid, "completed", hit[1], True)
                    continue
                q = self.spawn(f"child {cid}",
                               self._pooled(cid, values[i], t, [], parent=tid), me)
                yield ("join", [q])
                if self.recs[cid].status in ("failed", "timed_out"):
                    failed.append(i)
                    if not self.f.continue_on_error and not halted[0]:
                        halted[0] = True  # S24: a failed child stops its siblings
                        self._tie(cid, "a sibling's failure")
                        for k in list(me.kids):
                            if not k.done and k.name.startswith("child"):
                                self.cancel(k, f"sibling {cid}")

        try:
            lanes = [self.spawn(f"lane {tid}", lane(), me) for _ in range(width)]
            yield ("join", lanes)
        except Cancel as cx:
            if cx.why.startswith("group"):  # S29: the children it could not start, too
                for k in range(nxt[0], len(todo)):
                    cid = ids[todo[k]]
                    self.recs[cid] = Record(cid, parent=tid, key=values[todo[k]])
                    self._fail(cid, "timed_out", tid)
                self._fail(tid, "timed_out")
            else:
                self._finish(tid, "cancelled")
            raise
        if failed:
            for k in range(nxt[0], len(todo)):
                cid = ids[todo[k]]
                self.recs[cid] = Record(cid, parent=tid, key=values[todo[k]])
                self._finish(cid, "cancelled")
            self._fail(tid, "failed")
            return
        self._finish(tid, "completed", [self.recs[c].output for c in ids], True)

    # -- mapped sub-flows (S49-S52) ----------------------------------------------------------
    def _open(self, cid: str, parent: str) -> bool:
        """Whether ``cid`` has no final status yet (never started, or reset for a retry)."""
        r = self.recs.get(cid)
        return r is None or r.status in ("pending", "running")

    def _submap(self, tid: str, t: TaskD) -> Proc:
        assert t.sub is not None and t.values is not None
        r = self.recs[tid]
        values, steps = t.values, t.sub
        if r.started_at is None:
            r.started_at = self.now
        n, k = len(values), len(steps)
        pres = [f"{tid}[{i}]" for i in range(n)]
        kids = [f"{p}.{s}" for p in pres for s in steps]
        self.children[tid] = kids
        # S30 (an outer group's retry): an element whose steps all completed is kept
        todo = [i for i in range(n)
                if any(self.recs.get(c) is None or self.recs[c].status not in FINAL_OK
                       for c in kids[i * k:i * k + k])]
        width = min(len(todo), t.max_parallel or len(todo), 1000)
        failed: list[int] = []
        nxt = [0]
        me = self._self
        halted = [False]
        bad = ("failed", "timed_out", "cancelled")

        def lane() -> Proc:
            while nxt[0] < len(todo) and not halted[0]:
                i = todo[nxt[0]]
                nxt[0] += 1
                mine = kids[i * k:i * k + k]
                q = self.spawn(f"element {pres[i]}",
                               self._element(tid, t, i, values[i], mine), me)
                yield ("join", [q])
                culprit = next((c for c in mine if self.recs[c].status in bad), None)
                if culprit is not None:
                    failed.append(i)
                    if not self.f.continue_on_error and not halted[0]:
                        halted[0] = True  # S52: a failed element stops its siblings
                        self._tie(pres[i], "a sibling element's failure")
                        for q2 in list(me.kids):
                            if not q2.done and q2.name.startswith("element"):
                                self.cancel(q2, f"sibling {pres[i]}")

        try:
            lanes = [self.spawn(f"lane {tid}", lane(), me) for _ in range(width)]
            yield ("join", lanes)
        except Cancel as cx:
            for c in kids:  # S52: the steps that never ended
                if self._open(c, tid):
                    self.recs[c] = self.recs.get(c) or Record(c, parent=tid)
                    if cx.why.startswith("group"):
                        self._fail(c, "timed_out", tid)
                    else:
                        self._finish(c, "cancelled")
            if cx.why.startswith("group"):
                self._fail(tid, "timed_out")
            else:
                self._finish(tid, "cancelled")
            raise
        if failed or any(self.recs.get(c) is not None and self.recs[c].status in bad
                         for c in kids):
            for c in kids:
                if self._open(c, tid):
                    self.recs[c] = self.recs.get(c) or Record(c, parent=tid)
                    self._finish(c, "cancelled")
            self._fail(tid, "failed")
            return
        last = steps[-1]
        self._finish(tid, "completed", [self.recs[f"{p}.{last}"].output
                                        if self.recs[f"{p}.{last}"].has_output else None
                                        for p in pres], True)

    def _element(self, tid: str, t: TaskD, i: int, e: str, mine: list[str]) -> Proc:
        """S50, S51: one element's chain, with the sub-flow's options as a unit."""
        key = ("el", tid, i)
        self.deadline.pop(key, None)  # S51: the element's clock starts with its first step
        todo = [j for j in range(len(mine))
                if self.recs.get(mine[j]) is None or self.recs[mine[j]].status not in FINAL_OK]
        tries = t.sub_retries + 1
        for attempt in range(1, tries + 1):
            last = attempt == tries
            held: list[str] = []
            if not last:
                for j in todo:
                    self.sub_hold[mine[j]] = held
            try:
                yield from self._chain(tid, t, e, mine, todo, key)
            except Cancel:
                for j in todo:
                    self.sub_hold.pop(mine[j], None)
                self.errors += held  # S39: the failures held so far happened
                raise
            for j in todo:
                self.sub_hold.pop(mine[j], None)
            first = next((j for j in todo if self.final.get(mine[j]) in BAD), None)
            if first is None or last or self.stopped:
                self.errors += held
                return
            todo = [j for j in todo if j >= first]
            for j in todo:  # reset: these run again; the completed steps are kept
                self.final.pop(mine[j], None)
                self.outputs.pop(mine[j], None)
                self.recs[mine[j]].status = "pending"
                self.recs[mine[j]].has_output = False
            self.deadline.pop(key, None)  # each attempt gets the full timeout
            if t.sub_backoff:
                try:
                    yield ("sleep", t.sub_backoff * 2 ** (attempt - 1))
                except Cancel:  # S18: the failed part waiting out the backoff
                    for j in todo:
                        self._finish(mine[j], "cancelled")
                    raise

    def _chain(self, tid: str, t: TaskD, e: str, mine: list[str], todo: list[int],
               key: Any) -> Proc:
        for j in todo:
            cid = mine[j]
            if cid not in self.recs:
                self.recs[cid] = Record(cid, parent=tid)
            self._event(cid)
            if j > 0:  # S20 (all_success) on the step before it
                before = self.final.get(mine[j - 1])
                if before != "completed":
                    self._finish(cid, "skipped" if before == "skipped" else "upstream_failed")
                    continue
            if t.sub_when is not None and not self.f.context.get(t.sub_when):  # S27
                self._finish(cid, "skipped")
                continue
            inputs = [e if j == 0 else self.outputs.get(mine[j - 1])]
            step = TaskD(cid)
            if t.sub_timeout is None:
                yield from self._pooled(cid, f"{e}/{j}", step, inputs, parent=tid)
                continue
            at = self.deadline.setdefault(key, self.now + t.sub_timeout)  # S29, per element (S51)
            if self.now >= at:
                self._fail(cid, "timed_out", tid)
                continue
            inner = self.spawn(f"bounded {cid}",
                               self._pooled(cid, f"{e}/{j}", step, inputs, parent=tid),
                               self._self)
            self.timed_procs.setdefault(key, []).append(inner)  # type: ignore[arg-type]
            self._watch(key)  # type: ignore[arg-type]
            yield ("join", [inner])

    # -- retried groups (S30, S31) ----------------------------------------------------------
    def _drive(self, n: int) -> Proc:
        g = self.s.groups[n]
        inside = set(self.s.members[n])
        todo = [t for t in self.s.topo if t in inside]
        st = self.group_state.setdefault(n, {})
        nested = [k for k in range(len(self.s.groups))
                  if set(self.s.members[k]) <= inside]
        for attempt in range(1, g.retries + 2):
            last = attempt == g.retries + 1
            st["hold"] = not last
            st["held"] = []
            try:
                yield from self._members(todo)
            except Cancel:  # S39: the run stopped: the failures held so far happened
                self.errors += st["held"]
                st["hold"], st["held"] = False, []
                raise
            st["hold"] = False
            again: set[str] = set()
            for t in todo:
                if self.final.get(t) in BAD or any(p in again for p in self.s.preds[t]):
                    again.add(t)
            if not again or last or self.stopped:
                held, st["held"] = st["held"], []
                self.errors += held
                if held and not self.f.continue_on_error:
                    self.stop(held[0])
                return
            todo = [t for t in todo if t in again]
            # S52: a mapped sub-flow's steps as they ended, for a stop during the backoff
            prior = {c: self.recs[c].status for t in todo
                     if t in self.f.tasks and self.f.tasks[t].sub is not None
                     for c in self.children.get(t, ()) if c in self.recs}
            for t in todo:  # a map whose input may change runs all its children again,
                every = any(p in again for p in self.s.preds[t])  # else those not completed
                for c in self.children.get(t, ()):  # (S30: pending until they run again)
                    if every or self.recs[c].status not in FINAL_OK:
                        self.recs[c].status = "pending"
            for t in todo:  # S38: a reused member run again is called, children and all
                for c in [c for c in self.resumed_children if c.startswith(t + "[")]:
                    del self.resumed_children[c]
            for t in todo:  # reset: these run again; completed members are kept
                self.final.pop(t, None)
                self.outputs.pop(t, None)
                self.recs[t].status = "pending"
                self.recs[t].has_output = False
            for k in nested:  # each attempt gets the full timeout
                self.deadline.pop(k, None)
            if g.backoff:
                try:
                    yield ("sleep", g.backoff * 2 ** (attempt - 1))
                except Cancel:  # S18: the failed part waiting out the group's backoff
                    for t in todo:
                        self._finish(t, "cancelled")
                    for c, was in prior.items():  # S52: its steps that did not complete
                        if was in BAD:  # end cancelled; the others keep how they ended
                            self._finish(c, "cancelled")
                        else:
                            self.recs[c].status = was
                    raise

    def _members(self, todo: list[str]) -> Proc:
        pending = set(todo)
        waiting = {t: sum(1 for p in self.s.preds[t] if p in pending) for t in todo}
        me = self._self
        procs: list[_P] = []

        def one(t: str) -> Proc:
            yield from self._node(t)
            if self.stopped and not self.cleanup:  # S39: nothing new starts
                return
            for s in self.s.succs[t]:
                if s in waiting:
                    waiting[s] -= 1
                    if not waiting[s]:
                        start(s)

        def start(t: str) -> None:
            procs.append(self.spawn(f"task {t}", one(t), me))

        for t in [t for t in todo if not waiting[t]]:  # (a start may finish others)
            start(t)
        while any(not q.done for q in procs):
            yield ("join", [q for q in procs if not q.done])


def simulate(flow: FlowD, calls: dict[str, int] | None = None, *,
             cache: dict[tuple[str, str], Any] | None = None, cache_read: bool = True,
             resumed: dict[str, Any] | None = None) -> Outcome:
    """One run of ``flow`` under the semantics. ``calls`` (updated) counts each key's calls
    over earlier runs, ``cache`` holds the entries earlier runs stored, ``resumed`` the
    outputs a resumed run reuses."""
    calls = {} if calls is None else calls
    sim = Sim(flow, calls, cache, cache_read, resumed)
    sim.run()
    if sim.stopped:  # S39: cleanup tasks after a fail-fast stop, in plan order, one at a time
        sim.cleanup = True
        ran = []
        for tid in sim.s.topo:
            t = sim.f.tasks.get(tid)
            if (tid not in sim.final and t is not None
                    and t.trigger in ("all_done", "one_failed")
                    and all(p in sim.final for p in sim.s.preds[tid])):
                ran.append(tid)
                sim.spawn(f"cleanup {tid}", sim._node(tid))
                sim.run_heap()
        if len(ran) > 1:  # their start times depend on the plan's order
            sim.order_free.update(ran)
    status = "failed" if sim.errors else "completed"
    rolled: list[tuple[str, Any]] = []
    if flow.rollback and status != "completed":  # S37
        for tid, out in reversed(sim.completed):
            rolled.append((tid, out))
            sim.recs[tid].status = "rolled_back"
        if rolled:
            status = "rolled_back"
    return Outcome(status, dict(sim.recs), sim.errors, rolled, calls, sim.stored,
                   sim.ambiguous, sim.order_free)

