"""Volume commands (PROTOCOL §4.3.4): ``list_volumes``, ``delete_volume``, ``prune_volumes``."""

from __future__ import annotations

from typing import Any

from messages.decoding import CommandDecoder, boolean, obj, string
from messages.docker import CommandFailed
from messages.records import record
from messages.references import VolumeRef
from messages.roles import Role

NAME_EMPTY = "volume name cannot be empty"


@record(kw_only=True)
class ListVolumes:
    request_id: str


@record(kw_only=True)
class DeleteVolume:
    request_id: str
    volume_name: VolumeRef
    force: bool = False


@record(kw_only=True)
class PruneVolumes:
    request_id: str


def _list_volumes(request_id: str, payload: Any) -> ListVolumes:
    obj(payload, "list_volumes")
    return ListVolumes(request_id=request_id)


def _delete_volume(request_id: str, payload: Any) -> DeleteVolume | CommandFailed:
    p = obj(payload, "delete_volume")
    name = string(p, "volume_name").strip()
    force = boolean(p, "force")
    if not name:  # the Go agent's exact wording, not an "invalid payload" error
        return CommandFailed(request_id=request_id, error=NAME_EMPTY)
    return DeleteVolume(request_id=request_id, volume_name=name, force=force)


def _prune_volumes(request_id: str, payload: Any) -> PruneVolumes:
    obj(payload, "prune_volumes")
    return PruneVolumes(request_id=request_id)


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {
    "list_volumes": _list_volumes,
    "delete_volume": _delete_volume,
    "prune_volumes": _prune_volumes,
}
#: top-level frame ``type``s this family decodes (none)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    ListVolumes: Role.DOCKER_GATEWAY,
    DeleteVolume: Role.DOCKER_GATEWAY,
    PruneVolumes: Role.DOCKER_GATEWAY,
}
