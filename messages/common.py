"""Types shared by every protocol module: secrets, raw JSON and liveness pings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential that must never reach a log line.

    ``repr``/``str`` are masked; call :meth:`reveal` at the one place that needs the value.
    """

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def masked(self) -> str:
        v = self._value
        if len(v) <= 8:
            return "****"
        return f"{v[:4]}…{v[-4:]}"

    def __repr__(self) -> str:
        return f"Secret({self.masked()})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class RawJson:
    """An immutable, already-encoded JSON value (object, array, string, ...).

    Docker answers (inspect, container lists) are encoded once where they are produced and
    embedded verbatim in the outgoing frame, so no mutable dict ever travels between actors.
    """

    text: str

    @staticmethod
    def of(value: Any) -> RawJson:
        return RawJson(json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    def value(self) -> Any:
        return json.loads(self.text)


NULL = RawJson("null")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Liveness probe; every supervised actor answers ``Pong`` to an ``ask``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    actor: str
    generation: int
