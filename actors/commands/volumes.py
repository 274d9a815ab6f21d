"""Volume commands (PROTOCOL §4.3.4), run by DockerGateway on its worker threads."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from docker.utils import version_gte

from actors.commands.networks import container_ref, summary_name
from actors.commands.tools import DockerTools, Handler, succeeded
from messages.docker import Reply
from messages.timefmt import utc_z
from messages.volumes import DeleteVolume, ListVolumes, PruneVolumes

log = logging.getLogger(__name__)


def volume_users(summaries: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Volume name -> the containers (running or not) mounting it (``Mounts`` of type volume)."""
    users: dict[str, list[dict[str, str]]] = {}
    for summary in summaries:
        ref = container_ref(str(summary.get("Id") or ""), summary_name(summary))
        for mount in summary.get("Mounts") or []:
            name = mount.get("Name")
            if mount.get("Type") == "volume" and name:
                refs = users.setdefault(str(name), [])
                if ref not in refs:  # one container may mount a volume twice
                    refs.append(ref)
    return users


def volume_element(
    volume: Mapping[str, Any], users: Mapping[str, list[dict[str, str]]]
) -> dict[str, Any]:
    name = str(volume.get("Name") or "")
    containers = users.get(name, [])
    return {
        "name": name,
        "driver": str(volume.get("Driver") or ""),
        "mountpoint": str(volume.get("Mountpoint") or ""),
        "created": utc_z(str(volume.get("CreatedAt") or "")),
        "containers": containers,
        "container_count": len(containers),
        "in_use": bool(containers),
    }


def prune_filters(api_version: str) -> dict[str, str] | None:
    """``all=true`` prunes named volumes too; API < 1.42 has no such filter (and rejects it)
    because there a prune always removes every unused volume, named ones included."""
    return {"all": "true"} if version_gte(api_version, "1.42") else None


def prune_result(result: Mapping[str, Any] | None) -> dict[str, Any]:
    names = list((result or {}).get("VolumesDeleted") or [])
    return {
        "removed_count": len(names),
        "space_reclaimed": int((result or {}).get("SpaceReclaimed") or 0),
        "volumes_removed": names,
    }


def list_volumes(tools: DockerTools, msg: ListVolumes) -> Reply:
    try:
        volumes = (tools.api.volumes() or {}).get("Volumes") or []
        users = volume_users(tools.api.containers(all=True))
    except Exception as exc:
        return tools.failed(msg.request_id, "list volumes", exc)
    return succeeded(msg.request_id, [volume_element(v, users) for v in volumes])


def delete_volume(tools: DockerTools, msg: DeleteVolume) -> Reply:
    try:
        tools.api.remove_volume(msg.volume_name, force=msg.force)
    except Exception as exc:
        log.info("remove volume %s failed: %s", msg.volume_name, exc)
        return tools.failed(msg.request_id, "remove volume", exc)
    log.info("removed volume %s (force=%s)", msg.volume_name, msg.force)
    return succeeded(msg.request_id, {"success": True})


def prune_volumes(tools: DockerTools, msg: PruneVolumes) -> Reply:
    try:
        result = tools.api.prune_volumes(filters=prune_filters(tools.api.api_version))
    except Exception as exc:
        return tools.failed(msg.request_id, "prune volumes", exc)
    pruned = prune_result(result)
    log.info("pruned %d volumes", pruned["removed_count"])
    return succeeded(msg.request_id, pruned)


HANDLERS: dict[type, Handler] = {
    ListVolumes: list_volumes,
    DeleteVolume: delete_volume,
    PruneVolumes: prune_volumes,
}
