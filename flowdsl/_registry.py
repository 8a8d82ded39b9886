"""Tools by name: a registry that ``@tool`` fills, looked up by workflows written as data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._errors import ToolDefinitionError
from ._tool import Tool

__all__ = ["ToolRegistry", "default_registry"]


def _origin(t: Tool) -> str:
    fn = t.fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _conflict(key: str, origins: list[str]) -> ToolDefinitionError:
    msg = (f"two different tools are registered as {key!r}: {' and '.join(origins)}; "
           "pass name= to tell them apart")
    return ToolDefinitionError(msg, tool=key, option="name", value=key)


class ToolRegistry:
    """Tools by name (namespaced names such as ``"search.web"`` are plain strings)."""

    def __init__(self, tools: Any = (), *, strict: bool = True) -> None:
        self._tools: dict[str, Tool] = {}
        # The default registry is not strict: two modules defining a tool of the same name
        # must both import; the name only becomes an error when it is looked up.
        self._strict = strict
        self._ambiguous: dict[str, list[str]] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Any, *, name: str | None = None,
                 replace_same_function: bool = False) -> Tool:
        """Register ``t`` under ``name`` (default: the tool's name) and return it.

        Raises:
            ToolDefinitionError: another function is registered under that name.
        """
        if not isinstance(t, Tool):
            from ._tool import make_tool

            t = make_tool(t, registry=False)
        key = name or t.name
        old = self._tools.get(key)
        if old is not None and old.fn is not t.fn:
            same_place = _origin(old) == _origin(t)
            # Functions local to another function are not addressable by name, and a
            # re-run notebook cell redefines the same function: both replace quietly.
            if not (replace_same_function and (same_place or "<locals>" in _origin(t))):
                if self._strict:
                    raise _conflict(key, [_origin(old), _origin(t)])
                self._ambiguous.setdefault(key, [_origin(old)]).append(_origin(t))
        self._tools[key] = t
        return t

    def __getitem__(self, name: str) -> Tool:
        if name in self._ambiguous:
            raise _conflict(name, self._ambiguous[name])
        try:
            return self._tools[name]
        except KeyError:
            msg = f"no tool named {name!r} in the registry"
            raise KeyError(msg) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._tools.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def __repr__(self) -> str:
        return f"<ToolRegistry {len(self._tools)} tools>"


default_registry = ToolRegistry(strict=False)
