"""At-least-once delivery of the frames the Connection sends (PROTOCOL §9).

WebSocket frames are read in order, so the pong to a ping sent after frame N proves the backend's
WebSocket layer read every frame up to N. It does not prove its handler did: the layer answers
a ping the moment it reads it, while the frames before it may still wait in the handler's queue,
and a backend that closes the socket then (a restart, a superseding connection) never processes
them. So a pong confirms only once the link has outlived it by ``margin`` seconds, the time the
handler may lag behind its WebSocket layer; frames ponged less than that before the link ended go
again, like frames no pong reached (a duplicate rather than a loss).

:class:`Delivery` numbers the frames sent on a link, keeps those not confirmed yet, and, when the
link drops, decides what goes again: plain frames go back to the front of the outbox in their
order; container events and tracked events do not, their owners (the EventStreamer's cursor, the
Deployer) send them again. While disconnected, frames wait in a bounded outbox that drops its
oldest when full, and counts what it dropped.

No threads and no I/O: the actor sends and pings, and tells the owners what was confirmed.
"""

from __future__ import annotations

import logging
from collections import deque

from messages.records import record
from messages.roles import Role

log = logging.getLogger(__name__)

#: the per-link set of sent container events is pruned to the cursor's floor once it holds this
#: many (then twice what remained): amortised O(1) per event
PRUNE_EVENTS = 1024

#: an event another actor owns and resends until confirmed: (owner role, its key)
Receipt = tuple[Role, str]


@record
class _Sent:
    seq: int  # the frame's number on its link
    text: str
    event_seq: int  # the EventStreamer's number of a container event, else 0
    receipt: Receipt | None  # a tracked event's owner and key, else None


@record
class Confirmed:
    """What a pong confirmed, for the owners to forget."""

    events: tuple[int, ...] = ()  # container events (EventStreamer numbers), in order
    receipts: tuple[Receipt, ...] = ()  # tracked events, in order


