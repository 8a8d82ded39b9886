"""Faults that must end as a failed result, never as a lost run: unprintable exceptions,
dead workers, unencodable ids, limits for untrusted input, secrets, pipeline memory, and the
join/rollback cases of the reliability catalogue (docs/RELIABILITY.md lists them)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import proc_tools as pt  # tests/ is on sys.path: worker processes import the tools
import pytest

import flowdsl
from flowdsl import TaskStatus, WorkerLost, tool

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

S = TaskStatus


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class TestUnprintableConditionErrors:
    """A condition (a task's, a group's, or one on another task's output) that raises an
    unprintable exception fails the task it guards, with a message; nothing escapes run()."""

    def _bad(self, _value: object) -> bool:
        raise Unprintable()

    def test_task_group_and_output_conditions(self, mode: str) -> None:
        @tool(registry=False)
        def one() -> int:
            return 1

        src = one().named("src")
        shapes = {
            "task": one().named("t").when(self._bad),
            "group": (one().named("g1") >> one().named("g2")).when(self._bad),
            "on": one().named("o").when(self._bad, on=src),
        }
        for name, shape in shapes.items():
            r = flowdsl.run(src >> shape, mode=mode, history=False)
            assert r.status == "failed", name
            assert "unprintable Unprintable" in str(r.error), name


class TestUnprintableErrors:
    """Issue 16 item 3: a tool's exception that cannot be printed still fails just its task."""

    @pytest.mark.parametrize("executor", ["inline", "thread", "async"])
    def test_every_mode_returns_a_failed_result(self, mode: str, executor: str) -> None:
        """str() and repr() raising never escape run(): the task fails with a message."""
        if executor == "async":
            @tool(registry=False, executor="async")
            async def bad() -> None:
                raise Unprintable()
        else:
            @tool(registry=False, executor=executor)
            def bad() -> None:
                raise Unprintable()

        @tool(registry=False)
        def fine() -> int:
            return 1

        r = flowdsl.run(bad().named("bad") | fine().named("fine"), mode=mode, log=True)
        assert r.status == "failed"
        rec = r.tasks["bad"]
        assert rec.status is S.FAILED
        assert rec.error is not None and rec.error.type == "Unprintable"
        assert "unprintable Unprintable" in rec.error.message
        assert "bad" in str(r.error)
        r.to_dict()  # JSON-friendly, no second error
        with pytest.raises(flowdsl.RunFailed, match="unprintable"):
            r.raise_for_error()

    def test_process_worker(self) -> None:
        """An unprintable exception raised in a worker process fails its task too."""
        r = flowdsl.run(pt.raises_unprintable().named("raises_unprintable"), history=False)
        assert r.tasks["raises_unprintable"].status is S.FAILED
        assert r.tasks["raises_unprintable"].error is not None


class TestDeadProcessWorker:
    """Issue 16 item 5: a worker process that dies fails its task and says how it died."""

    def test_os_exit(self) -> None:
        """os._exit(3) in the tool: WorkerLost with the exit code, the run goes on."""
        r = flowdsl.run([pt.exits(3).named("exits"), pt.square(4).named("square")],
                        continue_on_error=True, history=False)
        rec = r.tasks["exits"]
        assert rec.status is S.FAILED
        assert rec.error is not None and rec.error.type == "WorkerLost"
        assert "worker process died (exit code 3)" in rec.error.message
        assert isinstance(r.error.__cause__, WorkerLost)
        assert r.error.__cause__.exitcode == 3
        assert r.outputs["square"] == 16

    def test_segfault(self) -> None:
        """A worker killed by SIGSEGV: the message names the signal; a retry gets a new worker."""
        task = pt.kills_itself(int(signal.SIGSEGV)).named("kills_itself")
        r = flowdsl.run(task.with_options(retries=1), history=False)
        rec = r.tasks["kills_itself"]
        assert rec.status is S.FAILED and len(rec.attempts) == 2
        assert rec.error is not None
        assert "worker process died (signal SIGSEGV)" in rec.error.message


class TestUnencodableIds:
    """Issue 16 item 1 (ids): a lone surrogate in an id is refused where the flow is built."""

    def test_task_id(self) -> None:
        """.named() refuses an id UTF-8 cannot encode, and names it."""
        @tool(registry=False)
        def f() -> None: ...

        with pytest.raises(flowdsl.CompositionError, match=r"report-\\udcff"):
            f().named(os.fsdecode(b"report-\xff"))

    def test_tool_and_flow_names(self) -> None:
        """A tool name or flow name with a lone surrogate is refused too."""
        with pytest.raises(flowdsl.ToolDefinitionError, match="surrogate"):
            tool(name="a\ud800", registry=False)(lambda: None)

        @tool(registry=False)
        def f() -> None: ...

        with pytest.raises(flowdsl.CompositionError, match="surrogate"):
            flowdsl.Flow("flow\ud800", f())

    def test_document_id_and_name(self) -> None:
        """A document's task id or name with "\\ud800" is a validation problem at its path."""
        @tool(registry=False)
        def f() -> None: ...

        reg = flowdsl.ToolRegistry()
        reg.register(f)
        doc = '{"name": "n\\ud800", "tasks": [{"id": "a\\ud800", "tool": "f"}]}'
        with pytest.raises(flowdsl.PlanValidationError) as info:
            flowdsl.load_flow(doc, reg)
        paths = {p["path"]: p["message"] for p in info.value.problems}
        assert "surrogate" in paths["name"]
        assert "surrogate" in paths["tasks[0].id"]


class TestLimits:
    """Issue 16 item 9: ceilings for retries, timeouts, document size and stored outputs."""

    def test_retries_and_timeouts_have_ceilings(self) -> None:
        """retries over 100 and timeouts over a week are refused, naming the option."""
        def f() -> None: ...

        with pytest.raises(flowdsl.ToolDefinitionError, match=r"retries=10000000000.*at most 100"):
            tool(retries=10_000_000_000, registry=False)(f)
        for option in ("timeout", "deadline"):
            with pytest.raises(flowdsl.ToolDefinitionError, match=f"{option}=1e\\+300"):
                tool(registry=False, **{option: 1e300})(f)
        tool(retries=100, timeout=7 * 24 * 3600, registry=False)(f)  # the limits themselves
        with pytest.raises(ValueError, match="timeout=1e\\+300"):
            flowdsl.run(tool(registry=False)(f)(), timeout=1e300, history=False)

    def test_limits_are_settable(self) -> None:
        """set_limits raises the ceilings and returns the previous ones to restore."""
        def f() -> None: ...

        before = flowdsl.set_limits(max_retries=1000, max_timeout=1e7)
        try:
            assert flowdsl.limits().max_retries == 1000
            assert tool(retries=500, timeout=9e6, registry=False)(f).spec.retries == 500
        finally:
            flowdsl.set_limits(max_retries=before.max_retries, max_timeout=before.max_timeout)
        assert flowdsl.limits() == before
        with pytest.raises(ValueError, match="max_retries=0"):
            flowdsl.set_limits(max_retries=0)

    def test_document_limits(self) -> None:
        """A document's retries and timeout go through the same ceilings."""
        @tool(registry=False)
        def f() -> None: ...

        reg = flowdsl.ToolRegistry()
        reg.register(f)
        doc = {"name": "n", "tasks": [{"id": "a", "tool": "f", "retries": 10_000_000_000,
                                       "timeout": 1e300}]}
        with pytest.raises(flowdsl.PlanValidationError) as info:
            flowdsl.load_flow(doc, reg)
        assert {p["path"] for p in info.value.problems} == {"tasks[0].retries",
                                                            "tasks[0].timeout"}

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
    def test_load_flow_refuses_fifos_and_devices(self, tmp_path: Path) -> None:
        """A FIFO or a symlink to /dev/zero is refused at once, never read without end."""
        fifo = tmp_path / "flow.json"
        os.mkfifo(fifo)
        with pytest.raises(flowdsl.PlanValidationError, match="not a regular file"):
            flowdsl.load_flow(fifo)
        if os.path.exists("/dev/zero"):
            link = tmp_path / "zero.json"
            link.symlink_to("/dev/zero")
            with pytest.raises(flowdsl.PlanValidationError, match="not a regular file"):
                flowdsl.load_flow(link)

    def test_load_flow_limit_is_enforced_by_reading(self, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """The size limit holds even when stat lies (reads stop at max_bytes + 1)."""
        path = tmp_path / "flow.json"
        path.write_text('{"name": "n", "tasks": []}' + " " * 5000)
        real_stat = os.stat

        class _Small:
            def __init__(self, st: os.stat_result) -> None:
                self._st = st

            def __getattr__(self, name: str) -> object:
                return 10 if name == "st_size" else getattr(self._st, name)

        monkeypatch.setattr(os, "stat", lambda *a, **k: _Small(real_stat(*a, **k)))
        monkeypatch.setattr(os, "fstat", lambda fd: _Small(real_stat(fd)))
        with pytest.raises(flowdsl.PlanValidationError, match="larger than max_bytes=1000"):
            flowdsl.load_flow(path, max_bytes=1000)

    def test_stored_output_cap(self, tmp_path: Path) -> None:
        """An output over max_stored_output stays in the result, history stores a marker."""
        @tool(registry=False)
        def big() -> str:
            return "x" * 5000

        before = flowdsl.set_limits(max_stored_output=1000)
        try:
            with flowdsl.open_history(tmp_path / "h.db") as store:
                with pytest.warns(RuntimeWarning, match="over the 1000-byte cap"):
                    r = flowdsl.run(big(), history=store, store_outputs=True)
                store.flush()
                stored = store.load_outputs(r.run_id)
        finally:
            flowdsl.set_limits(max_stored_output=before.max_stored_output)
        assert r.output == "x" * 5000
        assert "__flowdsl_omitted__" in stored["big"]


CANARY = "canary-7f3a"
CANARY_CTX = "canary-ctx-91b2"

FLOW_FILE = '''
import flowdsl
from flowdsl import Secret, ctx, tool


@tool(registry=False)
def login(token: Secret, user: str) -> dict:
    """Use the secret; the output holds the value as a plain string, and so does a log line."""
    flowdsl.get_logger().info("logged in", token=token.get())
    return {{"session": "for " + token.get(), "user": user}}


@tool(registry=False)
def call_api(key: Secret, after: object = None) -> None:
    """Fail with the value in the message."""
    raise PermissionError("key " + key.get() + " was refused")


def make():
    a = login(Secret({canary!r}), "bob").named("login")
    b = call_api(ctx("api_key"), after=a).named("call_api")
    return flowdsl.Flow("secrets", a >> b, context={{"api_key": Secret({ctx!r})}})


flow = make()
'''


class TestSecrets:
    """Issue 16 item 6 (catalogue SE1): a Secret's value never leaves the run in clear."""

    def _flow(self, tmp_path: Path) -> flowdsl.Flow:
        (tmp_path / "secret_flow.py").write_text(FLOW_FILE.format(canary=CANARY, ctx=CANARY_CTX))
        import importlib.util

        spec = importlib.util.spec_from_file_location("secret_flow", tmp_path / "secret_flow.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.flow  # type: ignore[no-any-return]

    def test_secret_type(self) -> None:
        """repr/str hide the value, .get() reads it, JSON refuses it."""
        s = flowdsl.Secret(CANARY)
        assert repr(s) == str(s) == "Secret('***')"
        assert s.get() == CANARY
        with pytest.raises(TypeError):
            json.dumps(s)
        import pickle

        assert pickle.loads(pickle.dumps(s)).get() == CANARY  # to worker processes

    def test_canary_absent_from_every_channel(self, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
        """SE1: the values (an argument, a context entry) reappear as plain strings in an output
        and in an exception, and still show up nowhere flowdsl writes."""
        import logging

        flow = self._flow(tmp_path)
        db = tmp_path / "h.db"
        with flowdsl.open_history(db) as store, caplog.at_level(logging.DEBUG, "flowdsl"):
            r = flowdsl.run(flow, history=store, store_outputs=True, log=True)
            store.flush()
            shown = store.get_run(r.run_id)
        assert r.status == "failed"
        assert CANARY in r.outputs["login"]["session"]  # the tool's own value is untouched
        channels = {
            "logs": "\n".join(f"{rec.getMessage()} {getattr(rec, 'flowdsl', '')}"
                               for rec in caplog.records),
            "task log lines": repr([rec.logs for rec in r.tasks.values()]),
            "to_dict": json.dumps(r.to_dict()),
            "repr": repr(r) + repr(r.tasks) + repr(r.context),
            "errors": "".join(f"{rec.error.message}{rec.error.traceback}"
                              for rec in r.tasks.values() if rec.error),
            "run error": str(r.error),
            "history": json.dumps(shown, default=str),
        }
        with pytest.raises(flowdsl.RunFailed) as info:
            r.raise_for_error()
        channels["raise_for_error"] = str(info.value)
        timeline = tmp_path / "t.html"
        flowdsl.save_timeline(r, str(timeline))
        channels["timeline"] = timeline.read_text()
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("h.db*"))
        channels["database file"] = raw.decode("latin-1")
        for name, text in channels.items():
            assert CANARY not in text, f"the argument's secret leaked into {name}"
            assert CANARY_CTX not in text, f"the context's secret leaked into {name}"
        assert "***" in channels["errors"] and "***" in channels["history"]
        assert "key *** was refused" in r.tasks["call_api"].error.message
        assert "logged in" in channels["logs"] and "token=***" in channels["logs"]
        assert "***" in channels["task log lines"]
        (login,) = [t for t in shown["tasks"] if t["task_id"] == "login"]
        assert login["logs"][0]["event"] == "logged in" and login["logs"][0]["token"] == "***"

    def test_cli_json_and_table(self, tmp_path: Path) -> None:
        """`flowdsl run file.py:flow` (--json and the summary table) masks them too."""
        import subprocess
        import sys

        self._flow(tmp_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for extra in (["--json"], []):
            done = subprocess.run(
                [sys.executable, "-m", "flowdsl", "run", str(tmp_path / "secret_flow.py:flow"),
                 *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
            assert done.returncode == 1, done.stderr
            out = done.stdout + done.stderr
            assert "was refused" in out
            assert CANARY not in out and CANARY_CTX not in out
        raw = b"".join(p.read_bytes() for p in Path(os.environ["FLOWDSL_HISTORY"]).parent.glob(
            "*.db*"))
        assert CANARY.encode() not in raw and CANARY_CTX.encode() not in raw

    def test_secrets_arriving_as_pipeline_items(self) -> None:
        """A Secret that first arrives as a pipeline item is registered when the item is
        pulled: its value is masked in that item's error and everything after."""
        @tool(registry=False, executor="inline")
        def use(key: flowdsl.Secret) -> str:
            if key.get().endswith("2"):
                raise PermissionError("key " + key.get() + " was refused")
            return "used " + key.get()

        items = [flowdsl.Secret(f"item-canary-{i}") for i in range(3)]
        r = flowdsl.run(use.stage().named("use"), mode="pipeline", items=items,
                        continue_on_error=True, history=False)
        assert r.output[:2] == ["used item-canary-0", "used item-canary-1"]
        assert r.item_errors[2].message == "key *** was refused"
        text = json.dumps(r.to_dict()) + repr(r.tasks) + str(r.error)
        assert "item-canary" not in text
        assert r.masker is not None and len(r.masker.sources) == 3

    def test_no_secret_no_masker(self) -> None:
        """A run without Secrets has no masker (nothing is scanned or rewritten)."""
        @tool(registry=False)
        def echo(x: str) -> str:
            return x

        r = flowdsl.run(echo(CANARY), history=False)
        assert r.masker is None
        assert CANARY in json.dumps(r.to_dict())


class TestJoinsAndRollback:
    """Issue 16 item 8: joins read upstream states; rollback statuses, grouping and bound;
    graph size limits."""

    def test_all_done_join_receives_upstream_states(self, mode: str) -> None:
        """EP3: an all_done join gets {task id: final status} of its upstream tasks."""
        @tool(registry=False)
        def ok() -> int:
            return 1

        @tool(registry=False)
        def bad() -> None:
            raise ValueError("boom")

        @tool(registry=False)
        def report(states: dict[str, TaskStatus]) -> dict[str, str]:
            return {k: str(v) for k, v in states.items()}

        join = report(flowdsl.upstream()).named("report").with_options(trigger="all_done")
        flow = [ok().named("ok"), bad().named("bad")] >> join
        r = flowdsl.run(flow, mode=mode, history=False)
        assert r.status == "failed"
        assert r.outputs["report"] == {"ok": "completed", "bad": "failed"}

    def test_one_failed_join_sees_which_failed(self) -> None:
        """A one_failed cleanup task learns which upstream task failed, also after a stop."""
        @tool(registry=False)
        def bad() -> None:
            raise ValueError("boom")

        @tool(registry=False)
        def cleanup(states: dict[str, TaskStatus]) -> list[str]:
            return sorted(k for k, v in states.items() if v.failed)

        join = cleanup(states=flowdsl.upstream()).named("cleanup").with_options(
            trigger="one_failed")
        r = flowdsl.run(bad().named("bad") >> join, history=False)
        assert r.outputs["cleanup"] == ["bad"]

    @staticmethod
    def _undoable(name: str, undone: list[str], *, undo_fails: bool = False,
                  fail: bool = False, undo_sleeps: float = 0.0) -> flowdsl.Task:
        import time

        def undo(out: object) -> None:
            if undo_sleeps:
                time.sleep(undo_sleeps)
            undone.append(name)
            if undo_fails:
                raise OSError(f"cannot undo {name}")

        def fn() -> str:
            if fail:
                raise RuntimeError(f"{name} failed")
            return name

        fn.__name__ = name
        return tool(fn, registry=False, rollback=undo, executor="inline")().named(name)

    def test_rolled_back_status(self) -> None:
        """A failed run whose rollbacks all succeed ends rolled_back."""
        undone: list[str] = []
        r = flowdsl.run(self._undoable("a", undone) >> self._undoable("b", undone, fail=True),
                        rollback_on_failure=True, history=False)
        assert r.status == "rolled_back" and not r.ok
        assert r.compensation_error is None
        assert undone == ["a"]

    def test_rollback_failed_groups_errors(self) -> None:
        """CP3: failing rollbacks give rollback_failed and a CompensationError group that
        keeps the original failure; the other rollbacks still ran."""
        undone: list[str] = []
        u = self._undoable
        flow = (u("a", undone, undo_fails=True) >> u("b", undone)
                >> u("c", undone, undo_fails=True) >> u("d", undone, fail=True))
        r = flowdsl.run(flow, rollback_on_failure=True, history=False)
        assert undone == ["c", "b", "a"]
        assert r.status == "rollback_failed"
        group = r.compensation_error
        assert isinstance(group, flowdsl.CompensationError)
        assert isinstance(group, ExceptionGroup)
        assert [str(e) for e in group.exceptions] == ["cannot undo c", "cannot undo a"]
        assert group.original is r.error and "d failed" in str(group.original)
        with pytest.raises(flowdsl.RunFailed) as info:
            r.raise_for_error()
        assert info.value.__cause__ is group

    def test_compensation_timeout_bounds_each_rollback(self) -> None:
        """CP4: a rollback past compensation_timeout is abandoned and recorded; the next one
        still runs, and the run does not wait for the slow one."""
        import time

        undone: list[str] = []
        u = self._undoable
        flow = u("a", undone) >> u("slow", undone, undo_sleeps=2.0) >> u("c", undone, fail=True)
        start = time.perf_counter()
        r = flowdsl.run(flow, rollback_on_failure=True, compensation_timeout=0.2,
                        history=False)
        assert time.perf_counter() - start < 1.5
        assert r.status == "rollback_failed"
        assert "a" in undone
        err = r.tasks["slow"].rollback_error
        assert err is not None and err.type == "TimeoutError"
        assert "compensation_timeout=0.2s" in err.message
        with pytest.raises(ValueError, match="compensation_timeout=-1"):
            flowdsl.run(flow, compensation_timeout=-1)

    def test_max_nodes_and_edges(self) -> None:
        """GR7: plan() and run() refuse a flow over max_nodes/max_edges, before running it."""
        calls: list[int] = []

        @tool(registry=False, executor="inline")
        def step(x: int = 0) -> int:
            calls.append(x)
            return x

        flow = flowdsl.chain(*[step(i).named(f"s{i}") for i in range(10)])
        with pytest.raises(flowdsl.GraphTooLargeError, match="10 tasks, over max_nodes=5") as e:
            flowdsl.plan(flow, max_nodes=5)
        assert (e.value.limit, e.value.size, e.value.what) == (5, 10, "tasks")
        with pytest.raises(flowdsl.GraphTooLargeError, match="9 edges, over max_edges=8"):
            flowdsl.run(flow, max_edges=8, history=False)
        with pytest.raises(flowdsl.GraphTooLargeError, match="max_nodes=9"):
            flowdsl.run(flowdsl.plan(flow), max_nodes=9, history=False)
        assert calls == []
        assert flowdsl.run(flow, max_nodes=10, max_edges=9, history=False).ok


class TestPipelineMemory:
    """Issue 16 item 7 (catalogue PL1): a pipeline releases each item once it is done."""

    @staticmethod
    def _measure(n: int, **options: object) -> tuple[flowdsl.RunResult, int, int]:
        import gc
        import tracemalloc

        @tool(registry=False, executor="inline")
        def inc(x: int) -> int:
            return x + 1

        @tool(registry=False, executor="inline")
        def double(x: int) -> int:
            return x * 2

        flow = inc.stage().named("inc") >> double.stage().named("double")
        flowdsl.run(flow, mode="pipeline", items=range(10), history=False)  # warm caches
        gc.collect()
        tracemalloc.start()
        try:
            r = flowdsl.run(flow, mode="pipeline", items=range(n), history=False, **options)
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return r, current, peak

    @pytest.mark.slow
    def test_100k_items_without_outputs_stay_flat(self) -> None:
        """PL1: 100,000 items with keep_outputs=False: memory does not grow with the item count
        (before the fix: +34 MB kept, +166 MB at the peak)."""
        r, current, peak = self._measure(100_000, keep_outputs=False)
        assert r.ok and r.output == []
        assert r.tasks["double"].status is S.COMPLETED
        assert len(r.tasks["double"].attempts) <= 1000  # the summary keeps a bounded sample
        assert current < 2_000_000, f"{current / 1e6:.1f} MB kept after the run"
        assert peak < 5_000_000, f"{peak / 1e6:.1f} MB at the peak"

    def test_sink_outputs_are_kept_by_default(self) -> None:
        """By default only the sinks' outputs are kept, in item order."""
        r, current, _ = self._measure(5000)
        assert r.output == [(i + 1) * 2 for i in range(5000)]
        assert set(r.outputs) == {"double"}
        assert current < 120 * 5000, f"{current / 5000:.0f} bytes per item"


def test_readme_section_example_prints_what_it_says(tmp_path: Path) -> None:
    """The example of docs/howto/faults.md ("Faults, limits and secrets") runs in a fresh
    process and prints exactly the output the page shows (the canary never shows)."""
    import subprocess

    from doc_pages import examples  # tests/ is on sys.path

    ((code, expected),) = examples("howto/faults.md")
    assert expected == ["failed {'call_api': 'failed'}", "key *** was refused"]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected
