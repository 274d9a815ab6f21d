"""Self-tests for the FakeHub test double, driven by a hand-written websocket-client agent."""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import websocket

from tests.support.hub import (
    AGENT_WS_PATH,
    CIRCUIT_OPEN_ERROR,
    INVALID_RESPONSE_ERROR,
    MAX_MESSAGE_SIZE,
    AuthAttempt,
    FakeHub,
    Response,
    classify_response,
    validate_registration,
)

ENGINE = "0b6d1c2e-7f3a-4c19-8e2b-5a4d3c2b1a09"
OTHER_ENGINE = "EOGD:IMML:ZAXF:7H3K:QW2E:LX5Y:PQ4R:M8N2:ABCD:EFGH:IJKL:MNOP"
REG_TOKEN = "7c0e2f4a-1b9d-4e55-9a61-2f0c3d4b5e6f"
CONTAINER_ID = "3f9a1b2c4d5e" + "6f" * 26
TS = "2026-07-13T20:01:02.123456789Z"
DROP = object()  # register_frame(key=DROP) removes the key


def register_frame(
    token: str = REG_TOKEN, engine_id: str = ENGINE, **overrides: Any
) -> dict[str, Any]:
    """The Go agent's first-run register frame (PROTOCOL §2.2 example)."""
    frame: dict[str, Any] = {
        "type": "register",
        "token": token,
        "engine_id": engine_id,
        "hostname": "edge-01",
        "hostname_source": "daemon",
        "version": "1.1.2",
        "proto_version": "1.1",
        "force_unique_registration": False,
        "capabilities": {
            "container_operations": True,
            "container_updates": True,
            "event_streaming": True,
            "stats_collection": True,
            "self_update": True,
            "compose_deployments": True,
            "shell_access": True,
            "multi_env_files": True,
        },
        "agent_os": "linux",
        "agent_arch": "amd64",
        "os_type": "linux",
        "os_version": "Debian GNU/Linux 12 (bookworm)",
        "kernel_version": "6.1.0-21-amd64",
        "docker_version": "27.3.1",
        "daemon_started_at": "2026-07-01T08:12:44.918273645Z",
        "total_memory": 8232861696,
        "num_cpus": 4,
        "host_ips": ["192.168.10.21"],
        "host_ip": "192.168.10.21",
    }
    for key, value in overrides.items():
        if value is DROP:
            frame.pop(key, None)
        else:
            frame[key] = value
    return frame


def update_event(command: str, **payload: Any) -> dict[str, Any]:
    return {"type": "event", "command": command, "payload": payload, "timestamp": TS}


def container_event(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "container_id": CONTAINER_ID,
        "container_name": "web",
        "image": "nginx:1.27",
        "action": "die",
        "timestamp": "2026-07-13T14:05:00-06:00",
        "attributes": {"name": "web", "image": "nginx:1.27", "exitCode": "137"},
    }
    for key, value in overrides.items():
        if value is DROP:
            payload.pop(key, None)
        else:
            payload[key] = value
    return {"type": "event", "command": "container_event", "payload": payload, "timestamp": TS}


class Client:
    """A minimal agent: one websocket-client connection."""

    def __init__(self, port: int, path: str = AGENT_WS_PATH, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout)

    def send(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def frame(self) -> tuple[int, bytes]:
        """Next frame, control frames included (pings are answered by websocket-client)."""
        opcode, data = self.ws.recv_data(control_frame=True)
        return int(opcode), bytes(data)

    def recv(self) -> Any:
        """Next data message, decoded; fails on a close frame."""
        while True:
            opcode, data = self.frame()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(data.decode())
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return data
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"connection closed: {parse_close(data)}")

    def recv_close(self) -> tuple[int, str]:
        """Wait for the hub's close frame, echo it and drop TCP, as a real agent does."""
        while True:
            opcode, data = self.frame()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.shutdown()
                return parse_close(data)
            assert opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY), data

    def drain(self, seconds: float) -> list[tuple[int, bytes]]:
        """Every frame that arrives within ``seconds`` (a bounded wait, not a sleep)."""
        frames: list[tuple[int, bytes]] = []
        self.ws.settimeout(seconds)
        try:
            while True:
                frames.append(self.frame())
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.ws.settimeout(5.0)
        return frames

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.shutdown()


def parse_close(data: bytes) -> tuple[int, str]:
    if len(data) < 2:
        return 1005, ""
    return struct.unpack("!H", data[:2])[0], data[2:].decode()


# ------------------------------------------------------------------------------------ fixtures

HubFactory = Callable[..., FakeHub]
Connect = Callable[..., Client]


@pytest.fixture
def make_hub() -> Iterator[HubFactory]:
    hubs: list[FakeHub] = []

    def make(**kwargs: Any) -> FakeHub:
        hub = FakeHub(**kwargs).start()
        hubs.append(hub)
        hub.add_registration_token(REG_TOKEN)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub(make_hub: HubFactory) -> FakeHub:
    return make_hub()


