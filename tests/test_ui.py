"""The run browser (``flowdsl ui``) over plain HTTP: pages, filters, pagination, the graph
layout, the live partials, security headers and the command."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("starlette", reason="the run browser needs flowdsl[ui]")
pytest.importorskip("uvicorn", reason="the run browser needs flowdsl[ui]")

from ui_support import etl_flow, get, make_history, served  # tests/ is on sys.path

import flowdsl
from flowdsl._report.timeline import COLORS
from flowdsl._report.ui import app as ui_app
from flowdsl._report.ui import create_app
from flowdsl._report.ui.graph import graph_svg, layout
from flowdsl._report.ui.pages import tool_anchor


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("ui") / "history.db"
    return path, make_history(path)


@pytest.fixture
def base(history: tuple[Path, dict[str, Any]]) -> Any:
    with served(create_app(history[0])) as url:
        yield url


def _run_links(body: str) -> list[str]:
    return re.findall(r'class="run-link" href="/runs/([^"]+)"', body)


class TestLayout:
    def test_layers_follow_the_longest_chain(self) -> None:
        """A task's column is the length of the longest chain before it, long edges too."""
        lay = layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("a", "d")])
        assert dict(lay.layer) == {"a": 0, "b": 1, "d": 1, "c": 2}
        assert lay.columns == 3

    def test_rows_follow_the_predecessors(self) -> None:
        """Inside a column, tasks sit in the order of their predecessors' rows."""
        lay = layout(["x", "y", "from_y", "from_x"], [("x", "from_x"), ("y", "from_y")])
        assert lay.row["from_x"] < lay.row["from_y"]

    def test_cycles_unknown_nodes_and_self_loops_do_not_break_it(self) -> None:
        """A record can hold anything: a cycle is parked in a last column, bad edges dropped."""
        lay = layout(["s", "p", "q"], [("s", "p"), ("p", "q"), ("q", "p"), ("s", "s"),
                                       ("s", "ghost"), ("s", "p")])
        assert lay.layer["s"] == 0 and lay.layer["p"] == lay.layer["q"] == 1
        assert lay.edges == (("s", "p"), ("p", "q"), ("q", "p"))

    def test_a_long_chain_is_laid_out_iteratively(self) -> None:
        """5,000 tasks in a chain: no recursion limit, one column each."""
        ids = [f"t{i}" for i in range(5000)]
        lay = layout(ids, itertools.pairwise(ids))
        assert lay.layer["t4999"] == 4999 and lay.rows == 1

    def test_svg_has_one_node_per_task_in_its_status_colour(self) -> None:
        """Each node carries its status class and colour and links to its table row."""
        tasks = [{"task_id": "a<b", "tool": "t", "status": "completed"},
                 {"task_id": "c", "tool": "t", "status": "failed"}]
        svg = graph_svg(tasks, [("a<b", "c")], anchors={"a<b": "task-0", "c": "task-1"})
        assert svg.count('<g class="node completed"') == 1
        assert svg.count('<g class="node failed"') == 1
        assert f'stroke="{COLORS["failed"]}"' in svg
        assert svg.count('class="edge"') == 1
        assert "a&lt;b" in svg and "a<b" not in svg
        assert 'href="#task-1"' in svg

    def test_svg_without_edges_wraps_in_rows(self) -> None:
        """With no edges to lay out by, tasks wrap in rows instead of one tall column."""
        tasks = [{"task_id": f"t{i}", "tool": "t", "status": "completed"} for i in range(13)]
        svg = graph_svg(tasks, [])
        height = int(re.search(r'height="(\d+)"', svg).group(1))
        width = int(re.search(r'width="(\d+)"', svg).group(1))
        assert width > height


    def test_a_deep_flow_is_drawn_top_to_bottom(self) -> None:
        """Too many layers for the page's width: layers become rows, edges run downwards."""
        ids = [f"t{i}" for i in range(12)]
        tasks = [{"task_id": t, "tool": "t", "status": "completed"} for t in ids]
        svg = graph_svg(tasks, list(itertools.pairwise(ids)))
        height = int(re.search(r'height="(\d+)"', svg).group(1))
        width = int(re.search(r'width="(\d+)"', svg).group(1))
        assert height > width
        ys = [int(y) for y in re.findall(r'<rect class="box" x="\d+" y="(\d+)"', svg)]
        assert ys == sorted(ys) and len(set(ys)) == len(ids)


