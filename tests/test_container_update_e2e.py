"""update_container end to end: the real agent (in-process, and once as a killed subprocess)
against the strict FakeHub, the private dockerd and a local registry on 127.0.0.1.

Images are busybox-based, built offline (``network_mode="none"``) and pushed to the ``registry``
fixture; the agent pulls them through the daemon. Custom networks are ``internal`` bridges in
198.18.0.0/15 (no outside route).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

from actors.base import Peers
from actors.flows.context import FlowRegistry, UpdaterSettings
from actors.rules.policy import Policy
from actors.updater import UpdaterActor
from messages.docker import CommandFailed, CommandSucceeded
from messages.outbound import EventOut
from messages.roles import Role
from messages.updates import UpdateContainer
from tests.support.agent_harness import REGISTRATION_TOKEN, RunningAgent, running_agent
from tests.support.containers import TEST_LABEL, ContainerFactory
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.support.hostenv import REPO_ROOT
from tests.support.hub import FakeHub
from tests.support.registry import LocalRegistry
from tests.support.waiting import wait_for
from tests.test_protection_e2e import RenameAfterInspect

GRACEFUL = "trap 'exit 0' TERM; sleep 3600 & wait"
ALL_STAGES = [
    "pulling", "configuring", "backup", "creating", "starting", "health_check", "dependents",
    "cleanup", "completed",
]  # fmt: skip

DOCKERFILES = {
    "v1": f"""FROM {{base}}
LABEL org.dockmon.test.flavour=v1 org.dockmon.test.shared=same
ENV APP_MODE=v1 SHARED=same
RUN echo v1 > /version
CMD ["sh", "-c", "{GRACEFUL}"]
""",
    "v2": f"""FROM {{base}}
LABEL org.dockmon.test.flavour=v2 org.dockmon.test.shared=same
ENV APP_MODE=v2 SHARED=same
RUN echo v2 > /version
CMD ["sh", "-c", "{GRACEFUL}"]
""",
    "unhealthy": f"""FROM {{base}}
LABEL org.dockmon.test.flavour=unhealthy
RUN echo unhealthy > /version
HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false
CMD ["sh", "-c", "{GRACEFUL}"]
""",
    "exits": """FROM {base}
LABEL org.dockmon.test.flavour=exits
RUN echo exits > /version
CMD ["sh", "-c", "exit 3"]
""",
    "labelled": f"""FROM {{base}}
LABEL org.dockmon.test.flavour=labelled org.dockmon.test.extra=yes
ENV APP_MODE=labelled NEW_VAR=fresh
RUN echo labelled > /version
CMD ["sh", "-c", "{GRACEFUL}"]
""",
}


@dataclass(frozen=True)
class Images:
    refs: dict[str, str]  # tag -> 127.0.0.1:PORT/dockmon-update-test:tag
    auth_ref: str  # v2 on the htpasswd registry


def _push(client: docker.DockerClient, ref: str, auth: dict[str, str] | None = None) -> None:
    repo, tag = ref.rsplit(":", 1)
    for line in client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in line or "errorDetail" in line:
            raise RuntimeError(f"push of {ref} failed: {line}")


@pytest.fixture(scope="session")
def update_images(
    docker_client: docker.DockerClient,
    busybox_image: str,
    registry: LocalRegistry,
    auth_registry: LocalRegistry,
) -> Images:
    refs = {}
    for tag, text in DOCKERFILES.items():
        ref = f"{registry.repository('dockmon-update-test')}:{tag}"
        dockerfile = io.BytesIO(text.format(base=busybox_image).encode())
        docker_client.images.build(
            fileobj=dockerfile, tag=ref, network_mode="none", rm=True, pull=False
        )
        _push(docker_client, ref)
        refs[tag] = ref
    auth_ref = f"{auth_registry.repository('dockmon-private')}:v2"
    docker_client.images.get(refs["v2"]).tag(auth_ref)
    _push(docker_client, auth_ref, auth_registry.auth_config)
    # only v1 stays local: the agent has to pull everything else from the registry
    for tag, ref in refs.items():
        if tag != "v1":
            docker_client.images.remove(ref, force=True)
    docker_client.images.remove(auth_ref, force=True)
    return Images(refs, auth_ref)


def _forget(client: docker.DockerClient, ref: str) -> None:
    """Drop a local image so the next pull really fetches layers."""
    with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
        client.images.remove(ref, force=True)


@pytest.fixture
def names(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """``names("web")`` -> a unique container name; everything called so is removed after."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        made.append(name)
        return name

    yield make
    for c in docker_client.containers.list(all=True):
        if any(_name(c) == n or _name(c).startswith(f"{n}-dockmon-") for n in made):
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                c.remove(force=True, v=True)


