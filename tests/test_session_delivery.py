"""At-least-once delivery (actors/session/delivery.py): numbering, confirmation, the outbox, and
what goes again after a drop. Plain objects, no threads, no link."""

from __future__ import annotations

import logging

import pytest

from actors.session.delivery import Confirmed, Delivery
from messages.roles import Role


def test_frames_are_numbered_and_a_pong_confirms_every_frame_up_to_its_number() -> None:
    d = Delivery(outbox_limit=10)
    assert [d.sent(f"f{n}") for n in range(3)] == [1, 2, 3]
    assert d.unconfirmed == 3 and d.last_seq == 3
    assert d.confirm(2) == Confirmed()  # plain frames: nobody to tell
    assert d.unconfirmed == 1
    assert d.confirm(2) == Confirmed() and d.unconfirmed == 1  # a repeated pong changes nothing
    d.confirm(3)
    assert d.unconfirmed == 0


def test_a_pong_confirms_events_and_tracked_events_to_their_owners_once() -> None:
    d = Delivery(outbox_limit=10)
    d.sent("e7", event_seq=7)
    d.sent("plain")
    d.sent("deploy", receipt=(Role.DEPLOYER, "d-1"))
    d.sent("e8", event_seq=8)
    assert d.confirm(3) == Confirmed(events=(7,), receipts=((Role.DEPLOYER, "d-1"),))
    assert d.confirm(3) == Confirmed()
    assert d.confirm_all() == Confirmed(events=(8,))
    assert d.unconfirmed == 0


def test_each_event_is_sent_once_per_link() -> None:
    d = Delivery(outbox_limit=10)
    assert d.claim_event(1) and not d.claim_event(1) and d.claim_event(2)
    assert d.claim_tracked((Role.DEPLOYER, "k")) and not d.claim_tracked((Role.DEPLOYER, "k"))
    assert d.claim_tracked((Role.UPDATER, "k"))  # keys are per owner
    d.link_lost()
    assert d.claim_event(1) and d.claim_tracked((Role.DEPLOYER, "k"))  # a new link: again


def test_a_lost_link_requeues_unconfirmed_plain_frames_first_and_in_order() -> None:
    d = Delivery(outbox_limit=10)
    for n in range(4):
        d.sent(f"f{n}")
    d.sent("event", event_seq=1)  # the EventStreamer replays it
    d.sent("tracked", receipt=(Role.DEPLOYER, "d"))  # the Deployer sends it again
    d.confirm(1)
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