@pytest.fixture
def connect(make_hub: HubFactory) -> Iterator[Connect]:
    clients: list[Client] = []

    def make(hub: FakeHub, path: str = AGENT_WS_PATH) -> Client:
        client = Client(hub.port, path)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown()


def authed(hub: FakeHub, connect: Connect, **frame: Any) -> tuple[Client, dict[str, Any]]:
    client = connect(hub)
    client.send(register_frame(**frame))
    reply = client.recv()
    assert reply["type"] == "auth_success", reply
    hub.wait_until(lambda: hub.connected, 5, "session activation")
    return client, reply


def expect_auth_error(client: Client, error: str) -> None:
    assert client.recv() == {"type": "auth_error", "error": error}
    assert client.recv_close() == (1008, "Authentication failed")


# ------------------------------------------------------------------------------------ auth


def test_registration_reconnect_and_supersede(hub: FakeHub, connect: Connect) -> None:
    first, ok = authed(hub, connect)
    assert list(ok) == ["type", "agent_id", "host_id", "permanent_token"]
    assert ok["permanent_token"] == ok["agent_id"] != ok["host_id"]
    record = hub.wait_registered()
    assert (record.agent_id, record.host_id, record.engine_id) == (
        ok["agent_id"],
        ok["host_id"],
        ENGINE,
    )
    assert record.hostname == "edge-01"
    assert record.version == "1.1.2"
    assert record.register == register_frame()
    assert hub.registrations == [register_frame()]

    second = connect(hub)
    second.send(register_frame(token=ok["agent_id"], version="1.1.3"))
    assert second.recv() == ok  # same agent_id, host_id and permanent token
    assert first.recv_close() == (1000, "New connection established")
    assert hub.wait_registered(2).version == "1.1.3"
    assert hub.connected
    assert (1000, "New connection established") in hub.closes_sent
    assert hub.auth_log == [
        AuthAttempt(REG_TOKEN, True, None, ok["agent_id"]),
        AuthAttempt(ok["agent_id"], True, None, ok["agent_id"]),
    ]

    # Commands go to the live (new) session.
    rid = hub.send_command("list_containers")
    assert second.recv() == {
        "type": "command",
        "command": "list_containers",
        "id": rid,
        "correlation_id": rid,
    }
    hub.assert_clean()


def test_registration_token_is_single_use_by_default(hub: FakeHub, connect: Connect) -> None:
    authed(hub, connect)
    again = connect(hub)
    again.send(register_frame(engine_id=OTHER_ENGINE, hostname="edge-02"))
    expect_auth_error(again, "Registration token has reached maximum uses")


def test_multi_use_token_and_default_host_name(hub: FakeHub, connect: Connect) -> None:
    hub.add_registration_token("multi", multi_use=True)
    authed(hub, connect, token="multi", hostname=None, hostname_source=None)
    _, ok = authed(hub, connect, token="multi", engine_id=OTHER_ENGINE, hostname="edge-02")
    assert hub.agents[ok["agent_id"]].hostname == "edge-02"
    names = sorted(a.hostname for a in hub.agents.values())
    assert names == ["Agent-0b6d1c2e-7f3", "edge-02"]
    hub.assert_clean()


def test_minimal_register_frame_with_nulls_is_accepted(hub: FakeHub, connect: Connect) -> None:
    frame: dict[str, Any] = {
        "type": "register",
        "token": REG_TOKEN,
        "engine_id": ENGINE,
        "version": "dev",
        "proto_version": "1.1",
        "capabilities": {},
        "hostname": None,
        "total_memory": None,
        "host_ips": None,
    }
    assert validate_registration(frame) is None
    client = connect(hub)
    client.send(frame)
    assert client.recv()["type"] == "auth_success"


