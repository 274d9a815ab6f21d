"""Strict codec between WebSocket text frames and typed messages (PROTOCOL §2-§5, §11).

Inbound: :func:`decode_envelope` decodes each frame once: an auth reply, an :class:`IgnoredFrame`,
or a :class:`Request` envelope (request id, operation, target) around its typed command, its
ready-made failure reply (for requests we can answer but not run) or why it is dropped.
Outbound: ``encode_*`` build frames byte-compatible with the Go agent: flat ``register``,
``response`` envelope for ``command``, raw ``correlation_id`` replies for ``container_operation``,
``event`` envelope; ``payload`` always present on successful responses, even when null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, cast

from messages import references
from messages.common import RawJson, Secret, dumps
from messages.decoding import BadPayload, boolean, command_failed, number
from messages.docker import (
    CommandFailed,
    CommandSucceeded,
    ContainerEventObserved,
    ContainerOperation,
    ContainerOpFailed,
    ContainerOpSucceeded,
    GetContainerLogs,
    HostInfo,
    InspectContainer,
    KillContainer,
    ListContainers,
    RemoveContainer,
    RenameContainer,
    Reply,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.families import FRAME_DECODERS, GENERIC_DECODERS
from messages.records import record
from messages.timefmt import local_rfc3339, rfc3339_nano

# --- inbound -------------------------------------------------------------------------------------


@record(kw_only=True)
class AuthSucceeded:
    agent_id: str
    host_id: str
    permanent_token: Secret | None


@record(kw_only=True)
class AuthRejected:
    error: str


#: the in-band failure a request gets instead of running
Refusal = ContainerOpFailed | CommandFailed


@record(kw_only=True)
class RejectedRequest:
    """A request we can answer but not run (unknown command, bad payload): reply and move on."""

    reply: Refusal


@record(kw_only=True)
class IgnoredFrame:
    """Logged and dropped, no reply (PROTOCOL §11): malformed JSON, unknown type, ..."""

    reason: str


Command = ContainerOperation | ListContainers
#: what a request frame's content decodes to
Decoded = Command | RejectedRequest | IgnoredFrame
#: what :func:`decode_frame` gives: an auth reply, or a request's content
Inbound = AuthSucceeded | AuthRejected | Decoded


@record(kw_only=True)
class Request:
    """A request frame from the backend, decoded once: the envelope the policy judges, the
    audit log records and the Connection routes, answers or drops.

    Everything but auth replies and frames without a type is a request, even one whose content
    is ignored (a command without id, a malformed shell frame): the policy judges what it asks
    for (its operation) before its content counts.
    """

    kind: str  # the frame's type: command, container_operation, shell_session, ...
    #: the policy's name for it: the generic command, the container action, else the kind
    operation: str
    target: str | None  # the container it names (a deployment: its stack), for the audit log
    request_id: str | None  # the id its reply carries; None: fire-and-forget, never answered
    audited: bool  # whether it gets an audit line (all but shell keystrokes and resizes)
    body: Decoded  # the typed command, the ready-made refusal, or why it is dropped

    def refusal(self, error: str, error_type: str | None = None) -> Refusal:
        """A failure reply to this request, in the shape its kind is answered in."""
        if self.request_id is None:
            raise ValueError(f"a {self.kind} frame without id gets no reply")
        if self.kind == "container_operation":
            return ContainerOpFailed(request_id=self.request_id, error=error, error_type=error_type)
        return CommandFailed(request_id=self.request_id, error=error, error_type=error_type)


#: one frame from the backend, decoded once by :func:`decode_envelope`
Envelope = AuthSucceeded | AuthRejected | Request | IgnoredFrame


def _container_operation(
    request_id: str, payload: Mapping[str, Any]
) -> ContainerOperation | ContainerOpFailed:
    action = payload.get("action")
    if not isinstance(action, str):
        return ContainerOpFailed(
            request_id=request_id, error="invalid payload: action must be a string"
        )
    container_id = payload.get("container_id")
    try:
        if action not in _ACTIONS:
            return ContainerOpFailed(request_id=request_id, error=f"unknown action: {action}")
        if not isinstance(container_id, str) or not container_id.strip():
            raise BadPayload("container_id is required")
        common = {"request_id": request_id, "container_id": container_id.strip()}
        match action:
            case "start":
                return StartContainer(**common)
            case "stop":
                return StopContainer(**common, timeout=number(payload, "timeout", 10))
            case "restart":
                return RestartContainer(**common, timeout=number(payload, "timeout", 10))
            case "remove":
                return RemoveContainer(**common, force=boolean(payload, "force"))
            case "kill":
                return KillContainer(**common)
            case "rename":
                new_name = payload.get("new_name")
                if not isinstance(new_name, str) or not new_name:
                    raise BadPayload("new_name is required for rename action")
                return RenameContainer(**common, new_name=new_name)
            case "get_logs":
                return GetContainerLogs(**common, tail=number(payload, "tail", 100))
            case _:
                return InspectContainer(**common)
    except BadPayload as exc:
        msg = str(exc)
        if not msg.startswith("new_name is required"):
            msg = f"invalid payload for {action}: {msg}"
        return ContainerOpFailed(request_id=request_id, error=msg)


_ACTIONS = frozenset(
    {"start", "stop", "restart", "remove", "kill", "rename", "get_logs", "inspect"}
)


def _request_id(frame: Mapping[str, Any], kind: str) -> str | None:
    """The id a reply to this request must carry (None for fire-and-forget frames)."""
    if kind == "command":
        keys = ("id", "correlation_id")
    elif kind == "container_operation":
        keys = ("correlation_id", "id")
    else:
        return None
    for key in keys:
        value = frame.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def parse_frame(text: str | bytes) -> dict[str, Any] | IgnoredFrame:
    """The frame's JSON object, or why it is ignored. Never raises."""
    if isinstance(text, bytes):
        return IgnoredFrame(reason="binary frame")
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return IgnoredFrame(reason=f"malformed JSON: {exc}")
    if not isinstance(frame, dict):
        return IgnoredFrame(reason=f"frame is a JSON {type(frame).__name__}, not an object")
    return frame


