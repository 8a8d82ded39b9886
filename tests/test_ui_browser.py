"""The run browser in a real browser: headless Chromium driven by selenium loads the runs
page, follows a link to a run, filters, and watches a running run turn completed.

They need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and skip,
saying so, only where no such browser is installed.
"""

from __future__ import annotations

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
