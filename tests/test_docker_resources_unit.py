"""Pure logic of the image, network and volume families: decoding and result shaping.

The Docker-facing handlers get a small recording fake API where the private dockerd cannot
produce the situation (a network endpoint needs a *started* container, which the test rules
forbid on test networks; an IPAM-less network would take a subnet outside 198.18.0.0/15).
"""

from __future__ import annotations

import json
from typing import Any, cast

import docker.errors
import pytest

from actors.commands import images as docker_images
from actors.commands import networks as docker_networks
from actors.commands import volumes as docker_volumes
from actors.commands.networks import network_element
from actors.commands.registry import HANDLERS as GATEWAY_HANDLERS
from actors.commands.tools import DockerTools, succeeded
from messages.common import RawJson
from messages.docker import CommandFailed, CommandSucceeded
from messages.images import ListImages, PruneImages, RemoveImage
from messages.networks import CreateNetwork, DeleteNetwork, ListNetworks, PruneNetworks
from messages.references import short_id
from messages.volumes import DeleteVolume, ListVolumes, PruneVolumes
from messages.wire import RejectedRequest, decode_frame

ALL_COMMANDS = {
    "list_images": ListImages,
    "remove_image": RemoveImage,
    "prune_images": PruneImages,
    "list_networks": ListNetworks,
    "create_network": CreateNetwork,
    "delete_network": DeleteNetwork,
    "prune_networks": PruneNetworks,
    "list_volumes": ListVolumes,
    "delete_volume": DeleteVolume,
    "prune_volumes": PruneVolumes,
}


def command(name: str, payload: Any = None, *, omit: bool = False) -> str:
    frame: dict[str, Any] = {"type": "command", "command": name, "id": "r1", "correlation_id": "r1"}
    if not omit:
        frame["payload"] = payload
    return json.dumps(frame)


def rejected(text: str) -> str:
    decoded = decode_frame(text)
    assert isinstance(decoded, RejectedRequest), decoded
    assert isinstance(decoded.reply, CommandFailed)
    assert decoded.reply.request_id == "r1"
    return decoded.reply.error


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_COMMANDS))
def test_every_command_is_decoded_routed_and_handled(name: str) -> None:
    from messages.families import ROUTES

    payload = {
        "remove_image": {"image_id": "abc"},
        "create_network": {"name": "n"},
        "delete_network": {"network_id": "abc"},
        "delete_volume": {"volume_name": "pgdata"},
    }.get(name, {})
    decoded = decode_frame(command(name, payload))
    assert type(decoded) is ALL_COMMANDS[name]
    assert ROUTES[ALL_COMMANDS[name]] == "docker_gateway"
    assert ALL_COMMANDS[name] in GATEWAY_HANDLERS


@pytest.mark.parametrize("name", ["list_images", "prune_images", "list_networks", "list_volumes"])
def test_payloadless_commands_accept_a_missing_null_or_empty_payload(name: str) -> None:
    for text in (command(name, omit=True), command(name, None), command(name, {})):
        assert type(decode_frame(text)) is ALL_COMMANDS[name]


def test_decoded_fields_and_defaults() -> None:
    assert decode_frame(command("remove_image", {"image_id": " nginx:1 ", "force": True})) == (
        RemoveImage(request_id="r1", image_id="nginx:1", force=True)
    )
    assert decode_frame(command("create_network", {"name": "n", "driver": ""})) == CreateNetwork(
        request_id="r1", name="n", driver="bridge", subnet="", gateway="", internal=False
    )
    full = {
        "name": "n",
        "driver": "macvlan",
        "subnet": "198.18.1.0/24",
        "gateway": "198.18.1.1",
        "internal": True,
    }
    assert decode_frame(command("create_network", full)) == CreateNetwork(
        request_id="r1",
        name="n",
        driver="macvlan",
        subnet="198.18.1.0/24",
        gateway="198.18.1.1",
        internal=True,
    )
    assert decode_frame(command("delete_network", {"network_id": "abc"})) == DeleteNetwork(
        request_id="r1", network_id="abc", force=False
    )
    assert decode_frame(command("delete_volume", {"volume_name": "pgdata", "force": True})) == (
        DeleteVolume(request_id="r1", volume_name="pgdata", force=True)
    )


