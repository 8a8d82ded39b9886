"""@tool: declaration, option validation, wrapt-preserved attributes and argument binding."""

from __future__ import annotations

import inspect

import pytest

import flowdsl
from flowdsl import Backoff, CompositionError, Task, Tool, ToolDefinitionError, tool


@tool
def fetch(url: str, retries_hint: int = 0) -> str:
    """Fetch one page."""
    return url


@tool(timeout=5, retries=3, name="score_it")
async def score(item: dict, weight: float = 1.0) -> float:
    """Score one item."""
    return weight


class TestDeclaring:
    def test_bare_decorator_returns_a_tool(self) -> None:
        """@tool without parentheses gives a Tool named after the function."""
        assert isinstance(fetch, Tool)
        assert fetch.name == "fetch"

    def test_decorator_with_options(self) -> None:
        """@tool(...) applies the keyword options to the spec."""
        assert score.name == "score_it"
        assert score.spec.timeout == 5.0
        assert score.spec.retries == 3

    def test_coroutine_function_defaults_to_async_executor(self) -> None:
        """A coroutine function is marked async and runs on the event loop by default."""
        assert score.spec.is_async is True
        assert score.spec.executor == "async"

    def test_sync_function_defaults_to_thread_executor(self) -> None:
        """A plain function runs in a worker thread by default."""
        assert fetch.spec.is_async is False
        assert fetch.spec.executor == "thread"

    def test_description_defaults_to_docstring(self) -> None:
        """Without description=, the docstring describes the tool."""
        assert fetch.spec.description == "Fetch one page."

    def test_all_options_accepted(self) -> None:
        """Every documented option is accepted and normalised."""

        def undo(output: object) -> None:
            return None

        t = tool(lambda x: x, registry=False, name="all", description="d", timeout=1,
                 retries=2, backoff={"initial": 0.5, "factor": 3, "max_delay": 4,
                                     "jitter": "full"},
                 retry_on=(KeyError, ValueError), resources={"gpu": 1}, rollback=undo,
                 executor="process", priority=-2, expected_duration=3)
        spec = t.spec
        assert spec.backoff == Backoff(0.5, 3, 4, "full")
        assert spec.retry_on == (KeyError, ValueError)
        assert dict(spec.resources) == {"gpu": 1}
        assert spec.rollback is undo
        assert (spec.executor, spec.priority, spec.expected_duration) == ("process", -2.0, 3.0)

    def test_retry_on_single_class(self) -> None:
        """retry_on accepts one exception class as well as a tuple."""
        t = tool(lambda: 1, registry=False, name="one", retry_on=KeyError)
        assert t.spec.retry_on == (KeyError,)

    def test_backoff_number_is_initial_delay(self) -> None:
        """backoff=0.25 sets the first delay and keeps the other defaults."""
        t = tool(lambda: 1, registry=False, name="b", backoff=0.25)
        assert t.spec.backoff.initial == 0.25
        assert t.spec.backoff.delays(4) == [0.25, 0.5, 1.0]

    def test_with_options_leaves_original(self) -> None:
        """Tool.with_options returns a new tool; the original keeps its spec."""
        t2 = fetch.with_options(retries=7)
        assert t2.spec.retries == 7
        assert fetch.spec.retries == 0
        assert t2.fn is fetch.fn

    def test_decorating_non_callable_raises(self) -> None:
        """@tool on something that is not callable names what it got."""
        with pytest.raises(ToolDefinitionError, match=r"@tool expects a function, got int 3"):
            tool(3)


class TestBadOptions:
    @pytest.mark.parametrize(
        ("option", "value", "pattern"),
        [
            ("timeout", -1, r"option timeout=-1 is invalid: expected a finite number > 0"),
            ("timeout", 0, r"option timeout=0 is invalid"),
            ("timeout", float("nan"), r"option timeout=nan is invalid"),
            ("timeout", "5", r"option timeout='5' is invalid"),
            ("retries", -1, r"option retries=-1 is invalid: expected an integer >= 0"),
            ("retries", 1.5, r"option retries=1.5 is invalid"),
            ("retries", True, r"option retries=True is invalid"),
            ("executor", "gpu", r"option executor='gpu' is invalid: expected one of"),
            ("rollback", 42, r"option rollback=42 is invalid: expected a callable"),
            ("resources", {"db": 0}, r"option resources\['db'\]=0 is invalid"),
            ("resources", ["db"], r"option resources=\['db'\] is invalid"),
            ("retry_on", (int,), r"option retry_on=\(<class 'int'>,\) is invalid"),
            ("backoff", -0.5, r"option backoff=-0.5 is invalid"),
            ("backoff", {"factor": 0.5}, r"option backoff.factor=0.5 is invalid"),
            ("backoff", {"jitter": "half"}, r"option backoff.jitter='half' is invalid"),
            ("backoff", {"bogus": 1}, r"option backoff=\{'bogus': 1\} is invalid"),
            ("priority", float("inf"), r"option priority=inf is invalid"),
        ],
    )
    def test_bad_value_names_tool_option_and_value(self, option: str, value: object,
                                                   pattern: str) -> None:
        """A bad option value raises at decoration time naming the tool, option and value."""

        def my_tool(x: int) -> int:
            return x

        with pytest.raises(ToolDefinitionError, match=r"^tool 'my_tool': " + pattern) as info:
            tool(registry=False, **{option: value})(my_tool)
        assert info.value.tool == "my_tool"
        assert info.value.option.split(".")[0].split("[")[0] == option

    def test_unknown_option(self) -> None:
        """An unknown option is refused by name."""
        with pytest.raises(ToolDefinitionError, match=r"tool 'f': unknown option 'retry'"):
            tool(lambda: 1, registry=False, name="f", retry=3)

    def test_thread_executor_refused_for_coroutine(self) -> None:
        """A coroutine function cannot be sent to a thread."""

        async def co() -> None:
            return None

        with pytest.raises(ToolDefinitionError, match=r"tool 'co': option executor='thread'"):
            tool(co, registry=False, executor="thread")

    def test_error_is_a_value_error(self) -> None:
        """ToolDefinitionError is a FlowError and a ValueError."""
        with pytest.raises(ValueError, match="timeout"):
            tool(lambda: 1, registry=False, name="f", timeout=-2)
        assert issubclass(ToolDefinitionError, flowdsl.FlowError)


