"""Map by name: ``tool.map(url=found, lang="de")`` maps the parameters given a list or a
reference and passes every other value to each child; several are zipped; ``unmapped(x)``
passes a list or a task's output whole; the positional form and ``each()`` keep working.
Every misuse names the mapped parameter and how to name another. In every mode, in workflow
documents (loaded, written back, in the JSON Schema); on Dask in tests/test_dask.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import MODES, run, tl

import flowdsl
from flowdsl import CompositionError, TaskStatus, ctx, each, unmapped
from flowdsl._data.documents import flow_to_dict

S = TaskStatus


@tl
def nums(n: int = 3) -> list[int]:
    return list(range(1, n + 1))


@tl
def times_a(a: int, num: int) -> int:
    return a * num


@tl
def fetch(url: str, lang: str = "en", tags: Any = None) -> str:
    return f"{url}:{lang}" + (f":{tags}" if tags is not None else "")


@tl
def search(q: str, n: int = 3) -> list[str]:
    return [f"{q}/{i}" for i in range(n)]


@tl
def joined(parts: list[Any]) -> str:
    return ",".join(map(str, parts))


class TestNamedForm:
    @pytest.mark.parametrize("mode", MODES)
    def test_maps_a_parameter_other_than_the_first(self, mode: str) -> None:
        """The issue's example: the named parameter is mapped, the scalar goes to every
        child; children are named t[0], ...; downstream gets the outputs in order."""
        n = nums().named("nums")
        t = times_a.map(num=n, a=2).named("t")
        r = run(n >> t >> joined(t).named("j"), mode=mode)
        assert r.ok, r.error
        assert r.outputs["t"] == [2, 4, 6]
        assert r.output == "2,4,6"
        assert list(r.tasks) == ["nums", "t", "t[0]", "t[1]", "t[2]", "j"]
        assert all(r.tasks[f"t[{i}]"].parent == "t" for i in range(3))

    @pytest.mark.parametrize("mode", MODES)
    def test_first_parameter_by_name_with_constants(self, mode: str) -> None:
        """fetch.map(url=found, lang="de"): the same as the positional form."""
        found = search("q").named("search")
        named = run(found >> fetch.map(url=found, lang="de").named("fetch"), mode=mode)
        positional = run(found >> fetch.map(found, lang="de").named("fetch"), mode=mode)
        assert named.outputs["fetch"] == positional.outputs["fetch"] == [
            "q/0:de", "q/1:de", "q/2:de"]

    @pytest.mark.parametrize("mode", MODES)
    def test_several_named_parameters_are_zipped(self, mode: str) -> None:
        """Two mapped keywords: child i gets element i of each (a task and a list)."""
        found = search("q", n=2).named("search")
        r = run(found >> fetch.map(url=found, lang=["de", "fr"]).named("fetch"), mode=mode)
        assert r.outputs["fetch"] == ["q/0:de", "q/1:fr"]

    @pytest.mark.parametrize("mode", MODES)
    def test_unequal_lengths_fail_naming_both_parameters(self, mode: str) -> None:
        """Zipped lists of unequal lengths fail the mapped task before any child starts,
        naming both parameters (as written: no each()) and both lengths."""
        found = search("q", n=3).named("search")
        r = run(found >> fetch.map(url=found, lang=["de", "fr"]).named("fetch"), mode=mode)
        rec = r.tasks["fetch"]
        assert rec.status is S.FAILED
        assert ("mapped task 'fetch': 'lang' has 2 elements but 'url' has 3; mapped "
                "arguments are zipped") in rec.error.message
        assert "each(" not in rec.error.message
        assert "fetch[0]" not in r.tasks

    def test_unmapped_passes_a_list_and_a_task_whole(self) -> None:
        """unmapped(list) and unmapped(task) go unchanged to every child."""
        tags = search("t", n=2).named("tags")
        r = run(tags >> fetch.map(url=["a", "b"], tags=unmapped(tags), lang=unmapped("x"))
                .named("f"))
        assert r.outputs["f"] == ["a:x:['t/0', 't/1']", "b:x:['t/0', 't/1']"]
        r = run(fetch.map(url=["a"], tags=unmapped([1, 2])).named("f"))
        assert r.outputs["f"] == ["a:en:[1, 2]"]

    def test_values_that_are_not_mapped(self) -> None:
        """A string, a number, None, a dict or an object goes to every child."""
        pick = tl(lambda x, s, d, o, n=None: f"{x}{s}{sorted(d)}{type(o).__name__}{n}",
                  name="pick")
        r = run(pick.map(x=(1, 2), s="s", d={"k": 1}, o=object(), n=None).named("p"))
        assert r.outputs["p"] == ["1s['k']objectNone", "2s['k']objectNone"]

    def test_generator_and_ctx(self) -> None:
        """A generator is read once (two runs map over the same elements); a ctx()
        reference is mapped over the context's list."""
        gen = fetch.map(url=(f"u{i}" for i in range(2))).named("g")
        assert run(gen).outputs["g"] == run(gen).outputs["g"] == ["u0:en", "u1:en"]
        c = fetch.map(url=ctx("urls"), lang="de").named("c")
        r = run(flowdsl.Flow("c", c, context={"urls": ["x", "y"]}))
        assert r.outputs["c"] == ["x:de", "y:de"]

    def test_each_still_forces_a_mapped_keyword(self) -> None:
        """each() works in both forms (the positional one as before)."""
        r = run(times_a.map([1, 2], num=each([10, 20])).named("p")
                | times_a.map(a=each(iter([1, 2])), num=[5, 6]).named("n"))
        assert r.outputs["p"] == [10, 40] and r.outputs["n"] == [5, 12]

    def test_a_task_that_gives_no_list_fails_saying_how_to_pass_it_whole(self) -> None:
        """A reference is mapped; when its value is not a list at run time, the failure
        says why the parameter was mapped and to wrap it in unmapped()."""
        lang = tl(lambda: "de", name="lang")().named("lang")
        r = run(lang >> fetch.map(url=["a"], lang=lang).named("f"))
        msg = r.tasks["f"].error.message
        assert "mapped task 'f' needs a list for its parameter 'lang', got str 'de'" in msg
        assert "flowdsl.unmapped(...)" in msg
        ok = run(lang >> fetch.map(url=["a"], lang=unmapped(lang)).named("f"))
        assert ok.outputs["f"] == ["a:de"]

    def test_options_and_child_limits_apply(self) -> None:
        """with_options(max_parallel, max_children) works on a named map as on any."""
        t = times_a.map(num=[1, 2, 3], a=1).with_options(max_parallel=1, max_children=2)
        r = run(t.named("t"))
        assert "over its limit of 2" in r.tasks["t"].error.message


