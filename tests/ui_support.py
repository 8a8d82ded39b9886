"""Helpers for the run browser's tests: a history with known runs, and the app served by a
real uvicorn on a free localhost port in a background thread."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flowdsl
from flowdsl import tool
from flowdsl._record.history import HistoryView

ROOT = Path(__file__).resolve().parent.parent


@tool
def fetch(url: str) -> str:
    time.sleep(0.01)
    return url


@tool(retries=2, backoff=0.001)
def parse(page: str, fail_first: list[int]) -> str:
    if fail_first[0] > 0:
        fail_first[0] -= 1
        msg = "flaky parser"
        raise ValueError(msg)
    return page.upper()


@tool
def merge(a: str, b: str) -> str:
    return a + b


@tool
def boom(x: str) -> str:
    msg = "bad row 7 in <report>.csv"
    raise ValueError(msg)


@tool
def publish(x: str) -> str:
    return x


def etl_flow() -> flowdsl.Flow:
    """fetch_a, fetch_b -> parse (fails once, then succeeds) -> merge -> boom (fails)."""
    a, b = fetch("a").named("fetch_a"), fetch("b").named("fetch_b")
    p = parse(a, [1]).named("parse")
    m = merge(p, b).named("merge")
    return flowdsl.Flow("etl", (a | b) >> p >> m >> boom(m).named("boom")
                        >> publish(m).named("publish"))


def ok_flow() -> flowdsl.Flow:
    first = fetch("x")
    return flowdsl.Flow("ok", first >> publish(first))


def make_history(path: Path, ok_runs: int = 2) -> dict[str, Any]:
    """``ok_runs`` completed runs of ``ok`` then one failed run of ``etl``; their ids."""
    ok = [flowdsl.run(ok_flow(), history=path).run_id for _ in range(ok_runs)]
    failed = flowdsl.run(etl_flow(), history=path, continue_on_error=True)
    assert failed.status == "failed"
    return {"ok": ok, "failed": failed.run_id}


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) until the block ends."""
    import uvicorn

    from flowdsl._report.ui.server import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="ui-test-server")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the test server died while starting"
            assert time.monotonic() < deadline, "the test server did not start in 20 s"
            time.sleep(0.02)
        yield url_of(sock).rstrip("/")  # callers add the path
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body text of one request."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return (resp.status, {k.lower(): v for k, v in resp.headers.items()},
                    resp.read().decode())
    except urllib.error.HTTPError as exc:
        with exc:
            return (exc.code, {k.lower(): v for k, v in exc.headers.items()},
                    exc.read().decode())


# -- processes: a writer to kill, a read-only mount --------------------------------------------

_VICTIM = textwrap.dedent("""
    import sys, time
    import flowdsl
    from flowdsl import tool

    @tool
    def nap() -> int:
        time.sleep(120)
        return 1

    flowdsl.run(flowdsl.Flow("victim", nap().named("nap")), history=sys.argv[1])
""")


def start_victim(tmp_path: Path, path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A process running a flow (one long task) with history ``path``; its run id once the
    run is recorded as running."""
    script = tmp_path / "victim.py"
    script.write_text(_VICTIM)
    proc = subprocess.Popen([sys.executable, str(script), str(path)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    with HistoryView(path) as view:
        while True:
            assert proc.poll() is None, "the victim process died on its own"
            assert time.monotonic() < deadline, "the victim's run never showed up"
            try:
                rows = view.read(lambda v: v.runs(1, status="running"))
            except flowdsl.HistoryError:
                rows = []  # the file is not there yet
            if rows:
                return proc, rows[0]["run_id"]
            time.sleep(0.1)


def live_wal_copy(src: Path, folder: Path) -> str:
    """``folder`` gets a copy of history ``src`` plus a run written to the log only (the
    -wal, no -shm): what a read-only mount of a file in use shows. Returns that run's id."""
    folder.mkdir()
    shutil.copyfile(src, folder / "history.db")
    writer = sqlite3.connect(folder / "history.db", isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("INSERT INTO runs (run_id, flow, mode, status, started_at, ended_at, "
                       "duration) VALUES ('in-the-log', 'walflow', 'parallel', 'completed', "
                       "1.0, 2.0, 1.0)")
        shutil.copyfile(folder / "history.db-wal", folder / "wal.keep")
    finally:
        writer.close()  # folds the log into the file: put the log-only state back
    shutil.copyfile(src, folder / "history.db")
    os.replace(folder / "wal.keep", folder / "history.db-wal")
    for leftover in folder.glob("history.db-shm"):
        leftover.unlink()
    return "in-the-log"


def can_mount_read_only(folder: Path) -> str | None:
    """Why a read-only bind mount cannot be made here (``None``: it can)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "no unshare/mount here"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && touch "$1/probe"',
         "sh", str(folder)], capture_output=True, text=True, timeout=30)
    if "Read-only file system" in probe.stderr:
        return None
    return f"unshare -m / mount --bind -o ro refused here: {probe.stderr.strip()[:200]}"


@contextmanager
def served_read_only(folder: Path) -> Iterator[str]:
    """``flowdsl ui`` on ``folder/history.db`` with ``folder`` bind-mounted read-only in a
    private mount namespace (``unshare -m``; see :func:`can_mount_read_only`); its URL."""
    import re
    import signal

    script = ('mount --bind -o ro "$1" "$1" && exec "$2" -m flowdsl ui --history '
              '"$1/history.db" --port 0 --no-browser')
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script, "sh", str(folder),
                             sys.executable], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        yield found.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
