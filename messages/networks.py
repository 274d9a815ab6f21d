"""Network commands (PROTOCOL §4.3.3): list, create, delete and prune networks."""

from __future__ import annotations

from typing import Any

from messages.decoding import BadPayload, CommandDecoder, boolean, obj, string
from messages.docker import CommandFailed
from messages.records import record
from messages.references import NetworkName, NetworkRef
from messages.roles import Role

NAME_REQUIRED = "network name is required"


@record(kw_only=True)
class ListNetworks:
    request_id: str


@record(kw_only=True)
class CreateNetwork:
    request_id: str
    name: NetworkName
    driver: str = "bridge"  # an empty driver on the wire means bridge
    subnet: str = ""  # "" means no IPAM block
    gateway: str = ""  # only used with a subnet
    internal: bool = False


@record(kw_only=True)
class DeleteNetwork:
    request_id: str
    network_id: NetworkRef  # ID (prefix) or name
    force: bool = False


@record(kw_only=True)
class PruneNetworks:
    request_id: str


def _list_networks(request_id: str, payload: Any) -> ListNetworks:
    obj(payload, "list_networks")
    return ListNetworks(request_id=request_id)


def _create_network(request_id: str, payload: Any) -> CreateNetwork | CommandFailed:
    p = obj(payload, "create_network")
    name = string(p, "name").strip()
    driver = string(p, "driver").strip() or "bridge"
    subnet = string(p, "subnet").strip()
    gateway = string(p, "gateway").strip()
    internal = boolean(p, "internal")
    if not name:  # the Go agent's exact wording, not an "invalid payload" error
        return CommandFailed(request_id=request_id, error=NAME_REQUIRED)
    return CreateNetwork(
        request_id=request_id,
        name=name,
        driver=driver,
        subnet=subnet,
        gateway=gateway,
        internal=internal,
    )


def _delete_network(request_id: str, payload: Any) -> DeleteNetwork:
    p = obj(payload, "delete_network")
    network_id = string(p, "network_id").strip()
    if not network_id:
        raise BadPayload("network_id is required")
    return DeleteNetwork(request_id=request_id, network_id=network_id, force=boolean(p, "force"))


def _prune_networks(request_id: str, payload: Any) -> PruneNetworks:
    obj(payload, "prune_networks")
    return PruneNetworks(request_id=request_id)


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {
    "list_networks": _list_networks,
    "create_network": _create_network,
    "delete_network": _delete_network,
    "prune_networks": _prune_networks,
}
#: top-level frame ``type``s this family decodes (none)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    ListNetworks: Role.DOCKER_GATEWAY,
    CreateNetwork: Role.DOCKER_GATEWAY,
    DeleteNetwork: Role.DOCKER_GATEWAY,
    PruneNetworks: Role.DOCKER_GATEWAY,
}
