"""flowdsl as an MCP client: what a call costs through flowdsl against the official client's
bare ``call_tool`` on the same session, and what running calls side by side buys.

The server is flowdsl's own (``flowdsl mcp serve`` over stdio, a real child process) serving
``benchmarks/_mcp_tools.py``: ``ping`` answers at once, ``snooze`` sleeps.

- async: inside ``async with flowdsl.mcp.connect(...)``, N sequential calls as one flowdsl run
  (a chain of N tasks) against N sequential bare ``await client.call_tool(...)`` on the same
  session, repeated in alternating order (paired); the figures are the ratios of medians of
  the wall time per call and of this process's CPU time per call (the client's own cost, which
  a loaded machine disturbs less; goal: <= 1.2x). A one-task run per call is shown too (it
  adds a run's fixed cost).
- sync: the same chain run with ``flowdsl.run()`` from synchronous code (the session lives on
  the background loop, every call crosses loops) against the same bare calls on that session's
  own loop (goal: <= 1.5x).
- parallel: N calls of a tool that sleeps S seconds, sequential vs parallel in one run; then
  the same spread over K servers.

``python -m benchmarks.mcp_bench [--quick]`` prints the figures as JSON.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import flowdsl
import flowdsl.mcp

HERE = Path(__file__).resolve().parent


def _server() -> list[str]:
    exe = shutil.which("flowdsl", path=str(Path(sys.executable).parent)) or shutil.which(
        "flowdsl")
    if exe is None:
        raise SystemExit("the flowdsl console script is not installed (pip install -e .)")
    return [exe, "mcp", "serve", "--import", str(HERE / "_mcp_tools.py")]


def _chain(tool: Any, n: int) -> Any:
    flow = tool(0)
    for i in range(1, n):
        flow = flow >> tool(i)
    return flow


def _ratio(ours: list[float], bare: list[float]) -> float:
    return statistics.median(ours) / statistics.median(bare)


async def _async_costs(n: int, reps: int) -> dict[str, Any]:
    async with flowdsl.mcp.connect(_server(), name="bench") as tools:
        client = tools._owner[1].client  # type: ignore[index]  # the very same session
        ping = tools.ping
        chain = _chain(ping, n)
        bare: list[float] = []
        flow: list[float] = []
        single: list[float] = []
        bare_cpu: list[float] = []
        flow_cpu: list[float] = []

        async def bare_calls() -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n):
                await client.call_tool("ping", {"x": i})
            bare.append((time.perf_counter() - t0) / n)
            bare_cpu.append((time.process_time() - c0) / n)

        async def flow_calls() -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            result = await flowdsl.arun(chain, history=False, mode="sequential")
            flow.append((time.perf_counter() - t0) / n)
            flow_cpu.append((time.process_time() - c0) / n)
            assert result.ok, result.error

        async def single_runs() -> None:
            t0 = time.perf_counter()
            for i in range(n // 4):
                await flowdsl.arun(ping(i), history=False)
            single.append((time.perf_counter() - t0) / (n // 4))

        await flowdsl.arun(chain, history=False)  # warm both paths once
        await bare_calls()
        bare.clear()
        bare_cpu.clear()
        for rep in range(reps):  # paired, in alternating order: drift hits both alike
            order = (bare_calls, flow_calls, single_runs)
            for step in order if rep % 2 == 0 else order[::-1]:
                await step()
    return {"calls": n, "reps": reps,
            "bare_call_tool_ms": round(statistics.median(bare) * 1e3, 3),
            "flowdsl_chain_ms": round(statistics.median(flow) * 1e3, 3),
            "flowdsl_one_run_per_call_ms": round(statistics.median(single) * 1e3, 3),
            "ratio": round(_ratio(flow, bare), 3),
            "ratio_one_run_per_call": round(_ratio(single, bare), 3),
            "client_cpu_bare_ms": round(statistics.median(bare_cpu) * 1e3, 3),
            "client_cpu_flowdsl_ms": round(statistics.median(flow_cpu) * 1e3, 3),
            "client_cpu_ratio": round(_ratio(flow_cpu, bare_cpu), 3), "goal": 1.2}


def _sync_costs(n: int, reps: int) -> dict[str, Any]:
    with flowdsl.mcp.connect(_server(), name="bench") as tools:
        conn, bg = tools._bg_conn, tools._bg
        assert conn is not None and bg is not None
        chain = _chain(tools.ping, n)
        flowdsl.run(chain, history=False)

        async def bare_calls() -> None:
            for i in range(n):
                await conn.client.call_tool("ping", {"x": i})

        bare: list[float] = []
        flow: list[float] = []
        bare_cpu: list[float] = []
        flow_cpu: list[float] = []

        def measure(fn: Any, wall: list[float], cpu: list[float]) -> None:
            t0, c0 = time.perf_counter(), time.process_time()  # every thread's CPU time
            fn()
            wall.append((time.perf_counter() - t0) / n)
            cpu.append((time.process_time() - c0) / n)

        def bare_sync() -> None:
            bg.run(bare_calls())

        def flow_sync() -> None:
            result = flowdsl.run(chain, history=False, mode="sequential")
            assert result.ok, result.error

        for rep in range(reps):  # paired, in alternating order
            pair = [(bare_sync, bare, bare_cpu), (flow_sync, flow, flow_cpu)]
            for fn, wall, cpu in pair if rep % 2 == 0 else pair[::-1]:
                measure(fn, wall, cpu)
    return {"calls": n, "reps": reps,
            "bare_call_tool_ms": round(statistics.median(bare) * 1e3, 3),
            "flowdsl_run_from_sync_ms": round(statistics.median(flow) * 1e3, 3),
            "ratio": round(_ratio(flow, bare), 3),
            "client_cpu_bare_ms": round(statistics.median(bare_cpu) * 1e3, 3),
            "client_cpu_flowdsl_ms": round(statistics.median(flow_cpu) * 1e3, 3),
            "client_cpu_ratio": round(_ratio(flow_cpu, bare_cpu), 3), "goal": 1.5}


def _speedups(n: int, seconds: float, servers: int) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": n, "sleep_s": seconds}
    with flowdsl.mcp.connect(_server(), name="bench") as tools:
        flow = flowdsl.parallel(*(tools.snooze(seconds, i) for i in range(n)))
        times = {}
        for mode in ("sequential", "parallel"):
            t0 = time.perf_counter()
            assert flowdsl.run(flow, mode=mode, history=False).ok
            times[mode] = time.perf_counter() - t0
        out["one_server"] = {"sequential_s": round(times["sequential"], 3),
                             "parallel_s": round(times["parallel"], 3),
                             "speedup": round(times["sequential"] / times["parallel"], 2)}
    sets = [flowdsl.mcp.connect(_server(), name=f"bench{k}") for k in range(servers)]
    try:
        for s in sets:
            s.tools  # noqa: B018  (start them all before timing)
        flow = flowdsl.parallel(*(sets[i % servers].snooze(seconds, i) for i in range(n)))
        times = {}
        for mode in ("sequential", "parallel"):
            t0 = time.perf_counter()
            assert flowdsl.run(flow, mode=mode, history=False).ok
            times[mode] = time.perf_counter() - t0
        out[f"{servers}_servers"] = {"sequential_s": round(times["sequential"], 3),
                                     "parallel_s": round(times["parallel"], 3),
                                     "speedup": round(times["sequential"] / times["parallel"],
                                                      2)}
    finally:
        for s in sets:
            s.close()
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Every figure, as a dict."""
    n, reps = (50, 5) if quick else (200, 9)
    return {"async": anyio.run(_async_costs, n, reps),
            "sync": _sync_costs(n, reps),
            "parallel": _speedups(8 if quick else 16, 0.2, 4)}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
