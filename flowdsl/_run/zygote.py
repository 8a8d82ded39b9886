"""A clean helper process that forks worker processes on the run's behalf.

Forking is fast (the worker has every module already imported, ``__main__`` included) but
safe only while the forking process has a single thread: a lock another thread holds at the
moment of the fork stays locked in the child forever. Once a run has threads (the history
writer, sync tools' worker threads), flowdsl no longer forks itself: it asks this helper,
forked while the process still had one thread and single-threaded for good, to fork the
workers. Spawning instead would re-import everything in each worker and re-run an unguarded
main script.

``flowdsl.run`` starts the helper first when its plan needs one (``Plan.needs_fork``: a task
on the process executor) or the default registry holds a process tool (a later run will need
it), before anything of the run starts a thread; a process executor made while the process
has a single thread starts it too. A process tool outside the default registry, first run
after threads were started, finds no helper: that run spawns its workers.

The helper is a snapshot of the process at the moment it was made. A worker therefore takes
the parent's environment variables, ``sys.path`` and working directory of the moment it is
forked (as spawn does), and :meth:`Zygote.covers` tells whether a tool can be found in the
snapshot: one defined after it in ``__main__`` or in a module that was still being imported
cannot, and such a run starts its workers another way.

Protocol, over one Unix socket pair: the parent sends ``b"f"`` with one file descriptor (the
worker's end of its pipe) and the pickled state above, and gets back the new worker's pid;
it sends ``b"w" + pid`` to ask whether a worker has ended (the helper reaps it then and
answers its exit code). The helper leaves its children unreaped until asked, so a pid is never
reused while the parent may still signal it. It ignores Ctrl-C (the parent decides) and exits
when the parent's end closes.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection

__all__ = ["Zygote", "ZygoteChild"]

_ALIVE = -(2**31)  # the answer for a worker that has not ended
_INT = struct.Struct("!i")


class Zygote:
    """The parent's handle on the helper; one per process, shared by every run."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        """Fork the helper now: the caller makes sure the process has a single thread."""
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the helper: never returns into the parent's code
            code = 0
            try:
                mine.close()
                _serve(theirs, target)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = mine
        self._lock = threading.Lock()  # one request at a time, whichever thread asks
        atexit.register(self.close)  # at exit: no unclosed socket, and the helper ends
        # What the snapshot holds of modules not complete at the moment of the fork.
        self._partial = {name: frozenset(vars(mod)) for name, mod in list(sys.modules.items())
                         if name == "__main__"
                         or getattr(getattr(mod, "__spec__", None), "_initializing", False)}

    def covers(self, tools: Iterable[tuple[str, str]]) -> bool:
        """Whether every ``(module, qualname)`` can be found by a worker forked from the
        snapshot (a module absent from it is imported afresh by the worker)."""
        partial = self._partial
        return all(qualname.partition(".")[0] in partial[module]
                   for module, qualname in tools if module in partial)
    def fork(self, n: int) -> list[tuple[Connection, ZygoteChild]]:
        """``n`` new workers: the parent's end of each one's pipe, and its handle."""
        import multiprocessing

        out = []
        state = pickle.dumps((dict(os.environ), list(sys.path), os.getcwd()))
        for _ in range(n):
            parent, child = multiprocessing.Pipe()
            # The worker holds the write end until it exits: the read end is its sentinel.
            sentinel, held = os.pipe()
            try:
                with self._lock:
                    socket.send_fds(self.sock, [b"f" + _INT.pack(len(state))],
                                    [child.fileno(), held])
                    self.sock.sendall(state)
                    pid = _INT.unpack(_recv_exact(self.sock, _INT.size))[0]
            except BaseException:
                os.close(sentinel)
                raise
            finally:
                child.close()
                os.close(held)
            out.append((parent, ZygoteChild(self, pid, sentinel)))
        return out

    def status(self, pid: int) -> int | None:
        """The exit code of worker ``pid`` once it has ended (reaping it), else None."""
        with self._lock:
            self.sock.sendall(b"w" + _INT.pack(pid))
            code = _INT.unpack(_recv_exact(self.sock, _INT.size))[0]
        return None if code == _ALIVE else code

    def close(self) -> None:
        """Let the helper go (it exits once its end of the socket reads empty)."""
        self.sock.close()


class ZygoteChild:
    """A worker forked by the helper, with the part of ``multiprocessing.Process``'s
    interface the executor uses."""

    _start_method = "zygote"

    def __init__(self, zygote: Zygote, pid: int, sentinel: int) -> None:
        self.zygote = zygote
        self.pid = pid
        #: Readable (end of file) once the worker has exited, as ``Process.sentinel``.
        self.sentinel = sentinel
        self._exitcode: int | None = None

    @property
    def exitcode(self) -> int | None:
        """Negative for a signal, as ``multiprocessing.Process.exitcode``; None if alive."""
        if self._exitcode is None:
            self._exitcode = self.zygote.status(self.pid)
        return self._exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        from multiprocessing.connection import wait

        deadline = None if timeout is None else time.monotonic() + timeout
        if self.sentinel >= 0:
            wait([self.sentinel], timeout)
        while self.is_alive():  # exited: reaped in a moment (the pipe closes just before)
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def _signal(self, sig: int) -> None:
        if self._exitcode is None:  # not reaped yet: the pid is still this worker's
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            msg = "flowdsl's fork helper process has ended"
            raise OSError(msg)
        data += chunk
    return data


def _serve(sock: socket.socket, target: Callable[[Connection], None]) -> None:
    """The helper's loop: fork workers on request, report and reap the ended ones."""
    # Nothing of the parent's signal handling may run here: its handlers, or asyncio's wakeup
    # fd (a signal here would write into the parent's event loop pipe).
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread: no wakeup fd was ours to inherit
        pass
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 5, 2)
        if not msg:  # the parent has gone: so do we (our workers end as their pipes close)
            return
        if msg[:1] == b"f" and fds:
            msg += _recv_exact(sock, 1 + _INT.size - len(msg)) if len(msg) < 5 else b""
            state = _recv_exact(sock, _INT.unpack(msg[1:1 + _INT.size])[0])
            pid = os.fork()
            if pid == 0:  # the worker
                code = 0
                try:
                    sock.close()
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    _adopt(state)
                    target(Connection(fds[0]))
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            for fd in fds:  # the worker's now: the pipe end and the exit sentinel
                os.close(fd)
            sock.sendall(_INT.pack(pid))
        elif msg[:1] == b"w":
            if len(msg) < 1 + _INT.size:
                msg += _recv_exact(sock, 1 + _INT.size - len(msg))
            pid = _INT.unpack(msg[1:1 + _INT.size])[0]
            sock.sendall(_INT.pack(_reap(pid)))
        else:
            for fd in fds:
                os.close(fd)


def _adopt(state: bytes) -> None:
    """Take the parent's environment, import path and working directory of now."""
    env, path, cwd = pickle.loads(state)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    try:
        os.chdir(cwd)
    except OSError:  # gone since: the helper's folder will do
        pass


def _reap(pid: int) -> int:
    """Worker ``pid``'s exit code if it has ended (it is reaped: the parent keeps the code),
    else ``_ALIVE``."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not ours, or reaped already: nothing left to wait for
        return 0
    if done == 0:
        return _ALIVE
    return os.waitstatus_to_exitcode(status)
