"""Record layer: the SQLite history store and its run observer, then what learns from it:
simulate, analyze, optimize (``simulate``/``optimizer`` import ``history``, never back)."""
