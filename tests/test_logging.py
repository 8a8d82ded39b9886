"""Logging through the standard library: flowdsl's events reach the ``flowdsl`` logger at
fitting levels, users' handlers and formats apply, a JSON renderer is one option away, and a
tool's own lines (``flowdsl.get_logger()``) are bound to its run and task and kept on the
task's record."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import capture_events, run, tl

import flowdsl
from flowdsl import Backoff
from flowdsl._base import log as flog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    """Each test leaves logging as it found it."""
    enabled, as_json = flog._enabled, flog._json_output
    yield
    flog._enabled, flog._json_output = enabled, as_json


@tl
def ok() -> int:
    return 1


@tl(retries=1, backoff=Backoff(initial=0.001))
def bad() -> int:
    raise ValueError("nope")


def _levels(events: list[dict[str, object]]) -> dict[str, set[object]]:
    out: dict[str, set[object]] = {}
    for e in events:
        out.setdefault(str(e["event"]), set()).add(e["log_level"])
    return out


class TestEvents:
    def test_levels_fit_the_events(self) -> None:
        """Failures are errors, retries warnings, task starts debug, the rest info."""
        with capture_events() as events:
            r = run(ok().named("ok") >> bad().named("bad"), log=True)
        levels = _levels(events)
        assert levels["task_failed"] == {"error"}
        assert levels["task_retrying"] == {"warning"}
        assert levels["task_started"] == {"debug"}
        assert levels["task_completed"] == {"info"}
        assert levels["run_started"] == {"info"}
        assert levels["run_finished"] == {"error"}  # the run failed
        assert all(e["run_id"] == r.run_id for e in events)
        assert {e["logger"] for e in events} == {"flowdsl"}

    def test_the_loggers_level_filters(self) -> None:
        """At level WARNING only the retry and the failures come through."""
        with capture_events(logging.WARNING) as events:
            run(ok().named("ok") >> bad().named("bad"), log=True)
        assert {e["event"] for e in events} == {"task_retrying", "task_failed", "run_finished"}

    def test_a_users_handler_and_format_apply(self) -> None:
        """A handler with its own format on the `flowdsl` logger gets `event key=value`."""
        lines: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(self.format(record))

        handler = Keep()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger = logging.getLogger("flowdsl")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            r = run(bad().named("bad"), log=True)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
        failed = next(x for x in lines if "task_failed" in x)
        assert failed.startswith("[ERROR] task_failed ")
        assert f"run_id={r.run_id}" in failed and "task=bad" in failed
        assert "status=failed" in failed

    def test_json_renderer(self) -> None:
        """enable_logging(json=True): each message is one JSON object, event first."""
        flowdsl.enable_logging(json=True)
        messages: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(record.getMessage())

        logger = logging.getLogger("flowdsl")
        handler = Keep()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            r = run(ok().named("ok"))  # enabled through enable_logging, no log=True
        finally:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
            flowdsl.enable_logging(False, json=False)
        data = [json.loads(m) for m in messages]
        assert [d["event"] for d in data] == ["run_started", "task_completed", "run_finished"]
        assert next(iter(data[1])) == "event" and data[1]["task"] == "ok"
        assert all(d["run_id"] == r.run_id for d in data)

    def test_silent_when_off(self) -> None:
        """With logging and capture off the engine logs nothing and keeps nothing on the
        records; a tool's own lines still go to its standard logger, as any library's
        would."""
        with capture_events() as events:
            r = run(talk("a").named("talk"), capture_output=False)
        assert [e["logger"] for e in events] == ["flowdsl.tools"] * 2
        assert "run_id" not in events[0] and r.tasks["talk"].logs is None
        assert r.tasks["talk"].to_dict()["logs"] == []

    def test_kept_by_default_with_logging_off(self) -> None:
        """Capture is on by default: a tool's get_logger() lines are kept on its record
        (bound to the run and the task) though the engine logs no event of its own."""
        with capture_events() as events:
            r = run(talk("a").named("talk"))
        assert [e["logger"] for e in events] == ["flowdsl.tools"] * 2
        assert events[0]["run_id"] == r.run_id and events[0]["task"] == "talk"
        logs = r.tasks["talk"].logs or []
        assert [(x["level"], x["event"]) for x in logs] == [("info", "hello"),
                                                             ("warning", "careful")]

    @pytest.mark.slow
    def test_stderr_by_default(self, tmp_path: Path) -> None:
        """FLOWDSL_LOG=1 with no logging configured: the events go to stderr, not stdout."""
        script = tmp_path / "s.py"
        script.write_text(textwrap.dedent("""
            import flowdsl
            from flowdsl import tool

            @tool(registry=False)
            def bad() -> int:
                raise ValueError("nope")

            flowdsl.run(bad(), history=False)
            print("done")
        """))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env={"FLOWDSL_LOG": "1", "PYTHONPATH": str(ROOT),
                                   "PATH": "/usr/bin:/bin"}, timeout=60, check=False)
        assert proc.stdout == "done\n", proc.stderr
        assert "ERROR flowdsl: task_failed" in proc.stderr
        assert "INFO flowdsl: run_started" in proc.stderr


@tl
def talk(name: str) -> str:
    log = flowdsl.get_logger(source="test")
    log.info("hello", name=name)
    log.warning("careful", n=2, obj=object())
    return name


@tl(executor="async")
async def talk_async(name: str) -> str:
    flowdsl.get_logger().info("async hello", name=name)
    return name


@tl
def chatty(n: int) -> int:
    log = flowdsl.get_logger()
    for i in range(n):
        log.debug("line", i=i)
    return n


class TestToolLogger:
    def test_lines_are_bound_and_kept_on_the_record(self) -> None:
        """A tool's lines carry its run and task ids, go to `flowdsl.tools`, and are kept
        on its record with time, level, event and values (non-JSON values as repr)."""
        with capture_events() as events:
            r = run(talk("a").named("t1") >> talk_async("b").named("t2"), log=True)
        mine = [e for e in events if e["logger"] == "flowdsl.tools"]
        assert {(e["event"], e["task"]) for e in mine} == {
            ("hello", "t1"), ("careful", "t1"), ("async hello", "t2")}
        assert all(e["run_id"] == r.run_id for e in mine)
        logs = r.tasks["t1"].logs
        assert logs is not None and [x["event"] for x in logs] == ["hello", "careful"]
        assert logs[0]["level"] == "info" and logs[0]["name"] == "a"
        assert logs[0]["source"] == "test" and logs[1]["level"] == "warning"
        assert logs[1]["obj"].startswith("<object object")
        assert 0 <= logs[0]["time"] <= logs[1]["time"] <= r.duration
        assert r.tasks["t2"].logs == [{"time": r.tasks["t2"].logs[0]["time"], "level": "info",
                                       "event": "async hello", "name": "b"}]
        assert json.loads(json.dumps(r.to_dict()))["tasks"]["t1"]["logs"] == logs

    def test_lines_per_task_are_capped(self) -> None:
        """At most MAX_TASK_LOGS lines are kept, then one line says the rest were not."""
        r = run(chatty(flog.MAX_TASK_LOGS + 50).named("c"), log=True)
        logs = r.tasks["c"].logs
        assert logs is not None and len(logs) == flog.MAX_TASK_LOGS + 1
        assert "not kept" in logs[-1]["event"] and logs[-2]["i"] == flog.MAX_TASK_LOGS - 1

    def test_pipeline_items_keep_their_lines(self) -> None:
        """Over items, a stage's record holds the lines of every item."""
        r = run(talk, mode="pipeline", items=["x", "y", "z"], log=True)
        logs = r.tasks[next(iter(r.tasks))].logs
        assert logs is not None and [x["name"] for x in logs if x["event"] == "hello"] == [
            "x", "y", "z"]

    def test_outside_a_run_the_logger_is_unbound(self) -> None:
        """get_logger() outside a tool logs without run or task ids."""
        logger = logging.getLogger("flowdsl")
        with capture_events() as events:
            flowdsl.get_logger().warning("plain")
        assert logger.level == logging.NOTSET
        assert events == [{"event": "plain", "log_level": "warning",
                           "logger": "flowdsl.tools"}]
