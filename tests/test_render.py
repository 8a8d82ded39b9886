"""Text diagrams: mermaid and graphviz dot output of a plan, with escaped labels."""

from __future__ import annotations

import re

from flowdsl import Flow, Task, tool
from flowdsl._report.render import to_dot, to_mermaid


@tool(registry=False)
def load(x: object = None) -> object:
    """A tool to draw."""
    return x


def _t(name: str) -> Task:
    return load().named(name)


def _diamond() -> Flow:
    a, b, c, d = (_t(n) for n in "abcd")
    return Flow("diamond", a >> (b | c) >> d)


class TestMermaid:
    def test_nodes_and_edges(self) -> None:
        """Each task is a generated node with its id and tool; each edge an arrow."""
        text = _diamond().to_mermaid()
        assert text.splitlines() == [
            "flowchart LR",
            '    n0["a (load)"]',
            '    n1["b (load)"]',
            '    n2["c (load)"]',
            '    n3["d (load)"]',
            "    n0 --> n1",
            "    n0 --> n2",
            "    n1 --> n3",
            "    n2 --> n3",
        ]

    def test_label_is_id_alone_when_it_is_the_tool_name(self) -> None:
        """A task whose id is its tool's name shows the id once."""
        assert '    n0["load"]' in load().named("load").to_mermaid().splitlines()

    def test_direction(self) -> None:
        """direction= sets the flowchart direction."""
        assert to_mermaid(_diamond().plan(), direction="TB").startswith("flowchart TB\n")

    def test_quotes_brackets_and_hash_escaped(self) -> None:
        """Quotes, HTML brackets, '&', backticks and '#' become mermaid entity codes."""
        text = _t('say "hi" <b> & `x` #1').to_mermaid()
        label = re.search(r'n0\["(.*)"\]', text)
        assert label is not None
        assert label.group(1) == "say #34;hi#34; #60;b#62; #38; #96;x#96; #35;1 (load)"
        assert text.count('"') == 2

    def test_unicode_kept(self) -> None:
        """Unicode ids are kept as they are."""
        assert '["ünïcødé ✓ (load)"]' in _t("ünïcødé ✓").to_mermaid()

    def test_newline_becomes_break(self) -> None:
        """A newline in an id cannot end the mermaid line."""
        text = _t("two\nlines").to_mermaid()
        assert '    n0["two<br>lines (load)"]' in text.splitlines()


class TestDot:
    def test_digraph(self) -> None:
        """A flow becomes a digraph named after it, with boxes and edges."""
        text = _diamond().to_dot()
        lines = text.splitlines()
        assert lines[0] == 'digraph "diamond" {'
        assert '    n0 [label="a (load)"];' in lines
        assert [ln for ln in lines if "->" in ln] == [
            "    n0 -> n1;", "    n0 -> n2;", "    n1 -> n3;", "    n2 -> n3;"]
        assert lines[-1] == "}"

    def test_name_override(self) -> None:
        """name= overrides the graph name, which is quoted too."""
        assert to_dot(_diamond().plan(), name='my "graph"').startswith(
            'digraph "my \\"graph\\"" {')

    def test_quotes_and_backslashes_escaped(self) -> None:
        """A quote or backslash in an id cannot end the label."""
        text = _t('a"b\\c').to_dot()
        assert '    n0 [label="a\\"b\\\\c (load)"];' in text.splitlines()

    def test_unicode_and_newline(self) -> None:
        """Unicode is kept; a newline becomes dot's \\n escape."""
        text = _t("ünï\nx").to_dot()
        assert '    n0 [label="ünï\\nx (load)"];' in text.splitlines()

    def test_unnamed_composition(self) -> None:
        """A composition without a Flow is called 'flow'."""
        assert (_t("a") >> _t("b")).to_dot().startswith('digraph "flow" {')
