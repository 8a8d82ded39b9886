"""What OpenTelemetry tracing costs a run: ``python -m benchmarks.otel_bench [N] [ROUNDS]``.

Runs a wide flow of ``N`` no-op tasks (``async`` and ``def``, history off) in fresh
processes, one per (variant, round), the variants interleaved round by round so that machine
noise hits them alike, and prints the median seconds per run of each variant and its ratio
to ``off`` (each process reports the best of 5 runs; the table gives the median and the best
over processes):

- ``off``: OpenTelemetry not imported (the API may be installed: the run does not import it);
- ``api``: ``opentelemetry.trace`` imported, no provider set (the API's proxy provider);
- ``sdk``: an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and an exporter that
  drops spans: the in-process cost of one span per attempt (and one per run).

``--paired [N] [PAIRS]`` measures in one process instead, run after run, so that both runs
of a pair see the same machine load: the median over pairs of the ratio of a run with the
API imported and no provider (``api``) or with an SDK provider (``sdk``) to the run just
before it with OpenTelemetry not imported (``off``), and the SDK's cost per span.

``BASE=path`` adds a variant ``base`` that runs the flowdsl package found at ``path`` (e.g.
a checkout of the commit before tracing) with OpenTelemetry not imported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from typing import Any

_CHILD = r"""
import gc, sys, time
variant, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if variant == "api":
    import opentelemetry.trace
elif variant == "sdk":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 20))
    trace.set_tracer_provider(provider)
import flowdsl

if kind == "async":
    @flowdsl.tool(registry=False)
    async def noop() -> None:
        return None
else:
    @flowdsl.tool(registry=False)
    def noop() -> None:
        return None

flow = flowdsl.parallel(*[noop() for _ in range(n)])
flowdsl.run(flowdsl.parallel(*[noop() for _ in range(10)]), history=False)  # warm up
best = float("inf")
for _ in range(5):  # the best of 5: contention on a shared machine only adds time
    gc.collect()
    t = time.perf_counter()
    r = flowdsl.run(flow, history=False)
    best = min(best, time.perf_counter() - t)
    assert r.status == "completed"
print(best)
if variant == "sdk":
    provider.shutdown()
"""


def paired(n: int, pairs: int) -> None:
    import gc
    import time

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    import flowdsl

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 20))
    otel = {m: sys.modules[m] for m in sys.modules if m.startswith("opentelemetry")}

    def timed(flow: Any, variant: str) -> float:
        for m in otel:  # off: as if the application never imported OpenTelemetry
            sys.modules.pop(m, None)
        if variant != "off":
            sys.modules.update(otel)
        trace._TRACER_PROVIDER = provider if variant == "sdk" else None  # type: ignore
        gc.collect()
        t = time.perf_counter()
        flowdsl.run(flow, history=False)
        took = time.perf_counter() - t
        sys.modules.update(otel)
        return took

    for kind in ("async", "def"):
        if kind == "async":
            async def noop() -> None:
                return None
        else:
            def noop() -> None:  # type: ignore[misc]
                return None
        t = flowdsl.tool(registry=False)(noop)
        flow = flowdsl.parallel(*[t() for _ in range(n)])
        timed(flow, "off")  # warm up
        ratios: dict[str, list[float]] = {"api": [], "sdk": []}
        extra: list[float] = []
        for _ in range(pairs):
            for v in ("api", "sdk"):
                off = timed(flow, "off")
                on = timed(flow, v)
                ratios[v].append(on / off)
                if v == "sdk":
                    extra.append((on - off) / (n + 1))
        print(f"{kind} tools, {n} tasks, {pairs} pairs, median ratio to the run before "
              f"(off): api {statistics.median(ratios['api']):.3f}x "
              f"(quartiles {_q(ratios['api'])}), sdk {statistics.median(ratios['sdk']):.2f}x; "
              f"SDK cost per span {statistics.median(extra) * 1e6:.1f} us")
    provider.shutdown()


def _q(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


def main() -> None:
    if sys.argv[1:2] == ["--paired"]:
        paired(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000,
               int(sys.argv[3]) if len(sys.argv) > 3 else 15)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    variants = ["off", "api", "sdk"]
    base = os.environ.get("BASE")
    if base:
        variants.insert(0, "base")
    for kind in ("async", "def"):
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                env = dict(os.environ)
                if v == "base":
                    env["PYTHONPATH"] = base  # type: ignore[assignment]
                out = subprocess.run([sys.executable, "-c", _CHILD,
                                      "off" if v == "base" else v, str(n), kind],
                                     capture_output=True, text=True, env=env, check=True)
                times[v].append(float(out.stdout.split()[-1]))
        ref = statistics.median(times["off"])
        low = min(times["off"])
        print(f"{kind} tools, {n} tasks, {rounds} processes, best of 5 runs each:")
        for v in variants:
            med, best = statistics.median(times[v]), min(times[v])
            print(f"  {v:5s} median {med * 1e3:7.1f} ms {med / ref:6.3f}x off "
                  f"{(med - ref) / n * 1e6:+7.2f} us/task | best {best * 1e3:7.1f} ms "
                  f"{best / low:6.3f}x off {(best - low) / n * 1e6:+7.2f} us/task")


if __name__ == "__main__":
    main()
