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

``BASE=path`` adds a variant ``base`` that runs the flowdsl package found at ``path`` (e.g.
a checkout of the commit before tracing) with OpenTelemetry not imported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

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


def main() -> None:
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