@pytest.fixture
def agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    with running_agent(tmp_path / "data", dockerd.base_url) as running:
        running.hub.wait_registered()
        yield running
        running.hub.assert_clean()


@pytest.fixture
def networks(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """Two internal networks in 198.18.0.0/15 (no route anywhere)."""
    made = []
    suffix = uuid.uuid4().hex[:6]
    for i, third in enumerate((101, 102)):
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=f"198.18.{third}.0/24")]
        )
        made.append(docker_client.networks.create(f"upd{i}-{suffix}", internal=True, ipam=ipam))
    assert made[0].name and made[1].name
    yield made[0].name, made[1].name
    for net in made:
        with contextlib.suppress(docker.errors.DockerException):
            net.remove()


def _update(hub: FakeHub, container_id: str, image: str, **extra: Any) -> int:
    """Send update_container; assert the immediate ack; return the event index to wait from."""
    start = len(hub.events)
    payload = {"container_id": container_id, "new_image": image, "stop_timeout": 5, **extra}
    reply = hub.command("update_container", payload, timeout=10)
    for _ in range(10):
        # a previous update's thread may still be winding down after its last event
        if reply.ok or "is in progress" not in str(reply.error):
            break
        threading.Event().wait(0.2)
        reply = hub.command("update_container", payload, timeout=10)
    assert reply.ok, reply.error
    assert reply.data == {"status": "update_started"}
    return start


def _stages(hub: FakeHub, start: int, cid: str) -> list[str]:
    return [
        e["payload"]["stage"]
        for e in hub.events[start:]
        if e.get("command") == "update_progress" and e["payload"]["container_id"] == cid
    ]


def _final(hub: FakeHub, start: int, cid: str, timeout: float = 60) -> dict[str, Any]:
    """The update's last progress event (completed, rollback or failed)."""
    event = hub.wait_event(
        lambda e: (
            e["command"] == "update_progress"
            and e["payload"]["container_id"] == cid
            and e["payload"]["stage"] in ("completed", "rollback", "failed")
        ),
        timeout,
        start=start,
    )
    return dict(event["payload"])


def _complete(hub: FakeHub, start: int) -> dict[str, Any]:
    """The update_complete event (sent right after the "completed" progress)."""
    event = hub.wait_event(lambda e: e["command"] == "update_complete", 10, start=start)
    assert len(_completes(hub, start)) == 1
    return dict(event["payload"])


def _completes(hub: FakeHub, start: int) -> list[dict[str, Any]]:
    return [e["payload"] for e in hub.events[start:] if e.get("command") == "update_complete"]


def _journals(data: Path) -> list[Path]:
    return sorted((data / "updates").glob("*.json")) if (data / "updates").is_dir() else []


def _backups(client: docker.DockerClient, name: str) -> list[str]:
    return [
        _name(c)
        for c in client.containers.list(all=True)
        if _name(c).startswith(f"{name}-dockmon-")
    ]


def _id(container: Container) -> str:
    assert container.id is not None
    return container.id


def _name(container: Container) -> str:
    assert container.name is not None
    return container.name


def _exec(client: docker.DockerClient, name: str, cmd: str) -> str:
    result = client.containers.get(name).exec_run(["sh", "-c", cmd])
    output = result.output
    assert isinstance(output, bytes)
    return output.decode().strip()


# ============================================================================ actor level


