"""The one argument walker (flowdsl._graph.walk) and what rests on it: every container shape
an argument may take is seen alike by composition, the core, documents and the optimizer."""

from __future__ import annotations

import sys
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import run, tl

from flowdsl import CompositionError, Flow
from flowdsl._graph.walk import KEEP, nodes, transform

Pair = namedtuple("Pair", "left right")

# Argument-shaped values: atoms inside lists, tuples, frozensets and dicts, nested.
atoms = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.booleans())
values = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=4),
    ),
    max_leaves=20,
)


class TestWalker:
    @given(values)
    def test_identity_visit_returns_the_same_object(self, value: Any) -> None:
        """Nothing replaced: no copy is made, at any depth."""
        assert transform(value, lambda v: KEEP) is value

    @given(values)
    def test_replacing_every_int_matches_a_recursive_reference(self, value: Any) -> None:
        def reference(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, list, tuple, frozenset, dict)):
                return v
            if isinstance(v, int):
                return v + 1
            if isinstance(v, dict):
                return {k: reference(x) for k, x in v.items()}
            return type(v)(reference(x) for x in v)

        def bump(v: Any) -> Any:
            return v + 1 if type(v) is int else KEEP

        assert transform(value, bump) == reference(value)

    @given(values)
    def test_nodes_visits_every_leaf(self, value: Any) -> None:
        def leaves(v: Any) -> list[Any]:
            if isinstance(v, dict):
                return [x for c in v.values() for x in leaves(c)]
            if isinstance(v, (list, tuple, frozenset)):
                return [x for c in v for x in leaves(c)]
            return [v]

        seen = [v for v in nodes(value) if not isinstance(v, (dict, list, tuple, frozenset))]
        assert sorted(map(repr, seen)) == sorted(map(repr, leaves(value)))

    def test_dict_keys_stay_literal_and_named_tuples_keep_their_type(self) -> None:
        value = {1: [1, Pair(1, {2: 2})]}
        out = transform(value, lambda v: v * 10 if type(v) is int else KEEP)
        assert out == {1: [10, Pair(10, {2: 20})]}
        assert type(out[1][1]) is Pair

    def test_deep_nesting_needs_no_recursion(self) -> None:
        deep: Any = 0
        for _ in range(sys.getrecursionlimit() * 3):
            deep = [deep]
        out = transform(deep, lambda v: 1 if v == 0 and type(v) is int else KEEP)
        for _ in range(sys.getrecursionlimit() * 3):
            out = out[0]
        assert out == 1


class TestContainersInArguments:
    """A task inside any container is a dependency AND the tool receives its output there
    (a set used to give the tool the Task object itself)."""

    def test_every_container_in_every_mode(self, mode: str) -> None:
        @tl
        def num(x: int) -> int:
            return x

        @tl
        def show(value: Any) -> Any:
            return value

        a, b = num(1), num(2)
        shapes = {
            "set": {a}, "frozenset": frozenset([a]), "tuple": (a, b), "named": Pair(a, b),
            "nested": {"k": [a, (b, {a})]},
        }
        for name, arg in shapes.items():
            sink = show(arg).named(f"show_{name}")
            result = run(Flow(name, [a, b] >> sink if mode == "pipeline" else sink),
                         mode=mode, input=0)
            assert result.ok, (name, result.error)
            out = result.outputs[f"show_{name}"]
            expected = {
                "set": {1}, "frozenset": frozenset([1]), "tuple": (1, 2), "named": Pair(1, 2),
                "nested": {"k": [1, (2, {1})]},
            }[name]
            assert out == expected, name
            assert type(out) is type(expected), name


class TestCyclicValues:
    """A value that contains itself is refused with a CompositionError (the walk used to
    loop forever: composing ``f(a)`` with ``a.append(a)`` hung), while a container shared
    by two places, which is no cycle, is walked in both."""

    def test_nodes_refuses_a_list_that_holds_itself(self) -> None:
        a: list[Any] = [1]
        a.append({"again": a})
        with pytest.raises(CompositionError, match="contains itself"):
            list(nodes(a))

    def test_transform_refuses_a_dict_that_holds_itself(self) -> None:
        d: dict[str, Any] = {"k": [1]}
        d["k"].append(d)
        with pytest.raises(CompositionError, match="contains itself"):
            transform(d, lambda v: KEEP)

    def test_composing_a_task_over_a_cyclic_argument_fails_at_once(self) -> None:
        a: list[Any] = [1]
        a.append(a)
        with pytest.raises(CompositionError, match="contains itself"):
            tl(len)(a)

    def test_a_shared_container_is_no_cycle(self) -> None:
        shared = [1, 2]
        assert list(nodes([shared, shared])).count(shared) == 2
        assert run(tl(lambda x: len(x))([shared, shared])).output == 2
