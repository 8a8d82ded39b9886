"""flowdsl as an MCP client, against real servers: mcp-server-time and mcp-server-git (PyPI),
flowdsl's own server, and @modelcontextprotocol/server-everything where Node installed it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp", reason="needs the mcp extra: pip install 'flowdsl[mcp]'")

import flowdsl
from flowdsl import tool
from flowdsl.mcp import McpServerError, Toolset, connect

BIN = Path(sys.executable).parent
TIME = shutil.which("mcp-server-time") or shutil.which("mcp-server-time", path=str(BIN))
GIT = shutil.which("mcp-server-git") or shutil.which("mcp-server-git", path=str(BIN))
FLOWDSL = shutil.which("flowdsl", path=str(BIN)) or shutil.which("flowdsl")
HERE = Path(__file__).resolve().parent
EVERYTHING = HERE.parent / ".ci/node/node_modules/.bin/mcp-server-everything"

needs_time = pytest.mark.skipif(TIME is None, reason="mcp-server-time is not installed "
                                "(it comes with the test extra: pip install -e '.[test]')")
needs_git = pytest.mark.skipif(GIT is None or shutil.which("git") is None,
                               reason="mcp-server-git (test extra) or the git command is "
                               "missing")
needs_everything = pytest.mark.skipif(
    not EVERYTHING.exists() or shutil.which("node") is None,
    reason="@modelcontextprotocol/server-everything is not installed: .ci/run installs it "
           "with npm where Node is present (npm install --prefix .ci/node "
           "@modelcontextprotocol/server-everything)")


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowdsl-mcp")]


def _repos(root: Path, n: int) -> list[str]:
    """``n`` git repositories, repository i with i+1 commits and one untracked file."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    out = []
    for i in range(n):
        repo = root / f"repo{i}"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", "-b", f"branch{i}"], cwd=repo, check=True, env=env)
        for c in range(i + 1):
            (repo / f"f{c}.txt").write_text(str(c))
            subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
            subprocess.run(["git", "commit", "-qm", f"commit {c} of repo{i}"], cwd=repo,
                           check=True, env=env)
        (repo / "untracked.txt").write_text("x")
        out.append(str(repo))
    return out


@pytest.fixture(scope="module")
def clock() -> Iterator[Toolset]:
    """The time server, opened once for the tests that only call it (a server takes a
    second or two to start)."""
    if TIME is None:
        pytest.skip("mcp-server-time is not installed (it comes with the test extra)")
    with connect(TIME, name="mcp-server-time", timeout=30) as tools:
        yield tools


@needs_time
@needs_git
def test_time_and_git_side_by_side_with_retry_timeout_and_pool(tmp_path: Path,
                                                               clock: Toolset) -> None:
    """Two real servers composed in one parallel flow: git status and log of three
    repositories (the git server bounded to two calls at once), times in three zones, a
    join; read-only tools get retries by default, timeout= becomes each tool's timeout."""
    repos = _repos(tmp_path, 3)
    with connect(GIT, timeout=30, pool=2) as git:
        assert _threads() == ["flowdsl-mcp"]  # one background loop for both servers
        assert {"git_status", "git_log"} <= set(git)
        status, log = git["git_status"], git.git_log
        assert status.spec.retries == 2 and status.spec.timeout == 30  # read-only: retried
        assert git.git_commit.spec.retries == 0  # not idempotent: never repeated
        assert list(status.signature.parameters) == ["repo_path"]
        assert "max_count" in log.signature.parameters  # optional, after the required ones

        @tool(registry=False)
        def join(statuses: list[str], logs: list[str], times: list[dict[str, Any]]
                 ) -> dict[str, Any]:
            return {"statuses": statuses, "logs": logs,
                    "zones": [t["timezone"] for t in times]}

        zones = ["Europe/Paris", "Asia/Tokyo", "America/New_York"]
        times = [clock.get_current_time(z) for z in zones]
        flow = join(status.map(repos), log.map(repos, max_count=5), times)
        result = flowdsl.run(flow, history=False)
    assert result.ok, result.error
    out = result.output
    for i, text in enumerate(out["statuses"]):
        assert f"On branch branch{i}" in text and "untracked.txt" in text
    for i, text in enumerate(out["logs"]):
        assert text.count(f"of repo{i}") == i + 1  # every commit of that repository
    assert out["zones"] == zones
    assert _threads() == ["flowdsl-mcp"]  # git's session closed; the clock's stays open


