"""Shapes decided at run time: mapped tasks (``tool.map``) and switches (``flowdsl.switch``,
``.when(on=...)``, the ``none_failed_min_one_success`` join), in every mode."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import MODES, run, tl

import flowdsl
from flowdsl import CompositionError, TaskStatus, each, switch

S = TaskStatus


@tl
def search(q: str, n: int = 4) -> list[str]:
    return [f"{q}/{i}" for i in range(n)]


@tl
def fetch(url: str, suffix: str = "") -> str:
    return url.upper() + suffix


@tl
def join(pages: list[Any]) -> str:
    return ",".join(map(str, pages))


class Overlap:
    """Async tools that record how many calls are open at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def tool(self, **options: Any) -> Any:
        async def nap(x: Any) -> Any:
            self.now += 1
            self.most = max(self.most, self.now)
            await anyio.sleep(0.03)
            self.now -= 1
            return x

        return tl(nap, **options)


def search_then_fetch() -> Any:
    s = search("q").named("search")
    f = fetch.map(s, suffix="!").named("fetch")
    return s >> f >> join(f).named("join")


class TestMap:
    @pytest.mark.parametrize("mode", MODES)
    def test_search_then_fetch_each(self, mode: str) -> None:
        """Children run per element; downstream gets their outputs in input order; every
        child has a record (after its parent) in every mode."""
        r = run(search_then_fetch(), mode=mode)
        assert r.ok, r.error
        assert r.outputs["fetch"] == ["Q/0!", "Q/1!", "Q/2!", "Q/3!"]
        assert r.output == "Q/0!,Q/1!,Q/2!,Q/3!"
        assert list(r.tasks) == ["search", "fetch", "fetch[0]", "fetch[1]", "fetch[2]",
                                 "fetch[3]", "join"]
        kids = [r.tasks[f"fetch[{i}]"] for i in range(4)]
        assert all(k.status is S.COMPLETED and k.parent == "fetch" and k.tool == "fetch"
                   for k in kids)
        assert r.tasks["fetch"].parent is None

    def test_planner_keeps_one_node(self) -> None:
        """The plan has the mapped task once, whatever it expands into."""
        p = flowdsl.plan(search_then_fetch())
        assert list(p.order) == ["search", "fetch", "join"]

    def test_estimates_are_child_duration_times_expected_count(self, tmp_path: Any) -> None:
        """simulate (and a run's priorities) take a mapped task's duration as one child's
        times its last recorded count, else 1, and say how many children they assumed."""
        store = flowdsl.open_history(tmp_path / "h.db")

        def nap(x: int) -> int:
            time.sleep(0.03)
            return x

        src = tl(lambda: list(range(5)), name="src")().named("src")
        naps = tl(nap, name="nap", expected_duration=0.5).map(src).named("nap")
        flow = flowdsl.Flow("mapped", src >> naps.with_options(max_parallel=1))
        before = flowdsl.simulate(flow, history=store)
        assert before.children == {"nap": 1} and before.durations["nap"] == 0.5
        assert run(flow, history=store).ok
        declared = flowdsl.simulate(flow, history=store)
        assert declared.children == {"nap": 5} and declared.durations["nap"] == 2.5
        assert declared.to_dict()["tasks"]["nap"]["children"] == 5
        plain = flowdsl.Flow("mapped", src >> tl(nap, name="nap").map(src).named("nap"))
        recorded = flowdsl.simulate(plain, history=store)
        assert recorded.sources["nap"] == "history"
        assert 5 * 0.03 <= recorded.durations["nap"] < 5 * 0.03 + 0.1  # one child's x 5
        store.close()

    def test_plain_list_and_projection(self) -> None:
        """A plain list, and a projection of an output, can be mapped over."""
        lst = fetch.map(["a", "b"]).named("lst")
        src = tl(lambda: {"urls": ["x", "y", "z"]})().named("src")
        proj = fetch.map(src["urls"]).named("proj")
        r = run(lst | (src >> proj))
        assert r.outputs["lst"] == ["A", "B"] and r.outputs["proj"] == ["X", "Y", "Z"]

    def test_map_over_a_mapped_task(self) -> None:
        """The output of one map is the list another maps over, element by element."""
        s = search("a", n=3).named("search")
        up = fetch.map(s).named("up")
        twice = fetch.map(up, suffix="?").named("twice")
        r = run(s >> up >> twice)
        assert r.outputs["twice"] == ["A/0?", "A/1?", "A/2?"]
        assert "twice[2]" in r.tasks

    @pytest.mark.parametrize("mode", MODES)
    def test_empty_list_completes_with_empty_list(self, mode: str) -> None:
        """No element: the mapped task completes with [] and downstream runs."""
        s = search("q", n=0).named("search")
        f = fetch.map(s).named("fetch")
        r = run(s >> f >> join(f).named("join"), mode=mode)
        assert r.ok and r.outputs["fetch"] == [] and r.output == ""
        assert list(r.tasks) == ["search", "fetch", "join"]

    def test_each_zips_keyword_arguments(self) -> None:
        """each(...) keywords are zipped with the mapped values; others go to every child."""
        pair = tl(lambda a, b, c="": f"{a}{b}{c}")
        r = run(pair.map([1, 2, 3], b=each(["x", "y", "z"]), c="."))
        assert r.output == ["1x.", "2y.", "3z."]

    def test_each_lengths_must_match(self) -> None:
        """Unequal mapped lengths fail the mapped task with both lengths."""
        pair = tl(lambda a, b: a)
        r = run(pair.map([1, 2, 3], b=each(["x"])).named("pair"))
        rec = r.tasks["pair"]
        assert rec.status is S.FAILED
        assert "each(b) has 1 elements but 'a' has 3" in rec.error.message

    def test_each_outside_map_is_refused(self) -> None:
        """each() in a plain call is a composition error, not a silent value."""
        with pytest.raises(CompositionError, match=r"tool\.map"):
            fetch(each(["a"]))

    def test_map_over_a_string_is_refused(self) -> None:
        """A string given at composition time is not a list of elements."""
        with pytest.raises(CompositionError, match="cannot map tool 'fetch' over str"):
            fetch.map("abc")

    def test_runtime_value_that_is_not_a_list(self) -> None:
        """A non-list output fails the mapped task, naming it and the parameter."""
        src = tl(lambda: "text")().named("src")
        r = run(src >> fetch.map(src).named("f"))
        assert r.tasks["f"].status is S.FAILED
        assert "mapped task 'f' needs a list for its parameter 'url'" in r.tasks[
            "f"].error.message

    def test_fan_out_limit(self) -> None:
        """More children than max_children fails the task before any child runs."""
        f = fetch.map([str(i) for i in range(5)]).named("f").with_options(max_children=3)
        r = run(f)
        assert r.tasks["f"].status is S.FAILED
        assert "would fan out to 5 children, over its limit of 3" in r.tasks["f"].error.message
        assert "f[0]" not in r.tasks

    def test_default_fan_out_limit_is_10000(self) -> None:
        """The default limit stops a runaway fan-out."""
        r = run(fetch.map(["x"] * 10_001).named("f"))
        assert "over its limit of 10000" in r.tasks["f"].error.message

    def test_map_options_only_on_mapped_tasks(self) -> None:
        """max_parallel on a plain task is a composition error naming the task."""
        with pytest.raises(CompositionError, match=r"'fetch'.*mapped task"):
            fetch("a").named("fetch").with_options(max_parallel=2)
        with pytest.raises(CompositionError, match="max_parallel=0"):
            fetch.map(["a"]).with_options(max_parallel=0)

    def test_failed_child_fails_the_map_and_stops_siblings(self) -> None:
        """Fail-fast: a failing child cancels its siblings, then its parent fails."""
        started: list[int] = []

        async def maybe(x: int) -> int:
            started.append(x)
            if x == 1:
                raise ValueError("bad element")
            await anyio.sleep(0.5)
            return x

        f = tl(maybe).map([0, 1, 2, 3]).named("m").with_options(max_parallel=2)
        after = tl(lambda xs: xs)(f).named("after")
        r = run(f >> after)
        assert r.status == "failed"
        assert r.tasks["m"].status is S.FAILED
        assert "1 of 4 children failed (first: 'm[1]', ValueError: bad element)" in r.tasks[
            "m"].error.message
        assert r.tasks["m[1]"].status is S.FAILED
        assert r.tasks["m[0]"].status is S.CANCELLED
        assert r.tasks["m[0]"].reason == "a sibling, 'm[1]', failed"
        assert r.tasks["m[3]"].status is S.CANCELLED
        assert r.tasks["m[3]"].reason.startswith("not started")
        assert 3 not in started
        assert r.tasks["after"].status is S.PENDING

    @pytest.mark.parametrize("mode", MODES)
    def test_continue_on_error_runs_every_sibling(self, mode: str) -> None:
        """With continue_on_error the siblings finish; the map fails; downstream is
        upstream_failed unless its trigger rule says otherwise."""
        def maybe(x: int) -> int:
            if x == 1:
                raise ValueError("bad")
            return x

        f = tl(maybe).map([0, 1, 2]).named("m")
        after = tl(lambda xs: xs)(f).named("after")
        cleanup = tl(lambda: "ok")().named("cleanup").with_options(trigger="all_done")
        r = run(f >> (after | cleanup), mode=mode, continue_on_error=True)
        assert [r.tasks[f"m[{i}]"].status for i in range(3)] == [S.COMPLETED, S.FAILED,
                                                                  S.COMPLETED]
        assert r.tasks["m"].status is S.FAILED
        assert r.tasks["after"].status is S.UPSTREAM_FAILED
        assert r.outputs["cleanup"] == "ok"

    def test_max_parallel_bounds_one_map(self) -> None:
        """max_parallel=2: never more than two children at once."""
        o = Overlap()
        r = run(o.tool().map(list(range(6))).with_options(max_parallel=2))
        assert r.ok and o.most == 2

    @pytest.mark.parametrize(("mode", "most"), [("parallel", 6), ("sequential", 1),
                                                ("conditional", 1)])
    def test_mode_concurrency_applies_to_children(self, mode: str, most: int) -> None:
        """Children overlap in parallel mode, one at a time in sequential/conditional."""
        o = Overlap()
        r = run(o.tool().map(list(range(6))), mode=mode)
        assert r.ok and o.most == most

    def test_run_max_concurrency_bounds_children(self) -> None:
        """The run's max_concurrency bounds a map's children too."""
        o = Overlap()
        r = run(o.tool().map(list(range(6))), max_concurrency=3)
        assert r.ok and o.most == 3

    def test_pools_apply_per_child(self) -> None:
        """A child holds its tool's pool while it runs: a pool of 1 serializes them."""
        o = Overlap()
        r = run(o.tool(resources={"db": 1}).map(list(range(4))), resources={"db": 1})
        assert r.ok and o.most == 1

    def test_children_retry_and_time_out(self) -> None:
        """Each child gets the tool's retries and timeout on its own."""
        tries: dict[int, int] = {}
        lock = threading.Lock()

        def flaky(x: int) -> int:
            with lock:
                tries[x] = tries.get(x, 0) + 1
            if x == 0 and tries[x] == 1:
                raise OSError("transient")
            if x == 2:
                time.sleep(0.3)
            return x

        f = tl(flaky, retries=1, timeout=0.1, backoff=0).map([0, 1, 2]).named("f")
        r = run(f, continue_on_error=True)
        assert len(r.tasks["f[0]"].attempts) == 2 and r.tasks["f[0]"].status is S.COMPLETED
        assert len(r.tasks["f[1]"].attempts) == 1
        assert r.tasks["f[2]"].status is S.TIMED_OUT

    def test_rollback_per_child(self) -> None:
        """On a failed run each completed child is rolled back with its own output."""
        undone: list[Any] = []
        f = tl(lambda x: x * 10, rollback=undone.append).map([1, 2]).named("f")
        boom = tl(lambda xs: 1 / 0)(f).named("boom")
        r = run(f >> boom, rollback_on_failure=True, mode="sequential")
        assert sorted(undone) == [10, 20]
        assert r.tasks["f[0]"].status is S.ROLLED_BACK

    def test_run_timeout_cancels_children(self) -> None:
        """The run's timeout cancels running children and their parent."""
        async def slow(x: int) -> int:
            await anyio.sleep(5)
            return x

        r = run(tl(slow).map([1, 2]).named("s"), timeout=0.2)
        assert r.status == "timed_out"
        assert r.tasks["s"].status is S.CANCELLED
        assert r.tasks["s[0]"].status is S.CANCELLED

    def test_children_run_in_worker_processes(self) -> None:
        """On the process executor each child is a call in a worker process; the outputs
        come back in input order."""
        import os

        import proc_tools

        r = run(proc_tools.pid_and.map([3, 1, 2]).named("p") >> proc_tools.square.map(
            [4, 5]).named("sq"))
        assert r.ok, r.error
        assert [x for x, _ in r.outputs["p"]] == [3, 1, 2]
        assert os.getpid() not in {pid for _, pid in r.outputs["p"]}
        assert r.outputs["sq"] == [16, 25]

    def test_to_context_maps_the_list(self) -> None:
        """to_context on a mapped task stores the list of outputs."""
        r = run(fetch.map(["a", "b"]).named("f").to_context("pages"))
        assert r.context["pages"] == ["A", "B"]

    def test_pipeline_over_items_maps_per_item(self) -> None:
        """In a pipeline over items, each item's mapped stage expands on its own."""
        split = tl(lambda s: list(s)).stage().named("split")
        flow = split >> fetch.map(split).named("up")
        r = run(flow, mode="pipeline", items=["ab", "cde"])
        assert r.outputs["up"] == [["A", "B"], ["C", "D", "E"]]
        assert r.tasks["up[2]"].parent == "up"

    def test_history_timeline_and_progress_show_children(self, tmp_path: Any) -> None:
        """Every child is a row in history, a bar in the timeline and a count in progress."""
        from flowdsl._report.progress import _State
        from flowdsl._report.timeline import from_result

        state = _State()
        store = flowdsl.open_history(tmp_path / "h.db")
        r = flowdsl.run(search_then_fetch(), history=store, observers=[state])
        rows = {t["task_id"]: t for t in store.get_run(r.run_id)["tasks"]}
        assert {"fetch[0]", "fetch[3]"} <= set(rows)
        assert rows["fetch[1]"]["status"] == "completed"
        assert [b.id for b in from_result(r).bars][:3] == ["search", "fetch", "fetch[0]"]
        assert state.total == 7 and len(state.finished) == 7
        store.close()


