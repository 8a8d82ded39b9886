"""MCP client: the tools of a Model Context Protocol server as flowdsl tools.

``connect(server)`` returns a :class:`Toolset`; each of its tools is a :class:`~flowdsl.Tool`
whose signature, docstring and JSON schema come from the server, so calling it gives a Task
that composes, maps, retries, times out, takes pools, caches and is recorded like any other.

Who owns the session (one per server):

* ``async with connect(...) as tools`` opens it on the caller's event loop (asyncio or trio)
  and closes it on exit; calls made from that loop go straight to it.
* Otherwise (``run()`` from a script or a notebook, where each run has its own loop) the
  toolset opens its session on one background thread with its own asyncio loop, shared by
  every run and every toolset of the process, and closed by :meth:`Toolset.close`, by leaving a
  ``with`` block, or at interpreter exit. Calls from any loop cross to it safely, and a call
  cancelled on its side (a timeout, a cancelled run) is cancelled on the server's side too.

A session is opened by a task that belongs to the loop owning it and closed by that same task,
so no session outlives its loop. A server that cannot start or that dies fails the call with
:class:`~flowdsl.McpServerError` (naming the server, its exit status and the end of its
stderr); the next call starts it again, so a task's retries work within the run.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import hashlib
import inspect
import json
import keyword
import os
import re
import shlex
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal, Optional, cast

import anyio

from .._base.errors import (
    CompositionError,
    McpServerError,
    McpToolError,
    TaskInputError,
    ToolDefinitionError,
)
from .._base.log import _current as log_scope
from .._base.loop import threadsafe_caller
from .._base.secrets import Secret
from .._base.typed import Unpack
from .._graph.registry import ToolRegistry
from .._graph.spec import Backoff, ToolOptions, ToolSpec
from .._graph.task import CtxRef, Ref, Task
from .._graph.tool import Tool
from ._transport import ProcessState, stdio_transport

__all__ = ["McpServerError", "McpTool", "McpToolError", "Toolset", "close_all", "connect"]

#: Attempts added to tools the server marks read-only or idempotent (others are not retried:
#: a second call could repeat a side effect).
SAFE_RETRIES = 2
#: Seconds a server gets to start and answer its first listing when no timeout= is given.
START_TIMEOUT = 60.0


# -- what connect() was given ---------------------------------------------------------------


class _Config:
    """A server's address and options, checked once."""

    __slots__ = ("argv", "cwd", "env", "headers", "limit", "name", "pool", "timeout", "url")

    def __init__(self, server: str | Sequence[str], name: str | None,
                 env: Mapping[str, Any] | None, cwd: str | os.PathLike[str] | None,
                 headers: Mapping[str, Any] | None, timeout: float | None,
                 pool: int | str | None) -> None:
        self.url: str | None = None
        self.argv: tuple[str, ...] | None = None
        if isinstance(server, str) and re.match(r"^https?://", server):
            self.url = server
        elif isinstance(server, str):
            self.argv = tuple(shlex.split(server))
        elif isinstance(server, Sequence) and all(isinstance(a, str) for a in server):
            self.argv = tuple(server)
        if self.url is None and not self.argv:
            msg = (f"connect(): server={server!r} is invalid: expected a command (a string or "
                   "a list of strings, run over stdio) or an http(s):// URL")
            raise ValueError(msg)
        if self.url is not None and (env or cwd):
            msg = "connect(): env= and cwd= apply to a server started as a command, not a URL"
            raise ValueError(msg)
        if self.argv is not None and headers:
            msg = "connect(): headers= apply to an http(s):// server, not a command"
            raise ValueError(msg)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or timeout <= 0):
            msg = f"connect(): timeout={timeout!r} is invalid: expected a number > 0 or None"
            raise ValueError(msg)
        if pool is not None and not (isinstance(pool, str) and pool) and (
                isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
            msg = (f"connect(): pool={pool!r} is invalid: expected an integer >= 1 (the most "
                   "calls to this server at once) or the name of a flowdsl pool")
            raise ValueError(msg)
        if name is None:
            if self.url is not None:
                name = re.sub(r"^https?://", "", self.url).split("/")[0]
            else:
                argv = self.argv or ("mcp",)
                name = os.path.basename(argv[0])
                if name in ("uvx", "npx", "python", "python3", "node"):  # name what it runs
                    name = os.path.basename(next((a for a in argv[1:]
                                                  if not a.startswith("-")), name))
        self.name = name
        self.env = dict(env) if env else None
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.headers = dict(headers) if headers else None
        self.timeout = float(timeout) if timeout is not None else None
        self.limit = pool if isinstance(pool, int) else None
        self.pool = pool if isinstance(pool, str) else None

    def where(self) -> str:
        """The server as messages name it (never a secret: env and headers are left out)."""
        what = self.url if self.url is not None else shlex.join(self.argv or ())
        return f"MCP server {self.name!r} ({what})"

    def identity(self) -> str:
        """What distinguishes this server for cache keys."""
        return self.url if self.url is not None else shlex.join(self.argv or ())


def _reveal(mapping: Mapping[str, Any] | None) -> dict[str, str] | None:
    if mapping is None:
        return None
    return {k: str(v.get() if isinstance(v, Secret) else v) for k, v in mapping.items()}


# -- one session with one server, owned by one event loop ---------------------------------


class _Connection:
    """The session with one server on the loop that owns it.

    Sessions are opened by ``_session``, a task started in the owner's task group: an MCP
    client holds a task group of its own, which must be left by the task that entered it.
    After a failure the next call asks for a new session; the old one is closed first."""

    def __init__(self, cfg: _Config, tg: anyio.abc.TaskGroup) -> None:
        self.cfg = cfg
        self.tg = tg
        self.client: Any = None
        self.state = ProcessState()
        self.broken = False
        self.tools: list[Any] = []
        self.wrapped: set[str] = set()  # tools whose structured output is {"result": value}
        self._stop = anyio.Event()
        self._closed = anyio.Event()
        self._closed.set()
        self._lock = anyio.Lock()
        self._limit = anyio.Semaphore(cfg.limit) if cfg.limit else None

    def _transport(self, state: ProcessState) -> Any:
        if self.cfg.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            url, headers = self.cfg.url, _reveal(self.cfg.headers)

            @asynccontextmanager
            async def http_transport() -> AsyncIterator[Any]:
                # The SDK leaves a client it was given open: this one is ours to close.
                timeout = httpx2.Timeout(30.0, read=300.0)
                async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http, \
                        streamable_http_client(url, http_client=http) as streams:
                    yield streams

            return http_transport()
        env = None
        if self.cfg.env is not None:
            from mcp.client.stdio import get_default_environment

            env = {**get_default_environment(), **(_reveal(self.cfg.env) or {})}
        return stdio_transport(self.cfg.argv or (), env, self.cfg.cwd, state)

    async def _session(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        from mcp import Client
        from mcp_types import Implementation

        stop, closed, state = self._stop, self._closed, self.state
        started = False
        try:
            async with Client(self._transport(state), cache=None,
                              client_info=Implementation(name="flowdsl", version="0.1.0")) as c:
                listed = await c.list_tools()
                tools = list(listed.tools)
                cursor = listed.next_cursor
                while cursor:
                    listed = await c.list_tools(cursor=cursor)
                    tools += listed.tools
                    cursor = listed.next_cursor
                self.tools = tools
                self.wrapped = {t.name for t in tools if _wraps_result(t.output_schema)}
                self.client = c
                started = True
                task_status.started()
                await stop.wait()
        except Exception:
            if not started:
                raise
            # The session ended by itself (the server went away): the owner's task group must
            # not fail for it; the next call opens a new session.
            self.broken = True
        finally:
            closed.set()

    async def open(self) -> Any:
        """The open session: opened now if there is none or the last one broke."""
        async with self._lock:
            if self.client is not None and not self.broken:
                return self.client
            await self._close_session()
            self._stop, self._closed = anyio.Event(), anyio.Event()
            self.state = ProcessState()
            self.broken = False
            try:
                with anyio.fail_after(self.cfg.timeout or START_TIMEOUT):
                    await self.tg.start(self._session)
            except TimeoutError:
                self._closed.set()
                raise self._failed("did not answer within "
                                   f"{self.cfg.timeout or START_TIMEOUT:g}s of starting") from None
            except OSError as exc:
                self._closed.set()
                raise self._failed(f"could not be started ({exc})") from None
            except Exception as exc:
                self._closed.set()
                raise self._failed(f"could not be opened ({_describe(exc)})") from None
            return self.client

    async def _close_session(self) -> None:
        self._stop.set()
        self.client = None
        with anyio.CancelScope(shield=True):
            await self._closed.wait()

    async def aclose(self) -> None:
        async with self._lock:
            await self._close_session()

    def _failed(self, what: str, tool: str | None = None) -> McpServerError:
        rc = self.state.returncode
        during = f" during a call to tool {tool!r}" if tool else ""
        if rc is not None:
            status = f"exited with status {rc}" + (f" (killed by signal {-rc})" if rc < 0 else "")
            msg = f"{self.cfg.where()} {status}{during}"
        else:
            msg = f"{self.cfg.where()} {what}{during}"
        tail = self.state.stderr_tail()
        if tail:
            msg += f"; the end of its stderr:\n{tail}"
        msg += "\nIt is started again on the next call (a retry of the task)."
        return McpServerError(msg, server=self.cfg.name, exit_status=rc)

    async def call(self, tool: str, arguments: dict[str, Any], progress: Any = None) -> Any:
        client = self.client
        if client is None or self.broken:
            client = await self.open()
        from mcp import MCPError

        try:
            if self._limit is None:
                result = await client.call_tool(tool, arguments, progress_callback=progress)
            else:
                async with self._limit:
                    result = await client.call_tool(tool, arguments,
                                                    progress_callback=progress)
        except MCPError as exc:
            if self.state.eof or self.state.returncode is not None:
                self.broken = True
                raise await self._died(tool) from None
            msg = f"{self.cfg.where()}, tool {tool!r}: {exc}"
            raise McpToolError(msg, server=self.cfg.name, tool=tool) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
                OSError) as exc:
            self.broken = True
            if self.cfg.url is not None:
                raise self._failed(f"could not be reached ({_describe(exc)})", tool) from None
            raise await self._died(tool) from None
        return _output(result, self.cfg.name, tool, tool in self.wrapped)

    async def _died(self, tool: str) -> McpServerError:
        # The pipe closes a moment before the exit status can be read.
        with anyio.move_on_after(1.0):
            while self.state.returncode is None and self.state.process is not None:
                await anyio.sleep(0.01)
        return self._failed("closed the connection", tool)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _wraps_result(schema: Any) -> bool:
    """Whether an output schema is the SDK's wrapper of a non-object value:
    ``{"result": value}`` and nothing else."""
    return (isinstance(schema, Mapping) and set(schema.get("properties") or ()) == {"result"}
            and list(schema.get("required") or ()) == ["result"])


def _output(result: Any, server: str, tool: str, unwrap: bool = False) -> Any:
    """The structured content when the server gives it (unwrapped from ``{"result": ...}``
    when the tool's output schema says it is a wrapper), else the text of a single text item,
    else the items as JSON data; an error result raises :class:`~flowdsl.McpToolError`."""
    if result.is_error:
        text = "\n".join(getattr(c, "text", "") or repr(c) for c in result.content)
        msg = f"MCP server {server!r}, tool {tool!r}: {text or 'the server reported an error'}"
        raise McpToolError(msg, server=server, tool=tool)
    structured = result.structured_content
    if structured is not None:
        if unwrap and isinstance(structured, Mapping) and "result" in structured:
            return structured["result"]
        return structured
    content = result.content
    if len(content) == 1 and content[0].type == "text":
        return content[0].text
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in content]


