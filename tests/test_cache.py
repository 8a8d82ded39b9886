"""The result cache: hits end tasks ``cached`` without calling the tool, in every mode; keys
(arguments, version, key=), ttl, run(cache=...), serializers, mapped children, an edited tool
recomputing only itself and what depends on it, two processes on one key, the CLI."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support import MODES, tl

import flowdsl
from flowdsl import Cache, CacheKeyError, TaskStatus

S = TaskStatus


class Counter:
    """Tools that count their calls."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def tool(self, fn: Any = None, **options: Any) -> Any:
        def wrap(f: Any) -> Any:
            @functools.wraps(f)  # the signature, name and source stay f's
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((*args, *kwargs.values()))
                return f(*args, **kwargs)

            return tl(counted, **options)

        return wrap(fn) if fn is not None else wrap


def run(flow: Any, **options: Any) -> flowdsl.RunResult:
    """flowdsl.run on the test's own history file (conftest points FLOWDSL_HISTORY there)."""
    return flowdsl.run(flow, **options)


@pytest.fixture
def c() -> Counter:
    return Counter()


class TestHits:
    @pytest.mark.parametrize("mode", MODES)
    def test_second_run_restores_the_output(self, c: Counter, mode: str) -> None:
        """A hit ends the task 'cached' with its output, the tool not called; downstream
        runs on the restored value."""
        double = c.tool(lambda x: x * 2, cache=True)
        plus = tl(lambda a: a + 1)

        def flow() -> Any:
            d = double(21).named("d")
            return d >> plus(d).named("p")

        first = run(flow(), mode=mode)
        second = run(flow(), mode=mode)
        assert first.tasks["d"].status is S.COMPLETED
        assert second.tasks["d"].status is S.CACHED
        assert second.tasks["d"].reason == "output restored from the result cache"
        assert second.outputs == {"d": 42, "p": 43} and second.ok
        assert len(c.calls) == 1

    def test_other_arguments_miss(self, c: Counter) -> None:
        """A different argument value is a different key."""
        square = c.tool(lambda x: x * x, cache=True)
        assert run(square(3)).output == 9
        assert run(square(4)).output == 16
        assert run(square(3)).tasks  # the first entry is still there
        assert c.calls == [(3,), (4,)]

    def test_keyword_and_positional_calls_share_a_key(self, c: Counter) -> None:
        """Arguments are hashed by parameter name, however they were passed."""
        def add(a: int, b: int = 0) -> int:
            return a + b

        t = c.tool(add, cache=True)
        run(t(1, 2).named("add"))
        r = run(t(b=2, a=1).named("add"))
        assert r.tasks["add"].status is S.CACHED and len(c.calls) == 1

    def test_to_context_on_a_hit(self, c: Counter) -> None:
        """A hit maps its output into the context like a call would."""
        t = c.tool(lambda: {"k": 1}, cache=True)
        run(t().to_context({"k": "k"}))
        r = run(t().to_context({"k": "k"}))
        assert r.context["k"] == 1 and len(c.calls) == 1

    def test_history_and_timeline_show_cached(self, c: Counter, tmp_path: Path) -> None:
        """History stores the 'cached' status; the timeline shows it as such."""
        from flowdsl._report.timeline import COLORS, from_result

        store = flowdsl.open_history(tmp_path / "h.db")
        t = c.tool(lambda: 1, cache=True)
        run(t().named("t"), history=store)
        r = run(t().named("t"), history=store)
        row = store.get_run(r.run_id)["tasks"][0]
        assert row["status"] == "cached"
        bar = from_result(r).bars[0]
        assert bar.status == "cached" and "cached" in COLORS
        store.close()


class TestKeys:
    def test_unhashable_static_argument_fails_at_run_start(self, c: Counter) -> None:
        """Nothing runs; the message names the task, the argument and key=."""
        t = c.tool(lambda conn: 1, cache=True)
        first = tl(lambda: 0)().named("first")
        with pytest.raises(CacheKeyError, match=r"argument 'conn' of cached tool .*key="):
            run(first >> t(object()).named("t"))
        assert c.calls == []

    def test_unhashable_runtime_argument_fails_the_task(self, c: Counter) -> None:
        """An argument known only at run time fails its task with the same message."""
        src = tl(lambda: object())().named("src")
        t = c.tool(lambda conn: 1, cache=True)
        r = run(src >> t(src).named("t"))
        assert r.tasks["t"].status is S.FAILED
        assert "argument 'conn' of cached tool" in r.tasks["t"].error.message
        assert c.calls == []

    def test_key_function_makes_it_cacheable(self, c: Counter) -> None:
        """Cache(key=...) identifies the call by what it returns."""
        class Conn:
            def __init__(self, db: str) -> None:
                self.db = db

        t = c.tool(lambda conn, q: f"{conn.db}:{q}",
                   cache=Cache(key=lambda conn, q: [conn.db, q]))
        assert run(t(Conn("a"), "x")).output == "a:x"
        assert run(t(Conn("a"), "x")).tasks
        assert run(t(Conn("b"), "x")).output == "b:x"
        assert len(c.calls) == 2

    def test_version_is_part_of_the_key(self, c: Counter) -> None:
        """A new version= recomputes; the same one hits."""
        f1 = c.tool(lambda: 1, cache=Cache(version="1"))
        f2 = c.tool(lambda: 1, cache=Cache(version="2"))
        for f in (f1, f1, f2):
            run(f().named("f"))
        assert len(c.calls) == 2

    def test_bad_cache_option(self) -> None:
        """A bad cache= value names the tool and the option."""
        with pytest.raises(flowdsl.ToolDefinitionError, match=r"'f': option cache\.ttl=-1"):
            tl(lambda: 1, name="f", cache=Cache(ttl=-1))
        with pytest.raises(flowdsl.ToolDefinitionError, match="option cache='yes'"):
            tl(lambda: 1, cache="yes")


