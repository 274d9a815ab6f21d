"""Containers the tests make, and their cleanup. No pytest dependency.

Every container :func:`container_factory` makes has network ``none`` unless the test asks for
another (``host`` to reach a loopback server, or an ``--internal`` network), carries the label
``dockmon-test=1`` (:data:`TEST_LABEL`) and is force-removed when the factory closes;
:func:`remove_labelled_containers` sweeps whatever a failed test left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import docker
import docker.errors
import docker.models.containers
import requests
from docker.models.containers import Container

from tests.support.hostenv import DockerEnvError

TEST_LABEL = "dockmon-test"
"""Every container the test helpers create carries ``dockmon-test=1``."""


class ContainerFactory(Protocol):
    """Type of the ``make_container`` fixture (see tests/conftest.py)."""

    def __call__(
        self,
        command: str | list[str] | None = "sleep 3600",
        name: str | None = None,
        start: bool = True,
        **create_kwargs: Any,
    ) -> Container: ...


def wait_for_exit(container: Container, timeout: float = 60.0) -> tuple[int, str]:
    """Wait for ``container`` to exit; return (exit code, combined stdout+stderr)."""
    try:
        result = container.wait(timeout=timeout)
    except Exception as exc:  # requests' ReadTimeout or ConnectionError
        logs = container.logs().decode("utf-8", "replace")
        raise DockerEnvError(f"{container.name} still running after {timeout}s:\n{logs}") from exc
    return int(result["StatusCode"]), container.logs().decode("utf-8", "replace")


DEFAULT_STOP_TIMEOUT = 2
"""Seconds ``docker stop`` (and daemon shutdown) waits before SIGKILL, for container_factory.
``sleep`` as PID 1 ignores SIGTERM, so Docker's default of 10 s would make every stop and every
``PrivateDockerd.restart()`` with a running container take 10 s. ``stop_timeout=`` overrides."""


def create_container(
    client: docker.DockerClient,
    image: str,
    command: str | list[str] | None = None,
    *,
    stop_timeout: int | None = None,
    **kwargs: Any,
) -> Container:
    """``client.containers.create`` plus ``stop_timeout`` (the container's StopTimeout), which
    docker-py only offers on the low-level API."""
    # the same conversion client.containers.create does (private, stable since docker-py 2.0)
    convert = docker.models.containers._create_container_args  # type: ignore[attr-defined]
    args = convert(
        {**kwargs, "image": image, "command": command, "version": client.api.api_version}
    )
    if stop_timeout is not None:
        args["stop_timeout"] = stop_timeout
    created = client.api.create_container(**args)
    return client.containers.get(created["Id"])


@contextlib.contextmanager
def container_factory(
    client: docker.DockerClient, default_image: str
) -> Iterator[ContainerFactory]:
    """Yield ``make(command="sleep 3600", name=None, start=True, **create_kwargs)``.

    Containers come from ``image=`` (default ``default_image``) with ``network_mode="none"``
    unless ``network_mode``/``network`` is given, label ``dockmon-test=1`` and
    ``stop_timeout=DEFAULT_STOP_TIMEOUT`` unless given. All are force-removed on exit.
    """
    created: list[Container] = []

    def make(
        command: str | list[str] | None = "sleep 3600",
        name: str | None = None,
        start: bool = True,
        **create_kwargs: Any,
    ) -> Container:
        image = create_kwargs.pop("image", default_image)
        if "network" not in create_kwargs:
            create_kwargs.setdefault("network_mode", "none")
        create_kwargs.setdefault("stop_timeout", DEFAULT_STOP_TIMEOUT)
        labels = create_kwargs.pop("labels", None) or {}
        if isinstance(labels, list | tuple):
            labels = dict.fromkeys(labels, "")
        container = create_container(
            client, image, command, name=name, labels={**labels, TEST_LABEL: "1"}, **create_kwargs
        )
        created.append(container)
        if start:
            container.start()
            container.reload()
        return container

    try:
        yield make
    finally:
        for container in reversed(created):
            # the daemon may be stopped or gone if the test failed half-way
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                container.remove(force=True, v=True)


def remove_labelled_containers(client: docker.DockerClient, label: str = TEST_LABEL) -> int:
    """Force-remove every container labelled ``label=1``; return how many."""
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{label}=1"}):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)
            removed += 1
    return removed
