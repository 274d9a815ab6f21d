"""End to end: the real agent (in-process supervisor) + strict FakeHub + private dockerd."""

from __future__ import annotations

import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from messages.roles import Role
from tests.support.agent_harness import REGISTRATION_TOKEN, RunningAgent, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.waiting import wait_for

# sh as PID 1 with a TERM trap: stops at once. Plain `sleep` as PID 1 ignores SIGTERM.
GRACEFUL = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
STUBBORN = ["sleep", "3600"]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")


@pytest.fixture
def agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    with running_agent(tmp_path / "data", dockerd.base_url) as running:
        running.hub.wait_registered()
        wait_for(running.token_file.exists, 10, "the agent to persist its permanent token")
        yield running
        running.hub.assert_clean()


def test_first_registration_persists_the_token_and_reconnects_use_it(agent: RunningAgent) -> None:
    hub = agent.hub
    record = hub.wait_registered()
    assert hub.registrations[0]["token"] == REGISTRATION_TOKEN
    assert hub.registrations[0]["version"] == "0.1.0-python"
    assert stat.S_IMODE(agent.token_file.stat().st_mode) == 0o600
    assert agent.token_file.read_text() == record.agent_id
    hub.drop()
    hub.wait_registered(count=2)
    assert hub.registrations[-1]["token"] == record.agent_id
    assert len(hub.agents) == 1


def test_every_container_action_on_a_real_container(
    agent: RunningAgent, make_container: Any
) -> None:
    hub = agent.hub
    c = make_container(GRACEFUL)
    short = c.id[:12]

    inspect = hub.container_op("inspect", short)
    assert inspect.ok and inspect.data["container"]["Id"] == c.id

    stop = hub.container_op("stop", short, timeout=5)
    assert stop.ok and stop.data["status"] == "stopped"
    c.reload()
    assert c.status == "exited"

    assert hub.container_op("start", short).data["status"] == "started"
    c.reload()
    assert c.status == "running"

    assert hub.container_op("restart", short).data["status"] == "restarted"
    assert hub.container_op("kill", short).data["status"] == "killed"
    c.reload()
    assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 137

    new_name = f"renamed-{short}"
    assert hub.container_op("rename", short, new_name=new_name).data["status"] == "renamed"
    c.reload()
    assert c.name == new_name

    removed = hub.container_op("remove", short, force=True)
    assert removed.ok and removed.data["removed"] is True
    with pytest.raises(docker.errors.NotFound):
        c.reload()


def test_failures_keep_dockers_wording(agent: RunningAgent) -> None:
    missing = agent.hub.container_op("stop", "doesnotexist0")
    assert not missing.ok
    assert missing.error is not None
    assert missing.error.startswith("failed to stop container: Error response from daemon: ")
    assert "No such container: doesnotexist0" in missing.error
    assert missing.raw["success"] is False


def test_get_logs_has_timestamps_and_puts_stdout_before_stderr(
    agent: RunningAgent, make_container: Any
) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; sleep 3600"
    c = make_container(["sh", "-c", script])
    agent.hub.wait_event(
        lambda e: e["payload"]["container_id"] == c.id and e["payload"]["action"] == "start"
    )
    logs = ""
    for _ in range(50):  # output is asynchronous to the start event
        logs = agent.hub.container_op("get_logs", c.id[:12], tail=100).data["logs"]
        if logs.count("\n") >= 4:
            break
        threading.Event().wait(0.1)
    lines = logs.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["out1", "out2", "err1", "err2"]
    assert all(TS.match(line) for line in lines)
    tail = agent.hub.container_op("get_logs", c.id[:12], tail=1).data["logs"]
    assert tail.count("\n") == 1


