"""Tools for the process executor: defined at module level so worker processes can import
them (a function local to a test cannot be sent to another process)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from flowdsl import tool


@tool(executor="process", registry=False)
def square(x: int) -> int:
    """Square ``x`` in a worker process."""
    return x * x


@tool(executor="process", registry=False)
def worker_pid() -> int:
    """The pid of the process that ran the call."""
    return os.getpid()


@tool(executor="process", registry=False)
def spin_forever(pid_file: str) -> None:
    """Write the worker's pid, then loop forever (only a kill stops it)."""
    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    while True:
        time.sleep(0.01)


@tool(executor="process", registry=False)
def returns_lock() -> Any:
    """Return a value pickle cannot carry back to the parent."""
    return threading.Lock()


@tool(executor="process", registry=False)
def echo(value: Any) -> Any:
    """Return ``value`` unchanged."""
    return value


@tool(executor="process", registry=False)
def fails(message: str) -> None:
    """Raise ValueError(message) in the worker."""
    raise ValueError(message)


@tool(executor="process", registry=False)
def busy(seconds: float) -> tuple[float, float]:
    """Burn CPU for ``seconds``; returns the wall-clock start and end."""
    start = time.time()
    end = start + seconds
    n = 0
    while time.time() < end:
        n += 1
    return start, time.time()


@tool(executor="process", registry=False)
def spawn_and_spin(pid_file: str) -> None:
    """Start a long subprocess, write its pid, then loop forever."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as fh:
        fh.write(str(child.pid))
    while True:
        time.sleep(0.01)


@tool(executor="process", registry=False)
def pid_and(x: int) -> tuple[int, int]:
    """``(x, pid of the worker process that ran the call)``."""
    return x, os.getpid()


class Unprintable(Exception):
    """An exception whose ``str()`` and ``repr()`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@tool(executor="process", registry=False)
def raises_unprintable() -> None:
    """Raise an exception that cannot be printed."""
    raise Unprintable()


@tool(executor="process", registry=False)
def exits(code: int) -> None:
    """End the worker process at once, as a crash would (no reply is sent)."""
    os._exit(code)


@tool(executor="process", registry=False)
def kills_itself(sig: int) -> None:
    """Kill the worker process with signal ``sig`` (SIGSEGV: as a segfault would)."""
    import faulthandler

    faulthandler.disable()  # pytest's handler, inherited by a forked worker, would print
    os.kill(os.getpid(), sig)
    time.sleep(5)


@tool(executor="process", registry=False)
def forks_and_returns(x: int) -> str:
    """Fork; the forked child returns at once (as a careless tool might), the worker itself
    answers a moment later, once it has reaped the child (killed if it lingers)."""
    import signal

    pid = os.fork()
    if pid == 0:
        return f"grandchild {x}"
    deadline = time.monotonic() + 3.0
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:  # it went on serving: it never should
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"grandchild lingered {x}"
        time.sleep(0.01)
    return f"worker {x}"
