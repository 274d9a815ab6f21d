"""The agent-side policy (read-only, allow/deny, protected containers) and the audit log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.rules.policy import Policy, parse_policy
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.waiting import wait_for

GRACEFUL = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def test_check_table() -> None:
    ro = Policy(read_only=True)
    assert ro.check("list_containers") is None and ro.check("inspect") is None
    assert "read_only" in (ro.check("stop") or "")
    assert "read_only" in (ro.check("shell_session") or "")
    assert Policy(read_only=True, allow=frozenset({"restart"})).check("restart") is None
    deny = Policy(deny=frozenset({"remove"}))
    assert "policy.deny" in (deny.check("remove") or "") and deny.check("stop") is None
    allow = Policy(allow=frozenset({"list_containers"}))
    assert "not in policy.allow" in (allow.check("stop") or "")


def test_protected_containers() -> None:
    p = Policy(protected_names=("db-*",), protected_labels=(("keep", None), ("tier", "prod")))
    assert "db-*" in (p.check_container("stop", "/db-main", {}) or "")
    assert p.check_container("inspect", "/db-main", {}) is None  # looking is fine
    assert "keep" in (p.check_container("remove", "/x", {"keep": ""}) or "")
    assert "tier=prod" in (p.check_container("update_container", "/x", {"tier": "prod"}) or "")
    assert p.check_container("stop", "/x", {"tier": "dev"}) is None


def test_parse_policy_defaults_and_problems() -> None:
    problems: list[str] = []
    assert parse_policy(None, "f", problems) == Policy() and problems == []
    parse_policy({"allow": [1], "protected_containers": []}, "f", problems)
    assert any("policy.allow" in p for p in problems)
    assert any("protected_containers must be a mapping" in p for p in problems)


def policy_agent(tmp_path: Path, dockerd: PrivateDockerd, policy: str) -> Any:
    config = tmp_path / "agent.yaml"
    config.write_text(f"policy:\n{policy}")
    return running_agent(tmp_path / "data", dockerd.base_url, DOCKMON_CONFIG=str(config))


@pytest.fixture
def read_only_agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    with policy_agent(tmp_path, dockerd, "  read_only: true\n") as agent:
        agent.hub.wait_registered()
        yield agent


def audit_lines(agent: RunningAgent) -> list[dict[str, Any]]:
    path = Path(agent.config.data_path) / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_read_only_refuses_every_change_in_band(
    read_only_agent: RunningAgent, make_container: Any
) -> None:
    hub = read_only_agent.hub
    c = make_container(GRACEFUL)
    assert hub.command("list_containers").ok
    assert hub.container_op("inspect", c.id[:12]).ok
    stop = hub.container_op("stop", c.id[:12])
    assert not stop.ok and stop.error_type == "permission_denied"
    assert stop.error == "denied by the agent's policy: read_only is set and stop changes the host"
    c.reload()
    assert c.status == "running"


@pytest.mark.parametrize(
    ("operation", "send"),
    [
        ("remove", lambda h: h.send_container_operation("remove", "abc", force=True)),
        ("list_images", lambda h: h.send_command("list_images", {})),
        ("create_network", lambda h: h.send_command("create_network", {"name": "n"})),
        ("delete_volume", lambda h: h.send_command("delete_volume", {"volume_name": "v"})),
        ("scan_compose_dirs", lambda h: h.send_command("scan_compose_dirs", {})),
        ("update_container", lambda h: h.send_command("update_container", {"container_id": "a"})),
        ("self_update", lambda h: h.send_command("self_update", {"image": "x"})),
    ],
)
def test_deny_list_covers_every_request_family(
    tmp_path: Path, dockerd: PrivateDockerd, operation: str, send: Any
) -> None:
    with policy_agent(tmp_path, dockerd, f"  deny: [{operation}]\n") as agent:
        agent.hub.wait_registered()
        reply = agent.hub.wait_response(send(agent.hub), timeout=10)
        assert not reply.ok and reply.error_type == "permission_denied"
        assert reply.error == f"denied by the agent's policy: {operation} is in policy.deny"
        assert agent.hub.command("list_containers").ok
        agent.hub.assert_clean()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "shell_session", "payload": {"action": "start", "container_id": "abc",
                                              "session_id": "s1"}},
        {"type": "health_check_configs_sync", "payload": {"configs": []}},
    ],
)  # fmt: skip
def test_fire_and_forget_requests_are_dropped_and_audited(
    tmp_path: Path, dockerd: PrivateDockerd, frame: dict[str, Any]
) -> None:
    operation = frame["type"]
    with policy_agent(tmp_path, dockerd, f"  deny: [{operation}]\n") as agent:
        agent.hub.wait_registered()
        agent.hub.send_raw(json.dumps(frame))
        wait_for(lambda: any(x["operation"] == operation for x in audit_lines(agent)), 5, "audit")
        (line,) = [x for x in audit_lines(agent) if x["operation"] == operation]
        assert line["result"].startswith("denied: ")
        assert not [e for e in agent.hub.events if e["command"] == "shell_data"]
        agent.hub.assert_clean()


def test_protected_containers_can_be_read_but_not_changed(
    tmp_path: Path, dockerd: PrivateDockerd, make_container: Any
) -> None:
    policy = "  protected_containers:\n    names: ['keep-*']\n    labels: ['tier=prod']\n"
    with policy_agent(tmp_path, dockerd, policy) as agent:
        hub = agent.hub
        hub.wait_registered()
        by_name = make_container(GRACEFUL, name="keep-db")
        by_label = make_container(GRACEFUL, labels={"tier": "prod"})
        free = make_container(GRACEFUL, labels={"tier": "dev"})
        for c, why in ((by_name, "protected name 'keep-*'"), (by_label, "label tier=prod")):
            refused = hub.container_op("kill", c.id[:12])
            assert not refused.ok and why in (refused.error or "")
            assert refused.error_type == "permission_denied"
            assert hub.container_op("inspect", c.id[:12]).ok
        assert hub.container_op("kill", free.id[:12]).ok
        by_name.reload()
        assert by_name.status == "running"


def test_audit_log_has_one_line_per_request_without_secrets(
    tmp_path: Path, dockerd: PrivateDockerd, make_container: Any
) -> None:
    with policy_agent(tmp_path, dockerd, "  deny: [remove]\n") as agent:
        hub = agent.hub
        hub.wait_registered()
        c = make_container(GRACEFUL, environment={"DB_PASSWORD": "hunter2-secret"})
        assert hub.command("list_containers").ok
        assert hub.container_op("inspect", c.id[:12]).ok
        assert not hub.container_op("remove", c.id[:12]).ok
        assert not hub.container_op("stop", "nosuchcontainer").ok
        hub.command("frobnicate")
        request = {"container_id": c.id[:12], "new_image": "x:1",
                   "registry_auth": {"username": "u", "password": "registry-pw-123"}}  # fmt: skip
        hub.send_command("update_container", request)
        wait_for(lambda: len(audit_lines(agent)) >= 6, 10, "six audit lines")
        lines = audit_lines(agent)
    results = {(x["operation"], x["result"].split(":")[0]) for x in lines}
    assert {
        ("list_containers", "ok"),
        ("inspect", "ok"),
        ("remove", "denied"),
        ("stop", "error"),
        ("frobnicate", "rejected"),
    } <= results
    assert all(x["who"] == f"dockmon@127.0.0.1:{hub.port}" for x in lines)
    assert next(x for x in lines if x["operation"] == "inspect")["target"] == c.id[:12]
    text = (Path(agent.config.data_path) / "audit.log").read_text()
    assert "hunter2-secret" not in text and "registry-pw-123" not in text
    mode = (Path(agent.config.data_path) / "audit.log").stat().st_mode & 0o777
    assert mode == 0o600


def test_shell_keystrokes_get_no_audit_line_but_start_and_close_do(
    tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    with policy_agent(tmp_path, dockerd, "  read_only: false\n") as agent:
        hub = agent.hub
        hub.wait_registered()

        def shell(action: str, **extra: Any) -> None:
            payload = {"action": action, "session_id": "s-1", **extra}
            hub.send_raw(json.dumps({"type": "shell_session", "payload": payload}))

        shell("start", container_id="nosuchcontainer")
        for _ in range(3):
            shell("data", data="bHMK")
        shell("resize", cols=80, rows=24)
        shell("close")
        assert hub.command("list_containers").ok  # a barrier: every frame above was handled
        wait_for(lambda: len(audit_lines(agent)) >= 3, 5, "audit lines")
        shell_lines = [x for x in audit_lines(agent) if x["operation"] == "shell_session"]
    assert len(shell_lines) == 2


def test_a_duplicate_request_id_runs_once_and_both_requests_are_audited(
    tmp_path: Path, dockerd: PrivateDockerd, make_container: Any
) -> None:
    """Issue 10.4: one request id, one request (the Connection keeps the pending ids)."""
    with policy_agent(tmp_path, dockerd, "  read_only: false\n") as agent:
        hub = agent.hub
        hub.wait_registered()
        c = make_container(["sleep", "3600"])  # PID 1 ignores TERM: the stop takes its 3 s
        rid = str(uuid.uuid4())
        payload = {"action": "stop", "container_id": c.id[:12], "timeout": 3}
        frame = {
            "type": "container_operation",
            "id": rid,
            "correlation_id": rid,
            "payload": payload,
        }
        hub.send_raw(json.dumps(frame))
        hub.send_raw(json.dumps(frame))  # while the first is still stopping the container
        refused = hub.wait_response(rid, timeout=10)
        assert not refused.ok
        assert refused.error == (
            f"duplicate request id {rid}: a stop request with this id is still pending"
        )

        def stop_lines() -> list[dict[str, Any]]:
            return [x for x in audit_lines(agent) if x["operation"] == "stop"]

        wait_for(lambda: len(stop_lines()) == 2, 15, "the first stop's result in the audit log")
        first_line, second_line = stop_lines()
        assert first_line["result"].startswith(f"rejected: duplicate request id {rid}")
        assert second_line["result"] == "ok" and second_line["target"] == c.id[:12]
        # the first request's own reply came after the refusal (so the hub no longer waited)
        hub.wait_until(lambda: len(hub.unmatched_responses) == 1, 10, "the first stop's reply")
        assert hub.unmatched_responses[0].get("success") is True
        assert hub.command("list_containers").ok  # a barrier: nothing else came for that id
        assert len(hub.unmatched_responses) == 1
        c.reload()
        assert c.status == "exited"