def test_list_containers_is_dockers_summary_plus_extras(
    agent: RunningAgent, make_container: Any, docker_client: docker.DockerClient
) -> None:
    running = make_container(GRACEFUL, environment={"GREETING": "a=b"})
    created = make_container(GRACEFUL, start=False)
    result = agent.hub.command("list_containers")
    assert result.ok and isinstance(result.data, list)
    by_id = {c["Id"]: c for c in result.data}
    assert set(by_id) == {c.id for c in docker_client.containers.list(all=True)}
    r = by_id[running.id]
    assert r["Names"] == [f"/{running.name}"] and r["State"] == "running"
    assert r["RepoDigests"] == []
    assert r["Env"]["GREETING"] == "a=b"
    assert r["StartedAt"] == running.attrs["State"]["StartedAt"]
    assert "StartedAt" not in by_id[created.id]  # never started: no zero time
    assert isinstance(r["Created"], int) and "Ports" in r and "Mounts" in r


def test_events_for_start_die_destroy_arrive_once_in_order(
    agent: RunningAgent, make_container: Any
) -> None:
    c = make_container(GRACEFUL)
    c.kill()
    c.remove(force=True)
    hub = agent.hub
    hub.wait_event(
        lambda e: e["payload"]["container_id"] == c.id and e["payload"]["action"] == "destroy"
    )
    actions = [e["action"] for e in hub.container_events() if e["container_id"] == c.id]
    assert actions[0] == "create"
    for expected in ("start", "die", "destroy"):
        assert actions.count(expected) == 1
    assert actions.index("start") < actions.index("die") < actions.index("destroy")
    die = next(
        e for e in hub.container_events() if e["container_id"] == c.id and e["action"] == "die"
    )
    assert die["attributes"]["exitCode"] == "137" and die["container_name"] == c.name


def test_a_slow_stop_holds_up_neither_listing_nor_other_containers(
    agent: RunningAgent, make_container: Any
) -> None:
    hub = agent.hub
    slow = make_container(STUBBORN)
    other = make_container(GRACEFUL)
    started = time.monotonic()
    stop_id = hub.send_container_operation("stop", slow.id[:12], timeout=10)
    same_after = hub.send_container_operation("inspect", slow.id[:12])
    listed = hub.command("list_containers", timeout=5)
    inspected = hub.container_op("inspect", other.id[:12], timeout=5)
    others_done = time.monotonic() - started
    assert listed.ok and inspected.ok
    stop = hub.wait_response(stop_id, timeout=30)
    stop_done = time.monotonic() - started
    assert stop.ok
    # sleep as PID 1 ignores SIGTERM, so the stop really took its 10 s timeout, and the
    # listing and the other container's inspect were answered long before it ended.
    assert stop_done >= 9.5
    assert others_done < stop_done - 5
    # per-container order: the inspect queued behind the stop sees the stopped container
    after = hub.wait_response(same_after, timeout=30)
    assert after.data["container"]["State"]["Running"] is False


def test_hub_drop_reconnects_with_backoff_and_the_operation_still_completes(
    agent: RunningAgent, make_container: Any
) -> None:
    hub = agent.hub
    slow = make_container(STUBBORN)
    request = hub.send_container_operation("stop", slow.id[:12], timeout=3)
    hub.refuse(True)
    hub.drop()
    hub.wait_disconnected()
    wait_for(lambda: agent.supervisor.peers.get(Role.CONNECTION) is not None, 1, "connection")
    hub.refuse(False)
    hub.wait_registered(count=2, timeout=15)
    reply = hub.wait_response(request, timeout=30)
    assert reply.ok and reply.data["status"] == "stopped"


@pytest.mark.parametrize("role", [Role.DOCKER_GATEWAY, Role.CONNECTION, Role.EVENT_STREAMER])
def test_a_crashed_actor_is_restarted_and_the_agent_keeps_serving(
    agent: RunningAgent, role: Role, make_container: Any
) -> None:
    before = agent.supervisor.peers.get(role)
    agent.crash(role)
    wait_for(lambda: agent.supervisor.peers.get(role) not in (None, before), 10, "a restart")
    if role is Role.CONNECTION:
        agent.hub.wait_registered(count=2)
    c = make_container(GRACEFUL)
    assert agent.hub.container_op("inspect", c.id[:12]).ok
    agent.hub.wait_event(
        lambda e: e["payload"]["container_id"] == c.id and e["payload"]["action"] == "start"
    )
    assert agent.supervisor.exit_code is None


