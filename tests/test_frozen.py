"""Frozen values: assigning to (or deleting) an attribute of a Task, Fragment, Flow, a map's
fan spec, a group's unit spec, a ToolSpec or a Plan raises an error that names the class and
the attribute and says how to make a changed copy; the value is unchanged afterwards."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from flowdsl import Backoff, Cache, Flow, FlowError, FrozenError, tool


@tool
def inc(x: int) -> int:
    return x + 1


@tool
def total(xs: list[int]) -> int:
    return sum(xs)


def _values() -> dict[str, tuple[Any, str, str]]:
    """name -> (value, a public attribute, what the message must offer as the way out)."""
    a, b = inc(1), inc(2)
    frag = a >> b
    flow = Flow("f", frag | inc(3), mode="sequential")
    mapped = inc.map([1, 2, 3])
    assert mapped.fan is not None
    grouped = (inc(1) >> inc(2)).with_options(retries=1)
    assert grouped.unit is not None
    return {
        "Task": (a, "id", ".named("),
        "Fragment": (frag, "kind", ".with_options("),
        "Flow": (flow, "mode", "Flow("),
        "MapSpec": (mapped.fan, "max_parallel", ".with_options("),
        "Unit": (grouped.unit, "retries", ".with_options("),
        "ToolSpec": (inc(1).spec, "retries", ".with_options("),
        "Plan": (flow.plan(), "name", "flowdsl.plan("),
    }


@pytest.mark.parametrize("cls", ["Task", "Fragment", "Flow", "MapSpec", "Unit", "ToolSpec",
                                 "Plan"])
def test_assignment_raises_and_says_how_to_copy(cls: str) -> None:
    value, attr, way = _values()[cls]
    assert type(value).__name__ == cls
    before = getattr(value, attr)
    with pytest.raises(FrozenError) as info:
        setattr(value, attr, "changed")
    msg = str(info.value)
    assert f"{cls}.{attr}" in msg
    assert way in msg
    assert isinstance(info.value, AttributeError)
    assert isinstance(info.value, FlowError)
    assert getattr(value, attr) is before


@pytest.mark.parametrize("cls", ["Task", "Fragment", "Flow", "MapSpec", "Unit", "ToolSpec",
                                 "Plan"])
def test_deletion_raises(cls: str) -> None:
    value, attr, way = _values()[cls]
    before = getattr(value, attr)
    with pytest.raises(FrozenError, match=rf"cannot delete {cls}\.{attr}") as info:
        delattr(value, attr)
    assert way in str(info.value)
    assert getattr(value, attr) is before


@pytest.mark.parametrize("cls", ["Task", "Fragment", "Flow", "MapSpec", "Unit", "Plan"])
def test_a_new_attribute_is_refused_too(cls: str) -> None:
    value, _, _ = _values()[cls]
    with pytest.raises(FrozenError, match=rf"{cls}\.colour"):
        value.colour = "red"


@pytest.mark.parametrize("value", [Backoff(initial=1.0), Cache(ttl=5.0)])
def test_the_public_option_values_refuse_the_same_way(value: Any) -> None:
    """Backoff and Cache (frozen dataclasses) raise the same FrozenError, not dataclasses'
    FrozenInstanceError, which names neither the class nor the way out."""
    cls = type(value).__name__
    with pytest.raises(FrozenError, match=rf"{cls}\.ttl.*dataclasses\.replace"):
        value.ttl = 1.0
    changed = dataclasses.replace(value)
    assert changed == value and changed is not value


def test_the_issue_examples_leave_no_stale_graph() -> None:
    """`flow.mode = ...`, `flow.name = ...` and `fragment.kind = ...` used to work and leave
    the cached graph of the old value behind."""
    frag = inc(1) | inc(2)
    flow = Flow("f", frag)
    before = flow.plan()
    for obj, attr, value in ((flow, "mode", "sequential"), (flow, "name", "g"),
                             (frag, "kind", "then")):
        with pytest.raises(FrozenError):
            setattr(obj, attr, value)
    assert flow.mode is None and flow.name == "f" and frag.kind == "par"
    after = flow.plan()
    assert after.predecessors == before.predecessors
    assert len(after.levels) == 1  # still side by side


def test_changed_copies_are_made_the_documented_ways() -> None:
    t = inc(1)
    assert t.named("one").id == "one" and t.id is None
    assert t.with_options(retries=2).spec.retries == 2 and t.spec.retries == 0
    spec = t.spec.evolve(retries=3)
    assert spec.retries == 3 and t.spec.retries == 0
    mapped = inc.map([1, 2])
    assert mapped.with_options(max_parallel=1).fan.max_parallel == 1  # type: ignore[union-attr]
    assert mapped.fan.max_parallel is None  # type: ignore[union-attr]
    frag = inc(1) >> inc(2)
    assert frag.with_options(retries=2).unit.retries == 2  # type: ignore[union-attr]
    assert frag.unit is None


def test_caches_still_fill_on_frozen_values() -> None:
    """Derived caches (a Fragment's graph, a Flow's part, a Plan's index) live in private
    slots set once; freezing the public state must not break them."""
    frag = inc(1) >> inc(2)
    flow = Flow("f", frag).with_options(retries=1)
    p = flow.plan()
    assert p.index(p.order[-1]) == len(p) - 1
    assert p.needs_fork is False
    assert (flow >> inc(5)).plan().name is None  # builds and reuses flow's part
    assert flow._part() is flow._part()


@pytest.mark.parametrize("cls", ["Task", "Fragment", "Flow", "MapSpec", "Unit", "ToolSpec"])
def test_copy_and_pickle_round_trip(cls: str) -> None:
    value, attr, _ = _values()[cls]
    clones = [copy.copy(value)]
    if cls in ("MapSpec", "Unit"):  # a ToolSpec's resources (a mappingproxy) neither
        # deepcopy nor pickle, so nothing holding one does; that predates freezing
        clones += [copy.deepcopy(value), pickle.loads(pickle.dumps(value))]
    for clone in clones:
        assert type(clone) is type(value)
        got = getattr(clone, attr)
        assert got == getattr(value, attr) or cls == "MapSpec"
        with pytest.raises(FrozenError):
            setattr(clone, attr, "changed")
