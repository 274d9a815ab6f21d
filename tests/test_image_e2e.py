"""The real agent image as a container: registers with the hub, serves commands, stops cleanly."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from tests.agent_harness import REGISTRATION_TOKEN
from tests.dockerenv import ContainerFactory, PrivateDockerd
from tests.hub import FakeHub
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_agent_container_registers_serves_and_stops_on_sigterm(
    make_agent_container: ContainerFactory, dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        agent = make_agent_container(
            None,
            network_mode="host",  # reaches the hub on 127.0.0.1 only
            environment={
                "DOCKMON_URL": hub.url,
                "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
                "LOG_JSON": "false",
            },
            volumes={
                dockerd.socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
                str(data): {"bind": "/data", "mode": "rw"},
            },
        )
        record = hub.wait_registered(timeout=60)
        token_file = data / "permanent_token"
        wait_for(token_file.exists, 10, "the token file in the /data volume")
        assert token_file.read_text() == record.agent_id
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        listed = hub.command("list_containers")
        agent_id = agent.id
        assert agent_id is not None
        assert agent_id in {c["Id"] for c in listed.data}

        # the agent knows its own container and refuses to stop it through the backend
        refused = hub.container_op("stop", agent_id[:12])
        assert not refused.ok and "agent's own container" in (refused.error or "")
        assert refused.error_type == "permission_denied"
        assert hub.container_op("inspect", agent_id[:12]).ok

        started = time.monotonic()
        agent.stop(timeout=15)
        elapsed = time.monotonic() - started
        agent.reload()
        assert agent.attrs["State"]["ExitCode"] == 0, agent.logs().decode()[-2000:]
        assert elapsed < 10
        logs = agent.logs().decode()
        assert "received SIGTERM" in logs
        assert REGISTRATION_TOKEN not in logs and record.agent_id not in logs
        hub.assert_clean()