# -- the background loop that owns the sessions of synchronous code -------------------------


class _Background:
    """One thread running an asyncio loop for the sessions opened from synchronous code.

    Started by the first such session, stopped when the last one closes (and at exit)."""

    _lock = threading.Lock()
    _current: _Background | None = None

    def __init__(self) -> None:
        self.users = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="flowdsl-mcp", daemon=True)

    @classmethod
    def acquire(cls) -> _Background:
        with cls._lock:
            bg = cls._current
            if bg is None:
                bg = cls._current = _Background()
                bg.thread.start()
                bg._ready.wait()
            bg.users += 1
            return bg

    def release(self) -> None:
        with _Background._lock:
            self.users -= 1
            if self.users > 0:
                return
            if _Background._current is self:
                _Background._current = None
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with anyio.create_task_group() as tg:
                self.tg = tg
                self._ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()

        try:
            asyncio.run(main())
        finally:
            self._ready.set()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result (from synchronous code)."""
        assert self.loop is not None
        fut = _submit(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise


def _submit(coro: Any, loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[Any]:
    """Schedule ``coro`` on ``loop`` in a fresh context: the caller's (a trio run's, say)
    would make anyio on that asyncio loop believe it runs under trio."""
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)


async def _await_on(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Await ``coro`` on another thread's asyncio ``loop`` from this loop (asyncio or trio);
    cancelling the waiter cancels it there, and the waiter returns once it has ended."""
    fut = _submit(coro, loop)
    done = anyio.Event()
    wake = threadsafe_caller()
    assert wake is not None
    fut.add_done_callback(lambda _f: wake(done.set))
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        with anyio.CancelScope(shield=True):
            await done.wait()
        raise
    try:
        return fut.result()
    except concurrent.futures.CancelledError:
        msg = "the MCP session was closed during the call"
        raise McpServerError(msg, server="?") from None


