"""Make docs/img/ui_run.png (the run browser's page of a finished reference-workflow run) and
docs/img/ui_live.png (the same flow's page while it runs: growing bars, elapsed time, the tasks
not started yet), taken by headless Chromium (``apt-get install chromium chromium-driver``;
``pip install selenium``).

    python docs/img/make_ui_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import uvicorn  # noqa: E402
from reference_workflow import POOLS, reference_flow  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

import flowdsl  # noqa: E402
from flowdsl._report.ui import create_app  # noqa: E402
from flowdsl._report.ui.server import bind, url_of  # noqa: E402


def main() -> None:
    db = Path(tempfile.mkdtemp()) / "history.db"
    for mode in ("sequential", "parallel"):
        flowdsl.run(reference_flow(0.3), mode=mode, resources=POOLS, history=db)
    run_id = flowdsl.run(reference_flow(0.3), resources=POOLS, history=db).run_id
    app = create_app(db, plans={"reference": flowdsl.plan(reference_flow(0.3))})
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    def shoot(name: str) -> None:
        # the facts, timeline, graph and the first rows of the task table
        height = driver.execute_script(
            "return document.querySelector('table.tasks tbody tr:nth-child(4)')"
            ".getBoundingClientRect().bottom + 8")
        # the viewport is the window less the browser's frame: size it exactly
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.3)
        out = ROOT / "docs" / "img" / name
        driver.save_screenshot(str(out))
        print(f"wrote {out} ({height} px tall)")

    try:
        driver.get(f"{url_of(sock)}runs/{run_id}")
        shoot("ui_run.png")
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        # a run in progress, caught part-way: its page polls and redraws every second
        live = threading.Thread(target=flowdsl.run, args=(reference_flow(5.0),),
                                kwargs={"resources": POOLS, "history": db})
        live.start()
        time.sleep(2.6)
        driver.get(url_of(sock))
        driver.find_element("css selector", "a.run-link").click()
        time.sleep(1.5)
        shoot("ui_live.png")
        live.join()
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    main()
