"""Typing names newer than the oldest supported Python (3.10), from typing_extensions there
(a dependency on 3.10 only). Imported at run time too: the annotations that use them are
evaluated by ``typing.get_type_hints`` and the documentation build."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import Self, Unpack
else:  # pragma: no cover - exercised by the test suite on Python 3.10
    from typing_extensions import Self, Unpack

__all__ = ["Self", "Unpack"]
