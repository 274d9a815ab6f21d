"""docker_networks command handlers, run by DockerGateway on its worker threads."""

from __future__ import annotations

from actors.docker_tools import Handler

HANDLERS: dict[type, Handler] = {}