class TestSwitch:
    @staticmethod
    def flow(choice: int, *, default: Any = None) -> Any:
        route = tl(lambda i: "abcz"[i])(choice).named("route")
        work = tl(lambda label: label)
        cases = {"a": work("A").named("A"),
                 "b": work("B").named("B") >> work("B2").named("B2"),
                 "c": work("C").named("C")}
        joined = tl(lambda: "joined")().named("join").with_options(
            trigger="none_failed_min_one_success")
        return route >> switch(route, cases, default=default, name="sw") >> joined

    @pytest.mark.parametrize("mode", MODES)
    def test_one_of_three_with_a_join(self, mode: str) -> None:
        """Exactly the matching case runs; the others' tasks are skipped with the switch's
        reason; the join runs."""
        r = run(self.flow(1), mode=mode)
        assert r.ok, r.error
        assert r.outputs["B2"] == "B2" and r.output == "joined"
        for t in ("A", "C", "sw['a']", "sw['c']"):
            assert r.tasks[t].status is S.SKIPPED
            assert r.tasks[t].reason == "switch on 'route' chose 'b'"
        assert r.tasks["sw['b']"].status is S.COMPLETED

    def test_no_match_with_skip_default_skips_everything(self) -> None:
        """No case matches and default=SKIP: every case and the join are skipped, on
        purpose (without a default the switch fails: tests/test_semantics_faults.py)."""
        r = run(self.flow(3, default=flowdsl.SKIP))
        assert r.ok
        assert r.tasks["B2"].reason == "switch on 'route' matched no case (got 'z')"
        assert r.tasks["join"].status is S.SKIPPED

    def test_default_runs_when_nothing_matches(self) -> None:
        """The default path runs when no case matches, and only then."""
        other = tl(lambda: "other")().named("other")
        r = run(self.flow(3, default=other))
        assert r.outputs["other"] == "other" and r.output == "joined"
        r = run(self.flow(0, default=tl(lambda: "other")().named("other")))
        assert r.tasks["other"].status is S.SKIPPED and r.outputs["A"] == "A"

    def test_switch_on_a_projection_passes_the_value(self) -> None:
        """on= may be a projection; the chosen case's stage receives the value."""
        src = tl(lambda: {"kind": "x"})().named("src")
        shout = tl(lambda v: v.upper())
        r = run(src >> switch(src["kind"], {"x": shout.stage().named("X"),
                                            "y": shout.stage().named("Y")}))
        assert r.outputs["X"] == "X" and r.tasks["Y"].status is S.SKIPPED

    def test_switch_arguments_are_checked(self) -> None:
        """A non-task on= or an empty case mapping is refused at composition."""
        with pytest.raises(CompositionError, match=r"switch\(on=\.\.\.\) expects a Task"):
            switch("route", {"a": fetch("x")})
        with pytest.raises(CompositionError, match="non-empty mapping"):
            switch(fetch("x"), {})

    def test_join_is_upstream_failed_after_a_failure(self) -> None:
        """none_failed_min_one_success: a failed case fails the join's inputs."""
        route = tl(lambda: "a")().named("route")
        bad = tl(lambda: 1 / 0)().named("bad")
        joined = tl(lambda: 1)().named("join").with_options(
            trigger="none_failed_min_one_success")
        r = run(route >> switch(route, {"a": bad, "b": fetch("x")}) >> joined,
                continue_on_error=True)
        assert r.tasks["join"].status is S.UPSTREAM_FAILED


