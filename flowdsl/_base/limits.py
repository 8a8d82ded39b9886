"""Process-wide ceilings for values that may come from untrusted documents, settable with
:func:`set_limits`: the most retries a task may have, the longest timeout (or deadline) any
option may give, and the largest output history stores (larger ones stay in memory and are
stored as a marker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Limits", "encodable", "limits", "set_limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The current ceilings (see :func:`set_limits`)."""

    max_retries: int = 100
    max_timeout: float = 7 * 24 * 3600.0
    max_stored_output: int = 10 * 1024 * 1024


_current = Limits()


def limits() -> Limits:
    """The ceilings in force."""
    return _current


def set_limits(*, max_retries: int | None = None, max_timeout: float | None = None,
               max_stored_output: int | None = None) -> Limits:
    """Change flowdsl's ceilings for retries, timeouts and stored output size; returns the
    previous :class:`Limits` (pass its fields back to restore them).

    Args:
        max_retries: the most ``retries`` a tool or task may declare (default 100).
        max_timeout: the most seconds any ``timeout``/``deadline`` may give (default one
            week), on tools, tasks and ``run()``.
        max_stored_output: the most bytes of one task output's JSON that history stores
            (default 10 MB); a larger output stays in the result but is stored as a marker,
            with a warning.

    Raises:
        ValueError: a value is not a positive number (whole for the byte and retry counts).
    """
    global _current
    # checked one by one below (a caller without a type checker may pass anything)
    changes: dict[str, Any] = {"max_retries": max_retries, "max_timeout": max_timeout,
               "max_stored_output": max_stored_output}
    for name, value in changes.items():
        if value is None:
            continue
        whole = name != "max_timeout"
        ok = (isinstance(value, int) if whole else isinstance(value, (int, float))) \
            and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            kind = "a whole number" if whole else "a finite number"
            msg = f"set_limits(): {name}={value!r} is invalid: expected {kind} > 0"
            raise ValueError(msg)
    previous = _current
    _current = replace(_current, **{k: v for k, v in changes.items() if v is not None})
    return previous


def encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates, as ``os.fsdecode`` makes
    of bytes that are not UTF-8): ids must be, since every record and report writes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

