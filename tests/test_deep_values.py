"""Values nested 100,000 deep (lists, dicts, both) pass through every serializer a run, its
result and its documents use, without the recursion limit: the secrets masker, a result's JSON
form, a flow written as a document, and a run that records its outputs in history."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
from support import tl

import flowdsl
from flowdsl import CompositionError, Flow, Secret, TaskStatus
from flowdsl._base.secrets import Masker
from flowdsl._data.documents import _to_data, flow_to_dict
from flowdsl._run.result import _jsonable

DEPTH = 100_000
SECRET = "deep-secret-token"  # long enough to be masked


def nest(kind: str, leaf: Any, depth: int = DEPTH) -> Any:
    """``leaf`` inside ``depth`` lists, dicts (``{"k": ...}``) or the two in turn."""
    value = leaf
    for level in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and level % 2) else {"k": value}
    return value


def unnest(value: Any) -> tuple[int, Any, set[str]]:
    """How deep ``value`` goes, what it holds at the bottom and the container types met
    (without recursion: == and repr of such a value would hit the limit themselves)."""
    depth, kinds = 0, set()
    while isinstance(value, (list, tuple, dict)):
        kinds.add(type(value).__name__)
        if isinstance(value, dict):
            assert list(value) == ["k"]
            value = value["k"]
        else:
            assert len(value) == 1
            value = value[0]
        depth += 1
    return depth, value, kinds


KINDS = {"list": {"list"}, "dict": {"dict"}, "mixed": {"list", "dict"}}


@pytest.mark.parametrize("kind", KINDS)
def test_masker(kind: str) -> None:
    """The masker copies the whole depth and masks the secret at the bottom."""
    out = Masker([SECRET]).data(nest(kind, f"key={SECRET}"))
    assert unnest(out) == (DEPTH, "key=***", KINDS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_jsonable(kind: str) -> None:
    """A result's JSON form of a deep value: every level kept, a non-JSON leaf as its repr."""
    assert unnest(_jsonable(nest(kind, 1.5j))) == (DEPTH, "1.5j", KINDS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_flow_to_dict(kind: str) -> None:
    """A task whose argument is nested 100,000 deep is written as a document."""
    echo = tl(lambda v: v, name="echo")
    reg = flowdsl.ToolRegistry({"echo": echo})
    doc = flow_to_dict(Flow("deep", echo(nest(kind, "leaf")).named("e")), reg)
    assert unnest(doc["tasks"][0]["args"]["v"]) == (DEPTH, "leaf", KINDS[kind])


def test_cycles_end_instead_of_looping() -> None:
    """A list or dict inside itself: the masker and the JSON form write repr's ``[...]`` /
    ``{...}`` there; a document refuses it, naming where."""
    loop: list[Any] = [1]
    loop.append(loop)
    ring: dict[str, Any] = {}
    ring["self"] = ring
    masker = Masker([SECRET])
    assert masker.data(loop) == [1, "[...]"] and _jsonable(loop) == [1, "[...]"]
    assert masker.data(ring) == {"self": "{...}"} and _jsonable(ring) == {"self": "{...}"}
    shared = [SECRET]
    assert masker.data([shared, shared]) == [["***"], ["***"]]  # repeated, not a cycle
    # (A task cannot be made with such an argument yet: the argument walker does not end.)
    with pytest.raises(CompositionError, match=r"task 'e': argument v\[1\] contains itself"):
        _to_data(loop, "e", "v", {})
    with pytest.raises(CompositionError, match=r"argument v\.self contains itself"):
        _to_data(ring, "e", "v", {})


def test_a_documents_error_names_the_deep_path() -> None:
    """What a document cannot express is named by its path, as before."""
    @dataclasses.dataclass
    class Box:
        items: list[Any]

    echo = tl(lambda v: v, name="echo")
    reg = flowdsl.ToolRegistry({"echo": echo})
    flow = Flow("bad", echo([{"a": Box([1, {2}])}]).named("e"))
    with pytest.raises(CompositionError, match=r"argument v\[0\]\.a\.items\[1\] is a set"):
        flow_to_dict(flow, reg)


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_with_history_keeps_a_deep_output(kind: str, tmp_path: Path) -> None:
    """A tool returns a value nested 100,000 deep, with a secret in use and history on: the
    run completes with the value, its JSON form is masked, and history (storing outputs)
    stores a marker saying why (JSON text that deep could not be read back), with a
    warning."""
    @tl
    def deep(token: Secret[str]) -> Any:
        return nest(kind, f"key={token.get()}")

    with flowdsl.open_history(tmp_path / "h.db") as store:
        with pytest.warns(RuntimeWarning, match="nested deeper than JSON text can be read"):
            result = flowdsl.run(deep(Secret(SECRET)).named("d"), history=store,
                                 store_outputs=True)
        assert result.ok and result.tasks["d"].status is TaskStatus.COMPLETED
        assert unnest(result.output) == (DEPTH, f"key={SECRET}", KINDS[kind])
        assert unnest(result.to_dict()["output"]) == (DEPTH, "key=***", KINDS[kind])
        store.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stored = store.load_outputs(result.run_id)
    assert "nested deeper" in stored["d"]["__flowdsl_omitted__"]
    assert SECRET not in str(stored)