SCHEMA_CASES = [
    ({"labels": {}}, "Extra inputs are not permitted (field: labels)"),
    ({"agent_id": "x", "version": DROP}, "Field required (field: version)"),  # fields first
    ({"token": 12345}, "Input should be a valid string (field: token)"),
    ({"num_cpus": True}, "Input should be a valid integer (field: num_cpus)"),
    ({"num_cpus": "4"}, "Input should be a valid integer (field: num_cpus)"),
    (
        {"num_cpus": 2.5},
        "Input should be a valid integer, got a number with a fractional part (field: num_cpus)",
    ),
    ({"total_memory": 0}, "Input should be greater than 0 (field: total_memory)"),
    (
        {"total_memory": 10**15 + 1},
        "Input should be less than or equal to 1000000000000000 (field: total_memory)",
    ),
    ({"num_cpus": 10001}, "Input should be less than or equal to 10000 (field: num_cpus)"),
    (
        {"token": "not a token!"},
        "Value error, ID must contain only alphanumeric characters, hyphens, underscores, "
        "and colons (field: token)",
    ),
    (
        {"engine_id": "abc/def"},
        "Value error, ID must contain only alphanumeric characters, hyphens, underscores, "
        "and colons (field: engine_id)",
    ),
    ({"token": "a" * 256}, "String should have at most 255 characters (field: token)"),
    ({"version": "1" * 51}, "String should have at most 50 characters (field: version)"),
    (
        {"hostname_source": "docker"},
        "Input should be 'agent_name', 'daemon', 'os' or 'engine_id' (field: hostname_source)",
    ),
    (
        {"capabilities": {"shell_access": 1}},
        "Input should be a valid boolean (field: capabilities.shell_access)",
    ),
    ({"capabilities": []}, "Input should be a valid dictionary (field: capabilities)"),
    ({"force_unique_registration": "false"}, "Input should be a valid boolean"),
    ({"host_ips": ["10.0.0.1", 7]}, "Input should be a valid string (field: host_ips.1)"),
    (
        {"host_ips": ["10.0.0.1"] * 51},
        "List should have at most 50 items after validation, not 51 (field: host_ips)",
    ),
    ({"version": None}, "Input should be a valid string (field: version)"),
]


@pytest.mark.parametrize(("overrides", "message"), SCHEMA_CASES)
def test_schema_validation_errors(
    hub: FakeHub, connect: Connect, overrides: dict[str, Any], message: str
) -> None:
    client = connect(hub)
    client.send(register_frame(**overrides))
    reply = client.recv()
    assert reply["type"] == "auth_error"
    assert reply["error"].startswith("Invalid registration data: ")
    assert message in reply["error"]
    assert client.recv_close() == (1008, "Authentication failed")
    hub.wait_until(lambda: len(hub.auth_log) == 1)
    assert hub.auth_log[0].ok is False
    assert hub.auth_log[0].error == reply["error"]
    assert not hub.connected
    assert any("schema" in v for v in hub.violations)
    assert hub.closes_sent == [(1008, "Authentication failed")]


@pytest.mark.parametrize(
    ("first", "error"),
    [
        ({"type": "reconnect", "agent_id": "x"}, "Invalid authentication type: reconnect"),
        ({"type": "event", "command": "container_event"}, "Invalid authentication type: event"),
        ({"token": REG_TOKEN}, "Invalid authentication type: None"),
    ],
)
def test_first_frame_must_be_register(
    hub: FakeHub, connect: Connect, first: dict[str, Any], error: str
) -> None:
    client = connect(hub)
    client.send(first)
    expect_auth_error(client, error)


PERMANENT = "11111111-2222-3333-4444-555555555555"


@dataclass(frozen=True)
class Decision:
    """A §2.3 refusal: hub state to set up, the register frame to send, the expected error."""

    token: str = REG_TOKEN
    tokens: tuple[tuple[str, dict[str, Any]], ...] = ()  # add_registration_token(name, **kw)
    agents: tuple[tuple[str, str, str], ...] = ()  # add_agent(agent_id, engine_id, hostname)
    frame: tuple[tuple[str, Any], ...] = ()
    error: str = ""


DECISIONS = {
    "unknown token": Decision(token="no-such-token", error="Invalid registration token"),
    "expired": Decision(
        token="old",
        tokens=(("old", {"expired": True}),),
        error="Registration token has expired",
    ),
    "exhausted": Decision(
        token="used",
        tokens=(("used", {"max_uses": 0}),),
        error="Registration token has reached maximum uses",
    ),
    "engine mismatch": Decision(
        token=PERMANENT,
        agents=((PERMANENT, OTHER_ENGINE, "pre-existing"),),
        error="Permanent token does not match engine_id",
    ),
    "engine registered": Decision(
        agents=(("a1", ENGINE, "x"),),
        error="Agent with this engine_id is already registered.",
    ),
    "host name taken": Decision(
        agents=(("a1", OTHER_ENGINE, "edge-01"),),
        error="A host named 'edge-01' already exists in DockMon.",
    ),
    "force unique needs AGENT_NAME": Decision(
        agents=(("a1", ENGINE, "x"),),
        frame=(("force_unique_registration", True),),
        error="FORCE_UNIQUE_REGISTRATION",
    ),
}


@pytest.mark.parametrize("case", DECISIONS.values(), ids=DECISIONS.keys())
def test_registration_decisions(hub: FakeHub, connect: Connect, case: Decision) -> None:
    for name, options in case.tokens:
        hub.add_registration_token(name, **options)
    for agent_id, engine_id, hostname in case.agents:
        hub.add_agent(agent_id=agent_id, engine_id=engine_id, hostname=hostname)
    client = connect(hub)
    client.send(register_frame(token=case.token, **dict(case.frame)))
    reply = client.recv()
    assert reply["type"] == "auth_error"
    assert reply["error"].startswith(case.error), reply
    assert client.recv_close() == (1008, "Authentication failed")
    hub.assert_clean()  # a refused token is not an agent bug


