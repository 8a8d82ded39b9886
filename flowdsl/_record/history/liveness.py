"""Record: is the process writing a run still there? What the writer records about itself
(host, pid, the process's start time, a heartbeat) and how a reader tells, when it reads, that
a run left ``running`` has lost its writer (``interrupted``), without writing anything.

The writer records its host name, its pid and its process's start time (``/proc/<pid>/stat``
on Linux: a pid reused by another process has another start time) with each run, and its
writer thread stamps a heartbeat (Unix time) on its runs in progress every
:data:`HEARTBEAT_EVERY` seconds. The event loop never writes it: a tool that keeps the loop busy
does not make its run look dead; only a process that is gone (or a writer thread stuck for
many seconds) stops the heartbeat.

A reader on the same host trusts the process table: the run is interrupted when its pid is
gone, or belongs to a process started at another time, and no heartbeat came for
:data:`STALE_LOCAL` seconds (the heartbeat guards against a writer in another pid namespace
under the same host name). On another host the heartbeat alone tells: none for
:data:`STALE_REMOTE` seconds (the two hosts' clocks are assumed to agree within that).
"""

from __future__ import annotations

import os
import sys

__all__ = ["HEARTBEAT_EVERY", "PROC_START", "STALE_LOCAL", "STALE_REMOTE", "pid_alive",
           "proc_start", "writer_gone"]

#: Seconds between two heartbeats of a writer thread with runs in progress.
HEARTBEAT_EVERY = 1.0
#: Same host, pid gone: a heartbeat older than this (seconds) confirms the writer is gone.
STALE_LOCAL = 2.5
#: Another host: a heartbeat older than this (seconds) means its writer is gone.
STALE_REMOTE = 10.0


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` from the third on (state, ppid, ...); ``None``
    where there is no ``/proc`` or no such process."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/{pid:d}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces or ')': split after the last.
    return raw[raw.rfind(b")") + 2:].split()


def proc_start(pid: int) -> str | None:
    """When process ``pid`` started, as the kernel counts it (clock ticks since boot, from
    ``/proc/<pid>/stat``); ``None`` where there is no ``/proc`` or no such process."""
    fields = _stat(pid)
    return fields[19].decode() if fields is not None and len(fields) > 19 else None


#: This process's start time (see :func:`proc_start`), read once at import.
PROC_START = proc_start(os.getpid())


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (someone else's counts; a zombie,
    killed and not yet reaped by its parent, does not)."""
    fields = _stat(pid)
    if fields is not None:
        return bool(fields) and fields[0] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def writer_gone(host: str | None, pid: int | None, started: str | None,
                heartbeat: float | None, *, here: str, now: float) -> str | None:
    """Why a run still marked ``running`` has lost its writer, or ``None`` while it may be
    alive (or nobody can tell).

    Args:
        host, pid, started, heartbeat: what the writer recorded (``started``: its process's
            start time; ``heartbeat``: its last stamp, Unix time; ``None`` when it recorded
            none, as writers before history schema 4 did).
        here: this machine's host name.
        now: the time now (Unix time).
    """
    age = None if heartbeat is None else now - heartbeat
    if host == here and pid is not None:
        if pid == os.getpid():
            return None  # this process: the reader is not a writer, and it is alive
        if not pid_alive(pid):
            why = f"its process {pid} on {host} is gone"
        elif started is not None and proc_start(pid) not in (started, None):
            why = f"its process {pid} on {host} is gone (the pid now belongs to another one)"
        else:
            return None
        if age is not None and age < STALE_LOCAL:
            return None  # pid not visible here, yet it beats: another pid namespace
        return why
    if age is not None and age > STALE_REMOTE:
        return f"no heartbeat from its process {pid} on {host} for {age:.0f} s"
    return None
