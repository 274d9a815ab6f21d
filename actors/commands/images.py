"""Image commands (PROTOCOL §4.3.2), run by DockerGateway on its worker threads."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from actors.commands.networks import container_ref, summary_name
from actors.commands.tools import DockerTools, Handler, succeeded
from messages.docker import Reply
from messages.images import ListImages, PruneImages, RemoveImage
from messages.references import short_id
from messages.timefmt import utc_seconds

log = logging.getLogger(__name__)

#: how long prune may take: the backend waits 120 s, far longer than the client's default
PRUNE_TIMEOUT_S = 115

_NO_TAG = "<none>:<none>"


def real_tags(image: Mapping[str, Any]) -> list[str]:
    """RepoTags without Docker's ``<none>:<none>`` placeholder (older daemons send it)."""
    return [t for t in image.get("RepoTags") or [] if t != _NO_TAG]


def image_element(
    image: Mapping[str, Any],
    users: Mapping[str, list[dict[str, str]]],
    parents: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One ``list_images`` element; ``users`` maps a full image ID to its containers and
    ``parents`` holds the IDs of images that have children (intermediate layers)."""
    image_id = str(image.get("Id") or "")
    tags = real_tags(image)
    containers = users.get(image_id, [])
    return {
        "id": short_id(image_id),
        "tags": tags,
        "size": int(image.get("Size") or 0),
        "created": utc_seconds(int(image.get("Created") or 0) * 1_000_000_000),
        "in_use": bool(containers),
        "container_count": len(containers),
        "containers": containers,
        # Docker's own definition (what ``dangling=true`` lists and a plain prune removes):
        # no tag (digests don't count) and not the parent of another image
        "dangling": not tags and image_id not in parents,
    }


def image_users(summaries: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Full image ID -> the containers (running or not) created from it."""
    users: dict[str, list[dict[str, str]]] = {}
    for summary in summaries:
        image_id = str(summary.get("ImageID") or "")
        if image_id:
            users.setdefault(image_id, []).append(
                container_ref(str(summary.get("Id") or ""), summary_name(summary))
            )
    return users


def prune_result(result: Mapping[str, Any] | None) -> dict[str, int]:
    entries = (result or {}).get("ImagesDeleted") or []
    return {
        "removed_count": sum(1 for e in entries if (e or {}).get("Deleted")),
        "space_reclaimed": int((result or {}).get("SpaceReclaimed") or 0),
    }


def list_images(tools: DockerTools, msg: ListImages) -> Reply:
    try:
        images = tools.api.images(all=True)
        users = image_users(tools.api.containers(all=True))
    except Exception as exc:
        return tools.failed(msg.request_id, "list images", exc)
    parents = frozenset(str(i.get("ParentId") or "") for i in images) - {""}
    return succeeded(msg.request_id, [image_element(image, users, parents) for image in images])


def remove_image(tools: DockerTools, msg: RemoveImage) -> Reply:
    # By the reference as sent: removing one tag only untags, removing by id would drop every
    # tag. With force the gateway's guard first checked which containers use that image.
    try:  # noprune=False: untagged parents go too
        tools.api.remove_image(msg.image_id, force=msg.force, noprune=False)
    except Exception as exc:
        log.info("remove image %s failed: %s", msg.image_id, exc)
        return tools.failed(msg.request_id, "remove image", exc)
    log.info("removed image %s (force=%s)", msg.image_id, msg.force)
    return succeeded(msg.request_id, {"success": True})


def prune_images(tools: DockerTools, msg: PruneImages) -> Reply:
    api = cast(Any, tools.api)
    try:
        # api.prune_images() with the client's default timeout (60 s) gives up on big hosts
        params = {"filters": '{"dangling":["false"]}'}
        response = api._post(api._url("/images/prune"), params=params, timeout=PRUNE_TIMEOUT_S)
        result = api._result(response, True)
    except Exception as exc:
        return tools.failed(msg.request_id, "prune images", exc)
    pruned = prune_result(result)
    log.info("pruned %d images", pruned["removed_count"])
    return succeeded(msg.request_id, pruned)


HANDLERS: dict[type, Handler] = {
    ListImages: list_images,
    RemoveImage: remove_image,
    PruneImages: prune_images,
}
