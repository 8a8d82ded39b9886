"""MCP server: flowdsl tools, flows and workflow documents for any MCP client.

``flowdsl mcp serve`` (or :func:`serve`) offers:

* every tool of a registry, under its provider-valid function name, with the JSON schema
  flowdsl already builds (``registry.schemas()``); a call runs the tool as a one-task flow;
* every flow named by a TARGET, as a tool taking the flow's parameters (a flow factory's
  arguments; a ready-made flow takes an optional ``context`` object);
* ``run_plan``: runs a workflow document (argument ``plan``); a document with problems gives
  one error result listing every problem; otherwise the run id, its status, each task's status
  and the outputs;
* ``get_run``: a run id -> its status, the tasks' statuses and their stored outputs, from
  history.

A call that runs a flow sends MCP progress notifications, one per finished task (when the
client asked for progress), and a client's cancellation cancels the run, which is recorded as
cancelled (and rolled back when the call asked with ``rollback``). Served on stdio, or on
streamable HTTP bound to localhost by default with the Host and Origin headers checked (DNS
rebinding protection).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread

from .._base.errors import CompositionError, FlowError, PlanValidationError, RunNotFound
from .._graph.registry import ToolRegistry, default_registry, function_name, make_tool
from .._graph.task import Flow, Fragment, Task
from .._graph.tool import Tool
from .._run.events import Event, EventKind

__all__ = ["Entry", "build_server", "entries", "http_app", "run_server", "serve"]

#: Argument names of ``run_plan`` besides ``plan``.
_PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "plan": {"description": "A flowdsl workflow document (JSON object, or its JSON text): "
                                "tasks naming the served tools, their arguments and "
                                "dependencies. See `flowdsl schema` for its JSON schema.",
                 "type": ["object", "string"]},
        "context": {"description": "Initial run context.", "type": "object"},
        "rollback": {"description": "Roll completed tasks back if the run fails or is "
                                    "cancelled.", "type": "boolean", "default": False},
    },
    "required": ["plan"],
    "additionalProperties": False,
}
_GET_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"run_id": {"description": "The run id a call returned.", "type": "string"}},
    "required": ["run_id"],
    "additionalProperties": False,
}
#: A served tool's structured output: ``{"result": output}``, the SDK's own shape for a value
#: that is not an object (flowdsl's client, like others, unwraps it).
_RESULT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"result": {}},
                                  "required": ["result"]}
_CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"description": "Initial run context.", "type": "object"}},
    "additionalProperties": False,
}


@dataclass
class Entry:
    """One served tool: what a call builds and runs."""

    name: str
    description: str
    schema: dict[str, Any]
    kind: str  # "tool", "factory", "flow", "run_plan", "get_run"
    target: Any = None
    annotations: dict[str, Any] | None = None


def _tool_entry(key: str, t: Tool[..., Any]) -> Entry:
    from .._data.schema import tool_schema

    described = tool_schema(t, name=key)
    return Entry(function_name(key), described["description"], described["parameters"],
                 "tool", t)


def _flow_entry(spec: str, obj: Any) -> Entry:
    """A TARGET's flow (or flow factory) as a served tool."""
    from .._data.schema import tool_schema

    if isinstance(obj, Tool):
        return _tool_entry(obj.name, obj)
    if callable(obj) and not isinstance(obj, (Flow, Fragment, Task, list, tuple)):
        wrapped = make_tool(obj, registry=False)
        described = tool_schema(wrapped)
        doc = described["description"] or f"Run the flow built by {spec}."
        return Entry(function_name(wrapped.name), doc, described["parameters"], "factory",
                     obj)
    name = getattr(obj, "name", None) if isinstance(obj, Flow) else None
    name = name or spec.rpartition(":")[2].rpartition(".")[2] or "flow"
    doc = (getattr(obj, "description", None) or "") if isinstance(obj, Flow) else ""
    return Entry(function_name(name), doc or f"Run the flow {name!r} ({spec}).",
                 _CONTEXT_SCHEMA, "flow", obj)


