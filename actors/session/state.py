"""Where the Connection is with DockMon: one connection attempt after another (PROTOCOL §2, §9)."""

from __future__ import annotations

from enum import StrEnum


class LinkState(StrEnum):
    """waiting (backoff) -> describing -> dialing -> authenticating -> connected; a self-update
    hands over (handing_over -> handed_over) instead; stopped at the end.

    A ``StrEnum``: each state reads as its name in logs and the attempt timer's phase.
    """

    WAITING = "waiting"  # backing off; a Dial starts the next attempt
    DESCRIBING = "describing"  # asked DockerGateway for the host facts ``register`` carries
    DIALING = "dialing"  # the link is opening (TCP, TLS, WebSocket upgrade), register queued
    AUTHENTICATING = "authenticating"  # open; waiting for auth_success or auth_error
    CONNECTED = "connected"  # registered: frames flow, keepalive runs
    HANDING_OVER = "handing_over"  # self-update: flushing what is queued, then closing
    HANDED_OVER = "handed_over"  # idle, never reconnecting, until told to resume
    STOPPED = "stopped"  # the actor is stopping

    @property
    def hands_over(self) -> bool:
        """In a self-update hand-over (ended by the close, or by ResumeAfterHandOver)."""
        return self in (LinkState.HANDING_OVER, LinkState.HANDED_OVER)

    @property
    def idle(self) -> bool:
        """Not connecting and not connected for good: a further hand-over changes nothing."""
        return self.hands_over or self is LinkState.STOPPED