def test_own_container_is_refused_without_touching_docker(tmp_path: Path) -> None:
    clock = FakeClock()
    peers = Peers()
    connection = ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)

    def no_docker() -> docker.APIClient:
        raise AssertionError("the refusal must not talk to Docker")

    own = "0123456789ab" + "c" * 52
    ref = UpdaterActor.start(
        make_ctx(peers, FakeScheduler(clock), clock, child_id="updater"),
        settings=UpdaterSettings(
            docker_host="unix:///nowhere", data_path=str(tmp_path), own_container_id=own
        ),
        flows=FlowRegistry(),
        client_factory=no_docker,
    )
    try:
        ref.tell(UpdateContainer(request_id="r1", container_id=own[:12], new_image="x:2"))
        failed = connection.expect(CommandFailed)
        assert failed.request_id == "r1" and "self_update" in failed.error
        assert not (tmp_path / "updates").exists()
    finally:
        ref.stop()
        connection.ref.stop()


# ============================================================================ end to end


@pytest.mark.slow
def test_success_preserves_config_networks_and_dependents(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    networks: tuple[str, str],
    names: Callable[[str], str],
    make_container: ContainerFactory,
    tmp_path: Path,
) -> None:
    api = docker_client.api
    primary, extra = networks
    name, side = names("web"), names("side")
    volume = f"updvol-{uuid.uuid4().hex[:6]}"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.conf").write_text("setting=1\n")
    _forget(docker_client, update_images.refs["v2"])
    web = make_container(
        None,
        name,
        image=update_images.refs["v1"],
        environment={"USER_VAR": "keep", "APP_MODE": "v1", "SHARED": "changed"},
        labels={"user.label": "keep", "org.dockmon.test.shared": "same"},
        restart_policy={"Name": "unless-stopped"},
        volumes={
            volume: {"bind": "/data", "mode": "rw"},
            str(conf): {"bind": "/conf", "mode": "ro"},
        },
        network=primary,
        networking_config={
            primary: api.create_endpoint_config(aliases=["web-alias"], ipv4_address="198.18.101.10")
        },
        mem_limit="64m",
        stop_timeout=3,
    )
    api.connect_container_to_network(_id(web), extra, aliases=["web-extra"])
    docker_client.containers.get(name).exec_run(["sh", "-c", "echo precious > /data/file"])
    dep = make_container(["sh", "-c", GRACEFUL], side, network_mode=f"container:{name}")
    before = api.inspect_container(_id(web))
    dep_before = api.inspect_container(_id(dep))

    assert agent.hub.registrations[0]["capabilities"]["container_updates"] is True
    cid = _id(web)[:12]
    start = _update(agent.hub, cid, update_images.refs["v2"], health_timeout=20)
    final = _final(agent.hub, start, cid)
    assert final["stage"] == "completed", final
    assert _stages(agent.hub, start, cid) == ALL_STAGES
    done = _complete(agent.hub, start)
    after = api.inspect_container(name)
    assert done == {
        "old_container_id": cid,
        "new_container_id": after["Id"][:12],
        "container_name": name,
    }
    assert after["Id"] != _id(web) and after["State"]["Running"]
    layer_events = [e for e in agent.hub.events[start:] if e["command"] == "update_layer_progress"]
    assert layer_events and layer_events[-1]["payload"]["container_id"] == cid

    # image, content and image-provided defaults come from v2; user settings are kept
    assert after["Config"]["Image"] == update_images.refs["v2"]
    assert _exec(docker_client, name, "cat /version") == "v2"
    env = set(after["Config"]["Env"])
    assert {"USER_VAR=keep", "APP_MODE=v2", "SHARED=changed"} <= env
    labels = after["Config"]["Labels"]
    assert labels["user.label"] == "keep" and labels["org.dockmon.test.flavour"] == "v2"
    assert labels[TEST_LABEL] == "1"
    for key in ("RestartPolicy", "Binds", "Memory", "NetworkMode"):
        assert after["HostConfig"][key] == before["HostConfig"][key], key
    assert after["Config"]["StopTimeout"] == before["Config"]["StopTimeout"] == 3
    assert {(m["Type"], m.get("Name"), m["Destination"]) for m in after["Mounts"]} == {
        (m["Type"], m.get("Name"), m["Destination"]) for m in before["Mounts"]
    }
    assert _exec(docker_client, name, "cat /data/file") == "precious"
    nets = after["NetworkSettings"]["Networks"]
    assert set(nets) == {primary, extra}
    assert nets[primary]["IPAMConfig"]["IPv4Address"] == "198.18.101.10"
    assert nets[primary]["IPAddress"] == "198.18.101.10"
    assert "web-alias" in nets[primary]["Aliases"]
    assert "web-extra" in nets[extra]["Aliases"]

    # the dependent now shares the new container's network namespace
    dep_after = api.inspect_container(side)
    assert dep_after["Id"] != _id(dep) and dep_after["State"]["Running"]
    assert dep_after["HostConfig"]["NetworkMode"] == f"container:{after['Id']}"
    assert dep_after["Config"]["Env"] == dep_before["Config"]["Env"]
    assert dep_after["Config"]["Labels"] == dep_before["Config"]["Labels"]

    assert _backups(docker_client, name) == [] and _backups(docker_client, side) == []
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(_id(web))
    assert _journals(Path(agent.config.data_path)) == []
    with contextlib.suppress(docker.errors.DockerException):
        docker_client.volumes.get(volume).remove(force=True)


