"""The run browser only reads: it never changes the history file (hash, mode, schema), reads a
read-only mount through a snapshot copy, tells a run whose writer is gone (computed when read,
from the writer's host, pid, start time and heartbeat), holds a page at most about 1 s behind a
lock, and answers only the Host names it should (DNS rebinding).

The read-only mount is real where the sandbox allows it: ``unshare -m`` (a private mount
namespace) and ``mount --bind -o ro`` around the ``flowdsl ui`` process. We run as root, so
permission bits would not stop anything; where ``unshare`` is refused, that test skips, saying
so, and the snapshot path is still checked by opening the file with SQLite refusing to open it
in place (as it does on such a mount).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

pytest.importorskip("starlette", reason="the run browser needs flowdsl[ui]")
pytest.importorskip("uvicorn", reason="the run browser needs flowdsl[ui]")

from ui_support import (  # tests/ is on sys.path
    can_mount_read_only,
    get,
    live_wal_copy,
    make_history,
    served,
    served_read_only,
    start_victim,
)

import flowdsl
from flowdsl import tool
from flowdsl._record.history import HistoryView, close_cached
from flowdsl._record.history import view as view_mod
from flowdsl._record.history.liveness import STALE_REMOTE, writer_gone
from flowdsl._record.history.view import _HistoryBusy
from flowdsl._record.history.write import HOST
from flowdsl._report.ui import allowed_hosts, create_app, is_loopback
from flowdsl._report.ui.pages import RUN_STATUSES

ROOT = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode


def _every_page(url: str, run_ids: list[str]) -> list[int]:
    """Every page and API answer the browser has, filters and pages included: the codes."""
    paths = ["/", "/tools", "/api/runs", "/api/tools", "/?page=2", "/?flow=ok", "/?flow=etl"]
    paths += [f"/?{urlencode({'status': s})}" for s in RUN_STATUSES]
    for run_id in run_ids:
        paths += [f"/runs/{quote(run_id)}", f"/api/runs/{quote(run_id)}"]
    codes = [get(url + p)[0] for p in paths]
    codes.append(get(url + "/runs/" + quote(run_ids[0]), {"X-Flowdsl-Partial": "1"})[0])
    return codes


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("ui_ro") / "history.db"
    ids = make_history(path)
    close_cached()  # the stores run() opened are closed: the log is folded into the file
    return path, ids


class TestNothingIsWritten:
    def test_browsing_every_page_leaves_the_file_as_it_was(
            self, tmp_path: Path, history: tuple[Path, dict[str, Any]]) -> None:
        """Hash, mode and schema version of the file are the same after every page."""
        path = tmp_path / "h.db"
        shutil.copyfile(history[0], path)
        os.chmod(path, 0o644)  # a mode the old browser "tightened" to 0600
        before = _digest(path)
        with served(create_app(path)) as url:
            codes = _every_page(url, [history[1]["failed"], *history[1]["ok"]])
        assert set(codes) == {200}, codes
        assert _digest(path) == before
        # SQLite may leave the log's (empty) -wal and shared-memory files: never data
        assert not (tmp_path / "h.db-wal").exists() or (tmp_path / "h.db-wal").stat().st_size == 0

    def test_an_older_schema_is_read_never_migrated(
            self, tmp_path: Path, history: tuple[Path, dict[str, Any]]) -> None:
        """A schema 3 file (before the writer liveness columns) is browsed as it is: its
        version and bytes stay; the old browser migrated it on open."""
        path = tmp_path / "v3.db"
        shutil.copyfile(history[0], path)
        with sqlite3.connect(path) as conn:
            for col in ("nodes", "proc_start", "heartbeat"):
                conn.execute(f"ALTER TABLE runs DROP COLUMN {col}")
            conn.execute("PRAGMA user_version = 3")
        conn.close()
        before = _digest(path)
        with served(create_app(path)) as url:
            codes = _every_page(url, [history[1]["failed"]])
        assert set(codes) == {200}, codes
        assert _digest(path) == before
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        conn.close()

    def test_a_schema_too_old_to_read_is_explained(self, tmp_path: Path) -> None:
        path = tmp_path / "v2.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE runs (run_id TEXT)")
            conn.execute("PRAGMA user_version = 2")
        conn.close()
        with served(create_app(path)) as url:
            status, _, body = get(url + "/")
        assert status == 500 and "schema version 2" in body and "never changes a file" in body


# -- a read-only mount --------------------------------------------------------------------------

def test_a_read_only_mount_is_read_from_a_snapshot(
        tmp_path: Path, history: tuple[Path, dict[str, Any]]) -> None:
    """`flowdsl ui` on a real read-only bind mount (no -shm can be created there): every page
    answers, from a snapshot that holds the rows still in the log, and says so."""
    folder = tmp_path / "ro"
    in_log = live_wal_copy(history[0], folder)
    why = can_mount_read_only(folder)
    if why is not None:
        pytest.skip(why + " (test_snapshot_when_sqlite_cannot_open_in_place covers the path)")
    before = _digest(folder / "history.db")
    with served_read_only(folder) as url:
        status, _, body = get(url + "/")
        assert status == 200, body
        assert "Read from a snapshot copy" in body and "-shm" in body
        assert in_log in body and history[1]["failed"] in body
        assert set(_every_page(url, [history[1]["failed"], in_log])) == {200}
    assert _digest(folder / "history.db") == before
    assert not (folder / "history.db-shm").exists()


def test_snapshot_when_sqlite_cannot_open_in_place(
        tmp_path: Path, history: tuple[Path, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SQLite cannot open the file read-only in place (as on a read-only mount with no
    -shm), the view reads a snapshot copy that includes the log's rows (never
    ``immutable=1``), takes it again when the file changes, and says why."""
    folder = tmp_path / "ro"
    in_log = live_wal_copy(history[0], folder)
    path = folder / "history.db"
    real = sqlite3.connect
    opened: list[str] = []

    def connect(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(target))
        if "mode=ro" in str(target):
            msg = "unable to open database file"
            raise sqlite3.OperationalError(msg)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(view_mod.sqlite3, "connect", connect)
    before = _digest(path)
    with HistoryView(path) as view:
        ids = [r["run_id"] for r in view.read(lambda v: v.runs(50))]
        assert in_log in ids and history[1]["failed"] in ids
        assert view.snapshot is not None and "-shm" in view.snapshot
        assert not any("immutable" in t for t in opened)
        with real(path, isolation_level=None) as writer:  # the file changes: a new snapshot
            writer.execute("INSERT INTO runs (run_id, status) VALUES ('later', 'completed')")
        writer.close()
        assert "later" in [r["run_id"] for r in view.read(lambda v: v.runs(50))]
    assert _digest(path) != before  # (the test's own writer changed it, not the view)


