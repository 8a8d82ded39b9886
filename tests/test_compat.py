"""Tests for the reference design's face: Workflow, WorkflowTask, WorkflowEngine."""

from __future__ import annotations

import anyio

import flowdsl
from flowdsl import (
    ExecutionMode,
    TaskStatus,
    ToolRegistry,
    Workflow,
    WorkflowEngine,
    WorkflowTask,
    tool,
)

CALLS: list[str] = []
REG = ToolRegistry()


@tool(registry=REG, executor="inline")
def fetch(url: str) -> dict:
    CALLS.append(url)
    return {"body": f"<{url}>", "size": len(url)}


@tool(registry=REG, executor="inline")
def shout(text: str) -> str:
    CALLS.append(text)
    return text.upper()


@tool(registry=REG, executor="inline")
def broken(x: int = 0) -> int:
    msg = "boom"
    raise RuntimeError(msg)


def _workflow(**kw) -> Workflow:
    tasks = [WorkflowTask("f", "fetch", {"url": "a.b"}, output_mapping={"body": "page"}),
             WorkflowTask("s", "shout", {"text": {"$task": "f", "path": ["body"]}},
                          depends_on=["f"])]
    return Workflow("wf-1", "demo", "a demo", kw.pop("tasks", tasks), **kw)


def _execute(engine, workflow, context=None):
    return anyio.run(engine.execute_workflow, workflow, context or {})


def test_success_shape():
    """A successful run returns the lesson's dict with context and results."""
    engine = WorkflowEngine(REG, history=False)
    out = _execute(engine, _workflow(execution_mode=ExecutionMode.PARALLEL), {"user": "u"})
    assert out["success"] is True
    assert out["workflow_id"] == "wf-1"
    assert out["results"] == {"f": {"body": "<a.b>", "size": 3}, "s": "<A.B>"}
    assert out["task_results"] == out["results"]
    assert out["context"]["page"] == "<a.b>"
    assert out["context"]["user"] == "u"
    assert engine.execution_history[-1]["success"] is True
    assert engine.active_workflows == {}


def test_task_fields_filled():
    """Each WorkflowTask gets its status, result and times after the run."""
    wf = _workflow()
    _execute(WorkflowEngine(REG, history=False), wf)
    f = wf.tasks[0]
    assert f.status == TaskStatus.COMPLETED
    assert f.result == {"body": "<a.b>", "size": 3}
    assert f.started_at is not None and f.completed_at >= f.started_at
    assert wf.output_context["page"] == "<a.b>"


def test_callable_condition_skips():
    """A lesson-style callable condition still decides whether a task runs."""
    tasks = [WorkflowTask("f", "fetch", {"url": "x"}, condition=lambda c: c.get("go", False))]
    wf = _workflow(tasks=tasks)
    out = _execute(WorkflowEngine(REG, history=False), wf, {"go": False})
    assert out["success"] is True
    assert "f" not in out["results"]
    assert wf.tasks[0].status == TaskStatus.SKIPPED


def test_failure_shape():
    """A failing task gives success False, an error naming it and the workflow id."""
    wf = _workflow(tasks=[WorkflowTask("bad", "broken", {}, max_retries=0)])
    out = _execute(WorkflowEngine(REG, history=False), wf)
    assert out["success"] is False
    assert "boom" in out["error"] or "bad" in out["error"]
    assert out["workflow_id"] == "wf-1"
    assert wf.tasks[0].status == TaskStatus.FAILED


def test_invalid_workflow_runs_nothing():
    """An invalid workflow returns its problems and calls no tool."""
    CALLS.clear()
    tasks = [WorkflowTask("f", "fetch", {"url": "x"}),
             WorkflowTask("g", "fetchh", {"url": "y"}, depends_on=["nope"])]
    out = _execute(WorkflowEngine(REG, history=False), _workflow(tasks=tasks))
    assert out["success"] is False
    assert {p["path"] for p in out["problems"]} == {"tasks[1].tool", "tasks[1].depends_on[0]"}
    assert CALLS == []


def test_engine_accepts_a_mapping():
    """WorkflowEngine takes a mapping of tool id -> function too."""
    engine = WorkflowEngine({"double": lambda x: 2 * x}, history=False)
    wf = Workflow("w", "n", "", [WorkflowTask("d", "double", {"x": 4})])
    assert _execute(engine, wf)["results"] == {"d": 8}


def test_modes_match_run_modes():
    """ExecutionMode values are exactly flowdsl.run's mode names."""
    assert {m.value for m in ExecutionMode} == {m.value for m in flowdsl.Mode}


def test_workflow_to_dict():
    """A Workflow writes a document load_flow accepts, with the lesson's defaults."""
    doc = _workflow().to_dict()
    assert doc["mode"] == "sequential"
    assert doc["tasks"][0] == {"id": "f", "tool": "fetch", "args": {"url": "a.b"},
                               "retries": 3, "timeout": 60.0,
                               "to_context": {"body": "page"}}
    assert flowdsl.load_flow(doc, REG).plan().levels == (("f",), ("s",))