def test_empty_names_give_the_go_agents_exact_errors() -> None:
    assert rejected(command("create_network", {"name": ""})) == "network name is required"
    assert rejected(command("create_network", {"driver": "bridge"})) == "network name is required"
    assert rejected(command("delete_volume", {"volume_name": "  "})) == (
        "volume name cannot be empty"
    )
    assert rejected(command("delete_volume", None)) == "volume name cannot be empty"
    assert rejected(command("remove_image", {"force": True})) == (
        "invalid payload for remove_image: image_id is required"
    )
    assert rejected(command("delete_network", {})) == (
        "invalid payload for delete_network: network_id is required"
    )


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("list_images", [], "list_images payload must be an object, got list"),
        ("prune_images", "x", "prune_images payload must be an object, got str"),
        ("remove_image", {"image_id": 5}, "image_id must be a string, got int"),
        ("remove_image", {"image_id": "a", "force": "yes"}, "force must be a boolean, got str"),
        ("list_networks", 3, "list_networks payload must be an object, got int"),
        ("create_network", {"name": ["n"]}, "name must be a string, got list"),
        ("create_network", {"name": "n", "internal": "true"}, "internal must be a boolean"),
        ("create_network", {"name": "n", "subnet": 24}, "subnet must be a string, got int"),
        ("create_network", {"name": "", "gateway": {}}, "gateway must be a string, got dict"),
        ("delete_network", {"network_id": "a", "force": 1}, "force must be a boolean, got int"),
        ("prune_networks", True, "prune_networks payload must be an object, got bool"),
        ("list_volumes", "", "list_volumes payload must be an object, got str"),
        ("delete_volume", {"volume_name": None, "force": 0}, "force must be a boolean"),
        ("delete_volume", {"volume_name": 1.5}, "volume_name must be a string, got float"),
        ("prune_volumes", [1], "prune_volumes payload must be an object, got list"),
    ],
)
def test_wrong_payload_types_become_in_band_errors(name: str, payload: Any, error: str) -> None:
    message = rejected(command(name, payload))
    assert message.startswith(f"invalid payload for {name}: ")
    assert error in message


# --- time and id shaping -----------------------------------------------------------------------


def test_short_ids_and_container_refs() -> None:
    assert short_id("sha256:" + "ab" * 32) == "abababababab"  # an image id
    assert short_id("0123456789abcdef" * 4) == "0123456789ab"  # a container id
    assert short_id("0123456789ab") == "0123456789ab" and short_id("") == ""
    assert docker_networks.container_ref("f" * 64, "/web") == {"id": "f" * 12, "name": "web"}


# --- images ------------------------------------------------------------------------------------

IMG_A = "sha256:" + "a" * 64
IMG_B = "sha256:" + "b" * 64


def test_image_elements_have_the_exact_shape_and_usage() -> None:
    summaries = [
        {"Id": "1" * 64, "Names": ["/web"], "ImageID": IMG_A},
        {"Id": "2" * 64, "Names": ["/db", "/web/db"], "ImageID": IMG_A},
        {"Id": "3" * 64, "Names": [], "ImageID": ""},
    ]
    users = docker_images.image_users(summaries)
    used = {
        "Id": IMG_A,
        "RepoTags": ["nginx:1.27", "nginx:latest"],
        "RepoDigests": None,
        "Size": 187654321,
        "Created": 1751277600,
    }
    assert docker_images.image_element(used, users) == {
        "id": "a" * 12,
        "tags": ["nginx:1.27", "nginx:latest"],
        "size": 187654321,
        "created": "2025-06-30T10:00:00Z",
        "in_use": True,
        "container_count": 2,
        "containers": [{"id": "1" * 12, "name": "web"}, {"id": "2" * 12, "name": "db"}],
        "dangling": False,
    }
    placeholder = {
        "Id": IMG_B,
        "RepoTags": ["<none>:<none>"],
        "RepoDigests": ["<none>@<none>"],
        "Size": 0,
        "Created": 0,
    }
    element = docker_images.image_element(placeholder, users)
    assert element["tags"] == [] and element["containers"] == [] and element["dangling"] is True
    assert element["in_use"] is False and element["container_count"] == 0
    assert element["created"] == "1970-01-01T00:00:00Z"
    nulls = docker_images.image_element({"Id": IMG_B, "RepoTags": None}, {})
    assert nulls["tags"] == [] and nulls["containers"] == []
    parents = frozenset({IMG_B})
    assert docker_images.image_element(placeholder, users, parents)["dangling"] is False
    pulled_by_digest = {"Id": IMG_B, "RepoTags": [], "RepoDigests": ["nginx@sha256:" + "c" * 64]}
    # like `docker images -f dangling=true`: an untagged image is dangling even with a digest
    assert docker_images.image_element(pulled_by_digest, {})["dangling"] is True


