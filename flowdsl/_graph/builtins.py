"""Small tools flowdsl itself composes with, and what it builds from them: :func:`branch`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .task import Fragment, _auto_id, parallel, then
from .tool import tool

__all__ = ["branch", "gate"]


@tool(executor="inline", registry=False, name="gate")
def gate(value: Any = None, label: str = "") -> Any:
    """Pass the value through; its condition decides whether the path after it runs."""
    return value


def branch(predicate: Callable[[Mapping[str, Any]], Any], then_: Any,
           else_: Any = None, *, name: str = "branch") -> Fragment:
    """An if/else over two paths: ``then_`` runs when ``predicate(context)`` is true when the
    branch is reached, ``else_`` otherwise; the path not taken is skipped.

    Both paths start after a tiny gate task, so the skip propagates through the usual trigger
    rules and shows in the graph.
    """
    yes = gate.stage(label=f"if {name}").named(_auto_id(f"{name}_if")).when(predicate)
    paths: list[Any] = [then(yes, then_)]
    if else_ is not None:
        no = gate.stage(label=f"else {name}").named(_auto_id(f"{name}_else")).when(
            lambda c: not predicate(c))
        paths.append(then(no, else_))
    return parallel(*paths)
