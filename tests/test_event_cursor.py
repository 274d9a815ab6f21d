"""EventCursor (actors/event_streamer.py): the resume point and the event outbox, without Docker.

The cursor is plain logic: ``since_param`` is where a new subscription starts, ``accept`` numbers
a new event and drops one already forwarded, ``confirm`` forgets what the backend has read and
``unconfirmed`` is what a reconnect replays, oldest first. The last test drives the real
EventStreamer with a fake client at its seam to show the actor resumes with that ``since=``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.base import Peers
from actors.event_streamer import EventCursor, EventStreamerActor
from agent_cli import fanouts
from messages.common import Ping
from messages.docker import (
    CACHE_ACTIONS,
    STATS_ACTIONS,
    ContainerEventObserved,
    EventsReplay,
    Resubscribe,
)
from messages.roles import Role, Subscriber
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.support.waiting import wait_for

S = 1_000_000_000  # nanoseconds in a second
T0 = 1_750_000_000 * S  # a whole second


def event(at_ns: int, container: str = "c1", action: str = "start") -> ContainerEventObserved:
    return ContainerEventObserved(
        container_id=container,
        container_name=f"name-{container}",
        image="busybox",
        action=action,
        time=at_ns // S,
        time_nano=at_ns,
        attributes=(("name", f"name-{container}"),),
    )


def keys(events: tuple[ContainerEventObserved, ...]) -> list[tuple[int, str, str]]:
    return [e.key for e in events]


# --- since= -------------------------------------------------------------------------------------


def test_since_is_the_start_in_whole_seconds_rounded_down() -> None:
    assert EventCursor(T0 + 999_999_999).since_param() == T0 // S
    assert EventCursor(T0).since_param() == T0 // S


def test_since_follows_the_newest_event_accepted_never_back() -> None:
    cursor = EventCursor(T0)
    cursor.accept(event(T0 + 2 * S + 500, "a"))
    assert cursor.since_param() == T0 // S + 2
    cursor.accept(event(T0 + S + 700_000_000, "b"))  # late but new (same 1 s window as the start)
    assert cursor.since_param() == T0 // S + 2
    assert cursor.since_ns == T0 + 2 * S + 500


def test_a_resubscription_replays_the_overlap_and_only_the_new_events_pass() -> None:
    """Docker answers ``since=<whole second>`` with everything from that second on: what the
    cursor already forwarded comes again and is dropped; an event of that same second that it
    has not seen (another container) is new and passes; nothing is numbered twice."""
    cursor = EventCursor(T0)
    first = [event(T0 + 100, "a"), event(T0 + S + 200, "a", "die"), event(T0 + S + 300, "b")]
    assert [cursor.accept(e) is not None for e in first] == [True, True, True]
    since = cursor.since_param()
    assert since == T0 // S + 1

    replayed = [
        event(T0 + S + 200, "a", "die"),  # already forwarded
        event(T0 + S + 250, "c"),  # same second, never seen: must not be lost
        event(T0 + S + 300, "b"),  # already forwarded
        event(T0 + 2 * S, "a", "destroy"),  # new
    ]
    assert all(e.time_nano >= since * S for e in replayed)  # what since= returns
    accepted = [cursor.accept(e) for e in replayed]
    passed = [a for a in accepted if a is not None]
    assert [(a.container_id, a.action, a.seq) for a in passed] == [
        ("c", "start", 4),
        ("a", "destroy", 5),
    ]


def test_an_event_from_before_the_resume_window_is_dropped_even_if_never_seen() -> None:
    cursor = EventCursor(T0 + 5 * S)
    assert cursor.accept(event(T0 + 3 * S, "old")) is None
    assert cursor.accept(event(T0 + 4 * S, "edge")) is not None  # within one second: kept
    assert [e.container_id for e in cursor.unconfirmed()] == ["edge"]


# --- duplicates ---------------------------------------------------------------------------------


def test_a_duplicate_is_dropped_and_takes_no_number() -> None:
    cursor = EventCursor(T0)
    one = cursor.accept(event(T0 + 10))
    assert one is not None and one.seq == 1
    assert cursor.accept(event(T0 + 10)) is None
    two = cursor.accept(event(T0 + 10, action="die"))  # same time, other action: new
    three = cursor.accept(event(T0 + 10, container="c2"))  # same time, other container: new
    assert two is not None and three is not None
    assert (two.seq, three.seq) == (2, 3)
    assert len(cursor.unconfirmed()) == 3


def test_the_duplicate_memory_is_bounded_and_keeps_the_newest_keys() -> None:
    cursor = EventCursor(T0, memory=3)
    for i in range(5):
        assert cursor.accept(event(T0 + i, f"c{i}")) is not None
    for i in (2, 3, 4):  # the last `memory` keys are still known
        assert cursor.accept(event(T0 + i, f"c{i}")) is None
    assert cursor.accept(event(T0, "c0")) is not None  # forgotten: the memory is bounded


def test_the_duplicate_memory_holds_only_the_resume_window() -> None:
    """Keys older than a second before the newest event are forgotten: such an event is refused
    by its time anyway, so a burst of events leaves no memory behind once time moves on."""
    cursor = EventCursor(T0)
    for i in range(1000):
        assert cursor.accept(event(T0 + i * 1_000_000, f"c{i}")) is not None  # 1 s of events
    assert cursor.remembered == 1000
    late = event(T0 + 998 * 1_000_000, "late")  # out of order, inside the window: new
    assert cursor.accept(late) is not None
    assert cursor.accept(late) is None
    assert cursor.accept(event(T0 + 500 * 1_000_000, "c500")) is None  # still known
    newest = T0 + 2 * S + 999 * 1_000_000
    assert cursor.accept(event(newest, "next")) is not None
    assert cursor.remembered == 1  # only the new one: the others fell out of the window
    for i in (0, 500, 998):  # forgotten, yet still refused: too old for the window
        assert cursor.accept(event(T0 + i * 1_000_000, f"c{i}")) is None
    assert cursor.accept(event(newest - S, "edge")) is not None  # inside it: new


# --- confirmation and replay --------------------------------------------------------------------


def test_accepted_events_wait_for_confirmation_and_replay_oldest_first() -> None:
    cursor = EventCursor(T0)
    accepted = [cursor.accept(event(T0 + i * S, f"c{i}")) for i in range(5)]
    assert [a.seq for a in accepted if a is not None] == [1, 2, 3, 4, 5]
    assert [e.seq for e in cursor.unconfirmed()] == [1, 2, 3, 4, 5]

    cursor.confirm((4, 2))  # any order
    assert [e.seq for e in cursor.unconfirmed()] == [1, 3, 5]
    cursor.confirm((2, 99))  # already confirmed, never issued: nothing happens
    later = cursor.accept(event(T0 + 9 * S, "c9"))
    assert later is not None and later.seq == 6
    replay = cursor.unconfirmed()
    assert [e.seq for e in replay] == [1, 3, 5, 6]
    assert keys(replay) == sorted(keys(replay))  # oldest first
    assert [e.container_id for e in replay] == ["c0", "c2", "c4", "c9"]

    cursor.confirm(tuple(e.seq for e in replay))
    assert cursor.unconfirmed() == ()


def test_each_event_carries_the_oldest_unconfirmed_number_as_its_floor() -> None:
    """The floor lets the Connection forget the events it sent below it: the cursor never offers
    those again (confirmed, or dropped beyond its limit)."""
    cursor = EventCursor(T0, limit=3)
    first = cursor.accept(event(T0 + 1, "a"))
    assert first is not None and (first.seq, first.floor) == (1, 1)  # itself: unconfirmed
    cursor.accept(event(T0 + 2, "b"))
    cursor.confirm((1,))
    third = cursor.accept(event(T0 + 3, "c"))
    assert third is not None and third.floor == 2
    cursor.confirm((2, 3))
    fourth = cursor.accept(event(T0 + 4, "d"))
    assert fourth is not None and fourth.floor == 4  # all before it confirmed
    for i in range(5, 8):  # beyond the limit: the oldest go, and the floor with them
        last = cursor.accept(event(T0 + i, f"e{i}"))
    assert last is not None and last.seq == 7 and last.floor == 5
    assert [e.seq for e in cursor.unconfirmed()] == [5, 6, 7]
    assert all(e.floor <= e.seq for e in cursor.unconfirmed())


def test_numbers_and_unconfirmed_events_outlive_one_streamer() -> None:
    """A restarted EventStreamer gets the same cursor: numbering goes on, nothing is lost."""
    cursor = EventCursor(T0)
    cursor.accept(event(T0 + 1, "a"))
    cursor.accept(event(T0 + 2, "b"))
    cursor.confirm((1,))
    # ... the streamer crashes; its successor replays, then keeps numbering
    assert [e.container_id for e in cursor.unconfirmed()] == ["b"]
    nxt = cursor.accept(event(T0 + 3, "c"))
    assert nxt is not None and nxt.seq == 3


def test_beyond_the_limit_the_oldest_unconfirmed_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="actors.event_streamer")
    cursor = EventCursor(T0, limit=3)
    for i in range(6):
        cursor.accept(event(T0 + i, f"c{i}"))
    assert [e.container_id for e in cursor.unconfirmed()] == ["c3", "c4", "c5"]
    assert cursor.dropped == 3
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1, errors  # the first drop is logged, the next ones only per 1000
    assert "more than 3 container events not confirmed" in errors[0]


# --- the actor resumes with the cursor's since= -------------------------------------------------


def _raw(e: ContainerEventObserved) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": e.action,
        "Actor": {"ID": e.container_id, "Attributes": dict(e.attributes)},
        "time": e.time,
        "timeNano": e.time_nano,
    }


class _Stream:
    """docker-py's event stream: yields what the test puts, ends at ``None`` or on close."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (item := self.items.get()) is not None:
            yield item

    def close(self) -> None:
        self.closed.set()
        self.items.put(None)


