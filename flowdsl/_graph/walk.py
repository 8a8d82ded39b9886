"""The one argument walker: how flowdsl looks inside a task's argument values.

Composition finds the tasks an argument refers to, the core swaps references for outputs, the
Dask executor swaps handles for futures, workflow documents swap ``{"$task": ...}`` objects for
references, and the optimizer points arguments at rebuilt tasks. They all walk the same shapes
through this module, so they agree on what a container is: lists, tuples (named tuples too),
sets, frozensets and dicts (keys stay literal: only values are walked), nested to any depth,
without recursion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .._base.errors import CompositionError

__all__ = ["KEEP", "nodes", "transform"]

# Classes that are never containers: checked first, since most argument values are these.
_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})
_SEQS = (list, tuple, set, frozenset)


class _Keep:
    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
"""Returned by a ``transform`` visitor: no replacement here; walk into it if it is a container."""


class _Leave:
    """A mark on :func:`nodes`' stack: the walk of container ``id`` is over."""

    __slots__ = ("id",)

    def __init__(self, ident: int) -> None:
        self.id = ident


def _cyclic(value: Any) -> CompositionError:
    """A container met again inside itself: walking it would never end."""
    kind = value.__class__.__name__
    msg = (f"an argument value contains itself (a {kind} that holds a reference to itself, "
           "directly or through other containers): flowdsl cannot walk a cyclic value; pass "
           "a copy without the cycle")
    return CompositionError(msg)


def _children(value: Any) -> list[Any] | None:
    """The walked children of a container (dict values, sequence items), else None."""
    cls = value.__class__
    if cls in _ATOMS:
        return None
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, _SEQS):
        return list(value)
    return None


def nodes(value: Any) -> Iterator[Any]:
    """Every value inside ``value`` (itself included), containers before their items, items
    left to right. Sets are walked in their own iteration order."""
    stack: list[Any] = [value]
    pop, push, append = stack.pop, stack.extend, stack.append
    path: set[int] = set()  # the containers being walked: meeting one again is a cycle
    while stack:
        v = pop()
        if v.__class__ is _Leave:
            path.discard(v.id)
            continue
        yield v
        kids = _children(v)
        if kids:
            if id(v) in path:
                raise _cyclic(v)
            path.add(id(v))
            append(_Leave(id(v)))
            kids.reverse()
            push(kids)


def _rebuild(old: Any, items: list[Any]) -> Any:
    if isinstance(old, dict):
        return dict(zip(old.keys(), items))
    cls = old.__class__
    if cls in (list, tuple, set, frozenset):
        return cls(items)
    if isinstance(old, tuple) and hasattr(old, "_fields"):  # a named tuple
        return cls(*items)
    try:
        return cls(items)
    except TypeError:  # a subclass with another constructor: keep the base type
        base = next(b for b in _SEQS if isinstance(old, b))
        return base(items)


def transform(value: Any, visit: Callable[[Any], Any]) -> Any:
    """``value`` with each node replaced by ``visit(node)`` unless that returns :data:`KEEP`,
    in which case a container is walked into and anything else stays as it is.

    A container is rebuilt (same type, dict keys kept) only if something inside it changed;
    otherwise the very same object comes back, so walking costs no copies.
    """
    new = visit(value)
    if new is not KEEP:
        return new
    kids = _children(value)
    if not kids:
        return value
    # Each frame: the container, its children, the results so far, whether any changed.
    frames: list[tuple[Any, list[Any], list[Any], list[bool]]] = [(value, kids, [], [False])]
    path = {id(value)}  # the containers of the frames: meeting one again is a cycle
    while True:
        container, pending, done, changed = frames[-1]
        if len(done) < len(pending):
            child = pending[len(done)]
            new = visit(child)
            if new is not KEEP:
                done.append(new)
                if new is not child:
                    changed[0] = True
                continue
            grand = _children(child)
            if grand:
                if id(child) in path:
                    raise _cyclic(child)
                path.add(id(child))
                frames.append((child, grand, [], [False]))
            else:
                done.append(child)
            continue
        frames.pop()
        path.discard(id(container))
        result = _rebuild(container, done) if changed[0] else container
        if not frames:
            return result
        parent_done, parent_changed = frames[-1][2], frames[-1][3]
        parent_done.append(result)
        if result is not container:
            parent_changed[0] = True
