"""Serving the run browser: bind a localhost socket, start uvicorn, open the browser."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
import webbrowser
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..._base.errors import FlowError

__all__ = ["LOOPBACK", "UiError", "allowed_hosts", "bind", "is_loopback", "serve"]

#: Host names that mean "this machine only".
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or any loopback address
    (``127.0.0.0/8``, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` headers the browser served on ``host`` answers: the loopback names, the
    address it listens on, and ``extra`` (``--allow-host``). Every other name is refused,
    whatever address it listens on: a web page elsewhere cannot reach it through a DNS name
    rebound to that address."""
    return list(dict.fromkeys([*LOOPBACK, host.strip("[]"), *(h.strip("[]") for h in extra)]))


class UiError(FlowError, RuntimeError):
    """Raised when the run browser cannot start: a missing extra, a port in use."""


def _need_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        msg = (f"flowdsl ui needs Starlette and uvicorn ({exc.name} is missing): "
               "pip install 'flowdsl[ui]'")
        raise UiError(msg) from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0 picks a free one).

    Raises:
        UiError: the address is in use or cannot be bound.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        msg = (f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port "
               "(--port 0 picks a free one)")
        raise UiError(msg) from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(history: str | os.PathLike[str] | Any, *, host: str = "127.0.0.1", port: int = 8765,
          open_browser: bool = True, plans: Mapping[str, Any] | None = None,
          on_ready: Callable[[str], None] | None = None,
          allow_hosts: Sequence[str] = ()) -> None:
    """Serve the run browser until interrupted (Ctrl-C).

    Args:
        history: the history file (or a store) to browse.
        host: where to listen; the default keeps it on this machine. Another address exposes
            the history, unauthenticated, to whoever can reach it.
        port: the TCP port (0 picks a free one).
        open_browser: open the runs page in the default web browser once serving.
        plans: flow name -> plan, for the graphs' edges (see :func:`create_app`).
        on_ready: called with the URL once the server accepts connections.
        allow_hosts: more ``Host`` header names to answer (a name this machine has on the
            network, for ``--host 0.0.0.0``); the loopback names and ``host`` always are.

    Raises:
        UiError: Starlette/uvicorn are missing, or the port cannot be bound.
    """
    _need_extra()
    import uvicorn

    from .app import create_app

    app = create_app(history, plans=plans, allowed_hosts=allowed_hosts(host, allow_hosts))
    sock = bind(host, port)
    url = url_of(sock)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    def announce() -> None:
        # uvicorn sets `started` once it accepts connections; poll it off the server's loop.
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            if on_ready is not None:
                on_ready(url)
            if open_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True, name="flowdsl-ui-ready").start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
