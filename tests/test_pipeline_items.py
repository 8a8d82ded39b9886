"""Pipelines over items recorded per stage x item: the result, history, statistics, timelines,
the run browser and live progress each see one record per stage and item."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import flowdsl
from flowdsl import HistoryStore, tool
from flowdsl._record.history import SCHEMA_VERSION
from flowdsl._report.progress import _State
from flowdsl._report.timeline import from_history, from_result, timeline_html

NAP = 0.05
N = 5


@tool
def first(x: int) -> int:
    time.sleep(NAP)
    return x + 1


@tool
def second(x: int) -> int:
    time.sleep(NAP)
    return x * 10


@tool
def picky(x: int) -> int:
    if x == 2:
        msg = f"item {x} is bad"
        raise ValueError(msg)
    return x


def two_stages() -> Any:
    return first.stage() >> second.stage()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("items") / "history.db"
    with HistoryStore(path) as store:
        r = flowdsl.run(flowdsl.Flow("items", two_stages()), mode="pipeline",
                        items=range(N), history=store)
    assert r.status == "completed" and r.output == [(i + 1) * 10 for i in range(N)]
    return path, r


class TestResult:
    def test_each_stage_keeps_a_record_per_item(self, recorded: tuple[Path, Any]) -> None:
        """5 items through 2 stages: 10 per-item records, each with its own call, under a
        summary whose status and span are true."""
        _, r = recorded
        assert list(r.tasks) == ["first", "second"]
        per_item = [rec for s in r.tasks.values() for rec in s.items or ()]
        assert len(per_item) == 2 * N
        for stage in r.tasks.values():
            assert stage.status == "completed" and stage.item is None
            assert [rec.item for rec in stage.items] == list(range(N))
            for rec in stage.items:
                assert rec.id == stage.id and rec.status == "completed" and rec.error is None
                assert len(rec.attempts) == 1 and rec.items is None
                assert rec.duration is not None and NAP * 0.9 <= rec.duration < 10 * NAP
            assert stage.started_at == stage.items[0].started_at
            assert stage.ended_at == stage.items[-1].ended_at

    def test_stages_overlap_item_by_item(self, recorded: tuple[Path, Any]) -> None:
        """The assembly line: item i leaves stage 1 before stage 2 takes it, and stage 2
        works on item 0 while stage 1 is still on later items."""
        _, r = recorded
        a, b = r.tasks["first"].items, r.tasks["second"].items
        for i in range(N):
            assert a[i].ended_at <= b[i].started_at
            if i:
                assert a[i - 1].ended_at <= a[i].started_at
        assert b[0].started_at < a[N - 1].ended_at
        # about N + S - 1 stage-times; one after another would take N x S
        assert r.duration < 2 * N * NAP

    def test_to_dict_carries_the_items(self, recorded: tuple[Path, Any]) -> None:
        d = recorded[1].to_dict()
        items = d["tasks"]["second"]["items"]
        assert [x["item"] for x in items] == list(range(N))
        assert all(x["status"] == "completed" for x in items)

    def test_without_items_nothing_changes(self) -> None:
        """No items: no per-item records, the records as before."""
        r = flowdsl.run(two_stages(), mode="pipeline", input=1)
        assert r.output == 20
        for rec in r.tasks.values():
            assert rec.items is None and rec.item is None
            assert "items" not in rec.to_dict() and "item" not in rec.to_dict()


class TestHistory:
    def test_round_trip(self, recorded: tuple[Path, Any]) -> None:
        """Each stage x item is a row ``stage@i`` with its item, times, status and calls;
        the stage's own row says how many items it spans and holds no call."""
        path, r = recorded
        with HistoryStore(path) as store:
            run = store.get_run(r.run_id)
        rows = {t["task_id"]: t for t in run["tasks"]}
        assert len(rows) == 2 * N + 2
        for sid, stage in r.tasks.items():
            assert rows[sid]["items"] == N and rows[sid]["item"] is None
            assert rows[sid]["attempts"] == [] and rows[sid]["status"] == "completed"
            for rec in stage.items:
                row = rows[f"{sid}@{rec.item}"]
                assert row["item"] == rec.item and row["items"] is None
                assert row["status"] == "completed" and row["qualname"].endswith(f".{sid}")
                assert (row["started_at"], row["ended_at"]) == (rec.started_at, rec.ended_at)
                assert len(row["attempts"]) == 1

    def test_statistics_count_a_call_per_item(self, recorded: tuple[Path, Any]) -> None:
        """Tool statistics count 5 calls of each tool, each a stage-time long; a stage's
        expected duration is the time of one item."""
        path, r = recorded
        with HistoryStore(path) as store:
            stats = store.tool_stats()
            durations = store.durations(r.plan)
        for name in ("first", "second"):
            (s,) = [v for k, v in stats.items() if k.endswith(f".{name}")]
            assert (s.count, s.completed, s.attempts, s.failed) == (N, N, N, 0)
            assert s.max is not None and s.max < 10 * NAP
            assert s.p50 is not None and NAP * 0.9 <= s.p50 < 5 * NAP
            assert NAP * 0.9 <= durations[name] < 5 * NAP

    def test_a_version_4_file_is_migrated(self, tmp_path: Path) -> None:
        """A file of schema 4 (no item columns) opens at the current version, its old rows
        read back with neither, and a new pipeline run records its items."""
        path = tmp_path / "v4.db"
        with HistoryStore(path) as store:
            old = flowdsl.run(two_stages(), mode="pipeline", input=1, history=store)
        conn = sqlite3.connect(path)
        conn.execute("ALTER TABLE tasks DROP COLUMN item")
        conn.execute("ALTER TABLE tasks DROP COLUMN items")
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
        conn.close()
        with HistoryStore(path) as store:
            assert store._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION == 6
            assert {t["item"] for t in store.get_run(old.run_id)["tasks"]} == {None}
            r = flowdsl.run(two_stages(), mode="pipeline", items=[1, 2], history=store)
            ids = {t["task_id"] for t in store.get_run(r.run_id)["tasks"]}
        assert ids == {"first", "second", "first@0", "first@1", "second@0", "second@1"}


