"""Generic outbound messages any actor can tell the Connection, and link-state notices."""

from __future__ import annotations

from messages.common import RawJson
from messages.records import record
from messages.roles import Role


@record(kw_only=True)
class EventOut:
    """``{"type":"event","command":<command>,"payload":<payload>,"timestamp":…}`` (§5).

    ``buffer``: keep it in the outbox while disconnected (progress, results) or drop it (stats).
    """

    command: str
    payload: RawJson
    buffer: bool = True


@record(kw_only=True)
class RawFrameOut:
    """A frame sent as is, e.g. host stats ``{"type":"stats","stats":{…}}`` (§5.3)."""

    frame: RawJson
    buffer: bool = False


@record(kw_only=True)
class LinkStateChanged:
    """Told by the Connection to every running subscriber role when it (dis)connects."""

    connected: bool


@record(kw_only=True)
class TrackedEventOut:
    """An event its sender keeps until the backend provably read it (a ``deploy_complete``).

    The Connection sends it only while registered, at most once per link, and tells ``owner``
    ``EventDelivered(key=key)`` once a pong proves the backend read it. It never enters the
    outbox: while disconnected it is dropped, and the owner sends it again when told
    ``LinkStateChanged(connected=True)``. So it survives a dropped link and a Connection restart.
    """

    command: str
    payload: RawJson
    owner: Role
    key: str


@record(kw_only=True)
class EventDelivered:
    """Connection -> owner of a :class:`TrackedEventOut`: a pong confirmed it."""

    key: str


@record(kw_only=True)
class AuditRecord:
    """An audit line for work that ends after its reply (a deployment's outcome).

    The Connection owns the audit log and writes it as told; never put contents, env values
    or passwords in ``target`` or ``result``.
    """

    operation: str
    target: str | None
    result: str
