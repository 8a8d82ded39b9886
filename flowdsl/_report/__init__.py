"""Report layer: the public ``run``/``arun`` (``entry``: a run's defaults, assembled here),
mermaid/dot, timelines, live progress and the ``flowdsl`` command line."""
