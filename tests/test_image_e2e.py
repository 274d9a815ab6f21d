"""The real agent image as a container: DockMon's own command, a root-owned volume, a denied
socket, the README's doctor example, host IPs from /host/proc; and a clean SIGTERM stop.

DockMon's README and UI generate (issue 9)::

    docker run -d --name dockmon-agent --restart unless-stopped \\
      -v /var/run/docker.sock:/var/run/docker.sock -v dockmon-agent-data:/data \\
      -e DOCKMON_URL=wss://... -e REGISTRATION_TOKEN=... <image>

Here the private daemon's socket is what is mounted at /var/run/docker.sock, with a group that
is neither 0 nor 1000 and mode 0660, as on a Debian host (root:docker); ``network_mode="host"``
is the one addition, so the agent reaches the hub on 127.0.0.1.

With ``DOCKMON_TEST_SAVE_LOGS=<file>`` the ``docker logs`` of the first run with DockMon's command
and of the run with a denied socket are appended to that file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import pytest
import yaml

from tests.support.agent_harness import REGISTRATION_TOKEN
from tests.support.containers import ContainerFactory, wait_for_exit
from tests.support.daemon import PrivateDockerd
from tests.support.hostenv import REPO_ROOT
from tests.support.hub import FakeHub
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

SOCKET_GID = 2375  # like a host's "docker" group: neither root's nor the agent's
SOCKET = "/var/run/docker.sock"


def save_logs(title: str, container: Any, healthcheck: str = "") -> None:
    target = os.environ.get("DOCKMON_TEST_SAVE_LOGS")
    if not target:
        return
    logs = container.logs().decode("utf-8", "replace")
    with open(target, "a", encoding="utf-8") as f:
        f.write(f"===== {title}\n$ docker logs {container.name}\n{logs}\n")
        if healthcheck:
            f.write(f"$ docker exec {container.name} dockmon-agent healthcheck\n{healthcheck}\n\n")


def exec_in(container: Any, command: list[str], user: str = "") -> tuple[int, str]:
    result = container.exec_run(command, user=user)
    return int(result.exit_code), cast(bytes, result.output).decode("utf-8", "replace").strip()


def process_status(container: Any) -> dict[str, str]:
    """/proc/1/status of the container: PID 1 is the agent (exec-form ENTRYPOINT)."""
    code, out = exec_in(container, ["cat", "/proc/1/status"])
    assert code == 0, out
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


@pytest.fixture
def dockmon_socket(dockerd: PrivateDockerd) -> Iterator[str]:
    """The private daemon's socket as a Debian host has its own: root:<docker gid> 0660."""
    before = os.stat(dockerd.socket_path)
    os.chown(dockerd.socket_path, 0, SOCKET_GID)
    os.chmod(dockerd.socket_path, 0o660)
    yield dockerd.socket_path
    if os.path.exists(dockerd.socket_path):
        os.chown(dockerd.socket_path, before.st_uid, before.st_gid)
        os.chmod(dockerd.socket_path, stat.S_IMODE(before.st_mode))