def _plain(a: int, b: str = "x") -> str:
    """Plain docstring."""
    return f"{a}{b}"


class TestWraptPreserved:
    """One test per attribute the proxy must keep from the function (wrapt)."""

    wrapped = tool(_plain, registry=False)

    def test_name(self) -> None:
        """__name__ is the function's."""
        assert self.wrapped.__name__ == "_plain"

    def test_qualname(self) -> None:
        """__qualname__ is the function's."""
        assert self.wrapped.__qualname__ == _plain.__qualname__

    def test_doc(self) -> None:
        """__doc__ is the function's."""
        assert self.wrapped.__doc__ == "Plain docstring."

    def test_wrapped(self) -> None:
        """__wrapped__ is the function itself."""
        assert self.wrapped.__wrapped__ is _plain

    def test_signature(self) -> None:
        """inspect.signature gives the function's signature."""
        assert inspect.signature(self.wrapped) == inspect.signature(_plain)

    def test_module(self) -> None:
        """__module__ is the function's."""
        assert self.wrapped.__module__ == __name__

    def test_fn_is_callable_for_unit_tests(self) -> None:
        """tool.fn runs the raw function at once."""
        assert self.wrapped.fn(1, b="y") == "1y"

    def test_coroutine_function_still_detected(self) -> None:
        """inspect sees the async tool's function as a coroutine function."""
        assert inspect.iscoroutinefunction(score.fn)

    def test_state_not_written_through(self) -> None:
        """The tool's own state lives on the proxy, not on the function."""
        assert not hasattr(_plain, "_self_spec")
        assert not hasattr(_plain, "spec")


class TestBinding:
    def test_call_returns_task_and_runs_nothing(self) -> None:
        """Calling a tool returns a Task; the function is not called."""
        calls: list[int] = []

        def side(x: int) -> int:
            calls.append(x)
            return x

        t = tool(side, registry=False)(1)
        assert isinstance(t, Task)
        assert calls == []

    def test_arguments_bound_by_name(self) -> None:
        """Positional and keyword arguments are bound to parameter names."""
        t = fetch("u", retries_hint=2)
        assert t.kwargs == {"url": "u", "retries_hint": 2}

    def test_missing_argument_names_tool_and_parameter(self) -> None:
        """A missing required argument raises at once naming tool and parameter (GR8)."""
        with pytest.raises(CompositionError,
                           match=r"cannot call tool 'fetch': missing a required argument: 'url'"):
            fetch()

    def test_missing_required_with_only_optional_keyword(self) -> None:
        """Giving only an optional keyword still reports the missing required one (GR8)."""
        with pytest.raises(CompositionError, match=r"missing a required argument: 'url'"):
            fetch(retries_hint=1)

    def test_unexpected_keyword_names_tool_and_parameter(self) -> None:
        """An unknown keyword raises naming tool and parameter (GR8)."""
        with pytest.raises(CompositionError,
                           match=r"cannot call tool 'fetch': got an unexpected keyword 'uri'"):
            fetch(uri="x")

    def test_multiple_values(self) -> None:
        """A parameter given by position and keyword is refused by name."""
        with pytest.raises(CompositionError, match=r"multiple values for argument 'url'"):
            fetch("a", url="b")

    def test_too_many_positional(self) -> None:
        """Too many positional arguments name the tool."""
        with pytest.raises(CompositionError, match=r"tool 'fetch': too many positional"):
            fetch("a", 1, 2)

    def test_binding_error_is_type_error(self) -> None:
        """Binding errors are TypeErrors, as Python's own are."""
        with pytest.raises(TypeError):
            fetch()

    def test_special_signature_binds_via_inspect(self) -> None:
        """Keyword-only and *args signatures bind too, with tool-named errors."""

        def special(a: int, *rest: int, key: str) -> int:
            return a

        t = tool(special, registry=False)
        assert t(1, 2, 3, key="k").args == (1, 2, 3)
        with pytest.raises(CompositionError,
                           match=r"cannot call tool 'special': missing a required argument: "
                                 r"'key'"):
            t(1)

    def test_stage_binds_partially(self) -> None:
        """tool.stage() leaves the first free parameter for the upstream output."""
        t = fetch.stage(retries_hint=1)
        assert t.stage_param == "url"

    def test_stage_without_free_parameter(self) -> None:
        """A stage with every parameter bound cannot receive the previous output."""
        with pytest.raises(CompositionError, match=r"tool 'fetch' used as a pipeline stage"):
            fetch.stage("u", 1)

    def test_repr(self) -> None:
        """A tool's repr shows its name and signature."""
        assert repr(fetch) == f"<Tool fetch{inspect.signature(fetch.fn)}>"
