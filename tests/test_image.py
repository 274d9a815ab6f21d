"""The real agent image, built offline from this checkout, run in the private daemon."""

from __future__ import annotations

import secrets
import tomllib

import docker
import pytest

from messages.common import Secret
from tests.support.containers import ContainerFactory, wait_for_exit
from tests.support.daemon import PrivateDockerd
from tests.support.hostenv import REPO_ROOT

pytestmark = pytest.mark.slow


def _project_version() -> str:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_image_metadata(docker_client: docker.DockerClient, agent_image: str) -> None:
    config = docker_client.images.get(agent_image).attrs["Config"]
    assert config["Entrypoint"] == ["dockmon-agent"]
    assert "DATA_PATH=/data" in config["Env"]
    assert "/data" in (config["Volumes"] or {})
    labels = config["Labels"] or {}
    assert labels["org.opencontainers.image.title"] == "dockmon-agent"
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    for key in ("description", "source"):
        assert f"org.opencontainers.image.{key}" in labels


def test_version_matches_pyproject(make_agent_container: ContainerFactory) -> None:
    container = make_agent_container(["--version"])
    assert wait_for_exit(container, timeout=60) == (0, f"dockmon-agent {_project_version()}\n")


def test_print_config_masks_the_permanent_token(make_agent_container: ContainerFactory) -> None:
    token = f"tok-{secrets.token_hex(16)}"
    container = make_agent_container(
        ["--print-config"],
        environment={"DOCKMON_URL": "https://dockmon.example.com", "PERMANENT_TOKEN": token},
    )
    code, out = wait_for_exit(container, timeout=60)
    assert code == 0, out
    assert token not in out
    lines = {line.split("=", 1)[0]: line for line in out.splitlines() if "=" in line}
    assert lines["PERMANENT_TOKEN"].startswith(f"PERMANENT_TOKEN={Secret(token).masked()}  #")
    assert lines["DOCKMON_URL"].startswith("DOCKMON_URL=https://dockmon.example.com")
    assert lines["DATA_PATH"].startswith("DATA_PATH=/data  #")


def test_agent_container_reaches_only_the_private_daemon(
    make_agent_container: ContainerFactory, dockerd: PrivateDockerd
) -> None:
    """The fixture mounts the test daemon's socket at the default path: what e2e tests use."""
    script = "import docker; print(docker.from_env().info()['DockerRootDir'])"
    container = make_agent_container(["-c", script], entrypoint=["python3"])
    assert wait_for_exit(container, timeout=60) == (0, f"{dockerd.data_root}\n")


def test_the_image_carries_the_pinned_compose_binary(
    make_agent_container: ContainerFactory,
) -> None:
    """Checked at build time too (Dockerfile); here it runs as the agent's user."""
    container = make_agent_container(["version"], entrypoint=["docker-compose"])
    assert wait_for_exit(container, timeout=60) == (0, "Docker Compose version v5.6.1\n")
