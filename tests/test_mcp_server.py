"""flowdsl as an MCP server (``flowdsl mcp serve``), driven by the official ``mcp`` client
over stdio and streamable HTTP, on asyncio and trio."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp", reason="needs the mcp extra: pip install 'flowdsl[mcp]'")

from mcp import Client, StdioServerParameters

import flowdsl

HERE = Path(__file__).resolve().parent
FLOWDSL = shutil.which("flowdsl", path=str(Path(sys.executable).parent)) or shutil.which(
    "flowdsl")
pytestmark = pytest.mark.skipif(FLOWDSL is None,
                                reason="the flowdsl console script is not installed")
TARGETS = ["--import", str(HERE / "mcp_tools.py"), "mcp_tools:sums", "mcp_tools:slow_flow",
           "mcp_tools:naps"]

GOOD_PLAN = {"name": "agent_plan", "tasks": [
    {"id": "one", "tool": "add", "args": {"a": 1}},
    {"id": "two", "tool": "add", "args": {"a": 10, "b": 5}},
    {"id": "both", "tool": "total", "args": {"values": [{"$task": "one"}, {"$task": "two"}]}}]}
BROKEN_PLAN = {"tasks": [
    {"id": "x", "tool": "no_such_tool"},
    {"id": "y", "tool": "add", "args": {"q": 1}},
    {"id": "z", "tool": "add", "args": {"a": 1}, "depends_on": ["missing"]}]}


def _text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def _session_checks(client: Any, history: Path) -> None:
    """What every transport and loop must do: list, call, run_plan good and broken,
    progress per finished task, cancel a long run (recorded as cancelled), get_run."""
    names = [t.name for t in (await client.list_tools()).tools]
    assert {"add", "nap", "total", "sums", "slow_flow", "naps", "run_plan",
            "get_run"} <= set(names)
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert tools["add"].input_schema["required"] == ["a"]
    assert tools["add"].input_schema["properties"]["a"]["description"] == "the first number."
    assert tools["sums"].input_schema["required"] == ["n"]

    added = await client.call_tool("add", {"a": 2, "b": 3})
    assert not added.is_error and added.structured_content == {"result": 5}
    bad = await client.call_tool("add", {"a": "two"})
    assert bad.is_error and "argument 'a'" in _text(bad)
    failed = await client.call_tool("explode", {"reason": "kaboom"})
    assert failed.is_error and "RuntimeError: kaboom" in _text(failed)

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    ran = await client.call_tool("sums", {"n": 3, "start": 10}, progress_callback=on_progress)
    assert not ran.is_error, _text(ran)
    summary = ran.structured_content
    assert summary["output"] == 11 + 12 + 13 and summary["status"] == "completed"
    assert [p[:2] for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress[-1][2] == "total: completed"

    good = await client.call_tool("run_plan", {"plan": GOOD_PLAN})
    assert not good.is_error, _text(good)
    assert good.structured_content["output"] == 2 + 15
    assert good.structured_content["tasks"] == {"one": "completed", "two": "completed",
                                                "both": "completed"}
    broken = await client.call_tool("run_plan", {"plan": json.dumps(BROKEN_PLAN)})
    assert broken.is_error
    problems = broken.structured_content["problems"]
    paths = {p["path"] for p in problems}
    assert {"name", "tasks[0].tool", "tasks[1].args.q", "tasks[1].args.a",
            "tasks[2].depends_on[0]"} <= paths, problems  # every problem at once

    got = await client.call_tool("get_run", {"run_id": good.structured_content["run_id"]})
    assert got.structured_content["status"] == "completed"
    assert got.structured_content["outputs"] == {"one": 2, "two": 15, "both": 17}

    # Cancelling the call cancels the run: the first nap finishes, then the client gives up.
    first = anyio.Event()

    async def on_first(done: float, total: float | None, message: str | None) -> None:
        first.set()

    started = time.monotonic()
    with anyio.move_on_after(20):
        async with anyio.create_task_group() as tg:
            async def call() -> None:
                await client.call_tool("naps", {}, progress_callback=on_first)

            tg.start_soon(call)
            await first.wait()
            tg.cancel_scope.cancel()
    assert time.monotonic() - started < 15  # the 30 s nap did not run out
    store = flowdsl.open_history(history)
    assert store is not None
    deadline = time.monotonic() + 10
    while True:
        runs = store.runs(5, flow="naps")
        if (runs and runs[0]["status"] == "cancelled") or time.monotonic() > deadline:
            break
        await anyio.sleep(0.05)
    assert runs and runs[0]["status"] == "cancelled", runs
    # The server is still there for the next call, which reads the cancelled run back.
    got = await client.call_tool("get_run", {"run_id": runs[0]["run_id"]})
    assert got.structured_content["tasks"] == {"nap": "completed", "nap_2": "cancelled"}


def test_stdio_list_call_plans_progress_and_cancel(anyio_backend: str, tmp_path: Path) -> None:
    history = tmp_path / "served.db"
    params = StdioServerParameters(command=str(FLOWDSL), args=["mcp", "serve", *TARGETS],
                                   env={"FLOWDSL_HISTORY": str(history)}, cwd=str(tmp_path))

    async def main() -> None:
        async with Client(params) as client:
            await _session_checks(client, history)

    anyio.run(main, backend=anyio_backend)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_checks_host_and_origin_and_serves_both_loops(tmp_path: Path) -> None:
    """Streamable HTTP on localhost: requests naming another Host or Origin (DNS rebinding)
    are refused; the official client works through it on asyncio and trio."""
    import httpx2

    history = tmp_path / "served.db"
    port = _free_port()
    env = {**os.environ, "FLOWDSL_HISTORY": str(history)}
    proc = subprocess.Popen([str(FLOWDSL), "mcp", "serve", *TARGETS, "--transport", "http",
                             "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.1)
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        rebound = httpx2.post(url, json=body, headers={**headers, "Host": "evil.example"})
        assert rebound.status_code in (403, 421), rebound.status_code
        foreign = httpx2.post(url, json=body, headers={**headers,
                                                        "Origin": "http://evil.example"})
        assert foreign.status_code == 403, foreign.status_code

        async def main() -> None:
            async with Client(url) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert {"add", "run_plan", "get_run"} <= names
                ran = await client.call_tool("run_plan", {"plan": GOOD_PLAN})
                assert ran.structured_content["output"] == 17, _text(ran)

        for backend in ("asyncio", "trio"):
            anyio.run(main, backend=backend)

        # flowdsl's own client over HTTP, with a header whose value is a Secret.
        import flowdsl.mcp

        token = flowdsl.Secret("Bearer not-checked-here")
        with flowdsl.mcp.connect(url, headers={"Authorization": token}) as served:
            assert served.name == f"127.0.0.1:{port}"
            result = flowdsl.run(served.add(2, b=40) >> served.shout("ok"), history=False)
            assert result.outputs == {"add": 42, "shout": {"text": "OK"}}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_cli_reports_a_bad_target_or_registry_before_serving(tmp_path: Path) -> None:
    for args, named in ((["no_such_module:flow"], "no_such_module"),
                        (["--import", str(HERE / "mcp_tools.py"), "--registry",
                          "mcp_tools:add"], "is not a flowdsl ToolRegistry")):
        done = subprocess.run([str(FLOWDSL), "mcp", "serve", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 2, done.stderr
        assert named in " ".join(done.stderr.split())


def test_targets_modules_tools_are_served_once(tmp_path: Path) -> None:
    """A TARGET's module is imported before the registry is listed (its tools are served),
    a file named by several targets is executed once, and a tool named as a TARGET is not
    served twice."""
    code = ("import json, sys; from flowdsl.mcp.server import entries; "
            "print(json.dumps([e.name for e in entries(sys.argv[1:])]))")
    path = str(HERE / "mcp_tools.py")
    done = subprocess.run([sys.executable, "-c", code, f"{path}:add", f"{path}:sums"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          check=True)
    names = json.loads(done.stdout)
    assert names[:6] == ["add", "nap", "shout", "explode", "total", "where"]
    assert names[6:] == ["sums", "run_plan", "get_run"]
