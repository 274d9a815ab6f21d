"""deploy_compose with agents of their own: policy (read_only, protected names), HOST_STACKS_DIR
rewriting, and SIGTERM in the middle of a deployment (the next start reports it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import docker
import pytest

from tests.support.agent_harness import REGISTRATION_TOKEN, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.deploy_stacks import deploy, exec_out, project_containers, service, stack
from tests.support.hub import FakeHub
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def test_policy_read_only_and_protected_names_and_host_stacks_dir(
    tmp_path: Path, dockerd: PrivateDockerd, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    policies = {
        "read_only: true": "read_only is set and deploy_compose changes the host",
        "deny: [deploy_compose]": "deploy_compose is in policy.deny",
        "allow: [list_containers]": "deploy_compose is not in policy.allow",
    }
    for n, (policy, denial) in enumerate(policies.items()):
        config = tmp_path / f"policy{n}.yaml"
        config.write_text(f"policy:\n  {policy}\n")
        data = tmp_path / f"p{n}"
        with running_agent(data, dockerd.base_url, DOCKMON_CONFIG=str(config)) as denied:
            denied.hub.wait_registered()
            refused, deployment_id = denied.hub.deploy("site", stack(app=service()))
            assert not refused.ok and refused.error_type == "permission_denied"
            assert refused.error == f"denied by the agent's policy: {denial}"
            assert denied.hub.deploy_events(deployment_id) == []
            audit = (data / "audit.log").read_text()
            assert '"operation":"deploy_compose"' in audit and '"target":"site"' in audit
            denied.hub.assert_clean()
    assert project_containers(docker_client, "site") == []

    protected = tmp_path / "protected.yaml"
    protected.write_text("policy:\n  protected_containers:\n    names: ['guarded-*']\n")
    real = tmp_path / "stacks"
    alias = tmp_path / "host-view"  # what the host calls the stacks directory
    alias.symlink_to(real, target_is_directory=True)
    with running_agent(
        tmp_path / "pr",
        dockerd.base_url,
        DOCKMON_CONFIG=str(protected),
        AGENT_STACKS_DIR=str(real),
        HOST_STACKS_DIR=str(alias),
    ) as pr:
        pr.hub.wait_registered()
        refused_run = deploy(pr.hub, "guarded", stack(web=service()))
        assert refused_run["success"] is False
        assert "container guarded-web-1 matches protected name 'guarded-*'" in refused_run["error"]
        assert project_containers(docker_client, "guarded") == []
        named = deploy(pr.hub, "other", stack(web=service(container_name="guarded-db")))
        assert "container guarded-db matches protected name" in named["error"]

        bound = stack(web=service(["sh", "-c", "exec sleep 3600"], volumes=["./files:/files:ro"]))
        result = deploy(pr.hub, "bound", bound)
        assert result["success"] is True, result
        (container,) = project_containers(docker_client, "bound")
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/files"]
        assert mount["Source"] == str(alias / "bound" / "files")  # rewritten to the host path
        assert mount["RW"] is False
        assert (real / "bound" / "files").is_dir()  # created on our side, not by the daemon
        (real / "bound" / "files" / "hello").write_text("from the stack directory")
        assert (
            exec_out(docker_client, container.id, "cat", "/files/hello")
            == "from the stack directory"
        )
        deploy(pr.hub, "bound", bound, action="down")
        pr.hub.assert_clean()


# --- SIGTERM -------------------------------------------------------------------------------


def _compose_processes(project: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"docker-compose") and project.encode() in argv:
                pids.append(int(entry))
    return pids


def test_sigterm_stops_a_running_deployment_and_the_next_start_reports_it(
    tmp_path: Path, dockerd: PrivateDockerd, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    never_healthy = service(
        healthcheck={"test": ["CMD", "false"], "interval": "1s", "retries": 1000}
    )
    compose = stack(
        dep=never_healthy, app=service(depends_on={"dep": {"condition": "service_healthy"}})
    )
    data = tmp_path / "data"
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        with running_agent(data, dockerd.base_url, hub=hub, DEPLOY_STOP_TIMEOUT="1s") as first:
            hub.wait_registered()
            ack, deployment_id = hub.deploy("sigterm", compose)
            assert ack.ok
            hub.wait_event(
                lambda e: e["payload"].get("message") == "Container sigterm-dep-1: Waiting"
            )
            assert _compose_processes("sigterm")
            started = time.monotonic()
            first.supervisor.stop("SIGTERM in the test")
            stopped_in = time.monotonic() - started
        assert stopped_in < 1 + 5 + 5, stopped_in
        assert _compose_processes("sigterm") == []  # compose was stopped, not left behind
        assert [
            e for e in hub.deploy_events(deployment_id) if e["command"] == "deploy_complete"
        ] == []
        (journal,) = (data / "deployments").glob("*.json")
        assert json.loads(journal.read_text())["state"] == "finished"

        with running_agent(data, dockerd.base_url, hub=hub):
            hub.wait_registered(count=2)
            result = hub.wait_deploy_complete(deployment_id, timeout=30)
            assert result["success"] is False
            assert result["error"] == (
                "deployment interrupted: the agent was stopped (it waited 1s) while docker compose "
                "was running; the stack may be partly deployed: check it and deploy again"
            )
            wait_for(lambda: not journal.exists(), 10, "the delivered result to leave the journal")
            assert deploy(hub, "sigterm", compose, action="down")["success"] is True
        hub.assert_clean()
