"""The one backoff (actors/runtime/backoff.py) and the rule each of its users keeps.

* Connection: RECONNECT_INITIAL doubling to RECONNECT_MAX with full jitter, reset after a
  registration (PROTOCOL §9; test_connection_actor.py drives the actor through it);
* stats ingest: 1 s doubling to 30 s, never reset, no jitter (§1.5, §9);
* EventStreamer resubscribe and stats listing retry: doubling to their cap, reset once Docker
  answers, however long Docker stays away;
* RepeatLimiter's quiet interval (test_docker_unreachable.py) and the supervisor's restart
  delay (test_supervisor.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from actors.base import Peers
from actors.event_streamer import EventCursor, EventStreamerActor
from actors.link.ingest import IngestLink
from actors.link.websocket import LinkSettings
from actors.runtime.backoff import Backoff, exponential
from agent_cli import fanouts
from messages.common import Secret
from messages.docker import Resubscribe
from messages.stats import RetryListing
from tests.support.fakes import FakeClock, FakeScheduler, make_ctx
from tests.test_stats_actor import start_rig


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


def test_exponential_doubles_from_initial_to_the_cap() -> None:
    assert [exponential(1.0, 8.0, n) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert exponential(0.5, 60.0, -3) == 0.5
    assert exponential(0.2, 5.0, 100_000) == 5.0  # 0.2 * 2**1100 alone overflows a float


def test_without_jitter_the_delays_are_the_caps_and_reset_starts_over() -> None:
    b = Backoff(1.0, 30.0, jitter=False)
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.failures == 7
    b.reset()
    assert (b.failures, b.cap(), b.next_delay()) == (0, 1.0, 1.0)


def test_full_jitter_draws_each_delay_below_its_cap_reproducibly() -> None:
    one, two = (Backoff(1.0, 60.0, random.Random(7)) for _ in range(2))
    delays = [one.next_delay() for _ in range(40)]
    assert delays == [two.next_delay() for _ in range(40)]
    assert all(0 <= d <= exponential(1.0, 60.0, n) for n, d in enumerate(delays))
    assert max(delays[10:]) > 30 and min(delays) < 1  # spread over [0, cap], not fixed


def test_the_ingest_link_backs_off_1s_doubling_to_30s_without_jitter() -> None:
    link = IngestLink(LinkSettings(url="ws://127.0.0.1:9/api/stats/ws/ingest"), Secret("t"))
    backoff = link._backoff
    assert not backoff.jitter
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_the_event_streamer_keeps_resubscribing_after_thousands_of_failures() -> None:
    """Docker away for hours: the delay stays at its cap (the old formula overflowed after
    about 1,000 failures and crashed the actor)."""
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    actor = EventStreamerActor(
        make_ctx(Peers(), scheduler, clock, child_id="event_streamer"),
        docker_host="unix:///nowhere.sock",
        cursor=EventCursor(0),
        forward_to=fanouts().event_forward,
        event_subscribers=fanouts().events,
        retry_delay=(0.2, 5.0),
    )
    delays = []
    for _ in range(1500):
        actor._stream_ended("ConnectionError: Docker is down")
        timer = scheduler.timers.pop()
        assert isinstance(timer.message, Resubscribe)
        delays.append(round(timer.due - clock.now, 6))
    assert delays[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert set(delays[5:]) == {5.0}


def test_the_stats_listing_retry_doubles_to_its_cap_and_resets_once_docker_answers(
    tmp_path: Path,
) -> None:
    rig = start_rig(tmp_path)

    def fail_and_get_delay() -> float:
        rig.streams.on_listed(rig.streams.listings[-1], None, "ConnectionRefusedError")
        rig.sync()
        (timer,) = rig.scheduler.pending(RetryListing)
        delay = timer.due - rig.scheduler.clock.now
        rig.scheduler.advance(delay)  # the retry asks again
        rig.sync()
        return delay

    assert [fail_and_get_delay() for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    rig.listed()  # Docker answers
    assert fail_and_get_delay() == 2
