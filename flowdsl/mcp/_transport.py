"""The stdio transport for MCP servers started as child processes.

The SDK's ``stdio_client`` keeps its process to itself; flowdsl needs the process's exit status
and the end of its stderr to say why a server died or could not start, so it starts the process
here and speaks newline-delimited JSON-RPC over its pipes, as the specification says. Shutdown
follows the specification's order (close stdin, wait, terminate, kill), shielded and bounded,
so neither a cancelled caller nor a stuck server can leave a live process behind.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc

__all__ = ["ProcessState", "stdio_transport"]

#: Seconds a server gets to exit once its stdin is closed, then again after SIGTERM.
GRACE = 2.0
#: Bytes of the server's stderr kept for error messages.
STDERR_TAIL = 2000


class ProcessState:
    """What the transport learned about its process: the exit status and the stderr tail."""

    __slots__ = ("eof", "process", "stderr")

    def __init__(self) -> None:
        self.process: anyio.abc.Process | None = None
        self.stderr: collections.deque[bytes] = collections.deque()
        self.eof = False  # the server closed its stdout (it exited or is about to)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def stderr_tail(self) -> str:
        text = b"".join(self.stderr).decode("utf-8", "replace").strip()
        return text[-STDERR_TAIL:]

    def keep_stderr(self, chunk: bytes) -> None:
        self.stderr.append(chunk)
        size = sum(map(len, self.stderr))
        while size > STDERR_TAIL and len(self.stderr) > 1:
            size -= len(self.stderr.popleft())


def _parse(line: bytes) -> Any:
    import mcp_types
    from mcp.shared.message import SessionMessage

    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line,
                                                                              by_name=False))
    except ValueError as exc:  # the session reports a parse error as an exception value
        return exc


@asynccontextmanager
async def stdio_transport(argv: Sequence[str], env: Mapping[str, str] | None,
                          cwd: str | None, state: ProcessState) -> AsyncIterator[Any]:
    """Start ``argv`` and yield the (read, write) message streams the MCP session drives."""
    from mcp.shared.message import SessionMessage

    process = await anyio.open_process(list(argv), env=dict(env) if env is not None else None,
                                       cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
    state.process = process
    read_in, read_out = anyio.create_memory_object_stream[Any](0)
    write_in, write_out = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = b""
        async with read_in:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError,
                          anyio.EndOfStream, OSError):
                async for chunk in process.stdout:
                    lines = (buffer + chunk).split(b"\n")
                    buffer = lines.pop()
                    for line in lines:
                        if line.strip():
                            await read_in.send(_parse(line))
            state.eof = True

    async def read_stderr() -> None:
        assert process.stderr is not None
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError,
                      anyio.EndOfStream, OSError):
            async for chunk in process.stderr:
                state.keep_stderr(chunk)

    async def write_stdin() -> None:
        assert process.stdin is not None
        async with write_out:
            try:
                async for message in write_out:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(text.encode() + b"\n")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                # The server stopped reading: end the session's read side too, so a request
                # fails now instead of waiting forever for its answer.
                await read_in.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stdout)
        tg.start_soon(read_stderr)
        tg.start_soon(write_stdin)
        try:
            yield read_out, write_in
        finally:
            with anyio.CancelScope(shield=True):
                await write_in.aclose()
                await read_out.aclose()
                await _stop(process)
            tg.cancel_scope.cancel()


async def _stop(process: anyio.abc.Process) -> None:
    """Close stdin, give the server time to exit, then SIGTERM, then SIGKILL; reap it."""
    if process.stdin is not None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    for signal in (None, "terminate", "kill"):
        if signal == "terminate":
            with suppress(ProcessLookupError):
                process.terminate()
        elif signal == "kill":
            with suppress(ProcessLookupError):
                process.kill()
        with anyio.move_on_after(GRACE):
            while process.returncode is None:
                await anyio.sleep(0.01)
        if process.returncode is not None:
            break
    # The pipes close with the process object: no transport is left to warn at collection.
    with anyio.move_on_after(GRACE):
        await process.aclose()