def _progress_logger(server: str, tool: str, scope: tuple[Any, Any, bool]) -> Any:
    """While logging is on: a progress callback that keeps the server's progress
    notifications on the task's record (``TaskRecord.logs``), as the tool's own log lines."""
    from .._base.capture import end_task_scope, task_scope
    from .._base.log import get_logger

    log = get_logger(server=server, tool=tool)

    async def progress(done: float, total: float | None, message: str | None) -> None:
        # Called by the session's reader, outside the task's context: enter it again.
        token = task_scope(*scope)
        try:
            log.info("mcp_progress", progress=done, total=total, message=message)
        finally:
            end_task_scope(token)

    return progress


def _loop_key() -> Any:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        if trio is not None:
            try:
                return trio.lowlevel.current_trio_token()
            except RuntimeError:
                pass
    return None


# -- tools ------------------------------------------------------------------------------------

_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "array": list, "object": dict, "null": type(None)}


def _annotation(schema: Any) -> Any:
    """A Python type hint for a JSON schema (what workflow documents check values with)."""
    if not isinstance(schema, Mapping):
        return Any
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        try:
            return Literal[tuple(schema["enum"])]
        except TypeError:
            return Any
    kind = schema.get("type")
    if isinstance(kind, list):
        hints = [_JSON_TYPES.get(k, Any) for k in kind]
    elif "anyOf" in schema and isinstance(schema["anyOf"], list):
        hints = [_annotation(s) for s in schema["anyOf"]]
    else:
        return _JSON_TYPES.get(kind, Any) if isinstance(kind, str) else Any
    if Any in hints or not hints:
        return Any
    none = type(None) in hints
    rest = tuple(dict.fromkeys(h for h in hints if h is not type(None)))
    if not rest:
        return type(None)
    hint: Any = rest[0]
    for h in rest[1:]:
        hint = hint | h
    return Optional[hint] if none else hint  # noqa: UP045 (a runtime value, not a hint)


