"""Tests for workflows as data: load_flow, validation, limits, round trips, plan_schema."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import run

import flowdsl
from flowdsl import CompositionError, PlanValidationError, ToolRegistry, tool
from flowdsl._data.documents import flow_to_dict, load_flow
from flowdsl._data.plan_schema import plan_schema
from flowdsl._report.render import to_dot, to_mermaid

CALLS: list[str] = []
REG = ToolRegistry()


@tool(registry=REG, name="search.web", executor="inline")
def search(query: str, limit: int = 2) -> list[str]:
    """Fake search."""
    CALLS.append("search")
    return [f"{query}-{i}" for i in range(limit)]


@tool(registry=REG, executor="inline")
def summarize(texts: list[str], style: str = "short") -> dict:
    """Join texts."""
    CALLS.append("summarize")
    return {"text": " ".join(texts), "n": len(texts)}


@tool(registry=REG, executor="inline")
def combine(parts: list, k: int = 0) -> list:
    """Collect the parts (for generated DAGs)."""
    CALLS.append("combine")
    return [k, parts]


@REG.predicate
def has_score(c):
    return "score" in c


def good_doc() -> dict:
    return {
        "name": "research", "mode": "parallel", "context": {"score": 0.9},
        "resources": {"api": 2},
        "tasks": [
            {"id": "s1", "tool": "search.web", "args": {"query": "a"}, "resources": {"api": 1}},
            {"id": "s2", "tool": "search.web", "args": {"query": {"$ctx": "topic",
                                                                  "default": "b"}}},
            {"id": "sum", "tool": "summarize",
             "args": {"texts": [{"$task": "s1", "path": [0]}, {"$task": "s2", "path": [1]}]},
             "when": {"ctx": "score", "op": ">=", "value": 0.5}, "to_context": {"text": "brief"}},
        ],
    }


def load(doc, **kw):
    return load_flow(doc, REG, **kw)


def problems(doc, **kw) -> list[dict]:
    CALLS.clear()
    with pytest.raises(PlanValidationError) as info:
        load(doc, **kw)
    assert CALLS == []
    assert info.value.problems
    return info.value.problems


class TestLoad:
    def test_dict_runs(self):
        """A document becomes a Flow whose run follows references, ctx and conditions."""
        r = run(load(good_doc()))
        assert r.ok
        assert r.outputs["sum"] == {"text": "a-0 b-1", "n": 2}
        assert r.context["brief"] == "a-0 b-1"

    def test_flow_carries_defaults(self):
        """name, description, mode, context and resources land on the Flow."""
        f = load({**good_doc(), "description": "d", "max_concurrency": 3})
        assert (f.name, f.description, f.mode, f.context, f.resources, f.max_concurrency) == (
            "research", "d", "parallel", {"score": 0.9}, {"api": 2}, 3)

    def test_levels_follow_references_and_depends_on(self):
        """$task references and depends_on both become edges."""
        doc = good_doc()
        doc["tasks"].append({"id": "after", "tool": "search.web", "args": {"query": "z"},
                             "depends_on": ["sum"]})
        levels = load(doc).plan().levels
        assert [set(lv) for lv in levels] == [{"s1", "s2"}, {"sum"}, {"after"}]

    def test_json_string_and_files(self, tmp_path):
        """JSON text, .json files and .yaml files load the same flow."""
        text = json.dumps(good_doc())
        (tmp_path / "p.json").write_text(text)
        yaml = pytest.importorskip("yaml")
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(good_doc()))
        for src in (text, str(tmp_path / "p.json"), tmp_path / "p.yaml"):
            assert run(load(src)).outputs["sum"]["n"] == 2

    def test_aliases(self):
        """The reference design's field names are accepted as aliases."""
        doc = {"name": "w", "execution_mode": "sequential", "tasks": [
            {"task_id": "a", "tool_id": "search.web", "parameters": {"query": "q"},
             "timeout_seconds": 5, "max_retries": 2, "output_mapping": "found"}]}
        f = load(doc)
        t = f.plan().tasks["a"]
        assert (t.spec.timeout, t.spec.retries, t.to_context_map) == (5.0, 2, "found")
        assert f.mode == "sequential"

    def test_options_applied(self):
        """timeout, retries, backoff, resources, priority and trigger reach the task."""
        doc = {"name": "w", "resources": {"gpu": 1}, "tasks": [
            {"id": "a", "tool": "search.web", "args": {"query": "q"}, "timeout": 2,
             "retries": 1, "backoff": {"initial": 0.5}, "resources": {"gpu": 1},
             "priority": 3, "trigger": "all_done"}]}
        t = load(doc).plan().tasks["a"]
        assert (t.spec.timeout, t.spec.retries, t.spec.backoff.initial, dict(t.spec.resources),
                t.spec.priority, t.trigger) == (2.0, 1, 0.5, {"gpu": 1}, 3.0, "all_done")

    def test_nested_references_in_dicts(self):
        """References nest anywhere inside lists and dicts."""
        doc = {"name": "w", "tasks": [
            {"id": "a", "tool": "search.web", "args": {"query": "q", "limit": 1}},
            {"id": "b", "tool": "combine",
             "args": {"parts": [{"x": {"$task": "a"}, "y": [{"$ctx": "c"}]}]}}]}
        r = run(load(doc), context={"c": 7})
        assert r.outputs["b"] == [0, [{"x": ["q-0"], "y": [7]}]]

    def test_literal_is_not_a_reference(self):
        """{"$literal": ...} passes a dict that looks like a reference as plain data."""
        doc = {"name": "w", "tasks": [{"id": "b", "tool": "combine",
                                       "args": {"parts": {"$literal": [{"$task": "x"}]}}}]}
        assert run(load(doc)).outputs["b"] == [0, [{"$task": "x"}]]


