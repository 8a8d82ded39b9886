"""Sync tools for tests/test_differential.py's real-time checks (threads, processes, Dask).

They are defined at module level so worker processes can import them. Each call appends its
key to a log file, so calls made in another process are counted too. Then it sleeps its
script's duration (scaled to real seconds), and fails or returns as the script says: the
same scripts as tests/reference.py reads, passed in as plain data.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from flowdsl import tool

#: Real seconds per scripted second.
SCALE = 0.01


class ScriptedError(Exception):
    """What a scripted call raises."""


def _call(key: str, inputs: list[Any] | None, scripts: dict[str, Any], log: str) -> Any:
    with open(log, "a") as fh:
        fh.write(key + "\n")
    with open(log) as fh:  # one key is never called twice at once: a count is exact
        n = sum(1 for line in fh if line.rstrip("\n") == key)
    duration, fail, ret = scripts[key]
    time.sleep(duration * SCALE)
    if n in fail:
        msg = f"{key}: call {n} fails by its script"
        raise ScriptedError(msg)
    if ret is not None:
        return ret
    h = zlib.crc32(json.dumps(list(inputs or []), sort_keys=True).encode()) % 10_000
    return f"{key}#{h}"


@tool(registry=False)
def work_thread(key: str, inputs: list[Any] | None = None, scripts: Any = None,
                log: str = "") -> Any:
    return _call(key, inputs, scripts, log)


@tool(registry=False, executor="process")
def work_process(key: str, inputs: list[Any] | None = None, scripts: Any = None,
                 log: str = "") -> Any:
    return _call(key, inputs, scripts, log)
