"""The one registry of command families: what the wire decodes and which role runs it.

Each family module (``messages/<family>.py``) declares its ``GENERIC_DECODERS`` (``command``
names), ``FRAME_DECODERS`` (top-level frame ``type``s) and ``ROUTES`` (command type -> the
:class:`~messages.roles.Role` that runs it). :data:`FAMILIES` lists them once; the codec
(``messages.wire``) and the Connection's routing read the merged tables below, so adding a family
is one module plus one line here. A name or a type claimed twice fails at import.

The container family (``container_operation`` frames and ``list_containers``) is built in: its
frames have their own shape (PROTOCOL §3), decoded by ``messages.wire``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from messages import compose, deploy, health, images, networks, shell, stats, updates, volumes
from messages.decoding import CommandDecoder
from messages.docker import (
    GetContainerLogs,
    InspectContainer,
    KillContainer,
    ListContainers,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.roles import Role

#: the command families, each a module with GENERIC_DECODERS, FRAME_DECODERS and ROUTES
FAMILIES: tuple[ModuleType, ...] = (
    images,
    networks,
    volumes,
    compose,
    deploy,
    updates,
    shell,
    health,
    stats,
)

#: a top-level frame decoder: frame -> typed command, or None to ignore it as malformed
FrameDecoder = Callable[[Mapping[str, Any]], Any]

#: the built-in container family's commands, all run by the DockerGateway
CONTAINER_COMMANDS: tuple[type, ...] = (
    ListContainers,
    StartContainer,
    StopContainer,
    RestartContainer,
    RemoveContainer,
    KillContainer,
    RenameContainer,
    GetContainerLogs,
    InspectContainer,
)


def _list_containers(request_id: str, _payload: Any) -> ListContainers:
    return ListContainers(request_id=request_id)


K = TypeVar("K")
V = TypeVar("V")


def _merged(what: str, tables: Iterable[tuple[str, Mapping[K, V]]]) -> dict[K, V]:
    """One table from many; a key two families claim is a bug, found at import."""
    merged: dict[K, V] = {}
    owner: dict[K, str] = {}
    for family, table in tables:
        for key, value in table.items():
            if key in merged:
                raise ImportError(f"{what} {key!r} is claimed by {owner[key]} and {family}")
            merged[key] = value
            owner[key] = family
    return merged


def _tables(attribute: str) -> list[tuple[str, Mapping[Any, Any]]]:
    return [(family.__name__, getattr(family, attribute)) for family in FAMILIES]


#: generic commands this agent implements; everything else is ``unknown command: <name>``
GENERIC_DECODERS: dict[str, CommandDecoder] = _merged(
    "command",
    [("containers", {"list_containers": _list_containers}), *_tables("GENERIC_DECODERS")],
)
#: top-level frame types beyond auth, command and container_operation
FRAME_DECODERS: dict[str, FrameDecoder] = _merged("frame type", _tables("FRAME_DECODERS"))
#: which role runs each inbound command type (the one routing table)
ROUTES: dict[type, Role] = _merged(
    "command type",
    [
        ("containers", {kind: Role.DOCKER_GATEWAY for kind in CONTAINER_COMMANDS}),
        *_tables("ROUTES"),
    ],
)
