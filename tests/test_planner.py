"""Planning: order, levels, width, critical path, bounds, cycles and DependencyResolver."""

from __future__ import annotations

import graphlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdsl
from flowdsl import CycleError, DependencyResolver, Flow, Plan, PlanError, Task, plan, tool


@tool(registry=False)
def work(x: object = None) -> object:
    """A tool to plan with."""
    return x


def _t(name: str, **options: object) -> Task:
    t = work().named(name)
    return t.with_options(**options) if options else t


def _resolver(graph: dict[object, Iterable[object]]) -> DependencyResolver:
    """A resolver from graphlib-style {node: predecessors}."""
    r = DependencyResolver()
    for node, deps in graph.items():
        r.add_task(str(node))
        for d in deps:
            r.add_dependency(str(node), str(d))
    return r


def _composed(nodes: list[str], edges: list[tuple[str, str]]) -> object:
    """The same graph written with >> and |."""
    tasks = {n: _t(n) for n in nodes}
    return flowdsl.parallel(*tasks.values(), *[tasks[a] >> tasks[b] for a, b in edges])


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 9) -> tuple[list[str], list[tuple[str, str]]]:
    """A random DAG: edges only go from a lower to a higher index."""
    n = draw(st.integers(1, max_nodes))
    nodes = [f"n{i}" for i in range(n)]
    pairs = [(a, b) for a, b in itertools.combinations(range(n), 2)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True) if pairs else st.just([]))
    perm = draw(st.permutations(nodes))  # so that insertion order is not the index order
    return perm, [(nodes[a], nodes[b]) for a, b in chosen]


def _brute_longest(nodes: list[str], edges: list[tuple[str, str]],
                   dur: dict[str, float]) -> float:
    """The longest path by trying every path (small graphs only)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
    best = 0.0
    stack = [(n, dur[n]) for n in nodes]
    while stack:
        node, length = stack.pop()
        best = max(best, length)
        stack.extend((s, length + dur[s]) for s in succ[node])
    return best


def _rotation_of(found: list[str], expected: list[str]) -> bool:
    """graphlib's check: the cycle (last == first) is a rotation of the expected one."""
    assert found[0] == found[-1]
    ring = found[:-1]
    return any(ring[k:] + ring[:k] == expected for k in range(len(ring)))


class TestPlanBasics:
    def test_diamond(self) -> None:
        """A diamond gives three levels, width 2 and both predecessor maps."""
        a, b, c, d = (_t(n) for n in "abcd")
        p = (a >> (b | c) >> d).plan()
        assert p.order == ("a", "b", "c", "d")
        assert p.levels == (("a",), ("b", "c"), ("d",))
        assert p.width == 2
        assert p.predecessors == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
        assert p.successors == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}
        assert (p.sources, p.sinks) == (("a",), ("d",))
        assert p.edges == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
        assert [p.index(i) for i in "abcd"] == [0, 1, 2, 3]
        assert repr(p) == "<Plan flow: 4 tasks, 4 edges, 3 levels, width 2>"

    def test_level_is_one_plus_max_of_dependencies(self) -> None:
        """A task after a long and a short branch sits after the long one."""
        a, b, c, d = (_t(n) for n in "abcd")
        p = plan((a >> b >> d) | (c >> d))
        assert p.levels == (("a", "c"), ("b",), ("d",))

    def test_insertion_order_breaks_ties(self) -> None:
        """Independent tasks keep the order they were written in."""
        x, a, b = (_t(n) for n in "xab")
        assert plan(x | (a >> b)).order == ("x", "a", "b")

    def test_flow_name_and_plan_method(self) -> None:
        """plan(Flow) carries the flow's name; flow.plan() is the same plan."""
        a, b = _t("a"), _t("b")
        f = Flow("etl", a >> b)
        assert plan(f).name == "etl"
        assert f.plan().order == plan(f).order == ("a", "b")

    def test_single_task_and_tool(self) -> None:
        """A lone Task or a Tool can be planned."""
        assert plan(_t("solo")).order == ("solo",)
        assert len(plan(work)) == 1

    def test_plan_is_immutable(self) -> None:
        """A Plan refuses attribute changes and its maps are read-only."""
        p = plan(_t("a") >> _t("b"))
        with pytest.raises(AttributeError, match=r"a Plan is immutable"):
            p.order = ()  # type: ignore[misc]
        with pytest.raises(TypeError):
            p.predecessors["a"] = ("b",)  # type: ignore[index]

    def test_plan_has_no_public_constructor(self) -> None:
        """Plan() is refused; plans come from plan()."""
        with pytest.raises(TypeError, match=r"Plan is built by flowdsl.plan"):
            Plan()

    def test_planning_runs_nothing(self) -> None:
        """Planning, even a failing one, never calls a tool."""
        calls: list[object] = []
        t = tool(lambda x=None: calls.append(x), registry=False, name="spy")
        a = t().named("a")
        plan(a >> t().named("b"))
        with pytest.raises(CycleError):
            plan(a >> a)
        assert calls == []