@needs_time
def test_async_with_owns_the_session_on_the_callers_loop(anyio_backend: str) -> None:
    """Inside async code the session lives on the caller's loop (asyncio or trio): no
    background thread; structured content is the output; leaving the block closes it."""

    async def main() -> Any:
        async with connect(TIME) as clock:  # type: ignore[arg-type]
            flow = clock.get_current_time("UTC") >> clock.convert_time(
                source_timezone="UTC", time="10:00", target_timezone="Asia/Tokyo")
            before = _threads()
            result = await flowdsl.arun(flow, history=False)
            assert clock._bg_conn is None and _threads() == before  # no background session
            if anyio_backend == "asyncio":
                # A synchronous run inside the block (its own loop, in a worker thread) goes
                # through a background session, never to this loop, which is busy waiting.
                other = await anyio.to_thread.run_sync(
                    lambda: flowdsl.run(clock.get_current_time("UTC"), history=False))
                assert other.ok and clock._bg_conn is not None
            return result

    before = _threads()
    result = anyio.run(main, backend=anyio_backend)
    assert _threads() == before  # leaving the block closed the background session too
    assert result.ok, result.error
    assert result.outputs["get_current_time"]["timezone"] == "UTC"
    assert result.output["target"]["datetime"].endswith("19:00:00+09:00")


@needs_time
def test_errors_and_bad_arguments_name_the_server_and_the_parameter(clock: Toolset) -> None:
    """An error result fails the task with the server's own text (not retried: the tool's
    retry_on is server failures); bad constants fail at composition, bad values known only at
    run time fail the task when it starts, each naming the parameter; the process and dask
    executors refuse MCP tools."""
    now = clock.get_current_time
    # A run on trio calls the session on the background (asyncio) loop just the same.
    assert flowdsl.run(now("UTC"), backend="trio", history=False).output["timezone"] == "UTC"
    result = flowdsl.run(now("Nowhere/Atlantis"), history=False)
    assert result.status == "failed"
    record = result.tasks["get_current_time"]
    assert len(record.attempts) == 1
    assert record.error is not None and record.error.type == "McpToolError"
    assert "Nowhere/Atlantis" in record.error.message
    assert "'mcp-server-time'" in record.error.message

    with pytest.raises(flowdsl.CompositionError, match="argument 'timezone' is invalid"):
        now(42)
    with pytest.raises(flowdsl.CompositionError, match="unexpected keyword 'tz'"):
        now(tz="UTC")
    with pytest.raises(flowdsl.CompositionError, match="missing a required argument"):
        clock.convert_time(source_timezone="UTC")

    result = flowdsl.run(now(flowdsl.ctx("zone")), context={"zone": 7}, history=False)
    error = result.tasks["get_current_time"].error
    assert error is not None and error.type == "TaskInputError"
    assert "argument 'timezone' is invalid" in error.message

    for executor in ("dask", "process", "thread"):
        with pytest.raises(flowdsl.ToolDefinitionError, match="runs on the event loop"):
            now.with_options(executor=executor)
        with pytest.raises(flowdsl.ToolDefinitionError, match="runs on the event loop"):
            now("UTC").with_options(executor=executor)
    with pytest.raises(KeyError, match="has no tool 'nope'"):
        clock["nope"]
    pytest.importorskip("distributed")  # the dask extra, part of the test extra
    with pytest.raises(flowdsl.SerializationError,
                       match="cannot be sent to a process or a dask worker"):
        flowdsl.run(now("UTC"), executor="dask", history=False)


