"""Live progress never eats output: ``flowdsl run`` in a pseudo-terminal, on a flow whose two
tasks print and log 12 lines at once, leaves each line exactly once on the (pyte-emulated)
screen and no progress frame behind."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pyte = pytest.importorskip("pyte")
pty = pytest.importorskip("pty")  # POSIX only
import fcntl  # noqa: E402  (POSIX only, after the skip)
import struct  # noqa: E402
import termios  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = 60, 120

FLOW = textwrap.dedent("""
    import logging
    import threading
    import time

    from flowdsl import tool

    log = logging.getLogger("chatty")
    both = threading.Barrier(2, timeout=10)


    @tool(registry=False)
    def chatty(name: str) -> str:
        both.wait()  # the two tasks talk at the same time
        for n in range(3):
            print(f"print from {name} step {n}")
            time.sleep(0.06)
            log.warning("log from %s step %d", name, n)
            time.sleep(0.06)
        return name


    flow = chatty("c1").named("c1") | chatty("c2").named("c2")
""")


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 60
                ) -> tuple[int, list[str], bytes]:
    """Run ``args`` on a pseudo-terminal of ROWS x COLS; the exit code, the final screen
    (the emulator's lines, scrolled-off ones first) and every byte written."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
           "PYTHONPATH": str(ROOT), "FLOWDSL_HISTORY": "off", "HOME": str(cwd)}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                            close_fds=True, start_new_session=True)
    os.close(slave)
    screen = pyte.HistoryScreen(COLS, ROWS, history=1000)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                stream.feed(data)
                raw += data
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    gone = ["".join(line[x].data for x in range(COLS)).rstrip()
            for line in screen.history.top]
    return code, [*gone, *(line.rstrip() for line in screen.display)], bytes(raw)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize("config", ["", "logging.basicConfig(format='%(message)s')\n"],
                         ids=["last-resort-handler", "basicConfig-handler"])
def test_prints_and_logs_go_above_the_display(tmp_path: Path, config: str) -> None:
    """Log records reach the terminal through the standard library's last-resort handler
    (which writes to sys.stderr as it is then) or through a handler made before the run
    (which holds the real stderr): both go above the display."""
    (tmp_path / "chatty_flow.py").write_text(FLOW.replace("\nlog = ", f"\n{config}log = "))
    code, lines, _ = _run_in_pty(
        [sys.executable, "-m", "flowdsl", "run", "chatty_flow.py:flow"], tmp_path)
    screen = "\n".join(lines)
    assert code == 0, screen
    expected = [f"{what} from {name} step {n}" for name in ("c1", "c2") for n in range(3)
                for what in ("print", "log")]
    assert len(expected) == 12
    for text in expected:
        assert lines.count(text) == 1, f"{text!r} is on the screen {lines.count(text)} " \
                                       f"time(s):\n{screen}"
    # The display was on (the summary follows it) and left no frame behind.
    assert any("2 completed" in line for line in lines), screen
    assert not any("▸" in line or re.search(r"\d+/\d+ done", line) for line in lines), screen


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_bench_shows_its_runs_and_keeps_the_output(tmp_path: Path) -> None:
    """flowdsl bench draws a bar of its runs on a terminal; the flow's lines go above it and
    no bar is left behind."""
    (tmp_path / "chatty_flow.py").write_text(FLOW)
    code, lines, raw = _run_in_pty(
        [sys.executable, "-m", "flowdsl", "bench", "chatty_flow.py:flow", "--repeat", "1",
         "--warmup", "1", "-m", "parallel"], tmp_path)
    screen = "\n".join(lines)
    assert code == 0, screen
    assert b"benchmark" in raw and b"parallel (warm-up)" in raw  # the bar was drawn
    for name in ("c1", "c2"):
        for n in range(3):
            assert lines.count(f"print from {name} step {n}") == 2, screen  # two runs
            assert lines.count(f"log from {name} step {n}") == 2, screen
    assert not any(line.startswith("benchmark") for line in lines), screen
    assert any("parallel" in line and "%" in line for line in lines), screen  # the table
