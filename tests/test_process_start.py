"""How the process executor starts its workers: forked, also once the run has threads.

Each test runs a fresh interpreter (the fork helper is started once per process, while it
has a single thread), with tools in a module written next to the script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOOLS = '''
import os, signal, sys, time
from flowdsl import tool

MARK = "imported"  # the parent changes it at run time: only a forked worker sees that

@tool(executor="process", registry=False)
def probe(i: int) -> dict:
    return {"pid": os.getpid(), "mark": MARK, "main": sys.modules["__main__"].__name__}

@tool(executor="process", registry=False)
def where(key: str) -> dict:
    return {"env": os.environ.get(key), "cwd": os.getcwd(), "path": sys.path[0]}

@tool(executor="process", registry=False)
def die(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)
'''

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")]


def _script(tmp_path: Path, code: str, timeout: float = 60) -> list[Any]:
    (tmp_path / "ptools.py").write_text(TOOLS)
    (tmp_path / "main.py").write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
           "FLOWDSL_HISTORY": str(tmp_path / "history.db")}
    proc = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_default_history_run_forks_workers(tmp_path: Path) -> None:
    """Issue 15: a run with the default history (its writer thread alive) still forks its
    workers: they see the parent's run-time state, never re-import the main script (which
    here has no ``__main__`` guard), and the run prints its line once."""
    lines = _script(tmp_path, """
        import json
        import flowdsl, ptools
        ptools.MARK = "set by the parent"
        flow = flowdsl.parallel(*(ptools.probe(i).named(f"p{i}") for i in range(4)))
        for _ in range(2):  # the second run starts with the first run's threads gone or not
            r = flowdsl.run(flow)
            assert r.ok, r.error
            print(json.dumps([r.outputs[f"p{i}"] for i in range(4)]))
        """)
    assert len(lines) == 2
    for outputs in lines:
        assert {o["mark"] for o in outputs} == {"set by the parent"}
        assert {o["main"] for o in outputs} == {"__main__"}  # spawn: "__mp_main__"
        assert os.getpid() not in {o["pid"] for o in outputs}


def test_threads_alive_use_the_fork_helper(tmp_path: Path) -> None:
    """With another thread alive, workers come from the fork helper started while the
    process had one thread (they see the state of that moment); a worker killed by a signal
    fails its call, and another forked worker replaces it; all are reaped at the end."""
    out = _script(tmp_path, """
        import json, os, signal, threading
        import anyio, flowdsl, ptools
        from flowdsl._run.executors import ProcessExecutor, fork_helper_pid

        first = ProcessExecutor(max_workers=2)  # made single-threaded: starts the helper
        stop = threading.Event()
        # stands in for the history writer (a daemon: a failing script still exits)
        writer = threading.Thread(target=stop.wait, daemon=True)
        writer.start()
        ptools.MARK = "late"

        async def main():
            ex = ProcessExecutor(max_workers=2)
            got = await ex.call(ptools.probe.fn, (1,), {}, task_id="p")
            methods = sorted({w.proc._start_method for w in ex._all})
            dead = None
            try:
                await ex.call(ptools.die.fn, (signal.SIGKILL,), {}, task_id="d")
            except flowdsl.WorkerLost as exc:
                dead = exc.exitcode
            after = await ex.call(ptools.probe.fn, (2,), {}, task_id="p2")
            pids = [w.proc.pid for w in ex._all]
            await ex.close()
            gone = [not os.path.exists(f"/proc/{p}") for p in pids]
            return got, methods, dead, after, gone

        got, methods, dead, after, gone = anyio.run(main)
        stop.set()
        writer.join()
        helper = fork_helper_pid()
        print(json.dumps({"got": got, "methods": methods, "dead": dead, "after": after,
                          "gone": gone, "helper": helper}))
        """)
    doc = out[0]
    assert doc["methods"] == ["zygote"]
    # Forked from the helper: the state of when the helper was made, not spawned afresh.
    assert doc["got"]["mark"] == "imported" and doc["got"]["main"] == "__main__"
    assert doc["dead"] == -signal.SIGKILL  # its exit code, from the helper that reaped it
    assert doc["after"]["main"] == "__main__" and doc["after"]["pid"] != doc["got"]["pid"]
    assert all(doc["gone"])  # every worker reaped once the executor closed
    assert doc["helper"] is not None


def test_killed_worker_exit_code(tmp_path: Path) -> None:
    """A helper-forked worker that ends by a signal reports it as multiprocessing does
    (a negative exit code), and one that is killed is reaped: its pid is gone."""
    out = _script(tmp_path, """
        import json, os, signal, threading, time
        import ptools
        from flowdsl._run.executors import _worker_main
        from flowdsl._run.zygote import Zygote

        helper = Zygote(_worker_main)
        threading.Thread(target=time.sleep, args=(0.5,)).start()
        (conn, child), = helper.fork(1)
        alive = child.is_alive()
        child.kill()
        child.join(5)
        print(json.dumps({"alive": alive, "code": child.exitcode,
                          "gone": not os.path.exists(f"/proc/{child.pid}")}))
        """)
    assert out == [{"alive": True, "code": -9, "gone": True}]


def test_workers_take_the_parents_state_of_now(tmp_path: Path) -> None:
    """A worker forked by the helper sees the environment variables, working directory and
    import path the parent has when the worker starts, not those of the helper's making."""
    (tmp_path / "elsewhere").mkdir()
    out = _script(tmp_path, """
        import json, os, sys, threading
        import flowdsl, ptools

        flowdsl.run(ptools.probe(0).named("p"))  # starts the helper (one thread so far)
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        os.environ["FLOWDSL_TEST_LATE"] = "set after the helper"
        os.chdir("elsewhere")
        sys.path.insert(0, "/nonexistent-but-first")
        r = flowdsl.run(ptools.where("FLOWDSL_TEST_LATE").named("w"))
        stop.set()
        print(json.dumps(r.outputs["w"]))
        """)
    assert out == [{"env": "set after the helper", "cwd": str(tmp_path / "elsewhere"),
                    "path": "/nonexistent-but-first"}]


def test_tool_defined_after_the_snapshot(tmp_path: Path) -> None:
    """A process tool defined in __main__ after the helper was made is not in its snapshot:
    that run starts its workers another way (spawn here, with threads alive) and works."""
    out = _script(tmp_path, """
        import json, threading
        import flowdsl
        from flowdsl import tool

        @tool(executor="process", registry=False)
        def early() -> str:
            return "early"

        if __name__ == "__main__":
            assert flowdsl.run(early()).ok  # the helper's snapshot of __main__ has early only
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()

        @tool(executor="process", registry=False)
        def late() -> str:
            return "late"

        if __name__ == "__main__":
            r = flowdsl.run(early().named("e") | late().named("l"))
            stop.set()
            print(json.dumps([r.status.value, r.outputs.get("e"), r.outputs.get("l")]))
        """)
    assert out == [["completed", "early", "late"]]