class TestMisuse:
    def test_positional_values_and_the_first_parameter_also_given(self) -> None:
        """times_a.map(nums(), a=2): says the values go to 'a' and how to map 'num'."""
        with pytest.raises(CompositionError) as info:
            times_a.map(nums(), a=2)
        msg = str(info.value)
        assert "maps the values to its first parameter 'a', which is also given as a=2" in msg
        assert "times_a.map(num=<values>, a=2)" in msg

    def test_each_on_the_first_parameter_of_the_positional_form(self) -> None:
        """Mapping the first parameter twice (by position and with each()) is refused."""
        with pytest.raises(CompositionError, match="first parameter 'a', which is also given"):
            times_a.map([1], a=each([2]))

    def test_unknown_parameter_suggests_the_close_one(self) -> None:
        with pytest.raises(CompositionError) as info:
            times_a.map(nmu=[1], a=2)
        assert str(info.value) == ("cannot map tool 'times_a': it has no parameter 'nmu' "
                                   "(did you mean 'num'?); its parameters are a, num")

    def test_nothing_mapped(self) -> None:
        """No list or reference among the keywords: says the rule and what to write."""
        for call in (lambda: times_a.map(a=2), lambda: times_a.map(a=2, num=unmapped([1])),
                     lambda: times_a.map()):
            with pytest.raises(CompositionError) as info:
                call()
            msg = str(info.value)
            assert "maps no parameter" in msg and "unmapped()" in msg
            assert "times_a.map(" in msg and "=<values>" in msg
        with pytest.raises(CompositionError, match=r"times_a\.map\(num=<values>, a=2\)"):
            times_a.map(a=2)

    def test_several_positional_values(self) -> None:
        """dask's client.map(f, xs, ys) spelling: name them instead."""
        with pytest.raises(CompositionError, match=r"times_a\.map\(a=\.\.\., num=\.\.\.\)"):
            times_a.map([1], [2])

    def test_positional_only_parameter_cannot_be_named(self) -> None:
        def po(x: int, /, y: int = 0) -> int:
            return x + y

        t = tl(po, name="po")
        with pytest.raises(CompositionError, match=r"'x' is positional-only.*po\.map\(<values>\)"):
            t.map(x=[1])
        assert run(t.map([1, 2], y=1).named("p")).outputs["p"] == [2, 3]

    def test_keyword_only_first_parameter_points_to_the_named_form(self) -> None:
        def ko(*, k: int) -> int:
            return k

        t = tl(ko, name="ko")
        with pytest.raises(CompositionError, match=r"name the parameter to map: ko\.map\(k="):
            t.map([1])
        assert run(t.map(k=[1, 2]).named("k")).outputs["k"] == [1, 2]

    def test_unmapped_outside_map_is_refused(self) -> None:
        with pytest.raises(CompositionError, match=r"unmapped\(\[1\]\) marks an argument"):
            times_a(unmapped([1]), 2)
        with pytest.raises(CompositionError, match="cannot map tool 'times_a' over Unmapped"):
            times_a.map(unmapped([1]), num=2)