def entries(targets: Sequence[str] = (), registry: ToolRegistry | None = None) -> list[Entry]:
    """The tools a server built from ``targets`` and ``registry`` offers, in order.

    Raises:
        TargetError: a target cannot be loaded.
        ToolDefinitionError: two served tools would have one name.
    """
    from .._report.cli_common import TargetError, _import, load_target

    registry = default_registry if registry is None else registry
    loaded = []
    modules: dict[str, Any] = {}
    for spec in targets:  # first: the tools their modules declare are served too
        where, sep, attr = spec.rpartition(":")
        if sep and where and attr and not spec.lower().endswith((".json", ".yaml", ".yml")):
            if where not in modules:  # a file is executed once, however many targets name it
                modules[where] = _import(where)
            obj: Any = modules[where]
            for part in attr.split("."):
                if not hasattr(obj, part):
                    msg = f"target {spec!r}: {where!r} has no attribute {part!r}"
                    raise TargetError(msg)
                obj = getattr(obj, part)
        else:
            obj = load_target(spec)
        loaded.append((spec, obj))
    out = [_tool_entry(key, t) for key, t in registry.items()]
    for spec, obj in loaded:
        entry = _flow_entry(spec, obj)
        if not any(e.name == entry.name and e.target is obj for e in out):  # served already
            out.append(entry)
    out.append(Entry("run_plan", "Run a flowdsl workflow document (a plan of tool calls with "
                     "dependencies) and return the run id, its status, every task's status "
                     "and the outputs. A document with problems is not run: the error "
                     "result lists every problem at once.", _PLAN_SCHEMA, "run_plan",
                     registry, {"readOnlyHint": False}))
    out.append(Entry("get_run", "A recorded run by id: its status, each task's status and "
                     "the stored outputs.", _GET_RUN_SCHEMA, "get_run", None,
                     {"readOnlyHint": True, "idempotentHint": True}))
    seen: dict[str, str] = {}
    for e in out:
        if e.name in seen:
            from .._base.errors import ToolDefinitionError

            msg = (f"two served tools would both be named {e.name!r} ({seen[e.name]} and "
                   f"{e.kind}); rename one (name=...)")
            raise ToolDefinitionError(msg, tool=e.name, option="name", value=e.name)
        seen[e.name] = e.kind
    return out


# -- running a call ---------------------------------------------------------------------------


class _Progress:
    """An event consumer (it runs in the run's reader thread, off the event loop) that
    queues one progress notification per final task of the plan, through ``portal`` onto the
    event loop, where the notifications are sent."""

    def __init__(self, send: Any, portal: Any) -> None:
        self.send = send
        self.portal = portal
        self.tasks: Any = ()  # the plan's task ids: a map child's is not among them
        self.total = 0
        self.done = 0

    def __call__(self, batch: Sequence[Event]) -> None:
        notes = []
        for e in batch:
            if e.kind is EventKind.RUN_STARTED:
                self.tasks = e.detail.plan.tasks
                self.total = len(e.detail.plan.order)
            elif e.kind is EventKind.TASK_FINISHED and e.task in self.tasks:
                # (a map child is left out: its mapped task reports once it ends)
                self.done += 1
                notes.append((self.done, max(self.total, self.done), f"{e.task}: {e.detail}"))
        if notes:
            self.portal.call(self._queue, notes)

    def _queue(self, notes: list[tuple[int, int, str]]) -> None:
        for note in notes:
            try:
                self.send.send_nowait(note)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # a slow client misses an intermediate notification, never a result


async def _run(ctx: Any, flow: Any, *, context: Mapping[str, Any] | None = None,
               rollback: bool = False, history: Any = None) -> Any:
    """Run ``flow`` with progress notifications to the caller (read from the run's event
    stream); cancelled with the request."""
    from .._report.entry import arun

    send, receive = anyio.create_memory_object_stream[tuple[int, int, str]](1000)

    async def report() -> None:
        async with receive:
            async for done, total, message in receive:
                try:
                    await ctx.session.report_progress(done, total, message)
                except Exception:  # the client went away: the run goes on to its record
                    return

    async with anyio.create_task_group() as tg, anyio.from_thread.BlockingPortal() as portal:
        tg.start_soon(report)
        try:
            return await arun(flow, context=dict(context or {}),
                              observers=[_Progress(send, portal)],
                              rollback_on_failure=rollback, history=history,
                              store_outputs=True)
        finally:
            send.close()


