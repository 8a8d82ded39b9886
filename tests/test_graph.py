"""Composition: Tasks, >> and |, lists, ids, references, per-task settings and Flow."""

from __future__ import annotations

import copy
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdsl
from flowdsl import CompositionError, DuplicateTaskError, Flow, Fragment, Task, ctx, tool
from flowdsl._graph.task import CtxRef, Ref, materialize


@tool(registry=False)
def step(x: object = None, y: object = None) -> object:
    """A tool to compose with."""
    return x


@tool(registry=False)
def other(x: object = None) -> object:
    return x


def _nodes(*names: str) -> list[Task]:
    return [step().named(n) for n in names]


def _edges(item: object) -> set[tuple[str, str]]:
    # Wrapped in a new group, so the walk is fresh and never reads a cached flattening.
    g = materialize(flowdsl.parallel(item))
    return {(p, i) for i, ps in g.preds.items() for p in ps}


def _snapshot(item: object) -> object:
    """Everything observable about a composition operand, to check it was not mutated."""
    if isinstance(item, Task):
        return (item.id, item.args, dict(item.kwargs), item.upstream, item.condition,
                item.to_context_map, item.trigger, item.spec)
    if isinstance(item, Fragment):
        return (item.kind, item.parts)
    return copy.copy(item)


class TestThen:
    def test_edge(self) -> None:
        """a >> b makes b run after a."""
        a, b = _nodes("a", "b")
        assert _edges(a >> b) == {("a", "b")}

    def test_every_sink_before_every_source(self) -> None:
        """(a | b) >> (c | d) links every sink of the left to every source of the right."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        assert _edges((a | b) >> (c | d)) == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}

    def test_list_on_the_right(self) -> None:
        """a >> [b, c] >> d fans out and in."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        assert _edges(a >> [b, c] >> d) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}

    def test_list_on_the_left(self) -> None:
        """[a, b] >> c works through the reflected operator."""
        a, b, c = _nodes("a", "b", "c")
        assert _edges([a, b] >> c) == {("a", "c"), ("b", "c")}

    def test_tuple_operand(self) -> None:
        """A tuple is a group like a list."""
        a, b, c = _nodes("a", "b", "c")
        assert _edges(a >> (b, c)) == {("a", "b"), ("a", "c")}

    def test_diamond_shares_one_node(self) -> None:
        """The same Task used twice is one node: a >> (b | c) >> d is a diamond."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        g = materialize(a >> (b | c) >> d)
        assert list(g.tasks) == ["a", "b", "c", "d"]
        assert g.preds["d"] == {"b": None, "c": None}

    def test_chain_function(self) -> None:
        """chain(a, b, c) gives the edges of a >> b >> c."""
        a, b, c = _nodes("a", "b", "c")
        assert _edges(flowdsl.chain(a, b, c)) == _edges(a >> b >> c)

    def test_chain_of_generated_list(self) -> None:
        """chain(*tasks) handles a long generated list."""
        ts = [step().named(f"t{i}") for i in range(50)]
        assert _edges(flowdsl.chain(*ts)) == {(f"t{i}", f"t{i + 1}") for i in range(49)}

    def test_empty_chain_raises(self) -> None:
        """chain() with nothing is refused."""
        with pytest.raises(CompositionError, match=r"chain\(\) needs at least one task"):
            flowdsl.chain()

    def test_tools_compose_as_pipeline_stages(self) -> None:
        """load >> clean composes tools into stages fed by the previous output."""
        frag = step >> other
        g = materialize(frag)
        first, second = g.tasks.values()
        assert (first.tool.name, second.tool.name) == ("step", "other")
        assert (first.stage_param, second.stage_param) == ("x", "x")
        assert g.preds[g.ids[second]] == {g.ids[first]: None}

    def test_tool_parallel_stages(self) -> None:
        """load >> (score_a | score_b) fans a pipeline out."""
        g = materialize(step >> (other | other))
        ids = list(g.tasks)
        assert len(ids) == 3
        assert all(list(g.preds[i]) == [ids[0]] for i in ids[1:])


class TestParallel:
    def test_no_edge(self) -> None:
        """a | b puts tasks side by side with no edge."""
        a, b = _nodes("a", "b")
        g = materialize(a | b)
        assert list(g.tasks) == ["a", "b"]
        assert _edges(a | b) == set()
        assert g.sources == g.sinks == ["a", "b"]

    def test_flattens_nested_groups(self) -> None:
        """Nested groups flatten: (a | b) | [c, [d]] has four sources."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        assert materialize((a | b) | [c, [d]]).sources == ["a", "b", "c", "d"]

    def test_parallel_function(self) -> None:
        """parallel(a, b, c) is a | b | c."""
        a, b, c = _nodes("a", "b", "c")
        assert materialize(flowdsl.parallel(a, b, c)).sources == ["a", "b", "c"]

    def test_empty_list_raises(self) -> None:
        """An empty list cannot be composed."""
        (a,) = _nodes("a")
        with pytest.raises(CompositionError, match=r"cannot compose an empty list of tasks"):
            a >> []

    def test_bad_operand_names_both(self) -> None:
        """Composing with an int says what was got and with what."""
        (a,) = _nodes("a")
        with pytest.raises(CompositionError,
                           match=r"cannot compose int 3: expected a Task, Tool, Fragment, "
                                 r"Flow or a list of them \(composing with <Task 'a'"):
            a >> 3


