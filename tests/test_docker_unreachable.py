"""Docker unreachable is loud, once, then at a backoff (issue 9, point 3).

Permission denied, a missing socket, a daemon that is down: ``healthcheck`` fails within a minute
(the DockerGateway tells the StatusReporter), the log names the socket, the agent's uid and groups
and the fix, once, then at a backoff; no actor that touches Docker (gateway, event streamer,
stats, connection) repeats the same error at its retry pace. Unit tests use fakes and a manual
clock; the end-to-end tests run the real agent against a real missing or dead socket (a denied
socket needs a non-root process: tests/test_image_e2e.py runs the image with ``--user 1000``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pykka
import pytest
import requests

from actors.base import Peers, RepeatLimiter
from actors.connection import ConnectionActor
from actors.event_streamer import EventCursor, EventStreamerActor
from actors.host.docker_access import diagnose
from actors.link.websocket import LinkSettings
from actors.status import health_verdict
from agent_cli import fanouts, main
from messages.common import Ping, Secret
from messages.docker import DescribeHost, HostDescribed
from messages.roles import Role
from messages.status import DockerStatus
from messages.tokens import GetToken, TokenInfo
from tests.support.agent_harness import running_agent
from tests.support.fakes import (
    FakeClock,
    FakeLink,
    FakeScheduler,
    ProbeHandle,
    make_ctx,
    start_gateway,
)
from tests.support.waiting import wait_for
from tests.test_startup_race import IDENT
from tests.test_stats_actor import start_rig


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


def dead_socket(path: Path) -> str:
    """A unix socket file nobody listens on: connecting gives ECONNREFUSED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return str(path)


def refused(path: str) -> BaseException:
    """What docker-py raises for ``path`` (a real attempt, not a made-up exception)."""
    try:
        docker.APIClient(base_url=f"unix://{path}", version="1.41", timeout=2).ping()
    except Exception as exc:
        return exc
    raise AssertionError(f"{path} answered")


# --------------------------------------------------------------------------------------------
# the explanation


def test_a_missing_socket_is_explained_with_the_mount_to_add(tmp_path: Path) -> None:
    path = str(tmp_path / "docker.sock")
    problem = diagnose(f"unix://{path}", refused(path))
    assert problem is not None and problem.kind == "missing_socket"
    text = problem.text()
    assert f"the socket {path} does not exist" in text
    assert f"uid {os.geteuid()}, gid {os.getegid()}, groups " in text
    assert f"-v /var/run/docker.sock:{path}" in text


def test_a_socket_nobody_listens_on_is_a_daemon_that_is_down(tmp_path: Path) -> None:
    path = dead_socket(tmp_path / "d.sock")
    problem = diagnose(f"unix://{path}", refused(path))
    assert problem is not None and problem.kind == "daemon_down"
    assert "connection refused" in problem.text() and "start Docker" in problem.text()


