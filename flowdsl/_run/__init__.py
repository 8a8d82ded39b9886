"""Run layer: run/arun, the one task-execution core, thin runners that decide order and
concurrency, executors (local and Dask), pools and the run's records."""
