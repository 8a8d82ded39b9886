"""Reading code examples out of the documentation pages (docs/**/*.md), for the tests that run
an example in a fresh process (the root conftest.py runs every example in-process too)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"```python\n(.*?)```\n(?:\n```output\n(.*?)```\n)?", re.S)


def section(page: str, heading: str | None = None) -> str:
    """The text of ``docs/<page>``, or of its section under ``heading`` (a whole heading line,
    such as ``"## Guard rails"``) up to the next heading of the same or a higher level."""
    text = (DOCS / page).read_text(encoding="utf-8")
    if heading is None:
        return text
    start = text.index(heading + "\n")
    level = heading.split(" ", 1)[0]
    nxt = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading):], re.M)
    return text[start:] if nxt is None else text[start:start + len(heading) + nxt.start()]


def examples(page: str, heading: str | None = None) -> list[tuple[str, list[str] | None]]:
    """Each ```python block of the page (or section) with the lines of the ```output block that
    follows it, if one does."""
    return [(code, None if out is None else out.splitlines())
            for code, out in _FENCE.findall(section(page, heading))]
