"""The strict codec: frames in, typed messages out, and frames out exactly as PROTOCOL.md says."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from messages.common import RawJson, Secret
from messages.docker import (
    CommandFailed,
    CommandSucceeded,
    ContainerEventObserved,
    ContainerOpFailed,
    ContainerOpSucceeded,
    GetContainerLogs,
    HostInfo,
    InspectContainer,
    KillContainer,
    ListContainers,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.wire import (
    AgentIdentity,
    AuthRejected,
    AuthSucceeded,
    IgnoredFrame,
    RejectedRequest,
    decode_frame,
    encode_container_event,
    encode_register,
    encode_reply,
)


def op(payload: object, **extra: object) -> str:
    return json.dumps(
        {"type": "container_operation", "id": "r1", "correlation_id": "r1", "payload": payload}
        | extra
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"action": "start", "container_id": "abc"},
            StartContainer(request_id="r1", container_id="abc"),
        ),
        (
            {"action": "stop", "container_id": "abc"},
            StopContainer(request_id="r1", container_id="abc", timeout=10),
        ),
        (
            {"action": "stop", "container_id": "abc", "timeout": 3.0},
            StopContainer(request_id="r1", container_id="abc", timeout=3),
        ),
        (
            {"action": "restart", "container_id": "abc"},
            RestartContainer(request_id="r1", container_id="abc"),
        ),
        (
            {"action": "remove", "container_id": "abc", "force": True},
            RemoveContainer(request_id="r1", container_id="abc", force=True),
        ),
        (
            {"action": "kill", "container_id": "abc"},
            KillContainer(request_id="r1", container_id="abc"),
        ),
        (
            {"action": "rename", "container_id": "abc", "new_name": "web-2"},
            RenameContainer(request_id="r1", container_id="abc", new_name="web-2"),
        ),
        (
            {"action": "get_logs", "container_id": "abc", "tail": 5},
            GetContainerLogs(request_id="r1", container_id="abc", tail=5),
        ),
        (
            {"action": "inspect", "container_id": "abc"},
            InspectContainer(request_id="r1", container_id="abc"),
        ),
    ],
)
def test_container_operations_decode_to_typed_commands(payload: object, expected: object) -> None:
    assert decode_frame(op(payload)) == expected


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"action": "pause", "container_id": "abc"}, "unknown action: pause"),
        ({"action": "rename", "container_id": "abc"}, "new_name is required for rename action"),
        (
            {"action": "stop", "container_id": "abc", "timeout": "10"},
            "invalid payload for stop: timeout must be a number, got str",
        ),
        (
            {"action": "stop", "container_id": "abc", "timeout": True},
            "invalid payload for stop: timeout must be a number, got bool",
        ),
        (
            {"action": "remove", "container_id": "abc", "force": "yes"},
            "invalid payload for remove: force must be a boolean, got str",
        ),
        ({"action": "start"}, "invalid payload for start: container_id is required"),
        ({"action": 7}, "invalid payload: action must be a string"),
        ("not-an-object", "invalid payload: container_operation payload must be an object"),
        (None, "invalid payload: container_operation payload must be an object"),
    ],
)
def test_bad_container_operations_get_a_failure_reply(payload: object, error: str) -> None:
    decoded = decode_frame(op(payload))
    assert decoded == RejectedRequest(reply=ContainerOpFailed(request_id="r1", error=error))


def test_generic_commands() -> None:
    frame = {"type": "command", "command": "list_containers", "id": "c1", "correlation_id": "c1"}
    assert decode_frame(json.dumps(frame)) == ListContainers(request_id="c1")
    frame["command"] = "frobnicate"
    assert decode_frame(json.dumps(frame)) == RejectedRequest(
        reply=CommandFailed(request_id="c1", error="unknown command: frobnicate")
    )
    assert isinstance(decode_frame(json.dumps({"type": "command", "command": "x"})), IgnoredFrame)


@pytest.mark.parametrize(
    "frame",
    ["{not json", "[1,2]", '"str"', "42", "null", '{"type": 5}', '{"type":"mystery"}', b"\x00\x01"],
)
def test_malformed_frames_are_ignored_never_raised(frame: str | bytes) -> None:
    assert isinstance(decode_frame(frame), IgnoredFrame)


def test_auth_replies() -> None:
    ok = decode_frame('{"type":"auth_success","agent_id":"a","host_id":"h","permanent_token":"a"}')
    assert ok == AuthSucceeded(agent_id="a", host_id="h", permanent_token=Secret("a"))
    assert decode_frame('{"type":"auth_error","error":"nope"}') == AuthRejected(error="nope")
    assert isinstance(decode_frame('{"type":"auth_success","agent_id":1}'), AuthRejected)


def test_replies_have_the_exact_wire_shapes() -> None:
    ns = 1_752_436_862_123_456_789
    raw = json.loads(
        encode_reply(
            ContainerOpSucceeded(
                request_id="r", body=RawJson.of({"container_id": "c", "status": "started"})
            )
        )
    )
    assert raw == {"correlation_id": "r", "success": True, "container_id": "c", "status": "started"}
    assert json.loads(encode_reply(ContainerOpSucceeded(request_id="r", body=RawJson("{}")))) == {
        "correlation_id": "r",
        "success": True,
    }
    failed = json.loads(encode_reply(ContainerOpFailed(request_id="r", error="boom")))
    assert failed == {"correlation_id": "r", "success": False, "error": "boom"}
    ok = json.loads(encode_reply(CommandSucceeded(request_id="c", payload=RawJson("null")), ns))
    assert ok == {
        "type": "response",
        "id": "c",
        "payload": None,
        "timestamp": "2025-07-13T20:01:02.123456789Z",
    }
    err = json.loads(
        encode_reply(CommandFailed(request_id="c", error="x", error_type="docker_error"), ns)
    )
    assert list(err) == ["type", "id", "error", "error_type", "timestamp"]
    assert "payload" not in err


def test_container_event_envelope() -> None:
    event = ContainerEventObserved(
        container_id="f" * 64,
        container_name="web",
        image="busybox",
        action="die",
        time=1_752_436_862,
        time_nano=1_752_436_862_000_000_001,
        attributes=(("exitCode", "137"), ("name", "web")),
    )
    frame = json.loads(encode_container_event(event))
    assert list(frame) == ["type", "command", "payload", "timestamp"]
    assert frame["type"] == "event" and frame["command"] == "container_event"
    assert "correlation_id" not in frame
    payload = frame["payload"]
    assert set(payload) == {
        "container_id",
        "container_name",
        "image",
        "action",
        "timestamp",
        "attributes",
    }
    assert payload["attributes"] == {"exitCode": "137", "name": "web"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", payload["timestamp"])


IDENT = AgentIdentity(
    version="0.1.0",
    proto_version="1.1",
    capabilities=(("container_operations", True), ("self_update", False)),
    agent_name=None,
    force_unique_registration=False,
    os_hostname="os-host",
    agent_os="linux",
    agent_arch="amd64",
)


def test_register_has_only_allowed_keys_and_omits_zero_memory() -> None:
    host = HostInfo(
        engine_id="ABCD:EFGH",
        daemon_name="<b>daemon</b>\x07",
        os_type="linux",
        os_version="Debian",
        kernel_version="6.1",
        docker_version="20.10.24",
        daemon_started_at="",
        total_memory=0,
        num_cpus=2,
    )
    frame = json.loads(encode_register(Secret("tok-1"), host, IDENT))
    assert frame["type"] == "register" and frame["token"] == "tok-1"
    assert frame["hostname"] == "bdaemon/b" and frame["hostname_source"] == "daemon"
    assert "total_memory" not in frame and frame["num_cpus"] == 2
    assert frame["daemon_started_at"] == ""
    allowed = {
        "type", "token", "engine_id", "version", "proto_version", "capabilities", "hostname",
        "hostname_source", "force_unique_registration", "os_type", "os_version", "kernel_version",
        "docker_version", "daemon_started_at", "total_memory", "num_cpus", "agent_os",
        "agent_arch", "host_ip", "host_ips",
    }  # fmt: skip
    assert set(frame) <= allowed


def test_register_without_system_facts_and_hostname_precedence() -> None:
    frame = json.loads(encode_register(Secret("t"), HostInfo(engine_id="E" * 20), IDENT))
    for key in ("os_type", "docker_version", "total_memory", "num_cpus", "daemon_started_at"):
        assert key not in frame
    assert (frame["hostname"], frame["hostname_source"]) == ("os-host", "os")
    named = json.loads(
        encode_register(Secret("t"), HostInfo(engine_id="E"), replace(IDENT, agent_name=" edge-1 "))
    )
    assert (named["hostname"], named["hostname_source"]) == ("edge-1", "agent_name")
    bare = replace(IDENT, os_hostname=None)
    frame = json.loads(encode_register(Secret("t"), HostInfo(engine_id="0123456789abcdef"), bare))
    assert (frame["hostname"], frame["hostname_source"]) == ("0123456789ab", "engine_id")