class TestTimeline:
    def _check(self, tl: Any) -> None:
        items = [b for b in tl.rows() if b.item is not None]
        assert len(items) == 2 * N
        ran = [b for b in tl.bars if b.start is not None]
        # no empty head: work starts at once, and some bar covers every moment of the run
        assert min(b.start for b in ran) < NAP
        assert min(b.start for b in items) < NAP
        ids = [b.id for b in tl.rows()]
        assert ids == ["first", *(f"first@{i}" for i in range(N)),
                       "second", *(f"second@{i}" for i in range(N))]
        html = timeline_html(tl)
        assert html.count("data-item=") == 2 * N
        assert len(re.findall(r'class="bar[^"]* stage"', html)) == 2  # drawn pale

    def test_from_result(self, recorded: tuple[Path, Any]) -> None:
        tl = from_result(recorded[1])
        self._check(tl)
        stage = next(b for b in tl.bars if b.id == "first")
        assert stage.items == N and stage.attempts == []  # its calls are its items'

    def test_from_history(self, recorded: tuple[Path, Any]) -> None:
        path, r = recorded
        with HistoryStore(path) as store:
            run = store.get_run(r.run_id)
        self._check(from_history(run, r.plan))
        self._check(from_history(run))  # edges only
        assert from_history(run).critical_path == ["first", "second"]

    def test_image(self, recorded: tuple[Path, Any], tmp_path: Path) -> None:
        pytest.importorskip("matplotlib")
        from flowdsl._report.timeline import draw

        fig = draw(from_result(recorded[1]))
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels.count("first@0") == 1 and len(labels) == 2 * N + 2


class TestBrowser:
    def test_run_page_draws_a_bar_per_item(self, recorded: tuple[Path, Any]) -> None:
        pytest.importorskip("starlette", reason="the run browser needs flowdsl[ui]")
        pytest.importorskip("uvicorn", reason="the run browser needs flowdsl[ui]")
        from ui_support import get, served  # tests/ is on sys.path

        from flowdsl._report.ui import create_app

        path, r = recorded
        with served(create_app(path)) as base:
            status, _, body = get(f"{base}/runs/{r.run_id}")
        assert status == 200
        assert body.count("data-item=") == 2 * N
        assert f"{N} items of first" in body and "map children" not in body
        # the items are rows of their stage in the task table, not stray tasks
        assert body.count('class="task child ') == 2 * N


    def test_a_live_run_shows_its_stages_running(self, recorded: tuple[Path, Any]) -> None:
        """While the run goes on, history holds its items' rows but not yet its stages'
        (written at the end): the page shows each stage running over the items so far,
        the items grouped under it."""
        from flowdsl._report.ui.pages import run_body

        path, r = recorded
        with HistoryStore(path) as store:
            run = store.get_run(r.run_id)
        run["status"] = "running"
        run["tasks"] = [t for t in run["tasks"]
                        if t["items"] is None and t["task_id"] != "second@4"]
        page = run_body(run, plan=r.plan, now=run["started_at"] + 1.0)
        assert page.live and page.body.count("data-item=") == 2 * N - 1
        assert f"{N} items of first" in page.body and f"{N - 1} items of second" in page.body
        assert "in progress: 4 item(s) recorded so far" in page.body
        stage_rows = re.findall(r'<tr id="task-\d+" class="task (\w+)" data-task="(\w+)"',
                                page.body)
        assert sorted(stage_rows) == [("running", "first"), ("running", "second")]