# -- locks ----------------------------------------------------------------------------------------

def test_a_lock_holds_a_page_at_most_about_a_second(
        tmp_path: Path, history: tuple[Path, dict[str, Any]]) -> None:
    """Another process holding the file exclusively: the page answers 503 within about 1 s
    and says why; once the lock is gone, the page answers again."""
    path = tmp_path / "locked.db"
    shutil.copyfile(history[0], path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with served(create_app(path)) as url:
            t0 = time.monotonic()
            status, _, body = get(url + "/")
            took = time.monotonic() - t0
            assert status == 503 and "locked by another process" in body, body
            assert "within 1 s" in body and 'data-live="1"' in body  # the page retries
            assert took < 2.5, took
            t0 = time.monotonic()
            status, _, body = get(url + "/api/runs/" + quote(history[1]["failed"]))
            assert status == 503 and "locked" in json.loads(body)["error"]
            assert time.monotonic() - t0 < 2.5
            holder.execute("ROLLBACK")
            holder.close()  # the lock is gone with its connection
            assert get(url + "/")[0] == 200
    finally:
        holder.close()


def test_history_busy_is_a_history_error() -> None:
    assert issubclass(_HistoryBusy, flowdsl.HistoryError)


# -- interrupted, computed when read --------------------------------------------------------------

class TestWriterGone:
    def test_same_host_dead_pid(self) -> None:
        """Same host, pid gone: interrupted once the heartbeat is a few seconds old (or when
        there is none); a fresh heartbeat keeps it (another pid namespace)."""
        dead = 2 ** 22 + 12345  # above pid_max's default: no such process
        now = time.time()
        assert writer_gone(HOST, dead, None, None, here=HOST, now=now)
        assert writer_gone(HOST, dead, None, now - 3.0, here=HOST, now=now)
        assert writer_gone(HOST, dead, None, now - 0.5, here=HOST, now=now) is None

    def test_same_host_reused_pid(self) -> None:
        """A pid that now names another process (another start time) is a writer gone."""
        pid = os.getppid()
        why = writer_gone(HOST, pid, "not-its-start-time", None, here=HOST, now=time.time())
        if sys.platform.startswith("linux"):
            assert why is not None and "another one" in why
        assert writer_gone(HOST, pid, None, None, here=HOST, now=time.time()) is None

    def test_other_host_by_heartbeat(self) -> None:
        now = time.time()
        assert writer_gone("elsewhere", 1, None, now - 1, here=HOST, now=now) is None
        why = writer_gone("elsewhere", 1, None, now - STALE_REMOTE - 1, here=HOST, now=now)
        assert why is not None and "no heartbeat" in why
        assert writer_gone("elsewhere", 1, None, None, here=HOST, now=now) is None


def test_a_killed_run_reads_interrupted_within_5s(tmp_path: Path) -> None:
    """`kill -9` of the writer: within 5 s the API and the page say interrupted, with the
    reason, and the file still says running (nothing was written)."""
    path = tmp_path / "h.db"
    proc, run_id = start_victim(tmp_path, path)
    try:
        with served(create_app(path)) as url:
            run = json.loads(get(f"{url}/api/runs/{quote(run_id)}")[2])
            assert run["status"] == "running"
            assert run["tasks"][0]["status"] == "running"
            proc.kill()
            proc.wait(30)  # reaped, as a shell would
            killed = time.monotonic()
            while True:
                run = json.loads(get(f"{url}/api/runs/{quote(run_id)}")[2])
                if run["status"] == "interrupted":
                    break
                assert time.monotonic() - killed < 5.0, "still running 5 s after kill -9"
                time.sleep(0.1)
            assert time.monotonic() - killed < 5.0
            assert "is gone" in run["interrupted_why"]
            assert run["tasks"][0]["status"] == "interrupted"
            listed = json.loads(get(f"{url}/api/runs?status=interrupted")[2])["runs"]
            assert [r["run_id"] for r in listed] == [run_id]
            assert json.loads(get(f"{url}/api/runs?status=running")[2])["runs"] == []
            body = get(f"{url}/runs/{quote(run_id)}")[2]
            assert "the browser only reads" in body and 'data-live="0"' in body
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"
    conn.close()


_gate = threading.Event()


@tool
def waits() -> int:
    if not _gate.wait(30):
        msg = "the test never opened the gate"
        raise TimeoutError(msg)
    return 1


def test_the_writer_thread_stamps_a_heartbeat(tmp_path: Path) -> None:
    """While a run is in progress (its one task waiting) its row gets a heartbeat about
    every second, with the writer's host, pid and process start time."""
    path = tmp_path / "h.db"
    _gate.clear()
    runner = threading.Thread(target=lambda: flowdsl.run(
        flowdsl.Flow("beat", waits().named("w")), history=path, mode="sequential"))
    runner.start()
    try:
        def row() -> tuple[Any, ...] | None:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return conn.execute("SELECT host, pid, proc_start, heartbeat FROM runs "  # type: ignore[no-any-return]
                                    "WHERE status = 'running'").fetchone()
            except sqlite3.OperationalError:
                return None  # the file is being created
            finally:
                conn.close()

        deadline = time.monotonic() + 20
        while not (path.exists() and (first := row())):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first[:2] == (HOST, os.getpid()) and first[3] is not None
        if sys.platform.startswith("linux"):
            assert first[2] is not None
        time.sleep(2.5)
        later = row()
        assert later is not None and later[3] > first[3]
    finally:
        _gate.set()
        runner.join(30)


# -- Host header ----------------------------------------------------------------------------------

class TestHosts:
    def test_loopback_addresses(self) -> None:
        assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]",
                                             "localhost"))
        assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com"))

    @pytest.mark.parametrize("host", ["127.0.0.2", "0.0.0.0", "10.1.2.3"])
    def test_the_host_check_holds_on_any_address(
            self, history: tuple[Path, dict[str, Any]], host: str) -> None:
        """Whatever --host: the loopback names and the address itself are answered, any other
        name (a rebound DNS name) is refused; --allow-host adds one."""
        app = create_app(history[0], allowed_hosts=allowed_hosts(host, ["box.lan"]))
        with served(app) as url:
            port = url.rsplit(":", 1)[1]
            for ok in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", f"{host}:{port}",
                       "box.lan", f"BOX.LAN:{port}"):
                assert get(url + "/", {"Host": ok})[0] == 200, ok
            for bad in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                        "box.lan.evil.example"):
                status, _, body = get(url + "/", {"Host": bad})
                assert status == 400 and "--allow-host" in body, bad

    def test_command_on_another_loopback_address(
            self, history: tuple[Path, dict[str, Any]]) -> None:
        """`flowdsl ui --host 127.0.0.2` still refuses a foreign Host header (it did not)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowdsl", "ui", "--history", str(history[0]), "--host",
             "127.0.0.2", "--port", "0", "--no-browser", "--allow-host", "box.lan"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            found = re.search(r"http://127\.0\.0\.2:\d+", line)
            assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
            url = found.group(0)
            assert get(url + "/")[0] == 200
            assert get(url + "/", {"Host": "box.lan"})[0] == 200
            assert get(url + "/", {"Host": "evil.example"})[0] == 400
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)


@pytest.fixture
def many_runs(tmp_path: Path) -> Iterator[Path]:
    """A history whose only run of flow ``ancient`` is 1,100 runs back, one run of each run
    status (``rolled_back`` too)."""
    path = tmp_path / "many.db"
    flowdsl.HistoryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO runs (run_id, flow, status, started_at) VALUES "
                     "('r-ancient', 'ancient', 'completed', 1.0)")
        conn.executemany("INSERT INTO runs (run_id, flow, status, started_at) VALUES "
                         "(?, 'busy', ?, 2.0)",
                         [(f"r{i}", RUN_STATUSES[i % len(RUN_STATUSES)]) for i in range(1100)])
    conn.close()
    yield path


def test_filters_cover_every_flow_and_status(many_runs: Path) -> None:
    """The flow filter lists a flow whose runs are older than the newest 1,000; the status
    filter lists every status (rolled_back included) and each filters."""
    assert "rolled_back" in RUN_STATUSES and "rollback_failed" in RUN_STATUSES
    with served(create_app(many_runs)) as url:
        body = get(url + "/")[2]
        assert '<option value="ancient">' in body
        for s in RUN_STATUSES:
            assert f'<option value="{s}">' in body
        runs = json.loads(get(url + "/api/runs?flow=ancient")[2])["runs"]
        assert [r["run_id"] for r in runs] == ["r-ancient"]
        rolled = json.loads(get(url + "/api/runs?status=rolled_back")[2])["runs"]
        assert rolled and {r["status"] for r in rolled} == {"rolled_back"}
        # paging by offset: 1,101 runs at 25 a page, page 45 holds the oldest alone
        last = json.loads(get(url + "/api/runs?page=45")[2])
        assert [r["run_id"] for r in last["runs"]] == ["r-ancient"] and not last["more"]
