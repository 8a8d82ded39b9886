"""Report: ``flowdsl ui``, a read-only run browser over the history store, served on localhost.

Needs ``pip install 'flowdsl[ui]'`` (Starlette and uvicorn); the pages, style sheet and script
ship in the package, so the browser loads nothing from the internet.
"""

from __future__ import annotations

from .server import LOOPBACK, UiError, allowed_hosts, bind, is_loopback, serve

__all__ = ["LOOPBACK", "UiError", "allowed_hosts", "bind", "create_app", "is_loopback", "serve"]


def __getattr__(name: str) -> object:
    if name == "create_app":  # Starlette is imported only when the app is built
        from .app import create_app

        return create_app
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
