"""Tests for ToolRegistry: names, namespaces, conflicts, predicates and schemas."""

from __future__ import annotations

import pytest

import flowdsl
from flowdsl import ToolDefinitionError, ToolRegistry, default_registry, tool


def _fn(name: str, module: str):
    def f(x: int) -> int:
        return x

    f.__name__ = f.__qualname__ = name
    f.__module__ = module
    return f


class TestLookup:
    def test_register_and_lookup(self):
        """A tool registered in a registry is found by name, `in` and iteration."""
        reg = ToolRegistry()

        @tool(registry=reg)
        def fetch(url: str) -> str:
            return url

        assert reg["fetch"] is fetch
        assert "fetch" in reg
        assert list(reg) == ["fetch"]
        assert len(reg) == 1
        assert reg.items() == [("fetch", fetch)]

    def test_namespaced_name(self):
        """Dotted names are plain keys, so "search.web" and "search.news" coexist."""
        reg = ToolRegistry()
        web = tool(_fn("web", "m"), registry=reg, name="search.web")
        news = tool(_fn("news", "m"), registry=reg, name="search.news")
        assert reg["search.web"] is web
        assert reg["search.news"] is news

    def test_explicit_registry_keeps_default_clean(self):
        """@tool(registry=reg) does not also fill the default registry."""
        reg = ToolRegistry()
        t = tool(_fn("only_in_reg_7f3", "m"), registry=reg)
        assert "only_in_reg_7f3" in reg
        assert default_registry.get("only_in_reg_7f3") is not t

    def test_default_registry_filled_by_tool(self):
        """A bare @tool lands in the default registry."""
        t = tool(_fn("in_default_91c", "some.module"))
        assert default_registry["in_default_91c"] is t

    def test_unknown_name_suggests(self):
        """Looking up a misspelt name raises KeyError naming the closest tools."""
        reg = ToolRegistry([tool(_fn("summarize", "m"), registry=False)])
        with pytest.raises(KeyError, match="summarize"):
            reg["sumarize"]
        assert reg.suggest("sumarize") == ["summarize"]

    def test_register_plain_function(self):
        """A plain function is made a tool when registered."""
        reg = ToolRegistry()
        t = reg.register(_fn("plain", "m"))
        assert reg["plain"] is t
        assert t.name == "plain"

    def test_mapping_registers_under_keys(self):
        """A mapping of name -> function registers each under its key."""
        reg = ToolRegistry({"a.b": _fn("f", "m")})
        assert reg["a.b"].fn.__name__ == "f"

    def test_bad_name(self):
        """Registering under a non-string name raises ToolDefinitionError."""
        with pytest.raises(ToolDefinitionError, match="non-empty string"):
            ToolRegistry().register(_fn("f", "m"), name=3)  # type: ignore[arg-type]


class TestConflicts:
    def test_strict_conflict_names_both_functions(self):
        """Two different functions under one name raise, naming the name and both."""
        reg = ToolRegistry()
        reg.register(_fn("load", "pkg.a"))
        with pytest.raises(ToolDefinitionError, match=r"'load'.*pkg\.a\.load.*pkg\.b\.load"):
            reg.register(_fn("load", "pkg.b"))

    def test_non_strict_fails_on_lookup_only(self):
        """A non-strict registry accepts both; looking the name up raises."""
        reg = ToolRegistry(strict=False)
        reg.register(_fn("load", "pkg.a"), replace_same_function=True)
        reg.register(_fn("load", "pkg.b"), replace_same_function=True)
        assert reg.is_ambiguous("load")
        with pytest.raises(ToolDefinitionError, match=r"pkg\.a\.load and pkg\.b\.load"):
            reg["load"]

    def test_same_function_redefined_replaces(self):
        """Redefining the same function (a re-run notebook cell) replaces quietly."""
        reg = ToolRegistry()
        reg.register(_fn("cell", "__main__"), replace_same_function=True)
        second = reg.register(_fn("cell", "__main__"), replace_same_function=True)
        assert reg["cell"] is second

    def test_same_tool_twice_is_fine(self):
        """Registering the same tool twice is not a conflict."""
        reg = ToolRegistry()
        t = tool(_fn("same", "m"), registry=False)
        reg.register(t)
        assert reg.register(t) is t


class TestPredicates:
    def test_register_predicate(self):
        """@registry.predicate registers a named condition."""
        reg = ToolRegistry()

        @reg.predicate
        def urgent(c):
            return c.get("level", 0) > 3

        assert reg.predicates["urgent"] is urgent

    def test_predicate_with_name_and_conflict(self):
        """A strict registry refuses two different predicates under one name."""
        reg = ToolRegistry()
        reg.predicate(lambda c: True, name="p")
        with pytest.raises(ToolDefinitionError, match="'p'"):
            reg.predicate(lambda c: False, name="p")

    def test_predicate_must_be_callable(self):
        """A non-callable predicate is refused."""
        with pytest.raises(ToolDefinitionError, match="callable"):
            ToolRegistry().predicate(3, name="x")  # type: ignore[arg-type]