def test_malformed_frames_are_answered_or_ignored_and_the_link_survives(
    agent: RunningAgent,
) -> None:
    hub = agent.hub
    for junk in ["{not json", "[1, 2]", '"text"', '{"type": "mystery"}', '{"no_type": 1}']:
        hub.send_raw(junk)
    hub.send_raw(b"\x00\x01binary")
    unknown = hub.command("frobnicate", {})
    assert unknown.error == "unknown command: frobnicate"
    bad_action = hub.container_op("pause", "abc")
    assert bad_action.error == "unknown action: pause"
    hub.send_raw('{"type":"container_operation","id":"m1","correlation_id":"m1","payload":"oops"}')
    bad_payload = hub.wait_response("m1", timeout=5)
    assert not bad_payload.ok and "payload must be an object" in (bad_payload.error or "")
    hub.send_raw(
        '{"type":"container_operation","id":"m2","correlation_id":"m2",'
        '"payload":{"action":"stop","container_id":"abc","timeout":"ten"}}'
    )
    wrong_type = hub.wait_response("m2", timeout=5)
    assert "timeout must be a number" in (wrong_type.error or "")
    assert hub.command("list_containers").ok
    assert hub.connection_count == 1


def test_event_stream_survives_a_dockerd_restart(
    agent: RunningAgent, dockerd: PrivateDockerd, make_container: Any
) -> None:
    hub = agent.hub
    first = make_container(GRACEFUL)
    hub.wait_event(
        lambda e: e["payload"]["container_id"] == first.id and e["payload"]["action"] == "start"
    )
    dockerd.restart()
    after = make_container(GRACEFUL)
    hub.wait_event(
        lambda e: e["payload"]["container_id"] == after.id and e["payload"]["action"] == "start",
        timeout=30,
    )
    keys = [
        (e["container_id"], e["action"], e["timestamp"], tuple(sorted(e["attributes"].items())))
        for e in hub.container_events()
    ]
    assert len(keys) == len(set(keys)), "an event was forwarded twice"
    assert hub.command("list_containers").ok


def test_missing_docker_socket_is_a_clear_error_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    socket = f"unix://{tmp_path}/missing.sock"
    with running_agent(tmp_path / "data", socket) as running:
        wait_for(
            lambda: "Cannot connect to the Docker daemon" in caplog.text, 10, "the Docker error"
        )
        assert "connection attempt failed: cannot register without Docker's engine id" in (
            caplog.text
        )
        assert running.hub.registrations == []
        assert running.supervisor.exit_code is None


def test_events_survive_event_streamer_crashes_exactly_once(
    agent: RunningAgent, make_container: Any, docker_client: docker.DockerClient
) -> None:
    """Compare with a raw docker-py listener over the same interval: same events, once each."""
    since = int(time.time()) - 1
    made = []
    for round_ in range(4):
        made.append(make_container(GRACEFUL))
        agent.crash(Role.EVENT_STREAMER)
        made[-1].kill()
        made.append(make_container(GRACEFUL, start=round_ % 2 == 0))
    last = made[-1]
    last.remove(force=True)
    agent.hub.wait_event(
        lambda e: e["payload"]["container_id"] == last.id and e["payload"]["action"] == "destroy",
        timeout=30,
    )
    ids = {c.id for c in made}
    raw = docker_client.api.events(
        since=since, until=int(time.time()) + 1, filters={"type": ["container"]}, decode=True
    )
    expected = sorted(
        (e["Actor"]["ID"], e["Action"], e["timeNano"]) for e in raw if e["Actor"]["ID"] in ids
    )
    got = [
        (e["container_id"], e["action"])
        for e in agent.hub.container_events()
        if e["container_id"] in ids
    ]
    assert sorted(got) == sorted((cid, action) for cid, action, _ in expected)
    assert len(expected) >= 4 * 5
