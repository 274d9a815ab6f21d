"""The agent's actors. ``FAMILIES`` lists the command-family modules DockerGateway serves."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def __getattr__(name: str) -> Any:
    """``FAMILIES`` loads the families (and docker-py) on first use, not with the package:
    ``dockmon-agent healthcheck`` imports ``actors.*`` helpers and must not pay for Docker."""
    if name != "FAMILIES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from actors.commands import compose_files
    from actors.commands import images as docker_images
    from actors.commands import networks as docker_networks
    from actors.commands import volumes as docker_volumes

    families: tuple[ModuleType, ...] = (
        docker_images,
        docker_networks,
        docker_volumes,
        compose_files,
    )
    globals()["FAMILIES"] = families
    return families