@pytest.fixture
def volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A fresh named volume for /data, like dockmon-agent-data on a new host."""
    made = docker_client.volumes.create(labels={"dockmon-test": "1"})
    yield str(made.name)
    # the factory removes its containers only after this teardown: remove the users first
    for user in docker_client.containers.list(all=True, filters={"volume": str(made.name)}):
        with contextlib.suppress(docker.errors.NotFound):
            user.remove(force=True, v=True)
    made.remove(force=True)


def dockmon_run(
    make_agent_container: ContainerFactory,
    hub: FakeHub,
    socket: str,
    volume: str,
    *,
    mounts: dict[str, dict[str, str]] | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    """DockMon's command: the socket, the volume, two variables, unless-stopped. Nothing else.

    (``mounts``, ``env`` and ``extra`` are for the variants that say what they add.)
    """
    return make_agent_container(
        None,
        network_mode="host",  # the only addition: the hub is on 127.0.0.1
        restart_policy={"Name": "unless-stopped"},
        environment={
            "DOCKMON_URL": hub.url,
            "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
            **(env or {}),
        },
        volumes={
            socket: {"bind": SOCKET, "mode": "rw"},
            volume: {"bind": "/data", "mode": "rw"},
            **(mounts or {}),
        },
        **extra,
    )


def test_dockmons_own_docker_run_registers_and_runs_as_uid_1000_with_the_sockets_group(
    make_agent_container: ContainerFactory,
    dockmon_socket: str,
    volume: str,
    docker_client: docker.DockerClient,
    agent_image: str,
) -> None:
    assert docker_client.api.inspect_image(agent_image)["Config"]["User"] in ("", None)
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        agent = dockmon_run(make_agent_container, hub, dockmon_socket, volume)
        record = hub.wait_registered(timeout=60)
        status = process_status(agent)
        assert status["Uid"].split() == ["1000"] * 4, status["Uid"]
        assert status["Gid"].split() == ["1000"] * 4, status["Gid"]
        assert str(SOCKET_GID) in status["Groups"].split() and "0" not in status["Groups"].split()
        assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
        assert exec_in(agent, ["stat", "-c", "%a %u", "/data/permanent_token"]) == (0, "600 1000")
        assert hub.command("list_containers").ok  # the socket works as uid 1000
        wait_for(  # status.json is rewritten at most once a second
            lambda: (
                exec_in(agent, ["dockmon-agent", "healthcheck"])
                == (0, "healthy: registered with DockMon")
            ),
            10,
            "healthcheck to say registered",
        )
        logs = agent.logs().decode()
        assert f"now running as uid 1000, gid 1000, groups {SOCKET_GID}" in logs
        assert REGISTRATION_TOKEN not in logs and record.agent_id not in logs
        hub.assert_clean()
        save_logs("(a) first run with DockMon's own docker run command: registered", agent)


def test_a_root_owned_data_volume_is_repaired_and_its_token_reused(
    make_agent_container: ContainerFactory,
    make_container: ContainerFactory,
    dockmon_socket: str,
    volume: str,
) -> None:
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        first = dockmon_run(make_agent_container, hub, dockmon_socket, volume)
        record = hub.wait_registered(timeout=60)
        wait_for(
            lambda: exec_in(first, ["test", "-s", "/data/permanent_token"])[0] == 0,
            10,
            "the token in the volume",
        )
        first.remove(force=True)
        # The volume is then used by root (another image, a restore, a manual fix...): every
        # file root's, plus links that point out of /data.
        script = (
            "set -e; mkdir -p /data/stacks/web; echo 'services: {}' > /data/stacks/web/c.yaml; "
            "ln -s /etc/passwd /data/passwd-link; ln -s /opt /data/opt-link; "
            "chown -R 0:0 /data; chmod 0600 /data/permanent_token; chmod 0700 /data"
        )
        root_user = make_container(
            ["sh", "-c", script], volumes={volume: {"bind": "/data", "mode": "rw"}}
        )
        assert wait_for_exit(root_user, 30)[0] == 0
        again = dockmon_run(make_agent_container, hub, dockmon_socket, volume)
        hub.wait_registered(count=2, timeout=60)
        assert hub.registrations[-1]["token"] == record.agent_id  # the identity it had
        assert len(hub.agents) == 1
        for path in ("/data", "/data/permanent_token", "/data/stacks/web/c.yaml"):
            assert exec_in(again, ["stat", "-c", "%u", path]) == (0, "1000"), path
        for link in ("/data/passwd-link", "/data/opt-link"):  # the links themselves...
            assert exec_in(again, ["stat", "-c", "%u", link]) == (0, "1000"), link
        for target in ("/etc/passwd", "/opt", "/opt/dockmon-agent/bin/python3"):  # ...not targets
            assert exec_in(again, ["stat", "-c", "%u", target]) == (0, "0"), target
        assert "entries now belong to uid 1000" in again.logs().decode()
        hub.assert_clean()


def _log_entries(container: Any) -> list[dict[str, Any]]:
    entries = []
    for line in container.logs().decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _wait_unhealthy(agent: Any) -> str:
    started = time.monotonic()
    outputs: list[str] = []

    def unhealthy() -> bool:
        code, out = exec_in(agent, ["dockmon-agent", "healthcheck"])
        outputs.append(out)
        return code == 1 and "Docker is unreachable" in out

    wait_for(unhealthy, 60, "healthcheck to fail because of the socket")
    assert time.monotonic() - started < 60
    return outputs[-1]


def test_a_denied_socket_is_loud_once_and_unhealthy_within_a_minute(
    make_agent_container: ContainerFactory, dockmon_socket: str, volume: str
) -> None:
    """--user 1000 without --group-add: the socket's group is out of reach."""
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        agent = dockmon_run(make_agent_container, hub, dockmon_socket, volume, user="1000")
        out = _wait_unhealthy(agent)
        assert f"permission denied on the socket {SOCKET}" in out
        logs = agent.logs().decode()
        [line] = [ln for ln in logs.splitlines() if "permission denied on the socket" in ln]
        assert "the agent runs as uid 1000, gid 1000, groups" in line
        assert f"group {SOCKET_GID}, mode 0660" in line
        assert f"--group-add $(stat -c %g {SOCKET})" in line and "group_add" in line
        save_logs("(b) the same command with --user 1000 and no --group-add: denied", agent, out)
        agent.stop(timeout=10)  # one agent per /data

        # Once, then at a backoff: at debug level every repeat shows, at error level one line.
        chatty = dockmon_run(
            make_agent_container,
            hub,
            dockmon_socket,
            volume,
            user="1000",
            env={"LOG_LEVEL": "debug"},
        )
        wait_for(
            lambda: (
                sum(
                    e["level"] == "debug" and "connection attempt failed" in e["message"]
                    for e in _log_entries(chatty)
                )
                >= 4
            ),
            60,
            "four repeated registration attempts",
        )
        entries = [e for e in _log_entries(chatty) if e["level"] in ("warning", "error")]
        explained = [e for e in entries if "permission denied on the socket" in e["message"]]
        assert len(explained) == 1, explained
        attempts = [e for e in entries if "connection attempt failed" in e["message"]]
        assert len(attempts) == 1, attempts
        assert hub.registrations == []


