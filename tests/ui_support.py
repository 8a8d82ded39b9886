"""Helpers for the run browser's tests: a history with known runs, and the app served by a
real uvicorn on a free localhost port in a background thread."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flowdsl
from flowdsl import tool


@tool
def fetch(url: str) -> str:
    time.sleep(0.01)
    return url


@tool(retries=2, backoff=0.001)
def parse(page: str, fail_first: list[int]) -> str:
    if fail_first[0] > 0:
        fail_first[0] -= 1
        msg = "flaky parser"
        raise ValueError(msg)
    return page.upper()


@tool
def merge(a: str, b: str) -> str:
    return a + b


@tool
def boom(x: str) -> str:
    msg = "bad row 7 in <report>.csv"
    raise ValueError(msg)


@tool
def publish(x: str) -> str:
    return x


def etl_flow() -> flowdsl.Flow:
    """fetch_a, fetch_b -> parse (fails once, then succeeds) -> merge -> boom (fails)."""
    a, b = fetch("a").named("fetch_a"), fetch("b").named("fetch_b")
    p = parse(a, [1]).named("parse")
    m = merge(p, b).named("merge")
    return flowdsl.Flow("etl", (a | b) >> p >> m >> boom(m).named("boom")
                        >> publish(m).named("publish"))


def ok_flow() -> flowdsl.Flow:
    first = fetch("x")
    return flowdsl.Flow("ok", first >> publish(first))


def make_history(path: Path, ok_runs: int = 2) -> dict[str, Any]:
    """``ok_runs`` completed runs of ``ok`` then one failed run of ``etl``; their ids."""
    ok = [flowdsl.run(ok_flow(), history=path).run_id for _ in range(ok_runs)]
    failed = flowdsl.run(etl_flow(), history=path, continue_on_error=True)
    assert failed.status == "failed"
    return {"ok": ok, "failed": failed.run_id}


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) until the block ends."""
    import uvicorn

    from flowdsl._report.ui.server import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="ui-test-server")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the test server died while starting"
            assert time.monotonic() < deadline, "the test server did not start in 20 s"
            time.sleep(0.02)
        yield url_of(sock).rstrip("/")  # callers add the path
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body text of one request."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return (resp.status, {k.lower(): v for k, v in resp.headers.items()},
                    resp.read().decode())
    except urllib.error.HTTPError as exc:
        with exc:
            return (exc.code, {k.lower(): v for k, v in exc.headers.items()},
                    exc.read().decode())
