"""Generic outbound messages any actor can tell the Connection, and link-state notices."""

from __future__ import annotations

from dataclasses import dataclass

from messages.common import RawJson


@dataclass(frozen=True, slots=True, kw_only=True)
class EventOut:
    """``{"type":"event","command":<command>,"payload":<payload>,"timestamp":…}`` (§5).

    ``buffer``: keep it in the outbox while disconnected (progress, results) or drop it (stats).
    """

    command: str
    payload: RawJson
    buffer: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RawFrameOut:
    """A frame sent as is, e.g. host stats ``{"type":"stats","stats":{…}}`` (§5.3)."""

    frame: RawJson
    buffer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStateChanged:
    """Told by the Connection to every running subscriber role when it (dis)connects."""

    connected: bool
