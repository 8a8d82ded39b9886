"""flowdsl and the Model Context Protocol, both ways.

* Client: :func:`connect` turns the tools of any MCP server into flowdsl tools.
* Server: ``flowdsl mcp serve`` (:func:`flowdsl.mcp.server.serve`) offers flowdsl tools, flows
  and workflow documents (``run_plan``) to any MCP client.

Needs the ``mcp`` extra: ``pip install 'flowdsl[mcp]'``.
"""

from __future__ import annotations

from .._base.errors import McpServerError, McpToolError
from .client import McpTool, Toolset, close_all, connect

__all__ = ["McpServerError", "McpTool", "McpToolError", "Toolset", "close_all", "connect"]
