"""The leak check tests/conftest.py runs after every test (tests/support/leaks.py): it finds the
actors and agent threads a test left behind, waits a bounded time for what is winding down, and
ignores what was there before the test and the threads a test starts for itself.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

import pykka
import pytest

from actors.base import ThreadScheduler
from tests.support import leaks

SHORT = 0.2  # the leak check's bounded wait, for leaks these tests make on purpose


class Idle(pykka.ThreadingActor):
    pass


class Slow(pykka.ThreadingActor):
    """Takes its time to stop: on_stop waits for the test to let it go."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def on_stop(self) -> None:
        self.release.wait(5)


@pytest.fixture
def own_scheduler() -> Iterator[list[ThreadScheduler]]:
    started: list[ThreadScheduler] = []
    yield started
    for scheduler in started:
        scheduler.stop()


# --- leaks ------------------------------------------------------------------------------------


def test_an_actor_left_running_is_reported_and_stopped() -> None:
    baseline = leaks.Baseline.now()
    ref = Idle.start()
    problems = leaks.leftovers(baseline, SHORT)
    assert len(problems) == 1 and problems[0].startswith("actors still running: ['Idle (urn:")
    assert ref.actor_stopped.wait(5), "the leak check stops what it found"


def test_an_agent_thread_left_running_is_reported_by_the_code_it_runs(
    own_scheduler: list[ThreadScheduler],
) -> None:
    baseline = leaks.Baseline.now()
    own_scheduler.append(ThreadScheduler())  # actors/base.py code: an agent thread
    problems = leaks.leftovers(baseline, SHORT)
    assert problems == ["actor/agent threads still alive: ['Scheduler']"]


def test_an_agent_thread_is_found_by_its_code_whatever_its_name() -> None:
    def agent_code(release: threading.Event) -> None:
        release.wait(5)

    def test_code(release: threading.Event) -> None:
        release.wait(5)

    agent_code.__module__ = "actors.some_helper"  # as if defined in the agent's package
    release = threading.Event()
    agent = threading.Thread(target=agent_code, args=(release,), name="no-hint-in-this-name")
    mine = threading.Thread(target=test_code, args=(release,), name="Scheduler")
    partial = threading.Thread(target=functools.partial(agent_code, release))
    for thread in (agent, mine, partial):
        thread.start()
    try:
        assert leaks.is_actor_or_agent_thread(agent)
        assert leaks.is_actor_or_agent_thread(partial)
        assert not leaks.is_actor_or_agent_thread(mine)  # a name alone proves nothing
    finally:
        release.set()
        for thread in (agent, mine, partial):
            thread.join(5)


def test_what_winds_down_within_the_wait_and_what_was_there_before_are_not_leaks() -> None:
    before = Idle.start()  # a module or session fixture's actor
    try:
        baseline = leaks.Baseline.now()
        release = threading.Event()
        slow = Slow.start(release)
        slow.stop(block=False)  # told to stop, still in on_stop when the check begins
        threading.Timer(0.05, release.set).start()
        test_thread = threading.Thread(target=release.wait, args=(5,), name="the-tests-own")
        test_thread.start()  # a thread of the test itself: not the check's business
        assert leaks.leftovers(baseline, 5.0) == []
        assert slow.actor_stopped.is_set()
        test_thread.join(5)
    finally:
        before.stop()


def test_a_restart_replaces_an_actor_and_its_threads_it_adds_nothing(
    own_scheduler: list[ThreadScheduler],
) -> None:
    """A module-scoped agent restarts a crashed actor during a test: same count, no leak."""
    old_actor, old_scheduler = Idle.start(), ThreadScheduler()
    own_scheduler.append(old_scheduler)
    baseline = leaks.Baseline.now()
    old_actor.stop()
    old_scheduler.stop()
    new_actor, new_scheduler = Idle.start(), ThreadScheduler()  # the restarted ones
    own_scheduler.append(new_scheduler)
    try:
        assert leaks.leftovers(baseline, SHORT) == []
        extra = Idle.start()  # one more than before the test: that is a leak
        problems = leaks.leftovers(baseline, SHORT)
        assert len(problems) == 1 and problems[0].startswith("actors still running: ['Idle (")
        assert str(extra) in problems[0] and str(new_actor) not in problems[0]
    finally:
        new_actor.stop()


def test_a_pykka_actor_thread_is_recognised_by_its_loop() -> None:
    ref = Idle.start()
    try:
        threads = [t for t in threading.enumerate() if t.name.startswith("Idle-")]
        assert threads and all(leaks.is_actor_or_agent_thread(t) for t in threads)
        assert not leaks.is_actor_or_agent_thread(threading.current_thread())
    finally:
        ref.stop()