def _py_name(name: str, taken: set[str]) -> str:
    out = re.sub(r"\W", "_", name) or "_"
    if out[0].isdigit():
        out = "_" + out
    while keyword.iskeyword(out) or out in taken:
        out += "_"
    taken.add(out)
    return out


def _has_placeholder(value: Any) -> bool:
    """Whether ``value`` holds a Task, projection or ``ctx()`` (known only at run time)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (Task, Ref, CtxRef)):
            return True
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


class _McpCall:
    """The function behind an MCP tool: binds the arguments by the server's schema, checks
    them, and calls the tool through the toolset's session for the calling loop."""

    def __init__(self, toolset: Toolset, info: Any) -> None:
        self._toolset = toolset
        self.tool = info.name
        schema = dict(info.input_schema or {})
        self.schema = schema
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        taken: set[str] = set()
        self.wire: dict[str, str] = {}  # python name -> the server's name
        self.validators: dict[str, Any] = {}
        params_req, params_opt = [], []
        for key, sub in props.items():
            py = _py_name(key, taken)
            self.wire[py] = key
            ann = _annotation(sub)
            if key in required:
                params_req.append(inspect.Parameter(py, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                    annotation=ann))
            else:
                default = sub.get("default") if isinstance(sub, Mapping) else None
                params_opt.append(inspect.Parameter(
                    py, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                    annotation=ann if default is not None else Optional[ann]))  # noqa: UP045
        self.__signature__ = inspect.Signature([*params_req, *params_opt])
        self.names = tuple(self.__signature__.parameters)
        self.__name__ = info.name
        self.__qualname__ = f"{toolset.name}.{info.name}"
        self.__module__ = "flowdsl.mcp"
        doc = info.description or ""
        described = [f"    {py}: {props[k]['description']}" for py, k in self.wire.items()
                     if isinstance(props[k], Mapping) and props[k].get("description")]
        if described:
            doc = f"{doc}\n\nArgs:\n" + "\n".join(described)
        self.__doc__ = doc
        text = json.dumps(schema, sort_keys=True, default=str)
        self.schema_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.annotations = info.annotations

    def __repr__(self) -> str:
        # Also the cache version (no source to hash): the server, the tool and its schema.
        return (f"<MCP tool {self.tool!r} of {self._toolset._cfg.identity()!r}, schema "
                f"{self.schema_hash}>")

    def __reduce__(self) -> Any:
        msg = (f"MCP tool {self.tool!r} of server {self._toolset.name!r} runs on the event loop "
               "of this process (its session lives here): it cannot be sent to a process or a "
               "dask worker; leave its executor as 'async'")
        raise TypeError(msg)

    def check(self, name: str, value: Any) -> str | None:
        """The problem with ``value`` for parameter ``name``, or None."""
        validator = self.validators.get(name)
        if validator is None:
            import jsonschema

            sub = (self.schema.get("properties") or {}).get(self.wire[name], {})
            cls = jsonschema.validators.validator_for(sub, default=jsonschema.Draft202012Validator)
            validator = self.validators[name] = cls(sub)
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "".join(f"[{p!r}]" for p in error.absolute_path)
        return f"{error.message}" + (f" (at {name}{where})" if where else "")

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = dict(zip(self.names, args)) if args else {}
        bound.update(kwargs)
        out: dict[str, Any] = {}
        for name, value in bound.items():
            if value is None and self.__signature__.parameters[name].default is None:
                continue  # an optional argument not given: the server's default applies
            if isinstance(value, Secret):
                value = value.get()
            problem = self.check(name, value)
            if problem is not None:
                msg = (f"MCP tool {self.tool!r} of server {self._toolset.name!r}: argument "
                       f"{name!r} is invalid: {problem}")
                raise TaskInputError(msg)
            out[self.wire[name]] = value
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._toolset._call(self, args, kwargs)


