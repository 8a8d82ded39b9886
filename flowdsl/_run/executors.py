"""Where a call runs: on the event loop, in a worker thread, or in a worker process.

Every executor is one small interface, :meth:`Executor.call`, awaited by the execution core
inside its timeout scope. Cancelling that await stops the call as hard as the place allows:
a coroutine is cancelled, a thread is abandoned (threads cannot be killed; its late result is
discarded), a worker process is terminated and reaped.
"""

from __future__ import annotations

import abc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from .._base.errors import SerializationError, WorkerLost, exc_text
from .._graph.task import Task
from .._plan.policy import THREAD_WORKERS, cpus
from .threads import WorkerThreads
from .zygote import Zygote

__all__ = ["AsyncExecutor", "Executor", "InlineExecutor", "ProcessExecutor", "Remote",
           "ThreadExecutor"]


class Remote(abc.ABC):
    """A handle to a value that lives elsewhere (a cluster); ``fetch`` brings it here."""

    @abc.abstractmethod
    async def fetch(self) -> Any: ...


class Executor(abc.ABC):
    """A place to run a tool's function. Opened once per run, closed at its end."""

    name: str = "executor"
    #: True when a timed-out call may keep running out of reach (a thread).
    abandons: bool = False
    #: True when calls return :class:`Remote` handles whose values stay on a cluster until
    #: a local consumer needs them.
    remote: bool = False

    def prepare(self, tasks: Mapping[str, Task[Any]], priorities: Mapping[str, float]) -> None:
        """Before any task runs: see the tasks this executor will run (id -> Task) and their
        scheduling priorities, e.g. to refuse what cannot be sent to a worker."""

    async def open(self) -> None:
        """Prepare for a run (start workers, connect)."""

    async def close(self) -> None:
        """Release everything started by :meth:`open` or :meth:`call`."""

    @abc.abstractmethod
    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, task_id: str) -> Any:
        """Run ``fn(*args, **kwargs)`` and return its result (or raise its exception).

        The core only awaits what ``call`` returns, so a plain method returning an awaitable
        is as good as a coroutine method.
        """


class AsyncExecutor(Executor):
    """Coroutine functions, awaited on the event loop."""

    name = "async"

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], *, task_id: str) -> Any:
        # The tool's own coroutine is the awaitable: no wrapper frame on the hot path.
        return fn(*args, **kwargs)


class InlineExecutor(Executor):
    """Cheap sync functions called directly on the event loop (no thread hop)."""

    name = "inline"

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, task_id: str) -> Any:
        return fn(*args, **kwargs)


class ThreadExecutor(Executor):
    """Sync functions in long-lived daemon worker threads, at most ``max_workers`` calls at
    a time; results come back to the event loop in batches (see :mod:`flowdsl._run.threads`).
    """

    name = "thread"
    abandons = True

    def __init__(self, max_workers: int = THREAD_WORKERS) -> None:
        self.max_workers = max_workers
        self._threads = WorkerThreads(max_workers)

    async def open(self) -> None:
        self._threads.acquire()

    async def close(self) -> None:
        self._threads.release()

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], *, task_id: str) -> Any:
        # Cancelling the await gives the call up: never started, or abandoned to its thread
        # (a thread cannot be interrupted; its late result is discarded).
        return self._threads.call(fn, args, kwargs, task_id)


def _worker_main(conn: Any) -> None:
    """A worker process: receive pickled calls, send back ("ok", value) or ("err", ...).

    Only the worker itself answers: a process the tool forked that returns (or raises) into
    this loop ends there, silently, so it can never answer for the worker nor read its
    next call."""
    me = os.getpid()
    if hasattr(os, "setsid"):
        # Lead a process group of our own, so that killing the worker also kills the
        # subprocesses a tool started (and a terminal's Ctrl-C reaches only the parent).
        try:
            os.setsid()
        except OSError:
            pass
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not payload:
            return
        try:
            module, qualname, args, kwargs = pickle.loads(payload)
            fn = _by_reference(module, qualname)
            result = fn(*args, **kwargs)
            if os.getpid() != me:
                _leave(0)
            reply = pickle.dumps(("ok", result))
        except BaseException as exc:  # sent back to the parent, which re-raises it
            if os.getpid() != me:
                code = exc.code if isinstance(exc, SystemExit) else 1
                _leave(code if isinstance(code, int) else 1)
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            try:
                reply = pickle.dumps(("err", exc, tb))
            except Exception:
                text = f"{type(exc).__name__}: {exc_text(exc)}"
                reply = pickle.dumps(("err", RuntimeError(text), tb))
        try:
            conn.send_bytes(reply)
        except (OSError, ValueError):
            return