@needs_time
def test_registry_schemas_documents_and_cache(tmp_path: Path, clock: Toolset) -> None:
    """toolset.registry publishes the server's own schema, runs workflow documents, and a
    cached MCP tool is keyed by server, tool and schema."""
    schemas = {s["name"]: s for s in clock.registry.schemas()}
    server_schema = clock.get_current_time.json_schema
    assert schemas["get_current_time"]["parameters"] == server_schema
    assert clock.get_current_time.schema()["parameters"] == server_schema
    doc = {"name": "zones", "tasks": [
        {"id": "paris", "tool": "get_current_time", "args": {"timezone": "Europe/Paris"}},
        {"id": "bad", "tool": "get_current_time", "args": {"timezone": 3}}]}
    with pytest.raises(flowdsl.PlanValidationError) as info:
        flowdsl.load_flow(doc, registry=clock.registry)
    assert any("timezone" in str(p) for p in info.value.problems)
    del doc["tasks"][1]
    result = flowdsl.run(flowdsl.load_flow(doc, registry=clock.registry), history=False)
    assert result.ok and result.output["timezone"] == "Europe/Paris"

    cached = clock.get_current_time.with_options(cache=True)
    history = tmp_path / "h.db"
    first = flowdsl.run(cached("UTC"), history=history)
    second = flowdsl.run(cached("UTC"), history=history)
    assert first.tasks["get_current_time"].status == "completed"
    assert second.tasks["get_current_time"].status == "cached"
    assert second.output == first.output


def _serve(*args: str) -> list[str]:
    """flowdsl's own MCP server (a real server process) over the test tools."""
    assert FLOWDSL is not None
    return [FLOWDSL, "mcp", "serve", "--import", str(HERE / "mcp_tools.py"), *args]


@pytest.mark.skipif(FLOWDSL is None, reason="the flowdsl console script is not installed")
def test_server_killed_mid_run_is_restarted_for_the_retry(tmp_path: Path) -> None:
    """The server is killed while a call is in flight: the attempt fails naming the server
    and its exit status (the signal), the retry starts the server again and completes."""
    secret = flowdsl.Secret("s3cret-token")
    with connect(_serve(), name="naps", timeout=30, cwd=tmp_path,
                 # the server's own runs record in this test's folder, not the user's history
                 env={"NAPS_TOKEN": secret,
                      "FLOWDSL_HISTORY": str(tmp_path / "history.db")}) as naps:
        seen = flowdsl.run(naps.where("NAPS_TOKEN"), history=False).output
        assert seen == {"cwd": str(tmp_path), "value": "s3cret-token"}  # env and cwd reached it
        nap = naps.nap.with_options(retries=1, backoff=0)
        pids: list[int] = []

        @tool(registry=False)
        async def kill_server_soon() -> None:
            conn = naps._bg_conn
            assert conn is not None and conn.state.process is not None
            pids.append(conn.state.process.pid)
            await anyio.sleep(0.3)  # the nap below is under way by now
            os.kill(pids[0], signal.SIGKILL)

        result = flowdsl.run(nap(1.0, "survived") | kill_server_soon(), history=False)
        assert result.ok, result.error
        record = result.tasks["nap"]
        assert [a.status.value for a in record.attempts] == ["failed", "completed"]
        error = record.attempts[0].error
        assert error is not None and error.type == "McpServerError"
        assert "MCP server 'naps'" in error.message
        assert "exited with status -9 (killed by signal 9)" in error.message
        assert result.output[0] == "survived"
        new = naps._bg_conn
        assert new is not None and new.state.process is not None
        assert new.state.process.pid != pids[0]  # a new server process


def test_a_server_that_cannot_start_says_why() -> None:
    """A command that is not there, or that exits at once, fails with McpServerError naming
    the server, its exit status and the end of its stderr; nothing is left running."""
    before = _threads()
    with pytest.raises(McpServerError, match="could not be started"):
        connect(["/nonexistent/mcp-server"]).tools  # noqa: B018
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('bad config: no token'); "
             "sys.exit(3)"]
    with pytest.raises(McpServerError, match=r"status 3(.|\n)*bad config: no token"):
        connect(crash, name="crashy").tools  # noqa: B018
    assert _threads() == before
    with pytest.raises(ValueError, match="expected a command"):
        connect([])
    with pytest.raises(ValueError, match="pool=0 is invalid"):
        connect("x", pool=0)


@pytest.mark.skipif(FLOWDSL is None, reason="the flowdsl console script is not installed")
def test_pool_bounds_calls_to_one_server_and_timeouts_cancel() -> None:
    """pool=1 lets one call at a time reach the server; a tool's timeout cancels the call
    (and the next call on the same session still works)."""
    with connect(_serve(), name="naps", pool=1) as naps:
        nap = naps.nap
        started = time.perf_counter()
        result = flowdsl.run(nap(0.3, "a") | nap(0.3, "b") | nap(0.3, "c"), history=False)
        took = time.perf_counter() - started
        assert result.ok, result.error
        assert took >= 0.85, f"three 0.3 s naps through a pool of 1 took {took:.2f}s"
        short = nap.with_options(timeout=0.2, retries=0)
        result = flowdsl.run(short(5.0), history=False)
        assert result.tasks["nap"].status.value == "timed_out"
        assert flowdsl.run(nap(0.01, "after"), history=False).output == "after"