def test_image_prune_counts_only_entries_with_a_deleted_id() -> None:
    # what dockerd 20.10 answered in this repository's test environment
    result = {
        "ImagesDeleted": [
            {"Deleted": "sha256:" + "1" * 64},
            {"Deleted": "sha256:" + "2" * 64},
            {"Untagged": "mine/dang:x"},
            {"Deleted": "sha256:" + "3" * 64},
        ],
        "SpaceReclaimed": 4,
    }
    assert docker_images.prune_result(result) == {"removed_count": 3, "space_reclaimed": 4}
    nothing = {"ImagesDeleted": None, "SpaceReclaimed": 0}
    assert docker_images.prune_result(nothing) == {"removed_count": 0, "space_reclaimed": 0}


# --- networks ----------------------------------------------------------------------------------

NET_ID = "9c8b7a6f5e4d" + "0" * 52


def inspect_net(name: str = "site_default", **over: Any) -> dict[str, Any]:
    net: dict[str, Any] = {
        "Name": name,
        "Id": NET_ID,
        "Created": "2026-07-01T11:00:00.123456789+02:00",
        "Scope": "local",
        "Driver": "bridge",
        "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "172.20.0.0/16"}]},
        "Internal": False,
        "Containers": {"3f9a1b2c4d5e" + "0" * 52: {"Name": "web", "IPv4Address": "x"}},
    }
    net.update(over)
    return net


def test_network_element_is_exactly_the_list_shape() -> None:
    assert network_element(inspect_net()) == {
        "id": "9c8b7a6f5e4d",
        "name": "site_default",
        "driver": "bridge",
        "scope": "local",
        "created": "2026-07-01T09:00:00Z",
        "internal": False,
        "subnet": "172.20.0.0/16",
        "containers": [{"id": "3f9a1b2c4d5e", "name": "web"}],
        "container_count": 1,
        "is_builtin": False,
    }
    bare = network_element(inspect_net("host", IPAM={"Config": None}, Containers=None))
    assert bare["subnet"] == "" and bare["containers"] == [] and bare["is_builtin"] is True
    two = inspect_net(IPAM={"Config": [{"Subnet": "198.18.1.0/24"}, {"Subnet": "fd00::/64"}]})
    assert network_element(two)["subnet"] == "198.18.1.0/24"
    for name in ("bridge", "none"):
        assert network_element(inspect_net(name))["is_builtin"] is True
    assert network_element(inspect_net("bridge2"))["is_builtin"] is False


class FakeApi:
    """Records calls; ``fail`` maps a method name to the exception it raises."""

    api_version = "1.41"

    def __init__(self, net: dict[str, Any] | None = None, **fail: Exception) -> None:
        self.net = net
        self.fail = fail
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def inspect_network(self, net_id: str) -> dict[str, Any]:
        self._record("inspect_network", net_id)
        assert self.net is not None
        return self.net

    def disconnect_container_from_network(self, container: str, net_id: str, **kw: Any) -> None:
        self._record("disconnect_container_from_network", container, net_id, **kw)

    def remove_network(self, net_id: str) -> None:
        self._record("remove_network", net_id)

    def create_network(self, name: str, **kw: Any) -> dict[str, str]:
        self._record("create_network", name, **kw)
        return {"Id": NET_ID}

    def prune_volumes(self, filters: Any = None) -> dict[str, Any]:
        self._record("prune_volumes", filters=filters)
        return {"VolumesDeleted": None, "SpaceReclaimed": 0}

    def prune_networks(self) -> dict[str, Any]:
        self._record("prune_networks")
        return {"NetworksDeleted": None}


def tools_for(api: FakeApi) -> DockerTools:
    return DockerTools(api=cast(Any, api), docker_host="unix:///fake.sock")


def names(api: FakeApi) -> list[str]:
    return [c[0] for c in api.calls]


def payload_of(reply: Any) -> Any:
    assert isinstance(reply, CommandSucceeded), reply
    return reply.payload.value()


