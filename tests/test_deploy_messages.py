"""deploy_compose decoding (PROTOCOL §8.1): every field, strictly; contents never in a repr."""

from __future__ import annotations

import json
from typing import Any

from messages.common import Secret
from messages.deploy import (
    MAX_ENV_FILES,
    MAX_PROFILES,
    MAX_REGISTRY_CREDENTIALS,
    DeployCompose,
    RegistryCredential,
)
from messages.docker import CommandFailed
from messages.wire import RejectedRequest, decode_frame

FULL = {
    "deployment_id": "5e0c0a9e-1b2c-4d5e-8f90-123456789abc",
    "project_name": "site",
    "compose_content": "services:\n  web:\n    image: nginx:1.27\n",
    "env_file_content": "TAG=1.27\n",
    "env_files": {".env": "TAG=1.27\n", ".db.env": "POSTGRES_PASSWORD=hunter2\n"},
    "action": "restart",
    "remove_volumes": True,
    "profiles": ["debug", " "],
    "force_recreate": True,
    "pull_images": True,
    "wait_for_healthy": True,
    "health_timeout": 90,
    "registry_credentials": [
        {"registry_url": "registry.example.com", "username": "ci", "password": "s3cret"},
        {"registry_url": "public.example.com", "username": "", "password": ""},
    ],
}


def frame(payload: object) -> str:
    return json.dumps(
        {
            "type": "command",
            "command": "deploy_compose",
            "id": "r1",
            "correlation_id": "r1",
            "payload": payload,
        }
    )


def test_every_field_decodes() -> None:
    decoded = decode_frame(frame(FULL))
    assert decoded == DeployCompose(
        request_id="r1",
        deployment_id=FULL["deployment_id"],  # type: ignore[arg-type]
        project_name="site",
        compose_content=FULL["compose_content"],  # type: ignore[arg-type]
        env_file_content="TAG=1.27\n",
        env_files=((".env", "TAG=1.27\n"), (".db.env", "POSTGRES_PASSWORD=hunter2\n")),
        action="restart",
        remove_volumes=True,
        profiles=("debug",),
        force_recreate=True,
        pull_images=True,
        wait_for_healthy=True,
        health_timeout=90,
        registry_credentials=(
            RegistryCredential(
                registry_url="registry.example.com", username="ci", password=Secret("s3cret")
            ),
        ),
    )
    text = repr(decoded)
    for hidden in ("hunter2", "s3cret", "TAG=1.27", "nginx:1.27"):
        assert hidden not in text


def test_defaults_and_transient_ids() -> None:
    decoded = decode_frame(frame({"deployment_id": "h1:site:5e0c", "project_name": "site"}))
    assert decoded == DeployCompose(
        request_id="r1", deployment_id="h1:site:5e0c", project_name="site"
    )
    assert isinstance(decoded, DeployCompose)
    assert (decoded.action, decoded.health_timeout, decoded.env_files) == ("up", 60, ())
    nulls = {k: None for k in FULL} | {"deployment_id": "d", "health_timeout": 0}
    decoded = decode_frame(frame(nulls))
    assert isinstance(decoded, DeployCompose) and decoded.health_timeout == 60


def test_bad_payloads_get_a_clear_error() -> None:
    bad = {
        "missing id": ({"project_name": "site"}, "deployment_id is required"),
        "bad action": (
            {"deployment_id": "d", "action": "deploy"},
            "action must be one of up, down, restart",
        ),
        "profiles": ({"deployment_id": "d", "profiles": "debug"}, "profiles must be a list"),
        "env_files": ({"deployment_id": "d", "env_files": [".env"]}, "env_files must be an object"),
        "env value": (
            {"deployment_id": "d", "env_files": {".env": 1}},
            "env_files['.env'] must be a string",
        ),
        "creds": (
            {"deployment_id": "d", "registry_credentials": {}},
            "registry_credentials must be a list",
        ),
        "flag": ({"deployment_id": "d", "pull_images": "yes"}, "pull_images must be a boolean"),
        "timeout": (
            {"deployment_id": "d", "health_timeout": -1},
            "health_timeout must not be negative",
        ),
        "not an object": ("junk", "deploy_compose payload must be an object"),
    }
    for name, (payload, text) in bad.items():
        rejected = decode_frame(frame(payload))
        assert isinstance(rejected, RejectedRequest), name
        assert isinstance(rejected.reply, CommandFailed)
        assert rejected.reply.error.startswith("invalid payload for deploy_compose: "), name
        assert text in rejected.reply.error, (name, rejected.reply.error)


def test_the_work_one_deploy_asks_for_is_bounded() -> None:
    """Issue 10.7's class: counts are capped where the request enters, before any file or
    compose argument is made of them."""
    many = {
        "env_files": {f"e{n}.env": "A=1\n" for n in range(MAX_ENV_FILES + 1)},
        "profiles": [f"p{n}" for n in range(MAX_PROFILES + 1)],
        "registry_credentials": [
            {"registry_url": f"r{n}.example.com", "username": "u", "password": "p"}
            for n in range(MAX_REGISTRY_CREDENTIALS + 1)
        ],
    }
    for key, value in many.items():
        rejected = decode_frame(frame({"deployment_id": "d", key: value}))
        assert isinstance(rejected, RejectedRequest), key
        assert isinstance(rejected.reply, CommandFailed)
        assert f"{len(value)} {key} given, at most 64 allowed" in rejected.reply.error
        at_limit = decode_frame(frame({"deployment_id": "d", key: _first(value, 64)}))
        assert isinstance(at_limit, DeployCompose), key


def _first(value: Any, n: int) -> Any:
    return dict(list(value.items())[:n]) if isinstance(value, dict) else value[:n]