def _summary(result: Any) -> dict[str, Any]:
    data = result.to_dict()
    return {"run_id": data["run_id"], "status": data["status"], "output": data["output"],
            "outputs": data["outputs"],
            "tasks": {k: v["status"] for k, v in data["tasks"].items()},
            "error": data["error"]["message"] if data["error"] else None}


def _text_result(payload: Any, *, error: bool = False,
                 structured_as: dict[str, Any] | None = None) -> Any:
    """A tool result: the text (JSON for data), and the data itself as structured content."""
    import mcp_types as types

    text = payload if isinstance(payload, str) else json.dumps(payload, default=repr, indent=1)
    content: list[Any] = [types.TextContent(type="text", text=text)]
    structured = structured_as if structured_as is not None else (
        payload if isinstance(payload, dict) else None)
    return types.CallToolResult(content=content, structured_content=structured, is_error=error)


def _problems(exc: PlanValidationError) -> Any:
    """Every problem of a workflow document, as text and as data, in one error result."""
    problems = [p if isinstance(p, dict) else {"message": str(p)} for p in exc.problems]
    lines = [f"the plan has {len(problems)} problem(s); nothing was run:"]
    lines += [f"- {p.get('path') or '(document)'}: {p.get('message')}" for p in problems]
    return _text_result("\n".join(lines), error=True, structured_as={"problems": problems})


class _Service:
    """The handlers of one server: list the entries, run a call."""

    def __init__(self, served: list[Entry], history: Any = None) -> None:
        self.entries = {e.name: e for e in served}
        self.history = history

    async def list_tools(self, ctx: Any, params: Any) -> Any:
        import mcp_types as types

        return types.ListToolsResult(tools=[
            types.Tool(name=e.name, description=e.description, input_schema=e.schema,
                       output_schema=_RESULT_SCHEMA if e.kind == "tool" else None,
                       annotations=types.ToolAnnotations(**{
                           {"readOnlyHint": "read_only_hint",
                            "idempotentHint": "idempotent_hint"}[k]: v
                           for k, v in (e.annotations or {}).items()})
                       if e.annotations else None)
            for e in self.entries.values()])

    async def call_tool(self, ctx: Any, params: Any) -> Any:
        entry = self.entries.get(params.name)
        arguments = dict(params.arguments or {})
        if entry is None:
            return _text_result(f"no tool {params.name!r}; tools: {', '.join(self.entries)}",
                                error=True)
        try:
            if entry.kind == "get_run":
                return await self._get_run(arguments)
            flow, context, rollback = self._build(entry, arguments)
        except PlanValidationError as exc:
            return _problems(exc)
        except (FlowError, TypeError, ValueError) as exc:
            return _text_result(f"{params.name}: {exc}", error=True)
        result = await _run(ctx, flow, context=context, rollback=rollback,
                            history=self.history)
        summary = _summary(result)
        if entry.kind == "tool":  # the output itself, as a tool call's answer
            if not result.ok:
                return _text_result(summary["error"] or f"the run ended {result.status}",
                                    error=True)
            out = summary["output"]
            text = out if isinstance(out, str) else json.dumps(out, default=repr)
            return _text_result(text, structured_as={"result": out})
        return _text_result(summary, error=not result.ok)

    def _build(self, entry: Entry, arguments: dict[str, Any]) -> tuple[Any, Any, bool]:
        if entry.kind == "tool":
            return self._bind(entry, entry.target, arguments), None, False
        if entry.kind == "factory":
            sig = inspect.signature(entry.target)
            try:
                sig.bind(**arguments)
            except TypeError as exc:
                raise CompositionError(f"cannot call {entry.name!r}: {exc}") from None
            self._check(entry, make_tool(entry.target, registry=False), arguments)
            return entry.target(**arguments), None, False
        if entry.kind == "flow":
            extra = set(arguments) - {"context"}
            if extra:
                raise CompositionError(f"{entry.name!r} takes only 'context'; got "
                                       f"{', '.join(sorted(extra))}")
            return entry.target, arguments.get("context"), False
        # run_plan
        from .._data.documents import load_flow

        plan = arguments.get("plan")
        if isinstance(plan, str):  # JSON text, never a path: a client cannot read our files
            try:
                plan = json.loads(plan)
            except ValueError as exc:
                raise ValueError(f"run_plan: 'plan' is not JSON ({exc})") from None
        if not isinstance(plan, dict):
            raise TypeError(f"run_plan: 'plan' must be a workflow document (a JSON object); "
                            f"got {type(plan).__name__}")
        flow = load_flow(plan, registry=entry.target)
        return flow, arguments.get("context"), bool(arguments.get("rollback", False))

    def _check(self, entry: Entry, t: Tool[..., Any], arguments: dict[str, Any]) -> None:
        """Every argument's problem at once, each naming its parameter."""
        from .._data.schema import check_value, params

        problems = []
        by_name = {p.name: p for p in params(t)[0]}
        for name, value in arguments.items():
            p = by_name.get(name)
            if p is None:
                continue
            _, found = check_value(t, p, value)
            problems += [f"argument {name!r}" + "".join(f"[{k!r}]" for k in where)
                         + f": {msg}" for where, msg in found]
        if problems:
            raise CompositionError(f"cannot call {entry.name!r}: " + "; ".join(problems))

    def _bind(self, entry: Entry, t: Tool[..., Any], arguments: dict[str, Any]) -> Task[Any]:
        self._check(entry, t, arguments)
        return t(**arguments)

    async def _get_run(self, arguments: dict[str, Any]) -> Any:
        from .._record.history import aopen_history

        run_id = arguments.get("run_id")
        if not isinstance(run_id, str):
            return _text_result("get_run: 'run_id' must be a string", error=True)
        store = await aopen_history(self.history)
        if store is None:
            return _text_result("get_run: history is off for this server", error=True)

        def read() -> dict[str, Any]:
            run = store.get_run(run_id)
            outputs = store.load_outputs(run_id)
            return {"run_id": run_id, "flow": run["flow"], "status": run["status"],
                    "error": run["error_message"],
                    "tasks": {t["task_id"]: t["status"] for t in run["tasks"]},
                    "outputs": outputs}

        try:
            found = await anyio.to_thread.run_sync(read)
        except RunNotFound as exc:
            return _text_result(str(exc), error=True)
        return _text_result(found)


