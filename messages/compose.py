"""Compose files protocol: ``scan_compose_dirs`` and ``read_compose_file`` (PROTOCOL §8.2, §8.3).

``deploy_compose`` (§8.1) is its own protocol: see ``messages/deploy.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from messages.decoding import BadPayload, CommandDecoder, boolean, obj, string
from messages.records import record
from messages.roles import Role

#: max_depth when the payload gives none, 0 or a negative number (§8.2)
DEFAULT_MAX_DEPTH = 5
#: extra paths one scan_compose_dirs may ask for (each is walked: the work per request is bounded)
MAX_SCAN_PATHS = 256


@record(kw_only=True)
class ScanComposeDirs:
    request_id: str
    #: extra paths requested by the backend, in order, duplicates removed
    paths: tuple[str, ...] = ()
    recursive: bool = False
    max_depth: int = DEFAULT_MAX_DEPTH


@record(kw_only=True)
class ReadComposeFile:
    request_id: str
    path: str


def _max_depth(payload: Mapping[str, Any]) -> int:
    value = payload.get("max_depth")
    if value is None:
        return DEFAULT_MAX_DEPTH
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadPayload(f"max_depth must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise BadPayload(f"max_depth must be a whole number, got {value}")
    depth = int(value)
    return depth if depth > 0 else DEFAULT_MAX_DEPTH


def _paths(payload: Mapping[str, Any]) -> tuple[str, ...]:
    value = payload.get("paths")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadPayload(f"paths must be a list of strings or null, got {type(value).__name__}")
    if len(value) > MAX_SCAN_PATHS:
        raise BadPayload(f"{len(value)} paths given, at most {MAX_SCAN_PATHS} allowed")
    for item in value:
        if not isinstance(item, str):
            raise BadPayload(f"paths must contain only strings, got {type(item).__name__}")
    return tuple(dict.fromkeys(item for item in value if item.strip()))  # in order, once each


def _scan_compose_dirs(request_id: str, payload: Any) -> ScanComposeDirs:
    p = obj(payload, "scan_compose_dirs")
    return ScanComposeDirs(
        request_id=request_id,
        paths=_paths(p),
        recursive=boolean(p, "recursive"),
        max_depth=_max_depth(p),
    )


def _read_compose_file(request_id: str, payload: Any) -> ReadComposeFile:
    p = obj(payload, "read_compose_file")
    return ReadComposeFile(
        request_id=request_id, path=string(p, "path", required="path is required")
    )


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {
    "scan_compose_dirs": _scan_compose_dirs,
    "read_compose_file": _read_compose_file,
}
#: top-level frame ``type``s this family decodes (frame -> typed message or None to ignore)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    ScanComposeDirs: Role.DOCKER_GATEWAY,
    ReadComposeFile: Role.DOCKER_GATEWAY,
}
