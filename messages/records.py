"""Immutable records (messages, settings) at the memory cost of a plain class.

``@dataclass(frozen=True, slots=True)`` compiles up to eight methods for every class with
``exec`` (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``,
``__getstate__``, ``__setstate__``): 13 KB for a three-field class, about 2 MB over the agent's
160 records, all loaded at start (issue 13.4, idle RSS). :func:`record` declares the same record
(the dataclass fields, ``dataclasses.replace`` and ``fields``, ``__match_args__``, keyword-only
fields) and gives it one shared implementation of each method, driven by the class's own field
table: about 3 KB a class.

What a record does, as ``@dataclass(frozen=True, slots=True[, kw_only=True])`` does: it is built
from its fields in order (positionally unless ``kw_only``), with defaults and default factories,
then ``__post_init__`` if it has one; assigning or deleting an attribute raises
``FrozenInstanceError``; equal when of the same class with equal fields (``compare``), hashed by
those fields (``hash``), shown as ``Name(field=value, ...)`` (``repr``), copied and pickled by
its fields. A method the class body defines is kept, as dataclasses keep it, except
``__setattr__`` and ``__delattr__``: refused, as dataclasses refuse them on a frozen class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")

#: the plan of a record's ``__init__``: positional names, (name, default, factory) per field,
#: and whether it has a ``__post_init__``
_Plan = tuple[tuple[str, ...], tuple[tuple[str, Any, Any], ...], bool]
_set = object.__setattr__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    positional, plan, post_init = cls.__record_plan__
    if args:
        if len(args) > len(positional):
            raise TypeError(
                f"{cls.__qualname__}.__init__() takes {len(positional) + 1} positional "
                f"arguments but {len(args) + 1} were given"
            )
        for name, value in zip(positional, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{cls.__qualname__}.__init__() got multiple values for {name!r}")
            kwargs[name] = value
    for name, default, factory in plan:
        value = kwargs.pop(name, MISSING)
        if value is MISSING:
            if default is not MISSING:
                value = default
            elif factory is not MISSING:
                value = factory()
            else:
                raise TypeError(f"{cls.__qualname__}.__init__() missing argument: {name!r}")
        _set(self, name, value)
    if kwargs:
        unexpected = next(iter(kwargs))
        raise TypeError(f"{cls.__qualname__}.__init__() got an unexpected argument {unexpected!r}")
    if post_init:
        self.__post_init__()


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_repr__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    cls: Any = type(self)
    names = cls.__record_compare__
    return bool(tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names))


def _hash(self: Any) -> int:
    return hash(tuple(getattr(self, name) for name in type(self).__record_hash__))


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> list[Any]:
    return [getattr(self, f.name) for f in dataclasses.fields(self)]


def _setstate(self: Any, state: list[Any]) -> None:
    for f, value in zip(dataclasses.fields(self), state, strict=True):
        object.__setattr__(self, f.name, value)


_SHARED: dict[str, Callable[..., Any]] = {
    "__init__": _init,
    "__repr__": _repr,
    "__eq__": _eq,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__getstate__": _getstate,
    "__setstate__": _setstate,
}


def _build(cls: type[T], kw_only: bool) -> type[T]:
    body = cls.__dict__
    for name in ("__setattr__", "__delattr__"):
        if name in body:  # as dataclasses refuse it for a frozen class: it would not be frozen
            raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    # like dataclasses: a class that defines __eq__ but not __hash__ has __hash__ None
    own_hash = "__hash__" in body and not (body["__hash__"] is None and "__eq__" in body)
    built = dataclasses.dataclass(
        cls, init=False, repr=False, eq=False, slots=True, kw_only=kw_only
    )
    fields = dataclasses.fields(built)  # type: ignore[arg-type]
    plan: _Plan = (
        tuple(f.name for f in fields if f.init and not f.kw_only),
        tuple((f.name, f.default, f.default_factory) for f in fields if f.init),
        hasattr(built, "__post_init__"),
    )
    shared: dict[str, Any] = {
        "__record_plan__": plan,
        "__record_repr__": tuple(f.name for f in fields if f.repr),
        "__record_compare__": tuple(f.name for f in fields if f.compare),
        "__record_hash__": tuple(
            f.name for f in fields if (f.compare if f.hash is None else f.hash)
        ),
    }
    for name, method in _SHARED.items():
        if name not in body:
            shared[name] = method
    if not own_hash:
        shared["__hash__"] = _hash
    for name, value in shared.items():
        setattr(built, name, value)
    return built


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T] | None = None, /, *, kw_only: bool = False) -> Any:
    """``@record`` or ``@record(kw_only=True)`` on a class: see the module's docstring."""
    if cls is None:
        return lambda c: _build(c, kw_only)
    return _build(cls, kw_only)
