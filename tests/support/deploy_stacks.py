"""Stacks and helpers shared by the deploy_compose end-to-end tests.

Every service runs with ``network_mode: none`` or an ``internal`` network inside 198.18.0.0/15
(the private daemon has no bridge), ``init: true`` so it stops at once, and the ``dockmon-test``
label so the session cleans up leftovers. Images are local (busybox) or come from the loopback
registry: nothing is ever pulled from the internet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import docker
import yaml

from tests.support.hub import FakeHub

LABELS = {"dockmon-test": "1"}


def service(command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "dockmon-test/busybox:latest",
        "command": command or ["sleep", "3600"],
        "init": True,
        "network_mode": "none",
        "labels": LABELS,
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def stack(**services: dict[str, Any]) -> str:
    return yaml.safe_dump({"services": services}, sort_keys=False)


#: healthy 2 s after it starts: a deployment that waits for it is "running" for a while
SLOW: dict[str, Any] = {
    "command": ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 3600"],
    "healthcheck": {
        "test": ["CMD", "test", "-f", "/tmp/ready"],
        "interval": "500ms",
        "retries": 30,
    },
}


def deploy(
    hub: FakeHub, project: str, compose: str, *, timeout: float = 120, **fields: Any
) -> dict[str, Any]:
    """deploy_compose, acknowledged at once; returns its deploy_complete payload."""
    ack, deployment_id = hub.deploy(project, compose, **fields)
    assert ack.ok and ack.data == {"status": "deployment_started"}, ack
    return hub.wait_deploy_complete(deployment_id, timeout)


def events(hub: FakeHub, deployment_id: str) -> list[tuple[str, str]]:
    """(stage, message) of every deploy_progress of the deployment, then ("complete", "")."""
    out = []
    for e in hub.deploy_events(deployment_id):
        p = e["payload"]
        out.append(
            (p["stage"], p["message"]) if e["command"] == "deploy_progress" else ("complete", "")
        )
    return out


def at_stage(deployment_id: str, stage: str) -> Callable[[dict[str, Any]], bool]:
    """A hub.wait_event predicate: the deployment sent a deploy_progress of ``stage``."""

    def match(event: dict[str, Any]) -> bool:
        payload = event["payload"]
        return bool(payload["deployment_id"] == deployment_id and payload["stage"] == stage)

    return match


def project_containers(client: docker.DockerClient, project: str) -> list[Any]:
    return list(
        client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    )


def exec_out(client: docker.DockerClient, container_id: str, *cmd: str) -> str:
    result = client.containers.get(container_id).exec_run(list(cmd))
    assert result.exit_code == 0, result.output
    return cast(bytes, result.output).decode().strip()