class TestPrecedence:
    def test_rshift_binds_tighter_than_or(self) -> None:
        """a >> b | c is (a >> b) | c, and the repr says so."""
        a, b, c = _nodes("a", "b", "c")
        frag = a >> b | c
        assert repr(frag).startswith("<Fragment (a >> b) | c:")
        assert _edges(frag) == {("a", "b")}

    def test_parentheses_change_grouping(self) -> None:
        """a >> (b | c) keeps the parentheses in the repr."""
        a, b, c = _nodes("a", "b", "c")
        assert repr(a >> (b | c)).startswith("<Fragment a >> (b | c):")

    def test_right_nested_same_kind(self) -> None:
        """a >> (b >> c) shows its parentheses; (a >> b) >> c needs none."""
        a, b, c = _nodes("a", "b", "c")
        assert repr(a >> (b >> c)).startswith("<Fragment a >> (b >> c):")
        assert repr((a >> b) >> c).startswith("<Fragment a >> b >> c:")

    def test_repr_counts(self) -> None:
        """A fragment's repr gives its task and edge counts."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        assert repr(a >> (b | c) >> d).endswith(": 4 tasks, 4 edges>")

    def test_long_repr_is_elided(self) -> None:
        """A long chain's repr is cut short."""
        frag = flowdsl.chain(*[step().named(f"t{i}") for i in range(100)])
        text = repr(frag)
        assert "..." in text
        assert text.endswith(": 100 tasks, 99 edges>")
        assert len(text) < 300


class TestNoMutation:
    def test_operands_unchanged(self) -> None:
        """>> and | return new values and leave their operands as they were."""
        a, b, c = _nodes("a", "b", "c")
        left = a >> b
        before = [_snapshot(x) for x in (a, b, c, left)]
        combined = (left >> c) | (c >> a)
        assert combined is not left
        assert [_snapshot(x) for x in (a, b, c, left)] == before
        assert _edges(left) == {("a", "b")}

    def test_list_operand_unchanged(self) -> None:
        """A list used as an operand is not modified."""
        a, b, c = _nodes("a", "b", "c")
        group = [b, c]
        a >> group
        group >> a
        assert group == [b, c]

    def test_fragment_reused_in_two_flows(self) -> None:
        """A fragment shared by two compositions gives each its own edges."""
        a, b, c, d = _nodes("a", "b", "c", "d")
        shared = a >> b
        one, two = shared >> c, shared >> d
        assert _edges(one) == {("a", "b"), ("b", "c")}
        assert _edges(two) == {("a", "b"), ("b", "d")}

    @given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.booleans()),
                    min_size=1, max_size=25))
    @settings(max_examples=60, deadline=None)
    def test_random_compositions_never_mutate(self, ops: list[tuple[int, int, bool]]) -> None:
        """Whatever is composed, every earlier value keeps its tasks and edges."""
        items: list[object] = _nodes(*[f"n{i}" for i in range(6)])
        for i, j, seq in ops:
            left, right = items[i % len(items)], items[j % len(items)]
            before = [(_snapshot(x), _edges(x) if seq else None) for x in (left, right)]
            items.append(left >> right if seq else left | right)
            after = [(_snapshot(x), _edges(x) if seq else None) for x in (left, right)]
            assert after == before


