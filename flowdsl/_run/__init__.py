"""Run layer: ``execute`` (a run with the stores and observers it is given: no defaults), the
one task-execution core, thin runners that decide order and concurrency, executors (local and
Dask), pools and the run's records."""
