"""Timelines (HTML, PNG, SVG), progress observers and the notebook reprs of results and
plans."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowdsl
from flowdsl import Flow, HistoryStore, tool
from flowdsl._report.timeline import (
    Bar,
    from_history,
    from_result,
    save_timeline,
    timeline_html,
)

calls = {"flaky": 0}


@tool(registry=False, resources={"db": 1})
async def load(x: int) -> int:
    """Load through the db pool."""
    await anyio.sleep(0.03)
    return x


@tool(registry=False, retries=2, backoff=0.0)
async def flaky(x: int) -> int:
    """Fail on the first call."""
    calls["flaky"] += 1
    await anyio.sleep(0.01)
    if calls["flaky"] == 1:
        msg = "first call fails"
        raise ValueError(msg)
    return x


@tool(registry=False)
async def broken(x: int) -> int:
    """Always fail."""
    msg = "<no> & 'never'"
    raise RuntimeError(msg)


def _flow() -> Flow:
    calls["flaky"] = 0
    first = load(1).named("load")
    return Flow("demo", first >> (flaky(first).named("flaky") | broken(2).named("broken")),
                resources={"db": 1})


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """A history store of its own."""
    s = HistoryStore(tmp_path / "h.db")
    yield s
    s.close()


@pytest.fixture
def result(store: Any) -> flowdsl.RunResult:
    """A run with a retried task, a failed task and a pool."""
    return flowdsl.run(_flow(), continue_on_error=True, history=store)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)


def _parse(page: str) -> list[str]:
    p = _Tags()
    p.feed(page)
    p.close()
    return p.tags


class TestModel:
    def test_from_result(self, result: flowdsl.RunResult) -> None:
        """Bars carry statuses, attempts, errors, pool lanes and the critical path."""
        tl = from_result(result)
        bars = {b.id: b for b in tl.bars}
        assert bars["flaky"].retried and bars["flaky"].attempts[0].status == "failed"
        assert bars["broken"].status == "failed" and "never" in (bars["broken"].error or "")
        assert bars["load"].lane == "db" and bars["flaky"].lane == "no pool"
        assert tl.lanes == ["db", "no pool"]
        assert tl.critical_path == ["load", "flaky"] and bars["flaky"].critical

    def test_from_history_with_and_without_plan(self, result: flowdsl.RunResult,
                                                store: Any) -> None:
        """A history run gives the same bars; without a plan its recorded edges give the
        critical path, and a record without edges (an older file) falls back to timings."""
        run = store.get_run(result.run_id)
        tl = from_history(run, result.plan)
        assert tl.critical_path == ["load", "flaky"] and tl.lanes == ["db", "no pool"]
        assert {b.id: len(b.attempts) for b in tl.bars}["flaky"] == 2
        kept = from_history(run)
        assert kept.critical_source == "plan" and kept.critical_path == ["load", "flaky"]
        bare = from_history({**run, "edges": None})
        assert bare.critical_source == "timings" and bare.critical_path[-1] == "flaky"
        assert bare.critical_path[0] == "load"

    def test_recorded_edges_beat_the_timings(self) -> None:
        """x ends right before z starts, but z depends on y: the edges say y -> z, where
        the timings would guess x -> z. A mapped task's children are not path nodes."""
        def task(tid: str, start: float, end: float) -> dict[str, Any]:
            return {"task_id": tid, "tool": "t", "status": "completed", "started_at": start,
                    "ended_at": end, "attempts": []}

        run = {"run_id": "r", "status": "completed", "edges": [["y", "z"], ["z", "m"]],
               "tasks": [task("x", 0.0, 1.0), task("y", 0.0, 0.98), task("z", 1.0, 2.0),
                         task("m", 2.0, 2.1), task("m[0]", 2.0, 2.1), task("m[1]", 2.0, 2.1)]}
        assert from_history({**run, "edges": None}).critical_path[:2] == ["x", "z"]
        tl = from_history(run)
        assert tl.critical_path == ["y", "z", "m"] and tl.critical_source == "plan"
        assert {b.id for b in tl.bars if b.critical} == {"y", "z", "m"}


