"""The run browser's task graph: a left-to-right layered drawing of a run's tasks as inline SVG,
each node filled with its task's status colour.

Layout, linear in nodes + edges apart from a sort per layer and sweep: each task's layer is the
length of the longest chain of predecessors before it (Kahn's order, iterative); inside a layer
tasks are ordered by the mean position of their neighbours in the layer before (barycenter
sweeps down, up and down again), which removes most crossings of a workflow's fan-out/fan-in
shapes. Layers are columns, left to right, while that fits the page; a deeper flow is drawn top
to bottom. An edge across several layers passes through a waypoint in each layer between (a
slot of its own, as in Sugiyama's layered drawing), so it never crosses a node it does not
touch: between two layers it is a cubic curve whose control points lie between them, across a
layer a straight line through its empty slot. A mapped task's children are drawn inside their
parent's node (a stack, with their statuses along its foot), never as nodes of their own.
"""

from __future__ import annotations

import html
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..timeline import COLORS, kin

__all__ = ["Layout", "graph_svg", "layout"]

NODE_W, NODE_H = 176, 38
COL_GAP, ROW_GAP, LAYER_GAP, PAD = 52, 14, 34, 10
FIT_WIDTH = 1180  # the page's content width: wider left-to-right drawings go top to bottom
GRID = 6  # tasks per row when there are no edges to lay out by
_LABEL_CHARS = 21  # node label width at 12px before an ellipsis


