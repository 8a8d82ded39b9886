"""A tool's prints and standard ``logging`` records are kept with its task (thread, async and
inline tools), capped, masked, in history, still shown on the terminal, with opt-outs per
tool and per run; the engine's events are the same under ``log=True`` and
``enable_logging()``, one event per final status, and ``FLOWDSL_LOG=json`` writes pure JSON
lines."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import capture_events, run, tl

import flowdsl
from flowdsl import Secret
from flowdsl._base import capture
from flowdsl._base.log import MAX_LOG_LINE, MAX_TASK_LOGS

ROOT = Path(__file__).resolve().parents[1]
mylog = logging.getLogger("tests.capture.tool")


def _events(rec: Any) -> list[str]:
    return [x["event"] for x in rec.logs or ()]


@tl
def chatty(name: str) -> str:
    print(f"{name}: one")
    print(f"{name}: two", file=sys.stderr)
    mylog.warning("%s: three", name)
    return name


@tl(executor="inline")
def chatty_inline(name: str) -> str:
    print(f"{name}: inline")
    return name


@tl
async def chatty_async(name: str) -> str:
    print(f"{name}: async", end="")  # no newline: kept when the task ends
    await anyio.sleep(0)
    mylog.error("%s: async error", name)
    return name


class TestKept:
    def test_thread_async_and_inline_tools(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Each tool's lines are on its own record, in order, with their stream or logger;
        the prints still reach the terminal."""
        r = run([chatty("t").named("t"), chatty_async("a").named("a"),
                 chatty_inline("i").named("i")])
        t = r.tasks["t"].logs or []
        assert [(x["level"], x["event"], x.get("stream") or x.get("logger")) for x in t] == [
            ("info", "t: one", "stdout"), ("warning", "t: two", "stderr"),
            ("warning", "t: three", "tests.capture.tool")]
        assert _events(r.tasks["a"]) == ["a: async error", "a: async"]
        assert _events(r.tasks["i"]) == ["i: inline"]
        assert all(isinstance(x["time"], float) for x in t)
        out, err = capsys.readouterr()
        assert "t: one\n" in out and "i: inline\n" in out and "a: async" in out
        assert "t: two\n" in err

    def test_on_trio(self) -> None:
        r = run([chatty("t").named("t"), chatty_async("a").named("a")], backend="trio")
        assert _events(r.tasks["t"]) == ["t: one", "t: two", "t: three"]
        assert _events(r.tasks["a"]) == ["a: async error", "a: async"]

    def test_a_logged_record_is_kept_once(self) -> None:
        """A record the last-resort handler prints to stderr is kept as the record, not a
        second time as a stderr line."""
        r = run(chatty("x").named("x"))
        assert _events(r.tasks["x"]).count("x: three") == 1

    def test_levels_the_logger_enables(self) -> None:
        """Records at levels the logger does not enable are never made, so never kept; a
        logger set to INFO has its INFO lines kept."""
        @tl
        def info() -> None:
            mylog.info("quiet")
            mylog.debug("quieter")

        assert run(info().named("a")).tasks["a"].logs is None
        mylog.setLevel(logging.INFO)
        try:
            r = run(info().named("a"))
        finally:
            mylog.setLevel(logging.NOTSET)
        assert _events(r.tasks["a"]) == ["quiet"]

    def test_concurrent_thread_tools_keep_their_own_lines(self) -> None:
        """Two thread tools printing at once: each record holds its own lines only."""
        barrier = threading.Barrier(2, timeout=5)

        @tl
        def speak(name: str) -> None:
            barrier.wait()
            for n in range(50):
                print(f"{name} {n}")

        r = run([speak("a").named("a"), speak("b").named("b")])
        assert _events(r.tasks["a"]) == [f"a {n}" for n in range(50)]
        assert _events(r.tasks["b"]) == [f"b {n}" for n in range(50)]

    def test_mapped_children_keep_their_own_lines(self) -> None:
        @tl
        def each(x: int) -> int:
            print(f"child {x}")
            return x

        r = run(each.map([1, 2, 3]).named("m"))
        kids = {tid: _events(rec) for tid, rec in r.tasks.items() if rec.parent == "m"}
        assert sorted(kids.values()) == [["child 1"], ["child 2"], ["child 3"]]

    def test_streams_and_factory_are_restored(self) -> None:
        out, err, factory = sys.stdout, sys.stderr, logging.getLogRecordFactory()
        seen: list[Any] = []

        @tl
        def look() -> None:
            seen.append(sys.stdout)

        run(look().named("a"))
        assert isinstance(seen[0], capture._Tee)
        assert sys.stdout is out and sys.stderr is err
        assert logging.getLogRecordFactory() is factory

    def test_outside_a_task_nothing_is_kept(self) -> None:
        """Prints of the code around a run (an observer) are not any task's."""
        class Observer:
            def run_started(self, result: Any, plan: Any) -> None:
                print("observer speaks")

            def task_started(self, result: Any, record: Any) -> None:
                print("observer speaks")

            def task_finished(self, result: Any, record: Any, output: Any) -> None:
                print("observer speaks")

            def run_finished(self, result: Any) -> None:
                pass

        r = run(chatty_inline("q").named("q"), observers=[Observer()])
        assert _events(r.tasks["q"]) == ["q: inline"]