class TestFailure:
    def test_a_failing_item_has_its_own_record(self, tmp_path: Path) -> None:
        """Item 2 fails in the first stage: its record (and only its) is failed with the
        error; the next stage's item 2 never ran; statistics count one failure."""
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(picky.stage() >> second.stage(), mode="pipeline", items=range(4),
                            history=store, continue_on_error=True)
            rows = {t["task_id"]: t for t in store.get_run(r.run_id)["tasks"]}
            (stats,) = [v for k, v in store.tool_stats().items() if k.endswith(".picky")]
        assert r.status == "failed"
        stage = r.tasks["picky"]
        assert stage.status == "failed" and stage.error is not None
        assert [x.status.value for x in stage.items] == [
            "completed", "completed", "failed", "completed"]
        bad = stage.items[2]
        assert bad.item == 2 and bad.error is not None and bad.error.type == "ValueError"
        assert "item 2 is bad" in bad.error.message and len(bad.attempts) == 1
        nxt = {x.item: x.status.value for x in r.tasks["second"].items}
        assert nxt[2] == "upstream_failed" and nxt[3] == "completed"
        assert rows["picky@2"]["status"] == "failed"
        assert rows["picky@2"]["error_type"] == "ValueError"
        assert rows["second@2"]["status"] == "upstream_failed"
        assert (stats.count, stats.completed, stats.failed, stats.attempts) == (4, 3, 1, 4)


class TestProgress:
    def test_live_progress_counts_stage_items(self) -> None:
        """The live display counts each stage x item: 10 done of 10 for 5 items x 2."""
        state = _State()
        r = flowdsl.run(two_stages(), mode="pipeline", items=range(N), observers=[state])
        assert r.status == "completed"
        assert (len(state.finished), state.total, state.items) == (2 * N, 2 * N, N)
        assert not state.running


class TestManyItems:
    def test_a_result_keeps_a_bounded_sample_history_keeps_all(self, tmp_path: Path) -> None:
        """Over many items the result keeps the first MAX_KEPT_ITEMS records per stage and
        every item that did not complete (memory stays flat, PL1), and counts them all;
        history writes every item and counts every call."""
        from flowdsl._run.result import MAX_KEPT_ITEMS

        n = MAX_KEPT_ITEMS + 36
        with HistoryStore(tmp_path / "h.db") as store:
            r = flowdsl.run(picky.stage(), mode="pipeline", items=range(n), history=store,
                            continue_on_error=True)
            rows = store.get_run(r.run_id)["tasks"]
            (stats,) = [v for k, v in store.tool_stats().items() if k.endswith(".picky")]
        stage = r.tasks["picky"]
        assert stage.item_count == n and stage.to_dict()["item_count"] == n
        assert [x.item for x in stage.items] == list(range(MAX_KEPT_ITEMS))
        assert stage.items[2].status == "failed"
        assert len([t for t in rows if t["item"] is not None]) == n
        assert [t["items"] for t in rows if t["items"] is not None] == [n]
        assert (stats.count, stats.attempts, stats.failed) == (n, n, 1)
        tl = from_result(r)
        assert len([b for b in tl.bars if b.item is not None]) == MAX_KEPT_ITEMS
        (bar,) = [b for b in tl.bars if b.items is not None]
        assert bar.items == n and f"{MAX_KEPT_ITEMS} of its {n} items drawn" in (bar.reason or "")

    def test_a_late_failure_is_kept(self) -> None:
        """An item that fails past the kept sample still has its record in the result."""
        from flowdsl._run.result import MAX_KEPT_ITEMS

        @tool(registry=False)
        def late(x: int) -> int:
            if x == MAX_KEPT_ITEMS + 5:
                msg = f"item {x} is bad"
                raise ValueError(msg)
            return x

        r = flowdsl.run(late.stage(), mode="pipeline", items=range(MAX_KEPT_ITEMS + 10),
                        continue_on_error=True)
        items = r.tasks["late"].items
        assert len(items) == MAX_KEPT_ITEMS + 1
        assert items[-1].item == MAX_KEPT_ITEMS + 5 and items[-1].status == "failed"
