"""Network commands (PROTOCOL §4.3.3), run by DockerGateway on its worker threads.

The shaping helpers (``container_ref``, ``network_element``) are pure and shared with the image
and volume families; times are shaped by :mod:`messages.timefmt`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import docker.errors
import docker.types

from actors.commands.tools import DockerTools, Handler, succeeded
from messages.docker import CommandFailed, Reply
from messages.networks import CreateNetwork, DeleteNetwork, ListNetworks, PruneNetworks
from messages.references import short_id
from messages.timefmt import utc_z

log = logging.getLogger(__name__)

BUILTIN_NETWORKS = frozenset({"bridge", "host", "none"})


def container_ref(container_id: str, name: str) -> dict[str, str]:
    return {"id": short_id(container_id), "name": name.lstrip("/")}


def summary_name(summary: Mapping[str, Any]) -> str:
    """A container summary's first name without the leading ``/`` (``""`` if it has none)."""
    names = summary.get("Names") or []
    return str(names[0]).lstrip("/") if names else ""


def network_element(net: Mapping[str, Any]) -> dict[str, Any]:
    """One ``list_networks`` element from a network inspect object."""
    name = str(net.get("Name") or "")
    ipam_configs = (net.get("IPAM") or {}).get("Config") or []
    subnet = str(ipam_configs[0].get("Subnet") or "") if ipam_configs else ""
    attached: Mapping[str, Any] = net.get("Containers") or {}
    containers = [
        container_ref(cid, str((info or {}).get("Name") or "")) for cid, info in attached.items()
    ]
    return {
        "id": short_id(str(net.get("Id") or "")),
        "name": name,
        "driver": str(net.get("Driver") or ""),
        "scope": str(net.get("Scope") or ""),
        "created": utc_z(str(net.get("Created") or "")),
        "internal": bool(net.get("Internal")),
        "subnet": subnet,
        "containers": containers,
        "container_count": len(containers),
        "is_builtin": name in BUILTIN_NETWORKS,
    }


def connected_error(count: int) -> str:
    return f"network has {count} connected container(s), use force to disconnect and delete"


def prune_result(deleted: Iterable[str] | None) -> dict[str, Any]:
    names = list(deleted or [])
    return {"removed_count": len(names), "networks_removed": names}


def list_networks(tools: DockerTools, msg: ListNetworks) -> Reply:
    try:
        elements = []
        for summary in tools.api.networks():
            try:  # the list has no containers: inspect each network for them
                net = tools.api.inspect_network(summary["Id"])
            except docker.errors.NotFound:
                continue  # removed between list and inspect
            elements.append(network_element(net))
    except Exception as exc:
        return tools.failed(msg.request_id, "list networks", exc)
    return succeeded(msg.request_id, elements)


def create_network(tools: DockerTools, msg: CreateNetwork) -> Reply:
    ipam = None
    if msg.subnet:
        pool = docker.types.IPAMPool(subnet=msg.subnet, gateway=msg.gateway or None)
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
    try:
        # CheckDuplicate: daemons before API 1.44 otherwise accept a second network with the
        # same name; newer ones always refuse ("network with name x already exists").
        created = tools.api.create_network(
            msg.name, driver=msg.driver, ipam=ipam, internal=msg.internal, check_duplicate=True
        )
        net = tools.api.inspect_network(created["Id"])
    except Exception as exc:
        log.info("create network %s failed: %s", msg.name, exc)
        return tools.failed(msg.request_id, "create network", exc)
    log.info("created network %s (%s)", msg.name, short_id(created["Id"]))
    return succeeded(msg.request_id, network_element(net))


def delete_network(tools: DockerTools, msg: DeleteNetwork) -> Reply:
    if tools.resolved is not None:  # the network the guard inspected and checked
        net = tools.resolved.detail
    else:
        try:
            net = tools.api.inspect_network(msg.network_id)
        except Exception as exc:
            return tools.failed(msg.request_id, "inspect network", exc)
    name = str(net.get("Name") or "")
    if name in BUILTIN_NETWORKS:
        return CommandFailed(
            request_id=msg.request_id, error=f"cannot delete built-in network '{name}'"
        )
    attached = list((net.get("Containers") or {}).keys())
    if attached and not msg.force:
        return CommandFailed(request_id=msg.request_id, error=connected_error(len(attached)))
    for container_id in attached:
        try:
            tools.api.disconnect_container_from_network(container_id, net["Id"], force=True)
        except Exception as exc:
            return tools.failed(
                msg.request_id, f"disconnect container {short_id(container_id)}", exc
            )
    try:
        tools.api.remove_network(net["Id"])
    except Exception as exc:
        return tools.failed(msg.request_id, "delete network", exc)
    log.info("deleted network %s (%s)", name, short_id(str(net.get("Id") or "")))
    return succeeded(msg.request_id, {"success": True})


def prune_networks(tools: DockerTools, msg: PruneNetworks) -> Reply:
    try:
        result = tools.api.prune_networks()
    except Exception as exc:
        return tools.failed(msg.request_id, "prune networks", exc)
    return succeeded(msg.request_id, prune_result((result or {}).get("NetworksDeleted")))


HANDLERS: dict[type, Handler] = {
    ListNetworks: list_networks,
    CreateNetwork: create_network,
    DeleteNetwork: delete_network,
    PruneNetworks: prune_networks,
}
