"""``dataclass`` as the standard library's, with the same ``__repr__``,
``__eq__`` and ``__hash__``, shared by all classes instead of made for each.

Python 3.11 writes the source of each generated method and compiles it on
its own, at import: about 0.1 ms a method. A build imports some 150 of our
dataclasses; their ``__repr__``, ``__eq__`` and ``__hash__`` were ~10 ms of
the builder's imports (issue 12), most of them never called. Here the
standard decorator makes ``__init__`` (and a frozen class's ``__setattr__``
and ``__delattr__``) and this module adds the other three, written once:

- ``__repr__``: ``Name(field=value, ...)`` over the ``repr`` fields, ``...``
  for a value that contains itself;
- ``__eq__``: the tuples of the ``compare`` fields, for two objects of the
  same class; ``NotImplemented`` otherwise;
- ``__hash__``: of a frozen class, the tuple of its ``hash`` fields (those
  that compare, unless ``field(hash=...)`` says otherwise); ``None`` for a
  class that is not frozen (its objects cannot be hashed).

A method the class defines itself is kept, as the standard decorator keeps
it. ``order=True`` and ``unsafe_hash=True`` are left to the standard
decorator whole. Everything else (``fields``, ``replace``, ``asdict``,
``__match_args__``) is the standard library's.
"""

from __future__ import annotations

import dataclasses
import reprlib
from operator import attrgetter


def dataclass(cls=None, /, **options):
    """``@dataclass`` or ``@dataclass(frozen=True, ...)``, as ``dataclasses.dataclass``."""

    def wrap(cls):
        return _made(cls, options)

    return wrap if cls is None else wrap(cls)


def _made(cls, options: dict):
    if options.get("order") or options.get("unsafe_hash"):
        return dataclasses.dataclass(cls, **options)
    wants_repr = options.get("repr", True)
    wants_eq = options.get("eq", True)
    # What the standard decorator reads from the class body, before it changes it
    own_repr = "__repr__" in cls.__dict__
    own_eq = "__eq__" in cls.__dict__
    body_hash = cls.__dict__.get("__hash__", dataclasses.MISSING)
    explicit_hash = not (body_hash is dataclasses.MISSING or (body_hash is None and own_eq))
    made = dataclasses.dataclass(cls, **{**options, "repr": False, "eq": False})
    if wants_repr and not own_repr:
        made.__repr__ = _repr
    if wants_eq and not own_eq:
        made.__eq__ = _eq
    if wants_eq and not explicit_hash:
        made.__hash__ = _hash if options.get("frozen") else None
    return made


def _getter(cls, cache: str, chosen) -> attrgetter:
    """The class's chosen fields' values as a tuple, the getter made once per class."""
    getter = cls.__dict__.get(cache)
    if getter is None:
        names = [f.name for f in dataclasses.fields(cls) if chosen(f)]
        getter = attrgetter(*names) if len(names) > 1 else _TupleOf(names)
        setattr(cls, cache, getter)
    return getter


class _TupleOf:
    """attrgetter's tuple for no name or one (attrgetter gives the bare value for one)."""

    def __init__(self, names: list[str]):
        self.names = names

    def __call__(self, obj) -> tuple:
        return tuple(getattr(obj, name) for name in self.names)


@reprlib.recursive_repr()
def _repr(self) -> str:
    cls = self.__class__
    names = cls.__dict__.get("_repr_names_")
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.repr)
        cls._repr_names_ = names
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
    return f"{cls.__qualname__}({shown})"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    values = _getter(self.__class__, "_eq_getter_", lambda f: f.compare)
    return values(self) == values(other)


def _hash(self) -> int:
    values = _getter(self.__class__, "_hash_getter_", lambda f: f.compare if f.hash is None else f.hash)
    return hash(values(self))