class TestConditions:
    @pytest.mark.parametrize(("cond", "ran"), [
        ({"ctx": "v", "op": "==", "value": 3}, True), ({"ctx": "v", "op": "!=", "value": 3}, False),
        ({"ctx": "v", "op": "<", "value": 4}, True), ({"ctx": "v", "op": ">", "value": 4}, False),
        ({"ctx": "v", "op": "in", "value": [1, 3]}, True),
        ({"ctx": "v", "op": "not_in", "value": [3]}, False),
        ({"ctx": "tags", "op": "contains", "value": "x"}, True),
        ({"ctx": "nope", "op": "exists"}, False), ({"ctx": "nope", "op": "missing"}, True),
        ({"ctx": "v"}, True), ({"ctx": "v", "op": ">", "value": "text"}, False),
        ({"ctx": "tags", "path": [0], "op": "==", "value": "x"}, True),
        ({"all": [{"ctx": "v"}, {"ctx": "nope", "op": "missing"}]}, True),
        ({"any": [{"ctx": "nope"}, {"not": {"ctx": "v"}}]}, False),
        ("has_score", False), ("is_big", True),
    ])
    def test_declarative_condition(self, cond, ran):
        """Declarative tests and named predicates decide whether a task runs."""
        doc = {"name": "w", "tasks": [{"id": "a", "tool": "search.web",
                                       "args": {"query": "q"}, "when": cond}]}
        f = load(doc, predicates={"is_big": lambda c: c["v"] > 2})
        r = run(f, context={"v": 3, "tags": ["x"]})
        assert ("a" in r.outputs) is ran

    def test_code_in_condition_is_not_run(self):
        """A condition string is only ever a predicate name, never evaluated."""
        doc = {"name": "w", "tasks": [{"id": "a", "tool": "search.web", "args": {"query": "q"},
                                       "when": "__import__('os').system('false')"}]}
        assert problems(doc)[0]["code"] == "bad_condition"


def _base() -> dict:
    return {"name": "w", "resources": {"api": 1}, "tasks": [
        {"id": "a", "tool": "search.web", "args": {"query": "q"}},
        {"id": "b", "tool": "summarize", "args": {"texts": {"$task": "a"}}}]}


def _set(path, value):
    def mutate(doc):
        node = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        return doc
    return mutate


