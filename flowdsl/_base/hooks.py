"""Late binding between layers.

A lower layer sometimes offers a method whose work belongs to a higher one (``Flow.to_dict`` is
the data layer's, ``RunResult.gantt`` the report layer's). It names the service here instead of
importing the higher module; the package root (``flowdsl/__init__.py``), which sits above every
layer, says which function provides each service. The provider module is imported on first use,
so ``import flowdsl`` stays light and no layer imports one above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["get", "provide"]

_providers: dict[str, str | Callable[..., Any]] = {}


def provide(name: str, target: str | Callable[..., Any]) -> None:
    """Name the provider of ``name``: a callable, or ``"package.module:function"``."""
    _providers[name] = target


def get(name: str) -> Callable[..., Any]:
    """The provider of ``name``, importing its module the first time."""
    target = _providers.get(name)
    if target is None:
        msg = f"flowdsl: no provider for {name!r} (flowdsl/__init__.py wires them)"
        raise LookupError(msg)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _providers[name] = target
    return target
