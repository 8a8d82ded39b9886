"""Report layer: mermaid/dot, timelines, live progress and the ``flowdsl`` command line."""
