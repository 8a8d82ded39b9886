"""Shared fixtures: every test runs with its own history file and leak checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _history_in_tmp(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs record history and cache entries in per-test files, never in the user's home."""
    path = tmp_path_factory.mktemp("history") / "history.db"
    monkeypatch.setenv("FLOWDSL_HISTORY", str(path))
    # The result cache too, beside it (it would default beside the user's history file).
    monkeypatch.setenv("FLOWDSL_CACHE", str(path.parent / "cache.db"))


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """No thread or child process started by a test outlives it (a few seconds' grace for
    abandoned threads, which end once their call returns)."""
    import multiprocessing

    before = _threads()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in _threads() - before
                 if not t.daemon or t.name.startswith("flowdsl")]
        children = multiprocessing.active_children()
        if (not extra and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not children, f"child processes leaked: {children}"
    assert not extra, f"threads leaked: {[t.name for t in extra]}"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async tests run on both anyio backends."""
    return str(request.param)


@pytest.fixture(params=["sequential", "parallel", "pipeline", "conditional"])
def mode(request: pytest.FixtureRequest) -> str:
    """Tests taking ``mode`` run once per mode."""
    return str(request.param)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An OpenTelemetry SDK tracer provider with an in-memory exporter as the global one for
    one test (the API lets a process set it only once, so the test swaps the global and
    monkeypatch restores it); None where the test extra's SDK is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        yield None
        return
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()