def test_force_unique_with_agent_name_skips_engine_check(hub: FakeHub, connect: Connect) -> None:
    hub.add_agent(agent_id="a1", engine_id=ENGINE, hostname="original")
    _, ok = authed(
        hub,
        connect,
        force_unique_registration=True,
        hostname_source="agent_name",
        hostname="clone-1",
    )
    assert hub.agents[ok["agent_id"]].engine_id == ENGINE


def test_auth_timeout(make_hub: HubFactory, connect: Connect) -> None:
    hub = make_hub(auth_timeout=0.3)
    client = connect(hub)
    expect_auth_error(client, "Authentication timeout")
    assert hub.auth_log == [AuthAttempt(None, False, "Authentication timeout", None)]


# ------------------------------------------------------------------------------------ framing

BAD_FRAMES: list[tuple[str, Callable[[Client], None], str]] = [
    ("binary", lambda c: c.send_binary(b'{"type":"stats"}'), "binary frame"),
    ("invalid json", lambda c: c.send_text("{not json"), "invalid JSON"),
    ("non-object", lambda c: c.send([1, 2, 3]), "not an object"),
]


@pytest.mark.parametrize("phase", ["auth", "session"])
@pytest.mark.parametrize(
    ("send_bad", "violation"),
    [case[1:] for case in BAD_FRAMES],
    ids=[case[0] for case in BAD_FRAMES],
)
def test_malformed_frames_close_1011(
    hub: FakeHub,
    connect: Connect,
    phase: str,
    send_bad: Callable[[Client], None],
    violation: str,
) -> None:
    client = authed(hub, connect)[0] if phase == "session" else connect(hub)
    send_bad(client)
    assert client.recv_close() == (1011, "Internal error")
    hub.wait_disconnected(5)
    hub.wait_until(lambda: bool(hub.violations))
    assert violation in hub.violations[0]
    assert hub.closes_sent == [(1011, "Internal error")]


def test_oversized_message_closes_1009(make_hub: HubFactory, connect: Connect) -> None:
    assert MAX_MESSAGE_SIZE == 16 * 1024 * 1024
    hub = make_hub(max_size=1024)
    client, _ = authed(hub, connect)
    client.send({"type": "stats", "stats": {"junk": "x" * 2048}})
    code, _reason = client.recv_close()
    assert code == 1009
    hub.wait_disconnected(5)
    hub.wait_until(lambda: bool(hub.violations))
    assert "1009" in hub.violations[0]
    assert hub.closes_sent[0][0] == 1009


def test_wrong_path_gives_404(hub: FakeHub, connect: Connect) -> None:
    for path in ("/ws", "//api/agent/ws", "/api/agent/ws/"):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(hub, path)
        assert info.value.status_code == 404
    connect(hub, AGENT_WS_PATH + "?x=1")  # the query string is not part of the route


def test_refuse_gives_503_until_lifted(hub: FakeHub, connect: Connect) -> None:
    hub.refuse()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(hub)
    assert info.value.status_code == 503
    hub.refuse(False)
    authed(hub, connect)
    assert hub.connection_count == 2


# ------------------------------------------------------------------------------------ commands