class _McpSpec(ToolSpec):
    """An MCP tool's options: everything a tool takes, but only the event loop runs it."""

    __slots__ = ()

    def evolve(self, **changes: Any) -> ToolSpec:
        executor = changes.get("executor", "async")
        if executor != "async":
            msg = (f"tool {self.name!r}: option executor={executor!r} is invalid: an MCP tool "
                   "runs on the event loop (its calls go through the server's session in "
                   "this process; the process and dask executors cannot run it): leave "
                   "executor='async'")
            raise ToolDefinitionError(msg, tool=self.name, option="executor", value=executor)
        return ToolSpec.evolve(self, **changes)


class McpTool(Tool[..., Any]):
    """A tool of an MCP server: a :class:`~flowdsl.Tool` whose arguments are also checked
    against the server's JSON schema when they are known (constants at composition, the rest
    when the task starts), each problem naming the parameter."""

    def __call__(self, *args: Any, **kwargs: Any) -> Task[Any]:
        task = super().__call__(*args, **kwargs)
        self._check(task.args, task.kwargs)
        return task

    def stage(self, *args: Any, **kwargs: Any) -> Task[Any]:
        task = super().stage(*args, **kwargs)
        self._check(task.args, task.kwargs)
        return task

    def _check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = self._call
        bound = dict(zip(call.names, args)) if args else {}
        bound.update(kwargs)
        for name, value in bound.items():
            if value is None or _has_placeholder(value) or isinstance(value, Secret):
                continue
            problem = call.check(name, value)
            if problem is not None:
                msg = (f"cannot call MCP tool {self.name!r} of server {call._toolset.name!r}: "
                       f"argument {name!r} is invalid: {problem}")
                raise CompositionError(msg)

    def with_options(self, **options: Unpack[ToolOptions]) -> McpTool:
        return McpTool(self.__wrapped__, self._self_spec.evolve(**options))

    @property
    def _call(self) -> _McpCall:
        # What an McpTool wraps is always the call object of its server's tool (see below).
        return cast("_McpCall", self.__wrapped__)

    @property
    def json_schema(self) -> dict[str, Any]:
        """The tool's input schema as the server gave it."""
        return dict(self._call.schema)

    # What flowdsl's schema export (Tool.schema(), registry.schemas()) publishes for it.
    _flowdsl_json_schema = json_schema

    @property
    def server(self) -> str:
        """The name of the server the tool belongs to."""
        return str(self._call._toolset.name)

    def __repr__(self) -> str:
        return f"<McpTool {self.server}.{self.name}{self._self_signature}>"

    __str__ = __repr__