def test_delete_network_refuses_attached_containers_without_force() -> None:
    two = {"a" * 64: {"Name": "x"}, "b" * 64: {"Name": "y"}}
    api = FakeApi(inspect_net(Containers=two))
    reply = docker_networks.delete_network(
        tools_for(api), DeleteNetwork(request_id="r1", network_id="9c8b7a6f5e4d")
    )
    assert reply == CommandFailed(
        request_id="r1",
        error="network has 2 connected container(s), use force to disconnect and delete",
    )
    assert names(api) == ["inspect_network"]


def test_delete_network_with_force_disconnects_every_container_first() -> None:
    two = {"a" * 64: {"Name": "x"}, "b" * 64: {"Name": "y"}}
    api = FakeApi(inspect_net(Containers=two))
    msg = DeleteNetwork(request_id="r1", network_id="9c8b7a6f5e4d", force=True)
    assert payload_of(docker_networks.delete_network(tools_for(api), msg)) == {"success": True}
    assert api.calls == [
        ("inspect_network", ("9c8b7a6f5e4d",), {}),
        ("disconnect_container_from_network", ("a" * 64, NET_ID), {"force": True}),
        ("disconnect_container_from_network", ("b" * 64, NET_ID), {"force": True}),
        ("remove_network", (NET_ID,), {}),
    ]


def test_delete_network_reports_a_failed_disconnect_in_dockers_words() -> None:
    error = docker.errors.APIError("x", explanation="container aaaaaaaaaaaa is not connected")
    api = FakeApi(inspect_net(), disconnect_container_from_network=error)
    msg = DeleteNetwork(request_id="r1", network_id="n", force=True)
    reply = docker_networks.delete_network(tools_for(api), msg)
    assert isinstance(reply, CommandFailed)
    assert reply.error == (
        "failed to disconnect container 3f9a1b2c4d5e: Error response from daemon: "
        "container aaaaaaaaaaaa is not connected"
    )
    assert "remove_network" not in names(api)


def test_delete_network_refuses_builtins_even_with_force() -> None:
    for name in ("bridge", "host", "none"):
        api = FakeApi(inspect_net(name, Containers={}))
        msg = DeleteNetwork(request_id="r1", network_id=name, force=True)
        reply = docker_networks.delete_network(tools_for(api), msg)
        assert reply == CommandFailed(
            request_id="r1", error=f"cannot delete built-in network '{name}'"
        )
        assert names(api) == ["inspect_network"]


def test_create_network_adds_ipam_only_with_a_subnet() -> None:
    created = inspect_net("n", Containers={}, IPAM={"Config": []})
    api = FakeApi(created)
    msg = CreateNetwork(request_id="r1", name="n", gateway="198.18.9.1")
    result = payload_of(docker_networks.create_network(tools_for(api), msg))
    assert result == network_element(created)
    assert api.calls[0] == (
        "create_network",
        ("n",),
        {"driver": "bridge", "ipam": None, "internal": False, "check_duplicate": True},
    )

    api = FakeApi(created)
    msg = CreateNetwork(request_id="r1", name="n", subnet="198.18.9.0/24", internal=True)
    docker_networks.create_network(tools_for(api), msg)
    ipam = api.calls[0][2]["ipam"]
    assert ipam["Config"][0]["Subnet"] == "198.18.9.0/24"
    assert ipam["Config"][0]["Gateway"] is None  # no gateway when none was given
    assert api.calls[0][2]["internal"] is True

    api = FakeApi(created)
    msg = CreateNetwork(request_id="r1", name="n", subnet="198.18.9.0/24", gateway="198.18.9.1")
    docker_networks.create_network(tools_for(api), msg)
    pool = api.calls[0][2]["ipam"]["Config"][0]
    assert (pool["Subnet"], pool["Gateway"]) == ("198.18.9.0/24", "198.18.9.1")


def test_network_prune_result_never_has_null() -> None:
    api = FakeApi()
    reply = docker_networks.prune_networks(tools_for(api), PruneNetworks(request_id="r1"))
    assert payload_of(reply) == {"removed_count": 0, "networks_removed": []}
    assert docker_networks.prune_result(["a", "b"]) == {
        "removed_count": 2,
        "networks_removed": ["a", "b"],
    }