class TestDocuments:
    @staticmethod
    def registry() -> flowdsl.ToolRegistry:
        reg = flowdsl.ToolRegistry()
        for t in (search, fetch, times_a, nums):
            reg.register(t)
        return reg

    DOC: dict[str, Any] = {"name": "m", "tasks": [
        {"id": "search", "tool": "search", "args": {"q": "a"}},
        {"id": "fetch", "tool": "fetch", "map": {"url": {"$task": "search"}},
         "args": {"lang": "de", "tags": ["t"]}, "max_parallel": 2},
        {"id": "times", "tool": "times_a", "map": {"num": [1, 2], "a": {"$ctx": "as"}}}],
        "context": {"as": [10, 20]}}

    def test_named_map_loads_runs_and_round_trips(self) -> None:
        """"map": {"url": ...} maps url (args go to every child, a list too); two named
        parameters are zipped; to_dict writes a load of it back unchanged."""
        reg = self.registry()
        flow = flowdsl.load_flow(self.DOC, reg)
        r = run(flow)
        assert r.outputs["fetch"] == ["a/0:de:['t']", "a/1:de:['t']", "a/2:de:['t']"]
        assert r.outputs["times"] == [10, 40]
        again = flow_to_dict(flow, reg)
        tasks = {t["id"]: t for t in again["tasks"]}
        # The first parameter alone is written in the short form, which means the same.
        assert tasks["fetch"]["map"] == {"$task": "search"}
        assert tasks["fetch"]["args"] == {"lang": "de", "tags": ["t"]}
        assert tasks["times"]["map"] == {"num": [1, 2], "a": {"$ctx": "as"}}
        assert flow_to_dict(flowdsl.load_flow(again, reg), reg) == again
        assert run(flowdsl.load_flow(json.loads(json.dumps(again)), reg)).outputs == r.outputs

    def test_python_named_maps_write_a_document(self) -> None:
        """A Python named map (and each(), once unwritable) writes as "map": {...}."""
        reg = self.registry()
        n = nums().named("nums")
        flow = flowdsl.Flow("f", n >> times_a.map(num=n, a=[3, 4, 5]).named("t")
                            >> times_a.map([1, 2], num=each([7, 8])).named("e"))
        doc = flow_to_dict(flow, reg)
        tasks = {t["id"]: t for t in doc["tasks"]}
        assert tasks["t"]["map"] == {"num": {"$task": "nums"}, "a": [3, 4, 5]}
        assert tasks["e"]["map"] == {"a": [1, 2], "num": [7, 8]}
        assert run(flowdsl.load_flow(doc, reg)).outputs == run(flow).outputs

    def test_bad_named_maps_are_reported_with_their_paths(self) -> None:
        reg = self.registry()
        doc = {"name": "m", "tasks": [
            {"id": "a", "tool": "fetch", "map": {"uurl": ["x"]}, "args": {"url": "y"}},
            {"id": "b", "tool": "fetch", "map": {"url": "x"}},
            {"id": "c", "tool": "fetch", "map": {"url": ["x"]}, "args": {"url": "y"}},
            {"id": "d", "tool": "fetch", "map": {}, "args": {"url": "y"}},
            {"id": "e", "tool": "times_a", "map": {"num": ["x"]}}]}
        with pytest.raises(flowdsl.PlanValidationError) as info:
            flowdsl.load_flow(doc, reg)
        found = {(p["path"], p["code"]) for p in info.value.problems}
        assert found == {("tasks[0].map.uurl", "unknown_argument"),
                         ("tasks[1].map.url", "bad_map"), ("tasks[2].args.url", "bad_map"),
                         ("tasks[3].map", "bad_map"),
                         ("tasks[4].args.a", "missing_argument")}
        by_path = {p["path"]: p["message"] for p in info.value.problems}
        assert "did you mean 'url'" in by_path["tasks[0].map.uurl"]

    def test_schema_accepts_named_maps_and_still_requires_arguments(self) -> None:
        """A required parameter is in args, named in "map", or (the first only) fed by a
        list or reference "map"; an unknown name in "map" is refused."""
        jsonschema = pytest.importorskip("jsonschema")
        schema = flowdsl.plan_schema(self.registry())
        jsonschema.validate(self.DOC, schema)

        def ok(task: dict[str, Any]) -> bool:
            try:
                jsonschema.validate({"name": "m", "tasks": [task]}, schema)
            except jsonschema.ValidationError:
                return False
            return True

        assert ok({"id": "t", "tool": "times_a", "map": {"num": [1]}, "args": {"a": 2}})
        assert ok({"id": "t", "tool": "times_a", "map": [1], "args": {"num": 2}})
        assert not ok({"id": "t", "tool": "times_a", "map": {"num": [1]}})  # a missing
        assert not ok({"id": "t", "tool": "times_a", "map": [1]})  # num missing
        assert not ok({"id": "t", "tool": "times_a", "map": {"nmu": [1]}, "args": {"a": 2}})
        assert not ok({"id": "t", "tool": "times_a", "map": {"num": 1}, "args": {"a": 2}})

    def test_a_positional_only_parameter_mapped_beside_another_is_unwritable(self) -> None:
        """A document's named map cannot name a positional-only parameter: to_dict refuses
        it by name instead of writing a document that does not load."""
        def po(x: int, /, y: int = 0) -> int:
            return x + y

        t = tl(po, name="po")
        reg = flowdsl.ToolRegistry()
        reg.register(t)
        with pytest.raises(CompositionError, match=r"'p'.*positional-only"):
            flow_to_dict(flowdsl.Flow("f", t.map([1, 2], y=each([3, 4])).named("p")), reg)
        doc = flow_to_dict(flowdsl.Flow("f", t.map([1, 2], y=5).named("p")), reg)
        assert run(flowdsl.load_flow(doc, reg)).outputs["p"] == [6, 7]
