"""End to end: image, network and volume commands (PROTOCOL §4.3.2-§4.3.4).

The real agent (in-process) answers the strict FakeHub; every answer is compared with what the
private dockerd itself says. Prunes run against a second, scratch private dockerd: a prune with
``dangling=false`` removes *every* unused image, which would wipe the session's shared images.

Test networks are ``internal`` with a subnet in 198.18.0.0/15 and no container is ever started
on them. Docker only lists a container in a network's ``Containers`` once it has an endpoint,
i.e. once it runs; so the "connected containers" refusal and the force-disconnect path cannot be
produced here and are covered in tests/test_docker_resources_unit.py with a recording fake.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from messages.timefmt import utc_z
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.containers import ContainerFactory, container_factory
from tests.support.daemon import PrivateDockerd
from tests.support.hub import Response

SHORT_ID = re.compile(r"[0-9a-f]{12}")
UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
DAEMON = "failed to {}: Error response from daemon: {}"

IMAGE_KEYS = {
    "id",
    "tags",
    "size",
    "created",
    "in_use",
    "container_count",
    "containers",
    "dangling",
}
NETWORK_KEYS = {
    "id",
    "name",
    "driver",
    "scope",
    "created",
    "internal",
    "subnet",
    "containers",
    "container_count",
    "is_builtin",
}
VOLUME_KEYS = {
    "name",
    "driver",
    "mountpoint",
    "created",
    "containers",
    "container_count",
    "in_use",
}


# --------------------------------------------------------------------------------------------
# strict shape checks (field names and JSON types of PROTOCOL §4.3.2-§4.3.4)


def check_refs(refs: Any) -> None:
    assert isinstance(refs, list)
    for ref in refs:
        assert set(ref) == {"id", "name"}, ref
        assert SHORT_ID.fullmatch(ref["id"]) and isinstance(ref["name"], str)
        assert not ref["name"].startswith("/")


def check_image(e: dict[str, Any]) -> None:
    assert set(e) == IMAGE_KEYS, e
    assert SHORT_ID.fullmatch(e["id"]), e
    assert isinstance(e["tags"], list) and all(isinstance(t, str) for t in e["tags"])
    assert type(e["size"]) is int and UTC_Z.fullmatch(e["created"]), e
    assert type(e["in_use"]) is bool and type(e["dangling"]) is bool
    check_refs(e["containers"])
    assert e["container_count"] == len(e["containers"]) and e["in_use"] == bool(e["containers"])


def check_network(e: dict[str, Any]) -> None:
    assert set(e) == NETWORK_KEYS, e
    assert SHORT_ID.fullmatch(e["id"]), e
    for key in ("name", "driver", "scope", "created", "subnet"):
        assert isinstance(e[key], str), (key, e)
    assert UTC_Z.fullmatch(e["created"]), e
    assert type(e["internal"]) is bool and type(e["is_builtin"]) is bool
    check_refs(e["containers"])
    assert e["container_count"] == len(e["containers"])
    assert e["is_builtin"] == (e["name"] in ("bridge", "host", "none"))


def check_volume(e: dict[str, Any]) -> None:
    assert set(e) == VOLUME_KEYS, e
    for key in ("name", "driver", "mountpoint", "created"):
        assert isinstance(e[key], str), (key, e)
    check_refs(e["containers"])
    assert e["container_count"] == len(e["containers"]) and e["in_use"] == bool(e["containers"])


def ident(model: Any) -> str:
    """A docker-py model's ID (typed ``str | None`` by the stubs)."""
    value = model.id
    assert isinstance(value, str)
    return value


def ok(response: Response) -> Any:
    assert response.ok, response.error
    assert response.raw["type"] == "response" and "error" not in response.raw
    return response.data


def failed(response: Response) -> str:
    assert not response.ok and response.error is not None, response
    assert "payload" not in response.raw
    return response.error


# --------------------------------------------------------------------------------------------
# fixtures


