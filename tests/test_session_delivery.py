"""At-least-once delivery (actors/session/delivery.py): numbering, confirmation, the outbox, and
what goes again after a drop. Plain objects, no threads, no link."""

from __future__ import annotations

import logging

import pytest

from actors.session.delivery import PRUNE_EVENTS, Confirmed, Delivery
from messages.roles import Role


def test_frames_are_numbered_and_a_pong_confirms_every_frame_up_to_its_number() -> None:
    d = Delivery(outbox_limit=10)
    assert [d.sent(f"f{n}") for n in range(3)] == [1, 2, 3]
    assert d.unconfirmed == 3 and d.last_seq == 3
    assert d.confirm(2, at=0.0) == Confirmed()  # plain frames: nobody to tell
    assert d.unconfirmed == 1
    assert d.confirm(2, at=0.0) == Confirmed()  # a repeated pong changes nothing
    assert d.unconfirmed == 1
    d.confirm(3, at=0.0)
    assert d.unconfirmed == 0


def test_a_pong_confirms_events_and_tracked_events_to_their_owners_once() -> None:
    d = Delivery(outbox_limit=10)
    d.sent("e7", event_seq=7)
    d.sent("plain")
    d.sent("deploy", receipt=(Role.DEPLOYER, "d-1"))
    d.sent("e8", event_seq=8)
    assert d.confirm(3, at=0.0) == Confirmed(events=(7,), receipts=((Role.DEPLOYER, "d-1"),))
    assert d.confirm(3, at=0.0) == Confirmed()
    assert d.confirm_all() == Confirmed(events=(8,))
    assert d.unconfirmed == 0


def test_a_pong_confirms_once_the_link_outlives_it_by_the_margin() -> None:
    """The backend's WebSocket layer pongs as soon as it reads the ping; its handler may still
    be behind, and a close then discards what it had not read: so a pong confirms only once
    the link has outlived it by the margin (a later pong, a tick, the link's end)."""
    d = Delivery(outbox_limit=10, margin=1.0)
    d.sent("e1", event_seq=1)
    assert d.confirm(1, at=10.0) == Confirmed()  # ponged, not yet confirmed
    assert d.unconfirmed == 1
    d.sent("e2", event_seq=2)
    assert d.confirm(2, at=10.5) == Confirmed()  # 0.5 s later: e1 not yet either
    assert d.alive_at(10.99) == Confirmed()
    assert d.alive_at(11.0) == Confirmed(events=(1,))  # the link lived 1 s past e1's pong
    assert d.unconfirmed == 1
    d.sent("plain")
    d.sent("e3", event_seq=3)
    assert d.confirm(4, at=12.0) == Confirmed(events=(2,))  # a pong proves the link alive too


def test_a_link_that_ends_within_the_margin_of_a_pong_sends_those_frames_again() -> None:
    d = Delivery(outbox_limit=10, margin=1.0)
    for n in range(3):
        d.sent(f"f{n}")
    d.sent("e", event_seq=9)
    d.confirm(1, at=5.0)
    d.confirm(4, at=6.2)
    # the server closed at 6.5: f0's pong is 1.5 s older, the rest only 0.3 s
    assert d.alive_at(6.5) == Confirmed()
    assert d.link_lost() == 3
    assert d.take_outbox() == ["f1", "f2"]  # e (event 9) comes back from its owner
    assert d.doubtful  # the next link waits the margin before asking for the replay
    d.sent("g")
    d.link_lost()
    assert d.doubtful  # a link that ended with nothing in doubt clears nothing


def test_a_close_echo_confirms_everything_at_once() -> None:
    d = Delivery(outbox_limit=10, margin=1.0)
    d.sent("e1", event_seq=1)
    d.confirm(1, at=0.0)
    d.sent("e2", event_seq=2)
    assert d.confirm_all() == Confirmed(events=(1, 2)) and d.unconfirmed == 0


def test_each_event_is_sent_once_per_link() -> None:
    d = Delivery(outbox_limit=10)
    assert d.claim_event(1) and not d.claim_event(1) and d.claim_event(2)
    assert d.claim_tracked((Role.DEPLOYER, "k")) and not d.claim_tracked((Role.DEPLOYER, "k"))
    assert d.claim_tracked((Role.UPDATER, "k"))  # keys are per owner
    d.link_lost()
    assert d.claim_event(1) and d.claim_tracked((Role.DEPLOYER, "k"))  # a new link: again


def test_a_long_link_forgets_the_events_below_the_cursors_floor() -> None:
    """The per-link memory of sent events is bounded by what the cursor still holds, however
    many events one link carries; an event below the floor is confirmed for good: never again."""
    d = Delivery(outbox_limit=10)
    events = 100 * PRUNE_EVENTS
    for seq in range(1, events + 1):
        # the cursor confirmed all but the last 50: its oldest unconfirmed is seq - 50
        assert d.claim_event(seq, floor=max(1, seq - 50))
        assert d.claimed_events <= 2 * PRUNE_EVENTS
    assert not d.claim_event(events, floor=events - 50)  # within the floor: still remembered
    assert not d.claim_event(events - 500, floor=events - 50)  # below it: confirmed for good
    assert d.claim_event(events + 1, floor=events - 50)


def test_an_event_offered_again_above_the_floor_is_still_refused_after_a_prune() -> None:
    """A restarted EventStreamer replays what its cursor holds unconfirmed: numbers at or above
    the floor, which a prune keeps (the earlier bound forgot confirmed numbers the cursor had
    not heard about yet, and sent one twice)."""
    d = Delivery(outbox_limit=10)
    for seq in range(1, PRUNE_EVENTS + 2):
        d.claim_event(seq, floor=1)
    d.claim_event(PRUNE_EVENTS + 2, floor=PRUNE_EVENTS)  # the prune: keeps PRUNE_EVENTS and up
    assert d.claimed_events == 3
    assert not any(d.claim_event(seq, floor=1) for seq in range(1, PRUNE_EVENTS + 3))


def test_a_lost_link_requeues_unconfirmed_plain_frames_first_and_in_order() -> None:
    d = Delivery(outbox_limit=10)
    for n in range(4):
        d.sent(f"f{n}")
    d.sent("event", event_seq=1)  # the EventStreamer replays it
    d.sent("tracked", receipt=(Role.DEPLOYER, "d"))  # the Deployer sends it again
    d.confirm(1, at=0.0)
    d.awaiting_replay = True
    assert d.link_lost() == 5  # unconfirmed, events included
    d.queue("later")
    assert d.unconfirmed == 0 and not d.awaiting_replay
    assert d.take_outbox() == ["f1", "f2", "f3", "later"]
    assert d.take_outbox() == [] and d.outbox_depth == 0


def test_numbers_are_never_reused_across_links() -> None:
    d = Delivery(outbox_limit=10)
    d.sent("a")
    d.link_lost()
    assert d.sent("b") == 2  # a pong numbered for the old link cannot confirm the new frame


def test_the_outbox_is_bounded_drops_the_oldest_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Delivery(outbox_limit=3)
    with caplog.at_level(logging.ERROR, logger="actors.session.delivery"):
        for n in range(1005):
            d.queue(f"f{n}")
    assert d.dropped == 1002 and d.outbox_depth == 3
    assert d.take_outbox() == ["f1002", "f1003", "f1004"]
    # logged at the first drop and every thousandth, not at each
    assert [r.getMessage().split("; ")[-1] for r in caplog.records] == [
        "1 dropped so far",
        "1000 dropped so far",
    ]
