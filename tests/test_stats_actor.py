"""StatsActor with fakes at its seams: streams, ingest link, clock/scheduler, peers (probes)."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.base import Peers
from actors.link.websocket import LinkSettings
from actors.stats import PARK_AFTER_S, STREAM_SETTLE, StatsActor, StatsSettings
from messages.common import Ping, Secret
from messages.docker import ContainerEventObserved
from messages.outbound import EventOut, LinkStateChanged, RawFrameOut
from messages.roles import Role
from messages.stats import HostStatsTick
from messages.tokens import GetToken, TokenInfo
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.test_stats_math import V1_SAMPLE, write_tree

C1, C2, C3 = ("1" * 64, "2" * 64, "3" * 64)


class FakeStreams:
    instances: list[FakeStreams] = []  # noqa: RUF012

    def __init__(
        self,
        docker_host: str,
        *,
        on_sample: Any,
        on_ended: Any,
        on_listed: Any,
        api_version: str | None = None,
        on_samples: Any = None,
        poll_pause: float = 0.0,
    ) -> None:
        self.on_sample, self.on_ended, self.on_listed = on_sample, on_ended, on_listed
        self.on_samples = on_samples
        self.opened: dict[str, int] = {}
        self.closed: list[str] = []
        self.listings: list[int] = []
        self.parks = 0
        self.stopped = False
        FakeStreams.instances.append(self)

    def open(self, container_id: str, token: int) -> None:
        self.opened[container_id] = token

    def close(self, container_id: str) -> None:
        self.closed.append(container_id)
        self.opened.pop(container_id, None)

    def park(self) -> None:
        self.parks += 1

    def list_running(self, request: int) -> None:
        self.listings.append(request)

    def stop(self) -> None:
        self.stopped = True


@dataclass
class FakeIngest:
    settings: LinkSettings
    token: Secret
    backoff: tuple[float, float]
    offered: list[str] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def start(self) -> None:
        self.started = True

    def offer(self, text: str) -> bool:
        self.offered.append(text)
        return True

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Rig:
    ref: pykka.ActorRef[Any]
    connection: ProbeHandle
    scheduler: FakeScheduler
    ingests: list[FakeIngest]

    @property
    def streams(self) -> FakeStreams:
        return FakeStreams.instances[-1]

    def sync(self) -> None:
        """Inboxes are FIFO: a Ping to the actor, then to the probe, is a barrier."""
        self.ref.ask(Ping(), timeout=2)
        self.connection.ref.ask(Ping(), timeout=2)

    def tell(self, *messages: Any) -> None:
        for m in messages:
            self.ref.tell(m)
        self.sync()

    def settle(self) -> None:
        """Let the stream changes the events asked for happen (they wait STREAM_SETTLE)."""
        self.scheduler.advance(STREAM_SETTLE)
        self.sync()

    def listed(self, *containers: tuple[str, str]) -> None:
        self.streams.on_listed(self.streams.listings[-1], tuple(containers), "")
        self.sync()

    def sample(self, cid: str, raw: dict[str, Any] = V1_SAMPLE) -> None:
        self.streams.on_sample(cid, self.streams.opened[cid], raw)
        self.sync()

    def stats_events(self) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload.text)
            for m in self.connection.received
            if isinstance(m, EventOut) and m.command == "container_stats"
        ]

    def host_frames(self) -> list[dict[str, Any]]:
        return [
            json.loads(m.frame.text) for m in self.connection.received if isinstance(m, RawFrameOut)
        ]


def event(cid: str, action: str, name: str = "web") -> ContainerEventObserved:
    return ContainerEventObserved(
        container_id=cid,
        container_name=name,
        image="busybox",
        action=action,
        time=1,
        time_nano=1,
        attributes=(),
    )


def start_rig(tmp_path: Path, kind: str = "permanent", host: bool = True) -> Rig:
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    peers = Peers()
    connection = ProbeHandle()
    token_store = ProbeHandle(
        lambda m: (
            TokenInfo(token=Secret("tok-" + "x" * 32), kind=kind, source="test")  # type: ignore[arg-type]
            if isinstance(m, GetToken)
            else None
        )
    )
    peers.set(Role.CONNECTION, connection.ref)
    peers.set(Role.TOKEN_STORE, token_store.ref)
    ingests: list[FakeIngest] = []

    def make_ingest(settings: LinkSettings, token: Secret, *, backoff: Any) -> FakeIngest:
        ingests.append(FakeIngest(settings, token, backoff))
        return ingests[-1]

    roots = write_tree(tmp_path, "cpu  1 0 1 10 0 0 0 0\n", {"eth0": ("up", 10, 10)})
    settings = StatsSettings(
        docker_host="unix:///nowhere.sock",
        host_roots=roots if host else None,
        ingest=LinkSettings(url="ws://127.0.0.1:9/api/stats/ws/ingest"),
    )
    ref = StatsActor.start(
        make_ctx(peers, scheduler, clock, child_id="stats"),
        settings=settings,
        streams_factory=FakeStreams,
        ingest_factory=make_ingest,  # type: ignore[arg-type]
    )
    ref.ask(Ping(), timeout=2)
    return Rig(ref, connection, scheduler, ingests)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = start_rig(tmp_path)
    yield r
    r.ref.stop()
    pykka.ActorRegistry.stop_all()


def test_listing_opens_streams_and_each_sample_is_an_unbuffered_event(rig: Rig) -> None:
    assert rig.streams.listings == [1]
    rig.listed((C1, "one"), (C2, "two"))
    assert set(rig.streams.opened) == {C1, C2}
    rig.sample(C1)
    [msg] = [m for m in rig.connection.received if isinstance(m, EventOut)]
    assert msg.buffer is False
    [payload] = rig.stats_events()
    assert payload["container_id"] == C1 and payload["container_name"] == "one"
    assert payload["cpu_percent"] == 100.4 and payload["memory_usage"] == 921_600
    assert rig.ingests[0].offered == [msg.payload.text]  # same numbers to the ingest socket


def test_a_batch_of_samples_is_one_event_each_in_order(rig: Rig) -> None:
    rig.listed((C1, "one"), (C2, "two"))
    opened = rig.streams.opened
    rig.streams.on_samples(((C2, opened[C2], V1_SAMPLE), (C1, opened[C1], V1_SAMPLE)))
    rig.sync()
    assert [p["container_name"] for p in rig.stats_events()] == ["two", "one"]
    assert len(rig.ingests[0].offered) == 2


def test_events_start_and_stop_streams(rig: Rig) -> None:
    rig.listed()
    rig.tell(event(C1, "start", "a"), event(C2, "restart", "b"))
    assert rig.streams.opened == {}  # off the forwarding path: together, a moment later
    rig.settle()
    assert set(rig.streams.opened) == {C1, C2}
    for action in ("die", "stop", "kill"):
        rig.tell(event(C1, "start"))
        rig.settle()
        rig.tell(event(C1, action))
        rig.settle()
        assert C1 not in rig.streams.opened, action
    rig.tell(event(C2, "destroy"), event(C2, "pause"))  # not ours to act on
    rig.settle()
    assert C2 in rig.streams.opened


def test_a_container_that_starts_and_dies_within_the_moment_costs_no_stream(rig: Rig) -> None:
    rig.listed((C2, "two"))
    two = rig.streams.opened[C2]
    rig.tell(event(C1, "start"), event(C1, "die"), event(C2, "die"), event(C2, "start"))
    rig.settle()
    assert C1 not in rig.streams.opened and C1 not in rig.streams.closed  # never opened
    assert rig.streams.opened[C2] != two  # died and started again: a fresh stream
    assert rig.streams.closed.count(C2) == 1


def test_events_during_the_listing_win_over_it(rig: Rig) -> None:
    rig.tell(event(C3, "start", "three"), event(C1, "die"))
    rig.listed((C1, "one"), (C2, "two"))  # Docker answered before the events happened
    assert set(rig.streams.opened) == {C2, C3}
    rig.settle()  # the same events once more, from the batch: nothing changes
    assert set(rig.streams.opened) == {C2, C3}


def test_samples_of_closed_or_replaced_streams_are_dropped(rig: Rig) -> None:
    rig.listed((C1, "one"))
    old = rig.streams.opened[C1]
    rig.tell(event(C1, "die"))
    rig.settle()
    rig.streams.on_sample(C1, old, V1_SAMPLE)
    rig.tell(event(C1, "start"))
    rig.settle()
    rig.streams.on_sample(C1, old, V1_SAMPLE)  # late sample of the old stream
    rig.streams.on_ended(C1, old, "EOF", False)  # the old stream's end
    rig.sync()
    assert rig.stats_events() == []
    assert C1 in rig.streams.opened  # the new stream survived the old one's end
    rig.sample(C1, {"read": "0001-01-01T00:00:00Z"})  # stopped: nothing sent
    assert rig.stats_events() == []
    rig.streams.on_ended(C1, rig.streams.opened[C1], "EOF", False)
    rig.sync()
    rig.tell(event(C1, "start"))  # tracked again only on the next start
    rig.settle()
    assert rig.streams.opened[C1] != old


def test_disconnect_closes_everything_and_reconnect_relists(rig: Rig) -> None:
    rig.listed((C1, "one"), (C2, "two"))
    rig.tell(LinkStateChanged(connected=False))
    assert rig.streams.opened == {} and set(rig.streams.closed) == {C1, C2}
    rig.tell(event(C3, "start"))  # while down: nothing (the next listing resyncs)
    rig.settle()
    assert rig.streams.opened == {}
    rig.scheduler.advance(10)
    frames = len(rig.host_frames())
    rig.scheduler.advance(10)
    assert len(rig.host_frames()) == frames  # no host stats while disconnected
    rig.tell(LinkStateChanged(connected=True))
    assert rig.streams.listings[-1] > 1
    rig.listed((C2, "two"), (C3, "three"))
    assert set(rig.streams.opened) == {C2, C3}


def test_the_streams_park_a_moment_after_the_last_one_closes_unless_one_opens(rig: Rig) -> None:
    rig.listed((C1, "one"))
    rig.tell(event(C1, "die"))
    rig.settle()
    assert rig.streams.opened == {}
    rig.tell(event(C1, "start"))  # restarted within the moment: the loop is wanted again
    rig.settle()
    rig.scheduler.advance(PARK_AFTER_S)
    rig.sync()
    assert rig.streams.parks == 0 and set(rig.streams.opened) == {C1}
    rig.tell(event(C1, "die"))
    rig.settle()
    rig.scheduler.advance(PARK_AFTER_S - 0.01)
    rig.sync()
    assert rig.streams.parks == 0
    rig.scheduler.advance(0.01)
    rig.sync()
    assert rig.streams.parks == 1, "no stream left: the loop thread ends"
    rig.tell(LinkStateChanged(connected=False))
    rig.scheduler.advance(PARK_AFTER_S * 2)
    rig.sync()
    assert rig.streams.parks == 1, "nothing opened since: parked once"


def test_a_failed_listing_is_retried(rig: Rig) -> None:
    rig.streams.on_listed(rig.streams.listings[-1], None, "ConnectionRefusedError")
    rig.sync()
    assert len(rig.streams.listings) == 1
    rig.scheduler.advance(2.0)
    rig.sync()
    assert len(rig.streams.listings) == 2


def test_host_stats_every_two_seconds_baseline_after_each_connect(rig: Rig) -> None:
    rig.tell(LinkStateChanged(connected=True))
    first = rig.host_frames()[-1]
    assert first == {
        "type": "stats",
        "stats": {"cpu_percent": 0.0, "mem_percent": 25.0, "net_bytes_per_sec": 0.0},
    }
    count = len(rig.host_frames())
    rig.scheduler.advance(1.9)
    rig.sync()
    assert len(rig.host_frames()) == count
    rig.scheduler.advance(0.1)
    rig.sync()
    assert len(rig.host_frames()) == count + 1
    assert all(
        isinstance(m, RawFrameOut) and m.buffer is False
        for m in rig.connection.received
        if isinstance(m, RawFrameOut)
    )
    rig.tell(HostStatsTick(generation=0))  # stale tick: ignored
    assert len(rig.host_frames()) == count + 1


def test_no_host_stats_without_roots_and_no_ingest_without_a_permanent_token(
    tmp_path: Path,
) -> None:
    r = start_rig(tmp_path, kind="registration", host=False)
    try:
        r.tell(LinkStateChanged(connected=True))
        r.scheduler.advance(5)
        r.sync()
        assert r.host_frames() == []
        assert r.ingests == []
    finally:
        pykka.ActorRegistry.stop_all()


def test_ingest_gets_the_permanent_token_and_stops_with_the_actor(rig: Rig) -> None:
    [ingest] = rig.ingests
    assert ingest.started and ingest.token.reveal().startswith("tok-")
    assert ingest.settings.url.endswith("/api/stats/ws/ingest")
    assert ingest.backoff == (1.0, 30.0)
    streams = rig.streams
    rig.ref.stop()
    assert ingest.stopped and streams.stopped


def test_the_streams_hand_over_their_samples_in_one_batch_per_interval() -> None:
    """The streams' batching, run here step by step (no loop thread started)."""
    from actors.telemetry.stream_loop import StreamLoop

    batches: list[Any] = []

    def not_batched(*_: Any) -> None:
        raise AssertionError("a sample went out on its own")

    streams = StreamLoop(
        "unix:///nowhere",
        on_sample=not_batched,
        on_ended=lambda *_: None,
        on_samples=batches.append,
        batch_interval=0.25,
    )
    try:
        start = time.monotonic()
        for n, cid in enumerate((C1, C2, C1)):
            streams._sampled(cid, n, {"n": n})
        streams._tick(start)
        assert batches == []  # held until the interval is over
        streams._tick(start + 1)
        # the newest of each stream (a backlog's older samples are stale), in first-sent order
        assert batches == [((C1, 2, {"n": 2}), (C2, 1, {"n": 1}))]
        streams._flush()  # nothing new: no empty batch
        streams._tick(start + 2)
        assert len(batches) == 1
    finally:
        streams.stop()


