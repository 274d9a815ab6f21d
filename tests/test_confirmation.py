"""Confirming delivery without a ping per frame (issue 13), as plain logic and without threads.

* :class:`BurstPings` and the link's writer loop: a burst of frames gets one ping, carrying the
  number of its last frame; a keepalive ping that already carried it makes another one needless.
* :class:`EventCursor` delivers under its lock, so events told to the Connection straight from
  the reader thread keep their numbering order and never cross a replay.
* An event unconfirmed when the link drops is replayed once on the next link, and one the pong
  confirmed never again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import websocket

from actors.base import SystemClock
from actors.event_streamer import EventCursor
from actors.link.websocket import BurstPings, LinkSettings, WebSocketLink
from actors.session.delivery import Delivery
from messages.docker import ContainerEventObserved

S = 1_000_000_000
T0 = 1_750_000_000 * S


def event(i: int) -> ContainerEventObserved:
    return ContainerEventObserved(
        container_id=f"c{i}",
        container_name=f"n{i}",
        image="busybox",
        action="start",
        time=(T0 + i) // S,
        time_nano=T0 + i,
        attributes=(),
    )


# --- one ping per burst -----------------------------------------------------------------------


def test_a_burst_gets_one_ping_carrying_its_last_number() -> None:
    pings = BurstPings()
    due = []
    for n in range(1, 6):
        pings.wrote(n)
        due.append(pings.due(queue_empty=n == 5))  # frames 1-4 had more queued behind them
    assert due == [None, None, None, None, 5]
    assert pings.due(queue_empty=True) is None  # nothing new since


def test_each_lone_frame_is_pinged_and_a_keepalive_covers_what_it_carried() -> None:
    pings = BurstPings()
    pings.wrote(1)
    assert pings.due(queue_empty=True) == 1
    pings.wrote(2)
    pings.pinged(2)  # a keepalive ping carrying 2 went out first
    assert pings.due(queue_empty=True) is None
    pings.wrote(3)
    pings.pinged(1)  # an older keepalive: 3 still needs its ping
    assert pings.due(queue_empty=True) == 3


class RecordingSocket:
    """websocket-client's WebSocket as the writer uses it: frames it writes on ``sock`` (with
    a zero mask, so the payload reads as sent), pings through ``ping``."""

    def __init__(self) -> None:
        self.wire: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.get_mask_key = lambda n: b"\0" * n
        self.sock = self

    def sendall(self, data: bytes) -> None:
        assert data[0] == 0x80 | websocket.ABNF.OPCODE_TEXT  # one final text frame
        size, start = data[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        payload = data[start + 4 :]  # after the (zero) masking key
        assert len(payload) == size
        self.wire.append(("frame", payload.decode()))

    def ping(self, payload: bytes) -> None:
        self.wire.append(("ping", payload))


class QueuedOnce:
    """The writer's queue holding ``items`` put at once; drained, the writer is told to stop."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def get(self) -> Any:
        return self.items.pop(0) if self.items else None

    def empty(self) -> bool:
        return not self.items


def written(*items: tuple[str, int] | str) -> list[tuple[str, Any]]:
    """What the link's writer loop puts on the wire for ``items`` queued at once."""
    link = WebSocketLink(LinkSettings(url="ws://127.0.0.1:1"), 1, "{}", None, SystemClock())  # type: ignore[arg-type]
    ws = RecordingSocket()
    assert link._ws.adopt(ws)  # type: ignore[arg-type]
    queued: list[Any] = []
    link._outgoing.put = queued.append  # type: ignore[method-assign,assignment]
    for item in items:
        if isinstance(item, tuple):
            link.send(*item)
        else:
            link.send(item)
    link._outgoing = QueuedOnce(queued)  # type: ignore[assignment]
    link._write()  # on this thread: it returns once the queue is drained
    return ws.wire


def test_the_writer_pings_once_after_a_queued_burst() -> None:
    wire = written(("e1", 1), ("e2", 2), "stats", ("e3", 3))
    assert wire == [
        ("frame", "e1"),
        ("frame", "e2"),
        ("frame", "stats"),
        ("frame", "e3"),
        ("ping", b"3"),
    ]


def test_frames_that_need_no_confirmation_get_no_ping() -> None:
    assert written("stats", "stats") == [("frame", "stats"), ("frame", "stats")]


# --- the cursor delivers in order, and never across a replay -------------------------------------