class TestRunsPage:
    def test_newest_first_with_links(self, base: str,
                                     history: tuple[Path, dict[str, Any]]) -> None:
        """Every run is listed, the newest first, each linking to its page."""
        status, headers, body = get(base + "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        ids = history[1]
        assert _run_links(body) == [ids["failed"], *reversed(ids["ok"])]

    @pytest.mark.parametrize(("query", "expect"), [
        ("flow=ok", "ok"), ("status=failed", "failed"), ("flow=etl&status=completed", None)])
    def test_filters(self, base: str, history: tuple[Path, dict[str, Any]], query: str,
                     expect: str | None) -> None:
        """Filtering by flow and status lists exactly the matching runs."""
        _, _, body = get(f"{base}/?{query}")
        ids = history[1]
        want = {"ok": list(reversed(ids["ok"])), "failed": [ids["failed"]], None: []}[expect]
        assert _run_links(body) == want
        if expect is None:
            assert "no run matches these filters" in body

    def test_the_filter_offers_the_flows_in_history(self, base: str) -> None:
        """The flow filter's choices are the flows that have runs."""
        _, _, body = get(base + "/")
        assert '<option value="etl">' in body and '<option value="ok">' in body

    def test_pages(self, history: tuple[Path, dict[str, Any]],
                   monkeypatch: pytest.MonkeyPatch) -> None:
        """Pages of PER_PAGE runs, with newer/older links that keep the filters."""
        monkeypatch.setattr(ui_app, "PER_PAGE", 2)
        ids = history[1]
        with served(create_app(history[0])) as url:
            _, _, first = get(url + "/")
            _, _, second = get(url + "/?page=2")
            _, _, filtered = get(url + "/?flow=ok&page=1")
        assert _run_links(first) == [ids["failed"], ids["ok"][-1]]
        assert 'href="/?page=2" rel="older"' in first and 'rel="newer"' not in first
        assert _run_links(second) == [ids["ok"][0]]
        assert 'href="/" rel="newer"' in second and 'rel="older"' not in second
        assert _run_links(filtered) == list(reversed(ids["ok"]))
        assert 'rel="older"' not in filtered

    @pytest.mark.parametrize("page", ["0", "-1", "two", "1" * 23, "+1", "1.0", "\u0661"])
    def test_bad_page_is_a_400_naming_it(self, base: str, page: str) -> None:
        """A page that is not a whole number from 1 to MAX_PAGE (a 23-digit one included) is
        refused with a message that names it, in the pages and the API."""
        status, _, body = get(f"{base}?{urlencode({'page': page})}")
        assert status == 400 and "expected a whole number from 1 to 1,000,000" in body
        assert html.escape(repr(page)) in body
        status, _, body = get(f"{base}/api/runs?{urlencode({'page': page})}")
        assert status == 400 and json.loads(body)["error"].startswith(f"page={page!r}")

    @pytest.mark.parametrize(("query", "named"), [
        ("status=bogus", "status=&#x27;bogus&#x27;: expected one of running, completed"),
        ("colour=red", "colour=&#x27;red&#x27;: unknown parameter"),
        ("flow=" + "x" * 1001, "not a flow name")])
    def test_any_bad_query_value_is_a_400_naming_it(self, base: str, query: str,
                                                    named: str) -> None:
        """Every query value is checked: an unknown status or parameter is a 400 too."""
        status, _, body = get(f"{base}/?{query}")
        assert status == 400 and named in body

    def test_a_run_page_or_tools_page_refuses_parameters(
            self, base: str, history: tuple[Path, dict[str, Any]]) -> None:
        run_id = history[1]["failed"]
        assert get(f"{base}/runs/{run_id}?page=2")[0] == 400
        assert get(f"{base}/tools?x=1")[0] == 400

    def test_empty_history(self, tmp_path: Path) -> None:
        """A history without runs says how to get some."""
        flowdsl.HistoryStore(tmp_path / "empty.db").close()
        with served(create_app(tmp_path / "empty.db")) as url:
            _, _, body = get(url + "/")
        assert "yet: run a flow with history on" in body

    def test_missing_history_file_is_explained(self, tmp_path: Path) -> None:
        """A path that is no history file gets a page that says so (and creates nothing)."""
        with served(create_app(tmp_path / "nope.db")) as url:
            status, _, body = get(url + "/")
        assert status == 500 and "no history file at" in body
        assert not (tmp_path / "nope.db").exists()


class TestRunPage:
    def test_facts_timeline_graph_and_tasks(self, base: str,
                                           history: tuple[Path, dict[str, Any]]) -> None:
        """The run page shows its status, duration, timeline, graph and task table."""
        run_id = history[1]["failed"]
        status, _, body = get(f"{base}/runs/{run_id}")
        assert status == 200
        assert re.search(r'id="run-status"><span class="badge failed"', body)
        assert "<dt>duration</dt><dd>" in body and "<dd>—</dd>" not in body
        assert 'class="fdt"' in body  # the timeline fragment
        tasks = ["fetch_a", "fetch_b", "parse", "merge", "boom", "publish"]
        assert body.count('<g class="node ') == len(tasks)
        for t in tasks:
            assert f'data-task="{t}"' in body
        assert '<g class="node upstream_failed"' in body

    def test_task_table_has_attempts_errors_and_reasons(
            self, base: str, history: tuple[Path, dict[str, Any]]) -> None:
        """A retried task lists its attempts; failures show the error, skips the reason."""
        body = get(f"{base}/runs/{history[1]['failed']}")[2]
        rows = dict(re.findall(r'data-task="([^"]+)">(.*?)</tr>', body))
        assert "<summary>2</summary>" in rows["parse"]
        assert "#1 <span class=\"badge failed\"" in rows["parse"]
        assert "ValueError: flaky parser" in rows["parse"]
        assert "ValueError: bad row 7 in &lt;report&gt;.csv" in rows["boom"]
        assert "upstream" in rows["publish"] and 'class="why"' in rows["publish"]

    def test_recorded_edges_are_drawn_without_the_flow(
            self, base: str, history: tuple[Path, dict[str, Any]]) -> None:
        """History keeps the run's edges: the graph draws each one, the JSON API gives them,
        and the timeline marks the plan's critical path, with no --flow."""
        plan = flowdsl.plan(etl_flow())
        run = json.loads(get(f"{base}/api/runs/{history[1]['failed']}")[2])
        assert sorted(map(tuple, run["edges"])) == sorted(plan.edges)
        body = get(f"{base}/runs/{history[1]['failed']}")[2]
        assert body.count('class="edge"') == len(plan.edges) > 0
        assert "--flow TARGET" not in body and "critical path</span>" in body

    def test_without_edges_the_page_says_how_to_get_them(self) -> None:
        """A record that keeps no edges (an older file): the graph says so and how to draw
        them."""
        store = _FakeStore()
        store.status = "completed"
        with served(create_app(store)) as url:
            body = get(f"{url}/runs/r1")[2]
        assert 'class="edge"' not in body and "--flow TARGET" in body

    def test_a_known_flow_draws_its_edges(self, history: tuple[Path, dict[str, Any]]) -> None:
        """With the flow's plan, the graph has the plan's edges and no note."""
        plan = flowdsl.plan(etl_flow())
        with served(create_app(history[0], plans={"etl": plan})) as url:
            body = get(f"{url}/runs/{history[1]['failed']}")[2]
        assert body.count('class="edge"') == len(plan.edges) > 0
        assert "--flow TARGET" not in body
        assert "critical path</span>" in body  # the timeline's path comes from the plan

    def test_unknown_run_is_a_404_naming_it(self, base: str) -> None:
        """A run id not in history gets a 404 that names it."""
        status, _, body = get(f"{base}/runs/deadbeef")
        assert status == 404 and "no run &#x27;deadbeef&#x27; in the history" in body
        status, _, body = get(f"{base}/api/runs/deadbeef")
        assert status == 404 and "deadbeef" in json.loads(body)["error"]


class _FakeStore:
    """A store with HistoryStore's query methods: a run in progress whose tasks kept logs."""

    path = "fake.db"

    def __init__(self) -> None:
        self.status = "running"
        self.edges: list[list[str]] | None = None

    def runs(self, limit: int = 20, *, flow: str | None = None,
             status: str | None = None, offset: int = 0) -> list[dict[str, Any]]:
        return [{"run_id": "r1", "flow": "f", "mode": "parallel", "status": self.status,
                 "started_at": 0.0, "ended_at": None, "duration": None, "error_type": None,
                 "error_message": None}][offset:offset + limit]

    def flows(self) -> dict[str, int]:
        return {"f": 1}

    def get_run(self, run_id: str) -> dict[str, Any]:
        task = {"task_id": "t", "tool": "tl", "status": "running", "started_at": 0.1,
                "ended_at": None, "duration": None, "attempts": [], "error_type": None,
                "error_message": None, "reason": None,
                "logs": ["plain <line>", {"level": "warning", "event": "slow", "n": 3}]}
        other = {**task, "task_id": "u", "status": "pending", "logs": [], "started_at": None}
        return {**self.runs()[0], "tasks": [task, other],
                **({"edges": self.edges} if self.edges is not None else {})}

    def tool_stats(self) -> dict[str, Any]:
        return {}


class TestLive:
    def test_partial_is_the_main_content_and_says_it_is_live(self) -> None:
        """While a run is in progress its partial says live; once it ends, not live."""
        store = _FakeStore()
        with served(create_app(store)) as url:
            status, headers, body = get(f"{url}/runs/r1", {"X-Flowdsl-Partial": "1"})
            assert status == 200 and headers["x-flowdsl-live"] == "1"
            assert not body.startswith("<!DOCTYPE") and 'id="run-status"' in body
            full = get(f"{url}/runs/r1")[2]
            assert '<main id="content" data-live="1">' in full
            assert get(url + "/", {"X-Flowdsl-Partial": "1"})[1]["x-flowdsl-live"] == "1"
            store.status = "completed"
            headers = get(f"{url}/runs/r1", {"X-Flowdsl-Partial": "1"})[1]
            assert headers["x-flowdsl-live"] == "0"
            assert headers["cache-control"] == "no-store"

    def test_edges_kept_in_the_record_are_drawn(self) -> None:
        """A history record that keeps the run's edges gets them drawn, with no note."""
        store = _FakeStore()
        store.edges = [["t", "u"]]
        with served(create_app(store)) as url:
            body = get(f"{url}/runs/r1")[2]
        assert body.count('class="edge"') == 1 and "--flow TARGET" not in body

    def test_kept_log_lines_are_shown_escaped(self) -> None:
        """A task's kept log lines (text or structured events) appear under it."""
        with served(create_app(_FakeStore())) as url:
            body = get(f"{url}/runs/r1")[2]
        assert "<summary>2 lines</summary>" in body
        assert "plain &lt;line&gt;" in body and "warning slow n=3" in body


class TestToolsAndApi:
    def test_tools_page_has_each_tools_statistics(
            self, base: str, history: tuple[Path, dict[str, Any]]) -> None:
        """One row per tool, with the counts HistoryStore.tool_stats gives."""
        with flowdsl.HistoryStore(history[0]) as store:  # closed: 3.13 warns on a leaked one
            stats = store.tool_stats()
        body = get(f"{base}/tools")[2]
        rows = dict(re.findall(r'<tr id="([^"]+)">(.*?)</tr>', body))
        assert set(rows) == {tool_anchor(t) for t in stats}
        # Tools are keyed by module-qualified name; "parse" is the short one.
        (parse,) = [st for st in stats.values() if st.name == "parse"]
        cells = re.findall(r"<td class=num>([^<]*)</td>", rows[tool_anchor(parse.tool)])
        assert cells[:5] == [str(parse.count), str(parse.completed), str(parse.failed),
                             str(parse.attempts), str(parse.timeouts)]
        (boom,) = [st.tool for st in stats.values() if st.name == "boom"]
        assert "0%" in rows[tool_anchor(boom)]

    def test_json_api(self, base: str, history: tuple[Path, dict[str, Any]]) -> None:
        """The same data as JSON: runs (filtered), one run, tool statistics."""
        runs = json.loads(get(f"{base}/api/runs?status=failed")[2])
        assert [r["run_id"] for r in runs["runs"]] == [history[1]["failed"]]
        run = json.loads(get(f"{base}/api/runs/{history[1]['failed']}")[2])
        assert run["status"] == "failed" and len(run["tasks"]) == 6
        tools = json.loads(get(f"{base}/api/tools")[2])
        (parse,) = [t for t in tools.values() if t["name"] == "parse"]
        assert parse["attempts"] == 2 and parse["tool"].endswith(".parse")


class TestSafety:
    def test_read_only_and_own_assets(self, base: str) -> None:
        """GET only; the page loads its style and script from the package, nothing remote."""
        assert get(base + "/", method="POST")[0] == 405
        body = get(base + "/")[2]
        assert re.findall(r'(?:src|href)="(/static/[^"]+)"', body) == ["/static/ui.css",
                                                                      "/static/ui.js"]
        assert not re.search(r'(?:src|href)="(?:https?:)?//', body)
        for asset in ("ui.css", "ui.js"):
            status, _, text = get(f"{base}/static/{asset}")
            assert status == 200 and text.strip()
            assert "http://" not in text and "https://" not in text

    def test_security_headers(self, base: str) -> None:
        """Pages may load only their own files, and cannot be framed or sniffed."""
        headers = get(base + "/")[1]
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"

    def test_foreign_host_header_is_refused(self, history: tuple[Path, dict[str, Any]]) -> None:
        """Served on localhost, a request naming another host (DNS rebinding) gets 400."""
        app = create_app(history[0], allowed_hosts=["127.0.0.1", "localhost"])
        with served(app) as url:
            assert get(url + "/")[0] == 200
            assert get(url + "/", {"Host": "evil.example"})[0] == 400


# -- the command --------------------------------------------------------------------------------

def _flowdsl(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-m", "flowdsl", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class TestCommand:
    def test_help_lists_the_options(self) -> None:
        """`flowdsl ui --help` documents every option."""
        out, _ = _flowdsl("ui", "--help").communicate(timeout=60)
        for opt in ("--history", "--host", "--port", "--no-browser", "--flow"):
            assert opt in out

    def test_missing_history_file_exits_2(self, tmp_path: Path) -> None:
        """A history path that is no file is a usage error naming it."""
        proc = _flowdsl("ui", "--history", str(tmp_path / "none.db"), "--no-browser")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "no history file at" in err and "none.db" in err

    def test_serves_until_interrupted(self, history: tuple[Path, dict[str, Any]]) -> None:
        """`flowdsl ui --port 0 --no-browser` prints its address, serves, and stops on Ctrl-C."""
        proc = _flowdsl("ui", "--history", str(history[0]), "--port", "0", "--no-browser")
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            url = re.search(r"http://127\.0\.0\.1:\d+/", line)
            assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
            status, _, body = get(url.group(0))
            assert status == 200 and history[1]["failed"] in body
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        assert proc.returncode == 0

    def test_port_in_use_exits_2(self, history: tuple[Path, dict[str, Any]]) -> None:
        """A port that is taken is a usage error that says what to do."""
        from flowdsl._report.ui.server import bind

        sock = bind("127.0.0.1", 0)
        try:
            port = sock.getsockname()[1]
            proc = _flowdsl("ui", "--history", str(history[0]), "--port", str(port),
                            "--no-browser")
            _, err = proc.communicate(timeout=60)
        finally:
            sock.close()
        assert proc.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in err
        assert "--port" in err


def test_a_plan_of_another_version_of_the_flow_is_not_used(
        history: tuple[Path, dict[str, Any]]) -> None:
    """A plan that lacks some of the run's tasks would draw wrong edges: it is ignored."""

    from ui_support import fetch

    other = flowdsl.plan(flowdsl.Flow("etl", fetch("z").named("only_this")))
    with served(create_app(history[0], plans={"etl": other})) as url:
        body = get(f"{url}/runs/{history[1]['failed']}")[2]
    # the run's own recorded edges are drawn, not the other version's (it has none)
    assert body.count('class="edge"') == len(flowdsl.plan(etl_flow()).edges) > 0
    assert "critical chain" not in body
    store = _FakeStore()  # a record without edges: nothing to draw, timings for the path
    with served(create_app(store, plans={"f": other})) as url:
        body = get(f"{url}/runs/r1")[2]
    assert "--flow TARGET" in body and 'class="edge"' not in body
