"""The one worker pool (actors/runtime/pool.py) and the gateway's per-container ordering on it.

The pool serves the HealthChecks (grows to 64 threads for a burst, shrinks when idle) and the
DockerGateway (keyed by container: one command at a time per container, in arrival order, and
a slow one never delays another container). No Docker here: the gateway test uses a client
whose ``stop`` blocks until the test lets it go.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.runtime.pool import WorkerPool
from messages.docker import ContainerOpSucceeded, StartContainer, StopContainer
from tests.support.fakes import start_gateway
from tests.support.waiting import wait_for


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


# --- growing, bounding, shrinking -------------------------------------------------------------


def test_worker_pool_never_queues_a_job_behind_a_hung_one_while_below_its_size() -> None:
    for _ in range(50):  # the race: a worker took job 1 but has not started it yet
        pool = WorkerPool(4, "test-pool")
        hang, done = threading.Event(), threading.Event()
        pool.submit(functools.partial(hang.wait, 5))
        pool.submit(done.set)
        assert done.wait(2)
        hang.set()
        pool.close()


def test_worker_pool_is_bounded_and_closes() -> None:
    pool = WorkerPool(2, "test-pool")
    gate = threading.Event()
    ran: list[int] = []

    def job(i: int) -> None:
        gate.wait(5)
        ran.append(i)

    for i in range(5):
        pool.submit(functools.partial(job, i))
    assert pool.threads == 2
    gate.set()
    wait_for(lambda: len(ran) == 5, 5, "every queued job to run")
    pool.close()
    wait_for(lambda: pool.threads == 0, 5, "the workers to exit")
    assert not pool.submit(lambda: None)


def test_worker_pool_grows_for_a_burst_and_shrinks_when_idle() -> None:
    pool = WorkerPool(8, "test-pool", keep=1, idle_s=0.1)
    gate = threading.Event()
    for _ in range(6):
        pool.submit(functools.partial(gate.wait, 5))
    assert pool.threads == 6
    gate.set()
    wait_for(lambda: pool.busy == 0, 5, "the burst to finish")
    wait_for(lambda: pool.threads == 1, 5, "idle workers to exit")
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(2)
    pool.close()


def test_a_pool_without_idle_exit_keeps_its_threads() -> None:
    pool = WorkerPool(3, "test-pool", keep=3, idle_s=None)
    gate = threading.Event()
    for _ in range(3):
        pool.submit(functools.partial(gate.wait, 5))
    gate.set()
    wait_for(lambda: pool.busy == 0, 5, "the jobs to finish")
    assert pool.threads == 3  # each may own a resource (the gateway's clients): they stay
    pool.close()
    assert pool.closed
    wait_for(lambda: pool.threads == 0, 5, "the workers to exit")


def test_a_failing_job_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pool = WorkerPool(1, "test-pool")
    done = threading.Event()

    def fails() -> None:
        raise RuntimeError("injected")

    with caplog.at_level(logging.ERROR):
        pool.submit(fails, key="k")
        pool.submit(done.set, key="k")  # its key's successor still runs
        assert done.wait(5)
    assert "test-pool: a job failed unexpectedly" in caplog.text
    pool.close()


# --- per-key ordering -------------------------------------------------------------------------


def test_jobs_under_one_key_run_one_at_a_time_in_submission_order() -> None:
    pool = WorkerPool(8, "test-pool")
    ran: list[int] = []
    running = 0
    overlap = False
    lock = threading.Lock()
    done = threading.Event()
    first_holds = threading.Event()

    def job(i: int) -> None:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = overlap or running > 1
        if i == 0:
            first_holds.wait(5)  # the others queue behind it, with 7 idle threads at hand
        with lock:
            ran.append(i)
            running -= 1
        if i == 49:
            done.set()

    for i in range(50):
        assert pool.submit(functools.partial(job, i), key="container-a")
    assert pool.busy == 1  # one queued or running, 49 waiting behind it
    first_holds.set()
    assert done.wait(5)
    assert ran == list(range(50)) and not overlap
    pool.close()


def test_a_slow_job_under_one_key_does_not_block_other_keys_or_unkeyed_jobs() -> None:
    pool = WorkerPool(4, "test-pool")
    slow_started, release = threading.Event(), threading.Event()
    other, unkeyed, after_slow = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        slow_started.set()
        release.wait(5)

    pool.submit(slow, key="a")
    assert slow_started.wait(5)
    pool.submit(after_slow.set, key="a")
    pool.submit(other.set, key="b")
    pool.submit(unkeyed.set)
    assert other.wait(5) and unkeyed.wait(5)
    assert not after_slow.is_set()  # same key: still behind the slow one
    release.set()
    assert after_slow.wait(5)
    pool.close()


def test_jobs_waiting_behind_their_key_are_dropped_at_close() -> None:
    pool = WorkerPool(2, "test-pool")
    started, release = threading.Event(), threading.Event()
    late = threading.Event()

    def first() -> None:
        started.set()
        release.wait(5)

    pool.submit(first, key="a")
    assert started.wait(5)
    pool.submit(late.set, key="a")
    pool.close()
    release.set()
    wait_for(lambda: pool.threads == 0, 5, "the workers to exit")
    assert not late.is_set()
    assert not pool.submit(late.set, key="a")


# --- the gateway's per-container ordering -----------------------------------------------------

A, B = "a" * 64, "b" * 64


class StopBlocksClient:
    """A docker-py APIClient stand-in: ``stop`` blocks until ``release`` is set."""

    def __init__(self, calls: list[tuple[str, str]], release: threading.Event) -> None:
        self.calls = calls
        self.release = release
        self.stopping = threading.Event()

    def ping(self) -> bool:
        return True

    def inspect_container(self, ref: str) -> dict[str, Any]:
        return {"Id": ref, "Name": f"/web-{ref[0]}", "Config": {"Labels": {}}}

    def stop(self, cid: str, timeout: int) -> None:
        self.calls.append(("stop", cid))
        self.stopping.set()
        assert self.release.wait(10)

    def start(self, cid: str) -> None:
        self.calls.append(("start", cid))

    def close(self) -> None:
        pass


def test_the_gateway_runs_one_command_per_container_in_order_and_others_beside_it() -> None:
    calls: list[tuple[str, str]] = []
    release = threading.Event()
    clients: list[StopBlocksClient] = []

    def factory() -> StopBlocksClient:
        clients.append(StopBlocksClient(calls, release))
        return clients[-1]

    gateway = start_gateway("unix:///nowhere.sock", workers=4, client_factory=factory)
    ref, connection = gateway.ref, gateway.connection

    def replied(request_id: str) -> ContainerOpSucceeded:
        return connection.expect(
            ContainerOpSucceeded, timeout=5, where=lambda m: m.request_id == request_id
        )

    ref.tell(StopContainer(request_id="stop-a", container_id=A))
    wait_for(lambda: any(c.stopping.is_set() for c in clients), 5, "the stop to block")
    ref.tell(StartContainer(request_id="start-a", container_id=A))
    ref.tell(StartContainer(request_id="start-b", container_id=B))
    replied("start-b")  # another container: not held up by the blocked stop
    assert ("start", A) not in calls  # the same container: waits for the stop
    release.set()
    replied("stop-a")
    replied("start-a")
    assert [c for c in calls if c[1] == A] == [("stop", A), ("start", A)]
    gateway.stop()
