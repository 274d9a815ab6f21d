"""Issue 10.2 and 10.3 on the real daemon: every route that can change a container refuses a
protected one (through the real agent and the strict hub), and the action runs on the id the guard
checked even when a rename lands between the check and the act.

Only names that exist on both sides of the fix are imported, so these tests run (and fail) against
the code before it too; tests/test_protection.py holds the declaration checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from actors.base import Peers
from actors.flows.context import FlowRegistry, UpdaterSettings
from actors.rules.policy import Policy
from actors.shell import DockerShellBackend, ShellActor
from actors.updater import UpdaterActor
from messages.deploy import DeployCompose
from messages.docker import (
    CommandFailed,
    ContainerOpFailed,
    ContainerOpSucceeded,
    KillContainer,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.images import RemoveImage
from messages.networks import DeleteNetwork
from messages.outbound import EventOut
from messages.roles import Role
from messages.shell import StartShell
from messages.updates import SelfUpdate, UpdateContainer
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.containers import ContainerFactory
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx, start_gateway
from tests.support.images import DEFAULT_BUSYBOX_TAG

GRACEFUL = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
POLICY = "  protected_containers:\n    names: ['keep-*']\n    labels: ['tier=prod']\n"
PROTECTED = Policy(protected_names=("keep-*",), protected_labels=(("tier", "prod"),))


# --- every route that can change a container refuses a protected one (real agent + dockerd) ------


@pytest.fixture
def agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    config = tmp_path / "agent.yaml"
    config.write_text(f"policy:\n{POLICY}")
    with running_agent(tmp_path / "data", dockerd.base_url, DOCKMON_CONFIG=str(config)) as agent:
        agent.hub.wait_registered()
        yield agent
        agent.hub.assert_clean()


def snapshot(api: docker.APIClient, container_id: str) -> tuple[Any, ...]:
    info = api.inspect_container(container_id)
    networks = sorted((info["NetworkSettings"].get("Networks") or {}).keys())
    return (info["Id"], info["Name"], info["State"]["Status"], info["Image"], networks)


def refused(reply: Any, why: str = "denied by the agent's policy: container keep-") -> None:
    assert not reply.ok, reply
    assert reply.error_type == "permission_denied"
    assert why in (reply.error or ""), reply.error


Case = Callable[[RunningAgent, ContainerFactory, docker.DockerClient], None]


def _container_action(action: str, **extra: Any) -> Case:
    def case(agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
        kept = make(GRACEFUL, name=f"keep-{uuid.uuid4().hex[:8]}", start=action != "start")
        before = snapshot(client.api, str(kept.id))
        refused(agent.hub.container_op(action, kept.name, **extra))
        assert snapshot(client.api, str(kept.id)) == before

    return case


def _update(agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
    kept = make(GRACEFUL, labels={"tier": "prod"})
    before = snapshot(client.api, str(kept.id))
    start = len(agent.hub.events)
    payload = {"container_id": str(kept.id)[:12], "new_image": "127.0.0.1:9/nothing:2"}
    refused(agent.hub.command("update_container", payload), "has protected label tier=prod")
    # and through a dependent: updating web would recreate a protected container in its netns
    web = make(GRACEFUL, name=f"web-{uuid.uuid4().hex[:8]}")
    make(GRACEFUL, name=f"keep-side-{uuid.uuid4().hex[:6]}", network_mode=f"container:{web.name}")
    payload = {"container_id": str(web.name), "new_image": "127.0.0.1:9/nothing:2"}
    refused(agent.hub.command("update_container", payload), "shares the network namespace")
    assert agent.hub.command("list_containers").ok  # a barrier: no flow was started
    assert not [e for e in agent.hub.events[start:] if e["command"].startswith("update_")]
    assert snapshot(client.api, str(kept.id)) == before


def _shell(agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
    kept = make(GRACEFUL, name=f"keep-{uuid.uuid4().hex[:8]}")
    sid = str(uuid.uuid4())
    payload = {"action": "start", "session_id": sid, "container_id": kept.name}
    agent.hub.send_raw(json.dumps({"type": "shell_session", "payload": payload}))
    event = agent.hub.wait_event(
        lambda e: e["command"] == "shell_data" and e["payload"]["session_id"] == sid, 15
    )
    assert event["payload"]["action"] == "error"
    assert "denied by the agent's policy: container keep-" in event["payload"]["error"]
    assert not client.api.inspect_container(str(kept.id))["ExecIDs"]


def _delete_network(
    agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient
) -> None:
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="198.19.210.0/24")])
    net = client.networks.create(f"dmprot-{uuid.uuid4().hex[:8]}", internal=True, ipam=ipam)
    try:
        kept = make(GRACEFUL, name=f"keep-{uuid.uuid4().hex[:8]}", network=net.name)
        before = snapshot(client.api, str(kept.id))
        assert before[4] == [net.name]
        reply = agent.hub.command("delete_network", {"network_id": str(net.id)[:12], "force": True})
        refused(reply, "(delete_network with force disconnects it from")
        assert snapshot(client.api, str(kept.id)) == before
        client.networks.get(str(net.id))  # still there
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            for attached in client.api.inspect_network(str(net.id))["Containers"] or {}:
                client.api.remove_container(attached, force=True)
            net.remove()


def _remove_image(agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
    """Force deletes an image only stopped containers use (they keep running from its layers,
    but lose their image); without force Docker itself refuses."""
    tag = f"dmprot-{uuid.uuid4().hex[:8]}:1"
    dockerfile = f"FROM {DEFAULT_BUSYBOX_TAG}\nLABEL org.dockmon.test.protection={tag}\n"
    client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", rm=True, pull=False
    )
    try:
        kept = make(GRACEFUL, name=f"keep-{uuid.uuid4().hex[:8]}", image=tag, start=False)
        before = snapshot(client.api, str(kept.id))
        reply = agent.hub.command("remove_image", {"image_id": tag, "force": True})
        refused(reply, "(remove_image with force deletes the image it was created from")
        plain = agent.hub.command("remove_image", {"image_id": tag})
        assert not plain.ok and "is using its referenced image" in str(plain.error)
        client.images.get(tag)  # still there
        assert snapshot(client.api, str(kept.id)) == before
    finally:
        for c in client.containers.list(all=True, filters={"ancestor": tag}):
            c.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, force=True)


def _self_update(_agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
    """The in-process agent has no container of its own: the Updater plays one that has."""
    kept = make(GRACEFUL, name=f"keep-agent-{uuid.uuid4().hex[:6]}")
    clock, peers, connection = FakeClock(), Peers(), ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    settings = UpdaterSettings(
        docker_host=_agent.config.docker_host,
        data_path=str(Path(_agent.config.data_path) / "updater"),
        own_container_id=str(kept.id)[:12],
        self_update_image="127.0.0.1:9/agent:2",
    )
    ref = UpdaterActor.start(
        make_ctx(peers, FakeScheduler(clock), clock, child_id="updater"),
        settings=settings,
        flows=FlowRegistry(),
        client_factory=lambda: docker.APIClient(base_url=_agent.config.docker_host, version="auto"),
        policy=PROTECTED,
    )
    try:
        ref.tell(SelfUpdate(request_id="s1", image="ghcr.io/x/dockmon-agent:9", version="9"))
        failed = connection.expect(CommandFailed, timeout=10)
        assert failed.error_type == "permission_denied" and "keep-agent-" in failed.error
        assert not [m for m in connection.received if isinstance(m, EventOut)]
    finally:
        ref.stop()
        connection.ref.stop()


def _deploy(agent: RunningAgent, make: ContainerFactory, client: docker.DockerClient) -> None:
    """A stack recreates or removes every container with its compose project label."""
    stack = f"dmprot-{uuid.uuid4().hex[:8]}"
    kept = make(
        GRACEFUL,
        name=f"keep-{uuid.uuid4().hex[:8]}",
        labels={"com.docker.compose.project": stack, "com.docker.compose.service": "db"},
    )
    before = snapshot(client.api, str(kept.id))
    compose = f"services:\n  db:\n    image: {DEFAULT_BUSYBOX_TAG}\n    network_mode: none\n"
    for action in ("up", "down"):
        ack, deployment_id = agent.hub.deploy(stack, compose, action=action)
        assert ack.ok, ack
        result = agent.hub.wait_deploy_complete(deployment_id, timeout=60)
        assert result["success"] is False, result
        assert "denied by the agent's policy: container keep-" in result["error"]
        assert f"(it belongs to stack {stack}, which deploy_compose" in result["error"]
        assert snapshot(client.api, str(kept.id)) == before


REFUSALS: dict[type, Case] = {
    StartContainer: _container_action("start"),
    StopContainer: _container_action("stop"),
    RestartContainer: _container_action("restart"),
    RemoveContainer: _container_action("remove", force=True),
    KillContainer: _container_action("kill"),
    RenameContainer: _container_action("rename", new_name="free-name"),
    UpdateContainer: _update,
    StartShell: _shell,
    DeleteNetwork: _delete_network,
    RemoveImage: _remove_image,
    SelfUpdate: _self_update,
    DeployCompose: _deploy,
}


@pytest.mark.parametrize("kind", list(REFUSALS), ids=lambda k: k.__name__)
def test_a_protected_container_is_refused_on_every_route(
    kind: type, agent: RunningAgent, make_container: ContainerFactory, docker_client: Any
) -> None:
    REFUSALS[kind](agent, make_container, docker_client)


def test_deleting_a_volume_never_changes_a_container(
    agent: RunningAgent, make_container: ContainerFactory, docker_client: docker.DockerClient
) -> None:
    """Why delete_volume is CHANGES_NOTHING: Docker refuses a volume in use, even with force."""
    volume = f"dmprot-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(volume)
    try:
        for start in (True, False):
            kept = make_container(
                GRACEFUL, name=f"keep-{uuid.uuid4().hex[:8]}", start=start,
                volumes={volume: {"bind": "/v", "mode": "rw"}},
            )  # fmt: skip
            before = snapshot(docker_client.api, str(kept.id))
            reply = agent.hub.command("delete_volume", {"volume_name": volume, "force": True})
            assert not reply.ok and "volume is in use" in str(reply.error)
            assert snapshot(docker_client.api, str(kept.id)) == before
            kept.remove(force=True)
    finally:
        docker_client.volumes.get(volume).remove(force=True)


# --- 10.3: the action runs on the id the guard checked (a rename in between changes nothing) ----


class RenameAfterInspect(docker.APIClient):
    """Real client; right after the first inspect of ``trigger`` returns, ``swap()`` renames
    containers on the daemon: exactly between the guard's check and the action."""

    def __init__(self, base_url: str, trigger: str, swap: Callable[[], None]) -> None:
        super().__init__(base_url=base_url, version="auto", timeout=30)
        self._trigger, self._swap, self.swapped = trigger, swap, False

    def inspect_container(self, container: Any) -> Any:
        info = super().inspect_container(container)
        if container == self._trigger and not self.swapped:
            self.swapped = True
            self._swap()
        return info


