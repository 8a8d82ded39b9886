"""The one immutability idiom of flowdsl's values (Task, Fragment, Flow, Plan, ToolSpec, the
map and group specs): a slotted class deriving :class:`Frozen`.

Assignment and deletion raise :class:`~flowdsl.FrozenError`, which names the class and the
attribute and says how to make a changed copy (each class says how in :meth:`_copy_hint`).
Values are built, copied with changes (:meth:`Frozen._evolve`) and given their derived caches
(a Fragment's graph, a Plan's index: private slots set once, never public state) through
``object.__setattr__``, which the refusal does not intercept. ``copy``, ``deepcopy`` and
pickle go through :meth:`Frozen.__setstate__`, which does the same.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .errors import FrozenError

F = TypeVar("F", bound="Frozen")
T = TypeVar("T", bound=type)

_SLOTS: dict[type, tuple[str, ...]] = {}


def slots_of(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases, once each (cached per class)."""
    got = _SLOTS.get(cls)
    if got is None:
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            own = klass.__dict__.get("__slots__", ())
            names.update(dict.fromkeys((own,) if isinstance(own, str) else own))
        names.pop("__weakref__", None)
        names.pop("__dict__", None)
        got = _SLOTS[cls] = tuple(names)
    return got


class Frozen:
    """Refuses assignment and deletion; see the module docstring."""

    __slots__ = ()

    def _copy_hint(self) -> str:
        """How to make a changed copy, as the error says it (a class says its own)."""
        return "make a changed copy with .evolve(...)"

    def _what(self) -> str | None:
        """How the error names this value (``None``: "a <class>"); a Task says its id."""
        return None

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(type(self).__name__, name, self._copy_hint(), what=self._what())

    def __delattr__(self, name: str) -> None:
        raise FrozenError(type(self).__name__, name, self._copy_hint(), deleting=True,
                          what=self._what())

    def __setstate__(self, state: Any) -> None:
        # copy/deepcopy/pickle of a slotted object hand over (None, {slot: value}); the default
        # would setattr() each one, which the refusal above stops.
        if isinstance(state, tuple) and len(state) == 2:
            own, slotted = state
            state = {**(own or {}), **(slotted or {})}
        for name, value in (state or {}).items():
            object.__setattr__(self, name, value)

    def _evolve(self: F, **changes: Any) -> F:
        """A copy with ``changes`` applied, unchecked (a caller validates what it accepts).
        Derived caches are not carried over: a changed copy builds its own."""
        cls = type(self)
        names = slots_of(cls)
        unknown = changes.keys() - set(names)
        if unknown:
            msg = f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}"
            raise TypeError(msg)
        derived = cls._derived()
        new = object.__new__(cls)
        s = object.__setattr__
        for name in names:
            if name in changes:
                s(new, name, changes[name])
            else:
                s(new, name, None if name in derived else getattr(self, name))
        return new

    @classmethod
    def _derived(cls) -> tuple[str, ...]:
        """The private slots that hold derived caches (``None`` until first use)."""
        return ()


def frozen_dataclass(cls: T) -> T:
    """Apply to a ``@dataclass(frozen=True)`` deriving :class:`Frozen`: the dataclass puts its
    own refusal in the class (``FrozenInstanceError``, which says neither what to do nor which
    class); this puts :class:`Frozen`'s back. The dataclass's ``__init__`` and
    ``dataclasses.replace`` keep working: they set fields through ``object.__setattr__``."""
    cls.__setattr__ = Frozen.__setattr__  # type: ignore[assignment,method-assign]
    cls.__delattr__ = Frozen.__delattr__  # type: ignore[assignment,method-assign]
    return cls