class Delivery:
    """The outbox, the frame numbers and the unconfirmed frames of the Connection."""

    def __init__(self, outbox_limit: int, margin: float = 0.0) -> None:
        self.outbox_limit = outbox_limit
        self.margin = margin  # how long the link must outlive a pong for it to confirm
        self.dropped = 0  # frames the full outbox dropped since the start
        self._outbox: deque[str] = deque()
        self._seq = 0  # the number of the last frame sent (never reused, across links)
        self._unacked: deque[_Sent] = deque()  # sent on this link, no pong yet
        self._ponged: deque[tuple[float, _Sent]] = deque()  # (when the pong came, the frame)
        #: container events sent on this link, from ``_event_floor`` up: every number below
        #: it is confirmed for good (the cursor said so), so it is never sent again
        self._sent_events: set[int] = set()
        self._event_floor = 0
        self._prune_at = PRUNE_EVENTS
        self._tracked_sent: set[Receipt] = set()  # tracked events sent on this link
        #: the EventStreamer was asked to replay: live events wait for it (it holds them too)
        self.awaiting_replay = False
        #: a link ended with frames ponged less than the margin before its end, and no replay
        #: has been asked for since: the next link waits the margin before asking for one
        self.doubtful = False

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    @property
    def unconfirmed(self) -> int:
        """Frames sent on this link and not confirmed yet (ponged less than ``margin`` ago, or
        not ponged at all)."""
        return len(self._ponged) + len(self._unacked)

    @property
    def last_seq(self) -> int:
        return self._seq

    # --- while disconnected ---------------------------------------------------------------------

    def queue(self, text: str) -> None:
        """Keep a frame for the next link; a full outbox drops its oldest frame to make room."""
        if len(self._outbox) >= self.outbox_limit:
            self._outbox.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "outbox full (%d messages) while disconnected: dropped the oldest; "
                    "%d dropped so far",
                    self.outbox_limit,
                    self.dropped,
                )
        self._outbox.append(text)

    def take_outbox(self) -> list[str]:
        """Everything queued, oldest first, to send on the new link; the outbox is empty after."""
        queued = list(self._outbox)
        self._outbox.clear()
        return queued

    # --- on a link ------------------------------------------------------------------------------

    def claim_event(self, event_seq: int, floor: int = 0) -> bool:
        """Whether a container event is still to be sent on this link (True once per link).

        ``floor``: the cursor's oldest unconfirmed number when it numbered this event; every
        event below it is confirmed for good and never offered again, so the numbers below
        are forgotten (the set stays bounded by the cursor's unconfirmed events, however long
        the link lives) and an event below it is not sent again.
        """
        if floor > self._event_floor:
            self._event_floor = floor
            if len(self._sent_events) >= self._prune_at:
                self._sent_events = {s for s in self._sent_events if s >= floor}
                self._prune_at = max(PRUNE_EVENTS, 2 * len(self._sent_events))
        if event_seq < self._event_floor or event_seq in self._sent_events:
            return False
        self._sent_events.add(event_seq)
        return True

    @property
    def claimed_events(self) -> int:
        """Container event numbers this link still remembers having sent."""
        return len(self._sent_events)

    def claim_tracked(self, receipt: Receipt) -> bool:
        """Whether a tracked event is still to be sent on this link (True once per link)."""
        if receipt in self._tracked_sent:
            return False
        self._tracked_sent.add(receipt)
        return True

    def sent(self, text: str, *, event_seq: int = 0, receipt: Receipt | None = None) -> int:
        """Number a frame just sent and keep it until confirmed; the ping after it carries the
        number returned."""
        self._seq += 1
        self._unacked.append(_Sent(self._seq, text, event_seq, receipt))
        return self._seq

    def confirm(self, ack: int, at: float) -> Confirmed:
        """A pong carrying ``ack``, read at ``at``: the backend's WebSocket layer read every frame
        up to that number. Those frames confirm once the link outlives this pong by ``margin``;
        the pong itself proves the link alive at ``at``, so returns what earlier pongs confirm
        now."""
        while self._unacked and self._unacked[0].seq <= ack:
            self._ponged.append((at, self._unacked.popleft()))
        return self.alive_at(at)

    def alive_at(self, at: float) -> Confirmed:
        """The link was alive at ``at``: confirm the frames ponged at least ``margin`` before."""
        events: list[int] = []
        receipts: list[Receipt] = []
        horizon = at - self.margin
        while self._ponged and self._ponged[0][0] <= horizon:
            sent = self._ponged.popleft()[1]
            if sent.event_seq:
                events.append(sent.event_seq)
            if sent.receipt is not None:
                receipts.append(sent.receipt)
        return Confirmed(tuple(events), tuple(receipts))

    def confirm_all(self) -> Confirmed:
        """The backend read everything sent on this link: it echoed the close frame we sent
        after it, and a backend's handler reads what came before a close before it ends."""
        self._ponged.extend((float("-inf"), sent) for sent in self._unacked)
        self._unacked.clear()
        return self.alive_at(float("inf"))

    def link_lost(self) -> int:
        """The link is gone: unconfirmed plain frames go back to the front of the outbox, in
        order (events and tracked events come back from their owners); the per-link memory is
        cleared. Call :meth:`alive_at` first with the link's last sign of life. Returns how
        many sent frames were not confirmed."""
        sent = [s for _, s in self._ponged] + list(self._unacked)
        self.doubtful = self.doubtful or bool(self._ponged)
        again = [s.text for s in sent if not s.event_seq and s.receipt is None]
        self._outbox.extendleft(reversed(again))
        self._ponged.clear()
        self._unacked.clear()
        self._sent_events.clear()
        self._prune_at = PRUNE_EVENTS
        self._tracked_sent.clear()
        self.awaiting_replay = False
        return len(sent)