class TestFiles:
    def test_html_is_self_contained_and_parses(self, result: flowdsl.RunResult,
                                               tmp_path: Path) -> None:
        """The HTML page parses, escapes text, has hover details and loads nothing."""
        path = save_timeline(result, tmp_path / "run.html")
        page = path.read_text()
        tags = _parse(page)
        assert tags[0] == "html" and "script" not in tags and "http" not in page
        assert "&lt;no&gt; &amp;" in page and "<no>" not in page
        assert 'class="bar crit"' in page and "attempts: 2" in page
        assert 'class="lane">pool db<' in page

    @pytest.mark.parametrize("suffix", [".png", ".svg"])
    def test_images(self, result: flowdsl.RunResult, tmp_path: Path, suffix: str) -> None:
        """PNG and SVG timelines are written and non-empty."""
        pytest.importorskip("matplotlib")
        path = save_timeline(result, tmp_path / f"run{suffix}")
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]

    def test_from_a_run_id(self, result: flowdsl.RunResult, store: Any,
                           tmp_path: Path) -> None:
        """A run id is looked up in history; its recorded edges give the critical path."""
        page = save_timeline(result.run_id, tmp_path / "r.html", history=store).read_text()
        assert result.run_id in page and "critical path" in page
        assert "critical chain" not in page

    def test_bad_suffix(self, result: flowdsl.RunResult, tmp_path: Path) -> None:
        """An unknown suffix is refused before anything is written."""
        with pytest.raises(ValueError, match=r"\.html, \.png, \.svg"):
            save_timeline(result, tmp_path / "run.txt")
        assert not (tmp_path / "run.txt").exists()

    def test_no_matplotlib_names_the_extra(self, result: flowdsl.RunResult, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """Without matplotlib, images fail with a message naming flowdsl[plot]."""
        import sys

        monkeypatch.setitem(sys.modules, "matplotlib", None)
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
        with pytest.raises(ImportError, match=r"flowdsl\[plot\]"):
            save_timeline(result, tmp_path / "run.png")
        assert not (tmp_path / "run.png").exists()

    def test_task_that_never_ran(self) -> None:
        """A task without times is listed with its reason instead of a bar."""
        from flowdsl._report.timeline import Timeline

        tl = Timeline("t", "r1", "failed", 1.0, [Bar("x", "x", "upstream_failed", None, None,
                                                     reason="'a' failed")], [])
        assert "upstream_failed: &#x27;a&#x27; failed" in timeline_html(tl)


class TestReprs:
    def test_result_html(self, result: flowdsl.RunResult) -> None:
        """RunResult's HTML repr is a table of tasks with a small timeline."""
        page = result._repr_html_()
        tags = _parse(page)
        assert "table" in tags and page.count("<tr>") == 4
        assert "flaky" in page and 'class="fdt"' in page

    def test_flow_and_plan_bundles(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Flow and Plan bundles hold mermaid and text; SVG only when graphviz is there."""
        from flowdsl._report import render as _render

        monkeypatch.setattr(_render, "graphviz_available", lambda: False)
        bundle = _flow()._repr_mimebundle_()
        assert bundle["text/vnd.mermaid"].startswith("flowchart")
        assert "image/svg+xml" not in bundle and bundle["text/plain"].startswith("<Flow")
        p = _flow().plan()
        assert _render.plan_mimebundle(p)["text/plain"] == repr(p)

    def test_flow_bundle_svg_with_graphviz(self) -> None:
        """With graphviz's dot on PATH the bundle has an SVG."""
        from flowdsl._report import render as _render

        if not _render.graphviz_available():
            pytest.skip("graphviz is not installed")
        assert "<svg" in _flow()._repr_mimebundle_()["image/svg+xml"]


class TestProgress:
    def test_live_progress_draws_and_stops(self) -> None:
        """LiveProgress draws counts and running tasks on a terminal console, then stops."""
        from rich.console import Console

        from flowdsl._report.progress import LiveProgress

        buf = io.StringIO()
        console = Console(file=buf, force_terminal=True, width=100)
        live = LiveProgress(console, refresh_per_second=50)
        result = flowdsl.run(_flow(), continue_on_error=True, history=False,
                             observers=[live])
        text = buf.getvalue()
        assert "demo (parallel)" in text and "/3 done" in text
        assert live._live is None and result.status == "failed"

    def test_progress_picks_nothing_off_terminal(self) -> None:
        """progress() gives no display when output is not a terminal nor a notebook."""
        from rich.console import Console

        from flowdsl._report.progress import progress

        assert progress(console=Console(file=io.StringIO())) is None

    def test_summary_table(self, result: flowdsl.RunResult) -> None:
        """The summary table lists every task with its status and error."""
        from rich.console import Console

        from flowdsl._report.progress import summary_table

        console = Console(file=io.StringIO(), width=140)
        console.print(summary_table(result))
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert "flaky" in text and "RuntimeError" in text and "\x1b" not in text


# -- one palette, waits, long charts, lanes, legends ------------------------------------------


@tool(registry=False, retries=2, backoff=flowdsl.Backoff(initial=0.05))
async def flaky_wait(x: int) -> int:
    """Fail on the first call, then wait 0.05 s before the next."""
    calls["flaky"] += 1
    if calls["flaky"] == 1:
        msg = "first call fails"
        raise ValueError(msg)
    await anyio.sleep(0.01)
    return x


@tool(registry=False)
async def quick(x: int) -> int:
    """Return at once."""
    return x


class TestPalette:
    def test_one_palette_for_every_picture(self) -> None:
        """The timeline colours, the notebook table and the terminal styles all come from
        STATUS_COLORS, which covers every task and run status with distinct colours."""
        from flowdsl._report import progress, render, timeline
        from flowdsl._report.palette import STATUS_COLORS
        from flowdsl._run.result import RunStatus, TaskStatus

        assert timeline.COLORS is STATUS_COLORS
        for s in [*TaskStatus, *RunStatus, "interrupted"]:
            assert str(s) in STATUS_COLORS, s
        assert len(set(STATUS_COLORS.values())) == len(STATUS_COLORS)
        for status, color in STATUS_COLORS.items():
            assert progress._STYLE[status].split()[-1] == color
        r = flowdsl.run(broken(1).named("b"), history=False)
        assert f'color:{STATUS_COLORS["failed"]}' in render.result_html(r)

    def test_no_other_status_colour_table(self) -> None:
        """No module but the palette's own maps a status name to a colour."""
        import re

        root = Path(flowdsl.__file__).parent
        pattern = re.compile(r"[\"']upstream_failed[\"']\s*:\s*[\"'](#|[a-z])")
        owners = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
                  if pattern.search(p.read_text(encoding="utf-8"))]
        assert owners == ["_report/palette.py"]


def _waited_result() -> flowdsl.RunResult:
    calls["flaky"] = 0
    return flowdsl.run(quick(1).named("q") >> flaky_wait(2).named("fw"), history=False)


class TestPictures:
    def test_waits_are_drawn_as_waits_in_html(self) -> None:
        """A retried bar is a pale dashed wait with each attempt painted over it in its own
        status; the attempts do not cover the backoff between them."""
        r = _waited_result()
        bar = next(b for b in from_result(r).bars if b.id == "fw")
        (w_start, w_end), = bar.waits()
        assert w_end - w_start >= 0.04  # the 0.05 s backoff
        page = timeline_html(from_result(r))
        assert 'class="bar waited' in page
        assert 'class="att failed"' in page and 'class="att completed"' in page
        assert "waited between attempts:" in page and "wait between attempts" in page

    def test_waits_are_drawn_as_waits_in_png(self) -> None:
        """In the PNG too: the wait colour spans the bar, attempts cover only their time."""
        pytest.importorskip("matplotlib")
        from matplotlib.colors import to_hex

        from flowdsl._report.palette import STATUS_COLORS, WAIT_COLOR
        from flowdsl._report.timeline import draw

        tl = from_result(_waited_result())
        bar = next(b for b in tl.bars if b.id == "fw")
        ax = draw(tl).axes[0]
        rects = [(to_hex(p.get_facecolor()), p.get_x(), p.get_x() + p.get_width())
                 for p in ax.patches]
        waits = [r for r in rects if r[0] == WAIT_COLOR]
        assert len(waits) == 1 and waits[0][1] == pytest.approx(bar.start)
        done = [r for r in rects if r[0] == STATUS_COLORS["completed"]]
        first_fail = [r for r in rects if r[0] == STATUS_COLORS["failed"]]
        # the failed attempt is drawn where it ran and ends before the next attempt starts
        assert first_fail and first_fail[0][1] == pytest.approx(bar.attempts[0].start)
        assert first_fail[0][2] < bar.waits()[0][1]
        assert any(r[1] >= bar.waits()[0][1] - 1e-6 for r in done)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["completed", "critical path", "failed attempt (retried)",
                          "wait between attempts"]

    def test_long_timelines_keep_an_axis_in_view(self) -> None:
        """Past LONG rows the HTML axis sticks to the top and repeats below; the PNG puts
        tick labels at the top as well; short charts keep one axis."""
        from flowdsl._report.timeline import LONG, Span, Timeline, draw

        def tl(n: int) -> Timeline:
            bars = [Bar(f"t{i}", "t", "completed", i * 0.1, i * 0.1 + 0.1,
                        [Span(1, i * 0.1, i * 0.1 + 0.1, "completed")]) for i in range(n)]
            return Timeline("long", "r1", "completed", n * 0.1, bars, [])

        long_page, short_page = timeline_html(tl(LONG + 15)), timeline_html(tl(5))
        assert long_page.count('class="axis') == 2 and 'class="axis top"' in long_page
        assert "position:sticky" in long_page
        assert short_page.count('class="axis') == 1
        pytest.importorskip("matplotlib")
        ax = draw(tl(LONG + 15)).axes[0]
        assert any(t.label2.get_visible() for t in ax.xaxis.get_major_ticks())
        ax = draw(tl(5)).axes[0]
        assert not any(t.label2.get_visible() for t in ax.xaxis.get_major_ticks())

    def test_pool_lane_labels_are_readable(self, result: flowdsl.RunResult) -> None:
        """Lanes are named "pool X" in bold type of at least 9 points."""
        pytest.importorskip("matplotlib")
        from flowdsl._report.timeline import draw

        ax = draw(from_result(result)).axes[0]
        lane = next(t for t in ax.texts if t.get_text() == "pool db")
        assert lane.get_fontsize() >= 9 and lane.get_fontweight() == "bold"

    def test_legend_lists_only_what_is_shown(self) -> None:
        """A run where everything completed on the first try has two legend entries."""
        from flowdsl._report.timeline import legend_items

        r = flowdsl.run(quick(1).named("a") >> quick(2).named("b"), history=False)
        tl = from_result(r)
        assert [k for k, _ in legend_items(tl)] == ["completed", "critical"]
        page = timeline_html(tl)
        legend = page.split('class="legend"')[1]
        for absent in ("failed", "skipped", "pending", "wait", "attempt"):
            assert absent not in legend

    def test_task_log_lines_in_the_tooltip(self) -> None:
        """Lines a tool logged (logging on) are listed in its bar's details."""
        @tool(registry=False)
        def noisy(x: int) -> int:
            flowdsl.get_logger().info("step done", rows=x)
            return x

        r = flowdsl.run(noisy(7).named("n"), history=False, log=True)
        page = timeline_html(from_result(r))
        assert "log (1 line(s)):" in page and "[info] step done rows=7" in page
        run = {"run_id": "r", "status": "completed", "tasks": [
            {"task_id": "n", "tool": "noisy", "status": "completed", "started_at": 0.0,
             "ended_at": 0.1, "logs": ["plain text line", {"level": "warning",
                                                           "event": "kept", "n": 1}]}]}
        page = timeline_html(from_history(run))
        assert "plain text line" in page and "[warning] kept n=1" in page


def _quadratic_timing_chain(bars: list[Any]) -> list[str]:
    """The chain by its definition, scanning every bar at every step (the former code)."""
    ran = [b for b in bars if b.start is not None and b.end is not None]
    if not ran:
        return []
    slack = 0.02 * max(b.end for b in ran) + 1e-3
    cur = max(ran, key=lambda b: b.end)
    chain = [cur]
    while True:
        before = [b for b in ran if b.end <= cur.start + slack and b is not cur
                  and b not in chain and b.start < cur.start]
        if not before:
            break
        cur = max(before, key=lambda b: b.end)
        chain.append(cur)
    return [b.id for b in reversed(chain)]


class TestTimingChain:
    def test_agrees_with_the_definition(self) -> None:
        """On random bars (ties in ends and starts included, some that never ran) the one-pass
        chain is the one the definition gives."""
        import random

        from flowdsl._report.timeline import Bar, _timing_chain

        rng = random.Random(7)
        for trial in range(300):
            bars = []
            for k in range(rng.randint(0, 30)):
                start = rng.choice([None, *(rng.randint(0, 20) / 4 for _ in range(3))])
                end = None if start is None else start + rng.randint(0, 12) / 4
                bars.append(Bar(f"t{k}", "tool", "completed", start, end))
            assert _timing_chain(bars) == _quadratic_timing_chain(bars), trial

    def test_a_long_chain_is_linear(self) -> None:
        """100,000 tasks one after another: the whole chain, in well under the time the former
        quadratic scan needed for a thousandth of it per step."""
        import time

        from flowdsl._report.timeline import Bar, _timing_chain

        n = 100_000
        bars = [Bar(f"t{k}", "tool", "completed", float(k), k + 1.0) for k in range(n)]
        t0 = time.perf_counter()
        chain = _timing_chain(bars)
        assert time.perf_counter() - t0 < 5.0
        assert chain == [f"t{k}" for k in range(n)]