@needs_everything
def test_server_everything_progress_errors_and_large_results() -> None:
    """A Node server: the progress notifications of a long operation land on the task's
    record while logging is on; an error result fails the task with the server's text; a
    large text and non-text content come back whole."""
    with connect([str(EVERYTHING), "stdio"], name="everything", timeout=30) as every:
        assert "trigger-long-running-operation" in every
        big = "x" * 1_000_000
        flow = (every["trigger-long-running-operation"](duration=0.5, steps=4)
                | every.echo(big) | every["get-tiny-image"]()
                | every["get-sum"](a=1, b=2))
        flowdsl.enable_logging()
        try:
            result = flowdsl.run(flow, history=False)
        finally:
            flowdsl.enable_logging(False)
        assert result.ok, result.error
        long_run, echoed, image, total = result.output
        assert "Long running operation completed" in long_run
        logs = result.tasks["trigger-long-running-operation"].logs or []
        steps = [e["progress"] for e in logs if e.get("event") == "mcp_progress"]
        assert steps == [1, 2, 3, 4]
        assert echoed == f"Echo: {big}"
        assert any(item["type"] == "image" and item["data"] for item in image)
        assert "3" in str(total)
        with pytest.raises(flowdsl.CompositionError, match="argument 'a' is invalid"):
            every["get-sum"](a="one", b=2)
        # A URL nothing listens on: the server's fetch fails and it answers with an error.
        bad = flowdsl.run(every["gzip-file-as-resource"](data="http://127.0.0.1:9/x"),
                          history=False)
        assert bad.status == "failed"
        error = bad.tasks["gzip-file-as-resource"].error
        assert error is not None and error.type == "McpToolError"
        assert "fetch failed" in error.message


@needs_git
def test_the_example_fans_out_over_repositories() -> None:
    """examples/mcp_agent_tools.py runs from a clean checkout and prints its summary."""
    example = HERE.parent / "examples" / "mcp_agent_tools.py"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "6 repositories, 3 with uncommitted changes: service-1, service-3, service-5" \
        in proc.stdout
    assert "service-5    CHANGED  6 commit(s)" in proc.stdout
    assert "12 MCP calls ran as one parallel flow" in proc.stdout


def test_a_tool_made_from_a_schema_alone() -> None:
    """What a server's tool description becomes, without a server: the signature (required
    first; optional ones default to the schema's default, else None, which is not sent), the
    names that are no Python identifiers, the docstring, the retry default of a tool that may
    have side effects, and pool= naming a flowdsl pool."""
    import mcp_types

    from flowdsl.mcp.client import _Config, _McpCall, _spec

    cfg = _Config(["some-server"], None, None, None, None, 5.0, "api")
    toolset = Toolset(cfg)
    info = mcp_types.Tool(
        name="create-item", description="Create an item.",
        input_schema={"type": "object", "required": ["item-name", "class"], "properties": {
            "count": {"type": "integer", "default": 2},
            "item-name": {"type": "string", "description": "What to call it."},
            "class": {"enum": ["a", "b"]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
        annotations=mcp_types.ToolAnnotations(destructive_hint=True))
    call = _McpCall(toolset, info)
    assert str(call.__signature__) == (
        "(item_name: str, class_: Literal['a', 'b'], count: int = 2, "
        "note: Optional[str] = None)")
    assert "item_name: What to call it." in (call.__doc__ or "")
    assert call.arguments(("x", "a"), {}) == {"item-name": "x", "class": "a"}
    assert call.arguments(("x", "b"), {"count": 3, "note": "n"}) == {
        "item-name": "x", "class": "b", "count": 3, "note": "n"}
    with pytest.raises(flowdsl.TaskInputError, match="argument 'class_' is invalid"):
        call.arguments(("x", "c"), {})
    spec = _spec(call, cfg)
    assert spec.retries == 0 and spec.timeout == 5.0 and dict(spec.resources) == {"api": 1}
    assert spec.is_async and spec.executor == "async"
