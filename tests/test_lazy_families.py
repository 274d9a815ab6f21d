"""Code an idle agent never runs is not loaded (issue 13.4: idle RSS).

The deployment run (actors/deploy/runner.py with the progress parser and the classifier) and the
update flows (actors/flows/container_update.py, self_update.py and what they use) are imported by
the first deploy_compose and the first update_container, not at start: about 1 MB of an idle
agent's RSS. A real agent process (a cold interpreter of its own) registers with the FakeHub on
the private dockerd; asked over its stdin, it lists the agent modules it holds: none of those at
idle; then its first deployment and its first update run on the real daemon, loading them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import docker
import pytest

from tests.support.agent_harness import REGISTRATION_TOKEN
from tests.support.containers import ContainerFactory
from tests.support.daemon import PrivateDockerd
from tests.support.deploy_stacks import deploy, service, stack
from tests.support.hostenv import REPO_ROOT
from tests.support.hub import FakeHub
from tests.support.registry import LocalRegistry

#: family -> the modules only its commands need
LAZY = {
    "deploy": ("actors.deploy.runner", "actors.deploy.progress", "actors.deploy.classify"),
    "update": (
        "actors.flows.container_update",
        "actors.flows.update_config",
        "actors.flows.pull_progress",
    ),
    "self-update": ("actors.flows.self_update",),
}

#: the agent, with a thread that answers each line on stdin with the agent modules it holds
CHILD = """
import json, sys, threading
import agent_cli

def answer():
    for _ in sys.stdin:
        names = sorted(n for n in list(sys.modules) if n.split(".")[0] in ("actors", "messages"))
        print(json.dumps(names), flush=True)

threading.Thread(target=answer, daemon=True).start()
sys.exit(agent_cli.main([]))
"""


class Agent:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def modules(self) -> set[str]:
        stdin, stdout = cast(IO[str], self.proc.stdin), cast(IO[str], self.proc.stdout)
        stdin.write("?\n")
        stdin.flush()
        line = stdout.readline()  # the pipe closes if the agent dies: "" fails the decode
        return set(json.loads(line))


@pytest.fixture
def agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[tuple[Agent, FakeHub]]:
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DOCKER")},
            "DOCKMON_URL": hub.url,
            "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
            "DATA_PATH": str(tmp_path / "data"),
            "DOCKER_HOST": dockerd.base_url,
            "LOG_JSON": "false",
            "PYTHONPATH": str(REPO_ROOT),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            hub.wait_registered(timeout=30)
            yield Agent(proc), hub
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        hub.assert_clean()


def _images(client: docker.DockerClient, base: str, registry: LocalRegistry) -> tuple[str, str]:
    """v1 and v2 (the base with a label each, so the shared base image gets no repo digest)
    pushed to the loopback registry."""
    repository = registry.repository("dockmon-lazy")
    for tag in ("v1", "v2"):
        dockerfile = f"FROM {base}\nLABEL org.dockmon.test.flavour=lazy-{tag}\n"
        client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=f"{repository}:{tag}",
            network_mode="none",
            rm=True,
            pull=False,
        )
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
    return f"{repository}:v1", f"{repository}:v2"


@pytest.mark.slow
def test_an_idle_agent_holds_no_family_code_until_its_first_command(
    agent: tuple[Agent, FakeHub],
    docker_client: docker.DockerClient,
    busybox_image: str,
    registry: LocalRegistry,
    make_container: ContainerFactory,
) -> None:
    process, hub = agent
    idle = process.modules()
    assert {"actors.deployer", "actors.updater", "actors.deploy.control"} <= idle  # running
    for family, modules in LAZY.items():
        assert idle.isdisjoint(modules), f"{family}: {sorted(idle & set(modules))}"

    result = deploy(hub, "lazy-stack", stack(web=service()))
    assert result["success"] is True, result
    after_deploy = process.modules()
    assert set(LAZY["deploy"]) <= after_deploy
    assert after_deploy.isdisjoint(LAZY["update"])
    assert deploy(hub, "lazy-stack", stack(web=service()), action="down")["success"] is True

    v1, v2 = _images(docker_client, busybox_image, registry)
    web = make_container(None, "dockmon-lazy-web", image=v1)
    assert web.id is not None
    reply = hub.command(
        "update_container", {"container_id": web.id[:12], "new_image": v2, "stop_timeout": 5}
    )
    assert reply.ok and reply.data == {"status": "update_started"}, reply
    done = hub.wait_event(lambda e: e["command"] == "update_complete", timeout=60)
    assert done["payload"]["old_container_id"] == web.id[:12]
    assert docker_client.api.inspect_container("dockmon-lazy-web")["Config"]["Image"] == v2
    assert set(LAZY["update"]) <= process.modules()
    assert process.modules().isdisjoint(LAZY["self-update"])  # never asked for
    docker_client.api.remove_container("dockmon-lazy-web", force=True)  # the agent's, not ours
