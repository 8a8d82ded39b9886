"""The :class:`Tool`: a declared function (``@tool``, in the registry module, makes one);
calling a tool returns a Task.

A Tool is a :class:`wrapt.ObjectProxy` over the user's function, so ``__name__``, ``__doc__``,
``__wrapped__`` and :func:`inspect.signature` stay the function's. Its own state lives in
``_self_*`` attributes (wrapt's convention) so nothing is written through to the function.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

import wrapt

from .._base import hooks
from .._base.typed import Unpack
from .spec import Backoff, ToolOptions, ToolSpec
from .task import Fragment, Task, _pair, then

__all__ = ["Backoff", "Tool", "ToolSpec"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


if TYPE_CHECKING:  # wrapt's stubs make the proxy generic over what it wraps
    _Proxy = wrapt.ObjectProxy[Callable[..., Any]]
else:  # and wrapt before 2.0 cannot be subscripted at run time
    _Proxy = wrapt.ObjectProxy


class Tool(_Proxy, Generic[P, R]):
    """A declared tool: the user's function plus its options.

    Calling a tool binds the arguments and returns a :class:`~flowdsl.Task`; nothing runs
    until the flow is run. The raw function stays callable as ``tool.fn(...)``.

    For type checkers a tool is generic over the function's parameters and return type:
    ``tool(fetch)(123)`` is reported when ``url`` is a ``str``, and calling it gives a
    ``Task[R]`` (``Task[T]`` for an ``async def`` returning ``T``).
    """

    def __init__(self, fn: Callable[P, R], spec: ToolSpec) -> None:
        super().__init__(fn)
        self._self_spec = spec
        self._self_signature = sig = inspect.signature(fn)
        params = sig.parameters.values()
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        # For plain parameters only (the common case), what the fast binder needs: the names,
        # the same as a set, and how many come first without a default (Python puts those
        # first, so they are exactly the required ones).
        names = tuple(sig.parameters)
        self._self_plain = (names, frozenset(names), sum(
            p.default is p.empty for p in params)) if plain else None

    @property
    def spec(self) -> ToolSpec:
        """The validated options."""
        return self._self_spec

    @property
    def name(self) -> str:
        """The tool's name (the function's, unless ``name=`` was given)."""
        return self._self_spec.name

    @property
    def fn(self) -> Callable[P, R]:
        """The raw function, for unit tests and for executors."""
        return cast("Callable[P, R]", self.__wrapped__)

    @property
    def signature(self) -> inspect.Signature:
        return self._self_signature

    @overload
    def __call__(self: Tool[P, Coroutine[Any, Any, T]], *args: P.args,
                 **kwargs: P.kwargs) -> Task[T]: ...
    @overload
    def __call__(self: Tool[P, T], *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Task[Any]:
        return Task._bind(self, args, kwargs, partial=False)

    def stage(self, *args: Any, **kwargs: Any) -> Task[Any]:
        """A pipeline stage: binds what is given; the first free parameter receives the output
        of the stage before it (or the run's ``input``)."""
        return Task._bind(self, args, kwargs, partial=True)

    @overload
    def map(self: Tool[P, Coroutine[Any, Any, T]], *values: Any,
            **kwargs: Any) -> Task[list[T]]: ...
    @overload
    def map(self: Tool[P, T], *values: Any, **kwargs: Any) -> Task[list[T]]: ...

    def map(self, *values: Any, **kwargs: Any) -> Task[Any]:
        """One task that runs this tool once per element of a runtime list. Its output is
        the list of the children's outputs, in input order.

        Which arguments are mapped:

        - ``tool.map(values, **kw)`` (positional form): ``values`` (a Task, a projection
          ``task["k"]``, another mapped task or a list) goes element by element to the first
          parameter; keywords wrapped in :func:`flowdsl.each` are mapped too; every other
          keyword goes unchanged to every child.
        - ``tool.map(a=..., b=..., **kw)`` (named form): a keyword whose value is a list (any
          iterable but a string, bytes or a mapping), a Task, a projection or a ``ctx()``
          reference is mapped; any other value (a string, a number, a dict, None, an object)
          goes unchanged to every child, and so does a value wrapped in
          :func:`flowdsl.unmapped` (to pass a list or a task's output whole).

        Several mapped parameters are zipped: child *i* gets element *i* of each, and
        unequal lengths fail the mapped task naming both parameters and lengths. Children
        run as ``name[0]``, ``name[1]``, ... with this tool's options;
        ``.with_options(max_parallel=N)`` bounds how many run at once and ``max_children``
        (default 10,000) how many there may be. A one-shot iterator (a generator, ``map()``,
        ``iter()``) is read into a list here, once, so every run of the flow maps over the
        same elements. A task whose id is a child's (``name[0]`` beside ``name.map(...)``)
        is refused when the flow is planned.
        """
        return Task._map(self, values, kwargs)

    def with_options(self, **options: Unpack[ToolOptions]) -> Tool[P, R]:
        """A new tool with some options changed (the options of :func:`tool`); this one is
        left as it is."""
        return Tool(self.__wrapped__, self._self_spec.evolve(**options))

    def schema(self) -> dict[str, Any]:
        """The tool's JSON description for LLM function calling (needs ``flowdsl[schema]``)."""
        schema: dict[str, Any] = hooks.get("tool_schema")(self)
        return schema

    # A bare tool composes as a pipeline stage. wrapt would forward these operators to the
    # wrapped function (a confusing TypeError), so Tool states them; the composition itself
    # is the task module's, shared with tasks and fragments.
    _flowdsl_stage = True  # read by the task module's coercion: "make me a stage"

    def __rshift__(self, other: Any) -> Fragment[Any]:
        return then(self, other)

    def __rrshift__(self, other: Any) -> Fragment[Any]:
        return then(other, self)

    def __or__(self, other: Any) -> Fragment[Any]:
        return _pair("par", self, other)

    def __ror__(self, other: Any) -> Fragment[Any]:
        return _pair("par", other, self)

    def __repr__(self) -> str:
        return f"<Tool {self.name}{self._self_signature}>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Pickled by reference: a worker process re-imports the module and finds the tool.
        fn = self.__wrapped__
        return (_tool_by_reference, (fn.__module__, fn.__qualname__, self._self_spec.name))


def _tool_by_reference(module: str, qualname: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