class TestTruth:
    def test_task_truth_raises(self) -> None:
        """bool(task) raises TypeError."""
        (a,) = _nodes("a")
        with pytest.raises(TypeError, match=r"a flowdsl Task has no truth value"):
            bool(a)

    def test_fragment_truth_raises(self) -> None:
        """`if a >> b:` raises TypeError."""
        a, b = _nodes("a", "b")
        with pytest.raises(TypeError, match=r"a flowdsl Fragment has no truth value"):
            if a >> b:
                pass

    def test_flow_truth_raises(self) -> None:
        """A Flow has no truth value either."""
        (a,) = _nodes("a")
        with pytest.raises(TypeError, match=r"Flow has no truth value"):
            bool(Flow("f", a))

    def test_ref_truth_raises(self) -> None:
        """A projection task['k'] has no truth value."""
        (a,) = _nodes("a")
        with pytest.raises(TypeError, match=r"reference has no truth value"):
            bool(a["k"])


class TestIds:
    def test_automatic_ids_unique_and_readable(self) -> None:
        """Automatic ids derive from the tool name, are unique in a flow, and a task holds
        none itself (its flow gives it one)."""
        tasks = [other() for _ in range(5)]
        assert all(t.id is None for t in tasks)
        assert list(materialize(flowdsl.parallel(*tasks)).tasks) == [
            "other", "other_2", "other_3", "other_4", "other_5"]

    def test_explicit_id(self) -> None:
        """.named() sets the id."""
        assert other().named("load").id == "load"

    def test_bad_id(self) -> None:
        """An empty id is refused."""
        with pytest.raises(CompositionError, match=r"task id must be a non-empty string"):
            other().named("")

    def test_duplicate_id_names_id_and_both_tools(self) -> None:
        """Two different tasks with one id raise DuplicateTaskError naming both tools (GR3)."""
        a = step(1).named("load")
        b = other(2).named("load")
        with pytest.raises(DuplicateTaskError,
                           match=r"two different tasks in one flow are named 'load': tools "
                                 r"step \(test_graph\.step\) and other \(test_graph\.other\)"
                           ) as info:
            materialize(a >> b)
        assert info.value.task_id == "load"
        assert isinstance(info.value, flowdsl.FlowError)

    def test_duplicate_via_reference(self) -> None:
        """A clash through an argument reference is found too."""
        a = step(1).named("dup")
        b = other(a).named("b")
        with pytest.raises(DuplicateTaskError, match=r"named 'dup'"):
            materialize(b | step(2).named("dup"))

    def test_same_object_twice_is_one_node(self) -> None:
        """The same Task object in two places is not a duplicate."""
        (a,) = _nodes("a")
        assert list(materialize(a | a | [a]).tasks) == ["a"]