class Resources:
    """Images, networks, volumes and containers a test makes; removed again, containers first.

    Images are this test's own (imports or builds with a unique tag): the shared busybox tag is
    never removed.
    """

    def __init__(self, client: docker.DockerClient, make: ContainerFactory, base: str) -> None:
        self.client = client
        self.make = make
        self.base = base
        self.uid = uuid.uuid4().hex[:10]
        self.images: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []

    def tag(self, name: str) -> str:
        return f"dockmon-test/{name}-{self.uid}"

    def import_tiny(self, repo: str, tag: str = "latest", content: str = "") -> str:
        """A one-file image, distinct by ``content``; returns its full ID."""
        data = (content or f"{repo}:{tag}:{uuid.uuid4()}").encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self.client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        image_id = ident(self.client.images.get(f"{repo}:{tag}"))
        self.images.append(image_id)
        return image_id

    def build(self, repo: str, steps: int = 3) -> tuple[str, list[str]]:
        """``FROM <busybox>`` plus metadata-only steps (the legacy builder keeps an
        intermediate image per step); returns (final ID, intermediate IDs)."""
        lines = [f"FROM {self.base}", f"LABEL dockmon-test.build={self.uid}"]
        lines += [f"LABEL step{i}={uuid.uuid4().hex}" for i in range(steps - 1)]
        dockerfile = io.BytesIO("\n".join(lines).encode())
        image, _logs = self.client.images.build(
            fileobj=dockerfile, tag=f"{repo}:latest", rm=True, network_mode="none"
        )
        base_id = self.client.images.get(self.base).id
        chain: list[str] = []
        parent = image.attrs["Parent"]
        while parent and parent != base_id:
            chain.append(parent)
            parent = self.client.api.inspect_image(parent)["Parent"]
        self.images += [ident(image), *chain]
        return ident(image), chain

    def network(self, n: int, **kwargs: Any) -> Any:
        name = f"dmtest-{self.uid}-{n}"
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=f"198.18.{n}.0/24")]
        )
        net = self.client.networks.create(name, driver="bridge", internal=True, ipam=ipam, **kwargs)
        self.networks.append(ident(net))
        return net

    def volume(self, suffix: str) -> str:
        name = f"dmtest-{self.uid}-{suffix}"
        self.client.volumes.create(name)
        self.volumes.append(name)
        return name

    def created(self, image: str | None = None, **kwargs: Any) -> Any:
        """A container that is created and never started (network ``none`` unless given)."""
        return self.make(["true"], start=False, image=image or self.base, **kwargs)

    def cleanup(self) -> None:
        api = self.client.api
        for image_id in reversed(self.images):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_image(image_id, force=True)
        for net in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(net)
        for name in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(name, force=True)


@contextlib.contextmanager
def resources(client: docker.DockerClient, base: str) -> Iterator[Resources]:
    res: Resources | None = None
    try:
        with container_factory(client, base) as make:  # containers go first on exit
            res = Resources(client, make, base)
            yield res
    finally:
        if res is not None:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                res.cleanup()


@pytest.fixture
def agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    with running_agent(tmp_path / "data", dockerd.base_url) as running:
        running.hub.wait_registered()
        yield running
        running.hub.assert_clean()