def test_the_readme_doctor_example_works_as_written(
    make_agent_container: ContainerFactory, dockmon_socket: str, volume: str, tmp_path: Path
) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    example = (
        "docker run --rm --env-file agent.env -v /var/run/docker.sock:/var/run/docker.sock "
        "-v dockmon-agent-data:/data dockmon-agent doctor"
    )
    assert example in readme
    with FakeHub() as hub:
        env_file = tmp_path / "agent.env"
        env_file.write_text(f"DOCKMON_URL={hub.url}\nREGISTRATION_TOKEN={REGISTRATION_TOKEN}\n")
        environment = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        doctor = make_agent_container(
            ["doctor"],
            network_mode="host",  # the hub is on 127.0.0.1
            environment=environment,
            volumes={
                dockmon_socket: {"bind": SOCKET, "mode": "rw"},
                volume: {"bind": "/data", "mode": "rw"},
            },
        )
        code, out = wait_for_exit(doctor, 120)
        assert code == 0, out
        assert re.search(r"^OK\s+docker\s", out, re.M), out
        assert "FAIL" not in out
        assert hub.registrations == []  # doctor never registers


def _host_addresses() -> list[str]:
    """Every IPv4 address of this host per ``ip`` (what /proc/1/net/fib_trie lists as LOCAL)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line.split()[3].split("/")[0]
        for line in out.splitlines()
        if not line.split()[3].startswith(("127.", "169.254."))
    ]


TEST_NETWORKS = ipaddress.ip_network("198.18.0.0/15")


def stable(ips: list[str]) -> list[str]:
    return [ip for ip in ips if ipaddress.ip_address(ip) not in TEST_NETWORKS]


def test_in_a_container_host_ips_come_from_host_proc(
    make_agent_container: ContainerFactory,
    dockmon_socket: str,
    volume: str,
    docker_client: docker.DockerClient,
) -> None:
    subnets = [
        c["Subnet"]
        for n in docker_client.api.networks()
        for c in ((n.get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet")
    ]
    expected = [
        ip
        for ip in _host_addresses()
        if not any(ipaddress.ip_address(ip) in ipaddress.ip_network(s) for s in subnets)
    ]
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        dockmon_run(  # plus host /proc, the optional mount for host metrics and IPs
            make_agent_container,
            hub,
            dockmon_socket,
            volume,
            mounts={"/proc": {"bind": "/host/proc", "mode": "ro"}},
        )
        record = hub.wait_registered(timeout=60)
        frame = hub.registrations[0]
        assert frame["capabilities"]["self_update"] is False  # no SELF_UPDATE_IMAGE
        # Test networks of other sessions' daemons (all in 198.18.0.0/15) come and go on this
        # host: compare the rest, which no test touches.
        got = frame.get("host_ips", [])
        assert stable(got) == stable(list(dict.fromkeys(expected)))
        assert set(stable(got)) <= set(_host_addresses())
        if got:
            assert frame["host_ip"] == got[0] and record.host_ips == tuple(got)
        hub.assert_clean()


def test_agent_container_stops_cleanly_on_sigterm(
    make_agent_container: ContainerFactory, dockmon_socket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()  # root's, as a host bind mount usually is: the agent takes it
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        agent = make_agent_container(
            None,
            network_mode="host",
            environment={
                "DOCKMON_URL": hub.url,
                "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
                "LOG_JSON": "false",
            },
            volumes={
                dockmon_socket: {"bind": SOCKET, "mode": "rw"},
                str(data): {"bind": "/data", "mode": "rw"},
            },
        )
        record = hub.wait_registered(timeout=60)
        assert record.register is not None
        capabilities = record.register["capabilities"]  # the compose binary ran in the image
        assert capabilities["compose_deployments"] is True
        assert capabilities["multi_env_files"] is True
        token_file = data / "permanent_token"
        wait_for(token_file.exists, 10, "the token file in the /data volume")
        assert token_file.read_text() == record.agent_id
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.stat().st_uid == 1000

        listed = hub.command("list_containers")
        agent_id = agent.id
        assert agent_id is not None
        assert agent_id in {c["Id"] for c in listed.data}

        # the agent knows its own container and refuses to stop it through the backend
        refused = hub.container_op("stop", agent_id[:12])
        assert not refused.ok and "agent's own container" in (refused.error or "")
        assert refused.error_type == "permission_denied"
        assert hub.container_op("inspect", agent_id[:12]).ok

        started = time.monotonic()
        agent.stop(timeout=15)
        elapsed = time.monotonic() - started
        agent.reload()
        assert agent.attrs["State"]["ExitCode"] == 0, agent.logs().decode()[-2000:]
        assert elapsed < 10
        logs = agent.logs().decode()
        assert "received SIGTERM" in logs
        assert REGISTRATION_TOKEN not in logs and record.agent_id not in logs
        status = (data / "status.json").read_text()
        assert '"stopped": true' in status and "received SIGTERM" in status
        hub.assert_clean()


def _uncommented_user_variant(text: str) -> str:
    """The compose file with its commented "uid 1000 from the start" lines switched on."""
    return re.sub(r"^    # (user: .*|group_add:|  - .*DOCKER_GID.*)$", r"    \1", text, flags=re.M)


@pytest.mark.parametrize("variant", ["as written", "user and group_add uncommented"])
def test_agent_runs_with_the_compose_settings(
    make_agent_container: ContainerFactory,
    dockmon_socket: str,
    volume: str,
    docker_client: docker.DockerClient,
    variant: str,
) -> None:
    """deploy/docker-compose.yml's settings, as far as the private dockerd allows them."""
    text = (REPO_ROOT / "deploy" / "docker-compose.yml").read_text()
    if variant != "as written":
        text = _uncommented_user_variant(text).replace(
            '"${DOCKER_GID:?set DOCKER_GID=$(stat -c %g /var/run/docker.sock)}"', str(SOCKET_GID)
        )
    spec = yaml.safe_load(text)["services"]["agent"]
    if variant != "as written":
        assert spec["user"] == "1000:1000" and spec["group_add"] == [SOCKET_GID]
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        agent = make_agent_container(  # removed by the factory after the test
            None,
            network_mode="host",  # reaches the hub on 127.0.0.1 only
            restart_policy={"Name": spec["restart"]},
            user=spec.get("user"),  # none: the entrypoint finds the socket's group itself
            group_add=[str(g) for g in spec.get("group_add") or []] or None,
            environment={"DOCKMON_URL": hub.url, "REGISTRATION_TOKEN": REGISTRATION_TOKEN},
            volumes={
                dockmon_socket: {"bind": SOCKET, "mode": "rw"},
                volume: {"bind": "/data", "mode": "rw"},
            },
            healthcheck={  # the compose test command, at a test-friendly pace
                "test": spec["healthcheck"]["test"],
                "interval": 500_000_000,
                "retries": 3,
            },
        )
        cid = str(agent.id)
        hub.wait_registered(timeout=60)
        assert process_status(agent)["Uid"].split()[0] == "1000"
        wait_for(
            lambda: (
                docker_client.api.inspect_container(cid)["State"].get("Health", {}).get("Status")
                == "healthy"
            ),
            30,
            "the container to turn healthy",
        )
        assert exec_in(agent, ["stat", "-c", "%a %u", "/data/permanent_token"]) == (0, "600 1000")
        assert hub.command("list_containers").ok
        hub.assert_clean()