def build_server(served: list[Entry], *, history: Any = None, name: str = "flowdsl") -> Any:
    """An MCP low-level ``Server`` offering ``served`` (see :func:`entries`)."""
    from mcp.server import Server

    service = _Service(served, history)
    return Server(name, version=_version(), on_list_tools=service.list_tools,
                  on_call_tool=service.call_tool,
                  instructions="flowdsl: call the tools one by one, or hand run_plan a "
                               "workflow document to run many tool calls as one parallel "
                               "plan; get_run reads a finished run back.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowdsl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


def http_app(server: Any, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """The streamable-HTTP ASGI app of ``server``, with Host and Origin checked (only the
    address it listens on and localhost are accepted), so a web page in the user's browser
    cannot reach it through DNS rebinding."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = {host, "127.0.0.1", "localhost", "[::1]"}
    allowed_hosts = [f"{h}:{port}" for h in hosts] + sorted(hosts)
    allowed_origins = [f"http://{h}:{port}" for h in hosts] + [f"https://{h}:{port}"
                                                              for h in hosts]
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                         allowed_hosts=allowed_hosts,
                                         allowed_origins=allowed_origins)
    return server.streamable_http_app(transport_security=security, host=host)


def serve(targets: Sequence[str] = (), *, registry: ToolRegistry | None = None,
          transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000,
          history: Any = None) -> None:
    """Serve ``targets`` and ``registry`` over MCP until the client (stdio) or the process
    (HTTP) ends. See the module docstring for what is offered."""
    run_server(build_server(entries(targets, registry), history=history), transport=transport,
               host=host, port=port)


def run_server(server: Any, *, transport: str = "stdio", host: str = "127.0.0.1",
               port: int = 8000) -> None:
    """Serve a server made by :func:`build_server` on stdio or streamable HTTP."""
    if transport == "stdio":
        from mcp.server.stdio import stdio_server

        async def main() -> None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

        anyio.run(main)
    elif transport == "http":
        import uvicorn

        uvicorn.run(http_app(server, host, port), host=host, port=port, log_level="warning")
    else:
        msg = f"transport={transport!r} is invalid: expected 'stdio' or 'http'"
        raise ValueError(msg)