class TestCriticalPathAndBounds:
    def test_critical_path(self) -> None:
        """The critical path follows the heaviest branch and sums its durations."""
        a, b, c, d = (_t(n) for n in "abcd")
        p = plan(a >> (b | c) >> d)
        assert p.critical_path({"a": 1, "b": 5, "c": 2, "d": 1}) == (["a", "b", "d"], 7.0)

    def test_declared_expected_duration(self) -> None:
        """Missing durations use the task's expected_duration, else 1."""
        p = plan(_t("a", expected_duration=4) >> _t("b"))
        assert p.durations() == {"a": 4.0, "b": 1.0}
        assert p.critical_path() == (["a", "b"], 5.0)

    def test_empty_durations_for_remaining(self) -> None:
        """remaining() gives each task's longest path to the end."""
        a, b, c, d = (_t(n) for n in "abcd")
        p = plan(a >> (b | c) >> d)
        assert p.remaining({"b": 3}) == {"a": 5.0, "b": 4.0, "c": 2.0, "d": 1.0}

    def test_lower_bound_critical_path(self) -> None:
        """Without pools or a concurrency limit, the bound is the critical path."""
        p = plan(_t("a") | _t("b"))
        assert p.lower_bound({"a": 2, "b": 3}) == 3.0

    def test_lower_bound_max_concurrency(self) -> None:
        """Total work / max_concurrency bounds a wide flow."""
        p = plan(flowdsl.parallel(*[_t(f"t{i}") for i in range(6)]))
        assert p.lower_bound({}, max_concurrency=2) == 3.0

    def test_lower_bound_pool(self) -> None:
        """Each pool bounds by total amount x duration / capacity."""
        p = plan(_t("a", resources={"db": 2}) | _t("b", resources={"db": 1}) | _t("c"))
        assert p.lower_bound({"a": 3, "b": 4, "c": 1}, {"db": 2}) == 5.0  # (2*3 + 1*4) / 2

    def test_check_resources_unknown_pool(self) -> None:
        """A task needing an undefined pool is named with the pool."""
        p = plan(_t("a", resources={"gpu": 1}))
        with pytest.raises(flowdsl.ResourceError,
                           match=r"task 'a' needs pool 'gpu', which is not defined"):
            p.check_resources({"db": 1})

    def test_check_resources_over_capacity(self) -> None:
        """A task needing more than a pool holds could never run."""
        p = plan(_t("a", resources={"gpu": 3}))
        with pytest.raises(flowdsl.ResourceError, match=r"task 'a' needs 3 of pool 'gpu'"):
            p.check_resources({"gpu": 2})


