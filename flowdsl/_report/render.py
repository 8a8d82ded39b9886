"""Report: pictures of a plan as text (mermaid, graphviz dot) and notebook reprs.

Node names in the output are generated (``n0``, ``n1``, ...); task ids only appear inside
escaped labels, so ids with quotes, brackets or unicode cannot break a diagram.
"""

from __future__ import annotations

import html
from typing import Any

from .._plan.planner import Plan
from .palette import STATUS_COLORS

__all__ = ["flow_mimebundle", "graphviz_available", "plan_mimebundle", "render_graphviz",
           "result_html", "to_dot", "to_mermaid"]


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
    """A notebook bundle: mermaid for JupyterLab, an SVG when graphviz is installed, plain
    text for everything else."""
    return plan_mimebundle(flow.plan(), repr(flow))


# -- pictures through graphviz, notebook bundles for plans and results ------------------------
# (everything below reads plans and records only; graphviz's `dot` is optional.)

GRAPHVIZ_MISSING = ("graphviz's `dot` program was not found on PATH: install the graphviz "
                    "package (apt-get install graphviz, brew install graphviz or conda install "
                    "graphviz), or use --format mermaid/dot")


def graphviz_available() -> bool:
    """True when graphviz's ``dot`` program is on ``PATH``."""
    import shutil

    return shutil.which("dot") is not None


def render_graphviz(plan: Plan, fmt: str = "svg", *, timeout: float = 30.0) -> bytes:
    """The plan drawn by graphviz's ``dot`` as ``fmt`` (``"svg"`` or ``"png"``) bytes.

    Raises:
        FileNotFoundError: ``dot`` is not installed (the message names the package).
        ValueError: ``fmt`` is not svg or png.
        RuntimeError: ``dot`` failed.
    """
    import shutil
    import subprocess

    if fmt not in ("svg", "png"):
        msg = f"render_graphviz(fmt={fmt!r}): expected 'svg' or 'png'"
        raise ValueError(msg)
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError(GRAPHVIZ_MISSING)
    proc = subprocess.run([exe, f"-T{fmt}"], input=to_dot(plan).encode(), capture_output=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        msg = f"graphviz dot failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        raise RuntimeError(msg)
    return proc.stdout


def plan_mimebundle(plan: Plan, text: str | None = None) -> dict[str, Any]:
    """A notebook bundle for a plan: mermaid (JupyterLab renders it), an SVG when graphviz is
    installed, and plain text."""
    bundle: dict[str, Any] = {"text/vnd.mermaid": to_mermaid(plan),
                              "text/plain": text if text is not None else repr(plan)}
    if graphviz_available():
        try:
            bundle["image/svg+xml"] = render_graphviz(plan, "svg").decode()
        except (OSError, RuntimeError, ValueError):
            pass  # a picture is a nicety: the mermaid and text parts are still shown
    return bundle


def result_html(result: Any) -> str:
    """A RunResult as HTML: a header line, a table of tasks (status, attempts, duration,
    error) and a small timeline."""
    from .timeline import from_result, timeline_fragment

    esc = html.escape
    color = STATUS_COLORS.get(result.status, "#333")
    head = (f"<b>{esc(result.flow_name or 'flow')}</b> ({esc(result.mode)}): "
            f'<b style="color:{color}">{esc(result.status)}</b> in {result.duration:.3f}s '
            f"&middot; run <code>{esc(result.run_id)}</code>")
    rows = []
    for rec in result.tasks.values():
        d = rec.duration
        err = f"{rec.error.type}: {rec.error.message}" if rec.error else (rec.reason or "")
        c = STATUS_COLORS.get(rec.status.value, "#333")
        rows.append(f"<tr><td>{esc(rec.id)}</td><td>{esc(rec.tool)}</td>"
                    f'<td style="color:{c}">{esc(rec.status.value)}</td>'
                    f"<td>{len(rec.attempts)}</td>"
                    f"<td>{'' if d is None else f'{d:.3f}s'}</td><td>{esc(err)}</td></tr>")
    table = ('<table style="border-collapse:collapse;font-size:12px"><thead><tr>'
             + "".join(f'<th style="text-align:left;padding-right:12px">{h}</th>'
                       for h in ("task", "tool", "status", "attempts", "duration", "error"))
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    picture = timeline_fragment(from_result(result)) if result.tasks else ""
    return f'<div class="flowdsl-result"><p>{head}</p>{table}{picture}</div>'
