"""The one place Docker clients are built: every actor's docker-py client and the raw API path.

* :func:`client_factory` / :func:`api_client`: a docker-py low-level client. Every actor that
  calls Docker (gateway, event streamer, shell, updater, deployer) and the doctor gets its
  client here, each on its own thread (docker-py promises no thread safety). On a unix socket
  it keeps one connection pool for the socket, not one per URL (:mod:`.docker_pools`).
* :func:`dial` and :func:`api_path`: the stats streams' raw HTTP (one selector, many
  non-blocking sockets) over the same ``DOCKER_HOST``.
* :func:`socket_path`: the socket file of a ``unix://`` host, for the access diagnosis.

``DOCKER_API_VERSION`` (PROTOCOL §10) pins the API version every client speaks, as Docker's own
env-based clients do; unset, docker-py negotiates it with the daemon (``version="auto"``) and
raw paths go unversioned (the daemon answers with its own API version).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # docker-py and socket load when a client or a stream is made, not before:
    import socket  # ``dockmon-agent healthcheck`` reads the configuration and needs neither

    import docker

#: docker-py refuses anything older
MINIMUM_API_VERSION = (1, 24)
_VERSION = re.compile(r"(\d+)\.(\d+)")

ClientFactory = Callable[[], "docker.APIClient"]


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
    from actors.runtime.docker_pools import SocketPooledClient  # docker-py: only when needed

    return SocketPooledClient(
        base_url=docker_host, version=api_version or "auto", timeout=max(1, int(timeout))
    )


def client_factory(
    docker_host: str, *, timeout: float, api_version: str | None = None
) -> ClientFactory:
    """What an actor calls (on the thread that will use it) for each client it needs."""
    return lambda: api_client(docker_host, timeout=timeout, api_version=api_version)


def api_path(path: str, api_version: str | None = None) -> str:
    """``/containers/json`` as the raw HTTP path for ``api_version`` (``/v1.41/containers/json``).

    Unversioned without a pinned version: the daemon then answers with its own API version.
    """
    return f"/v{api_version}{path}" if api_version else path


def socket_path(docker_host: str) -> str | None:
    """The filesystem path of a ``unix://`` DOCKER_HOST, else None."""
    parts = urlsplit(docker_host)
    return parts.path or None if parts.scheme == "unix" else None


#: where a raw connection goes: ("unix", socket path) | ("tcp", (host, port))
Address = tuple[str, Any]


def daemon_address(docker_host: str) -> Address | None:
    """Where a raw connection to ``docker_host`` goes: its socket file (``unix://``) or host and
    port (plain ``tcp://`` or ``http://``); None for any other scheme (TLS, ssh)."""
    path = socket_path(docker_host)
    if path is not None:
        return ("unix", path)
    parts = urlsplit(docker_host)
    if parts.scheme in ("tcp", "http"):
        return ("tcp", (parts.hostname or "localhost", parts.port or 2375))
    return None


def dial(docker_host: str) -> socket.socket:
    """A non-blocking socket connecting to the daemon (``unix://`` or plain ``tcp://``) for one
    HTTP request. The connection may still be under way: once the socket is writable,
    ``SO_ERROR`` tells whether it was made. A host name is resolved here, blocking."""
    import errno
    import os
    import socket

    found = daemon_address(docker_host)
    if found is None:
        scheme = urlsplit(docker_host).scheme
        raise ValueError(f"unsupported DOCKER_HOST scheme for stats: {scheme}")
    kind, address = found
    family = socket.AF_UNIX
    if kind == "tcp":
        host, port = address
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error not in (0, errno.EINPROGRESS, errno.EAGAIN):
        sock.close()
        raise OSError(error, os.strerror(error))
    return sock
