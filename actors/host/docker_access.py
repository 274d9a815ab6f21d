"""Why the agent cannot reach Docker, said so a user can act on it.

``diagnose`` turns a failed connection to the Docker daemon into an :class:`AccessProblem`: what
is wrong (permission denied, no socket, nobody listening, no answer), with the facts that matter
(the socket path, its owner, group and mode, the uid and groups the agent runs with) and the fix
(``--group-add $(stat -c %g <socket>)``, compose ``group_add``, the mount, starting Docker).
An error the daemon itself answered (an API error) is not an access problem: ``None``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

import docker.errors
import requests

from actors.runtime.docker_client import socket_path
from messages.records import record


@record
class AccessProblem:
    """``kind``: permission_denied, missing_socket, not_a_socket, daemon_down, timeout, other."""

    kind: str
    summary: str
    fix: str

    def text(self) -> str:
        return f"{self.summary}. Fix: {self.fix}"


def who_am_i() -> str:
    """``uid 1000, gid 1000, groups 1000,2375``: whom the kernel checks the socket against."""
    groups = ",".join(str(g) for g in sorted(set(os.getgroups()))) or "none"
    return f"uid {os.geteuid()}, gid {os.getegid()}, groups {groups}"


def describe_socket(path: str) -> str:
    """``owner uid 0, group 2375, mode 0660`` (or why it cannot be told)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat it: {exc.strerror}"
    return f"owner uid {st.st_uid}, group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}"


def group_fix(path: str) -> str:
    return (
        f"give the agent the socket's group: docker run --group-add $(stat -c %g {path}) ..., "
        f'or in compose group_add: ["${{DOCKER_GID}}"] with DOCKER_GID=$(stat -c %g {path}) '
        "(stat on the host); or start the image without --user: its entrypoint then adds the "
        "socket's group by itself"
    )


def _errno_of(exc: BaseException) -> int | None:
    """The errno buried in docker-py's and requests' wrapping, if any."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return current.errno
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    text = repr(exc)
    for marker, number in (
        ("Permission denied", errno.EACCES),
        ("No such file or directory", errno.ENOENT),
        ("Connection refused", errno.ECONNREFUSED),
    ):
        if marker in text:
            return number
    return None


def is_access_error(exc: BaseException) -> bool:
    """True when ``exc`` means Docker could not be reached at all (not an API error)."""
    if isinstance(exc, docker.errors.APIError):
        return False
    return isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | docker.errors.DockerException
        | OSError,
    )


def diagnose(
    docker_host: str,
    exc: BaseException,
    *,
    access: Callable[[str, int], bool] = os.access,
) -> AccessProblem | None:
    """What is wrong with reaching Docker at ``docker_host``, or None if the daemon answered."""
    if not is_access_error(exc):
        return None
    where = f"Docker at {docker_host}"
    if isinstance(exc, requests.exceptions.Timeout):
        return AccessProblem(
            "timeout",
            f"cannot reach {where}: the daemon did not answer in time",
            "check that dockerd is healthy (docker info on the host)",
        )
    path = socket_path(docker_host)
    code = _errno_of(exc)
    if path is None:
        return AccessProblem(
            "other",
            f"cannot reach {where}: {exc}",
            "check DOCKER_HOST and that the daemon listens there",
        )
    if not os.path.lexists(path):
        return AccessProblem(
            "missing_socket",
            f"cannot reach {where}: the socket {path} does not exist (the agent runs as "
            f"{who_am_i()})",
            f"mount the host's socket there: docker run -v /var/run/docker.sock:{path} ... "
            f"(compose volumes: - /var/run/docker.sock:{path}), or set DOCKER_HOST to the "
            "daemon's socket",
        )
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = True  # cannot tell (a parent directory we may not enter): judge by errno
    if not is_socket:
        return AccessProblem(
            "not_a_socket",
            f"cannot reach {where}: {path} is not a socket ({describe_socket(path)}; the agent "
            f"runs as {who_am_i()}); a bind mount of a host path that did not exist creates an "
            "empty directory",
            "mount the host's real Docker socket there, or set DOCKER_HOST",
        )
    if code == errno.EACCES or not access(path, os.R_OK | os.W_OK):
        return AccessProblem(
            "permission_denied",
            f"cannot reach {where}: permission denied on the socket {path} (socket: "
            f"{describe_socket(path)}; the agent runs as {who_am_i()})",
            group_fix(path),
        )
    if code == errno.ECONNREFUSED:
        return AccessProblem(
            "daemon_down",
            f"cannot reach {where}: nothing answers on {path} (connection refused; the agent "
            f"runs as {who_am_i()}): the Docker daemon is not running, or it was restarted after "
            "the agent started and the socket mounted into the agent's container is stale",
            "start Docker (systemctl start docker), then restart the agent",
        )
    return AccessProblem(
        "other",
        f"cannot reach {where}: {exc} (socket: {describe_socket(path)}; the agent runs as "
        f"{who_am_i()})",
        "check that the Docker daemon is running and that the agent can use its socket",
    )
