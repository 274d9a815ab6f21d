"""Issue 10.1: every Docker reference the server sends is checked against Docker's grammar in the
decoders, before any actor sees it (messages/references.py).

The review's exploit: docker-py leaves ``/`` unescaped in API paths and dockerd follows the
cleaned path, so ``remove`` of the container ``../images/<tag>`` deleted an image (and
``../volumes/<v>`` a volume) although ``remove_image`` and ``delete_volume`` were denied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from messages import references
from messages.common import RawJson
from messages.docker import (
    ACTION_NAMES,
    CommandFailed,
    ContainerOpFailed,
    GetContainerLogs,
    InspectContainer,
    KillContainer,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.families import ROUTES
from messages.health import (
    BadConfig,
    HealthCheckConfig,
    RemoveHealthCheck,
    SetHealthCheck,
    SyncHealthChecks,
    parse_one,
    parse_sync,
)
from messages.images import RemoveImage
from messages.networks import CreateNetwork, DeleteNetwork
from messages.references import (
    CONTAINER,
    CONTAINER_NAME,
    IMAGE,
    NETWORK,
    NETWORK_NAME,
    OPTIONAL_IMAGE,
    SESSION,
    VOLUME,
    BadReference,
    Grammar,
    reference_fields,
)
from messages.shell import CloseShell, ResizeShell, ShellInput, StartShell
from messages.updates import SelfUpdate, UpdateContainer
from messages.volumes import DeleteVolume
from messages.wire import IgnoredFrame, RejectedRequest, decode_frame
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.daemon import PrivateDockerd

DIGEST = "sha256:" + "a" * 64
FULL_ID = "0123456789abcdef" * 4

# --- the grammars ------------------------------------------------------------------------------

VALID: dict[Grammar, list[str]] = {
    CONTAINER: ["web", "/web", "site-web-1", "a", "db_1.prod", FULL_ID, FULL_ID[:12], "Web2"],
    CONTAINER_NAME: ["web", "/web-2", "site_web.1", "ab"],
    IMAGE: [
        "nginx",
        "nginx:1.27",
        "library/nginx:latest",
        "ghcr.io/darthnorse/dockmon-agent:1.1.3",
        "127.0.0.1:5000/team/app:v2",
        "localhost:5000/app",
        "[::1]:5000/app:1",
        f"app@{DIGEST}",
        f"registry.example.com/app:1.2@{DIGEST}",
        f"sha256:{'b' * 64}",
        "372ed1d7bb6a",
        "sha256:372ed1",
        "a__b/c-d--e:TAG_1.x",
    ],
    OPTIONAL_IMAGE: ["", "ghcr.io/darthnorse/dockmon-agent:1.1.3"],
    NETWORK: ["bridge", "site_default", "n", FULL_ID[:12], "net.1-a"],
    NETWORK_NAME: ["site_default", "n", "net.1-a"],
    VOLUME: ["pgdata", "ab", FULL_ID, "site_db-data.1"],
    SESSION: ["s1", "0b9f3d3e-6a0c-4a58-9c55-1a2b3c4d5e6f", "a"],
}
#: what every grammar refuses: path tricks, query/fragment injection, whitespace, non-ASCII, ...
#: (``x/json`` is a valid image name: image routes take the rest of the path as the name)
HOSTILE = [
    "../images/busybox:1", "../volumes/pgdata", "a/../b", "x?force=1", "x#y", "a b",
    "%2e%2e%2fimages", "ab\ncd", "a\tb", ".hidden", "-abc", "_abc", "\u0430bc", "x" * 300, "/",
    "//x", "a\\b", "a;b", "a\x00b",
]  # fmt: skip
INVALID: dict[Grammar, list[str]] = {
    CONTAINER: ["/../x", "web/", "x/json"],
    CONTAINER_NAME: ["w", "/w", "a:b", "x/json"],
    IMAGE: [
        "Nginx",
        "nginx:",
        ":1",
        "nginx:-x",
        "a//b",
        "a/",
        "a@sha256:abc",
        f"a@md5:{'a' * 64}",
        "a:" + "t" * 129,
        "a.b/../c",
        "a/./b",
        "x" * 256,
        "sha256:",
    ],
    OPTIONAL_IMAGE: ["Nginx", "a/"],
    NETWORK: ["a:b", "x/json"],
    NETWORK_NAME: ["a:b", "x/json"],
    VOLUME: ["v", "a:b", "x/json"],
    SESSION: ["s/1", "x" * 129],
}


def _gid(grammar: Grammar) -> str:
    return grammar.kind + (" (optional)" if grammar.allow_empty else "")


def test_every_grammar_is_exercised() -> None:
    grammars = {v for v in vars(references).values() if isinstance(v, Grammar)}
    assert grammars == set(VALID) == set(INVALID)


@pytest.mark.parametrize("grammar", list(VALID), ids=lambda g: _gid(g))
def test_valid_references_pass(grammar: Grammar) -> None:
    for value in VALID[grammar]:
        assert grammar.check(value) == value


@pytest.mark.parametrize("grammar", list(VALID), ids=lambda g: _gid(g))
def test_hostile_and_malformed_references_fail_with_a_clear_error(grammar: Grammar) -> None:
    for value in HOSTILE + INVALID[grammar]:
        with pytest.raises(BadReference, match=rf"^invalid {grammar.kind}: ") as caught:
            grammar.check(value, "field")
        assert "field must be" in str(caught.value)
        assert len(str(caught.value)) < 400  # a 16 MB "id" must not make a 16 MB error


# --- every reference field of every routed message is typed, and the decoders check it --------

#: str fields of routed messages that are not Docker references (each one a decision)
NOT_REFERENCES = {
    "request_id": "the backend's request id, only echoed",
    "host_id": "the backend's host id, only echoed",
    "url": "a health-check target, not a Docker object",
    "method": "an HTTP method",
    "expected_status_codes": "kept as sent, for logs",
    "driver": "a network driver name, sent in a request body",
    "subnet": "a CIDR, sent in a request body",
    "gateway": "an IP address, sent in a request body",
    "version": "the version the backend reports, only logged",
    "path": "a compose file path, confined to the allowed roots (actors/commands/compose_files.py)",
    "kind": "basic or bearer",
    "username": "a registry or HTTP user name",
    "_value": "a credential (messages.common.Secret)",
    "deployment_id": "the backend's deployment id, only echoed and used as a journal key",
    "project_name": "a stack name, validated by actors/deploy/files.py (PROTOCOL 8.1 step 3)",
    "compose_content": "a compose file, written to the stack directory",
    "env_file_content": "an env file, written to the stack directory",
    "action": "up, down or restart",
    "registry_url": "a registry host for a private Docker config, never an API path",
}


#: message types a routed message carries as raw JSON, decoded later by its own actor with the
#: decoders in messages/ (health configs: on the HealthChecks actor's thread, issue 10.7)
DEFERRED: tuple[type, ...] = (HealthCheckConfig,)


def _message_types() -> set[type]:
    """Every type the Connection routes, the types nested in their fields, and the types decoded
    later from their raw JSON (:data:`DEFERRED`)."""
    found: set[type] = set()
    todo = [*ROUTES, *DEFERRED]
    while todo:
        cls = todo.pop()
        # raw JSON is judged where it is decoded (DEFERRED), not as a string field
        if cls in found or cls is RawJson or not dataclasses.is_dataclass(cls):
            continue
        found.add(cls)
        for hint in typing.get_type_hints(cls).values():
            for arg in (hint, *typing.get_args(hint)):
                for inner in (arg, *typing.get_args(arg)):
                    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                        todo.append(inner)
    return found


def test_every_string_field_of_every_routed_message_is_a_reference_or_declared_not_one() -> None:
    undecided = []
    for cls in _message_types():
        typed = {name for name, _ in reference_fields(cls)}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is str and f.name not in typed and f.name not in NOT_REFERENCES:
                undecided.append(f"{cls.__name__}.{f.name}")
    assert not undecided, (
        f"type these fields with a messages.references alias (ContainerRef, ImageRef, ...) "
        f"or add them to NOT_REFERENCES: {sorted(undecided)}"
    )


def _op(action: str, **payload: Any) -> dict[str, Any]:
    body = {"action": action, **payload}
    return {"type": "container_operation", "id": "r1", "correlation_id": "r1", "payload": body}


def _command(command: str, **payload: Any) -> dict[str, Any]:
    return {"type": "command", "command": command, "id": "r1", "correlation_id": "r1",
            "payload": payload}  # fmt: skip


def _frame(kind: str, **payload: Any) -> dict[str, Any]:
    return {"type": kind, "payload": payload}


_OPS: dict[type, str] = dict(ACTION_NAMES)


def _container_op_sample(action: str) -> Callable[[str], dict[str, Any]]:
    return lambda v: _op(action, container_id=v, new_name="web-2")


_CHECK = "http://127.0.0.1:1/health"

#: (message type, field) -> a wire frame carrying ``value`` in that field, valid otherwise
SAMPLES: dict[tuple[type, str], Callable[[str], dict[str, Any]]] = {
    **{(cls, "container_id"): _container_op_sample(action) for cls, action in _OPS.items()},
    (RenameContainer, "new_name"): lambda v: _op("rename", container_id="web", new_name=v),
    (RemoveImage, "image_id"): lambda v: _command("remove_image", image_id=v, force=True),
    (CreateNetwork, "name"): lambda v: _command("create_network", name=v),
    (DeleteNetwork, "network_id"): lambda v: _command("delete_network", network_id=v, force=True),
    (DeleteVolume, "volume_name"): lambda v: _command("delete_volume", volume_name=v, force=True),
    (UpdateContainer, "container_id"): (
        lambda v: _command("update_container", container_id=v, new_image="app:2")
    ),
    (UpdateContainer, "new_image"): (
        lambda v: _command("update_container", container_id="web", new_image=v)
    ),
    (SelfUpdate, "image"): lambda v: _command("self_update", image=v, version="1.1.3"),
    (StartShell, "session_id"): (
        lambda v: _frame("shell_session", action="start", session_id=v, container_id="web")
    ),
    (StartShell, "container_id"): (
        lambda v: _frame("shell_session", action="start", session_id="s1", container_id=v)
    ),
    (ShellInput, "session_id"): (
        lambda v: _frame("shell_session", action="data", session_id=v, data="bHMK")
    ),
    (ResizeShell, "session_id"): (
        lambda v: _frame("shell_session", action="resize", session_id=v, cols=80, rows=24)
    ),
    (CloseShell, "session_id"): lambda v: _frame("shell_session", action="close", session_id=v),
    (HealthCheckConfig, "container_id"): (
        lambda v: _frame("health_check_config", container_id=v, url=_CHECK)
    ),
    (RemoveHealthCheck, "container_id"): (
        lambda v: _frame("health_check_config_remove", container_id=v)
    ),
}


def test_the_samples_cover_every_reference_field_of_every_routed_message() -> None:
    fields = {(cls, name) for cls in _message_types() for name, _ in reference_fields(cls)}
    assert fields == set(SAMPLES)


def _grammar(cls: type, field: str) -> Grammar:
    return dict(reference_fields(cls))[field]


_SAMPLE_KEYS: list[tuple[type, str]] = sorted(SAMPLES, key=lambda k: (k[0].__name__, k[1]))


@pytest.mark.parametrize(
    ("cls", "field"), _SAMPLE_KEYS, ids=[f"{c.__name__}.{f}" for c, f in _SAMPLE_KEYS]
)
def test_each_reference_field_is_refused_in_band_with_invalid_kind(
    cls: type, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    build = SAMPLES[(cls, field)]
    grammar = _grammar(cls, field)
    accepted = decode_frame(json.dumps(build(VALID[grammar][0])))
    assert not isinstance(accepted, RejectedRequest | IgnoredFrame), accepted
    if isinstance(accepted, SetHealthCheck):
        parse_one(accepted.config)
    for value in HOSTILE:
        frame = build(value)
        decoded = decode_frame(json.dumps(frame))
        prefix = f"invalid {grammar.kind}: "
        if isinstance(decoded, SetHealthCheck):  # a deferred config: refused where it is parsed
            with pytest.raises(BadConfig, match=re.escape(prefix)):
                parse_one(decoded.config)
        elif frame["type"] == "container_operation":
            assert isinstance(decoded, RejectedRequest), (value, decoded)
            assert isinstance(decoded.reply, ContainerOpFailed)
            assert decoded.reply.error.startswith(prefix) and decoded.reply.request_id == "r1"
        elif frame["type"] == "command":
            assert isinstance(decoded, RejectedRequest), (value, decoded)
            assert isinstance(decoded.reply, CommandFailed)
            assert decoded.reply.error.startswith(prefix) and decoded.reply.request_id == "r1"
        else:  # fire-and-forget frames are logged and dropped (PROTOCOL §11)
            assert isinstance(decoded, IgnoredFrame), (value, decoded)
            assert prefix in decoded.reason or prefix in caplog.text  # (the decoder logged it)
            caplog.clear()


def test_a_sync_drops_only_the_configs_with_a_bad_container_reference() -> None:
    good = {"container_id": "3f9a1b2c4d5e", "url": _CHECK}
    bad = {"container_id": "../images/x", "url": _CHECK}
    decoded = decode_frame(json.dumps(_frame("health_check_configs_sync", configs=[bad, good])))
    assert isinstance(decoded, SyncHealthChecks)
    parsed = parse_sync(decoded.configs)  # on the HealthChecks actor's thread
    assert [c.container_id for c in parsed.configs] == ["3f9a1b2c4d5e"]
    (problem,) = parsed.problems
    assert problem.startswith("../images/x: invalid container reference")
    single = decode_frame(json.dumps(_frame("health_check_config", **bad)))
    assert isinstance(single, SetHealthCheck)
    with pytest.raises(BadConfig, match="invalid container reference"):
        parse_one(single.config)
    fine = decode_frame(json.dumps(_frame("health_check_config", **good)))
    assert isinstance(fine, SetHealthCheck)
    assert parse_one(fine.config).container_id == "3f9a1b2c4d5e"


def test_every_container_action_type_is_sampled() -> None:
    assert set(_OPS) == {
        StartContainer, StopContainer, RestartContainer, RemoveContainer, KillContainer,
        RenameContainer, GetContainerLogs, InspectContainer,
    }  # fmt: skip


# --- end to end: the review's exploit against the real agent, strict hub and dockerd ------------


@pytest.fixture
def denying_agent(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    config = tmp_path / "agent.yaml"
    config.write_text("policy:\n  deny: [remove_image, delete_volume, prune_images]\n")
    with running_agent(tmp_path / "data", dockerd.base_url, DOCKMON_CONFIG=str(config)) as agent:
        agent.hub.wait_registered()
        yield agent
        agent.hub.assert_clean()


def test_path_traversal_in_a_container_id_reaches_no_image_or_volume(
    denying_agent: RunningAgent, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    hub = denying_agent.hub
    tag = "dockmon-traversal-test:1"
    docker_client.images.get(busybox_image).tag(tag)
    volume = docker_client.volumes.create("dockmon-traversal-vol")
    try:
        # the direct routes are denied by the policy ...
        denied = hub.command("remove_image", {"image_id": tag, "force": True})
        assert not denied.ok and denied.error_type == "permission_denied"
        # ... and the detours through the container routes are refused by the decoder
        for action, target, extra in (
            ("remove", f"../images/{tag}", {"force": True}),
            ("remove", f"../volumes/{volume.name}", {"force": True}),
            ("inspect", f"../images/{tag}", {}),
            ("stop", f"../images/{tag}?force=1", {}),
            ("rename", "x", {"new_name": "../y"}),
        ):
            reply = hub.container_op(action, target, **extra)
            assert not reply.ok, (action, target)
            assert (reply.error or "").startswith("invalid container "), reply.error
        docker_client.images.get(tag)  # still there
        docker_client.volumes.get(volume.name)
    finally:
        volume.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)
