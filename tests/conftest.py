"""Shared fixtures: the leak check every test gets, and the fixtures for tests that need a real
Docker daemon (helpers in tests/support/: daemon.py, images.py, containers.py, registry.py).

After every test, ``leak_check`` asserts that no actor and no actor or agent thread
the test started is still alive (tests/support/leaks.py), after a bounded wait for what is still
winding down.

A test that needs root, a tool or a mount says so with ``require()`` or the ``requires`` marker
(tests/support/prerequisites.py): without it the test skips on a developer machine and fails in
CI, where .ci/run provides everything.

Everything Docker-related is lazy: a test session that asks for none of these fixtures starts no
daemon. The daemon is private (its own socket, data-root and exec-root under /tmp, no bridge, no
iptables) and is stopped at the end of the session whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

from tests.support import leaks, prerequisites
from tests.support.containers import (
    TEST_LABEL,
    ContainerFactory,
    container_factory,
    remove_labelled_containers,
)
from tests.support.daemon import PrivateDockerd
from tests.support.hostenv import REPO_ROOT
from tests.support.images import (
    DEFAULT_AGENT_TAG,
    DEFAULT_BUSYBOX_TAG,
    DEFAULT_PYTHON_BASE_TAG,
    build_agent_image,
    build_python_base_image,
    make_busybox_image,
)
from tests.support.prerequisites import require
from tests.support.registry import LocalRegistry

# Cold image builds (debootstrap + pip wheel + docker build) can take minutes; a test that asks
# for one of these fixtures gets this timeout unless it sets its own.
IMAGE_FIXTURE_TIMEOUT = 1200
_IMAGE_FIXTURES = frozenset({"agent_image", "python_base_image", "make_agent_container"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{prerequisites.MARKER}(condition, reason): the test needs this; skipped without it on "
        "a developer machine, failed in CI (tests/support/prerequisites.py)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    prerequisites.check_markers(item)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _IMAGE_FIXTURES and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(IMAGE_FIXTURE_TIMEOUT))


LEAK_WAIT = 5.0
"""Seconds the leak check waits (joins with this timeout) for actors and threads to wind down."""


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """After every test (and its own fixtures' teardown): no actor it started is still
    registered and no actor or agent thread it started is alive (see tests/support/leaks.py).

    Its name is its own so that no module's fixture shadows it (test_supervisor.py and others
    keep a stricter check of their own, of every thread)."""
    baseline = leaks.Baseline.now()
    yield
    problems = leaks.leftovers(baseline, LEAK_WAIT)
    assert not problems, "the test left " + "; ".join(problems)


# --------------------------------------------------------------------------------------------
# daemon


@pytest.fixture(scope="session")
def dockerd() -> Iterator[PrivateDockerd]:
    """A private dockerd for the whole session; ``restart()`` keeps its images."""
    require(os.geteuid() == 0, "a private dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd not installed (Debian: docker.io)")
    daemon = PrivateDockerd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="session")
def docker_client(dockerd: PrivateDockerd) -> Iterator[docker.DockerClient]:
    """docker-py client for the private daemon. Survives ``dockerd.restart()``."""
    client = dockerd.client()
    try:
        yield client
    finally:
        if dockerd.running:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                left = remove_labelled_containers(client)
                if left:
                    warnings.warn(f"removed {left} leftover {TEST_LABEL} containers", stacklevel=1)
        client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """Tag of a tiny imported busybox image (sh, sleep, wget, nc, ...; no network needed)."""
    require(
        shutil.which("busybox") is not None or Path("/bin/busybox").exists(),
        "busybox not installed (Debian: busybox-static)",
    )
    make_busybox_image(docker_client, DEFAULT_BUSYBOX_TAG)
    return DEFAULT_BUSYBOX_TAG


@pytest.fixture
def make_container(
    docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[ContainerFactory]:
    """Factory: ``make_container(command="sleep 3600", name=None, start=True, **create_kwargs)``.

    Creates (and by default starts) a container from ``image=`` (default: the busybox image)
    with ``network_mode="none"`` unless ``network_mode``/``network`` is given, the label
    ``dockmon-test=1`` and ``stop_timeout=2`` unless given (see
    ``containers.DEFAULT_STOP_TIMEOUT``). Every container it made is force-removed after the test.
    """
    with container_factory(docker_client, busybox_image) as make:
        yield make


# --------------------------------------------------------------------------------------------
# registries (started only when a test asks)


@pytest.fixture(scope="session")
def registry() -> Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1 without auth; push to ``registry.repository(n)``."""
    require(shutil.which("docker-registry") is not None, "docker-registry not installed")
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[LocalRegistry]:
    """Like ``registry`` but with htpasswd auth; credentials in ``.auth_config``."""
    require(shutil.which("docker-registry") is not None, "docker-registry not installed")
    require(shutil.which("htpasswd") is not None, "htpasswd not installed (apache2-utils)")
    with LocalRegistry(username="dockmon", password="registry-secret-pw") as reg:
        yield reg


# --------------------------------------------------------------------------------------------
# the agent image (slow the first time: debootstrap, pip wheel, docker build)


@pytest.fixture(scope="session")
def python_base_image(docker_client: docker.DockerClient) -> str:
    """Tag of a Debian bookworm + python3 image (debootstrap, cached in /var/cache)."""
    require(shutil.which("debootstrap") is not None, "debootstrap not installed")
    build_python_base_image(docker_client, DEFAULT_PYTHON_BASE_TAG)
    return DEFAULT_PYTHON_BASE_TAG


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient, python_base_image: str) -> str:
    """Tag of the agent image built from this checkout's Dockerfile, offline."""
    build_agent_image(docker_client, REPO_ROOT, DEFAULT_AGENT_TAG, python_base_image)
    return DEFAULT_AGENT_TAG


@pytest.fixture
def make_agent_container(
    make_container: ContainerFactory, agent_image: str, dockerd: PrivateDockerd
) -> ContainerFactory:
    """Factory for agent containers: ``make_agent_container(args, name=None, start=True, **kw)``.

    ``args`` go after the ``dockmon-agent`` entrypoint (``["--version"]``; ``None`` runs the
    agent). The private daemon's socket is mounted at /var/run/docker.sock unless
    ``volumes=`` is given, so the agent manages the test daemon and nothing else. Network is
    ``none`` by default; pass ``network_mode="host"`` to reach a fake hub on 127.0.0.1. Other
    keyword arguments (``environment=``, ``entrypoint=``, ``user=``, ``group_add=``, ...) go to
    ``containers.create``. No user or group is given by default, as in DockMon's own command:
    the image starts as root and drops to uid 1000 with the socket's group by itself.
    """

    def factory(
        command: str | list[str] | None = None,
        name: str | None = None,
        start: bool = True,
        **create_kwargs: Any,
    ) -> Container:
        create_kwargs.setdefault("image", agent_image)
        create_kwargs.setdefault(
            "volumes", {dockerd.socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"}}
        )
        return make_container(command, name, start, **create_kwargs)

    return factory