@pytest.fixture
def swapped_pair(
    make_container: ContainerFactory, docker_client: docker.DockerClient
) -> tuple[str, Any, Any, Callable[[], None]]:
    """``name`` is a free container; ``swap()`` gives that name to a protected one instead."""
    name = f"web-{uuid.uuid4().hex[:8]}"
    free = make_container(GRACEFUL, name=name)
    kept = make_container(GRACEFUL, name=f"{name}-prod", labels={"tier": "prod"})

    def swap() -> None:
        docker_client.api.rename(str(free.id), f"{name}-moved")
        docker_client.api.rename(str(kept.id), name)

    return name, free, kept, swap


def test_a_container_op_acts_on_the_container_that_was_checked(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, swapped_pair: Any
) -> None:
    name, free, kept, swap = swapped_pair
    client = RenameAfterInspect(dockerd.base_url, name, swap)
    gateway = start_gateway(dockerd.base_url, client_factory=lambda: client, policy=PROTECTED)
    ref, connection = gateway.ref, gateway.connection
    try:
        ref.tell(KillContainer(request_id="k1", container_id=name))
        reply = connection.expect(
            object,
            timeout=20,
            where=lambda m: isinstance(m, ContainerOpSucceeded | ContainerOpFailed),
        )
        assert client.swapped  # the rename really happened between check and act
        assert isinstance(reply, ContainerOpSucceeded), reply
        assert reply.body.value() == {"container_id": name, "status": "killed"}  # echoed as sent
        assert docker_client.api.inspect_container(str(kept.id))["State"]["Running"]
        assert not docker_client.api.inspect_container(str(free.id))["State"]["Running"]
    finally:
        gateway.stop()


def test_a_shell_opens_in_the_container_that_was_checked(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, swapped_pair: Any
) -> None:
    name, free, kept, swap = swapped_pair

    class Backend(DockerShellBackend):
        def __init__(self) -> None:
            super().__init__(dockerd.base_url)
            self.api = RenameAfterInspect(dockerd.base_url, name, swap)

        def _client(self) -> docker.APIClient:
            return self.api

    clock, peers, connection = FakeClock(), Peers(), ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    ref = ShellActor.start(
        make_ctx(peers, FakeScheduler(clock), clock, child_id="shell"),
        docker_host=dockerd.base_url,
        backend_factory=Backend,
        policy=PROTECTED,
    )
    try:
        ref.tell(StartShell(session_id="s1", container_id=name))
        first = connection.expect(EventOut, timeout=20)
        assert first.payload.value()["action"] == "started", first.payload.value()
        assert docker_client.api.inspect_container(str(free.id))["ExecIDs"]
        assert not docker_client.api.inspect_container(str(kept.id))["ExecIDs"]
    finally:
        ref.stop()
        connection.ref.stop()
