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
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..._record.history import HistoryError, HistoryStore, RunNotFound
from .pages import Page, page, run_body, runs_body, tools_body

__all__ = ["PER_PAGE", "create_app"]

PER_PAGE = 25
#: How many runs back the flow filter looks for flow names (the store's default retention).
FLOW_SCAN = 1000
STATIC = Path(__file__).resolve().parent / "static"
_T = TypeVar("_T")
# The pages load only the package's own files; inline styles come from the timeline fragment.
_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _Source:
    """The store behind the app, opened on first use in a worker thread."""

    def __init__(self, history: str | os.PathLike[str] | Any) -> None:
        self._spec = history
        self._store: Any = None if isinstance(history, (str, os.PathLike)) else history
        self._owned = self._store is None
        self._lock = threading.Lock()  # two first requests in two worker threads open once
        self.label = (os.fspath(history) if self._owned
                      else str(getattr(history, "path", "history")))

    def _open(self) -> Any:
        with self._lock:
            if self._store is None:
                path = Path(os.fspath(self._spec)).expanduser()
                if not path.is_file():
                    msg = (f"no history file at {path}: run a flow with history on first, "
                           "or pass --history PATH")
                    raise HistoryError(msg)
                self._store = HistoryStore(path)
            return self._store

    async def call(self, fn: Callable[[Any], _T]) -> _T:
        return await anyio.to_thread.run_sync(lambda: fn(self._open()))

    async def close(self) -> None:
        if self._owned and self._store is not None:
            await anyio.to_thread.run_sync(self._store.close)


def create_app(history: str | os.PathLike[str] | Any, *,
               plans: Mapping[str, Any] | None = None,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The run browser as an ASGI app.

    Args:
        history: a history file's path (opened in a worker thread, closed at shutdown), or a
            store with :class:`~flowdsl.HistoryStore`'s query methods (``runs``, ``get_run``,
            ``tool_stats``), used as is.
        plans: flow name -> that flow's :class:`~flowdsl.Plan`: runs of those flows get their
            graph's edges, the true critical path and pool lanes.
        allowed_hosts: the ``Host`` headers to answer (others get 400), which keeps a web page
            elsewhere from reading a localhost server through DNS rebinding; ``None``: any.

    Raises:
        HistoryError: (on the first request) the path is not a history file.
    """
    source = _Source(history)
    known = dict(plans or {})

    def respond(request: Request, p: Page, active: str) -> Response:
        if request.headers.get("x-flowdsl-partial"):
            return HTMLResponse(p.body, headers={"X-Flowdsl-Live": "1" if p.live else "0",
                                                 "Cache-Control": "no-store"})
        return HTMLResponse(page(p, source=source.label, active=active))

    def filters(request: Request) -> tuple[str | None, str | None, int]:
        q = request.query_params
        status = q.get("status") or None
        try:
            page_no = int(q.get("page") or 1)
        except ValueError:
            page_no = 0
        if page_no < 1:
            raise HTTPException(400, f"page={q.get('page')!r}: expected a whole number >= 1")
        return q.get("flow") or None, status, page_no

    async def fetch_runs(request: Request) -> tuple[list[dict[str, Any]], bool, str | None,
                                                    str | None, int]:
        flow, status, page_no = filters(request)
        # The store pages by newest-first limit only: take this page and one row more.
        want = page_no * PER_PAGE + 1
        rows = await source.call(lambda s: s.runs(want, flow=flow, status=status))
        start = (page_no - 1) * PER_PAGE
        return rows[start:start + PER_PAGE], len(rows) > start + PER_PAGE, flow, status, \
            page_no

    async def runs_page(request: Request) -> Response:
        rows, more, flow, status, page_no = await fetch_runs(request)
        recent = await source.call(lambda s: s.runs(FLOW_SCAN))
        flows = sorted({r["flow"] for r in recent if r.get("flow")})
        return respond(request, runs_body(rows, flows=flows, flow=flow, status=status,
                                          page_no=page_no, has_more=more,
                                          source=source.label), "runs")

    async def get_run(request: Request) -> dict[str, Any]:
        run_id = request.path_params["run_id"]
        try:
            return await source.call(lambda s: s.get_run(run_id))
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None

    async def run_page(request: Request) -> Response:
        run = await get_run(request)
        return respond(request, run_body(run, plan=known.get(run.get("flow"))), "runs")

    async def tools_page(request: Request) -> Response:
        stats = await source.call(lambda s: s.tool_stats())
        return respond(request, tools_body(stats), "tools")

    async def api_runs(request: Request) -> Response:
        rows, more, *_ = await fetch_runs(request)
        return JSONResponse({"runs": rows, "more": more})

    async def api_run(request: Request) -> Response:
        return JSONResponse(await get_run(request))

    async def api_tools(request: Request) -> Response:
        stats = await source.call(lambda s: s.tool_stats())
        return JSONResponse({k: v.to_dict() for k, v in stats.items()})

    async def error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        text = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": text}, status_code=code)
        body = Page("Error", f'<h1>{code}</h1><p class="err">{html.escape(text)}</p>'
                             '<p><a href="/">back to the runs</a></p>')
        return HTMLResponse(page(body, source=source.label, active=""), status_code=code)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await source.close()

    middleware = [Middleware(_Headers)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    routes = [Route("/", runs_page), Route("/runs/{run_id:path}", run_page),
              Route("/tools", tools_page), Route("/api/runs", api_runs),
              Route("/api/runs/{run_id:path}", api_run), Route("/api/tools", api_tools),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: error, HistoryError: error})
    return app


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