class TestPolicy:
    def test_ttl_expires_entries(self, c: Counter) -> None:
        """After ttl seconds the entry is stale and the tool is called again."""
        t = c.tool(lambda: 1, cache=Cache(ttl=0.2))
        run(t().named("t"))
        assert run(t().named("t")).tasks["t"].status is S.CACHED
        time.sleep(0.3)
        assert run(t().named("t")).tasks["t"].status is S.COMPLETED
        assert len(c.calls) == 2

    def test_cache_false_bypasses_reads_but_writes(self, c: Counter) -> None:
        """run(cache=False) calls the tool and refreshes the entry."""
        t = c.tool(lambda: len(c.calls), cache=True)
        run(t().named("t"))
        r = run(t().named("t"), cache=False)
        assert r.tasks["t"].status is S.COMPLETED and r.output == 2
        assert run(t().named("t")).output == 2  # the refreshed entry
        assert len(c.calls) == 2

    def test_cache_true_caches_every_task_that_can_be(self, c: Counter) -> None:
        """run(cache=True) caches plain tools; a task with unhashable arguments just runs."""
        plain = c.tool(lambda x: x + 1)
        odd = c.tool(lambda o: 1)

        def flow() -> Any:
            return plain(1).named("p") | odd(object()).named("o")

        run(flow(), cache=True)
        r = run(flow(), cache=True)
        assert r.tasks["p"].status is S.CACHED and r.tasks["o"].status is S.COMPLETED
        assert run(flow()).tasks["p"].status is S.COMPLETED  # not declared: no cache

    def test_cache_is_independent_of_history(self, c: Counter, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """Issue 24 item 1: history off (FLOWDSL_HISTORY=off or history=False) still caches,
        in the cache's own file; no history file is written."""
        monkeypatch.setenv("FLOWDSL_HISTORY", "off")
        t = c.tool(lambda: 1, cache=True)
        run(t().named("t"))
        assert run(t().named("t"), history=False).tasks["t"].status is S.CACHED
        assert len(c.calls) == 1
        assert Path(os.environ["FLOWDSL_CACHE"]).exists()
        assert not list(Path(os.environ["FLOWDSL_CACHE"]).parent.glob("history.db*"))

    def test_flowdsl_cache_off_turns_it_off(self, c: Counter,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """FLOWDSL_CACHE=off: cached tools simply run."""
        monkeypatch.setenv("FLOWDSL_CACHE", "off")
        t = c.tool(lambda: 1, cache=True)
        run(t().named("t"))
        assert run(t().named("t")).tasks["t"].status is S.COMPLETED
        assert len(c.calls) == 2

    def test_cache_path_and_store(self, c: Counter, tmp_path: Path) -> None:
        """run(cache=path) and run(cache=CacheStore(...)) keep entries in that file."""
        t = c.tool(lambda: 1, cache=True)
        run(t().named("t"), cache=str(tmp_path / "mine.db"))
        store = flowdsl.CacheStore(tmp_path / "mine.db")
        assert run(t().named("t"), cache=store).tasks["t"].status is S.CACHED
        assert [e["tool"] for e in store.entries()] == [t.name]
        store.close()
        with pytest.raises(ValueError, match="cache=3 is invalid"):
            run(t().named("t"), cache=3)

    def test_unstorable_output_is_not_cached(self, c: Counter) -> None:
        """An output the exact encoding cannot give back completes but is not cached, and
        the record says why."""
        t = c.tool(lambda: {"conn": object()}, cache=True)
        r = run(t().named("t"))
        assert r.ok and "not cached: its output cannot be stored exactly" in r.tasks["t"].reason
        assert "builtins.object" in r.tasks["t"].reason
        assert run(t().named("t")).tasks["t"].status is S.COMPLETED

    def test_pickle_serializer_restores_any_value(self, c: Counter) -> None:
        """Cache(serializer='pickle') keeps sets, tuples and other picklable values."""
        t = c.tool(lambda: ({1, 2}, (3,)), cache=Cache(serializer="pickle"))
        run(t().named("t"))
        r = run(t().named("t"))
        assert r.tasks["t"].status is S.CACHED and r.output == ({1, 2}, (3,))

    def test_mapped_children_are_cached_one_by_one(self, c: Counter) -> None:
        """Each child of a cached mapped tool has its own entry: new elements run, known
        ones are restored."""
        t = c.tool(lambda x: x * 10, cache=True)
        run(t.map([1, 2]).named("m"))
        r = run(t.map([1, 2, 3]).named("m"))
        assert r.output == [10, 20, 30]
        assert [r.tasks[f"m[{i}]"].status for i in range(3)] == [S.CACHED, S.CACHED,
                                                                  S.COMPLETED]
        assert c.calls == [(1,), (2,), (3,)]


class TestEditedTool:
    def test_only_the_edited_tool_and_its_dependents_recompute(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """run(cache=True) after editing one tool's source (as in a notebook) recomputes
        that tool and what its new output feeds; the rest is restored."""
        src = tmp_path / "edited_tools.py"
        body = '''
            from flowdsl import tool
            CALLS = []

            @tool(registry=False)
            def load():
                CALLS.append("load")
                return 2

            @tool(registry=False)
            def scale(x):
                CALLS.append("scale")
                return x * {factor}

            @tool(registry=False)
            def report(y):
                CALLS.append("report")
                return f"y={{y}}"
        '''
        src.write_text(textwrap.dedent(body.format(factor=10)))
        monkeypatch.syspath_prepend(str(tmp_path))
        mod = importlib.import_module("edited_tools")

        def flow() -> Any:
            a = mod.load().named("load")
            b = mod.scale(a).named("scale")
            return a >> b >> mod.report(b).named("report")

        assert run(flow(), cache=True).output == "y=20"
        src.write_text(textwrap.dedent(body.format(factor=100)))
        mod = importlib.reload(mod)
        r = run(flow(), cache=True)
        assert r.output == "y=200"
        assert {t: r.tasks[t].status for t in ("load", "scale", "report")} == {
            "load": S.CACHED, "scale": S.COMPLETED, "report": S.COMPLETED}
        assert mod.CALLS == ["scale", "report"]
        sys.modules.pop("edited_tools", None)


SCRIPT = """
import os, sys, time, flowdsl

@flowdsl.tool(cache=True, registry=False)
def slow(x):
    # Both writers are inside the tool before either finishes (a slow start of one process
    # on a loaded machine must not turn it into a reader): each marks its arrival and waits
    # for the other's, up to 30 s.
    gate = sys.argv[2] if len(sys.argv) > 2 else None
    if gate:
        open(os.path.join(gate, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(gate)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(0.4)
    return {"x": x, "pid": os.getpid()}

r = flowdsl.run(slow(7).named("slow"), cache=sys.argv[1])
print(r.tasks["slow"].status.value, r.output["x"])
"""


class TestProcesses:
    def test_two_processes_fill_one_key_then_a_third_hits(self, tmp_path: Path) -> None:
        """Both writers finish, the file stays sound, and a later process reads the entry
        (so entries outlive the process that wrote them)."""
        script = tmp_path / "cached_script.py"
        script.write_text(SCRIPT)
        db = tmp_path / "shared.db"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        gate = tmp_path / "gate"
        gate.mkdir()
        procs = [subprocess.Popen([sys.executable, str(script), str(db), str(gate)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert all(o[0].split() == ["completed", "7"] for o in outs), outs
        third = subprocess.run([sys.executable, str(script), str(db)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert third.stdout.split() == ["cached", "7"], third.stderr
        store = flowdsl.CacheStore(db)
        assert len(store.entries("slow")) == 1
        assert store.integrity_check() == "ok"
        store.close()


class TestCli:
    def test_list_and_clear_by_tool(self, c: Counter, tmp_path: Path) -> None:
        """flowdsl cache list shows entries (as JSON too); clear --tool deletes one tool's."""
        pytest.importorskip("typer")
        from typer.testing import CliRunner

        from flowdsl._report import cli

        db = tmp_path / "h.db"
        a = c.tool(lambda: 1, name="alpha", cache=True)
        b = c.tool(lambda: 2, name="beta", cache=True)
        run(a() | b(), cache=str(db))

        def invoke(*args: str) -> Any:
            return CliRunner().invoke(cli.app, ["cache", "--cache", str(db), *args])

        res = invoke("list", "--json")
        assert res.exit_code == 0, res.output
        assert sorted(e["tool"] for e in json.loads(res.output)) == ["alpha", "beta"]
        assert "alpha" in invoke("list").output
        res = invoke("clear", "--tool", "alpha")
        assert "deleted 1 cache entry of tool 'alpha'" in res.output
        assert [e["tool"] for e in json.loads(invoke("list", "--json").output)] == ["beta"]
        assert "deleted 1 cache entry" in invoke("clear").output