def test_a_directory_where_the_socket_should_be_is_said_so(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    path.mkdir()  # what a bind mount of a missing host path leaves behind
    problem = diagnose(f"unix://{path}", OSError(111, "Connection refused"))
    assert problem is not None and problem.kind == "not_a_socket"


def test_permission_denied_names_the_socket_the_agent_and_the_fix(tmp_path: Path) -> None:
    path = dead_socket(tmp_path / "d.sock")
    os.chown(path, 0, 2375)
    os.chmod(path, 0o660)
    exc = requests.exceptions.ConnectionError(PermissionError(13, "Permission denied"))
    problem = diagnose(f"unix://{path}", exc, access=lambda _p, _m: False)
    assert problem is not None and problem.kind == "permission_denied"
    text = problem.text()
    assert f"permission denied on the socket {path}" in text
    assert "owner uid 0, group 2375, mode 0660" in text
    assert f"the agent runs as uid {os.geteuid()}" in text
    assert f"--group-add $(stat -c %g {path})" in text
    assert 'group_add: ["${DOCKER_GID}"]' in text


def test_an_answer_from_the_daemon_is_not_an_access_problem() -> None:
    response = requests.Response()
    response.status_code = 404
    exc = docker.errors.NotFound("No such container: x", response=response)
    assert diagnose("unix:///var/run/docker.sock", exc) is None


def test_repeat_limiter_logs_once_then_at_a_doubling_interval() -> None:
    limiter = RepeatLimiter(first=60, maximum=240)
    assert limiter.check("a", 0) == 0
    assert [limiter.check("a", t) for t in (2, 4, 59)] == [None, None, None]
    assert limiter.check("a", 60) == 3  # three repeats were skipped
    assert limiter.check("a", 179) is None
    assert limiter.check("a", 180) == 1  # then 120 s later
    assert limiter.check("a", 420) == 0  # then 240 s (the maximum)
    assert limiter.check("b", 421) == 0  # a different problem: at once
    limiter.clear()
    assert limiter.check("b", 422) == 0


def test_health_verdict_fails_at_once_when_docker_is_unreachable() -> None:
    status = {
        "updated_at": "2100-01-01T00:00:00Z",
        "connected": True,
        "docker_reachable": False,
        "docker_error": "cannot reach Docker at unix:///x.sock: ...",
    }
    ok, why = health_verdict(status, unhealthy_after=300, stale_after=60, now=4102444800.0)
    assert not ok and why.startswith("Docker is unreachable: cannot reach Docker at unix:///x.sock")


# --------------------------------------------------------------------------------------------
# each actor that touches Docker: once, then at a backoff (manual clock, no sleeping)


def _errors(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


def test_gateway_reports_docker_state_to_status_and_logs_the_problem_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = str(tmp_path / "docker.sock")
    peers, status = Peers(), ProbeHandle()
    peers.set(Role.STATUS, status.ref)
    gateway = start_gateway(
        f"unix://{path}",
        peers=peers,
        workers=2,
        client_factory=lambda: docker.APIClient(base_url=f"unix://{path}", version="1.41"),
        probe_interval=(30.0, 5.0),
    )
    ref, connection, scheduler = gateway.ref, gateway.connection, gateway.scheduler
    first = status.expect(DockerStatus)
    assert first.reachable is False and f"the socket {path} does not exist" in first.error
    for attempt in range(1, 20):  # the Connection asks before every registration attempt
        ref.tell(DescribeHost(attempt=attempt))
        connection.expect(HostDescribed)
        scheduler.advance(2.0)  # and the probe runs every 5 s meanwhile
    ref.ask(Ping(), timeout=3)
    logged = _errors(caplog, "actors.docker_gateway", f"the socket {path} does not exist")
    assert len(logged) == 1, logged  # 38 s of failures: one line
    scheduler.advance(30.0)  # past the first repeat interval (60 s)
    wait_for(
        lambda: len(_errors(caplog, "actors.docker_gateway", "does not exist")) == 2,
        5,
        "the repeat after a minute",
    )
    assert "still failing after" in _errors(caplog, "actors.docker_gateway", "does not exist")[1]
    assert all(not m.reachable for m in status.received if isinstance(m, DockerStatus))

    dead_socket(Path(path))  # now the daemon is "down" instead: a different problem, at once
    scheduler.advance(5.0)
    down = status.expect(DockerStatus)
    assert not down.reachable and "connection refused" in down.error
    gateway.stop()


def test_event_streamer_logs_a_broken_stream_once_then_at_a_backoff(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    path = str(tmp_path / "docker.sock")
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    ref = EventStreamerActor.start(
        make_ctx(Peers(), scheduler, clock, child_id="event_streamer"),
        docker_host=f"unix://{path}",
        cursor=EventCursor(clock.time_ns()),
        forward_to=fanouts().event_forward,
        event_subscribers=fanouts().events,
        client_factory=lambda: docker.APIClient(base_url=f"unix://{path}", version="1.41"),
    )

    def ended() -> int:
        return sum("Docker event stream ended" in r.getMessage() for r in caplog.records)

    for n in range(1, 11):  # retries every 0.2 .. 5 s: 10 of them in 50 s
        wait_for(lambda n=n: ended() >= n, 5, f"stream end {n}")  # type: ignore[misc]
        scheduler.advance(5.0)
    assert len(_errors(caplog, "actors.event_streamer", "Docker event stream ended")) == 1
    scheduler.advance(15.0)  # past a minute
    wait_for(
        lambda: len(_errors(caplog, "actors.event_streamer", "stream ended")) == 2,
        5,
        "the repeat",
    )
    ref.stop()


def test_stats_listing_backs_off_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = start_rig(tmp_path)
    error = "PermissionError: [Errno 13] Permission denied"
    delays = []
    for _ in range(6):
        rig.streams.on_listed(rig.streams.listings[-1], None, error)
        rig.sync()
        [timer] = rig.scheduler.pending(type(rig.scheduler.pending()[-1].message))[-1:]
        delays.append(round(timer.due - rig.scheduler.clock.now))
        count = len(rig.streams.listings)
        rig.scheduler.advance(timer.due - rig.scheduler.clock.now)
        rig.sync()
        assert len(rig.streams.listings) == count + 1
    assert delays == [2, 4, 8, 16, 32, 60]
    assert len(_errors(caplog, "actors.stats", "cannot list running containers")) == 2
    rig.streams.on_listed(rig.streams.listings[-1], (), "")
    rig.sync()
    assert any("works again" in r.getMessage() for r in caplog.records)
    rig.ref.stop()


def test_connection_logs_the_same_failure_once_then_at_a_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    FakeLink.instances.clear()
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    peers = Peers()
    gateway = ProbeHandle()
    tokens = ProbeHandle(
        lambda m: (
            TokenInfo(token=Secret("reg-token"), kind="registration", source="env")
            if isinstance(m, GetToken)
            else None
        )
    )
    peers.set(Role.DOCKER_GATEWAY, gateway.ref)
    peers.set(Role.TOKEN_STORE, tokens.ref)
    ref = ConnectionActor.start(
        make_ctx(peers, scheduler, clock, child_id="connection"),
        settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws"),
        identity=IDENT,
        reconnect_initial=1.0,
        reconnect_max=4.0,
        link_subscribers=fanouts().link,
        link_factory=FakeLink,  # type: ignore[arg-type]
        rng=random.Random(3),
    )
    peers.set(Role.CONNECTION, ref)
    error = "failed to get Docker info: permission denied while trying to connect"
    counts = []
    for _ in range(20):  # every attempt fails the same way, at most 4 s apart: 80 s
        ask = gateway.expect(DescribeHost)
        ref.tell(HostDescribed(attempt=ask.attempt, info=None, error=error))
        ref.ask(Ping(), timeout=3)
        counts.append(len(_errors(caplog, "actors.connection", "connection attempt failed")))
        scheduler.advance(4.0)
    assert counts[:12] == [1] * 12, counts  # 48 s of identical failures: one line
    lines = _errors(caplog, "actors.connection", "connection attempt failed")
    assert len(lines) == 2 and "identical failures were not logged" in lines[1]
    ref.stop()


# --------------------------------------------------------------------------------------------
# end to end: the real agent, a real missing or dead socket


@pytest.mark.parametrize("case", ["missing", "down"])
def test_agent_without_docker_is_unhealthy_at_once_and_says_why_once(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "docker.sock"
    if case == "down":
        dead_socket(path)
    data = tmp_path / "data"
    with running_agent(data, f"unix://{path}") as running:
        args = ["--data-path", str(data)]
        outputs: list[str] = []

        def healthcheck_says_docker() -> bool:
            code = main(["healthcheck", *args])
            outputs.append(capsys.readouterr().out)
            return code == 1 and "Docker is unreachable" in outputs[-1]

        wait_for(healthcheck_says_docker, 60, "healthcheck to fail because of Docker")
        out = outputs[-1]
        assert f"unhealthy: Docker is unreachable: cannot reach Docker at unix://{path}" in out
        assert "Fix: " in out
        # let every actor that touches Docker fail several times
        wait_for(
            lambda: (
                sum(
                    "connection attempt failed" in r.getMessage() and r.levelno == logging.DEBUG
                    for r in caplog.records
                )
                >= 5
            ),
            30,
            "five repeated registration attempts",
        )
        gateway = _errors(caplog, "actors.docker_gateway", str(path))
        assert len(gateway) == 1, gateway
        assert f"uid {os.geteuid()}" in gateway[0] and "Fix: " in gateway[0]
        assert len(_errors(caplog, "actors.connection", "connection attempt failed")) == 1
        assert len(_errors(caplog, "actors.event_streamer", "stream ended")) <= 1
        assert len(_errors(caplog, "actors.stats", "cannot list")) <= 1
        assert running.hub.registrations == []
        assert running.supervisor.exit_code is None
