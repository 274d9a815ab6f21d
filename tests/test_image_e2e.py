"""The real agent image as a container: registers with the hub, serves commands, stops cleanly."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any, cast

import docker
import pytest
import yaml

from tests.agent_harness import REGISTRATION_TOKEN
from tests.conftest import REPO_ROOT
from tests.dockerenv import ContainerFactory, PrivateDockerd
from tests.hub import FakeHub
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_agent_container_registers_serves_and_stops_on_sigterm(
    make_agent_container: ContainerFactory, dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)  # the image runs as uid 1000
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
        assert record.register is not None
        capabilities = record.register["capabilities"]  # the compose binary ran in the image
        assert capabilities["compose_deployments"] is True
        assert capabilities["multi_env_files"] is True
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


def exec_in(container: Any, command: list[str]) -> tuple[int, bytes]:
    result = container.exec_run(command)
    return int(result.exit_code), cast(bytes, result.output).strip()


def test_agent_runs_non_root_with_the_compose_settings(
    make_agent_container: ContainerFactory,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    agent_image: str,
) -> None:
    """deploy/docker-compose.yml's settings, as far as the private dockerd allows them."""
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    spec = compose["services"]["agent"]
    assert docker_client.api.inspect_image(agent_image)["Config"]["User"] == "1000:1000"
    volume = docker_client.volumes.create(labels={"dockmon-test": "1"})
    try:
        with FakeHub() as hub:
            hub.add_registration_token(REGISTRATION_TOKEN)
            agent = make_agent_container(  # removed by the factory after the test
                None,
                network_mode="host",  # reaches the hub on 127.0.0.1 only
                restart_policy={"Name": spec["restart"]},
                environment={"DOCKMON_URL": hub.url, "REGISTRATION_TOKEN": REGISTRATION_TOKEN},
                volumes={
                    dockerd.socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
                    str(volume.name): {"bind": "/data", "mode": "rw"},
                },
                healthcheck={  # the compose test command, at a test-friendly pace
                    "test": spec["healthcheck"]["test"],
                    "interval": 500_000_000,
                    "retries": 3,
                },
            )
            cid = str(agent.id)
            hub.wait_registered(timeout=60)
            assert exec_in(agent, ["id", "-u"]) == (0, b"1000")
            wait_for(
                lambda: (
                    docker_client.api.inspect_container(cid)["State"]
                    .get("Health", {})
                    .get("Status")
                    == "healthy"
                ),
                30,
                "the container to turn healthy",
            )
            stat_out = exec_in(agent, ["stat", "-c", "%a %u", "/data/permanent_token"])
            assert stat_out == (0, b"600 1000")
            assert hub.command("list_containers").ok
            hub.assert_clean()
            agent.remove(force=True)
    finally:
        volume.remove(force=True)


def test_agent_container_deploys_a_stack_with_relative_binds(
    make_agent_container: ContainerFactory,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """In a container, compose sees the stacks directory under /data; the daemon needs the host
    path, found from the agent container's own mounts (no HOST_STACKS_DIR set)."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    compose = yaml.safe_dump(
        {
            "services": {
                "web": {
                    "image": busybox_image,
                    "command": ["sleep", "3600"],
                    "init": True,
                    "network_mode": "none",
                    "labels": {"dockmon-test": "1"},
                    "volumes": ["./files:/files:ro"],
                }
            }
        }
    )
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        make_agent_container(
            None,
            network_mode="host",  # reaches the hub on 127.0.0.1 only
            environment={"DOCKMON_URL": hub.url, "REGISTRATION_TOKEN": REGISTRATION_TOKEN},
            volumes={
                dockerd.socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
                str(data): {"bind": "/data", "mode": "rw"},
            },
        )
        hub.wait_registered(timeout=60)
        ack, deployment_id = hub.deploy("inside", compose)
        assert ack.ok, ack
        result = hub.wait_deploy_complete(deployment_id, timeout=120)
        assert result["success"] is True, result
        (web,) = docker_client.containers.list(
            filters={"label": "com.docker.compose.project=inside"}
        )
        (mount,) = [m for m in web.attrs["Mounts"] if m["Destination"] == "/files"]
        assert mount["Source"] == str(data / "stacks" / "inside" / "files")
        assert web.labels["com.docker.compose.project.working_dir"] == "/data/stacks/inside"
        (data / "stacks" / "inside" / "files" / "hello").write_text("host side")
        assert web.exec_run(["cat", "/files/hello"]).output == b"host side"
        down, down_id = hub.deploy("inside", compose, action="down")
        assert down.ok and hub.wait_deploy_complete(down_id)["success"] is True
        hub.assert_clean()
