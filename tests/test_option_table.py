"""The tables that name things once: tool options, executors, modes; and what derives from
them (validation, workflow documents, the plan schema, ``to_dict``, the run's settings)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import flowdsl
from flowdsl import CompositionError, ToolDefinitionError, ToolRegistry, tool
from flowdsl._data import documents
from flowdsl._data.documents import flow_to_dict, load_flow
from flowdsl._data.plan_schema import plan_schema
from flowdsl._graph.spec import (
    DERIVED_FIELDS,
    DOCUMENT_OPTIONS,
    EXECUTOR_KINDS,
    EXECUTORS,
    OPTIONS,
    ToolSpec,
)
from flowdsl._plan.policy import Mode

REG = ToolRegistry()


@tool(registry=REG, executor="inline")
def fetch(x: int = 0) -> int:
    """Fetch."""
    return x


@tool(registry=REG, executor="inline")
def double(x: int) -> int:
    """Double."""
    return 2 * x


def _one(**options):
    return flowdsl.Flow("f", fetch(1).named("t").with_options(**options))


# -- the option table ------------------------------------------------------------------------


def test_every_toolspec_field_is_a_table_row_and_back():
    fields = {f.name for f in dataclasses.fields(ToolSpec)}
    assert fields - set(DERIVED_FIELDS) == set(OPTIONS), (
        "a ToolSpec field without an OPTIONS row (or a row without a field): add the row in "
        "flowdsl/_graph/spec.py")
    assert all(row.name == key for key, row in OPTIONS.items())


def test_each_option_is_validated_by_its_row():
    """tool() and with_options() accept each option's default and refuse a bad value with a
    message naming the tool, the option and the value."""
    base = ToolSpec(name="t")
    for key in OPTIONS:
        default = getattr(base, key)
        assert base.evolve(**{key: default}) == base, key
        bad = 42 if key in ("retry_if", "rollback", "description") else object()
        with pytest.raises(ToolDefinitionError, match=rf"'t'.*{key}"):
            base.evolve(**{key: bad})
    with pytest.raises(ToolDefinitionError, match=r"unknown option 'is_async'"):
        base.evolve(is_async=True)


def test_document_fields_schema_and_to_dict_derive_from_the_table():
    pytest.importorskip("pydantic")
    schema = plan_schema(REG)
    variant = schema["properties"]["tasks"]["items"]["oneOf"][0]["properties"]
    for key, row in OPTIONS.items():
        carried = row.document is not None
        assert (key in documents.TASK_FIELDS) is carried, key
        assert (key in DOCUMENT_OPTIONS) is carried, key
        assert (key in variant) is carried, key
        if carried:
            assert variant[key]["description"] == row.doc
        else:
            assert row.refused, f"option {key!r}: say what a document cannot carry"


def test_docstrings_name_every_per_task_option():
    for key, row in OPTIONS.items():
        if row.per_task:
            assert f"``{key}``" in flowdsl.Task.with_options.__doc__, key
        assert f"``{key}``" in inspect.getdoc(flowdsl.tool), key


@pytest.mark.parametrize("pad", ["", "    ", "        "])
def test_documented_options_take_the_indentation_they_replace(pad):
    """Regression: Python 3.13 dedents docstrings at compile time; a fixed indent for the
    inserted option lines broke the docs build there (docutils: unexpected indentation)."""
    from flowdsl._graph.spec import document_options
    doc = f"Summary.\n\n{pad}Options:\n{pad}{{options}}.\n{pad}After."
    lines = document_options(doc).splitlines()
    body = lines[lines.index(f"{pad}Options:") + 1:-1]
    assert len(body) > 3 and "``timeout``" in "\n".join(body)
    assert all(line.startswith(pad) and not line[len(pad)].isspace() for line in body)
    assert lines[-1] == f"{pad}After."


@pytest.mark.parametrize(("options", "key"), [
    ({"deadline": 5.0}, "deadline"),
    ({"expected_duration": 2.0}, "expected_duration"),
    ({"timeout": 3.0, "retries": 1, "backoff": 0.5, "priority": 2.0}, "timeout"),
])
def test_to_dict_writes_carried_options_and_they_load_back(options, key):
    """Regression: to_dict dropped ``deadline`` silently."""
    doc = flow_to_dict(_one(**options), REG)
    task = doc["tasks"][0]
    for k, v in options.items():
        assert task[k] == (dataclasses.asdict(flowdsl.Backoff(v)) if k == "backoff" else v)
    back = load_flow(doc, REG).plan().tasks["t"].spec
    for k, v in options.items():
        assert getattr(back, k) == (flowdsl.Backoff(v) if k == "backoff" else v)


@pytest.mark.parametrize(("options", "key"), [
    ({"give_up_on": ValueError}, "give_up_on"),
    ({"retry_if": lambda e: True}, "retry_if"),
    ({"cache": True}, "cache"),
    ({"rollback": print}, "rollback"),
    ({"retry_on": (KeyError,)}, "retry_on"),
    ({"executor": "thread"}, "executor"),
])
def test_to_dict_refuses_an_option_a_document_cannot_carry(options, key):
    """Regression: to_dict dropped ``give_up_on``, ``retry_if`` and ``cache`` silently; it
    now refuses them, naming the option and the task."""
    with pytest.raises(CompositionError, match=rf"task 't'.*option '{key}'"):
        flow_to_dict(_one(**options), REG)


def test_a_task_of_an_unchanged_tool_writes_no_options():
    doc = flow_to_dict(flowdsl.Flow("f", fetch(1).named("t")), REG)
    assert set(doc["tasks"][0]) == {"id", "tool", "args"}


def test_a_document_refuses_an_option_it_cannot_carry():
    doc = {"name": "f", "tasks": [{"id": "t", "tool": "fetch", "retry_if": "x"}]}
    with pytest.raises(flowdsl.PlanValidationError, match="unknown field 'retry_if'"):
        load_flow(doc, REG)


# -- the executor and mode tables ------------------------------------------------------------


def test_executor_table_is_the_one_list():
    from flowdsl._run import api, executors

    assert tuple(EXECUTOR_KINDS) == EXECUTORS
    local = {k for k, row in EXECUTOR_KINDS.items() if row.local}
    assert set(api._LOCAL) == local  # every local row has its class, named by the row
    assert all(cls.name == k for k, cls in api._LOCAL.items())
    assert issubclass(api._LOCAL["thread"], executors.Executor)
    for k, row in EXECUTOR_KINDS.items():
        if row.coroutines:
            @tool(registry=False, executor=k)
            async def ok() -> None: ...
        else:
            with pytest.raises(ToolDefinitionError, match=f"executor={k!r}"):
                @tool(registry=False, executor=k)
                async def bad() -> None: ...


def test_runners_are_registered_by_their_mode():
    from flowdsl._run.runners import RUNNERS

    assert set(RUNNERS) == set(Mode)
    assert all(isinstance(m, Mode) for m in RUNNERS)


# -- analyze, optimize and simulate take run's settings; history=False holds -----------------


@pytest.mark.parametrize("call", ["analyze", "simulate", "optimize"])
def test_history_false_reads_and_creates_no_history_file(call, tmp_path, monkeypatch):
    """Regression: with a mapped task, analyze(history=False) (and the simulations it and
    optimize make) opened the default history file to read map counts."""
    path = tmp_path / "history.db"
    monkeypatch.setenv("FLOWDSL_HISTORY", str(path))
    flow = flowdsl.Flow("m", double.map([1, 2]).named("d"))
    getattr(flowdsl, call)(flow, history=False)
    assert not path.exists()


def test_analyze_takes_the_flows_defaults_as_run_does():
    """A Plan made from a Flow carries its defaults into analyze, as into run."""
    a = fetch(1).named("a")
    b = fetch(2).named("b")
    flow = flowdsl.Flow("f", a | b, mode="sequential")
    found = flowdsl.analyze(flow.plan(), history=False)
    assert any(s.kind == "parallel_mode" for s in found.suggestions)
    with pytest.raises(ValueError, match="unknown mode"):
        flowdsl.analyze(flow, history=False, mode="sideways")


def test_a_document_checks_a_carried_option_by_its_row():
    doc = {"name": "f", "tasks": [{"id": "t", "tool": "fetch", "deadline": -1,
                                   "expected_duration": 2}]}
    with pytest.raises(flowdsl.PlanValidationError) as info:
        load_flow(doc, REG)
    (problem,) = info.value.problems
    assert problem["path"] == "tasks[0].deadline" and problem["code"] == "bad_option"
    assert "deadline=-1" in problem["message"]


def test_default_executor_limits_name_local_executors():
    from flowdsl._plan.policy import executor_limits

    assert set(executor_limits()) <= {k for k, row in EXECUTOR_KINDS.items() if row.local}
