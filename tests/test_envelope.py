"""A frame is decoded once into one typed envelope (messages/wire.py: decode_envelope), which the
policy judges (actors/rules/policy.py: Policy.judge) and the Connection acts on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors.rules.policy import Policy
from messages.common import Secret
from messages.deploy import DeployCompose
from messages.docker import (
    CommandFailed,
    ContainerOpFailed,
    ListContainers,
    RenameContainer,
    StopContainer,
)
from messages.health import SyncHealthChecks
from messages.shell import ShellInput, StartShell
from messages.wire import (
    AuthRejected,
    AuthSucceeded,
    IgnoredFrame,
    RejectedRequest,
    Request,
    decode_envelope,
    decode_frame,
    encode_reply,
)

NOW = 1_750_000_000 * 10**9


def envelope(frame: dict[str, Any]) -> Request:
    decoded = decode_envelope(json.dumps(frame))
    assert isinstance(decoded, Request), decoded
    return decoded


def test_a_container_operation_carries_its_id_action_target_and_typed_command() -> None:
    req = envelope(
        {
            "type": "container_operation",
            "id": "i1",
            "correlation_id": "c1",  # a reply to a container operation carries this one
            "payload": {"action": "stop", "container_id": "web", "timeout": 3},
        }
    )
    assert req == Request(
        kind="container_operation",
        operation="stop",
        target="web",
        request_id="c1",
        audited=True,
        body=StopContainer(request_id="c1", container_id="web", timeout=3),
    )


def test_a_generic_command_is_named_by_its_command_and_a_deployment_by_its_stack() -> None:
    req = envelope({"type": "command", "command": "list_containers", "id": "r1",
                    "correlation_id": "other"})  # fmt: skip
    assert (req.kind, req.operation, req.target, req.request_id) == (
        "command",
        "list_containers",
        None,
        "r1",  # a generic command's reply carries its id
    )
    assert req.body == ListContainers(request_id="r1")
    deploy = envelope(
        {
            "type": "command",
            "command": "deploy_compose",
            "id": "d1",
            "payload": {
                "deployment_id": "h1:site:1",
                "project_name": "site",
                "compose_content": "services: {}\n",
                "container_id": "not-the-target",
            },
        }
    )
    assert (deploy.operation, deploy.target) == ("deploy_compose", "site")
    assert isinstance(deploy.body, DeployCompose)


def test_fire_and_forget_frames_have_no_id_and_shell_keystrokes_no_audit_line() -> None:
    start = envelope({"type": "shell_session", "payload": {"action": "start",
                      "container_id": "abc", "session_id": "s1"}})  # fmt: skip
    assert (start.operation, start.target, start.request_id, start.audited) == (
        "shell_session",
        "abc",
        None,
        True,
    )
    assert isinstance(start.body, StartShell)
    keys = envelope({"type": "shell_session", "payload": {"action": "data",
                     "session_id": "s1", "data": "bHMK"}})  # fmt: skip
    assert isinstance(keys.body, ShellInput) and not keys.audited
    sync = envelope({"type": "health_check_configs_sync", "payload": {"configs": []}})
    assert sync.request_id is None and sync.audited and isinstance(sync.body, SyncHealthChecks)


@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        (
            {"type": "command", "command": "fly", "id": "u1"},
            CommandFailed(request_id="u1", error="unknown command: fly"),
        ),
        (
            {"type": "container_operation", "correlation_id": "q1",
             "payload": {"action": "rename", "container_id": "abc"}},
            ContainerOpFailed(request_id="q1", error="new_name is required for rename action"),
        ),
        (
            {"type": "container_operation", "correlation_id": "q2", "payload": []},
            ContainerOpFailed(
                request_id="q2",
                error="invalid payload: container_operation payload must be an object",
            ),
        ),
    ],
)  # fmt: skip
def test_a_request_we_answer_but_do_not_run_carries_its_typed_refusal(
    frame: dict[str, Any], reply: CommandFailed | ContainerOpFailed
) -> None:
    req = envelope(frame)
    assert req.body == RejectedRequest(reply=reply)
    assert isinstance(req.body, RejectedRequest) and req.body.reply.error == reply.error


def test_a_refusal_has_the_shape_its_kind_is_answered_in() -> None:
    op = envelope({"type": "container_operation", "correlation_id": "q1",
                   "payload": {"action": "remove", "container_id": "db"}})  # fmt: skip
    cmd = envelope({"type": "command", "command": "list_images", "id": "c1"})
    assert json.loads(encode_reply(op.refusal("no", "permission_denied"), NOW)) == {
        "correlation_id": "q1",
        "success": False,
        "error": "no",
        "error_type": "permission_denied",
    }
    assert encode_reply(cmd.refusal("no"), NOW) == (
        '{"type":"response","id":"c1","error":"no","timestamp":"2025-06-15T15:06:40Z"}'
    )
    keys = envelope({"type": "shell_session", "payload": {"action": "close", "session_id": "s"}})
    with pytest.raises(ValueError, match="without id gets no reply"):
        keys.refusal("no")


def test_a_request_whose_content_is_dropped_is_still_a_request_the_policy_can_judge() -> None:
    no_id = envelope({"type": "command", "command": "remove_image", "payload": {"image_id": "x"}})
    assert no_id.body == IgnoredFrame(reason="command without id")
    assert no_id.operation == "remove_image" and no_id.request_id is None
    malformed = envelope({"type": "shell_session", "payload": "nope"})
    assert isinstance(malformed.body, IgnoredFrame) and malformed.operation == "shell_session"
    unknown = envelope({"type": "nope"})
    assert unknown.body == IgnoredFrame(reason="unsupported message type: nope")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"\x00", "binary frame"),
        ("{oops", "malformed JSON"),
        ("[1]", "frame is a JSON list, not an object"),
        ('{"payload":{}}', "frame has no string 'type'"),
        ('{"type":5}', "frame has no string 'type'"),
    ],
)
def test_frames_that_are_no_request_are_ignored_frames(text: str | bytes, reason: str) -> None:
    decoded = decode_envelope(text)
    assert isinstance(decoded, IgnoredFrame) and decoded.reason.startswith(reason)


def test_auth_replies_are_their_own_types() -> None:
    ok = decode_envelope(
        '{"type":"auth_success","agent_id":"a","host_id":"h","permanent_token":"t"}'
    )
    assert ok == AuthSucceeded(agent_id="a", host_id="h", permanent_token=Secret("t"))
    assert decode_envelope('{"type":"auth_error","error":"nope"}') == AuthRejected(error="nope")
    assert isinstance(decode_envelope('{"type":"auth_success","agent_id":7}'), AuthRejected)


def test_decode_frame_is_the_envelopes_content() -> None:
    frames = [
        {"type": "container_operation", "correlation_id": "q", "payload": {"action": "start",
         "container_id": "a"}},
        {"type": "command", "command": "fly", "id": "u"},
        {"type": "shell_session", "payload": {"action": "data", "session_id": "s", "data": "eA=="}},
        {"type": "auth_error", "error": "e"},
        {"type": "nope"},
    ]  # fmt: skip
    for frame in frames:
        text = json.dumps(frame)
        env = decode_envelope(text)
        assert decode_frame(text) == (env.body if isinstance(env, Request) else env)


def test_the_frame_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = json.loads  # the module messages.wire parses with

    def counting(text: str) -> Any:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(json, "loads", counting)
    frame = {"action": "rename", "container_id": "abc", "new_name": "web2"}
    req = envelope({"type": "container_operation", "correlation_id": "q1", "payload": frame})
    assert len(calls) == 1 and isinstance(req.body, RenameContainer)


def test_the_policy_judges_the_envelope_by_its_operation_before_its_content() -> None:
    ro = Policy(read_only=True)
    stop = envelope({"type": "container_operation", "correlation_id": "q",
                     "payload": {"action": "stop", "container_id": "a"}})  # fmt: skip
    inspect = envelope({"type": "container_operation", "correlation_id": "q",
                        "payload": {"action": "inspect", "container_id": "a"}})  # fmt: skip
    assert (
        ro.judge(stop) == "denied by the agent's policy: read_only is set and stop changes the host"
    )
    assert ro.judge(inspect) is None
    # refused by its name, whatever its payload: an unknown command gets the denial, not the
    # decoder's "unknown command"
    unknown = envelope({"type": "command", "command": "fly", "id": "u"})
    assert isinstance(unknown.body, RejectedRequest)
    assert "read_only is set and fly changes the host" in (ro.judge(unknown) or "")
    deny = Policy(deny=frozenset({"shell_session"}))
    keys = envelope({"type": "shell_session", "payload": {"action": "resize", "session_id": "s"}})
    assert deny.judge(keys) == "denied by the agent's policy: shell_session is in policy.deny"