def _spec(call: _McpCall, cfg: _Config) -> ToolSpec:
    hints = call.annotations
    safe = hints is not None and bool(hints.read_only_hint or hints.idempotent_hint)
    base = _McpSpec(name=call.tool, description=call.__doc__ or "", is_async=True,
                    executor="async")
    options: dict[str, Any] = {"retry_on": (McpServerError, TimeoutError)}
    if safe:
        options.update(retries=SAFE_RETRIES, backoff=Backoff(initial=0.2))
    if cfg.timeout is not None:
        options["timeout"] = cfg.timeout
    if cfg.pool is not None:
        options["resources"] = {cfg.pool: 1}
    return base.evolve(**options)


# -- the toolset ------------------------------------------------------------------------------

_open_toolsets: set[Toolset] = set()


class Toolset:
    """The tools of one MCP server as flowdsl tools (see :func:`connect`).

    ``toolset["name"]`` and ``toolset.name_of_tool`` give a :class:`McpTool`; ``list(toolset)``
    the names; ``toolset.registry`` a :class:`~flowdsl.ToolRegistry` of them (for workflow
    documents and re-exported schemas).
    """

    def __init__(self, cfg: _Config) -> None:
        self._cfg = cfg
        self.name = cfg.name
        self._tools: dict[str, McpTool] | None = None
        self._registry: ToolRegistry | None = None
        self._owner: tuple[Any, _Connection] | None = None  # (loop, session) of `async with`
        self._stack: AsyncExitStack | None = None
        self._bg: _Background | None = None
        self._bg_conn: _Connection | None = None
        self._bg_lock = threading.Lock()

    def __repr__(self) -> str:
        names = ", ".join(self._tools) if self._tools is not None else "not opened yet"
        return f"<Toolset {self._cfg.where()}: {names}>"

    # tools
    def _build(self, infos: list[Any]) -> None:
        tools: dict[str, McpTool] = {}
        for info in infos:
            call = _McpCall(self, info)
            tools[info.name] = McpTool(call, _spec(call, self._cfg))
        self._tools = tools
        self._registry = ToolRegistry(list(tools.values()))

    def _ensure(self) -> dict[str, McpTool]:
        if self._tools is None:
            self._background()
        assert self._tools is not None
        return self._tools

    def __getitem__(self, name: str) -> McpTool:
        tools = self._ensure()
        try:
            return tools[name]
        except KeyError:
            msg = (f"{self._cfg.where()} has no tool {name!r}; its tools: "
                   f"{', '.join(tools) or 'none'}")
            raise KeyError(msg) from None

    def __getattr__(self, name: str) -> McpTool:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ensure()))

    def __len__(self) -> int:
        return len(self._ensure())

    def __contains__(self, name: object) -> bool:
        return name in self._ensure()

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(self._tools or {})})

    @property
    def registry(self) -> ToolRegistry:
        """The tools in a :class:`~flowdsl.ToolRegistry`, by their MCP names."""
        self._ensure()
        assert self._registry is not None
        return self._registry

    @property
    def tools(self) -> dict[str, McpTool]:
        """The tools by name."""
        return dict(self._ensure())

    # sessions
    def _background(self) -> _Connection:
        """The session owned by the background loop (opened on first use)."""
        conn = self._bg_conn
        if conn is not None:
            return conn
        with self._bg_lock:
            if self._bg_conn is None:
                bg = _Background.acquire()
                tg = bg.tg
                assert tg is not None

                async def start() -> _Connection:
                    # Made on the loop that owns it: its events and locks belong there.
                    conn = _Connection(self._cfg, tg)
                    try:
                        await conn.open()
                    except BaseException:
                        await conn.aclose()
                        raise
                    return conn

                try:
                    conn = bg.run(start())
                except BaseException:
                    bg.release()
                    raise
                self._bg, self._bg_conn = bg, conn
                _open_toolsets.add(self)
                if self._tools is None:
                    self._build(conn.tools)
            return self._bg_conn

    def _call(self, call: _McpCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        arguments = call.arguments(args, kwargs)
        scope = log_scope.get()  # the calling task's, while logging is on
        progress = _progress_logger(self.name, call.tool, scope) if scope else None
        owner = self._owner
        if owner is not None and owner[0] is _loop_key():
            return owner[1].call(call.tool, arguments, progress)
        return self._call_across(call.tool, arguments, progress)

    async def _call_across(self, tool: str, arguments: dict[str, Any], progress: Any) -> Any:
        conn = self._bg_conn
        if conn is None:
            conn = await anyio.to_thread.run_sync(self._background)
        assert self._bg is not None and self._bg.loop is not None
        return await _await_on(self._bg.loop, conn.call(tool, arguments, progress))

    async def __aenter__(self) -> Toolset:
        if self._owner is not None:
            msg = f"{self._cfg.where()}: this toolset is already open in an `async with` block"
            raise RuntimeError(msg)
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            conn = _Connection(self._cfg, tg)
            stack.push_async_callback(conn.aclose)
            await conn.open()
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if self._tools is None:
            self._build(conn.tools)
        self._stack, self._owner = stack, (_loop_key(), conn)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        stack, self._stack, self._owner = self._stack, None, None
        try:
            if stack is not None:
                await stack.__aexit__(*exc)
        finally:
            if self._bg_conn is not None:  # opened by calls from other loops in the block
                await self.aclose()

    def __enter__(self) -> Toolset:
        self._background()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the background session (a later call opens it again)."""
        with self._bg_lock:
            bg, conn = self._bg, self._bg_conn
            self._bg = self._bg_conn = None
            _open_toolsets.discard(self)
        if bg is not None and conn is not None:
            try:
                bg.run(conn.aclose(), timeout=30)
            finally:
                bg.release()

    async def aclose(self) -> None:
        """:meth:`close` for async code (the waiting happens in a worker thread)."""
        await anyio.to_thread.run_sync(self.close)


@atexit.register
def close_all() -> None:
    """Close every background session (also called at interpreter exit)."""
    for toolset in list(_open_toolsets):
        try:
            toolset.close()
        except Exception:  # at exit, one failing close must not stop the others
            pass


def connect(server: str | Sequence[str], *, name: str | None = None,
            env: Mapping[str, str | Secret[str]] | None = None,
            cwd: str | os.PathLike[str] | None = None,
            headers: Mapping[str, str | Secret[str]] | None = None,
            timeout: float | None = None, pool: int | str | None = None) -> Toolset:
    """The tools of an MCP server as flowdsl tools.

    Args:
        server: a command (a string, split like a shell would, or a list of arguments),
            started as a child process and spoken to over stdio; or an ``http(s)://`` URL
            (streamable HTTP).
        name: the server's name in messages, tool qualnames and cache keys (default: the
            command's name or the URL's host).
        env: environment variables for the command (on top of a minimal safe set: PATH,
            HOME, ...); values may be :class:`~flowdsl.Secret`.
        cwd: the command's working directory.
        headers: HTTP headers for a URL (e.g. ``Authorization``); values may be Secrets.
        timeout: seconds per call (each tool's ``timeout`` option; a timed-out call is
            cancelled on the server too) and for the server to start.
        pool: an integer bounds the calls to this server at once (across runs); a string
            names a flowdsl pool each call takes one unit of (``run(resources=...)`` sets
            its capacity).

    Returns:
        A :class:`Toolset`. Use ``async with connect(...) as tools`` in async code (the
        session lives on your loop); otherwise the session opens on first use on a background
        loop shared by every run and is closed by ``tools.close()``, a ``with`` block or exit.

    Raises:
        ValueError: an argument is invalid (nothing is started).
    """
    return Toolset(_Config(server, name, env, cwd, headers, timeout, pool))