class _EventsClient:
    """A docker APIClient that only serves ``events()``; records each subscription's since."""

    def __init__(self) -> None:
        self.subscriptions: queue.SimpleQueue[tuple[int, _Stream]] = queue.SimpleQueue()

    def events(self, *, since: int, filters: Any = None, decode: bool = False) -> _Stream:
        assert filters == {"type": ["container"]} and decode
        stream = _Stream()
        self.subscriptions.put((since, stream))
        return stream

    def close(self) -> None:
        pass


def test_the_streamer_resubscribes_with_the_cursors_since_and_forwards_each_event_once() -> None:
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    connection, gateway = ProbeHandle(), ProbeHandle()
    peers = Peers()
    peers.set(Role.CONNECTION, connection.ref)
    peers.set(Role.DOCKER_GATEWAY, gateway.ref)
    cursor = EventCursor(T0 + 400)
    client = _EventsClient()
    ref = EventStreamerActor.start(
        make_ctx(peers, scheduler, clock, child_id="event_streamer"),
        docker_host="unix:///nowhere",
        cursor=cursor,
        forward_to=fanouts().event_forward,
        event_subscribers=fanouts().events,
        client_factory=lambda: client,  # type: ignore[arg-type,return-value]
    )
    try:
        assert connection.expect(EventsReplay).events == ()  # nothing was pending
        since, stream = client.subscriptions.get(timeout=5)
        assert since == T0 // S
        a, b = event(T0 + S + 100, "a"), event(T0 + S + 200, "b")
        stream.items.put(_raw(a))
        stream.items.put(_raw(b))
        got = [connection.expect(ContainerEventObserved) for _ in range(2)]
        assert [(e.container_id, e.seq) for e in got] == [("a", 1), ("b", 2)]

        stream.items.put(None)  # dockerd restarted: the stream ends
        wait_for(lambda: scheduler.pending(Resubscribe), 5, "the resubscription timer")
        scheduler.advance(5.0)
        since, stream = client.subscriptions.get(timeout=5)
        assert since == T0 // S + 1  # the newest forwarded event's second
        c = event(T0 + S + 150, "c")  # same second, not seen before
        d = event(T0 + 2 * S, "a", "die")
        for e in (a, c, b, d):  # Docker replays the whole second, then goes on
            stream.items.put(_raw(e))
        got = [connection.expect(ContainerEventObserved) for _ in range(2)]
        assert [(e.container_id, e.action, e.seq) for e in got] == [
            ("c", "start", 3),
            ("a", "die", 4),
        ]
        # the gateway gets the actions its cache follows (the starts; not the die), once each
        forwarded = [gateway.expect(ContainerEventObserved).seq for _ in range(3)]
        assert forwarded == [1, 2, 3]
        ref.ask(Ping(), timeout=3)
        gateway.ref.ask(Ping(), timeout=3)
        assert not [m for m in gateway.received if isinstance(m, ContainerEventObserved)]
    finally:
        ref.stop()
        connection.ref.stop()
        gateway.ref.stop()
    assert stream.closed.is_set()
    assert not [m for m in connection.received if isinstance(m, ContainerEventObserved)]
    assert [e.seq for e in cursor.unconfirmed()] == [1, 2, 3, 4]