class TestWhenOn:
    @pytest.mark.parametrize("mode", MODES)
    def test_equals_in_a_loop_binds_each_value(self, mode: str) -> None:
        """.when(on=, equals=) built in a loop keeps each value (no late binding)."""
        route = tl(lambda: "b")().named("route")
        paths = [fetch(v).named(v).when(on=route, equals=v) for v in ("a", "b", "c")]
        r = run(route >> paths, mode=mode)
        assert [r.tasks[v].status for v in "abc"] == [S.SKIPPED, S.COMPLETED, S.SKIPPED]
        assert r.tasks["a"].reason == "'route' gave 'b', not 'a'"

    def test_predicate_receives_the_output(self) -> None:
        """.when(predicate, on=task): the predicate gets that task's output, no context."""
        n = tl(lambda: 7)().named("n")
        big = fetch("big").named("big").when(lambda v: v > 5, on=n)
        small = fetch("small").named("small").when(lambda v: v <= 5, on=n)
        r = run(n >> (big | small))
        assert r.tasks["big"].status is S.COMPLETED
        assert r.tasks["small"].reason == "its condition on 'n' was false (got 7)"

    def test_on_orders_the_task_after_its_source(self) -> None:
        """on= alone is a dependency: the guarded task waits for it."""
        n = tl(lambda: 1)().named("n")
        t = fetch("x").named("t").when(on=n, equals=1)
        p = flowdsl.plan(t)
        assert p.predecessors["t"] == ("n",)

    def test_raising_predicate_fails_the_task(self) -> None:
        """A predicate that raises fails the task, naming it and the source."""
        n = tl(lambda: 1)().named("n")
        t = fetch("x").named("t").when(lambda v: v["k"], on=n)
        r = run(n >> t)
        assert r.tasks["t"].status is S.FAILED
        assert "condition of task 't' on 'n' raised" in r.tasks["t"].error.message

    def test_misuse_is_refused(self) -> None:
        """equals= needs on=; on= takes a task; predicate and equals= are exclusive."""
        n = fetch("n")
        with pytest.raises(CompositionError, match="needs on="):
            fetch("x").when(equals=1)
        with pytest.raises(CompositionError, match="expects a Task or a projection"):
            fetch("x").when(on="n", equals=1)
        with pytest.raises(CompositionError, match="exactly one"):
            fetch("x").when(lambda v: v, on=n, equals=1)


