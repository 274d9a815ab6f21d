"""Messages the Connection actor gets from its own link threads and timers."""

from __future__ import annotations

from messages.records import record


@record(kw_only=True)
class Dial:
    """Start the next connection attempt."""


@record(kw_only=True)
class LinkOpened:
    generation: int


@record(kw_only=True)
class FrameReceived:
    generation: int
    data: str | bytes


@record(kw_only=True)
class PongReceived:
    """A pong (``ack``: the sequence number our ping carried) or a server ping (``ack`` None),
    read at ``at`` (the link's monotonic clock; None: when the actor handles it)."""

    generation: int
    ack: int | None = None
    at: float | None = None


@record(kw_only=True)
class ReaderStopped:
    """The link ended at ``at`` (the link's monotonic clock; None: when the actor handles it).
    ``echoed``: the backend answered the close frame we sent with the same one (a hand-over)."""

    generation: int
    reason: str
    at: float | None = None
    echoed: bool = False


@record(kw_only=True)
class Tick:
    """Keepalive clock: ping every 30 s, declare the link dead after 40 s of silence."""

    generation: int


@record(kw_only=True)
class ReplayDue:
    """The link has lived the confirmation margin: ask for the events' replay now. It waits
    that long when the last link ended with events it could not take as read: replayed at once
    on a link that dies as young, they would go again and again (a storm of drops)."""

    generation: int


@record(kw_only=True)
class AttemptTimedOut:
    """The current attempt's phase (host facts, dial, auth reply) took too long."""

    generation: int
    phase: str


@record(kw_only=True)
class HandOver:
    """Self-update (PROTOCOL §7): send what is queued, close the link (1000) and stay idle,
    without reconnecting, until ``ResumeAfterHandOver``: the new agent registers with the same
    token meanwhile, and two live agents would supersede each other forever (§2.5, §14.12)."""


@record(kw_only=True)
class ResumeAfterHandOver:
    """The hand-over failed: connect again at once."""
