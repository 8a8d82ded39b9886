"""The run browser in a real browser: headless Chromium driven by selenium loads the runs
page, follows a link to a run, filters, and watches a running run turn completed.

They need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and skip,
saying so, only where no such browser is installed.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the run browser needs flowdsl[ui]")
pytest.importorskip("uvicorn", reason="the run browser needs flowdsl[ui]")
pytest.importorskip("selenium", reason="the browser tests need selenium (the test extra)")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from ui_support import make_history, served

import flowdsl
from flowdsl import tool
from flowdsl._report.ui import create_app

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def _find(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser, chromedriver = _find(_BROWSERS), _find(_DRIVERS)
    if browser is None or chromedriver is None:
        pytest.skip("no headless Chromium here: apt-get install chromium chromium-driver "
                    "(as .ci/run does) to run the browser tests")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=Service(chromedriver))
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("ui_browser") / "history.db"
    return path, make_history(path)


def _wait(drv: Any, cond: Any, timeout: float = 20.0) -> Any:
    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(cond)


def _js(drv: Any, script: str) -> Any:
    """Read the page in one script call: the live view may swap the elements at any moment,
    so element handles held across calls can go stale."""
    return drv.execute_script(script)


_STATUS = "return document.getElementById('run-status').textContent"


def test_runs_page_links_to_a_run(driver: Any, history: tuple[Path, dict[str, Any]]) -> None:
    """The runs page lists every run; following the failed run's link opens its page, with
    the graph and a row per task."""
    path, ids = history
    with served(create_app(path)) as url:
        driver.get(url + "/")
        assert driver.title == "Runs · flowdsl"
        links = driver.find_elements(By.CSS_SELECTOR, "a.run-link")
        assert [a.text for a in links] == [ids["failed"], *reversed(ids["ok"])]
        links[0].click()
        _wait(driver, lambda d: d.current_url.endswith("/runs/" + ids["failed"]))
        assert driver.find_element(By.ID, "run-status").text == "failed"
        nodes = driver.find_elements(By.CSS_SELECTOR, "svg.graph g.node")
        rows = driver.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
        assert len(nodes) == len(rows) == 6
        # the style sheet from the package applied: the header bar is dark
        bg = driver.find_element(By.TAG_NAME, "header").value_of_css_property(
            "background-color")
        assert bg in ("rgba(29, 36, 51, 1)", "rgb(29, 36, 51)")
        # a graph node links to its row in the task table
        driver.find_element(By.CSS_SELECTOR, 'svg.graph a g[data-task="boom"]').click()
        _wait(driver, lambda d: d.execute_script("return location.hash") != "")
        target = driver.execute_script("return document.querySelector(':target').dataset.task")
        assert target == "boom"


def test_status_filter_submits_on_change(driver: Any,
                                         history: tuple[Path, dict[str, Any]]) -> None:
    """Picking a status in the filter reloads the list with only those runs."""
    path, ids = history
    with served(create_app(path)) as url:
        driver.get(url + "/")
        Select(driver.find_element(By.NAME, "status")).select_by_value("failed")
        _wait(driver, lambda d: "status=failed" in d.current_url)
        links = driver.find_elements(By.CSS_SELECTOR, "a.run-link")
        assert [a.text for a in links] == [ids["failed"]]


_gate = threading.Event()


@tool
def slow_step(x: int) -> int:
    if not _gate.wait(30):
        msg = "the test never opened the gate"
        raise TimeoutError(msg)
    return x + 1


@tool
def first_step() -> int:
    return 1


def test_a_running_run_turns_completed(driver: Any, tmp_path: Path) -> None:
    """A run page opened while the run is in progress shows it running, then completed,
    without a reload (the page polls and swaps its content)."""
    path = tmp_path / "live.db"
    first = first_step()
    flow = flowdsl.Flow("live", first >> slow_step(first).named("slow"))
    _gate.clear()
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(flowdsl.run(flow, history=path)),
                              name="ui-test-run")
    runner.start()
    try:
        store = flowdsl.HistoryStore(path)
        try:
            deadline = time.monotonic() + 20
            while not (running := store.runs(1, status="running")):
                assert time.monotonic() < deadline, "the run never showed up as running"
                time.sleep(0.05)
        finally:
            store.close()
        run_id = running[0]["run_id"]
        with served(create_app(path)) as url:
            driver.get(f"{url}/runs/{run_id}")
            assert _js(driver, _STATUS) == "running"
            driver.execute_script("window.__sameDocument = true")
            # the slow task's row appears as running once the writer flushes it
            _wait(driver, lambda d: _js(
                d, "return !!document.querySelector('tr.task.running[data-task=\"slow\"]')"))
            _gate.set()
            _wait(driver, lambda d: _js(d, _STATUS) == "completed")
            assert _js(driver, "return window.__sameDocument") is True
            assert _js(driver, "return !!document.querySelector("
                               "'tr.task.completed[data-task=\"slow\"]')")
            # once the run is over the page stops polling
            _wait(driver, lambda d: _js(
                d, "return document.getElementById('content').dataset.live") == "0")
    finally:
        _gate.set()
        runner.join(30)
    assert results and results[0].status == "completed"


# -- the live view, the read-only guarantees -------------------------------------------------------

_TITLE_DUR = r"\(([\d.]+)s\)"


def test_new_runs_appear_and_running_bars_grow(driver: Any, tmp_path: Path) -> None:
    """The runs page, left open, shows a run that starts after it loaded (no reload); the
    run's page shows the running task's bar growing, its elapsed time moving, and the task
    not started yet in the graph."""
    import re

    path = tmp_path / "grow.db"
    flowdsl.run(flowdsl.Flow("before", first_step()), history=path)
    first = first_step()
    flow = flowdsl.Flow("grow", first >> slow_step(first).named("slow")
                        >> slow_step(2).named("later"))
    _gate.clear()
    runner = threading.Thread(target=lambda: flowdsl.run(flow, history=path), name="ui-grow")
    try:
        with served(create_app(path)) as url:
            driver.get(url + "/")
            driver.execute_script("window.__sameDocument = true")
            assert len(driver.find_elements(By.CSS_SELECTOR, "a.run-link")) == 1
            runner.start()
            _wait(driver, lambda d: _js(d, "return document.querySelectorAll('a.run-link')"
                                           ".length") == 2)
            assert _js(driver, "return window.__sameDocument") is True
            href = _js(driver, "return document.querySelector('a.run-link').href")
            driver.get(href)
            _wait(driver, lambda d: _js(
                d, "return !!document.querySelector('tr.task.running[data-task=\"slow\"]')"))
            # the task after it is drawn before it starts
            assert _js(driver, "return document.querySelector("
                               "'svg.graph g.node.pending[data-task=\"later\"]') !== null")
            bar = ("var r = [...document.querySelectorAll('.fdt .row')].find("
                   "x => x.querySelector('.name').title === 'slow');"
                   "var b = r && r.querySelector('.bar');"
                   "return b ? [b.getBoundingClientRect().width, b.title,"
                   " document.getElementById('elapsed').textContent] : null")
            samples = []
            for _ in range(8):
                found = _js(driver, bar)
                if found:
                    samples.append(found)
                time.sleep(0.5)
            durations = [float(re.search(_TITLE_DUR, s[1]).group(1)) for s in samples]
            assert len(durations) >= 6 and durations == sorted(durations)
            assert durations[-1] - durations[0] > 1.5, durations
            widths = [s[0] for s in samples]
            assert any(b > a for a, b in itertools.pairwise(widths)), widths
            assert len({s[2] for s in samples}) >= 3  # the elapsed time moves
            _gate.set()
            _wait(driver, lambda d: _js(d, _STATUS) == "completed")
    finally:
        _gate.set()
        if runner.is_alive() or runner.ident is not None:
            runner.join(30)


def test_a_killed_run_shows_interrupted_within_5s(driver: Any, tmp_path: Path) -> None:
    """`kill -9` of the process writing a run: its open page turns interrupted within 5 s,
    saying why, and stops polling."""
    from ui_support import start_victim

    path = tmp_path / "killed.db"
    proc, run_id = start_victim(tmp_path, path)
    try:
        with served(create_app(path)) as url:
            driver.get(f"{url}/runs/{run_id}")
            assert _js(driver, _STATUS) == "running"
            proc.kill()
            proc.wait(30)
            killed = time.monotonic()
            _wait(driver, lambda d: _js(d, _STATUS) == "interrupted", timeout=10)
            assert time.monotonic() - killed < 5.0
            assert "is gone" in driver.find_element(By.CSS_SELECTOR, "dl.facts").text
            _wait(driver, lambda d: _js(
                d, "return document.getElementById('content').dataset.live") == "0")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


_CONTRAST = """
function lum(c) {
  var m = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map(function (v) {
    v = v / 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2];
}
return [...document.querySelectorAll('.badge')].map(function (b) {
  var s = getComputedStyle(b), a = lum(s.color), c = lum(s.backgroundColor);
  return [b.textContent, (Math.max(a, c) + 0.05) / (Math.min(a, c) + 0.05), s.opacity];
});
"""


def _styled(drv: Any) -> None:
    """Wait until the package's style sheet applies (the header turns dark)."""
    _wait(drv, lambda d: _js(d, "return getComputedStyle(document.querySelector('header'))"
                                ".backgroundColor") in ("rgb(29, 36, 51)", "rgba(29, 36, 51, 1)"))


class _EveryStatus:
    """A run with a task in each status the palette knows."""

    path = "every-status.db"

    def runs(self, limit: int = 20, *, flow: str | None = None, status: str | None = None,
             offset: int = 0) -> list[dict[str, Any]]:
        from flowdsl._report.timeline import COLORS

        return [{"run_id": f"r-{s}", "flow": "f", "mode": "parallel", "status": s,
                 "started_at": 1.7e9, "ended_at": None, "duration": 1.0,
                 "error_type": "ValueError" if s == "failed" else None,
                 "error_message": "a long message " * 20 if s == "failed" else None}
                for s in COLORS][offset:offset + limit]

    def flows(self) -> dict[str, int]:
        return {"f": 1}

    def get_run(self, run_id: str) -> dict[str, Any]:
        from flowdsl._report.timeline import COLORS

        tasks = [{"task_id": s, "tool": "t", "status": s, "started_at": 0.0, "ended_at": 1.0,
                  "duration": 1.0, "attempts": [], "error_type": None, "error_message": None,
                  "reason": None, "logs": []} for s in COLORS]
        return {**self.runs(1)[0], "status": "completed", "tasks": tasks}

    def tool_stats(self) -> dict[str, Any]:
        return {}


def test_badges_contrast_and_the_date_column_at_1400px(driver: Any) -> None:
    """Every badge, as the browser paints it, reads at >= 4.5:1 (WCAG AA), and stays
    opaque; at 1400 px the start date fits on one line beside long error messages."""
    driver.set_window_size(1400, 1000)
    try:
        with served(create_app(_EveryStatus())) as url:
            driver.get(url + "/runs/r-completed")
            _styled(driver)
            measured = _js(driver, _CONTRAST)
            assert len(measured) >= 12
            for text, ratio, opacity in measured:
                assert ratio >= 4.5, (text, ratio)
                assert opacity == "1", text
            driver.get(url + "/")
            _styled(driver)
            measured = _js(driver, _CONTRAST)
            assert measured and min(r for _, r, _ in measured) >= 4.5
            cells = _js(driver, "return [...document.querySelectorAll('td.when')].map(function"
                                " (td) { var s = getComputedStyle(td); return [td.textContent,"
                                " td.getBoundingClientRect().height, parseFloat(s.lineHeight),"
                                " parseFloat(s.paddingTop) + parseFloat(s.paddingBottom),"
                                " td.scrollWidth <= td.clientWidth]; })")
            assert cells
            for text, height, line, pad, fits in cells:
                assert height - pad < 1.5 * line and fits, (text, height, line)
    finally:
        driver.set_window_size(1280, 1000)


def test_browsing_every_link_leaves_the_file_as_it_was(
        driver: Any, history: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A reader following every link the pages offer (runs, filters, pagers, tools, task
    anchors) changes neither the history file's bytes nor its mode."""
    import hashlib
    import shutil
    from urllib.parse import urldefrag

    from flowdsl._record.history import close_cached

    close_cached()
    path = tmp_path / "browse.db"
    shutil.copyfile(history[0], path)

    def digest() -> tuple[str, int]:
        return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode

    before = digest()
    with served(create_app(path)) as url:
        todo, seen = [url + "/"], set()
        while todo and len(seen) < 40:
            page_url = todo.pop()
            if page_url in seen:
                continue
            seen.add(page_url)
            driver.get(page_url)
            assert "500" not in driver.title and driver.title != "Error · flowdsl", page_url
            for href in _js(driver, "return [...document.querySelectorAll('a[href]')].map("
                                    "a => new URL(a.getAttribute('href'), location.href)"
                                    ".href)"):
                target = urldefrag(href)[0]
                if target.startswith(url) and "/static/" not in target:
                    todo.append(target)
            # the filters: every option of each, as picking it would ask
            todo += [f"{url}/?{q}" for q in _js(driver, "return [...document.querySelectorAll("
                                                        "'form.filters option')].filter("
                                                        "o => o.value).map(o => o.parentNode"
                                                        ".name + '=' + encodeURIComponent("
                                                        "o.value))")]
        assert len(seen) >= 15
    assert digest() == before


def test_a_read_only_mount_in_the_browser(driver: Any, history: tuple[Path, dict[str, Any]],
                                          tmp_path: Path) -> None:
    """Served from a real read-only bind mount: the pages say they read a snapshot copy,
    and show the runs, those still in the log too."""
    from ui_support import can_mount_read_only, live_wal_copy, served_read_only

    from flowdsl._record.history import close_cached

    close_cached()
    folder = tmp_path / "ro"
    in_log = live_wal_copy(history[0], folder)
    why = can_mount_read_only(folder)
    if why is not None:
        pytest.skip(why)
    with served_read_only(folder) as url:
        driver.get(url + "/")
        assert "snapshot copy" in driver.find_element(By.ID, "snapshot").text
        links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.run-link")]
        assert in_log in links and history[1]["failed"] in links
        driver.find_element(By.LINK_TEXT, history[1]["failed"]).click()
        _wait(driver, lambda d: _js(d, _STATUS) == "failed")
