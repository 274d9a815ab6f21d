"""Updater protocol: ``update_container`` (PROTOCOL §6) and ``self_update`` (§7)."""

from __future__ import annotations

from typing import Any

from messages.common import Secret
from messages.decoding import BadPayload, CommandDecoder, number, obj, string
from messages.records import record
from messages.references import ContainerRef, ImageRef, OptionalImageRef
from messages.roles import Role


@record(kw_only=True)
class RegistryAuth:
    username: str
    password: Secret


@record(kw_only=True)
class UpdateContainer:
    request_id: str
    container_id: ContainerRef
    new_image: ImageRef
    stop_timeout: int = 30  # missing or 0 means 30
    health_timeout: int = 120  # missing or 0 means 120
    registry_auth: RegistryAuth | None = None


@record(kw_only=True)
class SelfUpdate:
    request_id: str
    #: what the backend asked for (always the Go agent's image: ignored, see §7.2)
    image: OptionalImageRef
    version: str


@record(kw_only=True)
class FlowFinished:
    """Updater-internal: the detached flow ``flow_id`` ended (successfully or not)."""

    flow_id: str


def _registry_auth(value: Any) -> RegistryAuth | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadPayload("registry_auth must be an object or null")
    username = string(value, "username")
    if not username:
        return None
    return RegistryAuth(username=username, password=Secret(string(value, "password")))


def _update_container(request_id: str, payload: Any) -> UpdateContainer:
    p = obj(payload, "update_container")
    return UpdateContainer(
        request_id=request_id,
        container_id=string(p, "container_id", required="container_id is required").strip(),
        new_image=string(p, "new_image", required="new_image is required").strip(),
        stop_timeout=number(p, "stop_timeout", 30) or 30,
        health_timeout=number(p, "health_timeout", 120) or 120,
        registry_auth=_registry_auth(p.get("registry_auth")),
    )


def _self_update(request_id: str, payload: Any) -> SelfUpdate:
    p = obj(payload, "self_update")
    return SelfUpdate(request_id=request_id, image=string(p, "image"), version=string(p, "version"))


GENERIC_DECODERS: dict[str, CommandDecoder] = {
    "update_container": _update_container,
    "self_update": _self_update,
}
FRAME_DECODERS: dict[str, Any] = {}
ROUTES: dict[type, Role] = {UpdateContainer: Role.UPDATER, SelfUpdate: Role.UPDATER}