@contextlib.contextmanager
def _listing_streams(
    tmp_path: Path, **options: Any
) -> Iterator[tuple[socket.socket, Any, queue.Queue[tuple[int, Any, str]]]]:
    """StatsStreams on a unix socket the test answers itself: (the listening socket, the
    streams, their ``on_listed`` answers); both are closed at the end."""
    from actors.telemetry.streams import StatsStreams

    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    listed: queue.Queue[tuple[int, Any, str]] = queue.Queue()
    streams = StatsStreams(
        f"unix://{path}",
        on_sample=lambda *_: None,
        on_ended=lambda *_: None,
        on_listed=lambda *answer: listed.put(answer),
        **options,
    )
    try:
        yield server, streams, listed
    finally:
        streams.stop()
        server.close()


def test_a_listing_docker_never_answers_ends_with_the_streams(tmp_path: Path) -> None:
    """The listing runs on a worker thread of its own; stopping the streams aborts one blocked
    on a daemon that accepted and never answered, so no thread outlives them."""
    with _listing_streams(tmp_path, name="test-streams") as (server, streams, listed):
        streams.list_running(7)
        accepted, _ = server.accept()  # the request arrives; no answer ever will
        with accepted:
            assert accepted.recv(4096).startswith(b"GET /containers/json?filters=")
            listing = [t for t in threading.enumerate() if t.name.startswith("test-streams")]
            assert len(listing) == 1
            streams.stop()
            request, containers, error = listed.get(timeout=5)
            assert (request, containers) == (7, None) and error.startswith("ConnectionError")
            listing[0].join(5)
            assert not listing[0].is_alive()


def test_the_listing_reads_the_running_containers_by_id_and_name(tmp_path: Path) -> None:
    body = json.dumps([{"Id": C1, "Names": ["/web"]}, {"Id": C2, "Names": []}]).encode()
    with _listing_streams(tmp_path, api_version="1.41") as (server, streams, listed):
        streams.list_running(3)
        accepted, _ = server.accept()
        with accepted:
            request = accepted.recv(4096)
            assert request.startswith(b"GET /v1.41/containers/json?filters=%7B%22status%22")
            accepted.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert listed.get(timeout=5) == (3, ((C1, "web"), (C2, "")), "")
