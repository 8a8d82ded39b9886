"""flowdsl benchmarks: what parallel execution buys, measured against the bounds.

Run ``python -m benchmarks`` (a few minutes) or ``python -m benchmarks --quick`` (under a
minute); ``--json FILE`` writes every figure. Each figure is a ratio or a per-task cost
measured in one process run, repeated, reported as a median with its spread (min-max).

Suites: the reference workflow, the level-by-level baseline, seeded random DAGs, WfCommons
trace replays, engine overhead against a raw-asyncio floor (and dask), CPU-bound executors and
pipeline streaming. docs/performance.md has a full run's table.
"""
