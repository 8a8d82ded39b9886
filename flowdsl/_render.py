"""Report: pictures of a plan as text (mermaid, graphviz dot) and notebook reprs.

Node names in the output are generated (``n0``, ``n1``, ...); task ids only appear inside
escaped labels, so ids with quotes, brackets or unicode cannot break a diagram.
"""

from __future__ import annotations

from typing import Any

from ._planner import Plan

__all__ = ["flow_mimebundle", "to_dot", "to_mermaid"]


def _label(plan: Plan, task_id: str) -> str:
    t = plan.tasks[task_id]
    tool = getattr(getattr(t, "tool", None), "name", None)
    return task_id if tool in (None, task_id) else f"{task_id} ({tool})"


# Mermaid's own entity codes (#NN;) for what would end or reinterpret a quoted label: the
# quote, HTML brackets, '&', a backtick (markdown strings) and '#' itself (entity syntax).
_MERMAID_ESCAPES = {ord(c): f"#{ord(c)};" for c in '#"<>&`'} | {ord("\n"): "<br>"}


def _mermaid_text(text: str) -> str:
    return text.translate(_MERMAID_ESCAPES)


def to_mermaid(plan: Plan, *, direction: str = "LR") -> str:
    """The plan as a mermaid ``flowchart``."""
    names = {i: f"n{k}" for k, i in enumerate(plan.order)}
    lines = [f"flowchart {direction}"]
    lines += [f'    {names[i]}["{_mermaid_text(_label(plan, i))}"]' for i in plan.order]
    lines += [f"    {names[a]} --> {names[b]}" for a, b in plan.edges]
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(plan: Plan, *, name: str | None = None) -> str:
    """The plan as a graphviz ``digraph``."""
    names = {i: f"n{k}" for k, i in enumerate(plan.order)}
    title = _dot_quote(name or plan.name or "flow")
    lines = [f"digraph {title} {{", "    rankdir=LR;", "    node [shape=box];"]
    lines += [f"    {names[i]} [label={_dot_quote(_label(plan, i))}];" for i in plan.order]
    lines += [f"    {names[a]} -> {names[b]};" for a, b in plan.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def flow_mimebundle(flow: Any) -> dict[str, Any]:
    """A notebook bundle: mermaid for JupyterLab, plain text for everything else."""
    plan = flow.plan()
    return {"text/vnd.mermaid": to_mermaid(plan), "text/plain": repr(flow)}