class TestDocuments:
    @staticmethod
    def registry() -> flowdsl.ToolRegistry:
        reg = flowdsl.ToolRegistry()
        reg.register(search)
        reg.register(fetch)
        return reg

    DOC: dict[str, Any] = {"name": "m", "tasks": [
        {"id": "search", "tool": "search", "args": {"q": "a", "n": 2}},
        {"id": "fetch", "tool": "fetch", "map": {"$task": "search"},
         "args": {"suffix": "!"}, "max_parallel": 2}]}

    def test_map_in_a_document_runs_and_writes_back(self) -> None:
        """"map": {"$task": ...} loads as a mapped task; to_dict writes it back the same."""
        from flowdsl._data.documents import flow_to_dict

        reg = self.registry()
        flow = flowdsl.load_flow(self.DOC, reg)
        r = run(flow)
        assert r.outputs["fetch"] == ["A/0!", "A/1!"]
        again = flow_to_dict(flow, reg)
        assert again["tasks"][1] == self.DOC["tasks"][1]
        assert run(flowdsl.load_flow(again, reg)).outputs["fetch"] == ["A/0!", "A/1!"]

    def test_bad_map_fields_are_reported(self) -> None:
        """A string map, a bad max_parallel, the mapped parameter given twice and
        max_parallel without map are each reported with their path."""
        reg = self.registry()
        doc = {"name": "m", "tasks": [
            {"id": "a", "tool": "fetch", "map": "abc", "max_parallel": 0},
            {"id": "b", "tool": "fetch", "map": ["x"], "args": {"url": "y"}},
            {"id": "c", "tool": "fetch", "args": {"url": "y"}, "max_children": 3}]}
        with pytest.raises(flowdsl.PlanValidationError) as info:
            flowdsl.load_flow(doc, reg)
        found = {(p["path"], p["code"]) for p in info.value.problems}
        assert found == {("tasks[0].map", "bad_map"), ("tasks[0].max_parallel", "bad_option"),
                         ("tasks[1].args.url", "bad_map"),
                         ("tasks[2].max_children", "not_mapped")}

    def test_schema_accepts_map_and_still_requires_arguments(self) -> None:
        """The JSON Schema takes "map" in place of the first argument, not in place of
        the others."""
        jsonschema = pytest.importorskip("jsonschema")
        schema = flowdsl.plan_schema(self.registry())
        jsonschema.validate(self.DOC, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "m", "tasks": [
                {"id": "f", "tool": "fetch", "args": {}}]}, schema)