#: Waypoints an edge may get in all (each takes a slot in a layer it passes): beyond this,
#: long edges are drawn straight.
MAX_WAYPOINTS = 20_000
_WAY = "\x00"  # waypoint ids start with it: never a task id (ids are printable)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each node goes: its layer (column) and its row inside that layer. An edge that
    spans several layers passes through ``via[edge]``: waypoints, one per layer between, each
    holding a slot of its own (so the edge runs where no node is)."""

    layer: Mapping[str, int]
    row: Mapping[str, int]
    edges: tuple[tuple[str, str], ...]
    via: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    #: each waypoint's (layer, row)
    way: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def columns(self) -> int:
        return max(self.layer.values(), default=-1) + 1

    @property
    def rows(self) -> int:
        return max([*self.row.values(), *(r for _, r in self.way.values())], default=-1) + 1

    def place(self, n: str) -> tuple[int, int]:
        """A node's or a waypoint's (layer, row)."""
        found = self.way.get(n)
        return found if found is not None else (self.layer[n], self.row[n])

    def sizes(self) -> Counter[int]:
        """How many slots (nodes and waypoints) each layer holds."""
        return Counter([*self.layer.values(), *(k for k, _ in self.way.values())])


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
    # An edge across several layers goes through a waypoint in each layer between (long
    # edges, such as a switch's or a join's, would otherwise cross the nodes there).
    via: dict[tuple[str, str], tuple[str, ...]] = {}
    if sum(max(layer[b] - layer[a] - 1, 0) for a, b in kept) <= MAX_WAYPOINTS:
        for a, b in kept:
            if layer[b] - layer[a] > 1:
                chain = tuple(f"{_WAY}{len(via)}:{k}" for k in range(layer[a] + 1, layer[b]))
                via[(a, b)] = chain
                hops = [a, *chain, b]
                succ[a].remove(b)
                preds[b].remove(a)
                for x, y in itertools.pairwise(hops):
                    succ.setdefault(x, []).append(y)
                    preds.setdefault(y, []).append(x)
                for k, w in enumerate(chain, layer[a] + 1):
                    layer[w] = k
                    by_layer[k].append(w)
                    index[w] = len(index)
    row = {n: r for members in by_layer for r, n in enumerate(members)}
    # Barycenter sweeps: down by predecessors, up by successors, down again.
    for order, near in ((by_layer, preds), (by_layer[::-1], succ), (by_layer, preds)):
        for members in order:
            def key(n: str, near: dict[str, list[str]] = near) -> tuple[float, int]:
                placed = [row[p] for p in near[n]]
                return (sum(placed) / len(placed) if placed else float(row[n]), index[n])

            # sorted() reads the rows of the neighbouring layer only: done before the update
            row.update((n, r) for r, n in enumerate(sorted(members, key=key)))
    way = {w: (layer.pop(w), row.pop(w)) for chain in via.values() for w in chain}
    return Layout(layer, row, kept, via, way)


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def graph_svg(tasks: Sequence[Mapping[str, object]], edges: Iterable[tuple[str, str]],
              *, anchors: Mapping[str, str] | None = None, order: Sequence[str] | None = None,
              kids: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
              missing: str = "pending") -> str:
    """The graph of a run's ``tasks`` (history rows: ``task_id``, ``tool``, ``status``) as an
    inline ``<svg>``; a node links to ``#<anchors[task_id]>`` when given.

    Args:
        order: every task id to draw, in the plan's order; those without a row in ``tasks``
            are drawn with the status ``missing`` (a live run's tasks not started yet).
        kids: a mapped task's children (rows), drawn inside their parent's node as a stack
            with their count per status, never as nodes of their own.
    """
    by_id = {str(t["task_id"]): t for t in tasks}
    ids = list(dict.fromkeys([*(order or ()), *by_id]))
    kids = kids or {}
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

    size = lay.sizes()  # each layer is centred on the widest one

    def pos(n: str) -> tuple[int, int]:
        k, r = lay.place(n)
        if across:
            shift = (rows - size[k]) * (NODE_H + ROW_GAP) // 2
            return PAD + k * (NODE_W + COL_GAP), PAD + shift + r * (NODE_H + ROW_GAP)
        shift = (rows - size[k]) * (NODE_W + ROW_GAP) // 2
        return PAD + shift + r * (NODE_W + ROW_GAP), PAD + k * (NODE_H + LAYER_GAP)

    def port(n: str, out: bool) -> tuple[int, int]:
        """Where an edge leaves (``out``) or enters node ``n`` (or a waypoint's slot)."""
        x, y = pos(n)
        if across:
            return (x + NODE_W, y + NODE_H // 2) if out else (x - 2, y + NODE_H // 2)
        return (x + NODE_W // 2, y + NODE_H) if out else (x + NODE_W // 2, y - 2)

    def curve(p: tuple[int, int], q: tuple[int, int]) -> str:
        (x1, y1), (x2, y2) = p, q
        if across:  # control points between the two: the curve stays in the gap
            d = max((x2 - x1) // 2, 0)
            return f"C{x1 + d},{y1} {x2 - d},{y2} {x2},{y2}"
        d = max((y2 - y1) // 2, 0)
        return f"C{x1},{y1 + d} {x2},{y2 - d} {x2},{y2}"

    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="task graph">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" '
             'fill="#98a2b3"/></marker></defs>']
    esc = {n: html.escape(n) for n in ids}  # each id escaped once, not per edge end
    for a, b in lay.edges:
        start = port(a, True)
        d = [f"M{start[0]},{start[1]}"]
        for w in lay.via.get((a, b), ()):  # through the waypoints' empty slots
            enter, leave = port(w, False), port(w, True)
            d += [curve(start, enter), f"L{leave[0]},{leave[1]}"]
            start = leave
        d.append(curve(start, port(b, False)))
        parts.append(f'<path class="edge" data-from="{esc[a]}" data-to="{esc[b]}" '
                     f'd="{" ".join(d)}" marker-end="url(#arrow)"/>')
    for n in ids:
        t = by_id.get(n) or {"task_id": n, "status": missing, "tool": ""}
        x, y = pos(n)
        status = str(t.get("status") or "pending")
        color = COLORS.get(status, "#999999")
        tool = str(t.get("tool") or "")
        children = kids.get(n) or ()
        counts = (Counter(str(c.get("status") or "pending") for c in children) if children
                  else Counter())
        tip = f"{n} (tool {tool}): {status}" if tool else f"{n}: {status}"
        if children:
            tip += f"; {len(children)} {kin(children)}: " + ", ".join(
                f"{k} {v}" for k, v in counts.most_common())
        node = [f'<g class="node {html.escape(status)}" data-task="{esc[n]}"'
                + (f' data-children="{len(children)}"' if children else "") + ">",
                f"<title>{html.escape(tip)}</title>"]
        if children:  # a stack of cards behind: the map's children, grouped in their parent
            node += [f'<rect class="stack" x="{x + 2 * k}" y="{y - 2 * k}" width="{NODE_W}" '
                     f'height="{NODE_H}" rx="6" fill="#fff" stroke="{color}" '
                     'stroke-width="1"/>' for k in (2, 1)]
        # an opaque base first: nothing behind a node shows through it
        node += [f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="#fff"/>',
                 f'<rect class="box" x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" '
                 f'fill="{color}" fill-opacity="0.16" stroke="{color}" stroke-width="1.6"/>',
                 f'<rect x="{x}" y="{y}" width="6" height="{NODE_H}" rx="3" fill="{color}"/>',
                 f'<text x="{x + 14}" y="{y + 16}" class="nid">{html.escape(_label(n))}</text>']
        if children:
            line = f"{status} · {len(children)} children"
            node.append(f'<text x="{x + 14}" y="{y + 30}" class="nst">'
                        f"{html.escape(_label(line))}</text>")
            # the children's statuses as a strip along the node's foot
            left: float = x + 8
            for st, k in counts.most_common():
                part = (NODE_W - 14) * k / len(children)
                node.append(f'<rect class="kid {html.escape(st)}" x="{left:.1f}" '
                            f'y="{y + NODE_H - 5}" width="{part:.1f}" height="3" '
                            f'fill="{COLORS.get(st, "#999999")}"/>')
                left += part
        else:
            node.append(f'<text x="{x + 14}" y="{y + 30}" class="nst">{html.escape(status)}'
                        "</text>")
        node.append("</g>")
        text = "".join(node)
        if anchors and n in anchors:
            text = f'<a href="#{html.escape(anchors[n])}">{text}</a>'
        parts.append(text)
    parts.append("</svg>")
    return "".join(parts)
