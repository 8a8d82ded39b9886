"""Where ``run(cache=...)`` finds its result cache store.

The store lives in the record layer, above this one; the package root (which sits above every
layer) installs its opener here with :func:`set_default_store`, so the run layer never imports
upward and ``import flowdsl`` loads nothing heavy for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["open_backend", "set_default_store"]

_opener: Callable[[Any], Any] | None = None


def set_default_store(opener: Callable[[Any], Any]) -> None:
    """Say how ``run(cache=spec)`` finds its store: ``opener(spec)`` returns a
    :class:`~flowdsl._run.caching.CacheBackend`, or None when caching is off."""
    global _opener
    _opener = opener


def open_backend(spec: Any) -> Any:
    """The store ``run(cache=spec)`` names (None: caching is off, or no opener was
    installed because the run layer is used without the package root)."""
    return None if _opener is None else _opener(spec)
