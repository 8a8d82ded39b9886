"""An exact encoding of data: what :func:`decode` gives back equals what :func:`encode` was
given, by ``==`` and by type, or :func:`encode` refuses it.

The text is JSON. Lists, ``str``/``int``/``bool``/``None``, finite floats and dicts whose keys
are all strings not starting with ``$`` are written as themselves (so a stored entry stays
readable); everything else is a one-key object whose key is a tag:

========== =======================================================
``$d``     a dict with other keys: ``[[key, value], ...]`` (keys of any supported type)
``$t``     a tuple; ``$s`` a set; ``$fs`` a frozenset
``$b``     bytes (base64)
``$f``     a float that JSON cannot write: ``"nan"``, ``"inf"``, ``"-inf"``
``$dt``    a datetime (ISO 8601; naive or with a fixed UTC offset); ``$date``, ``$time``
           (``$dtf``, ``$timef``: the same with ``fold=1``)
``$td``    a timedelta: ``[days, seconds, microseconds]``
``$dec``   a Decimal (its exact string); ``$uuid`` a UUID; ``$c`` a complex ``[re, im]``
========== =======================================================

A value of any other type (subclasses included: an ``IntEnum`` is not an ``int`` when it comes
back) is refused with :class:`NotExact`, whose message says what and where. Both directions
walk the value with an explicit stack (no recursion, so a deep value cannot overflow Python's
stack) and refuse a value that contains itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["NotExact", "decode", "encode"]


class _NotExact(ValueError):
    """A value :func:`encode` cannot give back exactly (the message says which part). The
    cache turns it into a task's "not cached" reason: it never reaches a caller, so it is
    not a public error class."""


NotExact = _NotExact


_PLAIN = (str, int, bool, type(None))
_DATETIME_TZ = (type(None), dt.timezone)  # a zoneinfo zone would come back as a fixed offset


def _scalar(v: Any) -> Any:
    """The encoded form of a non-container, or raise NotExact."""
    cls = v.__class__
    if cls in _PLAIN:
        return v
    if cls is float:
        if math.isfinite(v):
            return v  # JSON writes repr(v), which reads back as the same float (-0.0 too)
        return {"$f": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    if cls is bytes:
        return {"$b": base64.b64encode(v).decode("ascii")}
    if cls is Decimal:
        return {"$dec": str(v)}
    if cls is dt.datetime or cls is dt.time:
        if v.tzinfo.__class__ not in _DATETIME_TZ:
            raise NotExact(f"a {cls.__name__} with tzinfo {v.tzinfo!r} (only fixed offsets "
                           "come back as they were)")
        tag = "$dt" if cls is dt.datetime else "$time"
        return {tag + ("f" if v.fold else ""): v.isoformat()}  # ISO text has no fold
    if cls is dt.date:
        return {"$date": v.isoformat()}
    if cls is dt.timedelta:
        return {"$td": [v.days, v.seconds, v.microseconds]}
    if cls is uuid.UUID:
        return {"$uuid": str(v)}
    if cls is complex:
        return {"$c": [_scalar(v.real), _scalar(v.imag)]}
    raise NotExact(f"a value of type {cls.__module__}.{cls.__qualname__}")


_VISIT, _BUILD = 0, 1


def _encode_tree(value: Any) -> Any:
    """``value`` as JSON data with tags (post-order, with an explicit stack)."""
    out: list[Any] = []
    work: list[tuple[int, Any]] = [(_VISIT, value)]
    active: set[int] = set()  # containers being encoded: meeting one again is a cycle
    while work:
        op, x = work.pop()
        if op == _BUILD:
            kind, n, extra, ident = x
            args = out[len(out) - n:] if n else []
            del out[len(out) - n:]
            active.discard(ident)
            if kind == "l":
                out.append(args)
            elif kind == "o":  # a plain dict: keys kept as they are
                out.append(dict(zip(extra, args)))
            elif kind == "d":
                out.append({"$d": [[args[i], args[i + 1]] for i in range(0, n, 2)]})
            else:
                out.append({kind: args})
            continue
        cls = x.__class__
        if cls is list or cls is tuple or cls is set or cls is frozenset or cls is dict:
            ident = id(x)
            if ident in active:
                raise NotExact(f"a {cls.__name__} that contains itself")
            active.add(ident)
            if cls is dict:
                if all(k.__class__ is str and not k.startswith("$") for k in x):
                    keys = list(x)
                    work.append((_BUILD, ("o", len(keys), keys, ident)))
                    work.extend((_VISIT, x[k]) for k in reversed(keys))
                else:
                    items = [kv for pair in x.items() for kv in pair]
                    work.append((_BUILD, ("d", len(items), None, ident)))
                    work.extend((_VISIT, v) for v in reversed(items))
                continue
            kind = {list: "l", tuple: "$t", set: "$s", frozenset: "$fs"}[cls]
            elems = list(x)
            work.append((_BUILD, (kind, len(elems), None, ident)))
            work.extend((_VISIT, v) for v in reversed(elems))
            continue
        out.append(_scalar(x))
    return out[0]


def encode(value: Any) -> bytes:
    """The exact encoding of ``value`` (ASCII JSON text).

    Raises:
        NotExact: ``value`` holds something that would not come back equal and of the same
            type; the message names it.
    """
    tree = _encode_tree(value)
    try:
        return json.dumps(tree, allow_nan=False, separators=(",", ":")).encode("ascii")
    except RecursionError:
        raise NotExact("a value nested too deeply to encode") from None
    except ValueError as exc:  # an int over Python's digit limit for text
        raise NotExact(str(exc)) from None


def _tagged(kind: str, arg: Any) -> Any:
    if kind == "$b":
        return base64.b64decode(arg, validate=True)
    if kind == "$f":
        return float(arg)
    if kind == "$dec":
        return Decimal(arg)
    if kind == "$dt":
        return dt.datetime.fromisoformat(arg)
    if kind == "$date":
        return dt.date.fromisoformat(arg)
    if kind == "$time":
        return dt.time.fromisoformat(arg)
    if kind == "$dtf":
        return dt.datetime.fromisoformat(arg).replace(fold=1)
    if kind == "$timef":
        return dt.time.fromisoformat(arg).replace(fold=1)
    if kind == "$td":
        return dt.timedelta(days=arg[0], seconds=arg[1], microseconds=arg[2])
    if kind == "$uuid":
        return uuid.UUID(arg)
    msg = f"unknown tag {kind!r}"
    raise ValueError(msg)


_SEQ_TAGS: dict[str, Callable[[list[Any]], Any]] = {"$t": tuple, "$s": set, "$fs": frozenset}


_loads = json.JSONDecoder().decode
_LEAVES = frozenset({str, int, float, bool, type(None)})


def decode(data: bytes | str) -> Any:
    """The value :func:`encode` wrote (raises ValueError on text it did not write)."""
    tree = _loads(data.decode("ascii") if isinstance(data, bytes) else data)
    if tree.__class__ in _LEAVES:  # a scalar: nothing to rebuild
        return tree
    out: list[Any] = []
    work: list[tuple[int, Any]] = [(_VISIT, tree)]
    while work:
        op, x = work.pop()
        if op == _BUILD:
            kind, n, extra = x
            args = out[len(out) - n:] if n else []
            del out[len(out) - n:]
            if kind == "l":
                out.append(args)
            elif kind == "o":
                out.append(dict(zip(extra, args)))
            elif kind == "$d":
                out.append({args[i]: args[i + 1] for i in range(0, n, 2)})
            elif kind == "$c":
                out.append(complex(args[0], args[1]))
            else:
                out.append(_SEQ_TAGS[kind](args))
            continue
        cls = x.__class__
        if cls is list:
            work.append((_BUILD, ("l", len(x), None)))
            work.extend((_VISIT, v) for v in reversed(x))
        elif cls is dict:
            if len(x) == 1:
                (kind, arg), = x.items()
                if kind.startswith("$"):
                    if kind == "$d":
                        flat = [kv for pair in arg for kv in pair]
                        work.append((_BUILD, ("$d", len(flat), None)))
                        work.extend((_VISIT, v) for v in reversed(flat))
                    elif kind in _SEQ_TAGS or kind == "$c":
                        work.append((_BUILD, (kind, len(arg), None)))
                        work.extend((_VISIT, v) for v in reversed(arg))
                    else:
                        out.append(_tagged(kind, arg))
                    continue
            keys = list(x)
            work.append((_BUILD, ("o", len(keys), keys)))
            work.extend((_VISIT, x[k]) for k in reversed(keys))
        else:
            out.append(x)
    return out[0]
