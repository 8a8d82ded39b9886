"""Report: the one status palette every picture of a run uses (the terminal, the timelines,
the notebook table, the run browser). It belongs with the pictures, not with the run's records:
nothing that runs a flow needs a colour. Tests check that it covers every task and run status.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STATUS_COLORS", "WAIT_COLOR"]

#: The one status palette: each task and run status's colour, shared by the terminal (rich
#: accepts these hex colours as styles), the PNG/SVG and HTML timelines, the notebook table
#: and the web run browser. Failures are warm (red, orange, rose), states that never ran are
#: grey, and no two statuses share a colour.
STATUS_COLORS: Mapping[str, str] = {
    "completed": "#3f9b57",
    "cached": "#93c9a0",
    "failed": "#d0453f",
    "timed_out": "#e8843a",
    "upstream_failed": "#c07a77",
    "cancelled": "#8a74c0",
    "interrupted": "#6f5aa8",
    "rolled_back": "#4f86c6",
    "rollback_failed": "#8e2a3a",
    "running": "#e0b020",
    "skipped": "#9e9e9e",
    "pending": "#d4d4d4",
}
#: How a wait between attempts (a retry's backoff) is drawn: not work, so pale.
WAIT_COLOR = "#ececec"
