"""Image commands (PROTOCOL §4.3.2): ``list_images``, ``remove_image``, ``prune_images``."""

from __future__ import annotations

from typing import Any

from messages.decoding import BadPayload, CommandDecoder, boolean, obj, string
from messages.records import record
from messages.references import ImageRef
from messages.roles import Role


@record(kw_only=True)
class ListImages:
    request_id: str


@record(kw_only=True)
class RemoveImage:
    request_id: str
    image_id: ImageRef  # an ID (any unique prefix) or a reference such as ``nginx:1.27``
    force: bool = False


@record(kw_only=True)
class PruneImages:
    request_id: str


def _list_images(request_id: str, payload: Any) -> ListImages:
    obj(payload, "list_images")
    return ListImages(request_id=request_id)


def _remove_image(request_id: str, payload: Any) -> RemoveImage:
    p = obj(payload, "remove_image")
    image_id = string(p, "image_id").strip()
    if not image_id:
        raise BadPayload("image_id is required")
    return RemoveImage(request_id=request_id, image_id=image_id, force=boolean(p, "force"))


def _prune_images(request_id: str, payload: Any) -> PruneImages:
    obj(payload, "prune_images")
    return PruneImages(request_id=request_id)


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {
    "list_images": _list_images,
    "remove_image": _remove_image,
    "prune_images": _prune_images,
}
#: top-level frame ``type``s this family decodes (none)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    ListImages: Role.DOCKER_GATEWAY,
    RemoveImage: Role.DOCKER_GATEWAY,
    PruneImages: Role.DOCKER_GATEWAY,
}