class TestLimits:
    def test_capped_per_task(self) -> None:
        @tl
        def flood() -> None:
            for n in range(MAX_TASK_LOGS + 50):
                print(f"line {n}")

        logs = run(flood().named("f")).tasks["f"].logs or []
        assert len(logs) == MAX_TASK_LOGS + 1
        assert logs[-1]["event"].startswith(f"more than {MAX_TASK_LOGS} log lines")
        assert logs[-2]["event"] == f"line {MAX_TASK_LOGS - 1}"

    def test_a_long_line_is_cut(self) -> None:
        @tl
        def long() -> None:
            print("x" * (MAX_LOG_LINE + 10))

        (line,) = run(long().named("l")).tasks["l"].logs or []
        assert line["event"].startswith("x" * MAX_LOG_LINE)
        assert line["event"].endswith("(10 more characters not kept)")

    def test_secrets_are_masked(self) -> None:
        token = "s3cr3t-token-value"

        @tl
        def leak(key: Secret[str]) -> None:
            print(f"using {key.get()}")  # the tool reveals it: the kept lines must not
            mylog.warning("key is %s", key.get())

        r = run(leak(Secret(token)).named("k"))
        assert _events(r.tasks["k"]) == ["using ***", "key is ***"]

    def test_blank_lines_are_not_kept(self) -> None:
        @tl
        def blank() -> None:
            print()
            print("text")
            print("   ")

        assert _events(run(blank().named("b")).tasks["b"]) == ["text"]


class TestOptOut:
    def test_per_tool(self, capsys: pytest.CaptureFixture[str]) -> None:
        quiet = tl(lambda: print("not kept"), capture=False)
        r = run([quiet().named("q"), chatty_inline("k").named("k")])
        assert r.tasks["q"].logs is None and _events(r.tasks["k"]) == ["k: inline"]
        assert "not kept\n" in capsys.readouterr().out  # still printed

    def test_per_task_option(self) -> None:
        r = run(chatty_inline("k").named("k").with_options(capture=False))
        assert r.tasks["k"].logs is None

    def test_per_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        r = run(chatty("t").named("t"), capture_output=False)
        assert r.tasks["t"].logs is None
        assert "t: one\n" in capsys.readouterr().out

    def test_option_is_validated(self) -> None:
        with pytest.raises(flowdsl.ToolDefinitionError, match="capture=1"):
            tl(lambda: None, capture=1)


def test_kept_in_history(tmp_path: Path) -> None:
    """The lines reach history (and so the run browser and timelines)."""
    store = flowdsl.HistoryStore(tmp_path / "h.db")
    try:
        r = flowdsl.run(chatty("h").named("h"), history=store)
        stored = store.get_run(r.run_id)
    finally:
        store.close()
    (task,) = [t for t in stored["tasks"] if t["task_id"] == "h"]
    assert [x["event"] for x in task["logs"]] == ["h: one", "h: two", "h: three"]


# -- the engine's events --------------------------------------------------------------------