ROOT = Path(__file__).resolve().parent.parent


def _section_blocks() -> list[tuple[str, list[str] | None]]:
    from doc_pages import examples  # tests/ is on sys.path

    return [example for page in ("howto/maps-switches.md", "howto/subflows.md",
                                 "howto/caching.md")
            for example in examples(page)]


@pytest.mark.parametrize("index", range(len(_section_blocks())))
def test_readme_section_examples_print_what_they_say(index: int, tmp_path: Path) -> None:
    """Each example of the pages on maps and switches, sub-flows and cached tasks (once the
    README's "Shapes decided at run time") runs in a fresh process and prints exactly the
    output the page shows."""
    code, expected = _section_blocks()[index]
    assert expected, "each of these examples shows its output"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected


def test_example_program_uses_every_part() -> None:
    """examples/shapes.py maps inside a sub-flow unit, switches, joins and hits its cache
    on the second run."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "shapes.py")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "fetched 4 pages as ['fetch[0]', 'fetch[1]', 'fetch[2]', 'fetch[3]']" in out
    assert "'classify': 'cached'" in out.split("run 2:")[1]
    assert "switch on 'classify' chose 'long'" in out
    assert "classify was called 1 time(s) over two runs" in out
    assert "context: {'query': 'flowdsl'}" in out  # the sub-flow's context default


def _steps(*names: str) -> list[Any]:
    return [tl(lambda n=n: n, name=n)().named(n) for n in names]


class TestUnits:
    @pytest.mark.parametrize("mode", MODES)
    def test_when_skips_the_whole_group(self, mode: str) -> None:
        """A false condition on a fragment skips every task of it (and, by default, what
        follows), each with the group's reason; a true one runs them all."""
        a, b, c, d = _steps("a", "b", "c", "d")
        flow = a >> (b >> c).when(lambda ctx: ctx.get("go")).with_options(name="bc") >> d
        r = run(flow, mode=mode)
        why = "group 'bc' was skipped: its condition was false"
        assert [r.tasks[t].reason for t in "bcd"] == [why] * 3
        assert r.tasks["a"].status is S.COMPLETED
        r = run(flow, mode=mode, context={"go": True})
        assert r.ok and r.output == "d"

    def test_when_on_an_output_for_an_embedded_flow(self) -> None:
        """An embedded Flow's .when(on=..., equals=...) waits for that task and tests its
        output; the flow's name is the group's."""
        a, b, c = _steps("a", "b", "c")
        sub = flowdsl.Flow("sub", b >> c).when(on=a, equals="x")
        r = run(sub)
        assert r.tasks["b"].reason == "group 'sub' was skipped: 'a' gave 'a', not 'x'"
        assert flowdsl.plan(sub).predecessors["b"] == ("a",)

    def test_a_raising_group_condition_fails_the_member(self) -> None:
        """A group condition that raises fails the task that tested it, naming the group."""
        b, = _steps("b")
        r = run((b | _steps("c")[0]).when(lambda ctx: ctx["missing"]).with_options(name="g"))
        assert r.tasks["b"].status is S.FAILED
        assert "the condition of group 'g' raised KeyError" in r.tasks["b"].error.message

    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    def test_timeout_bounds_the_group(self, mode: str) -> None:
        """The group's wall time is bounded: its running tasks are cut off and end timed
        out; a member not yet started when the time is up does not start."""
        async def slow() -> None:
            await anyio.sleep(5)

        a, after = _steps("a", "after")
        s1 = tl(slow, name="s1")().named("s1")
        s2 = tl(slow, name="s2")().named("s2")
        group = (s1 >> s2).with_options(timeout=0.2, name="slow pair")
        t0 = time.perf_counter()
        r = run(a >> group >> after, mode=mode, continue_on_error=True)
        assert time.perf_counter() - t0 < 3
        assert r.tasks["s1"].status is S.TIMED_OUT
        assert r.tasks["s1"].error.message == (
            "task 's1' was cut off: group 'slow pair' ran past its 0.2s timeout")
        assert r.tasks["s2"].status is S.UPSTREAM_FAILED
        assert r.tasks["after"].status is S.UPSTREAM_FAILED
        assert isinstance(r.errors[0], flowdsl.TaskTimeout) and r.errors[0].kind == "group"

    def test_timeout_of_parallel_members(self) -> None:
        """Members side by side are all cut off at the group's deadline, not each after
        its own."""
        async def slow() -> None:
            await anyio.sleep(5)

        group = flowdsl.parallel(*[tl(slow, name=f"p{i}")().named(f"p{i}")
                                   for i in range(3)]).with_options(timeout=0.2)
        r = run(group, continue_on_error=True)
        assert all(r.tasks[f"p{i}"].status is S.TIMED_OUT for i in range(3))
        assert r.duration < 2

    def test_trigger_applies_to_the_group_entry(self) -> None:
        """A group's trigger rule decides whether it starts after failed tasks."""
        bad = tl(lambda: 1 / 0, name="bad")().named("bad")
        b, c = _steps("b", "c")
        cleanup = (b >> c).with_options(trigger="all_done", name="cleanup")
        r = run(bad >> cleanup, continue_on_error=True)
        assert r.tasks["b"].status is S.COMPLETED and r.tasks["c"].status is S.COMPLETED

    def test_embedded_flow_context_is_a_default(self) -> None:
        """An embedded Flow's context fills keys the run does not give; the run's win."""
        need = tl(lambda k, j: (k, j), name="need")
        inner = flowdsl.Flow("inner", need(flowdsl.ctx("k"), flowdsl.ctx("j")).named("need"),
                             context={"k": 5, "j": 1})
        a, = _steps("a")
        r = run(a >> inner, context={"j": 2})
        assert r.outputs["need"] == (5, 2)
        assert r.context == {"k": 5, "j": 2}

    def test_group_options_are_checked(self) -> None:
        """Bad group options are refused at composition, naming the group."""
        b, c = _steps("b", "c")
        with pytest.raises(CompositionError, match="timeout=0 is invalid"):
            (b >> c).with_options(timeout=0)
        with pytest.raises(CompositionError, match="unknown trigger rule 'sometimes'"):
            (b >> c).with_options(trigger="sometimes")
        with pytest.raises(CompositionError, match="retries=-1 is invalid"):
            flowdsl.Flow("f", b >> c).with_options(retries=-1)
        with pytest.raises(CompositionError, match="got executor"):
            flowdsl.Flow("f", b >> c).with_options(executor="thread")
        with pytest.raises(CompositionError, match=r"\.when\(\) expects a callable"):
            (b | c).when(3)

    @pytest.mark.parametrize("mode", MODES)
    def test_flow_as_an_argument_passes_its_output(self, mode: str) -> None:
        """A Flow passed as an argument joins the flow whole (its tasks under its name) and
        gives its output: one last task's, or a dict by id for several."""
        use = tl(lambda x: x, name="use")
        a, b = (tl(lambda n=n: n, name=n) for n in "ab")
        one = use(flowdsl.Flow("one", a() >> b())).named("use")
        assert dict(flowdsl.plan(one).predecessors) == {
            "one.a": (), "one.b": ("one.a",), "use": ("one.b",)}
        assert run(one, mode=mode).output == "b"
        c = tl(lambda: "c", name="c")
        several = use(flowdsl.Flow("two", a() >> (b() | c()))).named("use")
        assert run(several, mode=mode).output == {"two.b": "b", "two.c": "c"}

    def test_a_unit_passed_as_an_argument_keeps_its_options(self) -> None:
        """A Flow with .when() passed as an argument is still a unit: skipped as one, and so
        is the task that takes its output."""
        a, b = (tl(lambda n=n: n, name=n) for n in "ab")
        sub = flowdsl.Flow("sub", a() >> b()).when(lambda ctx: ctx.get("go"))
        r = run(tl(lambda x: x, name="use")(sub).named("use"))
        assert [r.tasks[t].reason for t in ("sub.a", "sub.b", "use")] == [
            "group 'sub' was skipped: its condition was false"] * 3

    def test_a_task_taking_a_flow_must_be_composed(self) -> None:
        """A task that takes a flow but is only referred to by another task is refused at
        planning, with what to do."""
        b, = _steps("b")
        use = tl(lambda x: x, name="use")(flowdsl.Flow("f", b))
        with pytest.raises(CompositionError, match="must be composed into the flow itself"):
            flowdsl.plan(fetch(use))

    def test_group_is_not_a_node(self) -> None:
        """A unit adds no task: the plan is its tasks and their edges."""
        a, b, c = _steps("a", "b", "c")
        p = flowdsl.plan(a >> (b | c).when(lambda ctx: True))
        assert list(p.order) == ["a", "b", "c"] and len(p.groups) == 1
        assert p.groups[0].members == ("b", "c")