def decode_envelope(text: str | bytes) -> Envelope:
    """Decode one frame from the backend, once. Never raises."""
    frame = parse_frame(text)
    if isinstance(frame, IgnoredFrame):
        return frame
    kind = frame.get("type")
    if not isinstance(kind, str):
        return IgnoredFrame(reason="frame has no string 'type'")
    if kind == "auth_success":
        return _auth_success(frame)
    if kind == "auth_error":
        error = frame.get("error")
        return AuthRejected(error=error if isinstance(error, str) else repr(error))
    payload = frame.get("payload")
    body: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    if kind == "command":
        operation = str(frame.get("command"))
    elif kind == "container_operation":
        operation = str(body.get("action"))
    else:
        operation = kind
    # a deployment's target is its stack; the compose file and env contents are never audited
    target = body.get("project_name" if operation == "deploy_compose" else "container_id")
    request_id = _request_id(frame, kind)
    return Request(
        kind=kind,
        operation=operation,
        target=target if isinstance(target, str) and target else None,
        request_id=request_id,
        audited=kind != "shell_session" or body.get("action") in ("start", "close"),
        body=_content(frame, kind, request_id),
    )


def decode_frame(text: str | bytes) -> Inbound:
    """Decode one frame from the backend: an auth reply, or what a request asks. Never raises."""
    envelope = decode_envelope(text)
    return envelope.body if isinstance(envelope, Request) else envelope


def _content(frame: Mapping[str, Any], kind: str, request_id: str | None) -> Decoded:
    match kind:
        case "command":
            return _generic_command(frame, request_id)
        case "container_operation":
            if request_id is None:
                return IgnoredFrame(reason="container_operation without id")
            payload = frame.get("payload")
            if not isinstance(payload, dict):
                return RejectedRequest(
                    reply=ContainerOpFailed(
                        request_id=request_id,
                        error="invalid payload: container_operation payload must be an object",
                    )
                )
            result = _container_operation(request_id, payload)
            if isinstance(result, ContainerOpFailed):
                return RejectedRequest(reply=result)
            if bad := references.problem(result):
                return RejectedRequest(reply=ContainerOpFailed(request_id=request_id, error=bad))
            return result
        case _ if kind in FRAME_DECODERS:
            decoded = FRAME_DECODERS[kind](frame)
            if decoded is None:
                return IgnoredFrame(reason=f"malformed {kind}")
            if bad := references.problem(decoded):
                return IgnoredFrame(reason=f"{kind}: {bad}")
            return cast(Decoded, decoded)
        case _:
            return IgnoredFrame(reason=f"unsupported message type: {kind}")


def _auth_success(frame: Mapping[str, Any]) -> AuthSucceeded | AuthRejected:
    agent_id, host_id = frame.get("agent_id"), frame.get("host_id")
    if not isinstance(agent_id, str) or not isinstance(host_id, str) or not agent_id:
        return AuthRejected(error="malformed auth_success: agent_id and host_id must be strings")
    token = frame.get("permanent_token")
    return AuthSucceeded(
        agent_id=agent_id,
        host_id=host_id,
        permanent_token=Secret(token) if isinstance(token, str) and token else None,
    )


def _generic_command(frame: Mapping[str, Any], request_id: str | None) -> Decoded:
    if request_id is None:
        return IgnoredFrame(reason="command without id")
    name = frame.get("command")
    if not isinstance(name, str):
        return RejectedRequest(
            reply=CommandFailed(request_id=request_id, error="invalid command: missing name")
        )
    decoder = GENERIC_DECODERS.get(name)
    if decoder is None:
        return RejectedRequest(
            reply=CommandFailed(request_id=request_id, error=f"unknown command: {name}")
        )
    try:
        decoded = decoder(request_id, frame.get("payload"))
    except BadPayload as exc:
        return RejectedRequest(reply=command_failed(request_id, name, exc))
    if isinstance(decoded, CommandFailed):
        return RejectedRequest(reply=decoded)
    if bad := references.problem(decoded):
        return RejectedRequest(reply=CommandFailed(request_id=request_id, error=bad))
    return cast(Decoded, decoded)