class TestCycles:
    """The cycle cases of CPython's Lib/test/test_graphlib.py, via the resolver and >>."""

    CASES = [
        ("self-loop", {1: [1]}, [["1"]]),
        ("two-cycle", {1: [2], 2: [1]}, [["1", "2"]]),
        ("indirect", {1: [2], 2: [3], 3: [1]}, [["1", "3", "2"]]),
        ("extra nodes", {1: [2], 2: [3], 3: [1], 5: [4], 4: [6]}, [["1", "3", "2"]]),
        ("two cycles", {1: [2], 2: [1], 3: [4], 4: [5], 6: [7], 7: [6]},
         [["1", "2"], ["7", "6"]]),
        ("in the middle", {1: [2], 2: [3], 3: [2, 4], 4: [5]}, [["3", "2"]]),
    ]

    @pytest.mark.parametrize(("graph", "expected"), [c[1:] for c in CASES],
                             ids=[c[0] for c in CASES])
    def test_resolver(self, graph: dict[object, list[object]],
                      expected: list[list[str]]) -> None:
        """DependencyResolver reports graphlib's cycle (first == last)."""
        r = _resolver(graph)
        with pytest.raises(CycleError) as info:
            r.topological_sort()
        assert any(_rotation_of(info.value.cycle, e) for e in expected)
        assert r.detect_cycles() == [info.value.cycle]

    @pytest.mark.parametrize(("graph", "expected"), [c[1:] for c in CASES],
                             ids=[c[0] for c in CASES])
    def test_composed(self, graph: dict[object, list[object]],
                      expected: list[list[str]]) -> None:
        """The same graphs written with >> raise the same cycle."""
        nodes = list(dict.fromkeys(str(n) for k, v in graph.items() for n in [k, *v]))
        edges = [(str(d), str(k)) for k, v in graph.items() for d in v]
        with pytest.raises(CycleError) as info:
            plan(_composed(nodes, edges))
        assert any(_rotation_of(info.value.cycle, e) for e in expected)

    def test_gr1_message_and_payload(self) -> None:
        """a >> b >> c >> a: .cycle == [a, b, c, a], message a -> b -> c -> a (GR1)."""
        a, b, c = _t("a"), _t("b"), _t("c")
        with pytest.raises(CycleError, match=r"a -> b -> c -> a$") as info:
            plan(a >> b >> c >> a)
        err = info.value
        assert err.cycle == ["a", "b", "c", "a"]
        assert isinstance(err, graphlib.CycleError)
        assert isinstance(err, PlanError) and isinstance(err, ValueError)
        assert err.args[1] == ["a", "b", "c", "a"]

    def test_gr2_self_loop(self) -> None:
        """a >> a is a cycle of one task (GR2)."""
        a = _t("a")
        with pytest.raises(CycleError, match=r"a -> a$") as info:
            plan(a >> a)
        assert info.value.cycle == ["a", "a"]

    def test_cycle_through_reference(self) -> None:
        """An argument reference plus >> can close a cycle too."""
        a = _t("a")
        b = work(a).named("b")
        with pytest.raises(CycleError) as info:
            plan(b >> a)
        assert info.value.cycle == ["a", "b", "a"]  # a, referred to by b, is placed first

    def test_no_cycle_resolver(self) -> None:
        """An acyclic resolver graph has no cycles and sorts."""
        r = _resolver({"b": ["a"], "c": ["b", "a"]})
        assert r.detect_cycles() == []
        assert r.topological_sort() == ["a", "b", "c"]

    def test_resolver_critical_path(self) -> None:
        """find_critical_path counts missing ids as 0."""
        r = _resolver({"b": ["a"], "c": ["a"]})
        assert r.find_critical_path({"a": 1, "b": 3}) == (["a", "b"], 4.0)


