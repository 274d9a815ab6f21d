"""DockerGateway: commands for one container run one at a time, in arrival order; commands for
other containers (and listings) are not held up by them. Without Docker or timing: a fake client
at the actor's seam blocks inside a call until the test opens its gate, and records which calls
were in flight together; the test sends messages in and reads the replies told to a probe
Connection (the end-to-end twin, against a real daemon, is tests/test_e2e.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pykka
import pytest

from messages.common import Ping
from messages.docker import (
    CommandSucceeded,
    ContainerOpFailed,
    ContainerOpSucceeded,
    InspectContainer,
    KillContainer,
    ListContainers,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from tests.support.fakes import ProbeHandle, start_gateway

WAIT = 5.0


@dataclass
class GatedDocker:
    """The docker ``APIClient`` calls the gateway makes for container operations.

    A call named in ``gates`` (``("stop", "aaa")``) blocks until the test sets its event; one in
    ``fail`` raises Docker's 404. ``entered`` lists the calls in the order they began, and
    ``overlaps`` every call that began while another call on the same container was running.
    """

    gates: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    fail: set[tuple[str, str]] = field(default_factory=set)
    entered: list[tuple[str, str]] = field(default_factory=list)
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    _running: Counter[str] = field(default_factory=Counter)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def gate(self, call: str, container: str) -> threading.Event:
        return self.gates.setdefault((call, container), threading.Event())

    def wait_entered(self, *calls: tuple[str, str]) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: all(c in self.entered for c in calls), WAIT)
        assert ok, f"{calls} not all entered within {WAIT}s; entered {self.entered}"

    def _call(self, name: str, container: str) -> None:
        with self._cond:
            if self._running[container]:
                self.overlaps.append((name, container))
            self._running[container] += 1
            self.entered.append((name, container))
            self._cond.notify_all()
        try:
            gate = self.gates.get((name, container))
            if gate is not None:
                assert gate.wait(WAIT), f"the test never opened the gate of {name} {container}"
            if (name, container) in self.fail:
                raise docker.errors.NotFound(f"No such container: {container}")
        finally:
            with self._cond:
                self._running[container] -= 1

    # -- what the gateway calls --------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def inspect_container(self, container: str) -> dict[str, Any]:
        self._call("inspect", container)
        return {"Id": container, "Name": f"/{container}", "Config": {"Labels": {}}}

    def start(self, container: str) -> None:
        self._call("start", container)

    def stop(self, container: str, timeout: int = 10) -> None:
        self._call("stop", container)

    def restart(self, container: str, timeout: int = 10) -> None:
        self._call("restart", container)

    def kill(self, container: str, signal: str = "SIGKILL") -> None:
        self._call("kill", container)

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


@dataclass
class Rig:
    docker: GatedDocker
    gateway: pykka.ActorRef[Any]
    connection: ProbeHandle

    def replies(self, count: int) -> list[Any]:
        """The first ``count`` replies told to the Connection, in the order they came."""
        kinds = (ContainerOpSucceeded, ContainerOpFailed, CommandSucceeded)
        return [
            self.connection.expect(object, where=lambda m: isinstance(m, kinds))
            for _ in range(count)
        ]


def start_rig(docker_fake: GatedDocker, workers: int) -> Rig:
    gateway = start_gateway("unix:///nowhere", workers=workers, client_factory=lambda: docker_fake)
    gateway.ref.ask(Ping(), timeout=WAIT)
    return Rig(docker_fake, gateway.ref, gateway.connection)


@pytest.fixture
def rig_factory() -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(docker_fake: GatedDocker, workers: int) -> Rig:
        rigs.append(start_rig(docker_fake, workers))
        return rigs[-1]

    yield make
    for rig in rigs:
        for gate in rig.docker.gates.values():
            gate.set()  # a failed test must not leave a worker stuck in the fake
        rig.gateway.stop()
        rig.connection.ref.stop()


def test_commands_for_one_container_run_one_at_a_time_in_arrival_order(rig_factory: Any) -> None:
    """Two workers: were the queued start of ``aaa`` handed to the pool (not held back until the
    stop finished), the free worker would take it before the start of ``bbb`` behind it."""
    fake = GatedDocker()
    release_stop = fake.gate("stop", "aaa")
    rig = rig_factory(fake, workers=2)

    rig.gateway.tell(StopContainer(request_id="r1", container_id="aaa"))
    fake.wait_entered(("stop", "aaa"))
    rig.gateway.tell(StartContainer(request_id="r2", container_id="aaa"))
    rig.gateway.tell(RestartContainer(request_id="r3", container_id="aaa"))
    rig.gateway.tell(InspectContainer(request_id="r4", container_id="aaa"))
    rig.gateway.tell(StartContainer(request_id="r5", container_id="bbb"))

    # bbb is answered while aaa's stop is still inside Docker
    assert [r.request_id for r in rig.replies(1)] == ["r5"]
    assert [c for c in fake.entered if c[1] == "aaa"] == [("inspect", "aaa"), ("stop", "aaa")]

    release_stop.set()
    assert [r.request_id for r in rig.replies(4)] == ["r1", "r2", "r3", "r4"]
    assert [c[0] for c in fake.entered if c[1] == "aaa"] == [
        "inspect", "stop", "inspect", "start", "inspect", "restart", "inspect",
    ]  # fmt: skip
    assert fake.overlaps == []


def test_commands_for_different_containers_and_listings_run_in_parallel(
    rig_factory: Any,
) -> None:
    fake = GatedDocker()
    gates = [fake.gate("stop", "aaa"), fake.gate("kill", "bbb")]
    rig = rig_factory(fake, workers=3)

    rig.gateway.tell(StopContainer(request_id="r1", container_id="aaa"))
    rig.gateway.tell(KillContainer(request_id="r2", container_id="bbb"))
    fake.wait_entered(("stop", "aaa"), ("kill", "bbb"))  # both inside Docker at once
    rig.gateway.tell(ListContainers(request_id="r3"))
    assert [r.request_id for r in rig.replies(1)] == ["r3"]  # not held up by either

    gates[1].set()
    assert [r.request_id for r in rig.replies(1)] == ["r2"]  # bbb done; aaa still stopping
    gates[0].set()
    assert [r.request_id for r in rig.replies(1)] == ["r1"]
    assert fake.overlaps == []


def test_a_failed_command_does_not_stall_the_ones_queued_behind_it(rig_factory: Any) -> None:
    fake = GatedDocker(fail={("stop", "aaa")})
    release_stop = fake.gate("stop", "aaa")
    rig = rig_factory(fake, workers=2)

    rig.gateway.tell(StopContainer(request_id="r1", container_id="aaa"))
    fake.wait_entered(("stop", "aaa"))
    rig.gateway.tell(StartContainer(request_id="r2", container_id="aaa"))
    release_stop.set()
    first, second = rig.replies(2)
    assert isinstance(first, ContainerOpFailed) and first.request_id == "r1"
    assert (
        first.error
        == "failed to stop container: Error response from daemon: No such container: aaa"
    )
    assert isinstance(second, ContainerOpSucceeded) and second.request_id == "r2"
    assert fake.overlaps == []
