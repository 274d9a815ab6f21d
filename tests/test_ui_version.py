"""What DockMon's UI shows for this agent (issue 9, point 8; PROTOCOL §7.2).

The backend flags "update available" when the Go agent's latest release ``parses as newer`` than
the ``version`` the agent registered, with PEP 440 (``packaging.version.parse``, which is what
DockMon's backend uses); a version that does not parse suppresses the flag (the backend catches
the error). The agent reports ``<package version>-python``, so no Go release ever makes it look
outdated. A refused ``self_update`` says what to set, in the reply DockMon shows and in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pykka
import pytest
from packaging.version import InvalidVersion, parse

import agent_cli
from actors.base import Peers
from actors.flows.context import FlowRegistry, UpdaterSettings
from actors.updater import UpdaterActor
from messages.docker import CommandFailed
from messages.roles import Role
from messages.updates import SelfUpdate
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.support.hub import validate_registration

#: Go agent releases (agent-v*) DockMon may compare against, up to absurdly far ahead
GO_RELEASES = ("1.0.0", "1.1.2", "1.1.3", "2.0.0", "10.4.1", "999.0.0")


def update_available(latest_version: str, agent_version: str) -> bool:
    """PROTOCOL §7.2 as stated: ``latest`` parses as newer; an unparseable version: no flag."""
    try:
        return parse(latest_version) > parse(agent_version)
    except InvalidVersion:
        return False


def test_the_rule_itself() -> None:
    assert update_available("1.1.3", "1.1.2")
    assert update_available("1.1.3", "0.1.0")  # a plain package version: a false badge forever
    assert not update_available("1.1.3", "1.1.3")
    assert not update_available("1.1.3", "dev")


@pytest.mark.parametrize("latest", GO_RELEASES)
def test_no_go_release_flags_this_agent_as_outdated(latest: str) -> None:
    version = agent_cli.registered_version()
    assert not update_available(latest, version)
    assert version.startswith(agent_cli.agent_version())  # the UI still shows our own version
    assert len(version) <= 50


def test_the_agent_registers_that_version(tmp_path: Path, dockerd: PrivateDockerd) -> None:
    with running_agent(tmp_path / "data", dockerd.base_url) as agent:
        agent.hub.wait_registered()
        frame = agent.hub.registrations[0]
        assert frame["version"] == agent_cli.registered_version()
        assert validate_registration(frame) is None
        assert not any(update_available(v, frame["version"]) for v in GO_RELEASES)


@pytest.mark.parametrize(
    ("own_container_id", "must_say"),
    [
        (None, ("not running in a Docker container", "container mode", "SELF_UPDATE_IMAGE")),
        ("0123456789ab", ("SELF_UPDATE_IMAGE", "container mode", "is not set")),
    ],
)
def test_a_refused_self_update_explains_itself_to_dockmon_and_in_the_log(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    own_container_id: str | None,
    must_say: tuple[str, ...],
) -> None:
    clock = FakeClock()
    peers = Peers()
    connection = ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    ref = UpdaterActor.start(
        make_ctx(peers, FakeScheduler(clock), clock, child_id="updater"),
        settings=UpdaterSettings(
            docker_host="unix:///nowhere.sock",
            data_path=str(tmp_path),
            own_container_id=own_container_id,
        ),
        flows=FlowRegistry(),
    )
    try:
        ref.tell(
            SelfUpdate(
                request_id="s1", image="ghcr.io/darthnorse/dockmon-agent:1.1.3", version="1.1.3"
            )
        )
        reply = connection.expect(CommandFailed)
        assert reply.request_id == "s1"
        for text in must_say:
            assert text in reply.error
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "refused DockMon's self_update (to ghcr.io/darthnorse/dockmon-agent:1.1.3" in line
        assert reply.error in line
    finally:
        pykka.ActorRegistry.stop_all()