class Flaky:
    """Tools that fail their first ``fails`` calls, counting calls per name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str, fails: int = 0, *, seconds: float = 0.0,
                 slow_calls: int = 0, **options: Any) -> Any:
        async def fn(x: Any = None) -> str:
            with self.lock:
                self.calls[name] = n = self.calls.get(name, 0) + 1
            if n <= slow_calls:
                await anyio.sleep(seconds)
            if n <= fails:
                raise OSError(f"{name} flaked")
            return name

        return tl(fn, name=name, **options)


class TestGroupRetries:
    @pytest.mark.parametrize("mode", MODES)
    def test_only_the_failed_part_runs_again(self, mode: str) -> None:
        """A flaky task in a retried group runs again with what depends on it inside the
        group; the completed tasks before it are kept; the run never hears of the failure."""
        f = Flaky()
        a, b, c, d, e = (f(n, fails=1 if n == "c" else 0)().named(n) for n in "abcde")
        group = (b >> c >> d).with_options(retries=2, name="grp")
        r = run(a >> group >> e, mode=mode)
        assert r.ok and r.errors == [], r.errors
        assert f.calls == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1}
        assert all(rec.status is S.COMPLETED for rec in r.tasks.values())

    def test_retries_run_out(self) -> None:
        """Past its retries the group fails as usual: the last attempt's error is the run's,
        and fail-fast stops the run."""
        f = Flaky()
        a, b, c, e = (f(n, fails=9 if n == "c" else 0)().named(n) for n in "abce")
        r = run(a >> (b >> c).with_options(retries=2) >> e)
        assert f.calls["c"] == 3 and f.calls["b"] == 1
        assert r.status == "failed" and len(r.errors) == 1
        assert r.tasks["c"].status is S.FAILED and r.tasks["e"].status is S.PENDING

    def test_side_by_side_members_and_outside_inputs(self) -> None:
        """Members side by side, one taking an input from outside the group: the group
        starts once all its inputs are ready, and only the failed member is re-run."""
        f = Flaky()
        src = f("src")().named("src")
        other = f("other")().named("other")
        left = f("left")(src).named("left")
        right = f("right", fails=1)(other).named("right")
        group = (left | right).with_options(retries=1, name="pair")
        r = run(src >> group, mode="parallel")
        assert r.ok, r.errors
        assert f.calls == {"src": 1, "other": 1, "left": 1, "right": 2}
        assert flowdsl.plan(src >> group).predecessors["left"] == ("src", "other")

    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    def test_timed_out_attempt_is_retried_with_a_fresh_clock(self, mode: str) -> None:
        """A group attempt cut off by its timeout is retried, and the timeout counts again
        from the retry's start."""
        f = Flaky()
        slow = f("slow", seconds=5, slow_calls=1)().named("slow")
        after = f("after")(slow).named("after")
        group = flowdsl.Flow("sub", slow >> after).with_options(timeout=0.3, retries=1)
        t0 = time.perf_counter()
        r = run(group, mode=mode)
        assert r.ok, r.errors
        assert time.perf_counter() - t0 < 3
        assert f.calls == {"slow": 2, "after": 1}