# --- volumes -----------------------------------------------------------------------------------


def test_volume_usage_comes_from_volume_mounts_only() -> None:
    summaries: list[dict[str, Any]] = [
        {
            "Id": "1" * 64,
            "Names": ["/db"],
            "Mounts": [
                {"Type": "volume", "Name": "pgdata", "Destination": "/a"},
                {"Type": "volume", "Name": "pgdata", "Destination": "/b"},  # counted once
                {"Type": "bind", "Name": "", "Source": "/srv"},
                {"Type": "bind", "Name": "other", "Source": "/x"},  # not a volume mount
            ],
        },
        {"Id": "2" * 64, "Names": ["/backup"], "Mounts": [{"Type": "volume", "Name": "pgdata"}]},
        {"Id": "3" * 64, "Names": ["/x"], "Mounts": None},
    ]
    users = docker_volumes.volume_users(summaries)
    assert users == {"pgdata": [{"id": "1" * 12, "name": "db"}, {"id": "2" * 12, "name": "backup"}]}
    volume = {
        "Name": "pgdata",
        "Driver": "local",
        "Mountpoint": "/var/lib/docker/volumes/pgdata/_data",
        "CreatedAt": "2026-05-02T13:22:33+02:00",
        "Labels": None,
    }
    assert docker_volumes.volume_element(volume, users) == {
        "name": "pgdata",
        "driver": "local",
        "mountpoint": "/var/lib/docker/volumes/pgdata/_data",
        "created": "2026-05-02T11:22:33Z",
        "containers": [{"id": "1" * 12, "name": "db"}, {"id": "2" * 12, "name": "backup"}],
        "container_count": 2,
        "in_use": True,
    }
    odd = docker_volumes.volume_element({"Name": "other", "CreatedAt": "not a time"}, users)
    assert odd["created"] == "not a time" and odd["containers"] == [] and odd["in_use"] is False
    assert docker_volumes.volume_element({"Name": "x"}, {})["created"] == ""


def test_volume_prune_asks_for_all_volumes_where_the_api_has_the_filter() -> None:
    assert docker_volumes.prune_filters("1.41") is None  # before 1.42 prune removes named ones
    assert docker_volumes.prune_filters("1.42") == {"all": "true"}
    assert docker_volumes.prune_filters("1.47") == {"all": "true"}
    api = FakeApi()
    api.api_version = "1.43"
    reply = docker_volumes.prune_volumes(tools_for(api), PruneVolumes(request_id="r1"))
    assert api.calls == [("prune_volumes", (), {"filters": {"all": "true"}})]
    assert payload_of(reply) == {"removed_count": 0, "space_reclaimed": 0, "volumes_removed": []}
    assert docker_volumes.prune_result({"VolumesDeleted": ["a"], "SpaceReclaimed": 7}) == {
        "removed_count": 1,
        "space_reclaimed": 7,
        "volumes_removed": ["a"],
    }


def test_handlers_turn_docker_errors_into_in_band_failures() -> None:
    class Broken:
        api_version = "1.41"

        def __getattr__(self, name: str) -> Any:
            def fail(*_args: Any, **_kwargs: Any) -> Any:
                raise docker.errors.APIError("boom", explanation="daemon says no")

            return fail

    tools = DockerTools(api=cast(Any, Broken()), docker_host="unix:///fake.sock")
    for msg in (
        ListImages(request_id="r1"),
        RemoveImage(request_id="r1", image_id="x"),
        PruneImages(request_id="r1"),
        ListNetworks(request_id="r1"),
        CreateNetwork(request_id="r1", name="n"),
        DeleteNetwork(request_id="r1", network_id="n"),
        PruneNetworks(request_id="r1"),
        ListVolumes(request_id="r1"),
        DeleteVolume(request_id="r1", volume_name="v"),
        PruneVolumes(request_id="r1"),
    ):
        reply = GATEWAY_HANDLERS[type(msg)](tools, msg)
        assert isinstance(reply, CommandFailed), msg
        assert reply.error.startswith("failed to ") and reply.error.endswith(
            ": Error response from daemon: daemon says no"
        )
        assert reply.error_type == "docker_error"


def test_success_payloads_are_pre_encoded_json() -> None:
    reply = succeeded("r1", {"success": True})
    assert reply == CommandSucceeded(request_id="r1", payload=RawJson('{"success":true}'))