@pytest.fixture
def res(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[Resources]:
    with resources(docker_client, busybox_image) as r:
        yield r


@pytest.fixture(scope="module")
def scratch_dockerd(dockerd: PrivateDockerd) -> Iterator[PrivateDockerd]:
    """A second private dockerd (same safety flags) where prunes cannot hurt other tests."""
    with PrivateDockerd() as daemon:
        yield daemon


@pytest.fixture
def scratch(
    tmp_path: Path, scratch_dockerd: PrivateDockerd, busybox_image: str
) -> Iterator[tuple[RunningAgent, Resources]]:
    client = scratch_dockerd.client()
    try:
        # the scratch daemon has no busybox: containers there are created from tiny imports
        with (
            resources(client, busybox_image) as r,
            running_agent(tmp_path / "data", scratch_dockerd.base_url) as running,
        ):
            running.hub.wait_registered()
            yield running, r
            running.hub.assert_clean()
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# images


def test_list_images_matches_docker_image_ls_all(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    built, intermediates = res.build(res.tag("built"))
    assert intermediates, "the legacy builder should have left intermediate images"
    tiny = res.import_tiny(res.tag("tiny"), "a")
    docker_client.api.tag(tiny, res.tag("tiny"), "b")
    old = res.import_tiny(res.tag("dangling"), "x")
    res.import_tiny(res.tag("dangling"), "x")  # takes the tag: `old` is now dangling
    user1 = res.created(tiny, name=f"dmtest-{res.uid}-u1")
    user2 = res.created(tiny)

    result = ok(agent.hub.command("list_images", {}))
    assert isinstance(result, list)
    for element in result:
        check_image(element)
    by_id = {e["id"]: e for e in result}
    assert len(by_id) == len(result)

    docker_images = docker_client.images.list(all=True)
    assert set(by_id) == {ident(i).removeprefix("sha256:")[:12] for i in docker_images}
    dangling = {i.id for i in docker_client.images.list(all=True, filters={"dangling": True})}
    summaries = docker_client.api.containers(all=True)
    for image in docker_images:
        e = by_id[ident(image)[7:19]]
        assert e["tags"] == [t for t in image.attrs["RepoTags"] or [] if t != "<none>:<none>"]
        assert e["size"] == image.attrs["Size"]
        assert e["created"] == utc_z(image.attrs["Created"])  # inspect has RFC 3339 ns
        assert e["dangling"] == (image.id in dangling), e
        users = {s["Id"][:12] for s in summaries if s["ImageID"] == image.id}
        assert {c["id"] for c in e["containers"]} == users

    assert by_id[tiny[7:19]]["tags"] == sorted([f"{res.tag('tiny')}:a", f"{res.tag('tiny')}:b"])
    assert sorted(by_id[tiny[7:19]]["containers"], key=lambda c: c["name"]) == sorted(
        [{"id": user1.id[:12], "name": user1.name}, {"id": user2.id[:12], "name": user2.name}],
        key=lambda c: c["name"],
    )
    assert by_id[tiny[7:19]]["in_use"] is True and by_id[tiny[7:19]]["container_count"] == 2
    assert by_id[old[7:19]]["dangling"] is True and by_id[old[7:19]]["tags"] == []
    assert by_id[built[7:19]]["dangling"] is False
    for intermediate in intermediates:  # only in the all=true list
        assert by_id[intermediate[7:19]]["tags"] == []
    plain = {ident(i)[7:19] for i in docker_client.images.list()}
    assert not plain & {i[7:19] for i in intermediates}


def test_remove_image_prunes_untagged_parents(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    built, intermediates = res.build(res.tag("parents"))
    removed = agent.hub.command("remove_image", {"image_id": f"{res.tag('parents')}:latest"})
    assert ok(removed) == {"success": True}
    left = {i.id for i in docker_client.images.list(all=True)}
    assert built not in left
    assert not left & set(intermediates), "untagged parents must go too"
    assert docker_client.images.get(res.base)  # the base image is untouched


def test_remove_image_by_short_id_and_force(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    plain = res.import_tiny(res.tag("byid"))
    assert ok(agent.hub.command("remove_image", {"image_id": plain[7:19], "force": False})) == {
        "success": True
    }
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(plain)

    # tagged twice: without force Docker refuses to delete by ID ...
    two = res.import_tiny(res.tag("two"), "a")
    docker_client.api.tag(two, res.tag("two"), "b")
    refused = agent.hub.command("remove_image", {"image_id": two[7:19]})
    error = failed(refused)
    assert "conflict" in error and "must be forced" in error
    assert error.startswith(DAEMON.format("remove image", "conflict: unable to delete"))
    # ... with force it untags both and deletes it
    assert ok(agent.hub.command("remove_image", {"image_id": two[7:19], "force": True})) == {
        "success": True
    }
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(two)


def test_remove_image_errors_keep_dockers_wording(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    api = docker_client.api

    def docker_says(ref: str, force: bool) -> str:
        with pytest.raises(docker.errors.APIError) as info:
            api.remove_image(ref, force=force)
        explanation = info.value.explanation
        assert isinstance(explanation, str)
        return explanation

    missing = f"{res.tag('missing')}:nope"
    expected = DAEMON.format("remove image", docker_says(missing, False))
    error = failed(agent.hub.command("remove_image", {"image_id": missing}))
    assert error == expected and "No such image" in error
    assert agent.hub.command("remove_image", {"image_id": missing}).error_type == "docker_error"

    # the only tag of an image a (never started) container uses: a conflict
    used = res.import_tiny(res.tag("used"))
    res.created(used)
    ref = f"{res.tag('used')}:latest"
    expected = DAEMON.format("remove image", docker_says(ref, False))
    error = failed(agent.hub.command("remove_image", {"image_id": ref}))
    assert error == expected and "conflict" in error

    # an image a running container uses cannot even be forced (busybox-derived, network none)
    running_image, _ = res.build(res.tag("running"), steps=1)
    runner = res.make(["sleep", "3600"], image=running_image)
    expected = DAEMON.format("remove image", docker_says(running_image[7:19], True))
    error = failed(
        agent.hub.command("remove_image", {"image_id": running_image[7:19], "force": True})
    )
    assert error == expected and "conflict" in error and "being used by running container" in error
    runner.kill()
    assert docker_client.images.get(running_image)


def test_prune_images_removes_every_unused_image(
    scratch: tuple[RunningAgent, Resources],
) -> None:
    agent, res = scratch
    client = res.client
    unused = res.import_tiny(res.tag("unused"))
    in_use = res.import_tiny(res.tag("inuse"))
    res.created(in_use)
    old = res.import_tiny(res.tag("dangling"), "x")
    res.import_tiny(res.tag("dangling"), "x")  # `old` is dangling now, also unused
    newer = ident(client.images.get(f"{res.tag('dangling')}:x"))
    sizes = {i: client.images.get(i).attrs["Size"] for i in (unused, old, newer)}

    result = ok(agent.hub.command("prune_images", {}))
    assert set(result) == {"removed_count", "space_reclaimed"}
    left = {i.id for i in client.images.list(all=True)}
    assert left == {in_use}  # tagged-but-unused and dangling images are all gone
    # every removed image gives one "Deleted" entry for itself and one per unique layer
    assert len(sizes) <= result["removed_count"] <= 2 * len(sizes)
    assert result["space_reclaimed"] == sum(sizes.values())

    again = ok(agent.hub.command("prune_images", {}))
    assert again == {"removed_count": 0, "space_reclaimed": 0}


# --------------------------------------------------------------------------------------------
# networks


def test_list_networks_matches_docker(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    net = res.network(11)
    other = res.network(12)
    attached = res.created(network=net.name)  # created on the network, never started
    other.connect(attached)  # a created container can be connected too: still no endpoint

    result = ok(agent.hub.command("list_networks", {}))
    assert isinstance(result, list)
    for element in result:
        check_network(element)
    by_id = {e["id"]: e for e in result}
    listed = docker_client.networks.list()
    assert set(by_id) == {ident(n)[:12] for n in listed}
    for n in listed:
        attrs = docker_client.api.inspect_network(ident(n))
        e = by_id[ident(n)[:12]]
        configs = (attrs.get("IPAM") or {}).get("Config") or []
        assert e["name"] == attrs["Name"] and e["driver"] == attrs["Driver"]
        assert e["scope"] == attrs["Scope"] and e["internal"] == attrs["Internal"]
        assert e["created"] == utc_z(attrs["Created"])
        assert e["subnet"] == (configs[0]["Subnet"] if configs else "")
        attached_ids = {cid[:12] for cid in attrs.get("Containers") or {}}
        assert {c["id"] for c in e["containers"]} == attached_ids

    mine = by_id[net.id[:12]]
    assert mine["name"] == net.name and mine["subnet"] == "198.18.11.0/24"
    assert mine["internal"] is True and mine["driver"] == "bridge" and mine["scope"] == "local"
    assert mine["is_builtin"] is False
    # Docker lists only containers with an endpoint, i.e. running ones (never on test networks)
    assert mine["containers"] == [] and mine["container_count"] == 0
    attached.reload()
    assert set(attached.attrs["NetworkSettings"]["Networks"]) == {net.name, other.name}
    builtins = {e["name"] for e in result if e["is_builtin"]}
    assert builtins == {"host", "none"}  # the private daemon runs with --bridge=none


def test_create_network(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    name = f"dmtest-{res.uid}-made"
    payload = {
        "name": name,
        "driver": "",  # empty means bridge
        "subnet": "198.18.21.0/24",
        "gateway": "198.18.21.254",
        "internal": True,
    }
    created = ok(agent.hub.command("create_network", payload))
    net = docker_client.networks.get(name)
    res.networks.append(ident(net))
    check_network(created)
    assert created == {
        "id": ident(net)[:12],
        "name": name,
        "driver": "bridge",
        "scope": "local",
        "created": utc_z(net.attrs["Created"]),
        "internal": True,
        "subnet": "198.18.21.0/24",
        "containers": [],
        "container_count": 0,
        "is_builtin": False,
    }
    assert net.attrs["IPAM"]["Config"] == [{"Subnet": "198.18.21.0/24", "Gateway": "198.18.21.254"}]
    assert net.attrs["Internal"] is True and net.attrs["Driver"] == "bridge"

    # the same name again: Docker's "already exists" (the backend turns it into a 409)
    again = dict(payload, subnet="198.18.22.0/24", gateway="")
    error = failed(agent.hub.command("create_network", again))
    assert error == DAEMON.format("create network", f"network with name {name} already exists")
    assert len(docker_client.networks.list(names=[name])) == 1

    no_gateway = ok(
        agent.hub.command(
            "create_network",
            {"name": f"{name}-2", "driver": "bridge", "subnet": "198.18.23.0/24", "internal": True},
        )
    )
    res.networks.append(no_gateway["id"])
    net2 = docker_client.networks.get(no_gateway["id"])
    assert net2.attrs["IPAM"]["Config"][0]["Subnet"] == "198.18.23.0/24"
    assert no_gateway["subnet"] == "198.18.23.0/24"

    assert failed(agent.hub.command("create_network", {"name": ""})) == "network name is required"
    # (an unknown driver would do too, but dockerd spends 15 s looking for a plugin)
    bad_subnet = {"name": f"{name}-3", "subnet": "198.18.24.0/33", "internal": True}
    error = failed(agent.hub.command("create_network", bad_subnet))
    assert error.startswith(DAEMON.format("create network", "")) and "198.18.24.0/33" in error
    assert not docker_client.networks.list(names=[f"{name}-3"])


def test_delete_network(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    for builtin in ("none", "host"):
        short = ident(docker_client.networks.get(builtin))[:12]
        error = failed(agent.hub.command("delete_network", {"network_id": short, "force": True}))
        assert error == f"cannot delete built-in network '{builtin}'"
        assert docker_client.networks.get(builtin)

    missing = f"dmtest-{res.uid}-missing"
    error = failed(agent.hub.command("delete_network", {"network_id": missing}))
    assert error == DAEMON.format("inspect network", f"network {missing} not found")

    plain = res.network(31)
    assert ok(agent.hub.command("delete_network", {"network_id": plain.id[:12]})) == {
        "success": True
    }
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(plain.id)

    # a created (never started) container has no endpoint: Docker counts nothing and deletes
    # the network, and so does the agent (like the Go agent and `docker network rm`)
    used = res.network(32)
    res.created(network=used.name)
    assert docker_client.api.inspect_network(used.id)["Containers"] == {}
    response = agent.hub.command("delete_network", {"network_id": used.id[:12], "force": True})
    assert ok(response) == {"success": True}
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(used.id)


def test_prune_networks(scratch: tuple[RunningAgent, Resources]) -> None:
    agent, res = scratch
    client = res.client
    a = res.network(41)
    b = res.network(42)
    before = {str(n.name) for n in client.networks.list()}
    result = ok(agent.hub.command("prune_networks", {}))
    assert set(result) == {"removed_count", "networks_removed"}
    after = {str(n.name) for n in client.networks.list()}
    assert (
        sorted(result["networks_removed"])
        == sorted(before - after)
        == sorted([str(a.name), str(b.name)])
    )
    assert result["removed_count"] == 2
    assert after == {"host", "none"}
    assert ok(agent.hub.command("prune_networks", {})) == {
        "removed_count": 0,
        "networks_removed": [],
    }


# --------------------------------------------------------------------------------------------
# volumes


def test_list_volumes_matches_docker(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    used = res.volume("used")
    unused = res.volume("unused")
    c1 = res.created(volumes={used: {"bind": "/a", "mode": "rw"}})
    c2 = res.created(volumes={used: {"bind": "/b", "mode": "ro"}})
    anonymous = res.created(volumes=["/anon"])  # an anonymous volume, removed with it (v=True)

    result = ok(agent.hub.command("list_volumes", {}))
    assert isinstance(result, list)
    for element in result:
        check_volume(element)
    by_name = {e["name"]: e for e in result}
    listed = docker_client.api.volumes()["Volumes"] or []
    assert set(by_name) == {v["Name"] for v in listed}
    summaries = docker_client.api.containers(all=True)
    for v in listed:
        e = by_name[v["Name"]]
        assert e["driver"] == v["Driver"] and e["mountpoint"] == v["Mountpoint"]
        assert e["created"] == utc_z(v["CreatedAt"]) and UTC_Z.fullmatch(e["created"])
        users = {
            s["Id"][:12]
            for s in summaries
            for m in s["Mounts"] or []
            if m["Type"] == "volume" and m.get("Name") == v["Name"]
        }
        assert {c["id"] for c in e["containers"]} == users

    assert sorted(by_name[used]["containers"], key=lambda c: c["id"]) == sorted(
        [{"id": c1.id[:12], "name": c1.name}, {"id": c2.id[:12], "name": c2.name}],
        key=lambda c: c["id"],
    )
    assert by_name[used]["in_use"] is True and by_name[used]["container_count"] == 2
    assert by_name[unused]["containers"] == [] and by_name[unused]["in_use"] is False
    anon_name = anonymous.attrs["Mounts"][0]["Name"]
    assert by_name[anon_name]["containers"] == [{"id": anonymous.id[:12], "name": anonymous.name}]


def test_delete_volume(
    agent: RunningAgent, res: Resources, docker_client: docker.DockerClient
) -> None:
    free = res.volume("free")
    assert ok(agent.hub.command("delete_volume", {"volume_name": free, "force": False})) == {
        "success": True
    }
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(free)

    busy = res.volume("busy")
    user = res.created(volumes={busy: {"bind": "/data", "mode": "rw"}})
    for force in (False, True):  # Docker refuses an in-use volume even with force
        error = failed(agent.hub.command("delete_volume", {"volume_name": busy, "force": force}))
        assert error == DAEMON.format(
            "remove volume", f"remove {busy}: volume is in use - [{user.id}]"
        )
        assert "in use" in error
    assert docker_client.volumes.get(busy)

    missing = f"dmtest-{res.uid}-missing"
    with pytest.raises(docker.errors.NotFound) as info:
        docker_client.api.remove_volume(missing)
    error = failed(agent.hub.command("delete_volume", {"volume_name": missing}))
    assert error == DAEMON.format("remove volume", info.value.explanation)
    assert failed(agent.hub.command("delete_volume", {"volume_name": ""})) == (
        "volume name cannot be empty"
    )


def test_prune_volumes_removes_named_ones_too(scratch: tuple[RunningAgent, Resources]) -> None:
    agent, res = scratch
    client = res.client
    named = res.volume("named")
    other = res.volume("other")
    kept = res.volume("kept")
    holder = res.import_tiny(res.tag("holder"))
    res.created(holder, volumes={kept: {"bind": "/data", "mode": "rw"}})
    result = ok(agent.hub.command("prune_volumes", {}))
    assert set(result) == {"removed_count", "space_reclaimed", "volumes_removed"}
    assert sorted(result["volumes_removed"]) == sorted([named, other])
    assert result["removed_count"] == 2 and result["space_reclaimed"] == 0
    assert {v.name for v in client.volumes.list()} == {kept}


# --------------------------------------------------------------------------------------------
# malformed payloads


BAD_PAYLOADS = [
    ("list_images", [1], "list_images payload must be an object, got list"),
    ("remove_image", {"image_id": 12}, "image_id must be a string, got int"),
    ("remove_image", {"image_id": "x", "force": "true"}, "force must be a boolean, got str"),
    ("prune_images", "all", "prune_images payload must be an object, got str"),
    ("list_networks", 0, "list_networks payload must be an object, got int"),
    ("create_network", {"name": "n", "internal": 1}, "internal must be a boolean, got int"),
    ("delete_network", {"network_id": ["a"]}, "network_id must be a string, got list"),
    ("prune_networks", [], "prune_networks payload must be an object, got list"),
    ("list_volumes", "x", "list_volumes payload must be an object, got str"),
    ("delete_volume", {"volume_name": {}}, "volume_name must be a string, got dict"),
    ("prune_volumes", 1.5, "prune_volumes payload must be an object, got float"),
]


def test_wrong_payload_types_get_an_in_band_error(agent: RunningAgent) -> None:
    for name, payload, error in BAD_PAYLOADS:
        response = agent.hub.command(name, payload, timeout=10)
        assert failed(response) == f"invalid payload for {name}: {error}"
    assert isinstance(ok(agent.hub.command("list_volumes", {})), list)  # still serving
    assert agent.hub.connection_count == 1  # nothing crashed or reconnected
