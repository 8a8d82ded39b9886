"""Secrets: values a run uses but never writes.

Wrap a value in :class:`Secret` where a run receives it (a tool argument, a context entry, the
pipeline ``input`` or an item). Every Secret a run holds is registered in that run's
:class:`Masker` when the run starts (an item's when it is pulled), and each place where text
leaves the engine (error records and tracebacks, log events, ``RunResult.to_dict``, history
rows and stored outputs) passes through it, so the value is replaced by ``***`` even where it
reappears as a plain string (in an exception message, in an output). A run without a Secret
has no masker and pays nothing: the check is one ``None`` test at those few exits, and the run
does not even look for Secrets unless one was ever made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["MASK", "MIN_LENGTH", "MaskedLogger", "Masker", "Secret", "in_use", "masker_for"]

MASK = "***"
#: Shorter values are not masked: masking every "a" or "10" would garble the text (Airflow
#: draws the same line).
MIN_LENGTH = 4

_T = TypeVar("_T")
_made = False  # whether any Secret was ever made in this process


class Secret(Generic[_T]):
    """A value to keep out of logs, history, results and reports.

    ``repr()`` and ``str()`` show ``Secret('***')``; :meth:`get` returns the value. A tool
    receives the Secret itself and calls ``.get()`` where it needs the value. Any text flowdsl
    writes for a run holding the Secret has the value replaced by ``***`` (values shorter than
    4 characters are not masked).

    Example:
        >>> token = Secret("canary-7f3a")
        >>> token
        Secret('***')
        >>> token.get()
        'canary-7f3a'
    """

    __slots__ = ("_value",)

    def __init__(self, value: _T) -> None:
        global _made
        _made = True
        self._value = value

    def get(self) -> _T:
        """The wrapped value."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:  # a worker process receives a Secret too
        return (Secret, (self._value,))


class Masker:
    """Replaces the registered secret values in text and in JSON-like data."""

    __slots__ = ("_pattern", "sources", "values")

    def __init__(self, values: Iterable[str]) -> None:
        self.sources = frozenset(values)  # the secret values themselves
        forms: set[str] = set()
        for v in self.sources:
            # The value as written, and as repr() and json.dumps() escape it inside quotes.
            for form in (v, repr(v)[1:-1], json.dumps(v)[1:-1]):
                if len(form) >= MIN_LENGTH:
                    forms.add(form)
        self.values = frozenset(forms)
        # Longest first, so a value that contains another is masked whole.
        alternatives = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def found_in(self, s: str) -> bool:
        """Whether ``s`` holds a registered value (in any of its masked forms)."""
        return self._pattern.search(s) is not None

    def text(self, s: str) -> str:
        """``s`` with every registered value replaced by ``***``."""
        return self._pattern.sub(MASK, s) if s else s

    def data(self, value: Any) -> Any:
        """A copy of JSON-like ``value`` with every string (keys too) masked; other values
        are returned as they are. Iterative, so a deeply nested value cannot exhaust the
        stack; a list or dict inside itself is written ``"[...]"`` / ``"{...}"`` there, as
        ``repr`` does."""
        text = self.text
        top: list[Any] = []
        # Each list, tuple or dict open on the way down: its class, its keys (a dict's), its
        # items, the items done, where its copy goes, and its id (for cycles).
        stack: list[tuple[type, list[Any] | None, Iterator[Any], list[Any], list[Any], int]] = []
        open_ids: set[int] = set()
        item, into = value, top
        while True:
            cls = item.__class__
            if cls is str:
                into.append(text(item))
            elif cls is list or cls is tuple or cls is dict:
                if id(item) in open_ids:
                    into.append("{...}" if cls is dict else "[...]")
                else:
                    open_ids.add(id(item))
                    if cls is dict:
                        names = [text(k) if isinstance(k, str) else k for k in item]
                        stack.append((cls, names, iter(item.values()), [], into, id(item)))
                    else:
                        stack.append((cls, None, iter(item), [], into, id(item)))
            else:
                into.append(text(str(item)) if isinstance(item, str) else item)
            # The next container to open; leaves are copied on the way (the common case).
            while stack:
                cls, keys, items, done, parent, ident = stack[-1]
                for nxt in items:
                    c = nxt.__class__
                    if c is str:
                        done.append(text(nxt))
                    elif c is list or c is tuple or c is dict:
                        item, into = nxt, done
                        break
                    else:
                        done.append(text(str(nxt)) if isinstance(nxt, str) else nxt)
                else:
                    stack.pop()
                    open_ids.discard(ident)
                    parent.append(done if cls is list else tuple(done) if keys is None
                                  else dict(zip(keys, done)))
                    continue
                break
            else:
                return top[0]


def in_use() -> bool:
    """Whether any :class:`Secret` was made in this process (else no run needs to look)."""
    return _made


def masker_for(found: Iterable[Secret[Any]], base: Masker | None = None) -> Masker | None:
    """A masker for the values of the Secrets ``found`` in a run (the run layer finds them
    with the one argument walker) and those ``base`` already masks; ``base`` itself when
    nothing is new, ``None`` when there is nothing to mask."""
    values = {v for v in (_as_text(s.get()) for s in found) if len(v) >= MIN_LENGTH}
    if base is not None:
        if values <= base.sources:
            return base
        values |= base.sources
    return Masker(values) if values else None


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


class MaskedLogger:
    """A structlog logger whose events have the run's secrets masked in every string value."""

    __slots__ = ("_log", "_masker")

    def __init__(self, log: Any, masker: Masker) -> None:
        self._log = log
        self._masker = masker

    def use(self, masker: Masker) -> None:
        """Mask with ``masker`` from now on (a pipeline item brought more secrets)."""
        self._masker = masker

    def __getattr__(self, level: str) -> Any:
        emit = getattr(self._log, level)
        mask = self._masker.data

        def masked(event: str, **kw: Any) -> Any:
            return emit(event, **{k: mask(v) for k, v in kw.items()})

        return masked
