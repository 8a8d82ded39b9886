"""The condition language of workflow documents: what a task's ``when`` may say.

A condition is the name of a predicate the user registered, or a declarative test on the
run's context (``{"ctx": key, "path": [...], "op": ..., "value": ...}``), or ``all`` / ``any``
/ ``not`` of conditions. :func:`_compile` turns one into a callable :class:`Condition` or
records why it is malformed; nothing is ever evaluated from the document itself.

It also holds the small helpers that the document loader (``flowdsl._data.documents``)
shares with it for reporting problems: JSON-path formatting and "did you mean" hints.
"""

from __future__ import annotations

import difflib
import json
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Condition"]

Problems = list[dict[str, Any]]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# -- problem reports (shared with documents) -------------------------------------------------


def _path(base: str, *parts: Any) -> str:
    out = base
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and _IDENT.match(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(str(p), ensure_ascii=True)}]"
    return out or "$"


def _problem(out: Problems, path: str, code: str, message: str, **extra: Any) -> None:
    out.append({"path": path, "code": code, "message": message, **extra})


def _did_you_mean(name: Any, choices: Any) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=3) if isinstance(name, str) else []


def _hint(close: list[str]) -> str:
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


# -- conditions ------------------------------------------------------------------------------

_MISSING: Any = object()
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge, "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b, "contains": operator.contains,
}
_UNARY: dict[str, Callable[[Any], bool]] = {
    "exists": lambda a: a is not _MISSING, "missing": lambda a: a is _MISSING,
    "truthy": lambda a: a is not _MISSING and bool(a), "falsy": lambda a: a is _MISSING or not a,
}


class Condition:
    """A compiled declarative condition; ``spec`` is the document form, kept for ``to_dict``."""

    __slots__ = ("_fn", "spec")

    def __init__(self, spec: Any, fn: Callable[[Mapping[str, Any]], bool]) -> None:
        self.spec = spec
        self._fn = fn

    def __call__(self, context: Mapping[str, Any]) -> bool:
        return self._fn(context)

    def __repr__(self) -> str:
        return f"<Condition {json.dumps(self.spec, default=repr)[:200]}>"


def _lookup(context: Mapping[str, Any], key: str, path: list[Any]) -> Any:
    value = context.get(key, _MISSING) if isinstance(context, Mapping) else _MISSING
    try:
        for step in path:
            value = value[step]
    except (KeyError, IndexError, TypeError):
        return _MISSING
    return value


def _test(spec: dict[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    key, path, op = spec["ctx"], list(spec.get("path", ())), spec.get("op", "truthy")
    if op in _UNARY:
        unary = _UNARY[op]
        return lambda c: unary(_lookup(c, key, path))
    binary, expected = _BINARY[op], spec["value"]

    def test(c: Mapping[str, Any]) -> bool:
        got = _lookup(c, key, path)
        if got is _MISSING:
            return False
        try:  # a comparison that cannot be made (str < float) is simply false
            return bool(binary(got, expected))
        except TypeError:
            return False

    return test


def _compile(spec: Any, path: str, predicates: Mapping[str, Any], out: Problems,
             depth: int = 0) -> Callable[[Mapping[str, Any]], bool] | None:
    """Compile a condition or record why it is malformed (documents are depth-limited)."""
    def bad(message: str, where: str = path) -> None:
        _problem(out, where, "bad_condition", message)

    if isinstance(spec, str):
        fn = predicates.get(spec)
        if fn is None:
            bad(f"unknown predicate {spec!r}{_hint(_did_you_mean(spec, predicates))}")
            return None
        return lambda c: bool(fn(c))
    if not isinstance(spec, dict) or not spec:
        bad("a condition is a predicate name or an object such as "
            '{"ctx": "score", "op": ">=", "value": 0.5}, or {"all"|"any": [...]}, {"not": ...}')
        return None
    for combinator in ("all", "any"):
        if combinator in spec:
            items = spec[combinator]
            if len(spec) != 1 or not isinstance(items, list) or not items:
                bad(f"{combinator!r} takes a non-empty list of conditions and nothing else")
                return None
            parts = [_compile(s, _path(path, combinator, k), predicates, out, depth + 1)
                     for k, s in enumerate(items)]
            checks = [p for p in parts if p is not None]
            if len(checks) < len(parts):
                return None
            agg = all if combinator == "all" else any
            return lambda c: agg(p(c) for p in checks)
    if "not" in spec:
        if len(spec) != 1:
            bad("'not' takes one condition and nothing else")
            return None
        inner = _compile(spec["not"], _path(path, "not"), predicates, out, depth + 1)
        return None if inner is None else (lambda c: not inner(c))
    return _compile_test(spec, path, bad)


def _compile_test(spec: dict[str, Any], path: str,
                  bad: Callable[..., None]) -> Callable[[Mapping[str, Any]], bool] | None:
    extra = set(spec) - {"ctx", "op", "value", "path"}
    if extra:
        bad(f"unknown condition field(s) {', '.join(map(repr, sorted(extra)))}")
        return None
    if not isinstance(spec.get("ctx"), str):
        bad("a test needs 'ctx': the context key to look at", _path(path, "ctx"))
        return None
    op = spec.get("op", "truthy")
    if not isinstance(op, str) or (op not in _BINARY and op not in _UNARY):
        ops = ", ".join(map(repr, [*_BINARY, *_UNARY]))
        bad(f"unknown operator {op!r}; expected one of {ops}", _path(path, "op"))
        return None
    if (op in _BINARY) != ("value" in spec):
        bad(f"operator {op!r} " + ("needs a 'value'" if op in _BINARY else "takes no 'value'"))
        return None
    if op in ("in", "not_in") and not isinstance(spec["value"], list):
        bad(f"operator {op!r} needs a list 'value'", _path(path, "value"))
        return None
    p = spec.get("path", [])
    if not isinstance(p, list) or not all(isinstance(s, (str, int)) and not isinstance(s, bool)
                                          for s in p):
        bad("'path' is a list of keys and indexes", _path(path, "path"))
        return None
    return _test(spec)
