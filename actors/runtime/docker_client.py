"""The one place Docker clients are built: every actor's docker-py client and the raw API path.

``DOCKER_API_VERSION`` (PROTOCOL §10) pins the API version every client speaks, as Docker's own
env-based clients do; unset, docker-py negotiates it with the daemon (``version="auto"``).
"""

from __future__ import annotations

import re

import docker

#: docker-py refuses anything older
MINIMUM_API_VERSION = (1, 24)
_VERSION = re.compile(r"(\d+)\.(\d+)")


def api_version_problem(text: str) -> str | None:
    """Why ``text`` is not a usable DOCKER_API_VERSION, or None."""
    match = _VERSION.fullmatch(text)
    if match is None:
        return f"invalid API version {text!r} (use MAJOR.MINOR, e.g. 1.41)"
    if (int(match[1]), int(match[2])) < MINIMUM_API_VERSION:
        low = ".".join(map(str, MINIMUM_API_VERSION))
        return f"API version {text} is older than {low}, the oldest this agent can speak"
    return None


def api_client(
    docker_host: str, *, timeout: float, api_version: str | None = None
) -> docker.APIClient:
    """A docker-py low-level client for ``docker_host`` speaking ``api_version`` (or auto)."""
    return docker.APIClient(
        base_url=docker_host, version=api_version or "auto", timeout=max(1, int(timeout))
    )


def api_path(path: str, api_version: str | None = None) -> str:
    """``/containers/json`` as the raw HTTP path for ``api_version`` (``/v1.41/containers/json``).

    Unversioned without a pinned version: the daemon then answers with its own API version.
    """
    return f"/v{api_version}{path}" if api_version else path
