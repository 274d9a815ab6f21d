"""Every Docker client the agent builds comes from actors/runtime/docker_client.py.

Unit tests of the one module (no daemon: a pinned API version makes docker-py build a client
without asking one, and the raw connection is opened to local servers), the clients' connection
pooling against the real daemon, and a check of the source that nothing else in the agent builds
a client or dials the daemon itself.
"""

from __future__ import annotations

import os
import re
import select
import socket
import stat
from pathlib import Path

import docker.errors
import pytest

from actors.runtime.docker_client import (
    api_client,
    api_path,
    api_version_problem,
    client_factory,
    dial,
    socket_path,
)
from tests.support.daemon import PrivateDockerd
from tests.support.hostenv import REPO_ROOT
from tests.support.sources import lines_matching


def test_socket_path_of_unix_hosts_only() -> None:
    assert socket_path("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert socket_path("unix:///run/user/1000/docker.sock") == "/run/user/1000/docker.sock"
    assert socket_path("tcp://127.0.0.1:2375") is None
    assert socket_path("unix://") is None


def test_api_path_and_version_rules() -> None:
    assert api_path("/containers/json", "1.41") == "/v1.41/containers/json"
    assert api_path("/containers/json") == "/containers/json"
    assert api_version_problem("1.41") is None
    assert "older than 1.24" in str(api_version_problem("1.23"))
    assert "MAJOR.MINOR" in str(api_version_problem("v1"))


def test_client_factory_builds_a_fresh_client_per_call_with_the_pinned_version() -> None:
    make = client_factory("unix:///nowhere.sock", timeout=0.2, api_version="1.40")
    first, second = make(), make()
    try:
        assert first is not second  # one per thread that asks: docker-py is not thread safe
        assert first.api_version == "1.40" and first.timeout == 1  # at least 1 s
        assert first.base_url == "http+docker://localhost"
    finally:
        first.close()
        second.close()


def _open_sockets() -> int:
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if _is_socket(f"/proc/self/fd/{fd}"))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:  # closed meanwhile (the listing's own descriptor)
        return False


def test_a_client_keeps_one_pool_and_connection_for_the_socket_whatever_the_urls(
    dockerd: PrivateDockerd,
) -> None:
    """docker-py keys its unix pools by the whole URL: 40 distinct calls (a query each) made it
    keep 25 pools with a socket each. The agent's clients keep one pool, whose connection every
    call reuses."""
    client = api_client(dockerd.base_url, timeout=10)
    try:
        client.ping()
        before = _open_sockets()
        for limit in range(1, 41):  # 40 distinct URLs: /containers/json?limit=N&all=1
            client.containers(all=True, limit=limit)
        adapter = client.adapters["http+docker://"]
        assert len(adapter.pools) == 1  # type: ignore[attr-defined]
        assert _open_sockets() <= before  # the ping's connection, reused by all 40
    finally:
        client.close()


def test_a_unix_socket_client_reads_no_proxy_settings_or_netrc_per_call(
    dockerd: PrivateDockerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests looks up the proxy variables and ~/.netrc on every call of a session that trusts
    the environment (0.2-0.3 ms a call); no proxy or netrc entry applies to a unix socket."""
    import requests.sessions

    def looked_up(*args: object, **kwargs: object) -> None:
        raise AssertionError("the environment was consulted for a unix socket call")

    monkeypatch.setattr(requests.sessions, "get_netrc_auth", looked_up)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", looked_up)
    client = api_client(dockerd.base_url, timeout=10)
    try:
        assert client.ping() is True
        assert isinstance(client.containers(all=True), list)
    finally:
        client.close()


def test_a_client_asking_a_missing_daemon_for_its_version_says_so_as_docker_py_does(
    tmp_path: Path,
) -> None:
    with pytest.raises(docker.errors.DockerException, match=r"^Error while fetching server API"):
        api_client(f"unix://{tmp_path}/missing.sock", timeout=1)


def test_a_tcp_client_keeps_the_proxy_settings_of_its_environment() -> None:
    client = api_client("tcp://127.0.0.1:2375", timeout=1, api_version="1.41")
    try:
        assert client.trust_env is True  # HTTP(S)_PROXY and NO_PROXY apply to a remote daemon
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_dial_reaches_a_unix_or_tcp_daemon_without_blocking(tmp_path: Path, kind: str) -> None:
    if kind == "unix":
        path = str(tmp_path / "d.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        host = f"unix://{path}"
    else:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        host = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.listen()
    with server, dial(host) as sock:
        assert not sock.getblocking()
        _, writable, _ = select.select([], [sock], [], 5)
        assert writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        sock.send(b"GET /_ping HTTP/1.1\r\n")
        peer, _ = server.accept()
        with peer:
            assert peer.recv(100) == b"GET /_ping HTTP/1.1\r\n"


def test_dial_says_why_it_cannot_connect(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        dial(f"unix://{tmp_path}/missing.sock")
    with pytest.raises(ValueError, match="unsupported DOCKER_HOST scheme for stats: ssh"):
        dial("ssh://user@host")


#: building a docker-py client, or dialing the daemon's socket, anywhere but the one module
_BUILDS = re.compile(
    r"docker\.(APIClient|DockerClient|from_env)\(|APIClient\(|DockerClient\(|from_env\("
    r"|open_unix_connection\(|asyncio\.open_connection\("
)


def test_nothing_else_in_the_agent_builds_a_docker_client() -> None:
    allowed = REPO_ROOT / "actors" / "runtime" / "docker_client.py"
    assert lines_matching(_BUILDS, allowed=allowed) == []