@pytest.mark.slow
def test_labels_and_env_follow_the_new_image_where_not_overridden(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("lbl")
    web = make_container(
        None, name, image=update_images.refs["v1"], environment={"MINE": "1"}, labels={"mine": "1"}
    )
    cid = _id(web)[:12]
    start = _update(agent.hub, cid, update_images.refs["labelled"], health_timeout=10)
    assert _final(agent.hub, start, cid)["stage"] == "completed"
    after = docker_client.api.inspect_container(name)
    labels = after["Config"]["Labels"]
    assert labels["org.dockmon.test.flavour"] == "labelled"
    assert labels["org.dockmon.test.extra"] == "yes" and labels["mine"] == "1"
    env = set(after["Config"]["Env"])
    assert {"MINE=1", "APP_MODE=labelled", "NEW_VAR=fresh"} <= env
    # v1's defaults the container merely inherited are gone with v1
    assert "APP_MODE=v1" not in env and "SHARED=same" not in env
    assert "org.dockmon.test.shared" not in labels
    assert after["Config"]["Cmd"] == ["sh", "-c", GRACEFUL]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad", "reason"),
    [("unhealthy", "container is unhealthy"), ("exits", "exit")],
)
def test_bad_image_rolls_back_to_the_running_old_container(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
    bad: str,
    reason: str,
) -> None:
    name = names(bad)
    web = make_container(
        None, name, image=update_images.refs["v1"], restart_policy={"Name": "unless-stopped"}
    )
    cid = _id(web)[:12]
    start = _update(agent.hub, cid, update_images.refs[bad], health_timeout=4)
    final = _final(agent.hub, start, cid)
    assert final["stage"] == "rollback", final
    assert reason in final["message"]
    stages = _stages(agent.hub, start, cid)
    assert stages == [
        "pulling",
        "configuring",
        "backup",
        "creating",
        "starting",
        "health_check",
        "rollback",
    ]
    assert _completes(agent.hub, start) == []
    restored = docker_client.api.inspect_container(name)
    assert restored["Id"] == _id(web) and restored["State"]["Running"]
    assert _exec(docker_client, name, "cat /version") == "v1"
    assert _backups(docker_client, name) == []
    assert len(docker_client.containers.list(all=True, filters={"name": f"^/{name}"})) == 1
    assert _journals(Path(agent.config.data_path)) == []


def _update_ids(hub: FakeHub, start: int) -> set[str]:
    """Every container id the update events since ``start`` carry."""
    return {
        e["payload"]["container_id"]
        for e in hub.events[start:]
        if e.get("command") in ("update_progress", "update_layer_progress")
    } | {
        e["payload"]["old_container_id"]
        for e in hub.events[start:]
        if e.get("command") == "update_complete"
    }