class TestSchemas:
    def test_schemas_in_provider_shapes(self):
        """registry.schemas() gives plain, openai and anthropic shapes of every tool."""
        reg = ToolRegistry()

        @tool(registry=reg, name="search.web")
        def web(query: str) -> list[str]:
            """Search the web."""
            return []

        plain = reg.schemas()
        assert plain[0]["name"] == "search.web"
        assert plain[0]["description"] == "Search the web."
        openai = reg.schemas("openai")[0]
        # providers reject dots in names: the published name is mapped (and mapped back)
        assert openai == {"type": "function", "function": {**plain[0], "name": "search__web"}}
        anthropic = reg.schemas("anthropic")[0]
        assert anthropic == {"name": "search__web", "description": "Search the web.",
                             "input_schema": plain[0]["parameters"]}

    def test_unknown_style(self):
        """An unknown schema style raises ValueError naming the styles."""
        reg = ToolRegistry([tool(_fn("f", "m"), registry=False)])
        with pytest.raises(ValueError, match="openai"):
            reg.schemas("gemini")


class TestFunctionNames:
    """Function-calling names: provider-valid, mapped back on the way in, collisions
    reported."""

    # The providers' documented tool-name patterns.
    PATTERNS = {"openai": r"^[a-zA-Z0-9_-]{1,64}$",   # platform.openai.com: function name
                "anthropic": r"^[a-zA-Z0-9_-]{1,64}$"}  # docs.anthropic.com: tool name

    NAMES = ["search.web", "plain_name", "with-dash", "a b/c:d", "ünïcode.tool",
             "x." * 40 + "end", "ns.sub.deep.name", "1.2"]

    def _registry(self) -> ToolRegistry:
        reg = ToolRegistry()
        for n, name in enumerate(self.NAMES):
            tool(_fn(f"f{n}", "m"), registry=reg, name=name)
        return reg

    def test_every_emitted_name_matches_each_provider_pattern(self):
        """schemas("openai"/"anthropic") emit only names the provider accepts, all
        distinct, and names that were already valid are unchanged."""
        import re

        reg = self._registry()
        for style, pattern in self.PATTERNS.items():
            schemas = reg.schemas(style)
            names = [s["function"]["name"] if style == "openai" else s["name"]
                     for s in schemas]
            assert len(names) == len(self.NAMES) == len(set(names))
            for name in names:
                assert re.fullmatch(pattern, name), (style, name)
            assert "plain_name" in names and "with-dash" in names and "search__web" in names

    def test_mapped_names_lead_back_to_the_tool(self):
        """from_function_name, [] and get find a tool by its published name."""
        from flowdsl._graph.registry import function_name

        reg = self._registry()
        for name in self.NAMES:
            published = function_name(name)
            assert reg.from_function_name(published) == name
            assert reg[published] is reg[name] and reg.get(published) is reg[name]
            assert published in reg
        assert reg.from_function_name("nothing_here") is None
        assert reg.get("nothing_here", 7) == 7
        long = function_name("x." * 40 + "end")
        assert len(long) == 64 and long != function_name("x." * 40 + "end2")

    def test_collisions_are_reported(self):
        """Two registry names publishing one function name: provider schemas and a lookup
        by that name raise, naming both; the plain style still works."""
        reg = ToolRegistry()
        tool(_fn("a", "m"), registry=reg, name="search.web")
        tool(_fn("b", "m"), registry=reg, name="search__web")
        assert reg["search__web"] is not reg["search.web"]  # exact names win
        tool(_fn("c", "m"), registry=reg, name="x.y")
        tool(_fn("d", "m"), registry=reg, name="x y")  # -> x_y, no clash with x__y
        with pytest.raises(ToolDefinitionError,
                           match=r"'search\.web' and 'search__web'.*'search__web'"):
            reg.schemas("openai")
        assert len(reg.schemas()) == 4
        reg2 = ToolRegistry()
        tool(_fn("a", "m"), registry=reg2, name="a:b")
        tool(_fn("b", "m"), registry=reg2, name="a/b")
        with pytest.raises(ToolDefinitionError, match="'a:b' and 'a/b'"):
            reg2["a_b"]

    def test_documents_and_the_engine_accept_published_names(self):
        """An agent's plan naming tools by their function names loads and runs, through
        load_flow and through WorkflowEngine."""
        import anyio

        from flowdsl import load_flow
        from flowdsl.compat import Workflow, WorkflowEngine, WorkflowTask

        reg = ToolRegistry()

        @tool(registry=reg, name="text.upper", executor="inline")
        def upper(text: str) -> str:
            return text.upper()

        doc = {"name": "agent", "tasks": [{"id": "u", "tool": "text__upper",
                                           "args": {"text": "hi"}}]}
        flow = load_flow(doc, reg)
        assert flowdsl.run(flow, history=False).output == "HI"
        engine = WorkflowEngine(reg, history=False)
        wf = Workflow("w", "agent", "", [WorkflowTask("u", "text__upper", {"text": "yo"})])
        out = anyio.run(engine.execute_workflow, wf, {})
        assert out["success"] is True and out["results"] == {"u": "YO"}
