"""The agent's actors. ``FAMILIES`` lists the command-family modules DockerGateway serves."""

from __future__ import annotations

from types import ModuleType

from actors import compose_files, docker_images, docker_networks, docker_volumes

FAMILIES: tuple[ModuleType, ...] = (docker_images, docker_networks, docker_volumes, compose_files)
