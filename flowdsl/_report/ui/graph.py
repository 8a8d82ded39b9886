"""The run browser's task graph: a left-to-right layered drawing of a run's tasks as inline SVG,
each node filled with its task's status colour.

Layout, linear in nodes + edges apart from one sort per layer: each task's layer is the length
of the longest chain of predecessors before it (Kahn's order, iterative); inside a layer tasks
are ordered by the mean position of their predecessors (one barycenter sweep), which removes
most crossings of a workflow's fan-out/fan-in shapes. Edges are cubic curves from the right
side of a task to the left side of its successor.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..timeline import COLORS

__all__ = ["Layout", "graph_svg", "layout"]

NODE_W, NODE_H = 168, 38
COL_GAP, ROW_GAP, PAD = 56, 12, 10
GRID = 6  # tasks per row when there are no edges to lay out by
_LABEL_CHARS = 22  # node label width at 12px before an ellipsis


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each node goes: its layer (column) and its row inside that layer."""

    layer: Mapping[str, int]
    row: Mapping[str, int]
    edges: tuple[tuple[str, str], ...]

    @property
    def columns(self) -> int:
        return max(self.layer.values(), default=-1) + 1

    @property
    def rows(self) -> int:
        return max(self.row.values(), default=-1) + 1


def layout(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> Layout:
    """Layer and order ``nodes`` (their order breaks ties) along ``edges``.

    Edges naming unknown nodes, self-loops and duplicates are dropped. Nodes on a cycle (a
    history record can hold anything) go to one layer after the rest instead of failing.
    """
    index = {n: i for i, n in enumerate(nodes)}
    kept = tuple(dict.fromkeys((a, b) for a, b in edges
                               if a in index and b in index and a != b))
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    indeg = dict.fromkeys(nodes, 0)
    for a, b in kept:
        succ[a].append(b)
        preds[b].append(a)
        indeg[b] += 1
    layer = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if indeg[n] == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for m in succ[n]:
            layer[m] = max(layer[m], layer[n] + 1)
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if seen < len(nodes):  # a cycle: park what was never released after everything else
        last = max((layer[n] for n in nodes if indeg[n] == 0), default=-1) + 1
        for n in nodes:
            if indeg[n] > 0:
                layer[n] = last
    by_layer: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for n in nodes:
        by_layer[layer[n]].append(n)
    row: dict[str, int] = {}
    for members in by_layer:
        def key(n: str) -> tuple[float, int]:
            placed = [row[p] for p in preds[n] if p in row]
            return (sum(placed) / len(placed) if placed else float(index[n]), index[n])

        # sorted() reads the rows of earlier layers only, so it is done before the update
        row.update((n, r) for r, n in enumerate(sorted(members, key=key)))
    return Layout(layer, row, kept)


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def graph_svg(tasks: Sequence[Mapping[str, object]], edges: Iterable[tuple[str, str]],
              *, anchors: Mapping[str, str] | None = None) -> str:
    """The graph of a run's ``tasks`` (history rows: ``task_id``, ``tool``, ``status``) as an
    inline ``<svg>``; a node links to ``#<anchors[task_id]>`` when given."""
    ids = [str(t["task_id"]) for t in tasks]
    by_id = {str(t["task_id"]): t for t in tasks}
    lay = layout(ids, edges)
    if not lay.edges and len(ids) > GRID:  # nothing to order by: wrap, start order kept
        lay = Layout({n: i % GRID for i, n in enumerate(ids)},
                     {n: i // GRID for i, n in enumerate(ids)}, ())
    height_rows = max(lay.rows, 1)
    width = PAD * 2 + lay.columns * NODE_W + max(lay.columns - 1, 0) * COL_GAP
    height = PAD * 2 + height_rows * NODE_H + (height_rows - 1) * ROW_GAP

    def pos(n: str) -> tuple[int, int]:
        return (PAD + lay.layer[n] * (NODE_W + COL_GAP), PAD + lay.row[n] * (NODE_H + ROW_GAP))

    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="task graph">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" '
             'fill="#98a2b3"/></marker></defs>']
    for a, b in lay.edges:
        (ax, ay), (bx, by) = pos(a), pos(b)
        x1, y1, x2, y2 = ax + NODE_W, ay + NODE_H // 2, bx - 2, by + NODE_H // 2
        dx = max((x2 - x1) // 2, 16)
        parts.append(f'<path class="edge" d="M{x1},{y1} C{x1 + dx},{y1} {x2 - dx},{y2} '
                     f'{x2},{y2}" marker-end="url(#arrow)"/>')
    for n in ids:
        t = by_id[n]
        x, y = pos(n)
        status = str(t.get("status") or "pending")
        color = COLORS.get(status, "#999999")
        tool = str(t.get("tool") or "")
        tip = html.escape(f"{n} (tool {tool}): {status}")
        node = (f'<g class="node {html.escape(status)}" data-task="{html.escape(n)}">'
                f"<title>{tip}</title>"
                f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" '
                f'fill="{color}" fill-opacity="0.16" stroke="{color}" stroke-width="1.6"/>'
                f'<rect x="{x}" y="{y}" width="6" height="{NODE_H}" rx="3" fill="{color}"/>'
                f'<text x="{x + 14}" y="{y + 16}" class="nid">{html.escape(_label(n))}</text>'
                f'<text x="{x + 14}" y="{y + 30}" class="nst">{html.escape(status)}</text>'
                "</g>")
        if anchors and n in anchors:
            node = f'<a href="#{html.escape(anchors[n])}">{node}</a>'
        parts.append(node)
    parts.append("</svg>")
    return "".join(parts)
