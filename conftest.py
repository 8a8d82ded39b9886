"""Runs every Python example of README.md and the documentation pages (docs/**/*.md).

Collected by Sybil: each ```python block of a page is one test, and the blocks of a page share
one namespace, in page order, so a block can use what an earlier one defined. A block followed
directly by an ```output block must print exactly that (doctest's ELLIPSIS and
NORMALIZE_WHITESPACE: ``...`` matches anything, runs of whitespace are equal). A ```python
block that starts with ``>>>`` is a doctest. A block that cannot run says why in the page and
is marked by the line ``<!-- skip: next -->`` just before it.

Each example gets the isolation tests/conftest.py gives the tests: runs record into a history
file of its own in a temporary folder, never the user's, and no thread or child process may
outlive it. This file is here, at the root, because README.md is.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

try:
    from sybil import Document, Example, Region, Sybil
    from sybil.evaluators.doctest import DocTestEvaluator
    from sybil.evaluators.python import PythonEvaluator
    from sybil.parsers.abstract.doctest import DocTestStringParser
    from sybil.parsers.markdown import SkipParser
    from sybil.parsers.markdown.lexers import FencedCodeBlockLexer
except ImportError:  # the docs examples need the `test` extra (sybil); the tests still run
    Sybil = None

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


_histories: dict[str, str] = {}


@pytest.fixture
def _example_isolation(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The same guarantees as tests/conftest.py's autouse fixtures, for a docs example. The
    examples of one page share a history file (a page may show a run, then read it back)."""
    import multiprocessing

    page = str(getattr(request.node, "example", request.node).path)
    if page not in _histories:
        _histories[page] = str(tmp_path_factory.mktemp("history") / "history.db")
    path = _histories[page]
    monkeypatch.setenv("FLOWDSL_HISTORY", str(path))
    # a file an example writes by a relative name lands next to its history, not in the
    # checkout
    monkeypatch.chdir(Path(path).parent)
    monkeypatch.delenv("FLOWDSL_LOG", raising=False)
    before = {t for t in threading.enumerate() if t.is_alive()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t.is_alive() and t not in before
                 and (not t.daemon or t.name.startswith("flowdsl"))]
        children = multiprocessing.active_children()
        if (not extra and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not children, f"the example left child processes running: {children}"
    assert not extra, f"the example left threads running: {[t.name for t in extra]}"


class _Printed:
    """Runs a Python block; with an expected output, compares what it printed."""

    def __init__(self, want: str | None) -> None:
        self.want = want
        self.run = PythonEvaluator()

    def __call__(self, example: Example) -> str | None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.run(example)
        if self.want is None:
            return None
        got = out.getvalue()
        checker = doctest.OutputChecker()
        if checker.check_output(self.want, got, _FLAGS):
            return None
        return ("the example did not print what the page shows:\n"
                + checker.output_difference(doctest.Example("", self.want), got, _FLAGS))


class _PythonBlocks:
    """```python blocks (doctest when they start with >>>), each paired with the ```output
    block that follows it, if one does."""

    def __init__(self) -> None:
        self.lexer = FencedCodeBlockLexer(language=r".*",  # every fence, so pairs stay paired
                                          mapping={"language": "lang", "source": "source"})
        self.doctests = DocTestStringParser(DocTestEvaluator(_FLAGS))

    def __call__(self, document: Document) -> Iterable[Region]:
        blocks = list(self.lexer(document))
        for i, region in enumerate(blocks):
            if region.lexemes["lang"] != "python":
                continue
            source = region.lexemes["source"]
            if source.startswith(">>>"):
                for sub in self.doctests(source, document.path):
                    sub.adjust(region, source)
                    yield sub
                continue
            want = None
            if i + 1 < len(blocks) and blocks[i + 1].lexemes["lang"] == "output":
                between = document.text[region.end:blocks[i + 1].start]
                if not between.strip():
                    want = str(blocks[i + 1].lexemes["source"])
            region.parsed = source
            region.evaluator = _Printed(want)
            yield region


if Sybil is not None:
    pytest_collect_file = Sybil(
        parsers=[_PythonBlocks(), SkipParser()],
        patterns=["README.md", "docs/*.md", "docs/*/*.md"],
        # the built site and anything vendored under docs/ are not pages
        excludes=["docs/_build/*"],
        fixtures=["_example_isolation"],
    ).pytest()