CATALOGUE = [
    ("unknown_tool", "tasks[0].tool", _set(["tasks", 0, "tool"], "search.webb")),
    ("missing_argument", "tasks[0].args.query", _set(["tasks", 0, "args"], {})),
    ("unknown_argument", "tasks[0].args.limt", _set(["tasks", 0, "args", "limt"], 3)),
    ("wrong_type", "tasks[0].args.limit", _set(["tasks", 0, "args", "limit"], "many")),
    ("wrong_type", "tasks[1].args.texts[1]", _set(["tasks", 1, "args", "texts"], ["x", 2])),
    ("unknown_reference", "tasks[1].args.texts", _set(["tasks", 1, "args", "texts"],
                                                      {"$task": "zz"})),
    ("unknown_reference", "tasks[0].depends_on[0]", _set(["tasks", 0, "depends_on"], ["q"])),
    ("duplicate_id", "tasks[1].id", _set(["tasks", 1, "id"], "a")),
    ("cycle", "tasks", _set(["tasks", 0, "depends_on"], ["b"])),
    ("unknown_pool", "tasks[0].resources.gpu", _set(["tasks", 0, "resources"], {"gpu": 1})),
    ("over_capacity", "tasks[0].resources.api", _set(["tasks", 0, "resources"], {"api": 5})),
    ("unknown_trigger", "tasks[0].trigger", _set(["tasks", 0, "trigger"], "sometimes")),
    ("bad_condition", "tasks[0].when.op", _set(["tasks", 0, "when"], {"ctx": "a", "op": "~"})),
    ("bad_condition", "tasks[0].when", _set(["tasks", 0, "when"], {"all": []})),
    ("bad_id", "tasks[1].id", _set(["tasks", 1, "id"], 7)),
    ("bad_id", "tasks[1].id", _set(["tasks", 1, "id"], "b\nINFO forged")),
    ("unknown_field", "tasks[0].colour", _set(["tasks", 0, "colour"], 1)),
    ("bad_option", "tasks[0].timeout", _set(["tasks", 0, "timeout"], -1)),
    ("bad_mode", "mode", _set(["mode"], "fastest")),
    ("missing_field", "name", _set(["name"], "")),
    ("bad_reference", "tasks[1].args.texts", _set(["tasks", 1, "args", "texts"],
                                                  {"$task": "a", "extra": 1})),
]


class TestValidation:
    @pytest.mark.parametrize(("code", "path", "mutate"), CATALOGUE,
                             ids=[f"{c}:{p}" for c, p, _ in CATALOGUE])
    def test_each_problem_alone(self, code, path, mutate):
        """Each kind of problem is reported alone, with its JSON path, and nothing runs."""
        found = problems(mutate(_base()))
        assert [(p["code"], p["path"]) for p in found] == [(code, path)]

    def test_several_at_once(self):
        """Problems of several tasks come back together in one error."""
        doc = _base()
        for _, _, mutate in (CATALOGUE[0], CATALOGUE[11], CATALOGUE[19]):
            doc = mutate(doc)
        doc["tasks"][1]["args"]["style"] = 3
        found = {(p["code"], p["path"]) for p in problems(doc)}
        assert found == {("unknown_tool", "tasks[0].tool"), ("unknown_trigger", "tasks[0].trigger"),
                         ("missing_field", "name"), ("wrong_type", "tasks[1].args.style")}

    def test_unknown_tool_suggests(self):
        """An unknown tool's problem lists the closest registered names."""
        p = problems(CATALOGUE[0][2](_base()))[0]
        assert p["suggestions"] == ["search.web"]
        assert "did you mean 'search.web'" in p["message"]

    def test_cycle_is_named(self):
        """A cycle's problem names the tasks around it."""
        p = problems(CATALOGUE[8][2](_base()))[0]
        assert p["cycle"] == ["a", "b", "a"]
        assert "a -> b -> a" in p["message"]

    def test_error_message_lists_paths(self):
        """The exception text lists every problem with its path."""
        with pytest.raises(PlanValidationError, match=r"tasks\[0\]\.tool: unknown tool"):
            load(CATALOGUE[0][2](_base()))

    def test_not_an_object(self):
        """A document that is not an object is one problem, not a crash."""
        assert problems([1, 2])[0]["code"] == "bad_document"
        assert problems("{not json")[0]["code"] == "unreadable"

    def test_yaml_python_tags_refused(self, tmp_path):
        """YAML is read with safe_load: Python object tags are an error, never executed."""
        path = tmp_path / "evil.yaml"
        path.write_text("name: !!python/object/apply:os.system ['false']\ntasks: []\n")
        assert problems(path)[0]["code"] == "unreadable"