def _leave(code: int) -> None:
    """End a process the tool forked, which came back into the worker's loop: flush what it
    printed, then exit at once (no atexit handlers or finalizers of the worker's state)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed or replaced: nothing to flush
            pass
    os._exit(code)


def _by_reference(module: str, qualname: str) -> Callable[..., Any]:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    # The module attribute is usually the Tool proxy around the function; call the function.
    fn: Callable[..., Any] = obj.fn if hasattr(type(obj), "fn") else obj
    return fn


class _Worker:
    __slots__ = ("conn", "proc")

    def __init__(self, conn: Any, proc: Any) -> None:
        self.conn = conn
        self.proc = proc  # a multiprocessing.Process, or a ZygoteChild

    @classmethod
    def start(cls, ctx: Any) -> _Worker:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), daemon=True,
                           name="flowdsl-worker")
        proc.start()
        child.close()
        return cls(parent, proc)

    def receive(self) -> bytes | None:
        """The reply to the call sent (in a thread); None when the worker died first, once
        it has been reaped, so that its exit code is known."""
        try:
            reply: bytes = self.conn.recv_bytes()
            return reply
        except (EOFError, OSError):
            # Wait for the exit itself (the pipe closes a moment before), without reaping:
            # kill() reaps, on one thread only, and reads the exit code.
            multiprocessing.connection.wait([self.proc.sentinel], 5.0)
            return None

    def kill(self) -> int | None:
        # SIGTERM to the worker's process group first, SIGKILL if it lingers; join reaps
        # the worker so no zombie is left, and a last SIGKILL ends what its tools started.
        pid = self.proc.pid
        if self.proc.is_alive():
            if not _signal_group(pid, signal.SIGTERM):
                self.proc.terminate()
            self.proc.join(0.5)
            if self.proc.is_alive() and not _signal_group(pid, signal.SIGKILL):
                self.proc.kill()
        self.proc.join()
        code: int | None = self.proc.exitcode
        _signal_group(pid, signal.SIGKILL)
        self.conn.close()
        self.proc.close()
        return code


def _died(task_id: str, code: int | None) -> WorkerLost:
    if code is None:
        how = "no exit code"
    elif code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    else:
        how = f"exit code {code}"
    msg = (f"task {task_id!r}: worker process died ({how}) before it answered; a crash "
           "in native code, os._exit() or the OOM killer can end a worker")
    return WorkerLost(msg, task_id=task_id, exitcode=code)


def _signal_group(pid: int | None, sig: int) -> bool:
    """Signal the process group led by worker ``pid``; False if there is none."""
    if pid is None or not hasattr(os, "killpg"):
        return False
    try:
        os.killpg(pid, sig)  # the group's id is the worker's pid once it called setsid
    except (ProcessLookupError, PermissionError):
        return False
    return True


_FORK = "fork" in multiprocessing.get_all_start_methods()
_helper: Zygote | None = None


def _fork_helper() -> Zygote | None:
    """The process's fork helper; started on first need, only while the process has a single
    thread (then it is safe to fork). None when there is none and it is too late for one."""
    global _helper
    if _helper is not None:
        try:
            ended = os.waitpid(_helper.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:  # not our child: we are a process forked since
            ended = True
        if not ended:
            return _helper
        _helper = None
    if _FORK and threading.active_count() == 1:
        _helper = Zygote(_worker_main)
    return _helper


def start_fork_helper() -> None:
    """Start the fork helper now if the process still has a single thread (a run with
    process tools calls this before it starts any thread of its own)."""
    if _FORK and threading.active_count() == 1:
        _fork_helper()


def fork_helper_pid() -> int | None:
    """The pid of this process's fork helper, if one was started (it lives as long as this
    process and is shared by every run)."""
    return _helper.pid if _helper is not None else None


class ProcessExecutor(Executor):
    """CPU-bound sync functions in worker processes (real parallelism).

    Workers are started on first use and reused within the run; a worker whose call times
    out or is cancelled is killed and replaced. They are forked, all at once (milliseconds,
    with flowdsl, ``__main__`` and the tools' modules already imported): by this process
    while it has a single thread, else by a fork helper this process started while it had
    one (see :mod:`flowdsl._run.zygote`), so a history writer or worker threads alive in the
    run never make forking unsafe. Without either (no fork on this platform, or threads
    already alive when the first process executor was made) they are spawned, which
    re-imports. Tools must be importable by the worker (defined at module level).
    """

    name = "process"

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or cpus()  # what the simulator assumes too
        self._ctx = multiprocessing.get_context("spawn")
        # fork is only safe while no other thread could hold a lock at the moment of the fork
        self._fork = _FORK and multiprocessing.get_context("fork")
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: anyio.Semaphore | None = None
        self._tools: set[tuple[str, str]] = set()  # (module, qualname) of the run's tools
        start_fork_helper()  # made before the run starts any thread: early is when it is safe

    def prepare(self, tasks: Mapping[str, Task[Any]], priorities: Mapping[str, float]) -> None:
        for task in tasks.values():
            fn = task.tool.fn
            self._tools.add((getattr(fn, "__module__", "") or "", fn.__qualname__))

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, task_id: str) -> Any:
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", "")
        if module is None or "<locals>" in qualname or "<lambda>" in qualname:
            msg = (f"task {task_id!r}: executor='process' needs a tool defined at module level "
                   f"(got {qualname or fn!r}), so a worker process can import it")
            raise SerializationError(msg, task_id=task_id)
        try:
            payload = pickle.dumps((module, qualname, args, kwargs))
        except Exception as exc:
            msg = (f"task {task_id!r}: its arguments cannot be sent to a worker process "
                   f"({type(exc).__name__}: {exc})")
            raise SerializationError(msg, task_id=task_id) from exc
        if self._slots is None:
            self._slots = anyio.Semaphore(self.max_workers)
        self._tools.add((module, qualname))
        if not self._all:  # before this call's thread exists; forking all costs milliseconds
            self._idle.extend(self._start(self.max_workers, up_front=True))
        async with self._slots:
            worker = self._idle.pop() if self._idle else self._start(1)[0]
            ok = False
            code: int | None = None
            try:
                worker.conn.send_bytes(payload)
                reply = await anyio.to_thread.run_sync(worker.receive, abandon_on_cancel=True)
                ok = reply is not None
            finally:
                if ok:
                    self._idle.append(worker)
                else:  # cancelled, broken or dead: the worker may be mid-call, so it goes
                    self._all.discard(worker)
                    code = worker.kill()
        if reply is None:
            raise _died(task_id, code)
        return self._unpack(reply, task_id)

    def _start(self, n: int, *, up_front: bool = False) -> list[_Worker]:
        """``n`` new workers, the fastest safe way: forked here while this process has one
        thread, else by the fork helper, else spawned (up front: none, they come on demand)."""
        if self._fork and threading.active_count() == 1:
            new = [_Worker.start(self._fork) for _ in range(n)]
        elif (helper := _fork_helper()) is not None and helper.covers(self._tools):
            new = [_Worker(conn, proc) for conn, proc in helper.fork(n)]
        elif up_front:
            return []
        else:
            new = [_Worker.start(self._ctx) for _ in range(n)]
        self._all.update(new)
        return new

    @staticmethod
    def _unpack(reply: bytes, task_id: str) -> Any:
        try:
            status, *rest = pickle.loads(reply)
        except Exception as exc:
            msg = f"task {task_id!r}: the worker's reply could not be unpickled ({exc})"
            raise SerializationError(msg, task_id=task_id) from exc
        if status == "ok":
            return rest[0]
        error, tb = rest
        if isinstance(error, pickle.PicklingError) or "pickle" in exc_text(error).lower():
            msg = f"task {task_id!r}: its result cannot be sent back from the worker: {error}"
            raise SerializationError(msg, task_id=task_id) from error
        error.__flowdsl_traceback__ = tb  # the worker's traceback text, kept for the record
        raise error

    async def close(self) -> None:
        workers, self._all, self._idle = list(self._all), set(), []
        for w in workers:
            try:
                w.conn.send_bytes(b"")
            except OSError:
                pass
        for w in workers:
            w.proc.join(2.0)
            w.kill()