def test_generic_command_round_trip(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    rid = hub.send_command("list_containers")
    request = client.recv()
    assert list(request) == ["type", "command", "id", "correlation_id"]  # no payload key
    client.send({"type": "response", "id": rid, "payload": [{"Id": "abc"}], "timestamp": TS})
    assert hub.wait_response(rid, 5) == Response(
        ok=True,
        data=[{"Id": "abc"}],
        error=None,
        error_type=None,
        raw={"type": "response", "id": rid, "payload": [{"Id": "abc"}], "timestamp": TS},
    )

    rid = hub.send_command("remove_image", {"image_id": "sha256:1", "force": False})
    request = client.recv()
    assert request == {
        "type": "command",
        "command": "remove_image",
        "payload": {"image_id": "sha256:1", "force": False},
        "id": rid,
        "correlation_id": rid,
    }
    client.send(
        {
            "type": "response",
            "id": rid,
            "error": "image is in use by a container",
            "error_type": "docker_error",
            "timestamp": "2026-07-13T20:01:02Z",
        }
    )
    failed = hub.wait_response(rid, 5)
    assert (failed.ok, failed.data, failed.error, failed.error_type) == (
        False,
        None,
        "image is in use by a container",
        "docker_error",
    )
    hub.assert_clean()


def test_command_helper_blocks_until_reply(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(hub.command, "scan_compose_dirs", {"paths": []}, timeout=5)
        request = client.recv()
        client.send({"type": "response", "id": request["id"], "payload": None, "timestamp": TS})
        result = future.result(5)
    assert result.ok and result.data is None


def test_container_operation_raw_reply(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    rid = hub.send_container_operation("get_logs", "3f9a1b2c4d5e", tail=200)
    assert client.recv() == {
        "type": "container_operation",
        "payload": {"action": "get_logs", "container_id": "3f9a1b2c4d5e", "tail": 200},
        "id": rid,
        "correlation_id": rid,
    }
    reply = {"correlation_id": rid, "success": True, "logs": f"{TS} ready\n"}
    client.send(reply)
    result = hub.wait_response(rid, 5)
    assert result.ok and result.data == reply  # raw reply: the whole object is the data

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(hub.container_op, "stop", "3f9a1b2c4d5e", timeout=5, timeout_s=10)
        request = client.recv()
        assert request["payload"] == {
            "action": "stop",
            "container_id": "3f9a1b2c4d5e",
            "timeout_s": 10,
        }
        client.send(
            {"correlation_id": request["id"], "success": False, "error": "No such container"}
        )
        result = future.result(5)
    assert (result.ok, result.error) == (False, "No such container")
    hub.assert_clean()


def test_send_raw_registers_pending_ids(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    frame = {"type": "container_operation", "id": "r1", "correlation_id": "r1", "payload": 5}
    hub.send_raw(json.dumps(frame))
    assert client.recv() == frame
    client.send({"correlation_id": "r1", "success": False, "error": "invalid payload"})
    assert hub.wait_response("r1", 5).error == "invalid payload"
    hub.send_raw(b"\x00\x01")
    assert client.recv() == b"\x00\x01"


CLASSIFICATION: list[tuple[dict[str, Any], bool, Any, str | None]] = [
    ({"type": "response", "id": "x", "payload": {"a": 1}}, True, {"a": 1}, None),
    ({"type": "response", "id": "x", "payload": None}, True, None, None),
    ({"type": "response", "id": "x", "error": "", "payload": 1}, True, 1, None),
    ({"type": "response", "id": "x"}, False, None, INVALID_RESPONSE_ERROR),
    ({"type": "response", "id": "x", "error": "boom"}, False, None, "boom"),
    ({"correlation_id": "x", "success": True, "status": "started"}, True, "WHOLE", None),
    ({"correlation_id": "x", "success": False, "error": "nope"}, False, None, "nope"),
    ({"correlation_id": "x", "success": False}, True, "WHOLE", None),  # counts as success!
    ({"correlation_id": "x", "success": True, "data": {"k": 1}}, True, {"k": 1}, None),
    ({"correlation_id": "x", "success": True, "payload": 7, "data": 8}, True, 7, None),
    ({"correlation_id": "x"}, False, None, INVALID_RESPONSE_ERROR),
    ({"correlation_id": "x", "error": {"code": 1}}, False, None, "{'code': 1}"),
]


@pytest.mark.parametrize(("msg", "ok", "data", "error"), CLASSIFICATION)
def test_classification_table(msg: dict[str, Any], ok: bool, data: Any, error: str | None) -> None:
    result = classify_response(msg)
    assert result.ok is ok
    assert result.data == (msg if data == "WHOLE" else data)
    assert result.error == error
    assert result.raw == msg


def test_error_type_is_reported() -> None:
    msg = {
        "correlation_id": "x",
        "success": False,
        "error": "denied",
        "error_type": "permission_denied",
    }
    assert classify_response(msg).error_type == "permission_denied"


def test_success_false_without_error_is_success_but_a_violation(
    hub: FakeHub, connect: Connect
) -> None:
    client, _ = authed(hub, connect)
    rid = hub.send_container_operation("start", "abc")
    client.recv()
    client.send({"correlation_id": rid, "success": False})
    assert hub.wait_response(rid, 5).ok is True
    assert any("success:false" in v for v in hub.violations)
    with pytest.raises(AssertionError, match="success:false"):
        hub.assert_clean()


def test_late_response_is_unmatched_not_a_violation(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    rid = hub.send_command("list_containers")
    client.recv()
    with pytest.raises(TimeoutError, match=rid):
        hub.wait_response(rid, timeout=0.2)
    late = {"type": "response", "id": rid, "payload": [], "timestamp": TS}
    client.send(late)
    hub.wait_until(lambda: len(hub.unmatched_responses) == 1)
    assert hub.unmatched_responses == [late]
    with pytest.raises(KeyError):
        hub.wait_response(rid, timeout=0.1)
    hub.assert_clean()


def test_commands_need_a_session(hub: FakeHub) -> None:
    with pytest.raises(RuntimeError, match="no authenticated agent session"):
        hub.send_command("list_containers")


def test_circuit_breaker_opens_after_five_failures(make_hub: HubFactory, connect: Connect) -> None:
    now = [1000.0]
    hub = make_hub(circuit_breaker=True, clock=lambda: now[0])
    client, _ = authed(hub, connect)

    def fail_once() -> None:
        rid = hub.send_command("list_containers")
        client.recv()
        client.send({"type": "response", "id": rid, "error": "boom", "timestamp": TS})
        assert not hub.wait_response(rid, 5).ok

    for _ in range(4):
        fail_once()
    assert not hub.circuit_open()
    fail_once()
    assert hub.circuit_open()

    sent_before = len(hub.sent)
    blocked = hub.command("list_containers", timeout=5)
    assert blocked == Response(False, None, CIRCUIT_OPEN_ERROR, None, {})
    assert hub.container_op("start", "abc", timeout=5).error == CIRCUIT_OPEN_ERROR
    assert len(hub.sent) == sent_before  # failed without reaching the agent

    now[0] += 30  # open period over: half-open, two successes close it again
    assert not hub.circuit_open()
    with ThreadPoolExecutor(1) as pool:
        for _ in range(2):
            future = pool.submit(hub.command, "list_containers", timeout=5)
            request = client.recv()
            client.send({"type": "response", "id": request["id"], "payload": [], "timestamp": TS})
            assert future.result(5).ok
    fail_once()  # closed again: a single failure does not reopen it
    assert not hub.circuit_open()


def test_circuit_breaker_is_off_by_default(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    for _ in range(6):
        rid = hub.send_command("list_containers")
        client.recv()
        client.send({"type": "response", "id": rid, "error": "boom", "timestamp": TS})
        hub.wait_response(rid, 5)
    assert not hub.circuit_open()


# ------------------------------------------------------------------------------------ events


def deploy_event(command: str, **payload: Any) -> dict[str, Any]:
    body = {k: v for k, v in payload.items() if v is not DROP}
    return {"type": "event", "command": command, "payload": body, "timestamp": TS}


DEPLOY_SERVICE = {
    "container_id": "3f9a1b2c4d5e",
    "container_name": "site-web-1",
    "image": "nginx:1.27",
    "status": "Up 5 seconds",
}


def progress(**overrides: Any) -> dict[str, Any]:
    fields = {"deployment_id": "d-1", "stage": "creating", "message": "Container x: Created"}
    return deploy_event("deploy_progress", **{**fields, **overrides})


def complete(**overrides: Any) -> dict[str, Any]:
    fields = {"deployment_id": "d-1", "action": "up", "success": True}
    return deploy_event("deploy_complete", **{**fields, **overrides})


VIOLATING_MESSAGES: list[tuple[str, dict[str, Any], str]] = [
    ("progress stage unknown", progress(stage="downloading"), "unknown stage 'downloading'"),
    ("progress empty message", progress(message=""), "message must be a non-empty string"),
    ("progress extra key", progress(percent=40), "keys must be deployment_id, stage, message"),
    ("complete without success", complete(success=DROP), "success must be a boolean"),
    ("complete failure without error", complete(success=False), "must carry an error"),
    (
        "complete partial_success false",
        complete(success=False, error="x", partial_success=False),
        "omitted when false",
    ),
    (
        "complete long container id",
        complete(services={"web": {**DEPLOY_SERVICE, "container_id": CONTAINER_ID}}),
        "12-char hex id",
    ),
    (
        "complete exit_code 0",
        complete(services={"web": {**DEPLOY_SERVICE, "exit_code": 0}}),
        "omitted when 0",
    ),
    (
        "complete unknown service key",
        complete(services={"web": {**DEPLOY_SERVICE, "error": "x"}}),
        "has keys",
    ),
    ("complete empty services", complete(services={}), "omitted when empty"),
    (
        "complete failed service unknown",
        complete(
            success=False,
            partial_success=True,
            error="Partial deployment",
            services={"web": DEPLOY_SERVICE},
            failed_services=["db"],
        ),
        "must name services of the result",
    ),
    ("complete bad action", complete(action="deploy"), "action must echo the request"),
    ("complete extra key", complete(stack="site"), "unexpected keys ['stack']"),
    (
        "event with correlation_id",
        {**container_event(), "correlation_id": "abc"},
        "top-level correlation_id",
    ),
    (
        "stats with correlation_id",
        {"type": "stats", "stats": {}, "correlation_id": "abc"},
        "top-level correlation_id",
    ),
    ("short container id", container_event(container_id="3f9a1b2c4d5e"), "64-char"),
    ("uppercase container id", container_event(container_id=CONTAINER_ID.upper()), "64-char"),
    ("missing attributes", container_event(attributes=DROP), "missing ['attributes']"),
    ("extra status key", container_event(status="die"), "extra ['status']"),
    ("non-string attribute", container_event(attributes={"exitCode": 137}), "attributes"),
    ("numeric inner timestamp", container_event(timestamp=1752436800), "timestamp"),
    (
        "unknown event command",
        {"type": "event", "command": "container_snapshot", "payload": {}, "timestamp": TS},
        "unknown event command",
    ),
    (
        "payload not an object",
        {"type": "event", "command": "container_stats", "payload": [], "timestamp": TS},
        "payload is not an object",
    ),
    ("envelope extra key", {**container_event(), "agent_id": "x"}, "outside the Go envelope"),
    (
        "timestamp with offset",
        {**container_event(), "timestamp": "2026-07-13T20:01:02+00:00"},
        "RFC 3339 UTC",
    ),
    ("heartbeat", {"type": "heartbeat"}, "heartbeat"),
    (
        "response without payload",
        {"type": "response", "id": "nobody", "timestamp": TS},
        "without 'payload'",
    ),
    (
        "raw reply with data key",
        {"correlation_id": "nobody", "success": True, "data": {}},
        "'data' key",
    ),
    ("unknown type", {"type": "state_sync", "containers": []}, "unknown message type"),
    (
        "host stats extra key",
        {"type": "stats", "stats": {"cpu_percent": 1, "mem_percent": 2}},
        "host stats must be exactly",
    ),
    (
        "bad error_type",
        {"type": "response", "id": "nobody", "error": "x", "error_type": "oops"},
        "error_type",
    ),
    (
        "update progress by name",
        update_event("update_progress", container_id="web", stage="pulling", message="Pulling"),
        "container_id must be a 12-char hex id",
    ),
    (
        "update complete for a name",
        update_event(
            "update_complete",
            old_container_id="web",
            new_container_id="0123456789ab",
            container_name="web",
        ),
        "old_container_id must be a 12-char hex id",
    ),
]


@pytest.mark.parametrize(
    ("msg", "expected"),
    [case[1:] for case in VIOLATING_MESSAGES],
    ids=[case[0] for case in VIOLATING_MESSAGES],
)
def test_violations_are_recorded(
    hub: FakeHub, connect: Connect, msg: dict[str, Any], expected: str
) -> None:
    client, _ = authed(hub, connect)
    client.send(msg)
    hub.wait_until(lambda: bool(hub.violations))
    assert expected in hub.violations[0], hub.violations
    assert hub.connected  # only malformed frames are fatal
    with pytest.raises(AssertionError, match="protocol violation"):
        hub.assert_clean()


def test_update_complete_must_name_the_id_update_container_was_sent_for(
    hub: FakeHub, connect: Connect
) -> None:
    client, _ = authed(hub, connect)
    hub.send_command("update_container", {"container_id": "3f9a1b2c4d5e", "new_image": "a:2"})
    done = {"new_container_id": "0123456789ab", "container_name": "web"}
    client.send(update_event("update_complete", old_container_id="3f9a1b2c4d5e", **done))
    hub.wait_until(lambda: len(hub.events) == 1)
    hub.assert_clean()
    client.send(update_event("update_complete", old_container_id="ffffffffffff", **done))
    hub.wait_until(lambda: bool(hub.violations))
    assert "none of the 12-char ids update_container was sent for" in hub.violations[0]


def test_deploy_events_are_checked_as_a_sequence(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    partial = complete(
        success=False,
        partial_success=True,
        services={"web": DEPLOY_SERVICE, "db": {**DEPLOY_SERVICE, "exit_code": 1}},
        failed_services=["db"],
        error="Partial deployment: 1/2 services running. Failed: db: Exited (1)",
    )
    for msg in (progress(stage="starting", message="Starting deployment..."), progress(), partial):
        client.send(msg)
    hub.wait_until(lambda: len(hub.deploy_events("d-1")) == 3)
    hub.assert_clean()
    client.send(progress(stage="completed", message="late"))
    client.send(partial)
    hub.wait_until(lambda: len(hub.violations) == 2)
    assert "deploy_progress for deployment d-1 after its deploy_complete" in hub.violations[0]
    assert "a second deploy_complete for deployment d-1" in hub.violations[1]


def test_a_redelivery_on_a_later_connection_is_no_second_result(
    hub: FakeHub, connect: Connect
) -> None:
    """At-least-once: a link that ended before the agent took its frames as read brings the
    same messages again on the next connection; anything new, or a repeat on the same
    connection, is still a violation."""
    client, ok = authed(hub, connect)
    for msg in (progress(), complete()):
        client.send(msg)
    hub.wait_until(lambda: len(hub.deploy_events("d-1")) == 2)
    client.shutdown()
    again, _ = authed(hub, connect, token=ok["agent_id"])
    for msg in (progress(), complete()):
        again.send(msg)
    hub.wait_until(lambda: len(hub.deploy_events("d-1")) == 4)
    hub.assert_clean()
    again.send(progress(stage="completed", message="late"))  # new after the result
    again.send(complete())  # the same again on the same connection
    hub.wait_until(lambda: len(hub.violations) == 2)
    assert "deploy_progress for deployment d-1 after its deploy_complete" in hub.violations[0]
    assert "a second deploy_complete for deployment d-1" in hub.violations[1]


def test_event_with_correlation_id_is_routed_as_a_response(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    client.send({**container_event(), "correlation_id": "abc"})
    hub.wait_until(lambda: bool(hub.unmatched_responses))
    assert hub.events == []


def test_valid_events_and_host_stats_are_clean(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    stats_event = {
        "type": "event",
        "command": "container_stats",
        "payload": {  # exactly the §5.2 keys (tests/support/hub_events.py checks them)
            "container_id": CONTAINER_ID,
            "container_name": "web",
            "cpu_percent": 1.5,
            "memory_usage": 73400320,
            "memory_limit": 2147483648,
            "memory_percent": 3.4,
            "network_rx": 1048576,
            "network_tx": 524288,
            "disk_read": 8192,
            "disk_write": 4096,
            "timestamp": "2026-07-13T20:05:01Z",
        },
        "timestamp": "2026-07-13T20:05:01Z",
    }
    host_stats = {
        "type": "stats",
        "stats": {"cpu_percent": 7.81, "mem_percent": 41.2, "net_bytes_per_sec": 0},
    }
    client.send(container_event())
    client.send(container_event(action="start", timestamp="2026-07-13T20:05:00Z"))
    client.send(stats_event)
    client.send(host_stats)
    hub.wait_until(lambda: len(hub.host_stats) == 1)
    assert hub.host_stats == [host_stats]
    assert [e["command"] for e in hub.events] == [
        "container_event",
        "container_event",
        "container_stats",
    ]
    assert [p["action"] for p in hub.container_events()] == ["die", "start"]
    started = hub.wait_event(lambda e: e["payload"]["action"] == "start", timeout=1)
    assert started["payload"]["timestamp"] == "2026-07-13T20:05:00Z"
    with pytest.raises(TimeoutError):
        hub.wait_event(lambda e: e["command"] == "container_event", timeout=0.1, start=2)
    hub.assert_clean()


# ------------------------------------------------------------------------------------ faults


def test_drop_sends_a_close_frame(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    dropper = threading.Thread(target=hub.drop, args=(1012, "service restart"))
    dropper.start()
    assert client.recv_close() == (1012, "service restart")
    dropper.join(5)
    hub.wait_disconnected(5)
    assert hub.closes_sent == [(1012, "service restart")]


def test_abort_kills_tcp_without_close_frame(hub: FakeHub, connect: Connect) -> None:
    client, _ = authed(hub, connect)
    hub.abort()
    with pytest.raises((websocket.WebSocketConnectionClosedException, OSError)):
        client.recv()
    hub.wait_disconnected(5)
    assert hub.closes_sent == []


def test_go_silent_stalls_the_link_without_closing_it(
    make_hub: HubFactory, connect: Connect
) -> None:
    # Aggressive keepalive: if the hub kept pinging while silent it would fail the link.
    hub = make_hub(ping_interval=0.05, ping_timeout=0.5)
    client, _ = authed(hub, connect)
    hub.go_silent()
    assert hub.silent
    rid = hub.send_command("list_containers")  # queued, not sent
    client.ws.ping(b"probe")  # an agent's dead-link probe gets no pong
    frames = client.drain(1.0)
    assert all(op == websocket.ABNF.OPCODE_PING for op, _ in frames), frames

    hub.go_silent(False)
    assert client.recv()["id"] == rid  # the queued command is flushed on resume
    client.send({"type": "response", "id": rid, "payload": [], "timestamp": TS})
    assert hub.wait_response(rid, 5).ok
    assert hub.connected and hub.closes_sent == []
    hub.assert_clean()


def test_reconnect_while_silent_supersedes_the_dead_link(hub: FakeHub, connect: Connect) -> None:
    stale, ok = authed(hub, connect)
    hub.go_silent()
    fresh = connect(hub)  # new connections are not silenced
    fresh.send(register_frame(token=ok["agent_id"]))
    assert fresh.recv() == ok
    hub.wait_registered(2)
    with pytest.raises((websocket.WebSocketConnectionClosedException, OSError)):
        stale.recv()  # aborted, no close frame
    hub.wait_until(lambda: not hub.silent, 5, "the silent link to be aborted")
    rid = hub.send_command("list_containers")
    assert fresh.recv()["id"] == rid


def test_stop_is_bounded_with_an_unresponsive_client(hub: FakeHub, connect: Connect) -> None:
    authed(hub, connect)  # the client never reads again, so it never echoes the close
    started = time.monotonic()
    hub.stop()
    assert time.monotonic() - started < 4
    assert not hub.connected
    leftovers = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    assert leftovers == []
    with pytest.raises(ConnectionRefusedError):
        connect(hub)  # nobody listens any more
