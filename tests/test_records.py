"""messages/records.py: a ``@record`` behaves as ``@dataclass(frozen=True, slots=True)`` does.

Each check builds the same class body both ways and compares what the two do: construction
(positional, keyword-only, defaults, factories, the errors), ``__post_init__``, repr, equality
and hashing (with ``compare``/``hash``/``repr`` field options), immutability, ``replace``,
``fields``, ``__match_args__`` and pattern matching, slots, inheritance, methods of the class's
own, copying and pickling. And every immutable record of the agent is declared with it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle
import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest

from messages.records import record
from tests.support.hostenv import REPO_ROOT
from tests.support.sources import lines_matching

Decorate = Callable[[type], type]

KINDS: dict[str, tuple[Decorate, Decorate]] = {
    "positional": (dataclass(frozen=True, slots=True), record),
    "kw_only": (dataclass(frozen=True, slots=True, kw_only=True), record(kw_only=True)),
}


def both(kind: str, make: Callable[[Decorate], Any]) -> tuple[Any, Any]:
    """The class ``make`` builds, decorated as a frozen dataclass and as a record."""
    as_dataclass, as_record = KINDS[kind]
    return make(as_dataclass), make(as_record)


def outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", action()
    except Exception as exc:
        return "raised", type(exc)


def shown(value: Any) -> str:
    return repr(value).replace(type(value).__qualname__, "Name", 1)


def _point(decorate: Decorate) -> Any:
    @decorate
    class Point:
        x: int
        y: int = 0
        tags: list[str] = field(default_factory=list)
        secret: str = field(default="", repr=False)
        note: str = field(default="", compare=False)

    return Point


@pytest.mark.parametrize("kind", KINDS)
def test_construction_defaults_factories_and_errors_match(kind: str) -> None:
    dc, rc = both(kind, _point)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {"x": 1}),
        ((), {"x": 1, "y": 2, "tags": ["a"], "secret": "s", "note": "n"}),
        ((1,), {}),
        ((1, 2), {}),
        ((1, 2, ["t"], "s", "n", "extra"), {}),
        ((1,), {"x": 2}),
        ((), {}),
        ((), {"y": 2}),
        ((), {"x": 1, "z": 3}),
    ]
    for args, kwargs in calls:
        want, got = (outcome(functools.partial(cls, *args, **kwargs)) for cls in (dc, rc))
        assert want[0] == got[0], (args, kwargs, want, got)
        if want[0] == "ok":
            assert shown(want[1]) == shown(got[1])
        else:
            assert want[1] is got[1] is TypeError
    first, second = rc(x=1), rc(x=1)
    assert first.tags == [] and first.tags is not second.tags  # a fresh list each


@pytest.mark.parametrize("kind", KINDS)
def test_repr_equality_and_hash_follow_the_field_options(kind: str) -> None:
    dc, rc = both(kind, _point)
    for cls in (dc, rc):
        a = cls(x=1, tags=("t",), secret="hidden", note="one")
        b = cls(x=1, tags=("t",), secret="hidden", note="two")  # note: compare=False
        c = cls(x=2, tags=("t",))
        assert "hidden" not in repr(a) and "note='one'" in repr(a)
        assert a == b and hash(a) == hash(b)
        assert a != c and (a == 1) is False
        assert a.__eq__(1) is NotImplemented
    assert shown(dc(x=1, y=2)) == shown(rc(x=1, y=2)) == "Name(x=1, y=2, tags=[], note='')"
    assert hash(dc(x=1, tags=())) == hash(rc(x=1, tags=()))


def test_instances_of_different_records_with_equal_fields_differ() -> None:
    first, second = _point(record), _point(record)
    assert first(x=1) != second(x=1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_record_is_immutable_and_has_slots(kind: str) -> None:
    dc, rc = both(kind, _point)
    for cls in (dc, rc):
        value = cls(x=1)
        with pytest.raises(FrozenInstanceError):
            value.x = 2
        with pytest.raises(FrozenInstanceError):
            del value.x
        assert not hasattr(value, "__dict__")
    with pytest.raises(FrozenInstanceError):  # the dataclass raises TypeError (CPython gh-90562)
        rc(x=1).other = 1
    assert dc.__slots__ == rc.__slots__  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_replace_fields_and_match_args_are_the_dataclass_ones(kind: str) -> None:
    dc, rc = both(kind, _point)
    assert [f.name for f in dataclasses.fields(dc)] == [f.name for f in dataclasses.fields(rc)]
    assert dc.__match_args__ == rc.__match_args__  # type: ignore[attr-defined]
    assert dataclasses.is_dataclass(rc(x=1))
    moved = dataclasses.replace(rc(x=1, secret="s"), y=5)
    assert (moved.x, moved.y, moved.secret) == (1, 5, "s")
    match rc(x=3, y=4):
        case rc(x=3, y=y):
            assert y == 4
        case _:
            pytest.fail("keyword pattern did not match")


def test_positional_patterns_match_a_positional_record() -> None:
    point = _point(record)
    match point(7, 8):
        case point(x, y):
            assert (x, y) == (7, 8)
        case _:
            pytest.fail("positional pattern did not match")


@pytest.mark.parametrize("kind", KINDS)
def test_inherited_fields_come_first_as_in_dataclasses(kind: str) -> None:
    def make(decorate: Decorate) -> type:
        @decorate
        class Base:
            request_id: str

        @decorate
        class Child(Base):
            timeout: int = 10

        return Child

    dc, rc = both(kind, make)
    assert (
        shown(dc(request_id="r")) == shown(rc(request_id="r")) == "Name(request_id='r', timeout=10)"
    )
    assert outcome(lambda: rc(timeout=1)) == ("raised", TypeError)
    assert rc(request_id="r") == rc(request_id="r", timeout=10)


def test_methods_of_the_class_body_are_kept_and_post_init_runs() -> None:
    seen: list[str] = []

    @record(kw_only=True)
    class Own:
        name: str

        def __repr__(self) -> str:
            return "own repr"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 42

        def __post_init__(self) -> None:
            seen.append(self.name)

    value = Own(name="n")
    assert repr(value) == "own repr" and value == 1 and hash(value) == 42
    assert seen == ["n"]

    def eq_only(decorate: Decorate) -> Any:
        @decorate
        class EqOnly:
            name: str

            def __eq__(self, other: object) -> bool:
                return True

        return EqOnly

    dc, rc = both("positional", eq_only)
    assert hash(dc("n")) == hash(rc("n")) == hash(("n",))  # hashed by its fields, as dataclasses


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["__setattr__", "__delattr__"])
def test_a_class_that_would_not_be_frozen_is_refused(kind: str, method: str) -> None:
    def make(decorate: Decorate) -> Any:
        def mutate(self: object, *args: object) -> None:
            pass

        return decorate(type("Mutable", (), {"__annotations__": {"name": "str"}, method: mutate}))

    for decorate in KINDS[kind]:
        with pytest.raises(TypeError, match=f"Cannot overwrite attribute {method}"):
            make(decorate)


@record(kw_only=True)
class Pickled:
    name: str
    items: tuple[int, ...] = ()


def test_a_record_copies_and_pickles_by_its_fields() -> None:
    value = Pickled(name="n", items=(1, 2))
    for twin in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert twin == value and twin is not value


def test_every_immutable_record_of_the_agent_is_a_record() -> None:
    """A frozen dataclass compiles eight methods of its own (13 KB a class, at start)."""
    frozen = re.compile(r"dataclass\([^)]*frozen=True")
    assert lines_matching(frozen, allowed=REPO_ROOT / "messages" / "records.py") == []
