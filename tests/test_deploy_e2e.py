"""deploy_compose end to end: the real agent, the strict FakeHub and the private dockerd, with the
real Docker Compose binary (PROTOCOL §8.1, §5.7). One agent serves the whole module (stacks in
tests/support/deploy_stacks.py); tests that need an agent of their own are in
test_deploy_agents_e2e.py (an agent's shutdown sweeps every actor of the process, so two must not
overlap).
"""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from messages.deploy import STAGES
from messages.roles import Role
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.deploy_stacks import (
    SLOW,
    at_stage,
    deploy,
    events,
    exec_out,
    project_containers,
    service,
    stack,
)
from tests.support.registry import LocalRegistry
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
COMPOSE_VERSION = "5.6.1"


@pytest.fixture(scope="module")
def module_agent(
    tmp_path_factory: pytest.TempPathFactory, dockerd: PrivateDockerd, busybox_image: str
) -> Iterator[RunningAgent]:
    data = tmp_path_factory.mktemp("deploy") / "data"
    with running_agent(data, dockerd.base_url, DEPLOY_STOP_TIMEOUT="2s") as running:
        running.hub.wait_registered()
        yield running


@pytest.fixture
def agent(module_agent: RunningAgent) -> Iterator[RunningAgent]:
    yield module_agent
    module_agent.hub.assert_clean()


def stacks_dir(agent: RunningAgent) -> Path:
    return Path(agent.config.agent_stacks_dir)


# --- the whole life of a stack ----------------------------------------------------------------


