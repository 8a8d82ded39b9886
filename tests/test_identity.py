"""Stable identity and guard rails: ids from the flow's structure, resume across processes,
mistakes refused at composition time (or when the run starts) with what to write instead,
and only public error classes in what users see."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import run, tl

import flowdsl
from flowdsl import (
    CompositionError,
    DuplicateTaskError,
    Flow,
    MissingContextError,
    PlanError,
    TaskInputError,
    ctx,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _python(*args: str, env: dict[str, str] | None = None) -> str:
    """Run tests/identity_flows.py in a fresh interpreter; its stdout."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
            "PYTHONHASHSEED": "random", **(env or {})}
    proc = subprocess.run([sys.executable, str(TESTS / "identity_flows.py"), *args],
                          capture_output=True, text=True, timeout=120, env=full, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@tl
def fetch(url: str) -> str:
    return f"<{url}>"


@tl
def inc(x: int = 0) -> int:
    return x + 1


@tl
def add(a: int, b: int) -> int:
    return a + b


def _ids(flow: Any) -> list[str]:
    return list(flowdsl.plan(flow).order)


class TestDeterministicIds:
    def test_same_flow_same_plan_in_two_processes(self) -> None:
        """The same flow built in two processes (one of which built other flows first) gives
        the same plan: ids, order and edges."""
        import identity_flows

        here = identity_flows.describe(identity_flows.build())
        first = json.loads(_python("plan"))
        second = json.loads(_python("plan", "3"))
        assert first == second == here
        assert first["order"][:3] == ["fetch", "fetch_2", "fetch_3"]

    def test_rebuild_in_one_process_keeps_ids(self) -> None:
        """Building a flow twice in one process gives it the same ids both times."""
        def build() -> Any:
            return fetch("a") >> inc(inc(1))

        assert _ids(build()) == _ids(build()) == ["fetch", "inc", "inc_2"]

    def test_numbered_by_first_appearance_references_first(self) -> None:
        """Tasks of one tool are numbered in the order the walk meets them; the tasks an
        argument refers to come before the task itself."""
        inner = inc(1)
        outer = inc(inc(inner))
        p = flowdsl.plan(outer)
        assert p.order == ("inc", "inc_2", "inc_3")
        assert (p.id_of(inner), p.id_of(outer)) == ("inc", "inc_3")

    def test_task_holds_no_automatic_id(self) -> None:
        """A Task is shared between flows, so it holds only an explicit id; each flow gives
        its own automatic one."""
        t = fetch("x")
        assert t.id is None
        assert flowdsl.plan(fetch("y") | t).id_of(t) == "fetch_2"
        assert flowdsl.plan(t).id_of(t) == "fetch"

    def test_explicit_id_wins_over_automatic(self) -> None:
        """An explicit id that an automatic one would have taken stays explicit; the
        automatic id moves on, even when the explicit id comes later in the flow."""
        a, b = fetch("a"), fetch("b")
        named = fetch("c").named("fetch")
        p = flowdsl.plan(a | b | named | fetch("d").named("fetch_2"))
        assert p.id_of(named) == "fetch"
        assert (p.id_of(a), p.id_of(b)) == ("fetch_3", "fetch_4")
        assert len(p.tasks) == 4

    def test_explicit_duplicates_still_refused(self) -> None:
        """Two different tasks given one explicit id raise DuplicateTaskError."""
        with pytest.raises(DuplicateTaskError, match=r"named 'x'"):
            flowdsl.plan(fetch("a").named("x") | inc().named("x"))

    def test_embedded_flows_namespace_their_tasks(self) -> None:
        """Automatic ids inside an embedded Flow get its name as a prefix, so two copies of
        one sub-flow never clash; the flow being planned adds no prefix of its own; an
        explicit id stays as given (two copies of it clash, saying so)."""
        def ingest() -> Flow:
            return Flow("ingest", fetch("u") >> inc())

        outer = Flow("site", [ingest(), ingest()] >> add(1, 2))
        assert _ids(outer) == ["ingest.fetch", "ingest_2.fetch", "ingest.inc",
                               "ingest_2.inc", "add"]
        nested = Flow("top", Flow("outer", Flow("inner", fetch("v"))) >> inc())
        assert _ids(nested) == ["outer.inner.fetch", "inc"]
        assert _ids(ingest()) == ["fetch", "inc"]
        named = Flow("n", fetch("u") >> inc().named("count"))
        assert _ids(Flow("site", named >> add(1, 2))) == ["n.fetch", "count", "add"]

        def named_copy() -> Flow:
            return Flow("n", fetch("u") >> inc().named("count"))

        with pytest.raises(DuplicateTaskError, match=r"named 'count'.*sub-flow used twice"):
            flowdsl.plan([named_copy(), named_copy()])

    def test_same_flow_object_twice_is_one_copy(self) -> None:
        """The same Flow (like the same Task) used twice is one set of nodes."""
        sub = Flow("sub", fetch("u"))
        assert _ids([sub, sub] >> inc()) == ["sub.fetch", "inc"]

    def test_references_resolve_by_plan_id(self) -> None:
        """At run time an argument that refers to a task gets that task's output, found by
        the id the flow gave it."""
        x, y = inc(1), inc(10)
        r = run(add(x, y))
        assert r.output == 13
        assert r.outputs == {"inc": 2, "inc_2": 11, "add": 13}

    def test_branch_gates_numbered(self) -> None:
        """branch() gates are named from the branch and numbered like any id."""
        b1 = flowdsl.branch(lambda c: True, inc())
        b2 = flowdsl.branch(lambda c: False, fetch("x"), inc())
        assert list(flowdsl.plan(b1 | b2).tasks) == [
            "branch_if", "inc", "branch_if_2", "fetch", "branch_else", "inc_2"]

    def test_switch_gates_numbered(self) -> None:
        """A switch's gates get automatic ids; a second switch's are numbered before the
        case (switch_2['a']); a named switch's are used as given."""
        route = fetch("r")
        first = flowdsl.switch(route, {"a": inc(), "b": inc()})
        second = flowdsl.switch(route, {"a": add(1, 2)})
        named = flowdsl.switch(route, {"a": add(3, 4)}, name="kind")
        gates = [i for i in flowdsl.plan(first | second | named).tasks if "[" in i]
        assert gates == ["switch['a']", "switch['b']", "switch_2['a']", "kind['a']"]

    def test_id_of_unknown_task(self) -> None:
        """plan.id_of() of a task not in the flow raises KeyError saying so."""
        p = flowdsl.plan(inc())
        with pytest.raises(KeyError, match=r"not a task of"):
            p.id_of(inc())


class TestResume:
    def test_resume_after_rebuild_in_a_new_process(self, tmp_path: Path) -> None:
        """A run fails half-way in one process; another process rebuilds the flow and
        resumes it: only the unfinished tasks run again."""
        db = str(tmp_path / "runs.db")
        calls = tmp_path / "calls.txt"
        first = json.loads(_python("run", db, env={"FLOWDSL_TEST_CALLS": str(calls),
                                                    "FLOWDSL_TEST_FAIL": "total"}))
        assert first["status"] == "failed"
        assert calls.read_text().split().count("fetch") == 5
        calls.write_text("")
        second = json.loads(_python("run", db, first["run_id"],
                                    env={"FLOWDSL_TEST_CALLS": str(calls)}))
        assert second["status"] == "completed"
        assert calls.read_text().split() == ["total"]
        reused = {k for k, why in second["reasons"].items()
                  if why == f"reused from run {first['run_id']}"}
        assert reused == set(second["statuses"]) - {"sum"}
        assert second["output"] == len("<a>") + len("<bb>") + len("<ccc>")

    def test_resume_matching_nothing_names_run_and_ids(self, tmp_path: Path) -> None:
        """resume= of a run whose stored tasks are none of this flow's raises, naming the
        run, its ids and the flow's."""
        store = flowdsl.HistoryStore(tmp_path / "h.db", store_outputs=True)
        try:
            first = flowdsl.run(Flow("a", fetch("x").named("download")), history=store)
            with pytest.raises(PlanError, match=rf"resume='{first.run_id}'.*download.*"
                                                r"its tasks: inc"):
                flowdsl.run(Flow("b", inc()), history=store, resume=first.run_id)
        finally:
            store.close()


class TestGuardRails:
    @pytest.mark.parametrize(("make", "pattern"), [
        (lambda t: iter(t), r"cannot iterate: task 'inc' .*the_tool\.map\(inc\)"),
        (lambda t: [x for x in t], r"cannot iterate"),  # noqa: C416 (the issue's own example)
        (lambda t: 3 in t, r"cannot iterate"),
        (lambda t: len(t), r"len\(\) is not known yet: task 'inc'.*count\(inc\)"),
        (lambda t: t + 1, r"cannot use \+ on a flowdsl placeholder: task 'inc'.*compute\(inc\)"),
        (lambda t: 1 + t, r"cannot use \+"),
        (lambda t: t * 2, r"cannot use \*"),
        (lambda t: -t, r"cannot use unary -"),
        (lambda t: int(t), r"cannot use int\(\)"),
        (lambda t: t < 3, r"cannot compare with <: .*\.when\("),
        (lambda t: t >= 3, r"cannot compare with >="),
        (lambda t: f"{t}", r"cannot format into a string.*greet\(inc\)"),
        (lambda t: format(t, ">10"), r"cannot format"),
        (lambda t: "{}".format(t), r"cannot format"),  # noqa: UP032
        (lambda t: t["rows"] + 1, r"the projection inc\['rows'\] stands for"),
        (lambda t: list(t["rows"]), r"cannot iterate: the projection inc\['rows'\]"),
        (lambda t: f"{t['rows'][0]}", r"cannot format"),
        (lambda t: t["rows"] >> inc(), r"cannot use >>"),
    ])
    def test_operators_on_placeholders(self, make: Callable[[Any], Any],
                                       pattern: str) -> None:
        """Using a task or a projection as if it were its value raises at once, a
        CompositionError (a TypeError) saying what to write instead."""
        with pytest.raises(CompositionError, match=pattern) as info:
            make(inc())
        assert isinstance(info.value, TypeError)

    def test_identity_comparisons_and_hashing_stay(self) -> None:
        """== and hashing keep their identity meaning: sets and dicts of tasks work."""
        a, b = inc(), inc()
        assert a == a and a != b and (a == 3) is False
        assert len({a, b, a}) == 2 and {a: 1}[a] == 1
        assert repr(a) == "<Task (automatic id) tool=inc>" and str(a.named("x")) == (
            "<Task 'x' tool=inc>")

    def test_uncalled_tool_without_input(self) -> None:
        """run(tool) with a required parameter and no input= is refused before any task
        runs, saying how to call it; with input= it runs as before."""
        seen: list[str] = []
        side = tl(lambda: seen.append("ran"))
        with pytest.raises(CompositionError,
                           match=r"^tool 'fetch' needs url; call it: fetch\(url=\.\.\.\)"):
            run(fetch | side())
        assert seen == []
        assert run(fetch, input="x").output == "<x>"
        assert run(inc).output == 1  # a parameter with a default needs nothing

    def test_stage_after_stage_still_fed(self) -> None:
        """The documented stage behaviour stays: load >> clean feeds load's output to clean."""
        assert run(inc(1) >> inc >> fetch).output == "<3>"

    def test_stage_needing_two_values(self) -> None:
        """A stage that needs two values after a stage that gives one is refused when
        composed, saying how to call it."""
        with pytest.raises(CompositionError,
                           match=r"tool 'add' used as a pipeline stage receives one value .*"
                                 r"also needs b; call it: add\(a=\.\.\., b=\.\.\.\), or bind "
                                 r"the rest and keep it a stage: add\.stage\(b=\.\.\.\)"):
            inc(1) >> add
        assert run(inc(1) >> add.stage(b=5)).output == 7

    def test_tool_passed_as_argument(self) -> None:
        """A Tool passed uncalled as an argument (also inside a list) is refused: did you
        mean extract()?"""
        with pytest.raises(CompositionError, match=r"argument 'url' is the tool 'inc' "
                                                   r"itself, not a task; did you mean inc\(\)\?"):
            fetch(inc)
        with pytest.raises(CompositionError, match=r"did you mean inc\(\)\?"):
            tl(lambda xs: xs)([1, inc])

    def test_tool_argument_allowed_for_callable_parameters(self) -> None:
        """A parameter annotated as a Callable takes a tool (the function is wanted)."""
        @tl
        def apply(fn: Callable[[int], int], x: int) -> int:
            return fn(x)

        @tl
        def apply_text(fn: "Callable[..., Any]", x: int) -> int:  # noqa: UP037
            return fn(x)

        assert run(apply(inc.fn, 1)).output == 2
        t = apply(inc, 2)
        assert t.kwargs["fn"] is inc
        apply_text(inc, 3)

    def test_missing_context_keys_listed_before_anything_runs(self) -> None:
        """ctx() keys with no default that nothing provides are all listed in one error
        before any task runs."""
        seen: list[str] = []
        side = tl(lambda: seen.append("ran"))
        uses = tl(lambda a, b=None: a)
        flow = side() >> [uses(ctx("token")).named("u1"),
                          uses(ctx("token"), ctx("region")).named("u2"),
                          uses(ctx("lang", default="en")).named("u3")]
        with pytest.raises(MissingContextError, match=r"lacks 2 key\(s\).*ctx\('token'\) read "
                           r"by 'u1', 'u2'; ctx\('region'\) read by 'u2' \(context keys: "
                           r"other\)") as info:
            run(flow, context={"other": 1})
        assert info.value.missing == {"token": ["u1", "u2"], "region": ["u2"]}
        assert seen == []
        assert run(flow, context={"token": "t", "region": "r"}).ok

    def test_context_written_by_a_task_counts(self) -> None:
        """A key that a task's to_context writes, or that the Flow's context holds, is not
        missing."""
        uses = tl(lambda a: a)
        put = tl(lambda: "v")
        assert run(put().to_context("k") >> uses(ctx("k"))).output == "v"
        assert run(Flow("f", uses(ctx("k")), context={"k": 1})).output == 1


def _modules() -> list[Any]:
    import flowdsl as pkg

    names = [m.name for m in pkgutil.walk_packages(pkg.__path__, "flowdsl.")]
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(name))
        except ImportError:  # an optional extra that is not installed
            continue
    return out


