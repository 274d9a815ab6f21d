"""Lifecycle faults every actor shares: a failing ``on_start``, and a release racing a reader.

* ``on_start`` raising after it started something (a reader thread, a stream, a timer): pykka
  runs neither ``on_stop`` nor ``on_failure``, so ``SupervisedActor`` releases it itself.
* The EventStreamer released while its reader thread is inside ``client.events()``: the stream
  obtained afterwards must be closed at once, not stored and read until the next Docker event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.base import ActorContext, Peers, SupervisedActor
from actors.event_streamer import EventCursor, EventStreamerActor
from actors.health_checks import HealthCheckActor, HealthCheckMemory
from actors.stats import StatsActor, StatsSettings
from agent_cli import fanouts
from tests.support.fakes import FakeClock, FakeScheduler, make_ctx
from tests.test_stats_actor import FakeStreams


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    new = [t for t in threading.enumerate() if t not in before]
    for thread in new:
        thread.join(timeout=3)
    alive = [t.name for t in new if t.is_alive()]
    assert not alive, f"threads still alive after the test: {alive}"


def ctx(child_id: str = "x") -> ActorContext:
    clock = FakeClock()
    return make_ctx(Peers(), FakeScheduler(clock), clock, child_id=child_id)


def start_fails(ref_factory: Any) -> None:
    """Starting the actor must fail like the supervisor sees it: the confirming ask dies."""
    ref = ref_factory()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("ping", timeout=5)


class Leaky(SupervisedActor):
    """Starts a thread and a timer, then fails: every subclass gets the release for free."""

    def __init__(self, ctx: ActorContext, stop: threading.Event) -> None:
        super().__init__(ctx)
        self.stop_event = stop
        self.released = 0

    def on_start(self) -> None:
        self._thread = threading.Thread(target=self.stop_event.wait, name="Leaky-reader")
        self._thread.start()
        self._timer = self.tell_self_later(60, "tick")
        raise RuntimeError("injected on_start failure")

    def _release(self) -> None:
        self.released += 1
        self.stop_event.set()
        self._timer.cancel()
        self._thread.join(2)


class LeakierChild(Leaky):
    def on_start(self) -> None:
        super().on_start()


@pytest.mark.parametrize("cls", [Leaky, LeakierChild])
def test_a_failing_on_start_releases_what_it_started(cls: type[Leaky]) -> None:
    stop = threading.Event()
    context = ctx()
    start_fails(lambda: cls.start(context, stop))
    assert stop.wait(5), "the thread on_start had started was never stopped"
    assert not context.scheduler.pending()  # type: ignore[attr-defined]


def test_a_release_that_raises_after_a_failed_start_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(SupervisedActor):
        def on_start(self) -> None:
            raise RuntimeError("injected on_start failure")

        def _release(self) -> None:
            raise RuntimeError("injected release failure")

    start_fails(lambda: Broken.start(ctx("broken")))
    assert "releasing after a failed start failed" in caplog.text


# --- real actors whose on_start starts threads ------------------------------------------------


class BlockingEvents:
    """A docker-py events() stream that yields nothing until it is closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        self.closed.wait(10)
        return iter(())

    def close(self) -> None:
        self.closed.set()


class FakeDockerClient:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()
        self.stream = BlockingEvents()
        self.closed = False

    def events(self, **_kwargs: Any) -> BlockingEvents:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        return self.stream

    def close(self) -> None:
        self.closed = True


def test_event_streamer_whose_on_start_fails_stops_its_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeDockerClient()

    subscribe = EventStreamerActor._subscribe

    def subscribe_then_fail(self: EventStreamerActor) -> None:
        subscribe(self)
        raise RuntimeError("injected failure after the reader started")

    monkeypatch.setattr(EventStreamerActor, "_subscribe", subscribe_then_fail)
    start_fails(
        lambda: EventStreamerActor.start(
            ctx("event_streamer"),
            docker_host="unix:///nowhere",
            cursor=EventCursor(0),
            forward_to=fanouts().event_forward,
            event_subscribers=fanouts().events,
            client_factory=lambda: client,  # type: ignore[arg-type,return-value]
        )
    )
    assert client.entered.wait(5)
    assert client.stream.closed.wait(5), "the reader's stream was never closed"


def test_stats_actor_whose_on_start_fails_stops_its_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeStreams.instances.clear()

    def activate_fails(self: StatsActor) -> None:
        raise RuntimeError("injected failure after the streams started")

    monkeypatch.setattr(StatsActor, "_activate", activate_fails)
    start_fails(
        lambda: StatsActor.start(
            ctx("stats"),
            settings=StatsSettings(docker_host="unix:///nowhere", host_roots=None),
            streams_factory=FakeStreams,
        )
    )
    assert FakeStreams.instances and FakeStreams.instances[-1].stopped


def test_health_checks_whose_on_start_fails_close_their_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pools: list[Any] = []
    original = HealthCheckActor._start_loop

    def start_loop_fails(self: HealthCheckActor) -> None:
        original(self)
        pools.append(self._pool)
        raise RuntimeError("injected failure after the loop started")

    monkeypatch.setattr(HealthCheckActor, "_start_loop", start_loop_fails)
    memory = HealthCheckMemory()
    memory.remember(connected=True, configs=())
    context = ctx("health_checks")
    start_fails(lambda: HealthCheckActor.start(context, memory=memory))
    assert pools and pools[0].closed
    assert not context.scheduler.pending()  # type: ignore[attr-defined]


# --- EventStreamer: release while the reader is inside client.events() ------------------------


def test_a_stream_obtained_after_the_release_is_closed_at_once() -> None:
    gate = threading.Event()
    client = FakeDockerClient(gate)
    actor = EventStreamerActor(
        ctx("event_streamer"),
        docker_host="unix:///nowhere",
        cursor=EventCursor(0),
        forward_to=fanouts().event_forward,
        event_subscribers=fanouts().events,
        client_factory=lambda: client,  # type: ignore[arg-type,return-value]
    )
    actor._subscribe()  # starts the reader (generation 1)
    assert client.entered.wait(5)  # the reader is inside client.events()
    actor._close_stream()  # the actor is released meanwhile
    gate.set()  # ... and only now does Docker answer with the stream
    reader = actor._thread
    assert reader is not None
    assert reader.join(5), "the reader kept reading a stream its owner had closed"
    assert client.stream.closed.is_set()
    assert client.closed