def test_each_status_has_its_own_event() -> None:
    """upstream_failed and timed_out are not logged as skipped and failed."""
    @tl(timeout=0.05, executor="async")
    async def slow() -> None:
        await anyio.sleep(5)

    boom = tl(lambda: 1 / 0)
    after = tl(lambda: 1)
    with capture_events() as events:
        r = run([boom().named("boom") >> after().named("after"), slow().named("slow")],
                log=True, continue_on_error=True)
    by_task = {e["task"]: e["event"] for e in events
               if "task" in e and e["event"] != "task_started"}
    assert by_task == {"boom": "task_failed", "after": "task_upstream_failed",
                       "slow": "task_timed_out"}
    assert r.tasks["after"].status.value == "upstream_failed"


def test_thread_abandoned_is_logged_with_log_true() -> None:
    """run(log=True) emits task_thread_abandoned as enable_logging() does; a run without
    logging emits nothing."""
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    flow = tl(stuck, timeout=0.05)().named("stuck")
    try:
        with capture_events() as events:
            r = run(flow, log=True)
        with capture_events() as silent:
            run(flow)
    finally:
        release.set()
    warned = [e for e in events if e["event"] == "task_thread_abandoned"]
    assert len(warned) == 1 and warned[0]["task"] == "stuck"
    assert warned[0]["run_id"] == r.run_id and warned[0]["log_level"] == "warning"
    assert silent == []


@pytest.mark.slow
def test_flowdsl_log_json_is_pure_json_lines(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import flowdsl
        from flowdsl import tool

        @tool(registry=False)
        def bad() -> int:
            raise ValueError("nope")

        flowdsl.run(bad(), history=False)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={"FLOWDSL_LOG": "json", "PYTHONPATH": str(ROOT),
                               "PATH": "/usr/bin:/bin"}, timeout=60, check=False)
    lines = proc.stderr.splitlines()
    data = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [d["event"] for d in data] == ["run_started", "task_failed", "run_finished"]
    assert data[1]["level"] == "error" and data[1]["logger"] == "flowdsl"
    assert data[1]["task"] == "bad" and "time" in data[1]


@tl(executor="process")
def in_a_process() -> int:
    print("from another process")
    return 1


def test_process_tools_are_not_captured() -> None:
    """A process tool prints in its own process: nothing is kept (as documented), and the
    run is not disturbed."""
    r = run(in_a_process().named("p"))
    assert r.ok and r.tasks["p"].logs is None


class TestDisplay:
    def test_lines_go_through_the_display(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With a live display on, a task's prints reach the display's console (printed
        above it), not the raw streams, each once; the record keeps them."""
        import io

        from rich.console import Console

        from flowdsl._report.progress import LiveProgress

        buf = io.StringIO()
        live = LiveProgress(Console(file=buf, force_terminal=True, width=100))
        r = run(chatty("d").named("d"), observers=[live])
        shown = buf.getvalue()
        for text in ("d: one", "d: two"):  # (pytest's own handler takes the log record)
            assert shown.count(text) == 1, shown
        out, err = capsys.readouterr()
        assert "d: one" not in out and "d: two" not in err
        assert _events(r.tasks["d"]) == ["d: one", "d: two", "d: three"]
        assert not isinstance(sys.stdout, capture._Tee)

    def test_uncaptured_run_still_goes_above(self) -> None:
        """capture_output=False stops the keeping, not the display's protection."""
        import io

        from rich.console import Console

        from flowdsl._report.progress import LiveProgress

        buf = io.StringIO()
        live = LiveProgress(Console(file=buf, force_terminal=True, width=100))
        r = run(chatty_inline("u").named("u"), observers=[live], capture_output=False)
        assert buf.getvalue().count("u: inline") == 1 and r.tasks["u"].logs is None


def test_a_line_redrawn_in_place_keeps_its_last_state() -> None:
    """A progress bar drawn with carriage returns is kept as the terminal shows it last, and
    a line that never ends does not grow without bound."""
    @tl
    def bar() -> None:
        for n in range(101):
            print(f"\r{n}%", end="")
        print()
        for _ in range(5000):
            print("\r" + "x" * 100, end="")

    logs = run(bar().named("b")).tasks["b"].logs or []
    assert logs[0]["event"] == "100%"
    assert len(logs) == 2 and len(logs[1]["event"]) <= MAX_LOG_LINE + 60