def test_deliveries_follow_the_numbering_and_a_replay_sits_between_them() -> None:
    cursor = EventCursor(T0)
    told: list[Any] = []
    for i in range(3):
        cursor.accept(event(i), told.append)
    cursor.replay(told.append)
    cursor.accept(event(3), told.append)
    assert [e.seq for e in told[:3]] == [1, 2, 3]
    assert [e.seq for e in told[3]] == [1, 2, 3]  # the replay: everything unconfirmed so far
    assert told[4].seq == 4  # accepted after the replay: told after it
    assert cursor.accept(event(3), told.append) is None and len(told) == 5  # seen: not told


# --- an event unconfirmed at a drop is replayed once ------------------------------------------


def test_an_event_unconfirmed_at_a_drop_is_replayed_once() -> None:
    cursor, delivery = EventCursor(T0), Delivery(outbox_limit=10)
    sent: list[int] = []

    def send(e: ContainerEventObserved) -> None:  # what the Connection does with each event
        if delivery.claim_event(e.seq):
            sent.append(e.seq)
            delivery.sent(f"frame {e.seq}", event_seq=e.seq)

    for i in range(3):
        cursor.accept(event(i), send)
    # the burst ping's pong came for frame 1 only
    cursor.confirm(delivery.confirm(1, at=0.0).events)
    delivery.link_lost()  # the link drops before the pong for 2 and 3
    assert sent == [1, 2, 3]

    sent.clear()

    def replayed(events: tuple[ContainerEventObserved, ...]) -> None:
        for e in events:
            send(e)

    cursor.replay(replayed)  # the next link
    for e in cursor.unconfirmed():
        send(e)  # a second replay on the same link (a restarted streamer) sends nothing again
    assert sent == [2, 3]


# --- a frame written directly while the writer is idle -----------------------------------------


class DirectSocket:
    """What send_direct needs of websocket-client's WebSocket, around a real socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.get_mask_key = lambda n: b"\0" * n  # a zero mask: the payload reads as sent


class Started:
    started = True


def direct_link(sndbuf: int | None = None) -> tuple[WebSocketLink, socket.socket]:
    ours, theirs = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    link = WebSocketLink(LinkSettings(url="ws://127.0.0.1:1"), 1, "{}", None, SystemClock())  # type: ignore[arg-type]
    assert link._ws.adopt(DirectSocket(ours))  # type: ignore[arg-type]
    link._writer = Started()  # type: ignore[assignment]  # (no thread: the queue is inspected)
    return link, theirs


def queued(link: WebSocketLink) -> list[Any]:
    items = []
    while not link._outgoing.empty():
        items.append(link._outgoing.get())
    return items


def test_an_idle_link_writes_the_frame_and_its_ping_at_once() -> None:
    link, theirs = direct_link()
    link.send_direct("e1", 7)
    text = websocket.ABNF.create_frame("e1", websocket.ABNF.OPCODE_TEXT)
    ping = websocket.ABNF.create_frame(b"7", websocket.ABNF.OPCODE_PING)
    for frame in (text, ping):
        frame.get_mask_key = lambda n: b"\0" * n
    expected = text.format() + ping.format()
    assert theirs.recv(1024) == expected
    assert queued(link) == []


def test_a_frame_behind_queued_ones_waits_its_turn() -> None:
    link, theirs = direct_link()
    link.send("older", 1)  # not written yet by the writer
    link.send_direct("newer", 2)
    assert queued(link) == [("older", 1), ("newer", 2)]
    theirs.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        assert theirs.recv(1024) == b""  # nothing went out of order


def test_what_the_socket_does_not_take_goes_first_through_the_writer() -> None:
    link, theirs = direct_link(sndbuf=4096)
    big = "x" * 60_000
    link.send_direct(big, 1)
    link.send_direct("next", 2)  # the rest of the big one is still unsent: this one queues
    rest, nxt = queued(link)
    assert type(rest).__name__ == "_Rest" and nxt == ("next", 2)
    received = b""
    theirs.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while chunk := theirs.recv(65536):
            received += chunk
    frame = websocket.ABNF.create_frame(big, websocket.ABNF.OPCODE_TEXT)
    frame.get_mask_key = lambda n: b"\0" * n
    ping = websocket.ABNF.create_frame(b"1", websocket.ABNF.OPCODE_PING)
    ping.get_mask_key = lambda n: b"\0" * n
    assert received + rest.data == frame.format() + ping.format()  # nothing lost, in order