class TestProperties:
    @given(dags())
    @settings(max_examples=150, deadline=None)
    def test_order_respects_every_edge(self, dag: tuple[list[str], list[tuple[str, str]]]
                                       ) -> None:
        """Every edge goes forward in the order, for resolver and composed graphs alike."""
        nodes, edges = dag
        for order in (plan(_composed(nodes, edges)).order,
                      _edges_resolver(nodes, edges).topological_sort()):
            pos = {i: k for k, i in enumerate(order)}
            assert sorted(order) == sorted(nodes)
            assert all(pos[a] < pos[b] for a, b in edges)

    @given(dags())
    @settings(max_examples=150, deadline=None)
    def test_levels_consistent_with_edges(self, dag: tuple[list[str], list[tuple[str, str]]]
                                          ) -> None:
        """level = 1 + max level of the dependencies (0 without any)."""
        nodes, edges = dag
        p = plan(_composed(nodes, edges))
        level = {i: k for k, lv in enumerate(p.levels) for i in lv}
        preds: dict[str, list[str]] = {n: [] for n in nodes}
        for a, b in edges:
            preds[b].append(a)
        for n in nodes:
            assert level[n] == 1 + max((level[q] for q in preds[n]), default=-1)
        assert p.width == max(len(lv) for lv in p.levels)
        assert set(p.sources) == {n for n in nodes if not preds[n]}

    @given(dags(max_nodes=8), st.data())
    @settings(max_examples=150, deadline=None)
    def test_critical_path_is_longest_path(self, dag: tuple[list[str], list[tuple[str, str]]],
                                           data: st.DataObject) -> None:
        """The critical path length equals a brute-force longest path, and is a real path."""
        nodes, edges = dag
        dur = {n: float(data.draw(st.integers(0, 9))) for n in nodes}
        path, length = plan(_composed(nodes, edges)).critical_path(dur)
        assert length == _brute_longest(nodes, edges, dur)
        assert sum(dur[n] for n in path) == length
        assert all(e in set(edges) for e in itertools.pairwise(path))

    @given(dags())
    @settings(max_examples=60, deadline=None)
    def test_same_flow_same_plan(self, dag: tuple[list[str], list[tuple[str, str]]]) -> None:
        """Planning one flow twice gives identical plans."""
        flow = _composed(*dag)
        one, two = plan(flow), plan(flow)
        assert (one.order, one.levels, dict(one.predecessors)) == (
            two.order, two.levels, dict(two.predecessors))

    @given(dags(), st.data())
    @settings(max_examples=100, deadline=None)
    def test_cycle_payload_is_a_cycle(self, dag: tuple[list[str], list[tuple[str, str]]],
                                      data: st.DataObject) -> None:
        """A back edge makes a CycleError whose .cycle follows real edges, first == last."""
        nodes, edges = dag
        if not edges:
            return
        a, b = data.draw(st.sampled_from(edges))
        with pytest.raises(CycleError) as info:
            plan(_composed(nodes, [*edges, (b, a)]))
        cyc = info.value.cycle
        assert cyc[0] == cyc[-1] and len(cyc) >= 3
        assert all(e in {*edges, (b, a)} for e in itertools.pairwise(cyc))
        assert str(info.value).endswith(" -> ".join(cyc))


def _edges_resolver(nodes: list[str], edges: list[tuple[str, str]]) -> DependencyResolver:
    r = DependencyResolver()
    for n in nodes:
        r.add_task(n)
    for a, b in edges:
        r.add_dependency(b, a)
    return r


_SEED_SCRIPT = textwrap.dedent("""
    import json, flowdsl
    @flowdsl.tool(registry=False)
    def w(x=None): return x
    t = {n: w().named(n) for n in ["zeta", "alpha", "mid", "omega", "beta", "k1", "k2"]}
    flow = (t["zeta"] | t["alpha"]) >> w(t["k1"]).named("join") >> [t["mid"], t["omega"]]
    flow = flow | (t["beta"] >> t["k2"])
    p = flowdsl.plan(flow)
    out = {"order": p.order, "levels": p.levels, "preds": dict(p.predecessors),
           "cp": p.critical_path({"mid": 2})}
    try:
        flowdsl.plan(t["alpha"] >> t["beta"] >> t["zeta"] >> t["alpha"] | t["mid"])
    except flowdsl.CycleError as e:
        out["cycle"] = str(e)
    print(json.dumps(out))
""")


def test_same_plan_under_different_hash_seeds() -> None:
    """The plan and cycle message do not depend on PYTHONHASHSEED (as graphlib's tests)."""
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", _SEED_SCRIPT], env=env, check=True,
                             capture_output=True, text=True, timeout=60)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1]
    assert outs[0]["cycle"].endswith("alpha -> beta -> zeta -> alpha")


@pytest.mark.parametrize("shape", ["chain", "wide"])
def test_plan_100k_with_low_recursion_limit(shape: str) -> None:
    """A 100k chain or group composes and plans with a recursion limit of 200 (GR5)."""
    tasks = [_t(f"t{i}") for i in range(100_000)]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        flow = tasks[0]
        for t in tasks[1:]:
            flow = (flow >> t) if shape == "chain" else (flow | t)
        p = plan(flow)
        path, length = p.critical_path()
        bottom = p.remaining()
    finally:
        sys.setrecursionlimit(old)
    if shape == "chain":
        assert (len(p.levels), p.width, length) == (100_000, 1, 100_000.0)
        assert bottom["t0"] == 100_000.0 and path[-1] == "t99999"
    else:
        assert (len(p.levels), p.width, length) == (1, 100_000, 1.0)
    assert p.order == tuple(f"t{i}" for i in range(100_000))