def test_agent_container_deploys_a_stack_with_relative_binds(
    make_agent_container: ContainerFactory,
    dockmon_socket: str,
    docker_client: docker.DockerClient,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """In a container, compose sees the stacks directory under /data; the daemon needs the host
    path, found from the agent container's own mounts (no HOST_STACKS_DIR set)."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    compose = yaml.safe_dump(
        {
            "services": {
                "web": {
                    "image": busybox_image,
                    "command": ["sleep", "3600"],
                    "init": True,
                    "network_mode": "none",
                    "labels": {"dockmon-test": "1"},
                    "volumes": ["./files:/files:ro"],
                }
            }
        }
    )
    with FakeHub() as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        make_agent_container(
            None,
            network_mode="host",  # reaches the hub on 127.0.0.1 only
            environment={"DOCKMON_URL": hub.url, "REGISTRATION_TOKEN": REGISTRATION_TOKEN},
            volumes={
                dockmon_socket: {"bind": SOCKET, "mode": "rw"},
                str(data): {"bind": "/data", "mode": "rw"},
            },
        )
        hub.wait_registered(timeout=60)
        ack, deployment_id = hub.deploy("inside", compose)
        assert ack.ok, ack
        result = hub.wait_deploy_complete(deployment_id, timeout=120)
        assert result["success"] is True, result
        (web,) = docker_client.containers.list(
            filters={"label": "com.docker.compose.project=inside"}
        )
        (mount,) = [m for m in web.attrs["Mounts"] if m["Destination"] == "/files"]
        assert mount["Source"] == str(data / "stacks" / "inside" / "files")
        assert web.labels["com.docker.compose.project.working_dir"] == "/data/stacks/inside"
        (data / "stacks" / "inside" / "files" / "hello").write_text("host side")
        assert web.exec_run(["cat", "/files/hello"]).output == b"host side"
        down, down_id = hub.deploy("inside", compose, action="down")
        assert down.ok and hub.wait_deploy_complete(down_id)["success"] is True
        hub.assert_clean()


#: every .py file the dockmon-agent distribution installed whose bytecode is not beside it
_MISSING_BYTECODE = """
import importlib.metadata, importlib.util, os
files = importlib.metadata.files("dockmon-agent") or []
sources = [str(f.locate()) for f in files if str(f).endswith(".py")]
missing = [s for s in sources if not os.path.exists(importlib.util.cache_from_source(s))]
print(len(sources), *missing)
"""


def test_the_image_ships_bytecode_for_every_agent_module(
    docker_client: docker.DockerClient, agent_image: str
) -> None:
    """PYTHONDONTWRITEBYTECODE=1 in the image: a module without its .pyc would be compiled again
    by every run, the 30-second healthcheck included (bench/run.py measures with bytecode)."""
    out = docker_client.containers.run(
        agent_image,
        entrypoint=["python", "-c", _MISSING_BYTECODE],
        network_mode="none",
        user="1000",
        remove=True,
    )
    count, *missing = out.decode().split()
    assert int(count) > 50 and missing == []
