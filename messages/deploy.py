"""Deploy protocol: ``deploy_compose`` (PROTOCOL §8.1) and its events (§5.7).

The request is decoded strictly here; the Deployer acknowledges it at once and reports through
``deploy_progress`` events and exactly one ``deploy_complete``. The compose file, env contents and
registry passwords never appear in a ``repr`` (they are hidden fields or ``Secret``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from messages.common import RawJson, Secret
from messages.decoding import BadPayload, CommandDecoder, boolean, number, obj, string
from messages.records import record
from messages.roles import Role

ACTIONS = ("up", "down", "restart")
#: the work one request may ask for is bounded (issue 10.7): env files written, profiles passed
#: to compose, registry logins written into the private Docker config
MAX_ENV_FILES = 64
MAX_PROFILES = 64
MAX_REGISTRY_CREDENTIALS = 64
#: ``health_timeout`` when the payload gives none or 0 (§8.1)
DEFAULT_HEALTH_TIMEOUT = 60
#: the stages the backend understands (§5.7); anything else it maps to "creating"
STAGES = frozenset(
    {
        "starting",
        "executing",
        "waiting_for_health",
        "validating",
        "parsing",
        "creating_networks",
        "creating_volumes",
        "pulling_image",
        "creating",
        "health_check",
        "completed",
        "failed",
    }
)


@record(kw_only=True)
class RegistryCredential:
    registry_url: str
    username: str
    password: Secret


@record(kw_only=True)
class DeployCompose:
    """``deploy_compose``: every key of §8.1; contents are hidden from ``repr``."""

    request_id: str
    deployment_id: str
    project_name: str
    compose_content: str = field(default="", repr=False)
    env_file_content: str = field(default="", repr=False)
    #: ``env_files`` as (file name, content) pairs in the order given
    env_files: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    action: str = "up"
    remove_volumes: bool = False
    profiles: tuple[str, ...] = ()
    force_recreate: bool = False
    pull_images: bool = False
    wait_for_healthy: bool = False
    health_timeout: int = DEFAULT_HEALTH_TIMEOUT
    registry_credentials: tuple[RegistryCredential, ...] = ()


@record(kw_only=True)
class DeployProgressed:
    """Deployer-internal, from a run thread: one ``deploy_progress`` to send."""

    deployment_id: str
    stage: str
    message: str


@record(kw_only=True)
class DeployFinished:
    """Deployer-internal, from a run thread: the run ended; ``result`` is the journaled
    ``deploy_complete`` payload (already written to ``$DATA_PATH/deployments``)."""

    deployment_id: str
    project_name: str
    result: RawJson


def _at_most(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise BadPayload(f"{count} {what} given, at most {limit} allowed")


def _string_list(value: Any, key: str, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadPayload(f"{key} must be a list of strings or null")
    _at_most(len(value), limit, key)
    return tuple(v for v in value if v.strip())


def _env_files(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise BadPayload("env_files must be an object of file name -> content, or null")
    _at_most(len(value), MAX_ENV_FILES, "env_files")
    pairs: list[tuple[str, str]] = []
    for name, content in value.items():
        if not isinstance(content, str):
            raise BadPayload(f"env_files[{name!r}] must be a string")
        pairs.append((str(name), content))
    return tuple(pairs)


def _credentials(value: Any) -> tuple[RegistryCredential, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadPayload("registry_credentials must be a list or null")
    _at_most(len(value), MAX_REGISTRY_CREDENTIALS, "registry_credentials")
    creds: list[RegistryCredential] = []
    for item in value:
        if not isinstance(item, Mapping):
            raise BadPayload("each registry_credentials entry must be an object")
        username = string(item, "username")
        if not username:
            continue  # the backend sends entries without a login for public registries
        creds.append(
            RegistryCredential(
                registry_url=string(item, "registry_url").strip(),
                username=username,
                password=Secret(string(item, "password")),
            )
        )
    return tuple(creds)


def _deploy_compose(request_id: str, payload: Any) -> DeployCompose:
    p = obj(payload, "deploy_compose")
    action = string(p, "action", "up") or "up"
    if action not in ACTIONS:
        raise BadPayload(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    return DeployCompose(
        request_id=request_id,
        deployment_id=string(p, "deployment_id", required="deployment_id is required").strip(),
        project_name=string(p, "project_name"),
        compose_content=string(p, "compose_content"),
        env_file_content=string(p, "env_file_content"),
        env_files=_env_files(p.get("env_files")),
        action=action,
        remove_volumes=boolean(p, "remove_volumes"),
        profiles=_string_list(p.get("profiles"), "profiles", MAX_PROFILES),
        force_recreate=boolean(p, "force_recreate"),
        pull_images=boolean(p, "pull_images"),
        wait_for_healthy=boolean(p, "wait_for_healthy"),
        health_timeout=number(p, "health_timeout", DEFAULT_HEALTH_TIMEOUT)
        or DEFAULT_HEALTH_TIMEOUT,
        registry_credentials=_credentials(p.get("registry_credentials")),
    )


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {"deploy_compose": _deploy_compose}
#: top-level frame ``type``s this family decodes
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {DeployCompose: Role.DEPLOYER}