class TestReferences:
    def test_task_argument_implies_dependency(self) -> None:
        """A Task passed as an argument becomes a predecessor and joins the flow."""
        a = step().named("a")
        b = other(a).named("b")
        g = materialize(b)
        assert list(g.tasks) == ["a", "b"]  # what an argument refers to comes first
        assert g.preds["b"] == {"a": None}
        assert b.upstream == (a,)

    def test_projection_implies_dependency(self) -> None:
        """task['key'][0] is a Ref whose task is a predecessor."""
        a = step().named("a")
        ref = a["rows"][0]
        assert isinstance(ref, Ref)
        assert ref.path == ("rows", 0)
        assert repr(ref) == "a['rows'][0]"
        assert materialize(other(ref).named("b")).preds["b"] == {"a": None}

    def test_nested_in_lists_and_dicts(self) -> None:
        """References nested in lists, tuples and dicts imply dependencies in order."""
        a, b, c = _nodes("a", "b", "c")
        t = step([a, {"k": (b["x"], ctx("key"))}], y={"z": [c]}).named("t")
        assert [u.id for u in t.upstream] == ["a", "b", "c"]
        assert t.dynamic
        assert materialize(t).preds["t"] == {"a": None, "b": None, "c": None}

    def test_literals_are_static(self) -> None:
        """Plain literals imply nothing."""
        t = step([1, {"a": (2, "x")}], y=None)
        assert t.upstream == ()
        assert t.dynamic is False

    def test_ctx_reference(self) -> None:
        """ctx('key') is a context reference with no task dependency."""
        t = step(ctx("user", default=None))
        ref = t.kwargs["x"]
        assert isinstance(ref, CtxRef)
        assert (ref.key, ref.default) == ("user", None)
        assert t.dynamic and t.upstream == ()

    def test_ctx_needs_string_key(self) -> None:
        """ctx(3) is refused."""
        with pytest.raises(CompositionError, match=r"ctx\(\) expects a string key, got int 3"):
            ctx(3)  # type: ignore[arg-type]

    def test_referenced_task_in_every_flow(self) -> None:
        """A referenced task belongs to every flow containing the referencing task."""
        a = step().named("a")
        b = other(a).named("b")
        c, d = _nodes("c", "d")
        assert "a" in materialize(c >> b).tasks
        assert "a" in materialize(Flow("f", b | d)).tasks

    def test_repr_lists_dependencies(self) -> None:
        """A task's repr shows id, tool and dependencies."""
        a = step().named("a")
        assert repr(a) == "<Task 'a' tool=step>"
        assert repr(other(a).named("b")) == "<Task 'b' tool=other after [a]>"


class TestPerTaskSettings:
    def test_when_returns_new_task(self) -> None:
        """.when() returns a new Task with the same id; the original has no condition."""
        a = step().named("a")
        b = a.when(lambda c: c["go"])
        assert b is not a and b.id == "a"
        assert a.condition is None
        assert b.condition({"go": True}) and not b.condition({"go": False})

    def test_when_combines_conditions(self) -> None:
        """Two .when() calls must both hold."""
        t = step().when(lambda c: c["a"]).when(lambda c: c["b"])
        assert t.condition({"a": 1, "b": 1}) and not t.condition({"a": 1, "b": 0})

    def test_when_needs_callable(self) -> None:
        """.when(True) is refused naming the task."""
        with pytest.raises(CompositionError, match=r"task 'w': \.when\(\) expects a callable"):
            step().named("w").when(True)  # type: ignore[arg-type]

    def test_to_context_key(self) -> None:
        """.to_context('k') stores the whole output."""
        a = step().named("a")
        assert a.to_context("k").to_context_map == "k"
        assert a.to_context_map is None

    def test_to_context_mapping(self) -> None:
        """.to_context({out: ctx}) maps some output keys."""
        a = step()
        assert a.to_context({"rows": "data"}).to_context_map == {"rows": "data"}

    def test_to_context_bad(self) -> None:
        """A mapping with non-string values is refused naming the task."""
        with pytest.raises(CompositionError, match=r"task 'm': \.to_context\(\) expects"):
            step().named("m").to_context({"a": 1})  # type: ignore[dict-item]

    def test_with_options(self) -> None:
        """.with_options() overrides this task's spec only."""
        a = step().named("a")
        b = a.with_options(timeout=2, retries=1, resources={"db": 1}, priority=5,
                           trigger="all_done")
        assert (b.spec.timeout, b.spec.retries, b.spec.priority, b.trigger) == (
            2.0, 1, 5.0, "all_done")
        assert dict(b.spec.resources) == {"db": 1}
        assert a.spec is step.spec and a.trigger == "all_success"

    def test_with_options_bad_value(self) -> None:
        """A bad per-task option names the tool, option and value."""
        with pytest.raises(flowdsl.ToolDefinitionError, match=r"option retries=-1"):
            step().with_options(retries=-1)

    def test_with_options_bad_trigger(self) -> None:
        """An unknown trigger rule is refused naming the task."""
        with pytest.raises(CompositionError, match=r"task 't': unknown trigger rule 'any'"):
            step().named("t").with_options(trigger="any")

    def test_with_options_refuses_rename(self) -> None:
        """Renaming goes through .named()."""
        with pytest.raises(CompositionError, match=r"use \.named\(\) to rename"):
            step().named("t").with_options(name="x")

    def test_task_is_immutable(self) -> None:
        """Setting an attribute on a Task raises."""
        a = step().named("a")
        with pytest.raises(AttributeError, match=r"Task 'a' is immutable"):
            a.id = "b"  # type: ignore[misc]


