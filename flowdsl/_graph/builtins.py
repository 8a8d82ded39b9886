"""Small tools flowdsl itself composes with, and what it builds from them: :func:`branch`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._base.errors import CompositionError
from .task import Fragment, Guard, Ref, Task, parallel, then
from .tool import tool

__all__ = ["branch", "gate", "switch"]


@tool(executor="inline", registry=False, name="gate")
def gate(value: Any = None, label: str = "") -> Any:
    """Pass the value through; its condition decides whether the path after it runs."""
    return value


def branch(predicate: Callable[[Mapping[str, Any]], Any], then_: Any,
           else_: Any = None, *, name: str = "branch") -> Fragment:
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


def switch(on: Task | Ref, cases: Mapping[Any, Any], default: Any = None, *,
           name: str = "switch") -> Fragment:
    """Pick one of several paths by a value computed at run time.

    ``on`` is a Task or a projection (``route["kind"]``); ``cases`` maps values to what runs
    for them (a Task, Fragment, Flow or list). Exactly the case whose key equals the value
    runs; the other cases' tasks end ``skipped`` with the reason "switch on 'route' chose
    'b'". With no match, ``default`` runs if given, else every case is skipped. Join the
    paths with a task whose trigger is ``none_failed_min_one_success``.

    Each case starts after a tiny gate task (``switch['b']``, or ``<name>['b']`` given
    ``name``) that passes ``on``'s value on, so a case made of pipeline stages receives it,
    and the choice shows in the graph.
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

    def case(label: str, test: Callable[[Any], Any], path: Any) -> Fragment:
        g = gate(on, label=label)
        # A given name is used as it is; the default one is an automatic id, numbered by the
        # flow (switch['b'], then switch['b']_2 for a second switch).
        g = g._replace(stem=label) if name == "switch" else g.named(label)
        return then(g._guarded(Guard(on, test, why, inherit=True)), path)

    paths = [case(f"{name}[{key!r}]", lambda v, k=key: v == k, path)
             for key, path in cases.items()]
    if default is not None:
        paths.append(case(f"{name}[default]", lambda v: all(v != k for k in keys), default))
    return parallel(*paths)