class TestPublicErrors:
    def test_error_classes_users_see_are_public(self) -> None:
        """Every exception class flowdsl defines without a leading underscore is exported
        from flowdsl (the command line's own TargetError and UiError, for a bad target and a
        run browser that cannot start, are printed by the command, never raised to
        callers)."""
        found = {obj.__name__ for mod in _modules() for _, obj in inspect.getmembers(mod)
                 if inspect.isclass(obj) and issubclass(obj, BaseException)
                 and obj.__module__.startswith("flowdsl")}
        public = {n for n in found if not n.startswith("_")} - {"TargetError", "UiError"}
        assert public <= set(flowdsl.__all__), public - set(flowdsl.__all__)
        assert "TaskInputError" in public and "MissingContextError" in public

    def test_no_private_class_name_in_messages(self) -> None:
        """Errors of a run's wiring (a projection, context, condition, output mapping) are
        TaskInputError, and no private class name appears in any message or record."""
        boom = tl(lambda c: 1 / 0)
        give = tl(lambda: {"a": 1})
        flows = [
            tl(lambda v: v)(give()["missing"]),
            give().when(boom),
            give().to_context({"nope": "k"}),
            boom(None),
        ]
        private = re.compile(r"\b_[A-Za-z]\w*(Error|Exception)\b|_TaskError")
        for flow in flows:
            r = run(flow)
            assert not r.ok
            texts = [str(e) for e in r.errors] + [
                f"{rec.error.type}: {rec.error.message}" for rec in r.tasks.values()
                if rec.error is not None]
            assert texts and not any(private.search(t) for t in texts), texts
            causes = [e.__cause__ for e in r.errors]
            assert all(not type(c).__name__.startswith("_") for c in causes)
        r = run(flows[0])
        assert isinstance(r.errors[0].__cause__, TaskInputError)
        assert r.errors[0].__cause__.__class__ is flowdsl.TaskInputError