# --- outbound -------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return dumps(value)


def encode_reply(reply: Reply, now_ns: int | None = None) -> str:
    match reply:
        case ContainerOpSucceeded(request_id=rid, body=body):
            head = '{"correlation_id":' + _dumps(rid) + ',"success":true'
            inner = body.text.strip()
            if not inner.startswith("{"):
                raise ValueError("container-op reply body must be a JSON object")
            rest = inner[1:].strip()
            return head + ("}" if rest == "}" else "," + rest)
        case ContainerOpFailed(request_id=rid, error=error, error_type=etype):
            obj: dict[str, Any] = {"correlation_id": rid, "success": False, "error": error}
            if etype:
                obj["error_type"] = etype
            return _dumps(obj)
        case CommandSucceeded(request_id=rid, payload=payload):
            return (
                '{"type":"response","id":'
                + _dumps(rid)
                + ',"payload":'
                + payload.text
                + ',"timestamp":'
                + _dumps(rfc3339_nano(now_ns))
                + "}"
            )
        case CommandFailed(request_id=rid, error=error, error_type=etype):
            obj = {"type": "response", "id": rid, "error": error}
            if etype:
                obj["error_type"] = etype
            obj["timestamp"] = rfc3339_nano(now_ns)
            return _dumps(obj)
    raise TypeError(f"not a reply: {reply!r}")


def encode_event(
    command: str, payload: Mapping[str, Any] | RawJson, now_ns: int | None = None
) -> str:
    body = payload.text if isinstance(payload, RawJson) else _dumps(payload)
    return (
        '{"type":"event","command":'
        + _dumps(command)
        + ',"payload":'
        + body
        + ',"timestamp":'
        + _dumps(rfc3339_nano(now_ns))
        + "}"
    )


def encode_container_event(event: ContainerEventObserved, now_ns: int | None = None) -> str:
    return encode_event(
        "container_event",
        {
            "container_id": event.container_id,
            "container_name": event.container_name,
            "image": event.image,
            "action": event.action,
            "timestamp": local_rfc3339(event.time),
            "attributes": dict(event.attributes),
        },
        now_ns,
    )


@record(kw_only=True)
class AgentIdentity:
    """What this agent says about itself in ``register`` (everything but the host facts)."""

    version: str
    proto_version: str
    capabilities: tuple[tuple[str, bool], ...]
    agent_name: str | None
    force_unique_registration: bool
    os_hostname: str | None
    agent_os: str
    agent_arch: str


_UNPRINTABLE = re.compile(r"[<>\x00-\x1f\x7f]")


def _clean(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    cleaned = _UNPRINTABLE.sub("", value).strip()
    return cleaned[:limit] if cleaned else None


def choose_hostname(ident: AgentIdentity, host: HostInfo) -> tuple[str, str]:
    """``hostname`` and ``hostname_source`` by the Go precedence (PROTOCOL §2.2)."""
    for value, source in (
        (ident.agent_name, "agent_name"),
        (host.daemon_name, "daemon"),
        (ident.os_hostname, "os"),
    ):
        cleaned = _clean(value, 255)
        if cleaned:
            return cleaned, source
    return host.engine_id[:12], "engine_id"


def encode_register(token: Secret, host: HostInfo, ident: AgentIdentity) -> str:
    """The flat ``register`` frame with exactly the keys the backend allows (PROTOCOL §2.2)."""
    hostname, source = choose_hostname(ident, host)
    frame: dict[str, Any] = {
        "type": "register",
        "token": token.reveal(),
        "engine_id": host.engine_id,
        "hostname": hostname,
        "hostname_source": source,
        "version": ident.version[:50],
        "proto_version": ident.proto_version,
        "force_unique_registration": ident.force_unique_registration,
        "capabilities": dict(ident.capabilities),
        "agent_os": ident.agent_os,
        "agent_arch": ident.agent_arch,
    }
    if host.docker_version is not None:  # system fields: all or nothing
        for key, value, limit in (
            ("os_type", host.os_type, 50),
            ("os_version", host.os_version, 500),
            ("kernel_version", host.kernel_version, 255),
            ("docker_version", host.docker_version, 50),
        ):
            cleaned = _clean(value, limit)
            if cleaned:
                frame[key] = cleaned
        frame["daemon_started_at"] = (host.daemon_started_at or "")[:100]
        if host.total_memory and 0 < host.total_memory <= 10**15:
            frame["total_memory"] = host.total_memory
        if host.num_cpus and 0 < host.num_cpus <= 10_000:
            frame["num_cpus"] = host.num_cpus
        ips = [ip for ip in host.host_ips if ip and len(ip) <= 45][:50]
        if ips:
            frame["host_ips"] = ips
            frame["host_ip"] = ips[0]  # for older backends
    return _dumps(frame)
