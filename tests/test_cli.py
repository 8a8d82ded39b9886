"""The ``flowdsl`` command line: through typer's CliRunner, and through real processes for
exit codes, plain output, the live display under a pseudo-terminal and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

typer_testing = pytest.importorskip("typer.testing")

from flowdsl._record.history import close_cached, open_history  # noqa: E402
from flowdsl._report import cli as _cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ESC = "\x1b"

FLOWS = textwrap.dedent('''
    """Small flows for the CLI tests."""
    import os
    from pathlib import Path

    import anyio

    from flowdsl import Flow, ctx, tool

    MARKS = Path(os.environ.get("CLI_TEST_MARKS", "."))


    def undo(output):
        with (MARKS / "rolled_back.txt").open("a") as f:
            f.write(f"{output}\\n")


    @tool(registry=False, rollback=undo)
    async def step(name: str, seconds: float = 0.01) -> str:
        if seconds > 1:  # the long step says it started, so a test can interrupt it
            (MARKS / "long_started.txt").write_text(name)
        await anyio.sleep(seconds)
        return name


    @tool(registry=False)
    async def broken(x: str) -> str:
        raise ValueError(f"bad input {x}")


    ok = Flow("ok", step("a") >> (step("b") | step("c")) >> step("d"))
    fails = Flow("fails", step("a") >> broken(step("b")).named("broken"))
    greet = Flow("greet", step(ctx("who")))
    slow = Flow("slow", step("a") >> step("b", 60.0))
    shown = Flow("shown", [step(f"t{i}", 0.15) for i in range(6)] >> step("end", 0.3))


    def make():
        return step("x") >> step("y")


    def sized(n: int, tag: str = "s"):
        return Flow(f"sized-{tag}", [step(f"{tag}{i}") for i in range(n)])


    @tool(registry=False)
    def double(x: int) -> int:
        return 2 * x


    @tool(registry=False)
    def inc(x: int) -> int:
        return x + 1


    @tool(registry=False)
    def numbers() -> list:
        return list(range(1000))


    @tool(registry=False, resources={"api": 1})
    async def call_api(name: str) -> str:
        return name


    @tool(registry=False, resources={"db": 2})
    async def write_db(name: str) -> str:
        return name


    @tool(registry=False, resources={"gpu": 1})
    async def train(name: str) -> str:
        return name


    pipe = Flow("pipe", double >> inc)
    big = Flow("big", numbers())
    wide_failure = Flow("wide_failure", step("a") >> broken(step("b")).named("broken")
                        >> [step(f"w{i}").named(f"wide_{i}") for i in range(12)])
    pooled = Flow("pooled", call_api("x") >> write_db("y"), resources={"api": 1, "db": 1})
    needs_pool = Flow("needs_pool", train("m"))
''')


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A flows module in a temporary folder, the current folder for the test."""
    path = tmp_path / "cli_flows.py"
    path.write_text(FLOWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLI_TEST_MARKS", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop("cli_flows", None)
    close_cached()


def invoke(*args: str) -> typer_testing.Result:  # type: ignore[name-defined]
    return typer_testing.CliRunner().invoke(_cli.app, list(args))


class TestRun:
    def test_completed_run_exits_0_with_a_plain_summary(self, flows: Path) -> None:
        """A run that completes exits 0 and prints a compact summary (counts, then the
        flow's output) without escape codes; --verbose gives the full table."""
        res = invoke("run", "cli_flows.py:ok")
        assert res.exit_code == 0, res.output
        assert "ok (parallel): completed" in res.output and "4 completed" in res.output
        assert res.stdout.split("output:")[1].split()[0] == "'d'"
        assert "step_" not in res.output and ESC not in res.output
        res = invoke("run", "cli_flows.py:ok", "--verbose")
        assert res.exit_code == 0 and "step_" in res.output and "attempts" in res.output

    def test_compact_summary_names_failed_and_skipped_tasks(self, flows: Path) -> None:
        """After a failure the summary counts the pending tasks instead of listing them,
        and names the failed task with its error and the skipped ones with their reason."""
        res = invoke("run", "cli_flows.py:wide_failure")
        assert res.exit_code == 1
        assert "1 failed" in res.stdout and "12 pending" in res.stdout
        assert "failed broken — ValueError: bad input b" in res.stdout
        assert "pending" not in res.stdout.split("12 pending")[1]  # counted, not listed
        assert "output:" not in res.stdout  # no sink ran: nothing to show
        res = invoke("run", "cli_flows.py:wide_failure", "--continue-on-error")
        assert "upstream_failed wide_0 — upstream task 'broken' failed" in res.stdout
        assert "… and 2 more upstream_failed" in res.stdout  # ten named, the rest counted

    def test_output_is_truncated_but_json_is_whole(self, flows: Path) -> None:
        """A long output is cut short on screen; --json keeps every element."""
        res = invoke("run", "cli_flows.py:big")
        assert res.exit_code == 0
        assert "... +980" in res.stdout and "999" not in res.stdout
        assert json.loads(invoke("run", "cli_flows.py:big", "--json").stdout)["output"] \
            == list(range(1000))

    def test_param_is_passed_to_a_factory(self, flows: Path) -> None:
        """--param values (JSON or text) become the factory's keyword arguments; a name
        it does not take, or --param for a non-factory, is a usage error."""
        res = invoke("run", "cli_flows.py:sized", "--json", "-p", "n=3", "-p", "tag=t")
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["flow"] == "sized-t" and data["output"] == ["t0", "t1", "t2"]
        res = invoke("run", "cli_flows.py:sized", "-p", "n=2", "-p", "size=3")
        assert res.exit_code == 2 and "size=" in res.output and "unexpected" in res.output
        res = invoke("run", "cli_flows.py:ok", "-p", "n=3")
        assert res.exit_code == 2 and "not a function" in res.output

    def test_input_and_items_feed_a_pipeline(self, flows: Path, tmp_path: Path) -> None:
        """--input is what the first stage receives; --items (a JSON array, JSON lines or
        stdin) streams values, in pipeline mode unless another mode is asked for."""
        res = invoke("run", "cli_flows.py:pipe", "--input", "4", "--json")
        assert json.loads(res.stdout)["output"] == 9
        (tmp_path / "items.json").write_text("[1, 2, 3]")
        (tmp_path / "items.jsonl").write_text("1\n\n2\n3\n")
        for source in ("items.json", "items.jsonl"):
            data = json.loads(invoke("run", "cli_flows.py:pipe", "--items", source,
                                     "--json").stdout)
            assert data["mode"] == "pipeline" and data["output"] == [3, 5, 7]
        res = typer_testing.CliRunner().invoke(
            _cli.app, ["run", "cli_flows.py:pipe", "--items", "-", "--json"], input="5\n6\n")
        assert json.loads(res.stdout)["output"] == [11, 13]
        res = invoke("run", "cli_flows.py:pipe", "--items", "items.json", "-m", "parallel")
        assert res.exit_code == 2 and "--mode pipeline" in res.output
        res = invoke("run", "cli_flows.py:pipe", "--items", "nope.json")
        assert res.exit_code == 2 and "--items 'nope.json'" in res.output

    def test_import_makes_document_tools_known(self, flows: Path, tmp_path: Path) -> None:
        """A document naming tools of a module runs after --import MODULE; without it every
        task is an unknown tool; a module named inside the document is never imported."""
        (tmp_path / "doc_tools.py").write_text(textwrap.dedent('''
            from flowdsl import tool

            @tool(name="cli.add_one")
            def add_one(x: int) -> int:
                return x + 1
        '''))
        doc = {"name": "doc", "tasks": [{"id": "a", "tool": "cli.add_one", "args": {"x": 1}},
                                        {"id": "b", "tool": "cli.add_one",
                                         "args": {"x": {"$task": "a"}}}]}
        (tmp_path / "doc.json").write_text(json.dumps(doc))
        try:
            res = invoke("run", "doc.json")
            assert res.exit_code == 2 and "cli.add_one" in res.output
            assert "doc_tools" not in sys.modules
            res = invoke("run", "doc.json", "--import", "doc_tools", "--json")
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["output"] == 3
            res = invoke("run", "doc.json", "--import", "no_such_module_xyz")
            assert res.exit_code == 2 and "--import 'no_such_module_xyz'" in res.output
        finally:
            sys.modules.pop("doc_tools", None)
            from flowdsl import default_registry
            default_registry._tools.pop("cli.add_one", None)

    def test_resources_override_one_pool_and_keep_the_others(self, flows: Path) -> None:
        """-r db=2 changes pool db and keeps the flow's api pool; a missing pool is named
        with the option that adds it, not with Python advice."""
        res = invoke("run", "cli_flows.py:pooled", "-r", "db=2", "--json")
        assert res.exit_code == 0, res.output
        res = invoke("run", "cli_flows.py:needs_pool")
        assert res.exit_code == 2
        assert "add -r gpu=N" in res.output and "run()" not in res.output

    def test_no_timeline_hint_without_history(self, flows: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """The `flowdsl timeline` hint is shown only when the run was recorded."""
        assert "flowdsl timeline" in invoke("run", "cli_flows.py:ok").stdout
        monkeypatch.setenv("FLOWDSL_HISTORY", "off")
        res = invoke("run", "cli_flows.py:ok")
        assert res.exit_code == 0 and "flowdsl timeline" not in res.stdout
        monkeypatch.delenv("FLOWDSL_HISTORY")
        res = invoke("--history", "off", "run", "cli_flows.py:ok")
        assert res.exit_code == 0 and "flowdsl timeline" not in res.stdout

    def test_failed_run_exits_1_and_json_parses(self, flows: Path) -> None:
        """A failed run exits 1; --json prints only the RunResult as JSON."""
        res = invoke("run", "cli_flows.py:fails", "--json")
        assert res.exit_code == 1
        data = json.loads(res.stdout)
        assert data["status"] == "failed" and data["tasks"]["broken"]["status"] == "failed"
        assert data["tasks"]["broken"]["error"]["message"] == "bad input b"

    def test_factory_target_and_quiet(self, flows: Path) -> None:
        """A zero-argument function is called to build the flow; --quiet prints nothing."""
        res = invoke("run", "cli_flows.py:make", "--quiet", "--mode", "sequential")
        assert res.exit_code == 0 and res.stdout == ""

    def test_context_from_set_and_file(self, flows: Path, tmp_path: Path) -> None:
        """--context reads a JSON object and --set values override it."""
        (tmp_path / "ctx.json").write_text('{"who": "file"}')
        res = invoke("run", "cli_flows.py:greet", "--json", "-c", "ctx.json")
        assert json.loads(res.stdout)["output"] == "file"
        res = invoke("run", "cli_flows.py:greet", "--json", "-c", "ctx.json",
                     "--set", "who=cli")
        assert json.loads(res.stdout)["output"] == "cli"

    @pytest.mark.parametrize(("args", "message"), [
        (["cli_flows.py:nope"], "has no attribute 'nope'"),
        (["missing.py:flow"], "not found"),
        (["cli_flows"], "expected path/to/file.py:name"),
        (["cli_flows.py:ok", "-r", "db"], "expected key=value"),
        (["cli_flows.py:ok", "--timeout", "-1"], "--timeout -1.0 is invalid"),
        (["cli_flows.py:MARKS"], "expected a Flow"),
    ])
    def test_usage_errors_exit_2(self, flows: Path, args: list[str], message: str) -> None:
        """Bad targets and option values exit 2 with a readable message."""
        res = invoke("run", *args)
        assert res.exit_code == 2
        assert message in res.output

    def test_document_problems_are_listed(self, flows: Path, tmp_path: Path) -> None:
        """A workflow document with problems exits 2 and lists each problem's path."""
        doc = {"name": "bad", "tasks": [{"id": "a", "tool": "no_such_tool_xyz"},
                                         {"id": "b", "tool": "no_such_tool_xyz",
                                          "depends_on": ["zz"]}]}
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        res = invoke("run", "bad.json")
        assert res.exit_code == 2
        assert "problem(s) in the workflow document" in res.output
        assert "tasks[0]" in res.output and "tasks[1]" in res.output


class TestInspect:
    def test_plan_json(self, flows: Path) -> None:
        """plan --json gives the levels, width and critical path."""
        res = invoke("plan", "cli_flows.py:ok", "--json")
        assert res.exit_code == 0
        data = json.loads(res.stdout)
        assert [len(lv) for lv in data["levels"]] == [1, 2, 1]
        assert data["width"] == 2 and len(data["critical_path"]) == 3
        assert data["problems"] == []

    def test_plan_uses_history_durations(self, flows: Path) -> None:
        """After a run, plan takes the tasks' durations from history."""
        assert invoke("run", "cli_flows.py:ok", "-q").exit_code == 0
        data = json.loads(invoke("plan", "cli_flows.py:ok", "--json").stdout)
        assert len(data["durations_from_history"]) == 4
        assert data["critical_path_duration"] < 1.0

    def test_graph_text_formats(self, flows: Path, tmp_path: Path) -> None:
        """graph writes mermaid to stdout and dot to a file."""
        res = invoke("graph", "cli_flows.py:ok")
        assert res.exit_code == 0 and res.stdout.startswith("flowchart LR")
        assert invoke("graph", "cli_flows.py:ok", "-f", "dot", "-o", "g.dot").exit_code == 0
        assert (tmp_path / "g.dot").read_text().startswith('digraph "ok"')

    def test_graph_svg_without_graphviz_names_the_package(
            self, flows: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without graphviz's dot, svg/png exit 2 with a message naming the package."""
        monkeypatch.setenv("PATH", "")
        res = invoke("graph", "cli_flows.py:ok", "-f", "svg", "-o", "g.svg")
        assert res.exit_code == 2
        assert "install the graphviz package" in res.output

    def test_simulate_and_analyze_json(self, flows: Path) -> None:
        """simulate compares every mode; analyze reports the critical path."""
        sims = json.loads(invoke("simulate", "cli_flows.py:ok", "--json").stdout)
        assert set(sims) == {"sequential", "parallel", "pipeline", "conditional"}
        assert sims["parallel"]["makespan"] < sims["sequential"]["makespan"]
        a = json.loads(invoke("analyze", "cli_flows.py:ok", "--json").stdout)
        assert a["total_tasks"] == 4 and len(a["critical_path"]) == 3

    def test_every_command_has_help_with_an_example(self) -> None:
        """--help works on every command and shows an example."""
        for cmd in (["run"], ["plan"], ["graph"], ["simulate"], ["analyze"], ["timeline"],
                    ["bench"], ["history", "list"], ["history", "show"], ["history", "stats"]):
            res = invoke(*cmd, "--help")
            assert res.exit_code == 0, cmd
            assert "Example: flowdsl" in res.output, cmd


class TestHistory:
    def test_list_show_stats_and_timeline(self, flows: Path, tmp_path: Path) -> None:
        """history list/show/stats read the runs back; timeline draws the last one."""
        assert invoke("run", "cli_flows.py:fails", "-q").exit_code == 1
        runs = json.loads(invoke("history", "list", "--json").stdout)
        assert runs[0]["flow"] == "fails" and runs[0]["status"] == "failed"
        shown = json.loads(invoke("history", "show", runs[0]["run_id"], "--json").stdout)
        assert {t["task_id"] for t in shown["tasks"]} >= {"broken"}
        stats = json.loads(invoke("history", "stats", "broken", "--json").stdout)
        assert stats["cli_flows.broken"]["failed"] == 1  # tools by module-qualified name
        assert stats["cli_flows.broken"]["flows"] == ["fails"]
        assert "fails" in invoke("history").output  # no subcommand: the list
        res = invoke("timeline", "last", "-o", "run.html", "--flow", "cli_flows.py:fails")
        assert res.exit_code == 0, res.output
        page = (tmp_path / "run.html").read_text()
        parser = HTMLParser()
        parser.feed(page)
        parser.close()
        assert "broken" in page and "ValueError: bad input b" in page
        # Without --flow the run's recorded edges give the true critical path (issue 17).
        assert invoke("run", "cli_flows.py:ok", "-q").exit_code == 0
        res = invoke("timeline", "last", "-o", "bare.html")
        assert res.exit_code == 0, res.output
        bare = (tmp_path / "bare.html").read_text()
        assert "critical path" in bare and "critical chain" not in bare

    def test_flow_option_picks_one_flow_and_says_when_others_show(self, flows: Path,
                                                                  tmp_path: Path) -> None:
        """--flow narrows history list/stats and `timeline last` to one flow; without it the
        CLI says that runs of other flows are shown; a flow with no run exits 2 (issue 13)."""
        assert invoke("run", "cli_flows.py:ok", "-q").exit_code == 0
        assert invoke("run", "cli_flows.py:fails", "-q").exit_code == 1
        mixed = invoke("history", "list")
        assert mixed.exit_code == 0 and "runs of 2 flows" in mixed.stderr
        assert "'fails'" in mixed.stderr and "'ok'" in mixed.stderr
        only = invoke("history", "list", "--flow", "ok", "--json")
        assert only.exit_code == 0 and {r["flow"] for r in json.loads(only.stdout)} == {"ok"}
        assert "runs of" not in invoke("history", "list", "--flow", "ok").stderr
        for cmd in (("history", "list"), ("history", "stats"), ("timeline", "last", "-o",
                                                                 "x.html")):
            res = invoke(*cmd, "--flow", "nosuch")
            assert res.exit_code == 2, cmd
            assert "no run of flow 'nosuch'" in res.output and "'ok'" in res.output
        stats = json.loads(invoke("history", "stats", "--flow", "ok", "--json").stdout)
        assert set(stats) == {"cli_flows.step"} and stats["cli_flows.step"]["completed"] == 4
        # The last run is of 'fails'; --flow ok draws the last run of 'ok' instead.
        res = invoke("timeline", "last", "-o", "ok.html", "--flow", "ok")
        assert res.exit_code == 0, res.output
        assert "<title>ok (parallel)" in (tmp_path / "ok.html").read_text()
        res = invoke("timeline", "last", "-o", "any.html")
        assert res.exit_code == 0 and "runs of 2 flows" in res.stderr
        assert "<title>fails (parallel)" in (tmp_path / "any.html").read_text()

    def test_unknown_run_exits_2(self, flows: Path) -> None:
        """show and timeline of an unknown run id exit 2."""
        assert invoke("history", "show", "nosuchrun").exit_code == 2
        res = invoke("timeline", "nosuchrun", "-o", "x.html")
        assert res.exit_code == 2 and "nosuchrun" in res.output

    def test_bench_never_runs_the_checkouts_harness(self, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
        """`flowdsl bench --harness ...` and the old `flowdsl bench --quick ...` refuse (exit
        2) with the command to use instead, importing no `benchmarks` package and leaving
        sys.path as it was, even run from a checkout's root."""
        monkeypatch.chdir(ROOT)
        monkeypatch.delitem(sys.modules, "benchmarks", raising=False)
        path = list(sys.path)
        for args, advice in ((["--harness", "--only", "engine"], "python -m benchmarks --only "
                              "engine"), (["--quick"], "python -m benchmarks --quick")):
            res = invoke("bench", *args)
            assert res.exit_code == 2, res.output
            assert advice in " ".join(res.output.split()), res.output
        assert "benchmarks" not in sys.modules and "benchmarks.__main__" not in sys.modules
        assert sys.path == path


def test_cli_is_not_imported_by_flowdsl() -> None:
    """import flowdsl imports neither typer nor rich."""
    code = "import sys, flowdsl; print(any(m in sys.modules for m in ('typer', 'rich')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- real processes ---------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    env["CLI_TEST_MARKS"] = str(tmp_path)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
def test_subprocess_exit_codes_json_and_plain_output(flows: Path, tmp_path: Path) -> None:
    """python -m flowdsl: exit 1 with parseable JSON; plain output has no escape codes."""
    cmd = [sys.executable, "-m", "flowdsl"]
    res = subprocess.run([*cmd, "run", "cli_flows.py:fails", "--json"], capture_output=True,
                         text=True, cwd=tmp_path, env=_env(tmp_path), timeout=60)
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["status"] == "failed"
    res = subprocess.run([*cmd, "run", "cli_flows.py:ok"], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(tmp_path), timeout=60)
    assert res.returncode == 0
    assert "completed" in res.stdout
    assert ESC not in res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_live_display_under_a_pseudo_terminal(flows: Path, tmp_path: Path) -> None:
    """On a terminal, run shows live progress (running tasks, counts) then the summary."""
    import pty

    env = {**_env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "110", "LINES": "40"}
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flowdsl", "run", "cli_flows.py:shown"],
                            stdin=child, stdout=child, stderr=child, cwd=tmp_path, env=env,
                            close_fds=True)
    os.close(child)
    chunks = []
    try:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        rc = proc.wait(timeout=60)
    text = b"".join(chunks).decode(errors="replace")
    assert rc == 0, text
    assert ESC in text  # it did draw on the terminal
    plain = _plain(text)
    assert "6 running" in plain and "/7 done" in plain and "▸ step" in plain
    assert "shown (parallel): completed" in plain


def _plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_interrupt_on_a_terminal_leaves_no_progress_lines(flows: Path, tmp_path: Path) -> None:
    """Ctrl-C under a live display: the display is erased before the cancel message, and
    never drawn again, so no stale progress line sits above the summary."""
    import pty

    env = {**_env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "110", "LINES": "40"}
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flowdsl", "run", "cli_flows.py:slow"],
                            stdin=child, stdout=child, stderr=child, cwd=tmp_path, env=env,
                            close_fds=True)
    os.close(child)
    chunks: list[bytes] = []
    started = tmp_path / "long_started.txt"
    try:
        os.set_blocking(main, False)
        deadline = time.monotonic() + 60
        sent = False
        while proc.poll() is None and time.monotonic() < deadline:
            if started.exists() and not sent:
                time.sleep(0.3)  # let the display draw a few frames
                proc.send_signal(signal.SIGINT)
                sent = True
            try:
                chunks.append(os.read(main, 65536))
            except (BlockingIOError, OSError):
                time.sleep(0.02)
        os.set_blocking(main, True)
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        rc = proc.wait(timeout=30)
    text = b"".join(chunks).decode(errors="replace")
    assert rc == 130, text
    before, _, after = text.partition("SIGINT: cancelling the run")
    assert "/2 done" in _plain(before)  # the display was up
    assert after, text
    assert "done" not in _plain(after) and "running" not in _plain(after)
    assert "slow (parallel): cancelled" in _plain(after)
    # the display erased itself (cursor up / erase line) before the message was written
    assert before.rstrip("\r\n").endswith(("\x1b[2K", "\x1b[?25h")), repr(before[-80:])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_cleanly(flows: Path, tmp_path: Path, signum: int, code: int) -> None:
    """Ctrl-C or SIGTERM (docker stop, systemd) mid-run: exit 130 or 143, rollbacks ran,
    history records the run as cancelled."""
    db = tmp_path / "history.db"
    env = {**_env(tmp_path), "FLOWDSL_HISTORY": str(db)}
    proc = subprocess.Popen([sys.executable, "-m", "flowdsl", "run", "cli_flows.py:slow",
                             "--rollback"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env=env, text=True)
    started = tmp_path / "long_started.txt"
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the long task never started"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "cancelled" in out
    assert f"{signal.Signals(signum).name}: cancelling the run" in err
    assert (tmp_path / "rolled_back.txt").read_text().split() == ["a"]
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT status FROM runs").fetchall()
        running = conn.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()
    conn.close()
    assert runs == [("cancelled",)] and running == (0,)
    store = open_history(db)
    assert store is not None and store.integrity_check() == "ok"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize(("target", "code"), [("cli_flows.py:big", 0),
                                              ("cli_flows.py:wide_failure", 1)])
def test_closed_stdout_pipe_ends_quietly(flows: Path, tmp_path: Path, target: str,
                                         code: int) -> None:
    """`flowdsl run ... | head -1`: the reader leaves early, the command ends with the run's
    own exit code and writes no BrokenPipeError to stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "flowdsl", "run", target, "--verbose"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=_env(tmp_path))
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == code, err
    assert first.strip()
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception" not in err


def test_help_has_text_for_every_option_and_no_bool_metavar(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Every option of every command has help text, and flags show no `<bool>` label."""
    import typer

    command = _cli.tidy_help(typer.main.get_command(_cli.app))
    todo, seen = [command], 0
    while todo:
        cmd = todo.pop()
        todo.extend(getattr(cmd, "commands", {}).values())
        for param in cmd.params:
            if param.param_type_name == "option":
                seen += 1
                assert param.help, f"{cmd.name} {param.opts} has no help text"
    assert seen > 30
    monkeypatch.setenv("COLUMNS", "150")
    for args in (["run", "--help"], ["simulate", "--help"], ["history", "list", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            _cli.main(args)
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "--json" in text or "--limit" in text
        assert "<bool>" not in text, args
    with pytest.raises(SystemExit):
        _cli.main(["simulate", "--help"])
    assert "Most tasks running at once" in capsys.readouterr().out