TYPED = '''
from typing_extensions import assert_type

import flowdsl
from flowdsl import Flow, RunResult, Task, ctx, run, tool


@tool
def fetch(url: str) -> str:
    return url


@tool(retries=2)
async def size(page: str) -> int:
    return len(page)


page = fetch("https://example.org")
assert_type(page, Task[str])
assert_type(size(page), Task[int])        # a Task stands for its value as an argument
assert_type(size(page["body"]), Task[int])
assert_type(size(ctx("page")), Task[int])
assert_type(fetch.fn("x"), str)            # the raw function keeps its signature
assert_type(run(size(page)), RunResult[int])
assert_type(run(page >> size(page)).output, int | None)
assert_type(run(Flow("f", page >> size(page))).output, int | None)
assert_type(flowdsl.plan(page).id_of(page), str)
fetch(123)  # a str parameter given an int
'''


class TestTyping:
    def test_mypy_strict_on_a_typed_example(self, tmp_path: Path) -> None:
        """mypy --strict on a small typed example: the lazily loaded run is callable, a
        tool call is checked against the function's signature (fetch(123) is reported),
        calling a tool gives a Task of its return type (an async tool's awaited type), and
        result.output of a flow ending in one task is typed."""
        (tmp_path / "typed_example.py").write_text(TYPED)
        env = {**os.environ, "MYPYPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
             "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy_cache"),
             "typed_example.py"],
            capture_output=True, text=True, timeout=110, cwd=tmp_path, env=env, check=False)
        errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
        line = TYPED.splitlines().index("fetch(123)  # a str parameter given an int") + 1
        assert errors == [f'typed_example.py:{line}: error: Argument 1 to "__call__" of "Tool" '
                          'has incompatible type "int"; expected "str"  [arg-type]'], proc.stdout

    def test_lazy_names_declared_for_type_checkers(self) -> None:
        """Every public name, lazily loaded or not, is imported, from the same module, in the
        package's TYPE_CHECKING block (so type checkers see it), and importing flowdsl loads
        none of the lazy modules."""
        import ast

        tree = ast.parse((ROOT / "flowdsl" / "__init__.py").read_text())
        block = next(n for n in tree.body if isinstance(n, ast.If)
                     and getattr(n.test, "id", None) == "TYPE_CHECKING")
        declared = {a.asname or a.name: "." + (imp.module or "") for imp in block.body
                    if isinstance(imp, ast.ImportFrom) for a in imp.names}
        assert declared == flowdsl._HOME
        code = ("import sys, flowdsl; print(sorted(m for m in ('sqlite3', 'flowdsl._run.api', "
                "'flowdsl._record.history') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        assert out.stdout.strip() == "[]"


def test_readme_id_and_guard_rail_examples_run(tmp_path: Path) -> None:
    """The self-contained examples of the "Guard rails" and "Per-task settings and ids"
    sections of docs/concepts/composition.md run in a fresh process and print what the page
    says."""
    from doc_pages import examples  # tests/ is on sys.path

    blocks = [code for heading in ("## Guard rails", "## Per-task settings and ids")
              for code, _ in examples("concepts/composition.md", heading)
              if code.startswith("import flowdsl")]
    assert len(blocks) == 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = [subprocess.run([sys.executable, "-c", b], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60, check=True).stdout
            for b in blocks]
    assert outs[0].startswith("cannot iterate: task 'listing' stands for a value")
    assert "the_tool.map(listing)" in outs[0]
    assert outs[1].strip() == ("['fetch_2', 'count', 'ingest.fetch', 'ingest.count', "
                               "'ingest_2.fetch', 'ingest_2.count', 'fetch']")
