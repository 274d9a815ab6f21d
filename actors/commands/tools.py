"""What DockerGateway hands to command handlers: a Docker client and Docker-worded errors.

Command families (images, networks, volumes, compose files, ...) live in their own modules and
export ``HANDLERS: dict[type, Handler]``; the gateway runs each handler on a worker thread with
that worker's own client and tells the returned reply to the Connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests

from actors.rules.policy import Resolved
from messages.common import RawJson
from messages.docker import CommandFailed, CommandSucceeded, Reply
from messages.records import record


@record(kw_only=True)
class HandlerSettings:
    """Agent settings some handlers need (e.g. compose files: where they may look)."""

    #: the compose stacks directory (AGENT_STACKS_DIR); always an allowed compose root by default
    stacks_dir: str | None = None
    #: COMPOSE_ROOTS: when set, exactly these directories are allowed for scan/read
    compose_roots: tuple[str, ...] | None = None


@record
class DockerTools:
    api: docker.APIClient
    docker_host: str
    settings: HandlerSettings = HandlerSettings()
    #: what the gateway's guard resolved and checked for this command (actors/rules/policy.py
    #: ``CHANGES``): a handler acts on exactly that, never on the command's references again
    resolved: Resolved | None = None

    def failed(self, request_id: str, what: str, exc: BaseException) -> CommandFailed:
        """``failed to <what>: <Docker's wording>`` as a generic command failure."""
        error, error_type = describe_docker_error(what, exc, self.docker_host)
        return CommandFailed(request_id=request_id, error=error, error_type=error_type)


def succeeded(request_id: str, result: Any) -> CommandSucceeded:
    """A generic command's result, encoded once here."""
    return CommandSucceeded(request_id=request_id, payload=RawJson.of(result))


#: runs on a gateway worker thread; must return a reply (and may raise nothing it can map)
Handler = Callable[[DockerTools, Any], Reply]
#: ordering key: commands with the same key run one at a time (None: no ordering)
KeyOf = Callable[[Any], str | None]


def describe_docker_error(what: str, exc: BaseException, docker_host: str) -> tuple[str, str]:
    """Docker's own wording (the backend matches substrings of it), plus an ``error_type``."""
    if isinstance(exc, docker.errors.APIError):
        explanation = exc.explanation or str(exc)
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", "replace")
        return f"failed to {what}: Error response from daemon: {explanation}", "docker_error"
    text = repr(exc)
    if "Permission denied" in text or "PermissionError" in text:
        return (
            f"failed to {what}: permission denied while trying to connect to the Docker daemon "
            f"socket at {docker_host} (add the agent's user to the socket's group)",
            "permission_denied",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return f"failed to {what}: timed out waiting for the Docker daemon", "docker_error"
    if isinstance(exc, requests.exceptions.ConnectionError | docker.errors.DockerException):
        return (
            f"failed to {what}: Cannot connect to the Docker daemon at {docker_host}. "
            "Is the docker daemon running?",
            "docker_error",
        )
    return f"failed to {what}: {exc}", "docker_error"