def test_the_streamer_tells_each_event_to_the_subscribers_it_is_given_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fan-out is the composition root's list: the forwarding subscriber gets each event from
    the reader, the others what their actions ask for; an optional subscriber that is not running
    misses events quietly, a required one is a dead letter, a role not listed gets nothing."""
    caplog.set_level(logging.WARNING, logger="actors.base")
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    forward, stats, health, connection = ProbeHandle(), ProbeHandle(), ProbeHandle(), ProbeHandle()
    peers = Peers()
    peers.set(Role.UPDATER, forward.ref)
    peers.set(Role.STATS, stats.ref)
    peers.set(Role.HEALTH_CHECKS, health.ref)
    peers.set(Role.CONNECTION, connection.ref)  # running, but not a subscriber here
    client = _EventsClient()
    ref = EventStreamerActor.start(
        make_ctx(peers, scheduler, clock, child_id="event_streamer"),
        docker_host="unix:///nowhere",
        cursor=EventCursor(T0),
        forward_to=Subscriber(Role.UPDATER),
        event_subscribers=(
            Subscriber(Role.SHELL, optional=True),  # not running: no dead letter
            Subscriber(Role.STATS, actions=frozenset({"start"})),
            Subscriber(Role.DOCKER_GATEWAY),  # not running: a dead letter per event
            Subscriber(Role.HEALTH_CHECKS),
        ),
        client_factory=lambda: client,  # type: ignore[arg-type,return-value]
    )
    try:
        _, stream = client.subscriptions.get(timeout=5)
        stream.items.put(_raw(event(T0 + 100, "a")))
        stream.items.put(_raw(event(T0 + 200, "a", "die")))
        assert [forward.expect(ContainerEventObserved).action for _ in range(2)] == ["start", "die"]
        assert [health.expect(ContainerEventObserved).action for _ in range(2)] == ["start", "die"]
        assert stats.expect(ContainerEventObserved).action == "start"
        ref.ask(Ping(), timeout=5)
        stats.ref.ask(Ping(), timeout=5)
        assert not [m for m in stats.received if isinstance(m, ContainerEventObserved)]
        assert not [m for m in connection.received if isinstance(m, ContainerEventObserved)]
        dead = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
        assert dead == ["dead letter: ContainerEventObserved for docker_gateway (not running)"] * 2
    finally:
        ref.stop()
        for probe in (forward, stats, health, connection):
            probe.ref.stop()


def test_the_composition_root_forwards_events_to_the_connection_then_gateway_and_stats() -> None:
    """Today's wiring: the Connection first, from the reader; then the gateway (the actions its
    cache follows) and stats (those its streams follow); only the gateway must run."""
    assert Subscriber(Role.CONNECTION, optional=True) == fanouts().event_forward
    assert (
        Subscriber(Role.DOCKER_GATEWAY, actions=CACHE_ACTIONS),
        Subscriber(Role.STATS, optional=True, actions=STATS_ACTIONS),
    ) == fanouts().events
