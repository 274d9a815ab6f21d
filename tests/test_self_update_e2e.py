"""self_update end to end: the real agent image as v1 replaces itself with v2 from a registry.

v1 runs as a container (host network to reach the FakeHub on 127.0.0.1, the private dockerd's
socket, /data bound to a tmp dir). v2 is the same image with a distinguishing label and env;
"v2-broken" is a real agent whose entrypoint points it at a closed port, so it starts, stays up
and never registers.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from actors.flows.context import CLEANUP_FILE
from actors.flows.self_update import OUTCOME_FILE
from tests.support.agent_harness import REGISTRATION_TOKEN
from tests.support.containers import ContainerFactory
from tests.support.daemon import PrivateDockerd
from tests.support.hub import FakeHub
from tests.support.registry import LocalRegistry, iter_stream_errors

pytestmark = pytest.mark.slow

GO_REQUEST = {
    "image": "ghcr.io/darthnorse/dockmon-agent:1.1.3",
    "version": "1.1.3",
    "binary_url": "https://github.com/darthnorse/dockmon/releases/download/agent-v1.1.3/x",
    "checksum": None,
}
VERSION_LABEL = "dockmon-test.agent-version"


@dataclass(frozen=True)
class AgentImages:
    v1: str
    v2: str
    broken: str


def _build(client: docker.DockerClient, dockerfile: str, tag: str) -> None:
    client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", pull=False, rm=True
    )


def _push(client: docker.DockerClient, repository: str, tag: str) -> None:
    errors = list(
        iter_stream_errors(client.api.push(repository, tag=tag, stream=True, decode=True))
    )
    assert not errors, errors


@pytest.fixture(scope="session")
def agent_images(
    docker_client: docker.DockerClient, agent_image: str, registry: LocalRegistry
) -> AgentImages:
    repo = registry.repository("agent")
    docker_client.images.get(agent_image).tag(repo, "v1")
    _push(docker_client, repo, "v1")
    _build(
        docker_client,
        f"FROM {agent_image}\nLABEL {VERSION_LABEL}=v2\nENV DOCKMON_TEST_AGENT_VERSION=v2\n",
        f"{repo}:v2",
    )
    _build(
        docker_client,
        f"FROM {agent_image}\nLABEL {VERSION_LABEL}=v2-broken\n"
        'ENTRYPOINT ["dockmon-agent", "--dockmon-url", "http://127.0.0.1:9"]\n',
        f"{repo}:v2-broken",
    )
    for tag in ("v2", "v2-broken"):
        _push(docker_client, repo, tag)
        docker_client.images.remove(f"{repo}:{tag}")  # the agent must really pull it
    return AgentImages(v1=f"{repo}:v1", v2=f"{repo}:v2", broken=f"{repo}:v2-broken")


@contextlib.contextmanager
def agent_v1(
    make_agent_container: ContainerFactory,
    dockerd: PrivateDockerd,
    client: docker.DockerClient,
    images: AgentImages,
    data: Path,
    hub: FakeHub,
    **env: str,
) -> Iterator[Any]:
    name = f"dm-agent-{uuid.uuid4().hex[:8]}"
    hub.add_registration_token(REGISTRATION_TOKEN)
    container = make_agent_container(
        None,
        name=name,
        image=images.v1,
        network_mode="host",  # reaches the hub on 127.0.0.1 only
        restart_policy={"Name": "unless-stopped"},
        environment={
            "DOCKMON_URL": hub.url,
            "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
            "LOG_JSON": "false",
            "RECONNECT_MAX": "2s",
            **env,
        },
        volumes={
            dockerd.socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(data): {"bind": "/data", "mode": "rw"},
        },
    )
    try:
        yield container
    finally:  # the agent made <name>-update itself: the factory does not know it
        for leftover in (name, f"{name}-update"):
            with contextlib.suppress(docker.errors.NotFound, requests.RequestException):
                client.api.remove_container(leftover, force=True)


def _stages(hub: FakeHub) -> list[tuple[str, str | None]]:
    return [
        (e["payload"]["stage"], e["payload"].get("error"))
        for e in hub.events
        if e.get("command") == "selfupdate_progress"
    ]


def _logs(client: docker.DockerClient, name: str) -> str:
    with contextlib.suppress(docker.errors.NotFound):
        return str(client.containers.get(name).logs().decode("utf-8", "replace"))[-4000:]
    return "(gone)"


def test_self_update_replaces_v1_with_v2_after_v2_registered(
    make_agent_container: ContainerFactory,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    agent_images: AgentImages,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)  # the agent image runs as uid 1000
    with (
        FakeHub() as hub,
        agent_v1(
            make_agent_container,
            dockerd,
            docker_client,
            agent_images,
            data,
            hub,
            SELF_UPDATE_IMAGE=agent_images.v2,
        ) as v1,
    ):
        record = hub.wait_registered(timeout=60)
        assert record.capabilities["self_update"] is True
        name, old_id = v1.name, v1.id

        ack = hub.command("self_update", GO_REQUEST)
        assert ack.ok and ack.data == {"status": "self_update_started"}, ack
        try:
            hub.wait_event(
                lambda e: (
                    e["command"] == "selfupdate_progress" and e["payload"]["stage"] == "complete"
                ),
                timeout=120,
            )
        except TimeoutError:
            pytest.fail(
                f"no complete; stages {_stages(hub)}\n--- v1:\n{_logs(docker_client, name)}"
                f"\n--- v2:\n{_logs(docker_client, name + '-update')}"
            )
        assert _stages(hub) == [
            (s, None) for s in ("pull", "inspect", "create", "start", "health", "complete")
        ]

        new = docker_client.containers.get(name)
        assert new.id != old_id
        assert new.status == "running"
        assert new.attrs["Config"]["Image"] == agent_images.v2
        assert new.attrs["Config"]["Labels"][VERSION_LABEL] == "v2"
        assert "DOCKMON_TEST_AGENT_VERSION=v2" in new.attrs["Config"]["Env"]
        assert new.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert f"{data}:/data:rw" in new.attrs["HostConfig"]["Binds"]
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(old_id)
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(f"{name}-update")

        # one identity throughout: first registration with the one-time token, then v2 with the
        # permanent token from the shared /data; exactly two sessions (no flapping)
        tokens = [r["token"] for r in hub.registrations]
        assert tokens == [REGISTRATION_TOKEN, record.agent_id]
        assert list(hub.agents) == [record.agent_id]
        assert len([a for a in hub.auth_log if a.ok]) == 2
        assert (1000, "New connection established") not in hub.closes_sent  # v1 had let go
        assert (data / "permanent_token").read_text() == record.agent_id
        assert not (data / CLEANUP_FILE).exists() and not (data / OUTCOME_FILE).exists()

        # v2 serves commands and logged why it ignored the Go image (on v1's side)
        listed = hub.command("list_containers")
        assert listed.ok and new.id in {c["Id"] for c in listed.data}
        hub.assert_clean()
        logs = new.logs().decode()
        assert "registered with DockMon" in logs
        assert record.agent_id not in logs


def test_self_update_to_an_agent_that_cannot_connect_keeps_v1(
    make_agent_container: ContainerFactory,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    agent_images: AgentImages,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)  # the agent image runs as uid 1000
    with (
        FakeHub() as hub,
        agent_v1(
            make_agent_container,
            dockerd,
            docker_client,
            agent_images,
            data,
            hub,
            SELF_UPDATE_IMAGE=agent_images.broken,
            SELF_UPDATE_TIMEOUT="8s",
        ) as v1,
    ):
        record = hub.wait_registered(timeout=60)
        ack = hub.command("self_update", GO_REQUEST)
        assert ack.ok, ack
        hub.wait_event(
            lambda e: e["command"] == "selfupdate_progress" and "error" in e["payload"],
            timeout=60,
        )
        stages = _stages(hub)
        assert [s for s, _ in stages] == ["pull", "inspect", "create", "start", "health"], (
            f"{hub.events}\n{hub.auth_log}\n{v1.logs().decode()[-6000:]}"
        )
        error = stages[-1][1] or ""
        assert "did not register with DockMon within 8s" in error

        # v1 is back: same container, same name, registered again with its permanent token
        hub.wait_registered(count=2, timeout=30)
        v1.reload()
        assert v1.status == "running" and v1.name == docker_client.containers.get(v1.name).name
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(f"{v1.name}-update")
        assert [r["token"] for r in hub.registrations] == [REGISTRATION_TOKEN, record.agent_id]
        assert not (data / CLEANUP_FILE).exists() and not (data / OUTCOME_FILE).exists()
        listed = hub.command("list_containers")
        assert listed.ok and v1.id in {c["Id"] for c in listed.data}
        logs = v1.logs().decode()
        assert "ignoring the requested image ghcr.io/darthnorse/dockmon-agent:1.1.3" in logs
        assert f"updating to SELF_UPDATE_IMAGE {agent_images.broken}" in logs
        hub.assert_clean()
