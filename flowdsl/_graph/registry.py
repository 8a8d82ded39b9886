"""Tools by name: a registry that ``@tool`` fills, looked up by workflows written as data.

A registry also holds named predicates, so a workflow document can say ``"when": "is_urgent"``
and run a function the user registered, never code taken from the document itself.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .._base import hooks
from .._base.errors import ToolDefinitionError
from . import tool as _tool_module
from .tool import Tool, make_tool, tool

__all__ = ["FUNCTION_NAME", "ToolRegistry", "default_registry", "function_name"]

Predicate = Callable[[Mapping[str, Any]], Any]

#: What OpenAI and Anthropic accept as a function (tool) name.
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")


def function_name(name: str) -> str:
    """The registry name ``name`` as a function-calling name providers accept
    (``^[a-zA-Z0-9_-]{1,64}$``): a dot becomes ``__`` (``search.web`` -> ``search__web``),
    any other character outside the pattern ``_``, and a name still longer than 64 keeps its
    first 55 characters plus ``_`` and 8 hex digits of its hash. Valid names are unchanged.
    """
    if FUNCTION_NAME.match(name):
        return name
    out = _INVALID.sub("_", name.replace(".", "__")) or "_"
    if len(out) > 64:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        out = f"{out[:55]}_{digest}"
    return out


def _origin(t: Tool[..., Any]) -> str:
    fn = t.fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _conflict(key: str, origins: list[str]) -> ToolDefinitionError:
    msg = (f"two different tools are registered as {key!r}: {' and '.join(origins)}; "
           "pass name= to tell them apart")
    return ToolDefinitionError(msg, tool=key, option="name", value=key)


def _collision(alias: str, keys: list[str]) -> ToolDefinitionError:
    msg = (f"tools {' and '.join(map(repr, keys))} would both be published as function name "
           f"{alias!r}; rename one of them (name=...)")
    return ToolDefinitionError(msg, tool=keys[0], option="name", value=alias)


class ToolRegistry:
    """Tools by name (namespaced names such as ``"search.web"`` are plain strings).

    Args:
        tools: tools (or plain functions) to register at once; a mapping registers each
            value under its key.
        strict: raise as soon as two different functions claim one name. The default
            registry is not strict: the name only fails when it is looked up.

    Example:
        >>> reg = ToolRegistry()
        >>> @tool(registry=reg, name="search.web")
        ... def web(query: str) -> list[str]: ...
        >>> reg["search.web"] is web
        True
    """

    def __init__(self, tools: Any = (), *, strict: bool = True) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        # The default registry is not strict: two modules defining a tool of the same name
        # must both import; the name only becomes an error when it is looked up.
        self._strict = strict
        self._ambiguous: dict[str, list[str]] = {}
        self._predicates: dict[str, Predicate] = {}
        self._aliases: dict[str, list[str]] | None = None  # function name -> registry names
        if isinstance(tools, Mapping):
            for key, t in tools.items():
                self.register(t, name=key)
        else:
            for t in tools:
                self.register(t)

    def register(self, t: Tool[..., Any] | Callable[..., Any], *, name: str | None = None,
                 replace_same_function: bool = False) -> Tool[..., Any]:
        """Register ``t`` under ``name`` (default: the tool's name) and return it.

        Args:
            t: a :class:`~flowdsl.Tool` or a plain function (made a tool, unregistered
                elsewhere).
            name: the name to register under; dots namespace it (``"search.web"``).
            replace_same_function: let a redefinition of the same function (same module and
                qualified name, or a function local to another) replace the old one.

        Raises:
            ToolDefinitionError: another function is registered under that name (strict
                registries), or the name is not a non-empty string.
        """
        if not isinstance(t, Tool):
            t = make_tool(t, registry=False)
        key = t.name if name is None else name
        if not isinstance(key, str) or not key:
            msg = f"a tool must be registered under a non-empty string, got {key!r}"
            raise ToolDefinitionError(msg, tool=t.name, option="name", value=key)
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
        self._aliases = None
        return t

    def tool(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """``@registry.tool`` / ``@registry.tool(name="x.y")``: declare a tool registered here
        (and only here)."""
        return tool(fn, registry=self, **options) if fn is not None else tool(
            registry=self, **options)

    def __getitem__(self, name: str) -> Tool[..., Any]:
        if name in self._ambiguous:
            raise _conflict(name, self._ambiguous[name])
        try:
            return self._tools[name]
        except (KeyError, TypeError):
            key = self.from_function_name(name) if isinstance(name, str) else None
            if key is not None:  # an agent called the tool by its function-calling name
                return self[key]
            close = self.suggest(name) if isinstance(name, str) else []
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            msg = f"no tool named {name!r} in the registry{hint}"
            raise KeyError(msg) from None

    def get(self, name: str, default: Any = None) -> Any:
        """The tool registered as ``name`` (or under that function-calling name), or
        ``default``."""
        found = self._tools.get(name)
        if found is None and isinstance(name, str):
            key = self.from_function_name(name)
            found = None if key is None else self._tools.get(key)
        return default if found is None else found

    def function_names(self) -> dict[str, str]:
        """Registry name -> the function-calling name published for it
        (:func:`function_name`).

        Raises:
            ToolDefinitionError: two registry names map to one function name.
        """
        for alias, keys in self._alias_index().items():
            if len(keys) > 1:
                raise _collision(alias, keys)
        return {key: function_name(key) for key in self._tools}

    def from_function_name(self, name: str) -> str | None:
        """The registry name published as function name ``name`` (``search__web`` ->
        ``search.web``), ``None`` when no tool has it.

        Raises:
            ToolDefinitionError: several registry names map to ``name``.
        """
        if name in self._tools:
            return name
        keys = self._alias_index().get(name)
        if not keys:
            return None
        if len(keys) > 1:
            raise _collision(name, keys)
        return keys[0]

    def _alias_index(self) -> dict[str, list[str]]:
        if self._aliases is None:  # rebuilt after a registration, on the next lookup
            index: dict[str, list[str]] = {}
            for key in self._tools:
                index.setdefault(function_name(key), []).append(key)
            self._aliases = index
        return self._aliases

    def is_ambiguous(self, name: str) -> bool:
        """True when several functions claimed ``name`` in a non-strict registry."""
        return name in self._ambiguous

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """The registered names closest to ``name`` (for "did you mean" messages)."""
        return difflib.get_close_matches(name, list(self._tools), n=n, cutoff=0.6)

    def __contains__(self, name: object) -> bool:
        if name in self._tools:
            return True
        return isinstance(name, str) and name in self._alias_index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._tools)

    def items(self) -> list[tuple[str, Tool[..., Any]]]:
        """``(name, tool)`` pairs, in registration order."""
        return list(self._tools.items())

    def schemas(self, style: str = "plain") -> list[dict[str, Any]]:
        """Each tool's function-calling description (needs ``flowdsl[schema]``).

        Args:
            style: ``"plain"`` (``{"name", "description", "parameters"}``), ``"openai"``
                (``{"type": "function", "function": {...}}``) or ``"anthropic"``
                (``{"name", "description", "input_schema"}``).
        """
        schemas: list[dict[str, Any]] = hooks.get("registry_schemas")(self, style)
        return schemas

    # -- named predicates, for ``"when": "name"`` in workflow documents ----------------------

    def predicate(self, fn: Predicate | None = None, /, *, name: str | None = None) -> Any:
        """Register a condition a workflow document may name in ``when``.

        Works bare (``@registry.predicate``) and with a name (``@registry.predicate(name=...)``);
        the function receives the run context and returns a truth value.
        """
        def add(f: Predicate) -> Predicate:
            if not callable(f):
                msg = f"a predicate must be callable, got {f!r}"
                raise ToolDefinitionError(msg, option="predicate", value=f)
            key = name or getattr(f, "__name__", None)
            if not isinstance(key, str) or not key:
                msg = f"a predicate needs a non-empty string name, got {key!r}"
                raise ToolDefinitionError(msg, option="name", value=key)
            old = self._predicates.get(key)
            if old is not None and old is not f and self._strict:
                msg = f"two different predicates are registered as {key!r}"
                raise ToolDefinitionError(msg, option="name", value=key)
            self._predicates[key] = f
            return f

        return add(fn) if fn is not None else add

    @property
    def predicates(self) -> Mapping[str, Predicate]:
        """The named predicates (a read-only view)."""
        return MappingProxyType(self._predicates)

    def __repr__(self) -> str:
        return f"<ToolRegistry {len(self._tools)} tools>"


default_registry = ToolRegistry(strict=False)
_tool_module._default_registry = default_registry