class TestLimits:
    def test_oversized_text(self):
        """A document over max_bytes is refused before parsing."""
        doc = json.dumps(_base()) + " " * 2000
        assert problems(doc, max_bytes=1000)[0]["code"] == "too_large"

    def test_too_many_tasks(self):
        """More tasks than max_tasks is one clear problem."""
        doc = {"name": "w", "tasks": [{"id": f"t{i}", "tool": "search.web",
                                       "args": {"query": "q"}} for i in range(20)]}
        p = problems(doc, max_tasks=10)[0]
        assert (p["code"], p["path"]) == ("too_large", "tasks")
        assert "max_tasks=10" in p["message"]

    def test_deep_json_text(self):
        """Deeply nested JSON text is refused without recursing (no RecursionError)."""
        text = '{"name": "w", "tasks": ' + "[" * 100_000 + "]" * 100_000 + "}"
        assert problems(text, max_bytes=10**6)[0]["code"] == "too_deep"

    def test_deep_dict(self):
        """A deeply nested dict is refused with a depth problem."""
        deep: list = []
        node = deep
        for _ in range(5000):
            node.append([])
            node = node[0]
        doc = _base()
        doc["tasks"][1]["args"]["texts"] = deep
        assert problems(doc)[0]["code"] == "too_deep"

    def test_self_containing_dict(self):
        """A dict that contains itself hits a limit instead of looping forever."""
        doc = _base()
        doc["tasks"][0]["args"]["self"] = doc
        assert problems(doc)[0]["code"] in ("too_deep", "too_large")


class TestIds:
    ODD = 'we"ird\'<id>/../é 🚀 [x]'

    def test_odd_ids_load_run_and_render(self):
        """Ids with quotes, unicode and path characters run and do not break exports."""
        doc = {"name": "w", "tasks": [
            {"id": self.ODD, "tool": "search.web", "args": {"query": "q", "limit": 1}},
            {"id": "b", "tool": "summarize", "args": {"texts": {"$task": self.ODD}}}]}
        f = load(doc)
        assert run(f).outputs[self.ODD] == ["q-0"]
        mermaid, dot = to_mermaid(f.plan()), to_dot(f.plan())
        assert '"' not in mermaid.split('["', 1)[1].split('"]', 1)[0]
        node_lines = [ln for ln in dot.splitlines() if "label=" in ln]
        assert all(ln.count('"') - ln.count('\\"') == 2 for ln in node_lines)

    def test_problem_paths_do_not_contain_ids(self):
        """Paths use indexes and quoted keys, so hostile text stays inside a JSON string."""
        doc = _base()
        doc["tasks"][0]["args"] = {"query": "q", 'x"]\n': 1}
        p = problems(doc)[0]
        assert "\n" not in p["path"]
        assert p["path"] == 'tasks[0].args["x\\"]\\n"]'


# -- round trip --------------------------------------------------------------------------


@st.composite
def dag_docs(draw):
    n = draw(st.integers(1, 8))
    tasks = []
    for i in range(n):
        earlier = [f"t{j}" for j in range(i)]
        refs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        parts = [{"$task": r} for r in refs] + [draw(st.integers(-5, 5))]
        task = {"id": f"t{i}", "tool": "combine", "args": {"parts": parts, "k": i}}
        if deps:
            task["depends_on"] = deps
        if draw(st.booleans()):
            task["when"] = {"ctx": "flag", "op": "==", "value": True}
        tasks.append(task)
    return {"name": "gen", "mode": draw(st.sampled_from(["sequential", "parallel"])),
            "tasks": tasks}


