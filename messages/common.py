"""Types shared by every protocol module: secrets, raw JSON and liveness pings."""

from __future__ import annotations

import json
from dataclasses import field
from types import ModuleType
from typing import Any

from messages.records import record

_orjson: ModuleType | None = None


def _codec() -> ModuleType:
    """orjson, loaded on first use: reading the configuration (``healthcheck``) encodes nothing."""
    global _orjson
    if _orjson is None:
        import orjson

        _orjson = orjson
    return _orjson


def dumps(value: Any) -> str:
    """Compact JSON text (``json.dumps(separators=(",", ":"), ensure_ascii=False)``'s bytes).

    orjson encodes Docker's answers 10-20x faster than ``json``. A key that is not a string
    is retried with ``OPT_NON_STR_KEYS`` alone, since that option doubles orjson's time. Where
    orjson refuses what ``json`` accepts (integers beyond 64 bits, lone surrogates, nesting
    deeper than 254) ``json`` encodes it as before; NaN and infinities become ``null``
    (``json`` would emit ``NaN``, which is not JSON and would make the backend close the
    connection).
    """
    codec = _codec()
    try:  # str keys only first: OPT_NON_STR_KEYS doubles orjson's time on every dict
        return codec.dumps(value).decode()  # type: ignore[no-any-return]
    except TypeError:
        pass
    try:
        return codec.dumps(value, option=codec.OPT_NON_STR_KEYS).decode()  # type: ignore[no-any-return]
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(data: str | bytes) -> Any:
    """Decode JSON text or UTF-8 bytes (``ValueError`` if it is not JSON)."""
    return _codec().loads(data)


@record
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


@record
class RawJson:
    """An immutable, already-encoded JSON value (object, array, string, ...).

    Docker answers (inspect, container lists) are encoded once where they are produced and
    embedded verbatim in the outgoing frame, so no mutable dict ever travels between actors.
    """

    text: str

    @staticmethod
    def of(value: Any) -> RawJson:
        return RawJson(dumps(value))

    @staticmethod
    def wrap(key: str, raw: bytes) -> RawJson:
        """``{"<key>": <raw>}`` around a JSON value already encoded (Docker's bytes, spliced
        as they are, not re-encoded); ``ValueError`` if ``raw`` is not JSON in UTF-8 (checked
        by orjson's parser, a few µs: the strict backend closes the link on a bad frame)."""
        _codec().loads(raw)
        return RawJson("{" + dumps(key) + ":" + raw.decode("utf-8").strip() + "}")

    def value(self) -> Any:
        return json.loads(self.text)


NULL = RawJson("null")


@record(kw_only=True)
class Ping:
    """Liveness probe; every supervised actor answers ``Pong`` to an ``ask``."""


@record(kw_only=True)
class Pong:
    actor: str
    generation: int