class TestFlow:
    def test_flow_holds_fragment(self) -> None:
        """Flow(name, fragment) keeps the composition and its description."""
        a, b = _nodes("a", "b")
        f = Flow("etl", a >> b, description="demo")
        assert (f.name, f.description) == ("etl", "demo")
        assert repr(f) == "<Flow 'etl': 2 tasks, 1 edges>"

    def test_flow_embedded(self) -> None:
        """A Flow composes into a larger flow like its fragment (explicit ids stay as given;
        automatic ones get the flow's name as a prefix)."""
        a, b, c = _nodes("a", "b", "c")
        inner = Flow("inner", a | b)
        assert _edges(inner >> c) == {("a", "c"), ("b", "c")}
        assert _edges(Flow("outer", [c, inner])) == set()
        assert list(materialize(Flow("outer", [c, inner, Flow("x", other())])).tasks) == [
            "c", "a", "b", "x.other"]

    def test_flow_name_required(self) -> None:
        """A Flow needs a non-empty name."""
        (a,) = _nodes("a")
        with pytest.raises(CompositionError, match=r"Flow name must be a non-empty string"):
            Flow("", a)

    def test_flow_from_list(self) -> None:
        """A list becomes a parallel group."""
        a, b = _nodes("a", "b")
        assert materialize(Flow("f", [a, b])).sources == ["a", "b"]


class TestScale:
    def test_long_chain_with_low_recursion_limit(self) -> None:
        """A 100k chain and group compose and flatten under a recursion limit of 200 (GR5)."""
        ts = [step().named(f"t{i}") for i in range(100_000)]
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(200)
        try:
            chain = ts[0]
            group = ts[0]
            for t in ts[1:]:
                chain = chain >> t
                group = group | t
            g = materialize(chain)
            w = materialize(group)
            text = repr(chain)
        finally:
            sys.setrecursionlimit(old)
        assert len(g.tasks) == 100_000 and g.preds["t99999"] == {"t99998": None}
        assert len(w.sources) == 100_000 and w.sinks[-1] == "t99999"
        assert text.endswith("100000 tasks, 99999 edges>")

    def test_shared_group_doubling_stays_small(self) -> None:
        """f = f | (f | t) sixty times flattens without visiting shared parts twice."""
        f: object = step().named("t0")
        for i in range(1, 60):
            f = f | (f | step().named(f"t{i}"))
        assert len(materialize(f).sources) == 60

    def test_deep_nesting_of_groups_plans_in_linear_time(self) -> None:
        """1,000 nested Flows, each a group (timeout=), around ``a >> b``: every group holds
        exactly the two tasks and is entered at ``a``. Each group's members used to be found
        by walking everything inside it again, O(depth x size): 1,000 levels took 1.5 s to
        plan (quadratic); the members of the groups inside are now reused."""
        import time

        def nest(depth: int) -> object:
            inner: object = step().named("a") >> step().named("b")
            for i in range(depth):
                inner = Flow(f"g{i}", inner).with_options(timeout=60)
            return inner

        plan = flowdsl.plan(nest(1_000))
        assert len(plan.groups) == 1_000
        for g in plan.groups:
            assert g.members == ("a", "b") and g.sources == ("a",)
        start = time.perf_counter()
        flowdsl.plan(nest(3_000))
        took = time.perf_counter() - start
        assert took < 2.0, f"planning 3,000 nested groups took {took:.2f} s"


def test_repr_of_clashing_ids_does_not_raise() -> None:
    """A fragment or flow with a duplicate id still has a repr that names the id."""
    a, b = step(1).named("x"), other(2).named("x")
    assert repr(a | b) == "<Fragment x | x: invalid, two different tasks are named 'x'>"
    assert repr(Flow("f", [a, b])) == "<Flow 'f': invalid, two different tasks are named 'x'>"