class TestRoundTrip:
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(dag_docs(), st.booleans())
    def test_round_trip_plans_and_runs_the_same(self, doc, flag):
        """load(to_dict(load(doc))) plans to the same levels and runs to the same outputs."""
        first = load(doc)
        again = load(flow_to_dict(first, REG))
        assert [set(lv) for lv in first.plan().levels] == [set(lv) for lv in
                                                           again.plan().levels]
        a, b = run(first, context={"flag": flag}), run(again, context={"flag": flag})
        assert a.outputs == b.outputs
        assert {k: r.status for k, r in a.tasks.items()} == {k: r.status
                                                               for k, r in b.tasks.items()}

    def test_hand_written_flow_round_trips(self):
        """A flow written with >> and | writes out and loads back to the same plan."""
        s = search("x").named("s")
        flow = flowdsl.Flow("hand", s >> (summarize(s).named("u") | combine([s["0"]], k=1)
                                          .named("c").with_options(retries=2)),
                            mode="parallel")
        doc = flow.to_dict()
        back = load(doc)
        assert [set(lv) for lv in back.plan().levels] == [{"s"}, {"u", "c"}]
        assert back.plan().tasks["c"].spec.retries == 2
        assert run(back).outputs == run(flow).outputs

    def test_registered_predicate_round_trips(self):
        """A registered predicate is written back by name."""
        f = load({"name": "w", "tasks": [{"id": "a", "tool": "search.web",
                                          "args": {"query": "q"}, "when": "has_score"}]})
        assert flow_to_dict(f, REG)["tasks"][0]["when"] == "has_score"

    def test_unwritable_things_name_the_task(self):
        """Python conditions and non-data arguments raise an error naming the task."""
        with pytest.raises(CompositionError, match=r"'w1'.*condition"):
            flow_to_dict(search("q").named("w1").when(lambda c: True), REG)
        with pytest.raises(CompositionError, match=r"'w2'.*object"):
            flow_to_dict(combine([object()]).named("w2"), REG)
        with pytest.raises(CompositionError, match=r"'w3'.*pipeline stage"):
            flow_to_dict(search.stage().named("w3"), REG)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=3),
                     max_leaves=8)


class TestMutations:
    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def test_mutated_documents_are_rejected_cleanly(self, data):
        """Randomly mutated documents either load or are rejected with problems, never a
        crash, and no tool is called while loading."""
        doc = copy.deepcopy(good_doc())
        for _ in range(data.draw(st.integers(1, 3))):
            # pick a random container along a random walk, then mutate one of its keys
            node, path = doc, []
            while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
                key = data.draw(st.sampled_from(list(node.keys()) if isinstance(node, dict)
                                                else list(range(len(node)))))
                if not isinstance(node[key], (dict, list)):
                    break
                node, path = node[key], [*path, key]
            if not isinstance(node, (dict, list)) or not node:
                continue
            keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
            key = data.draw(st.sampled_from(keys))
            if data.draw(st.booleans()):
                node[key] = data.draw(_JSON)
            else:
                del node[key]
        CALLS.clear()
        try:
            flow = load(doc)
        except PlanValidationError as exc:
            assert exc.problems
            assert all({"path", "code", "message"} <= set(p) for p in exc.problems)
        else:
            flow.plan()
        assert CALLS == []


class TestPlanSchema:
    def test_valid_document_matches(self):
        """A good document validates against plan_schema; the schema is draft 2020-12."""
        schema = plan_schema(REG)
        jsonschema.Draft202012Validator.check_schema(schema)
        doc = good_doc()
        doc["tasks"][0]["when"] = {"all": [{"ctx": "x"}, "has_score"]}
        jsonschema.validate(doc, schema)

    def test_args_tied_to_tool(self):
        """Each task's args are checked against its own tool's parameters."""
        schema = plan_schema(REG)
        bad = {"name": "w", "tasks": [{"id": "a", "tool": "search.web",
                                       "args": {"texts": ["x"]}}]}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        ok = {"name": "w", "tasks": [{"id": "a", "tool": "summarize",
                                      "args": {"texts": {"$task": "b"}}}]}
        jsonschema.validate(ok, schema)