def test_an_update_by_name_reports_the_containers_12_hex_id(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    """§6/§5.5: events carry the 12-hex id (the strict hub flags anything else); for a name the
    agent reports the container's own id, the one update_complete's waiter knows."""
    name = names("byname")
    web = make_container(None, name, image=update_images.refs["v1"], stop_timeout=3)
    cid = _id(web)[:12]
    start = _update(agent.hub, name, update_images.refs["v2"], health_timeout=20)
    assert _final(agent.hub, start, cid)["stage"] == "completed"
    assert _complete(agent.hub, start)["old_container_id"] == cid
    assert _update_ids(agent.hub, start) == {cid}


def test_an_update_by_name_and_by_id_of_one_container_is_one_update(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    """Resolve first, then the busy guard keyed by the full id, then progress (issue 10.5)."""
    name = names("twice")
    web = make_container(None, name, image=update_images.refs["v1"], stop_timeout=3)
    cid = _id(web)[:12]
    start = len(agent.hub.events)
    payload = {"new_image": update_images.refs["v2"], "stop_timeout": 5, "health_timeout": 20}
    sent = [
        agent.hub.send_command("update_container", {**payload, "container_id": ref})
        for ref in (name, cid, _id(web))
    ]
    replies = [agent.hub.wait_response(request_id, timeout=20) for request_id in sent]
    assert sorted(r.ok for r in replies) == [False, False, True], replies
    for refused in (r for r in replies if not r.ok):
        assert refused.error == f"an update of {name} ({cid}) is in progress"
    assert _final(agent.hub, start, cid)["stage"] == "completed"
    assert _complete(agent.hub, start)["old_container_id"] == cid
    assert _update_ids(agent.hub, start) == {cid}
    assert _stages(agent.hub, start, cid) == ALL_STAGES[:6] + ALL_STAGES[7:]  # one update


def test_an_update_acts_on_the_container_it_checked(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    """A rename between the guard's check and the flow cannot redirect the update to another
    (here: protected) container: the flow works on the resolved full id (issue 10.3)."""
    name = names("raced")
    free = make_container(None, name, image=update_images.refs["v1"], stop_timeout=3)
    kept = make_container(None, names("raced-prod"), image=update_images.refs["v1"],
                          labels={"tier": "prod"})  # fmt: skip

    def swap() -> None:
        docker_client.api.rename(_id(free), f"{name}-moved")
        docker_client.api.rename(_id(kept), name)

    clock, peers, connection = FakeClock(), Peers(), ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    client = RenameAfterInspect(dockerd.base_url, name, swap)
    ref = UpdaterActor.start(
        make_ctx(peers, FakeScheduler(clock), clock, child_id="updater"),
        settings=UpdaterSettings(docker_host=dockerd.base_url, data_path=str(tmp_path)),
        flows=FlowRegistry(),
        client_factory=lambda: client,
        policy=Policy(protected_labels=(("tier", "prod"),)),
    )
    try:
        v2 = update_images.refs["v2"]
        ref.tell(UpdateContainer(request_id="u1", container_id=name, new_image=v2))
        ack = connection.expect(CommandSucceeded, timeout=20)
        assert ack.request_id == "u1" and client.swapped
        done = connection.expect(
            EventOut, timeout=60, where=lambda m: m.command == "update_complete"
        ).payload.value()
        assert done["old_container_id"] == _id(free)[:12]
        assert done["container_name"] == f"{name}-moved"
        untouched = docker_client.api.inspect_container(_id(kept))
        assert untouched["Name"] == f"/{name}" and untouched["State"]["Running"]
        assert untouched["Config"]["Image"] == update_images.refs["v1"]
    finally:
        ref.stop()
        connection.ref.stop()
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(f"{name}-moved", force=True)


@pytest.mark.slow
def test_failed_rollback_is_reported_with_both_errors(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("lost")
    web = make_container(None, name, image=update_images.refs["v1"])
    cid = _id(web)[:12]
    start = _update(agent.hub, cid, update_images.refs["unhealthy"], health_timeout=6)
    agent.hub.wait_event(
        lambda e: e["command"] == "update_progress" and e["payload"]["stage"] == "health_check",
        30,
        start=start,
    )
    [backup] = _backups(docker_client, name)
    docker_client.api.remove_container(backup, force=True)  # someone deletes the backup
    final = _final(agent.hub, start, cid)
    assert final["stage"] == "failed", final
    assert "container is unhealthy" in final["message"]
    assert f"rollback failed: the old container {cid} no longer exists" in final["message"]
    assert _completes(agent.hub, start) == []
    with pytest.raises(docker.errors.NotFound):  # the failed new container is gone too
        docker_client.api.inspect_container(name)


@pytest.mark.slow
def test_stopped_container_stays_stopped(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("stopped")
    web = make_container(None, name, image=update_images.refs["v1"], start=False)
    cid = _id(web)[:12]
    start = _update(agent.hub, cid, update_images.refs["v2"], health_timeout=10)
    assert _final(agent.hub, start, cid)["stage"] == "completed"
    after = docker_client.api.inspect_container(name)
    assert after["Id"] != _id(web)
    assert not after["State"]["Running"] and after["State"]["StartedAt"].startswith("0001")
    assert after["Config"]["Image"] == update_images.refs["v2"]
    done = _complete(agent.hub, start)
    assert done["new_container_id"] == after["Id"][:12]


@pytest.mark.slow
def test_registry_auth(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    auth_registry: LocalRegistry,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("auth")
    web = make_container(None, name, image=update_images.refs["v1"])
    cid = _id(web)[:12]
    # without credentials the pull fails and nothing is touched
    start = _update(agent.hub, cid, update_images.auth_ref, registry_auth=None)
    final = _final(agent.hub, start, cid)
    assert final["stage"] == "failed" and "failed to pull image" in final["message"]
    assert _stages(agent.hub, start, cid) == ["pulling", "failed"]
    untouched = docker_client.api.inspect_container(name)
    assert untouched["Id"] == _id(web) and untouched["State"]["Running"]

    assert auth_registry.auth_config is not None
    start = _update(
        agent.hub, cid, update_images.auth_ref, registry_auth=auth_registry.auth_config,
        health_timeout=10,
    )  # fmt: skip
    assert _final(agent.hub, start, cid)["stage"] == "completed"
    after = docker_client.api.inspect_container(name)
    assert after["Config"]["Image"] == update_images.auth_ref
    assert auth_registry.password and auth_registry.password not in json.dumps(agent.hub.events)


def test_missing_image_fails_before_touching_anything(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("missing")
    web = make_container(None, name, image=update_images.refs["v1"])
    cid = _id(web)[:12]
    ref = update_images.refs["v1"].rsplit(":", 1)[0] + ":no-such-tag"
    start = _update(agent.hub, cid, ref)
    final = _final(agent.hub, start, cid)
    assert final["stage"] == "failed" and "failed to pull image" in final["message"]
    assert docker_client.api.inspect_container(name)["Id"] == _id(web)
    assert _journals(Path(agent.config.data_path)) == []


# ============================================================================ crash recovery


def _agent_process(hub: FakeHub, data: Path, dockerd: PrivateDockerd) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCKER")},
        "DOCKMON_URL": hub.url,
        "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
        "DATA_PATH": str(data),
        "DOCKER_HOST": dockerd.base_url,
        "LOG_JSON": "false",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-c", "import sys, agent_cli; sys.exit(agent_cli.main([]))"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_agent_killed_in_the_health_gate_is_rolled_back_on_restart(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    name = names("crash")
    web = make_container(None, name, image=update_images.refs["v1"])
    cid = _id(web)[:12]
    data = tmp_path / "data"
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        proc = _agent_process(hub, data, dockerd)
        try:
            hub.wait_registered(timeout=30)
            # the unhealthy image with a long timeout keeps the flow in its health gate
            start = _update(hub, cid, update_images.refs["unhealthy"], health_timeout=300)
            hub.wait_event(
                lambda e: (
                    e["command"] == "update_progress" and e["payload"]["stage"] == "health_check"
                ),
                timeout=60,
                start=start,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        # the crash left the host mid-update: old container stopped as a backup, new one up
        [backup] = _backups(docker_client, name)
        assert docker_client.api.inspect_container(backup)["Id"] == _id(web)
        assert docker_client.api.inspect_container(name)["Id"] != _id(web)
        [journal] = _journals(data)
        assert json.loads(journal.read_text())["phase"] == "health_check"
        assert oct(journal.stat().st_mode & 0o777) == "0o600"

        restart = len(hub.events)
        with running_agent(data, dockerd.base_url, hub=hub):
            final = _final(hub, restart, cid)
            assert final["stage"] == "rollback", final
            assert "interrupted by an agent restart" in final["message"]
            restored = docker_client.api.inspect_container(name)
            assert restored["Id"] == _id(web) and restored["State"]["Running"]
            assert _backups(docker_client, name) == []
            assert _journals(data) == []
            assert _completes(hub, restart) == []
        hub.assert_clean()


def _journal(data: Path, **state: Any) -> Path:
    directory = data / "updates"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{state['report_id']}.json"
    path.write_text(json.dumps({"version": 1, "stop_timeout": 5, "health_timeout": 10, **state}))
    path.chmod(0o600)
    return path


@pytest.mark.slow
def test_update_interrupted_after_its_health_gate_is_finished_on_start(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    """Simulated crash: journal in phase "healthy", backup stopped, new container running."""
    name, side = names("fwd"), names("fwdside")
    old = make_container(None, name, image=update_images.refs["v1"])
    dep = make_container(["sh", "-c", GRACEFUL], side, network_mode=f"container:{name}")
    docker_client.images.pull(update_images.refs["v2"])
    old.stop(timeout=5)
    backup = f"{name}-dockmon-backup-1700000000"
    old.rename(backup)
    new = make_container(None, name, image=update_images.refs["v2"])
    data = tmp_path / "data"
    _journal(
        data,
        phase="healthy",
        report_id=_id(old)[:12],
        request_container_id=_id(old)[:12],
        new_image=update_images.refs["v2"],
        old_id=_id(old),
        name=name,
        was_running=True,
        backup_name=backup,
        new_id=_id(new),
        dependents=[{"id": _id(dep), "name": side, "was_running": True, "state": "pending"}],
    )
    with running_agent(data, dockerd.base_url) as agent:
        final = _final(agent.hub, 0, _id(old)[:12])
        assert final["stage"] == "completed", final
        done = _complete(agent.hub, 0)
        assert done == {
            "old_container_id": _id(old)[:12],
            "new_container_id": _id(new)[:12],
            "container_name": name,
        }
        assert _backups(docker_client, name) == []
        assert docker_client.api.inspect_container(name)["Id"] == _id(new)
        dep_after = docker_client.api.inspect_container(side)
        assert dep_after["HostConfig"]["NetworkMode"] == f"container:{_id(new)}"
        assert dep_after["State"]["Running"]
        assert _journals(data) == []
        agent.hub.assert_clean()


@pytest.mark.slow
def test_update_interrupted_after_the_rename_is_rolled_back_on_start(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    update_images: Images,
    names: Callable[[str], str],
    make_container: ContainerFactory,
) -> None:
    """Simulated crash between "backup" and "create": only a stopped backup exists."""
    name = names("back")
    old = make_container(None, name, image=update_images.refs["v1"])
    old.stop(timeout=5)
    backup = f"{name}-dockmon-backup-1700000000"
    old.rename(backup)
    data = tmp_path / "data"
    _journal(
        data,
        phase="creating",
        report_id=_id(old)[:12],
        request_container_id=_id(old)[:12],
        new_image=update_images.refs["v2"],
        old_id=_id(old),
        name=name,
        was_running=True,
        backup_name=backup,
        dependents=[],
    )
    with running_agent(data, dockerd.base_url) as agent:
        final = _final(agent.hub, 0, _id(old)[:12])
        assert final["stage"] == "rollback", final
        restored = docker_client.api.inspect_container(name)
        assert restored["Id"] == _id(old) and restored["State"]["Running"]
        assert _backups(docker_client, name) == []
        assert _journals(data) == []
        assert _completes(agent.hub, 0) == []
        agent.hub.assert_clean()


def test_backup_without_a_journal_is_reported_at_start(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    names: Callable[[str], str],
    make_container: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backup no journal accounts for (another agent's crash) is left alone but logged."""
    name = names("orphan")
    orphan = make_container(None, f"{name}-dockmon-backup-1700000000", start=False)
    data = tmp_path / "data"
    (data / "updates").mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="actors.flows.container_update")
    with running_agent(data, dockerd.base_url) as agent:
        wait_for(
            lambda: any(f"{name}-dockmon-backup-" in r.getMessage() for r in caplog.records),
            15,
            "the orphan backup warning",
        )
        orphan.reload()
        assert orphan.name == f"{name}-dockmon-backup-1700000000"
        agent.hub.assert_clean()
