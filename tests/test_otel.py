"""OpenTelemetry: run and attempt spans through the global tracer provider (_run/tracing.py)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import anyio
import pytest

trace = pytest.importorskip("opentelemetry.trace", reason="needs flowdsl[otel]")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace",
                                reason="needs opentelemetry-sdk (the test extra)")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

from flowdsl import Secret, run, tool  # noqa: E402
from flowdsl._run import tracing  # noqa: E402


def mine() -> Any:
    """The application's tracer, from the provider of the test running (a tracer kept from
    an earlier test would stay bound to that test's provider)."""
    return trace.get_tracer("the-application")


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


@tool(registry=False)
async def inc(x: int) -> int:
    with mine().start_as_current_span("inside-async"):
        await anyio.sleep(0)
    return x + 1


@tool(registry=False)
def double(x: int) -> int:
    with mine().start_as_current_span("inside-thread"):
        return x * 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_and_attempt_spans_with_attributes_and_tool_spans_nested(
        spans: InMemorySpanExporter, backend: str) -> None:
    result = run(double(inc(1)), history=False, backend=backend)
    assert result.output == 4
    got = _by_name(spans)
    (root,) = got["flowdsl.run"]
    assert root.parent is None
    assert root.attributes["flowdsl.run.id"] == result.run_id
    assert root.attributes["flowdsl.status"] == "completed"
    assert root.status.status_code is StatusCode.UNSET
    (a,) = got["flowdsl.task inc"]
    (b,) = got["flowdsl.task double"]
    for span, tid in ((a, "inc"), (b, "double")):
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert dict(span.attributes) == {"flowdsl.task.id": tid, "flowdsl.tool": tid,
                                         "flowdsl.attempt": 1, "flowdsl.status": "completed"}
        rec = result.tasks[tid]
        assert span.end_time - span.start_time == pytest.approx(
            (rec.attempts[0].ended_at - rec.attempts[0].started_at) * 1e9, abs=1000)
    # The tool's own spans nest under its attempt: a coroutine in the calling task, a sync
    # tool in a worker thread that got a copy of the context.
    (inside_async,) = got["inside-async"]
    (inside_thread,) = got["inside-thread"]
    assert inside_async.parent.span_id == a.context.span_id
    assert inside_thread.parent.span_id == b.context.span_id


def test_the_run_span_is_a_child_of_the_callers_current_span(
        spans: InMemorySpanExporter) -> None:
    with mine().start_as_current_span("request") as request:
        run(inc(1), history=False)
    (root,) = _by_name(spans)["flowdsl.run"]
    assert root.parent.span_id == request.get_span_context().span_id


def test_a_retried_task_has_one_span_per_attempt_with_its_error(
        spans: InMemorySpanExporter) -> None:
    calls = []

    @tool(registry=False, retries=1, backoff=0)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("first call fails")
        return "ok"

    result = run(flaky(), history=False)
    assert result.output == "ok"
    first, second = sorted(_by_name(spans)["flowdsl.task flaky"], key=lambda s: s.start_time)
    assert (first.attributes["flowdsl.attempt"], first.attributes["flowdsl.status"]) == (
        1, "failed")
    assert first.status.status_code is StatusCode.ERROR
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ConnectionError"
    assert event.attributes["exception.message"] == "first call fails"
    assert "ConnectionError" in event.attributes["exception.stacktrace"]
    assert (second.attributes["flowdsl.attempt"], second.attributes["flowdsl.status"]) == (
        2, "completed")
    assert second.status.status_code is StatusCode.UNSET
    assert not second.events


def test_a_failed_run_records_errors_and_masks_secrets(spans: InMemorySpanExporter) -> None:
    @tool(registry=False)
    def leak(token: str) -> None:
        raise ValueError(f"bad token {token}")

    result = run(leak(Secret("hunter2-xyz")), history=False)
    assert result.status == "failed"
    got = _by_name(spans)
    (attempt,) = got["flowdsl.task leak"]
    (root,) = got["flowdsl.run"]
    assert attempt.attributes["flowdsl.status"] == "failed"
    assert attempt.status.status_code is StatusCode.ERROR
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["flowdsl.status"] == "failed"
    for span in (attempt, root):
        (event,) = span.events
        assert event.name == "exception"
        assert "hunter2-xyz" not in str(dict(event.attributes))
        assert "bad token" in event.attributes["exception.message"]


def test_a_timed_out_attempt_is_recorded_timed_out(spans: InMemorySpanExporter) -> None:
    @tool(registry=False, timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    result = run(slow(), history=False)
    assert result.tasks["slow"].status == "timed_out"
    (attempt,) = _by_name(spans)["flowdsl.task slow"]
    assert attempt.attributes["flowdsl.status"] == "timed_out"
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.events[0].attributes["exception.type"] == "TaskTimeout"


def test_a_pool_wait_is_an_event_of_the_attempt_that_waited(
        spans: InMemorySpanExporter) -> None:
    @tool(registry=False, resources={"db": 1})
    async def query(n: int) -> int:
        await asyncio.sleep(0.05)
        return n

    run([query(1).named("q1"), query(2).named("q2")], history=False,
        resources={"db": 1})
    attempts = sorted(_by_name(spans)["flowdsl.task query"], key=lambda s: s.start_time)
    assert len(attempts) == 2
    assert not attempts[0].events  # the pool was free
    (wait,) = attempts[1].events
    assert wait.name == "flowdsl.pool_wait"
    assert wait.attributes["flowdsl.pools"] == "db=1"
    assert wait.attributes["flowdsl.wait_s"] >= 0.03  # the first query held the unit


def test_no_provider_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's default proxy provider: the run never asks it for a tracer.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # whatever set one before
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("flowdsl asked for a tracer without a provider set")

    monkeypatch.setattr(trace, "get_tracer", refuse)
    monkeypatch.setattr(trace.ProxyTracerProvider, "get_tracer", refuse)
    assert tracing.run_tracing() is None

    @tool(registry=False)
    async def one() -> int:
        return 1

    @tool(registry=False)
    def plus(x: int) -> int:
        return x + 1

    assert run(plus(one()), history=False).output == 2


def test_no_tracing_without_the_api_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # An application that never imported OpenTelemetry has set no provider: the run does
    # not import it (the import alone would cost more than a small run).
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    assert tracing.run_tracing() is None
    assert "opentelemetry.trace" not in sys.modules


def test_each_child_of_a_mapped_task_has_its_attempt_span(
        spans: InMemorySpanExporter) -> None:
    result = run(double.map([1, 2, 3]), history=False)
    assert result.status == "completed"
    got = _by_name(spans)
    (root,) = got["flowdsl.run"]
    children = got["flowdsl.task double"]
    assert sorted(s.attributes["flowdsl.task.id"] for s in children) == [
        "double[0]", "double[1]", "double[2]"]
    assert all(s.parent.span_id == root.context.span_id for s in children)
    # each child's own span nests under that child's attempt
    assert sorted(s.parent.span_id for s in got["inside-thread"]) == sorted(
        s.context.span_id for s in children)


def test_pipeline_attempts_carry_their_item(spans: InMemorySpanExporter) -> None:
    result = run(double.stage().named("d") >> inc.stage().named("i"), mode="pipeline",
                 items=[1, 2], history=False)
    assert result.output == [3, 5]
    got = _by_name(spans)
    for name in ("flowdsl.task double", "flowdsl.task inc"):
        assert sorted(s.attributes["flowdsl.item"] for s in got[name]) == [0, 1]
