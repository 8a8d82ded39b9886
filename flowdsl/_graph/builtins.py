"""Small tools flowdsl itself composes with, and what it builds from them: :func:`branch`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._base.errors import CompositionError
from .task import Fragment, Guard, Ref, Task, parallel, then
from .tool import tool

__all__ = ["SKIP", "branch", "gate", "switch"]


@tool(executor="inline", registry=False, name="gate")
def gate(value: Any = None, label: str = "") -> Any:
    """Pass the value through; its condition decides whether the path after it runs."""
    return value


def branch(predicate: Callable[[Mapping[str, Any]], Any], then_: Any,
           else_: Any = None, *, name: str = "branch") -> Fragment[Any]:
    """An if/else over two paths: ``then_`` runs when ``predicate(context)`` is true when the
    branch is reached, ``else_`` otherwise; the path not taken is skipped.

    Both paths start after a tiny gate task, so the skip propagates through the usual trigger
    rules and shows in the graph. The gates get automatic ids made from ``name``
    (``branch_if``, ``branch_else``; numbered like any id when a flow has several).
    """
    yes = gate.stage(label=f"if {name}")._replace(stem=f"{name}_if").when(predicate)
    paths: list[Any] = [then(yes, then_)]
    if else_ is not None:
        no = gate.stage(label=f"else {name}")._replace(stem=f"{name}_else").when(
            lambda c: not predicate(c))
        paths.append(then(no, else_))
    return parallel(*paths)


class _Skip:
    """The type of :data:`SKIP` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "flowdsl.SKIP"

    def __reduce__(self) -> str:
        return "SKIP"  # unpickles as the one instance


#: ``switch(..., default=SKIP)``: when the value matches no case, skip every case on purpose
#: (without it, a switch that matches nothing fails).
SKIP: Any = _Skip()


def switch(on: Task[Any] | Ref, cases: Mapping[Any, Any], default: Any = None, *,
           name: str = "switch") -> Fragment[Any]:
    """Pick one of several paths by a value computed at run time.

    ``on`` is a Task or a projection (``route["kind"]``); ``cases`` maps values to what runs
    for them (a Task, Fragment, Flow or list). Exactly the case whose key equals the value
    runs; the other cases' tasks end ``skipped`` with the reason "switch on 'route' chose
    'b'". With no match, ``default`` runs if given; without a default the switch *fails*:
    the gate of its first case ends ``failed`` with an error naming the value and the cases
    (the other cases are skipped). ``default=flowdsl.SKIP`` skips every case on purpose
    instead. Join the paths with a task whose trigger is ``none_failed_min_one_success``.

    Each case starts after a tiny gate task (``switch['b']``, or ``<name>['b']`` given
    ``name``) that passes ``on``'s value on, so a case made of pipeline stages receives it,
    and the choice shows in the graph. One object given as the path of several cases
    (``{"a": t, "b": t}``) gets one gate for all of them (``switch['a', 'b']``), so it runs
    when any of those cases is chosen.
    """
    if not isinstance(on, (Task, Ref)):
        msg = (f"switch(on=...) expects a Task or a projection task['key'], got "
               f"{type(on).__name__} {on!r}"[:200])
        raise CompositionError(msg)
    if not isinstance(cases, Mapping) or not cases:
        msg = f"switch(cases=...) expects a non-empty mapping of value -> path, got {cases!r}"
        raise CompositionError(msg)
    keys = list(cases)

    def why(on_name: str, value: Any) -> str:
        if any(value == k for k in keys):
            return f"switch on {on_name} chose {value!r}"[:200]
        return f"switch on {on_name} matched no case (got {value!r})"[:200]

    def no_match(on_name: str, value: Any) -> str | None:
        if any(value == k for k in keys):
            return None
        listed = ", ".join(map(repr, keys))
        return (f"switch on {on_name} matched no case: got {value!r}"[:200]
                + f" (cases: {listed}"[:200] + "); give it default=<a path> to run then, or "
                "default=flowdsl.SKIP to skip every case on purpose")

    def case(label: str, test: Callable[[Any], Any], path: Any, fails: bool) -> Fragment[Any]:
        g = gate(on, label=label)
        # A given name is used as it is; the default one is an automatic id, numbered by the
        # flow (switch['b'], then switch['b']_2 for a second switch).
        g = g._replace(stem=label) if name == "switch" else g.named(label)
        guard = Guard(on, test, why, inherit=True, fail=no_match if fails else None)
        return then(g._guarded(guard), path)

    # Cases given the same object share one gate: a task that is the path of two cases
    # must run when either is chosen, not wait for both gates.
    shared: list[tuple[list[Any], Any]] = []
    for key, path in cases.items():
        for group in shared:
            if group[1] is path:
                group[0].append(key)
                break
        else:
            shared.append(([key], path))
    def matches(ks: tuple[Any, ...]) -> Callable[[Any], bool]:
        if len(ks) == 1:
            k = ks[0]
            return lambda v: bool(v == k)
        return lambda v: any(v == k for k in ks)

    strict = default is None  # no default: matching nothing is an error (first gate's)
    paths = [case(f"{name}[{', '.join(map(repr, ks))}]", matches(tuple(ks)), path,
                  strict and n == 0)
             for n, (ks, path) in enumerate(shared)]
    if default is not None and default is not SKIP:
        paths.append(case(f"{name}[default]", lambda v: all(v != k for k in keys), default,
                          False))
    return parallel(*paths)
