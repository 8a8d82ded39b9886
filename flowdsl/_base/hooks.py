"""Late binding for methods the public API puts on lower-layer objects.

A few public methods live on an object of a low layer while their work belongs to a higher
one: ``Flow.to_dict()`` is the data layer's, ``RunResult.gantt()`` the report layer's.
The method names the service here instead of importing the higher module; the package root
(``flowdsl/__init__.py``), which sits above every layer, says which function provides it. The
provider module is imported on first use, so ``import flowdsl`` stays light and no layer
imports one above it.

Only the services in :data:`SERVICES` exist, each with the reason it is a hook rather than a
plain import. None of them serves a run: a run's defaults (history, the result cache, the
progress display) are assembled by ``flowdsl.run`` above every layer and passed down as
objects (``flowdsl._report.entry``), and ``tests/test_defaults.py`` fails when the run layer
asks for any service but the two ``RunResult`` methods a user calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["SERVICES", "get", "provide"]

#: Every service, and why it is a hook. Notebook reprs are the intended case: Jupyter calls
#: them on the object itself. The others are public methods of a lower-layer object whose
#: work needs a higher layer's module (moving that work down would pull the document format,
#: pydantic or rich into the graph or run layer; dropping the method would change the public
#: API); each runs only when a user calls it, never on a run's path.
SERVICES: Mapping[str, str] = MappingProxyType({
    "flow_mimebundle": "Flow._repr_mimebundle_: a notebook repr (report layer's rendering)",
    "plan_mimebundle": "Plan._repr_mimebundle_: a notebook repr (report layer's rendering)",
    "result_html": "RunResult._repr_html_: a notebook repr (report layer's rendering)",
    "plan": "Flow.plan(): the graph layer's Flow offers the plan layer's planner",
    "to_mermaid": "Flow.to_mermaid(): the report layer's renderer",
    "to_dot": "Flow.to_dot(): the report layer's renderer",
    "flow_to_dict": "Flow.to_dict(): the data layer's document format",
    "tool_schema": "Tool.schema(): the data layer's JSON schemas (pydantic)",
    "registry_schemas": "ToolRegistry.schemas(): the data layer's JSON schemas (pydantic)",
    "save_timeline": "RunResult.gantt(): the report layer's timeline (matplotlib)",
})

_providers: dict[str, str | Callable[..., Any]] = {}


def provide(name: str, target: str | Callable[..., Any]) -> None:
    """Name the provider of ``name``: a callable, or ``"package.module:function"``.

    Raises:
        LookupError: ``name`` is not one of :data:`SERVICES` (add it there, with its reason).
    """
    if name not in SERVICES:
        msg = (f"flowdsl: {name!r} is not a service of flowdsl._base.hooks (SERVICES lists "
               "them, each with why it is a hook; a run's defaults are passed down instead)")
        raise LookupError(msg)
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