def test_named_volume_survives_a_redeploy_restart_and_down(
    agent: RunningAgent, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    hub = agent.hub
    image = docker_client.images.get(busybox_image)
    image.tag("dockmon-test/deploy", "one")
    image.tag("dockmon-test/deploy", "two")
    keep = ["sh", "-c", "test -f /data/marker || echo first > /data/marker; exec sleep 3600"]

    def compose(tag: str) -> str:
        doc = {
            "services": {
                "web": service(keep, image=f"dockmon-test/deploy:{tag}", volumes=["data:/data"])
            },
            "volumes": {"data": {}},
        }
        return yaml.safe_dump(doc)

    ack, first_id = hub.deploy("vol", compose("one"))
    assert ack.ok
    first = hub.wait_deploy_complete(first_id)
    assert first["success"] is True and first["action"] == "up", first
    web = first["services"]["web"]
    (container,) = project_containers(docker_client, "vol")
    assert web == {
        "container_id": container.id[:12],
        "container_name": "vol-web-1",
        "image": "dockmon-test/deploy:one",
        "status": web["status"],
    }
    assert web["status"].startswith("Up ")
    # the standard compose labels, as the Go agent sets them (§8.1 step 6.3)
    labels = container.labels
    site = stacks_dir(agent) / "vol"
    assert labels["com.docker.compose.project"] == "vol"
    assert labels["com.docker.compose.service"] == "web"
    assert labels["com.docker.compose.version"] == COMPOSE_VERSION
    assert labels["com.docker.compose.project.working_dir"] == str(site)
    assert labels["com.docker.compose.project.config_files"] == str(site / "docker-compose.yml")
    assert labels["com.docker.compose.oneoff"] == "False"
    # the progress: every stage one the backend understands, starting first, completed last
    seen = events(hub, first_id)
    assert seen[0] == ("starting", "Starting deployment...")
    assert seen[-2:] == [
        ("completed", "Deployment completed: 1/1 services running"),
        ("complete", ""),
    ]
    stages = [s for s, _ in seen[:-1]]
    assert set(stages) <= STAGES
    for expected in ("validating", "parsing", "executing", "creating_volumes", "creating"):
        assert expected in stages, stages
    assert ("creating_volumes", "Volume vol_data: Created") in seen

    second = deploy(hub, "vol", compose("two"))
    assert second["success"] is True
    (recreated,) = project_containers(docker_client, "vol")
    assert recreated.id != container.id
    assert second["services"]["web"]["image"] == "dockmon-test/deploy:two"
    assert exec_out(docker_client, recreated.id, "cat", "/data/marker") == "first"

    unchanged = deploy(hub, "vol", compose("two"))  # compose recreates only what diverged
    assert unchanged["services"]["web"]["container_id"] == recreated.id[:12]
    forced = deploy(hub, "vol", compose("two"), force_recreate=True)
    assert forced["services"]["web"]["container_id"] != recreated.id[:12]
    (recreated,) = project_containers(docker_client, "vol")

    restarted = deploy(hub, "vol", compose("two"), action="restart")
    assert restarted["success"] is True and restarted["action"] == "restart"
    (again,) = project_containers(docker_client, "vol")
    assert again.id != recreated.id
    assert exec_out(docker_client, again.id, "cat", "/data/marker") == "first"

    down = deploy(hub, "vol", compose("two"), action="down")
    assert down == {"deployment_id": down["deployment_id"], "action": "down", "success": True}
    assert project_containers(docker_client, "vol") == []
    assert docker_client.volumes.get("vol_data")  # kept without remove_volumes
    assert (site / "docker-compose.yml").exists()

    deploy(hub, "vol", compose("two"))
    gone = deploy(hub, "vol", compose("two"), action="down", remove_volumes=True)
    assert gone["success"] is True
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get("vol_data")
    assert not site.exists()  # the stack directory goes with its volumes


def test_env_file_and_env_files_and_no_agent_variables(
    agent: RunningAgent,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """.env interpolates, env_file: reads the other files, the agent's own variables never
    reach the stack, and no value is logged or audited."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("REGISTRATION_TOKEN", "agent-registration-token-leak")
    monkeypatch.setenv("DOCKMON_URL", "https://agent-url-leak.example")
    hub = agent.hub
    compose = stack(
        app=service(
            image="dockmon-test/busybox:${TAG}",
            environment={
                "GREETING": "${GREETING}",
                "TOKEN": "${REGISTRATION_TOKEN:-not-interpolated}",
                "URL": "${DOCKMON_URL:-not-interpolated}",
            },
            env_file=["db.env"],
        )
    )
    env_files = {
        ".env": "TAG=latest\nGREETING=hello-from-env\n",
        "./db.env": "DB_PASSWORD=s3cret-db-pw\n",
    }
    result = deploy(hub, "envs", compose, env_files=env_files)
    assert result["success"] is True, result
    (container,) = project_containers(docker_client, "envs")
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["GREETING"] == "hello-from-env"
    assert env["DB_PASSWORD"] == "s3cret-db-pw"
    assert env["TOKEN"] == "not-interpolated" and env["URL"] == "not-interpolated"
    site = stacks_dir(agent) / "envs"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in site.iterdir()}
    assert modes == {".env": 0o600, "db.env": 0o600, "docker-compose.yml": 0o644}
    assert stat.S_IMODE(site.stat().st_mode) == 0o755

    # the same stack with env_file_content only; then with none: the stale .env goes
    plain = stack(app=service(environment={"GREETING": "${GREETING:-none}"}))
    result = deploy(hub, "envs", plain, env_file_content="GREETING=from-content\n")
    (container,) = project_containers(docker_client, "envs")
    assert "GREETING=from-content" in container.attrs["Config"]["Env"]
    assert (site / ".env").read_text() == "GREETING=from-content\n"
    deploy(hub, "envs", plain)
    assert not (site / ".env").exists()
    (container,) = project_containers(docker_client, "envs")
    assert "GREETING=none" in container.attrs["Config"]["Env"]
    deploy(hub, "envs", plain, action="down")

    audit = (Path(agent.config.data_path) / "audit.log").read_text()
    lines = [json.loads(line) for line in audit.splitlines()]
    deploys = [
        line
        for line in lines
        if line["operation"] == "deploy_compose" and line.get("target") == "envs"
    ]
    assert [d["result"] for d in deploys[:2]] == ["ok", "up finished: success"]
    for secret in ("s3cret-db-pw", "hello-from-env", "from-content"):
        assert secret not in audit
        assert secret not in caplog.text


def test_healthcheck_gates_a_dependent_on_an_internal_network(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    hub = agent.hub
    compose = yaml.safe_dump(
        {
            "services": {
                "app": service(
                    network_mode=None,
                    networks=["inner"],
                    healthcheck={"test": ["CMD", "true"], "interval": "500ms"},
                ),
                "after": service(depends_on={"app": {"condition": "service_healthy"}}),
            },
            "networks": {
                "inner": {"internal": True, "ipam": {"config": [{"subnet": "198.18.12.0/24"}]}}
            },
        }
    )
    ack, deployment_id = hub.deploy("health", compose, wait_for_healthy=True, health_timeout=60)
    assert ack.ok
    result = hub.wait_deploy_complete(deployment_id)
    assert result["success"] is True, result
    assert "(healthy)" in result["services"]["app"]["status"]
    seen = events(hub, deployment_id)
    assert ("creating_networks", "Network health_inner: Created") in seen
    assert ("starting", "Container health-app-1: Healthy") in seen
    assert [s for s, _ in seen].index("waiting_for_health") < len(seen) - 2
    net = docker_client.networks.get("health_inner")
    assert net.attrs["Internal"] is True
    deploy(hub, "health", compose, action="down")
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get("health_inner")


def test_pull_with_registry_credentials_and_a_clear_failure_without(
    agent: RunningAgent,
    auth_registry: LocalRegistry,
    docker_client: docker.DockerClient,
    busybox_image: str,
) -> None:
    hub = agent.hub
    repo = auth_registry.repository("deploy/pull")
    docker_client.images.get(busybox_image).tag(repo, "v1")
    for chunk in docker_client.images.push(
        repo, "v1", auth_config=auth_registry.auth_config, stream=True, decode=True
    ):
        assert "error" not in chunk, chunk
    docker_client.images.remove(f"{repo}:v1")
    # only the registry's image: compose pull would otherwise try to reach Docker Hub
    compose = stack(app=service(image=f"{repo}:v1"))
    creds = [
        {
            "registry_url": auth_registry.address,
            "username": auth_registry.username,
            "password": auth_registry.password,
        }
    ]
    ack, deployment_id = hub.deploy("pulled", compose, pull_images=True, registry_credentials=creds)
    assert ack.ok
    result = hub.wait_deploy_complete(deployment_id)
    assert result["success"] is True, result
    assert result["services"]["app"]["image"] == f"{repo}:v1"
    assert ("pulling_image", f"Pulling {repo}:v1...") in events(hub, deployment_id)
    deploy(hub, "pulled", compose, action="down")
    docker_client.images.remove(f"{repo}:v1")

    refused = deploy(hub, "unpulled", compose, pull_images=True)
    assert refused["success"] is False
    assert refused["error"].startswith("Image pull failed: ")
    assert "no basic auth credentials" in refused["error"]
    assert project_containers(docker_client, "unpulled") == []
    # the logins lived only in the deployment's private DOCKER_CONFIG, now deleted
    data = Path(agent.config.data_path)
    assert list((data / "deployments" / "tmp").iterdir()) == []
    password = auth_registry.password
    assert password is not None
    for path in data.rglob("*"):
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path


def test_partial_success_and_total_failure(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    hub = agent.hub
    compose = stack(good=service(), bad=service(["sh", "-c", "exit 2"], restart="no"))
    partial = deploy(hub, "partial", compose)
    assert partial["success"] is False and partial["partial_success"] is True
    assert partial["failed_services"] == ["bad"]
    assert partial["error"].startswith(
        "Partial deployment: 1/2 services running. Failed: bad: Exited (2)"
    )
    assert partial["services"]["bad"]["exit_code"] == 2
    assert len(project_containers(docker_client, "partial")) == 2  # left running, not rolled back
    deploy(hub, "partial", compose, action="down")

    both = stack(a=service(["sh", "-c", "exit 3"]), b=service(["sh", "-c", "exit 4"]))
    failed = deploy(hub, "allbad", both)
    assert failed["success"] is False and "partial_success" not in failed
    assert failed["error"].startswith("All services failed to start: a: Exited (3)")
    assert "; b: Exited (4)" in failed["error"]
    deploy(hub, "allbad", both, action="down")


def test_profiles_and_down_removes_profile_only_services(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    hub = agent.hub
    compose = stack(web=service(), debug=service(profiles=["debug"]))
    plain = deploy(hub, "prof", compose)
    assert set(plain["services"]) == {"web"}
    with_debug = deploy(hub, "prof", compose, profiles=["debug"])
    assert set(with_debug["services"]) == {"web", "debug"}
    assert len(project_containers(docker_client, "prof")) == 2
    down = deploy(hub, "prof", compose, action="down")  # no profiles asked: all go anyway
    assert down["success"] is True
    assert project_containers(docker_client, "prof") == []


# --- better than the Go agent -----------------------------------------------------------------


def test_a_finished_one_shot_job_is_done_at_once_with_wait_for_healthy(agent: RunningAgent) -> None:
    """Go waits the whole health timeout for a job that exited 0, reports a failed stage, then
    success. Here it is done as soon as it has exited."""
    compose = stack(job=service(["sh", "-c", "echo migrated"], restart="no"))
    started = time.monotonic()
    result = deploy(agent.hub, "oneshot", compose, wait_for_healthy=True, health_timeout=120)
    elapsed = time.monotonic() - started
    assert result["success"] is True, result
    assert result["services"]["job"]["status"].startswith("Exited (0)")
    assert elapsed < 30, elapsed  # far from the 120 s health timeout
    stages = [s for s, _ in events(agent.hub, result["deployment_id"])]
    assert "failed" not in stages
    deploy(agent.hub, "oneshot", compose, action="down")


def test_a_crash_looping_service_is_reported_failed(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    """A single snapshot (Go) and 'compose up --wait' both call a restart: always container
    that is up between two crashes healthy."""
    compose = stack(web=service(), loop=service(["sh", "-c", "exit 3"], restart="always"))
    for wait in (False, True):
        result = deploy(agent.hub, "loop", compose, wait_for_healthy=wait, health_timeout=60)
        assert result["success"] is False and result.get("partial_success") is True, result
        assert result["failed_services"] == ["loop"]
        assert "crash loop: restarted" in result["error"]
        assert result["services"]["loop"]["restart_policy"] == "always"
        assert result["services"]["loop"]["exit_code"] == 3
    deploy(agent.hub, "loop", compose, action="down")


def test_compose_errors_reach_dockmon_in_compose_words(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    hub = agent.hub
    broken = stack(app=service(["/nonexistent"], init=None))  # no init: the daemon execs it
    result = deploy(hub, "broken", broken)
    assert result["success"] is False
    assert result["error"].startswith("Failed to start services (app): ")
    assert 'exec: "/nonexistent": stat /nonexistent: no such file or directory' in result["error"]
    assert "exit status" not in result["error"]
    assert result["error"].endswith("; rolled back (the stack had no containers before)")
    assert project_containers(docker_client, "broken") == []

    invalid = "services:\n  app:\n    image: dockmon-test/busybox:latest\n    bogus: 1\n"
    result = deploy(hub, "invalid", invalid)
    assert result["error"].startswith("Invalid compose file: validating ")
    assert "services.app" in result["error"] and "bogus" in result["error"]

    built = "services:\n  app:\n    build: .\n"
    result = deploy(hub, "built", built)
    assert result["error"] == (
        "compose files with build: are not supported (service app); build and push the image "
        "to a registry and use image: instead"
    )
    assert deploy(hub, "built", built, action="down")["success"] is True  # down is allowed

    for name, problem in (("../up", "must not contain '/'"), ("Site", "lowercase alphanumeric")):
        result = deploy(hub, name, broken)
        assert result["error"].startswith("Failed to write the stack files: invalid project name")
        assert problem in result["error"]
    assert not (stacks_dir(agent).parent / "up").exists()


# --- one at a time, and nothing lost ----------------------------------------------------------


def test_one_deployment_per_stack_at_a_time(agent: RunningAgent) -> None:
    hub = agent.hub
    slow = stack(app=service(**SLOW))
    ack, first = hub.deploy("busy", slow, wait_for_healthy=True)
    assert ack.ok
    hub.wait_event(at_stage(first, "waiting_for_health"))
    second, second_id = hub.deploy("busy", slow)
    assert not second.ok
    assert second.error == (
        f"a deployment of stack busy is already running (deployment {first}, up); wait for it "
        "to complete and try again"
    )
    other = deploy(hub, "nearby", stack(app=service()))  # another stack is not held up
    assert other["success"] is True
    done = hub.wait_deploy_complete(first)
    assert done["success"] is True, done
    assert hub.deploy_events(second_id) == []
    deploy(hub, "busy", slow, action="down")
    deploy(hub, "nearby", stack(app=service()), action="down")


def journal_states(agent: RunningAgent) -> dict[str, str]:
    directory = Path(agent.config.data_path) / "deployments"
    entries = (json.loads(p.read_text()) for p in directory.glob("*.json"))
    return {e["deployment_id"]: e["state"] for e in entries}


def journaled_finished(agent: RunningAgent, deployment_id: str) -> Callable[[], bool]:
    return lambda: journal_states(agent).get(deployment_id) == "finished"


def test_the_result_survives_a_dropped_link_and_restarts(agent: RunningAgent) -> None:
    """The Go agent loses a deploy_complete sent while disconnected. Here it arrives once after
    the reconnect, also when the Connection or the Deployer itself restarts meanwhile."""
    hub = agent.hub
    slow = stack(app=service(**SLOW))
    journal = Path(agent.config.data_path) / "deployments"
    for fault in ("drop", "connection", "deployer"):
        registered = len([a for a in hub.auth_log if a.ok])
        ack, deployment_id = hub.deploy(f"survive-{fault}", slow, wait_for_healthy=True)
        assert ack.ok
        hub.wait_event(at_stage(deployment_id, "waiting_for_health"))
        if fault == "drop":  # down until the deployment has ended: the result waits for us
            hub.refuse(True)
            hub.drop()
            wait_for(
                journaled_finished(agent, deployment_id),
                60,
                "the deployment to end while DockMon is unreachable",
            )
            assert hub.deploy_events(deployment_id)[-1]["command"] == "deploy_progress"
            hub.refuse(False)
        else:
            agent.crash(Role(fault))
        if fault != "deployer":
            hub.wait_registered(count=registered + 1, timeout=30)
        result = hub.wait_deploy_complete(deployment_id, timeout=60)
        assert result["success"] is True, (fault, result)
        completes = [
            e for e in hub.deploy_events(deployment_id) if e["command"] == "deploy_complete"
        ]
        assert len(completes) == 1, fault
        wait_for(
            lambda: not list(journal.glob("*.json")),
            10,
            "the confirmed result to leave the journal",
        )
        deploy(hub, f"survive-{fault}", slow, action="down")


def test_relative_bind_mounts_natively(
    agent: RunningAgent, docker_client: docker.DockerClient
) -> None:
    compose = stack(web=service(volumes=["./files:/files"]))
    result = deploy(agent.hub, "native", compose)
    assert result["success"] is True, result
    site = stacks_dir(agent) / "native"
    (site / "files" / "note").write_text("relative to the stack directory")
    (container,) = project_containers(docker_client, "native")
    assert (
        exec_out(docker_client, container.id, "cat", "/files/note")
        == "relative to the stack directory"
    )
    assert not (site / "docker-compose.dockmon-host-paths.yml").exists()  # nothing to rewrite
    deploy(agent.hub, "native", compose, action="down")
