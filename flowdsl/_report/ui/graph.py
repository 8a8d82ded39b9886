"""The run browser's task graph: a left-to-right layered drawing of a run's tasks as inline SVG,
each node filled with its task's status colour.

Layout, linear in nodes + edges apart from a sort per layer and sweep: each task's layer is the
length of the longest chain of predecessors before it (Kahn's order, iterative); inside a layer
tasks are ordered by the mean position of their neighbours in the layer before (barycenter
sweeps down, up and down again), which removes most crossings of a workflow's fan-out/fan-in
shapes. Layers are columns, left to right, while that fits the page; a deeper flow is drawn top
to bottom. Edges are cubic curves from a task to its successor.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..timeline import COLORS

__all__ = ["Layout", "graph_svg", "layout"]

NODE_W, NODE_H = 176, 38
COL_GAP, ROW_GAP, LAYER_GAP, PAD = 52, 14, 34, 10
FIT_WIDTH = 1180  # the page's content width: wider left-to-right drawings go top to bottom
GRID = 6  # tasks per row when there are no edges to lay out by
_LABEL_CHARS = 21  # node label width at 12px before an ellipsis


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
    row = {n: r for members in by_layer for r, n in enumerate(members)}
    # Barycenter sweeps: down by predecessors, up by successors, down again.
    for order, near in ((by_layer, preds), (by_layer[::-1], succ), (by_layer, preds)):
        for members in order:
            def key(n: str, near: dict[str, list[str]] = near) -> tuple[float, int]:
                placed = [row[p] for p in near[n]]
                return (sum(placed) / len(placed) if placed else float(row[n]), index[n])

            # sorted() reads the rows of the neighbouring layer only: done before the update
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
    cols, rows = max(lay.columns, 1), max(lay.rows, 1)
    # Left to right while that fits a page; a deep flow is drawn top to bottom instead.
    across = PAD * 2 + cols * NODE_W + (cols - 1) * COL_GAP <= FIT_WIDTH or not lay.edges
    if across:
        width = PAD * 2 + cols * NODE_W + (cols - 1) * COL_GAP
        height = PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP
    else:
        width = PAD * 2 + rows * NODE_W + (rows - 1) * ROW_GAP
        height = PAD * 2 + cols * NODE_H + (cols - 1) * LAYER_GAP

    size = Counter(lay.layer.values())  # each layer is centred on the widest one

    def pos(n: str) -> tuple[int, int]:
        k, r = lay.layer[n], lay.row[n]
        if across:
            shift = (rows - size[k]) * (NODE_H + ROW_GAP) // 2
            return PAD + k * (NODE_W + COL_GAP), PAD + shift + r * (NODE_H + ROW_GAP)
        shift = (rows - size[k]) * (NODE_W + ROW_GAP) // 2
        return PAD + shift + r * (NODE_W + ROW_GAP), PAD + k * (NODE_H + LAYER_GAP)

    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="task graph">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" '
             'fill="#98a2b3"/></marker></defs>']
    for a, b in lay.edges:
        (ax, ay), (bx, by) = pos(a), pos(b)
        if across:  # right side to left side
            x1, y1, x2, y2 = ax + NODE_W, ay + NODE_H // 2, bx - 2, by + NODE_H // 2
            d = max((x2 - x1) // 2, 16)
            curve = f"C{x1 + d},{y1} {x2 - d},{y2}"
        else:  # bottom to top
            x1, y1, x2, y2 = ax + NODE_W // 2, ay + NODE_H, bx + NODE_W // 2, by - 2
            d = max((y2 - y1) // 2, 12)
            curve = f"C{x1},{y1 + d} {x2},{y2 - d}"
        parts.append(f'<path class="edge" d="M{x1},{y1} {curve} {x2},{y2}" '
                     'marker-end="url(#arrow)"/>')
    for n in ids:
        t = by_id[n]
        x, y = pos(n)
        status = str(t.get("status") or "pending")
        color = COLORS.get(status, "#999999")
        tool = str(t.get("tool") or "")
        tip = html.escape(f"{n} (tool {tool}): {status}")
        node = (f'<g class="node {html.escape(status)}" data-task="{html.escape(n)}">'
                f"<title>{tip}</title>"
                # an opaque base first: edges passing behind a node stay hidden
                f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="#fff"/>'
                f'<rect class="box" x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" '
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
