"""The agent's actors. ``FAMILIES`` lists the command-family modules DockerGateway serves."""

from __future__ import annotations

from types import ModuleType

from actors.commands import compose_files
from actors.commands import images as docker_images
from actors.commands import networks as docker_networks
from actors.commands import volumes as docker_volumes

FAMILIES: tuple[ModuleType, ...] = (docker_images, docker_networks, docker_volumes, compose_files)
