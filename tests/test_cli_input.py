"""The command line explains bad input: ``--param`` values checked against the factory's
annotations, ``--input``/``--set``/``--items`` that start like JSON but are not, exit 2 with the
flag and the value named and no traceback; ``bench`` takes ``--input``/``--items``, refuses
its output paths before running and shows its runs' progress on a terminal."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

typer_testing = pytest.importorskip("typer.testing")

from flowdsl._record.history import close_cached  # noqa: E402
from flowdsl._report import cli as _cli  # noqa: E402

FLOWS = textwrap.dedent('''
    import enum
    import time
    from pathlib import Path
    from typing import Literal, Optional

    from flowdsl import Flow, tool


    class Color(enum.Enum):
        red = "r"
        blue = "b"


    @tool(registry=False)
    def step(name: str) -> str:
        return name


    @tool(registry=False)
    def double(x: int) -> int:
        return 2 * x


    @tool(registry=False)
    def slowly(x: int) -> int:
        time.sleep(0.05)
        print(f"slowly {x}")
        return x


    def sized(n: int, tag: str = "s", ratio: float = 1.0, loud: bool = False,
              color: Color = Color.red, kind: Literal["a", "b"] = "a",
              limit: Optional[int] = None, names: list[str] | None = None,
              where: Path = Path(".")):
        label = f"{tag}-{ratio:g}-{loud}-{color.name}-{kind}-{limit}-{names}-{where.name}"
        return Flow(label, [step(f"{tag}{i}") for i in range(n)])


    def picky(n: int):
        if n > 3:
            raise ValueError(f"at most 3 tasks, not {n}")
        return Flow("picky", step("p"))


    def loose(spec):
        return Flow("loose", step(str(spec)))


    pipe = Flow("pipe", double)
    slow = Flow("slow", slowly(1) >> slowly(2))
''')


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "input_flows.py"
    path.write_text(FLOWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop("input_flows", None)
    close_cached()


def invoke(*args: str, input: str | None = None) -> typer_testing.Result:  # type: ignore
    return typer_testing.CliRunner().invoke(_cli.app, list(args), input=input)


def _usage_error(res: typer_testing.Result, *words: str) -> None:  # type: ignore
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output


class TestParam:
    def test_typed_values_are_converted(self, flows: Path) -> None:
        res = invoke("run", "input_flows.py:sized", "--json", "-p", "n=2", "-p", "tag=7",
                     "-p", "ratio=2.5", "-p", "loud=yes", "-p", "color=blue", "-p", "kind=b",
                     "-p", "limit=4", "-p", 'names=["x"]', "-p", "where=out/dir")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["flow"] == "7-2.5-True-blue-b-4-['x']-dir"
        res = invoke("run", "input_flows.py:sized", "--json", "-p", "n=1", "-p", "limit=null")
        assert json.loads(res.stdout)["flow"] == "s-1-False-red-a-None-None-"

    @pytest.mark.parametrize(("value", "words"), [
        ("n=notanint", ["--param n=notanint", "'notanint' is not a whole number",
                        "annotated int"]),
        ("ratio=fast", ["--param ratio=fast", "not a number"]),
        ("loud=maybe", ["--param loud=maybe", "not a boolean"]),
        ("color=green", ["--param color=green", "red, blue"]),
        ("kind=c", ["--param kind=c", "'a', 'b'"]),
        ("limit=many", ["--param limit=many", "not a whole number", "Optional[int]"]),
        ("names=x", ["--param names=x", "not a JSON array"]),
    ])
    def test_a_value_of_the_wrong_type(self, flows: Path, value: str,
                                       words: list[str]) -> None:
        args = ["-p", "n=1"] if not value.startswith("n=") else []
        _usage_error(invoke("run", "input_flows.py:sized", *args, "-p", value), *words)

    def test_a_value_the_factory_refuses(self, flows: Path) -> None:
        _usage_error(invoke("run", "input_flows.py:picky", "-p", "n=5"),
                     "--param n=5", "ValueError: at most 3 tasks, not 5")

    def test_unannotated_takes_json_or_text(self, flows: Path) -> None:
        res = invoke("run", "input_flows.py:loose", "--json", "-p", "spec=[1, 2]")
        assert json.loads(res.stdout)["output"] == "[1, 2]"
        res = invoke("run", "input_flows.py:loose", "--json", "-p", "spec=plain words")
        assert json.loads(res.stdout)["output"] == "plain words"
        _usage_error(invoke("run", "input_flows.py:loose", "-p", "spec={bad"),
                     "--param spec='{bad'", "not valid JSON")


class TestValues:
    def test_bad_input_json(self, flows: Path) -> None:
        _usage_error(invoke("run", "input_flows.py:pipe", "--input", "{bad json"),
                     "--input '{bad json'", "not valid JSON")

    def test_text_input_is_still_text(self, flows: Path) -> None:
        res = invoke("run", "input_flows.py:pipe", "--input", "21", "--json")
        assert json.loads(res.stdout)["output"] == 42

    def test_bad_set_json(self, flows: Path) -> None:
        _usage_error(invoke("run", "input_flows.py:pipe", "--input", "1", "--set", "k=[1,"),
                     "--set k='[1,'", "not valid JSON")

    def test_bad_items_line(self, flows: Path, tmp_path: Path) -> None:
        (tmp_path / "items.txt").write_text('1\n{"x": \n3\n')
        _usage_error(invoke("run", "input_flows.py:pipe", "--items", "items.txt"),
                     "--items 'items.txt' line 2", "not valid JSON")


class TestBench:
    def test_input_and_items(self, flows: Path, tmp_path: Path) -> None:
        out = tmp_path / "b.json"
        res = invoke("bench", "input_flows.py:pipe", "--input", "3", "-m", "sequential",
                     "--repeat", "1", "--warmup", "0", "--json", str(out))
        assert res.exit_code == 0, res.output
        (tmp_path / "items.json").write_text("[1, 2, 3]")
        res = invoke("bench", "input_flows.py:pipe", "--items", "items.json", "--repeat", "1",
                     "--warmup", "0", "--json", str(out))
        assert res.exit_code == 0, res.output
        assert list(json.loads(out.read_text())["modes"]) == ["pipeline"]
        _usage_error(invoke("bench", "input_flows.py:pipe", "--items", "items.json",
                            "-m", "parallel"), "--mode pipeline")
        _usage_error(invoke("bench", "input_flows.py:pipe", "--input", "{x"),
                     "--input '{x'", "not valid JSON")

    @pytest.mark.parametrize(("flag", "path", "words"), [
        ("--json", "no/such/folder/out.json", ["--json", "does not exist"]),
        ("--json", ".", ["--json", "is a folder"]),
        ("--gantt", "run.txt", ["--gantt 'run.txt'", ".html, .png, .svg"]),
        ("--gantt", "no/such/run.html", ["--gantt", "does not exist"]),
    ])
    def test_output_paths_checked_before_running(self, flows: Path, tmp_path: Path,
                                                 flag: str, path: str,
                                                 words: list[str]) -> None:
        """A bad output path is refused before any run: the slow flow's tool never prints."""
        res = invoke("bench", "input_flows.py:slow", "--repeat", "1", "--warmup", "0",
                     flag, path)
        _usage_error(res, *words)
        assert "slowly" not in res.output

    @pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                        reason="root writes anywhere")
    def test_a_read_only_folder(self, flows: Path, tmp_path: Path) -> None:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            _usage_error(invoke("bench", "input_flows.py:slow", "--json", str(ro / "b.json")),
                         "cannot write there")
        finally:
            ro.chmod(0o700)

    def test_progress_callback(self, flows: Path) -> None:
        """benchmark(on_run=...) hears of every run before it starts, warm-up ones
        included (the command line draws its bar from it)."""
        import flowdsl

        seen: list[tuple[str, int, int, bool]] = []
        flowdsl.benchmark(_cli.load_target("input_flows.py:pipe"), ["sequential", "parallel"],
                          repeat=2, warmup=1, input=1,
                          on_run=lambda *a: seen.append(a))  # type: ignore[arg-type]
        assert seen == [("sequential", 1, 6, True), ("parallel", 2, 6, True),
                        ("sequential", 3, 6, False), ("parallel", 4, 6, False),
                        ("sequential", 5, 6, False), ("parallel", 6, 6, False)]
