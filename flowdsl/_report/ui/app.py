"""The run browser's web app (Starlette): read-only pages over a history store.

Routes: ``/`` the runs (``?flow=&status=&page=``), ``/runs/{id}`` one run, ``/tools`` per-tool
statistics, ``/api/...`` the same data as JSON, ``/static/...`` the style sheet and script
shipped in the package. Nothing is loaded from the internet and nothing is written: the app
offers GET only.

SQLite is never touched on the event loop: the store is opened, read and closed in worker
threads (``anyio.to_thread``). A page asked for with the ``X-Flowdsl-Partial`` header returns
only its main content, with ``X-Flowdsl-Live: 1`` while it can still change; the page's script
polls that way while a run is in progress and swaps the new content in.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..._base.errors import HistoryError, RunNotFound
from ..._record.history import HistoryView
from ..._record.history.view import _HistoryBusy
from .pages import RUN_STATUSES, Page, page, run_body, runs_body, tools_body

__all__ = ["PER_PAGE", "create_app"]

PER_PAGE = 25
#: The highest page number asked for (25 million runs back): a larger one is a bad request.
MAX_PAGE = 1_000_000
_QUERY_KEYS = ("flow", "status", "page")
_E = html.escape
STATIC = Path(__file__).resolve().parent / "static"
_T = TypeVar("_T")
# The pages load only the package's own files; inline styles come from the timeline fragment.
_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _Source:
    """The history behind the app: a path is opened read-only (:class:`HistoryView`) on first
    use, in a worker thread; a store object is used as it is."""

    def __init__(self, history: str | os.PathLike[str] | Any) -> None:
        owned = isinstance(history, (str, os.PathLike))
        self._store: Any = (HistoryView(Path(os.fspath(history)).expanduser()) if owned
                            else history)
        self._owned = owned
        self.label = (os.fspath(history) if owned
                      else str(getattr(history, "path", "history")))

    @property
    def snapshot(self) -> str | None:
        """Why the pages come from a snapshot copy of the file (``None``: the file itself)."""
        return getattr(self._store, "snapshot", None)

    async def call(self, fn: Callable[[Any], _T]) -> _T:
        store = self._store
        read = getattr(store, "read", None)  # one read transaction for the whole page
        if read is not None:
            return await anyio.to_thread.run_sync(read, fn)
        return await anyio.to_thread.run_sync(fn, store)

    async def close(self) -> None:
        if self._owned:
            await anyio.to_thread.run_sync(self._store.close)


def create_app(history: str | os.PathLike[str] | Any, *,
               plans: Mapping[str, Any] | None = None,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The run browser as an ASGI app.

    Args:
        history: a history file's path (opened read-only, in a worker thread, on the first
            request; closed at shutdown), or a store with :class:`~flowdsl.HistoryStore`'s
            query methods (``runs``, ``get_run``, ``flows``, ``tool_stats``), used as is.
        plans: flow name -> that flow's :class:`~flowdsl.Plan`: runs of those flows get their
            graph's edges, the true critical path and pool lanes.
        allowed_hosts: the ``Host`` headers to answer (others get 400), which keeps a web page
            elsewhere from reading a localhost server through DNS rebinding; ``None``: any.

    Raises:
        HistoryError: (on the first request) the path is not a history file.
    """
    source = _Source(history)
    known = dict(plans or {})

    def respond(request: Request, p: Page, active: str, code: int = 200) -> Response:
        if request.headers.get("x-flowdsl-partial"):
            return HTMLResponse(p.body, status_code=code,
                                headers={"X-Flowdsl-Live": "1" if p.live else "0",
                                         "Cache-Control": "no-store"})
        return HTMLResponse(page(p, source=source.label, active=active,
                                 snapshot=source.snapshot), status_code=code)

    def filters(request: Request) -> tuple[str | None, str | None, int]:
        q = request.query_params
        for key in q:
            if key not in _QUERY_KEYS:
                raise HTTPException(400, f"{key}={q[key]!r}: unknown parameter (this page takes "
                                         f"{', '.join(_QUERY_KEYS)})")
        raw = q.get("page") or "1"
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and 1 <= int(raw) <= MAX_PAGE):
            raise HTTPException(400, f"page={raw!r}: expected a whole number from 1 to "
                                     f"{MAX_PAGE:,}")
        status = q.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            raise HTTPException(400, f"status={status!r}: expected one of "
                                     f"{', '.join(RUN_STATUSES)}")
        flow = q.get("flow") or None
        if flow is not None and (len(flow) > 1000 or "\x00" in flow):
            raise HTTPException(400, f"flow={flow[:40]!r}...: not a flow name (at most 1,000 "
                                     "characters, no NUL)")
        return flow, status, int(raw)

    def page_of(s: Any, flow: str | None, status: str | None, page_no: int
                ) -> list[dict[str, Any]]:
        # A page and one row more: is there an older page?
        return list(s.runs(PER_PAGE + 1, flow=flow, status=status,
                           offset=(page_no - 1) * PER_PAGE))

    async def runs_page(request: Request) -> Response:
        flow, status, page_no = filters(request)

        def read(s: Any) -> tuple[list[dict[str, Any]], list[str], list[str]]:
            flows = sorted(f for f in s.flows() if f)
            found = list(getattr(s, "statuses", list)())
            return page_of(s, flow, status, page_no), flows, found

        rows, flows, found = await source.call(read)
        statuses = list(dict.fromkeys([*RUN_STATUSES, *sorted(found)]))
        return respond(request, runs_body(rows[:PER_PAGE], flows=flows, flow=flow,
                                          status=status, page_no=page_no,
                                          has_more=len(rows) > PER_PAGE, source=source.label,
                                          statuses=statuses, now=time.time()), "runs")

    async def get_run(request: Request) -> dict[str, Any]:
        run_id = request.path_params["run_id"]
        if request.query_params:
            key = next(iter(request.query_params))
            raise HTTPException(400, f"{key}={request.query_params[key]!r}: a run's page "
                                     "takes no parameters")
        try:
            return await source.call(lambda s: s.get_run(run_id))
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None

    async def run_page(request: Request) -> Response:
        run = await get_run(request)
        return respond(request, run_body(run, plan=known.get(run.get("flow") or ""),
                                         now=time.time()),
                       "runs")

    async def tools_page(request: Request) -> Response:
        if request.query_params:
            key = next(iter(request.query_params))
            raise HTTPException(400, f"{key}={request.query_params[key]!r}: the tools page "
                                     "takes no parameters")
        stats = await source.call(lambda s: s.tool_stats())
        return respond(request, tools_body(stats), "tools")

    async def api_runs(request: Request) -> Response:
        flow, status, page_no = filters(request)
        rows = await source.call(lambda s: page_of(s, flow, status, page_no))
        return JSONResponse({"runs": rows[:PER_PAGE], "more": len(rows) > PER_PAGE})

    async def api_run(request: Request) -> Response:
        return JSONResponse(await get_run(request))

    async def api_tools(request: Request) -> Response:
        stats = await source.call(lambda s: s.tool_stats())
        return JSONResponse({k: v.to_dict() for k, v in stats.items()})

    async def error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else (
            503 if isinstance(exc, _HistoryBusy) else 500)
        text = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": text}, status_code=code)
        busy = isinstance(exc, _HistoryBusy)
        title = "History file locked" if busy else str(code)
        body = Page("Error", f'<h1>{_E(title)}</h1><p class="err" id="problem">{_E(text)}</p>'
                             '<p><a href="/">back to the runs</a></p>', live=busy)
        return respond(request, body, "", code)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await source.close()

    middleware = [Middleware(_Headers)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(_HostCheck, allowed=list(allowed_hosts)))
    routes = [Route("/", runs_page), Route("/runs/{run_id:path}", run_page),
              Route("/tools", tools_page), Route("/api/runs", api_runs),
              Route("/api/runs/{run_id:path}", api_run), Route("/api/tools", api_tools),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: error, HistoryError: error})
    return app


class _HostCheck:
    """Answer only requests whose ``Host`` header names an allowed host (any port): a web
    page elsewhere cannot read this server through a DNS name rebound to its address."""

    def __init__(self, app: Any, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1").lower()
        host = raw[1:raw.index("]")] if raw.startswith("[") and "]" in raw else (
            raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw)
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        text = (f"Host {raw!r} is not one this run browser answers (it guards against DNS "
                "rebinding): open it by its address, or restart it with --allow-host NAME")
        response = PlainTextResponse(text, status_code=400)
        await response(scope, receive, send)


class _Headers:
    """Security headers on every response: own files only, no framing, no sniffing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", _CSP.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
