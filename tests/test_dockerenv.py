"""Proves the Docker test infrastructure itself: the private daemon, images, containers and
registries of tests/support/ and the fixtures in tests/conftest.py."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.containers import TEST_LABEL, ContainerFactory, container_factory, wait_for_exit
from tests.support.daemon import PrivateDockerd
from tests.support.images import REQUIRED_APPLETS, host_debian_mirror
from tests.support.registry import LocalRegistry, iter_stream_errors


def test_daemon_is_private_and_isolated(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient
) -> None:
    info = docker_client.info()
    assert info["DockerRootDir"] == str(dockerd.data_root)
    assert dockerd.base_url == f"unix://{dockerd.socket_path}"
    assert dockerd.running and dockerd.pid
    assert len(dockerd.socket_path) < 100  # unix socket path limit
    command = dockerd.command()
    for flag in ("--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"):
        assert flag in command
    assert "/var/run/docker.sock" not in " ".join(command)
    names = {n.name for n in docker_client.networks.list()}
    assert "bridge" not in names
    assert {"none", "host"} <= names


def test_busybox_container_echo_and_logs(make_container: ContainerFactory) -> None:
    container = make_container(["echo", "hello from busybox"])
    assert wait_for_exit(container, timeout=30) == (0, "hello from busybox\n")


def test_busybox_has_the_applets_tests_rely_on(make_container: ContainerFactory) -> None:
    script = 'for a in "$@"; do command -v "$a" >/dev/null || echo "missing $a"; done; echo done'
    container = make_container(["sh", "-c", script, "sh", *REQUIRED_APPLETS])
    assert wait_for_exit(container, timeout=30) == (0, "done\n")


def test_containers_have_no_network(make_container: ContainerFactory) -> None:
    container = make_container(["cat", "/proc/net/dev"])
    code, out = wait_for_exit(container, timeout=30)
    assert code == 0
    interfaces = {line.split(":")[0].strip() for line in out.splitlines() if ":" in line}
    assert interfaces == {"lo"}


def test_restart_keeps_images_and_ends_event_streams(
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    busybox_image: str,
    make_container: ContainerFactory,
) -> None:
    running = make_container()
    image_id = docker_client.images.get(busybox_image).id
    old_pid = dockerd.pid

    # an event stream on its own client, like the agent's EventStreamer
    events_client = dockerd.client()
    stream = events_client.events(decode=True)
    ended: list[str] = []

    def consume() -> None:
        try:
            for _event in stream:
                pass
            ended.append("eof")
        except Exception as exc:  # urllib3 ProtocolError and friends
            ended.append(type(exc).__name__)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        dockerd.restart()
        reader.join(timeout=30)
        assert not reader.is_alive(), "event stream did not end when the daemon stopped"
        assert ended
    finally:
        stream.close()
        events_client.close()

    assert dockerd.running and dockerd.pid != old_pid
    # the session client keeps working, the image is still there, the container was stopped
    assert docker_client.images.get(busybox_image).id == image_id
    running.reload()
    assert running.status == "exited"
    assert wait_for_exit(make_container(["echo", "after restart"]), 30) == (0, "after restart\n")


def _push(client: docker.DockerClient, repo: str, auth: dict[str, str] | None) -> list[str]:
    kwargs: dict[str, Any] = {"stream": True, "decode": True}
    if auth is not None:
        kwargs["auth_config"] = auth
    return list(iter_stream_errors(client.images.push(repo, "v1", **kwargs)))


@pytest.mark.parametrize("which", ["registry", "auth_registry"])
def test_registry_push_pull_round_trip(
    which: str,
    request: pytest.FixtureRequest,
    docker_client: docker.DockerClient,
    make_container: ContainerFactory,
) -> None:
    reg: LocalRegistry = request.getfixturevalue(which)
    nonce = secrets.token_hex(8)
    writer = make_container(["sh", "-c", f"echo {nonce} > /marker"])
    assert wait_for_exit(writer, 30)[0] == 0
    repo = reg.repository(f"dockmon-test/roundtrip-{nonce}")
    image = writer.commit(repository=repo, tag="v1")

    if reg.auth_config is not None:
        assert _push(docker_client, repo, None), "push without credentials should fail"
    assert _push(docker_client, repo, reg.auth_config) == []
    assert reg.tags(f"dockmon-test/roundtrip-{nonce}") == ["v1"]

    docker_client.images.remove(str(image.id), force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(f"{repo}:v1")
    if reg.auth_config is not None:
        with pytest.raises(docker.errors.APIError):
            docker_client.images.pull(repo, tag="v1")

    pulled = docker_client.images.pull(repo, tag="v1", auth_config=reg.auth_config)
    try:
        assert pulled.id == image.id
        reader = make_container(["cat", "/marker"], image=f"{repo}:v1")
        assert wait_for_exit(reader, 30) == (0, f"{nonce}\n")
    finally:
        docker_client.images.remove(str(pulled.id), force=True)


def test_container_factory_removes_its_containers(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    with container_factory(docker_client, busybox_image) as make:
        running = make(name=f"dmt-{secrets.token_hex(4)}")
        created = make(start=False, labels={"extra": "x"})
        assert running.status == "running"
        assert running.attrs["HostConfig"]["NetworkMode"] == "none"
        assert running.labels[TEST_LABEL] == "1"
        assert created.labels[TEST_LABEL] == "1" and created.labels["extra"] == "x"
        ids = {running.id, created.id}
    left = {c.id for c in docker_client.containers.list(all=True)}
    assert not ids & left


@pytest.fixture
def gone_after_teardown(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Ids that must no longer exist once the test's later fixtures are torn down.

    Requested before ``make_container``, this fixture is set up before it and so torn down
    after it: its check runs once ``make_container`` has cleaned up. Were the order ever the
    other way round, the containers would still exist and the check would fail, not pass."""
    ids: list[str] = []
    yield ids
    assert ids, "the test registered no container to check"
    for cid in ids:
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(cid)


def test_make_container_fixture_removes_its_containers_after_the_test(
    gone_after_teardown: list[str],
    make_container: ContainerFactory,
    docker_client: docker.DockerClient,
) -> None:
    running, created = make_container(), make_container(start=False)
    assert docker_client.containers.get(str(running.id)).status == "running"
    assert docker_client.containers.get(str(created.id)).status == "created"
    gone_after_teardown.extend([str(running.id), str(created.id)])


def test_host_debian_mirror_parses_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert host_debian_mirror("bookworm", tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list").write_text(
        "# deb http://ignored.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian/ bookworm main\n"
    )
    assert host_debian_mirror("bookworm", tmp_path) == "http://list.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert host_debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
