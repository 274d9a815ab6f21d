"""Pure logic of ``update_container`` (PROTOCOL §6): the new container's configuration, which
containers depend on the old one, and the health-gate rules. No I/O: every input is a Docker
inspect document (``dict``) and every output a new ``dict`` ready for the Engine API.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from messages.records import record
from messages.references import short_id

#: networks that are not "custom": never connected explicitly (§6 step 4)
BUILTIN_NETWORKS = frozenset({"bridge", "host", "none", "default"})
#: API version from which the primary network's endpoint settings go into the create call
NETWORKING_CONFIG_API = (1, 44)
#: restart policies under which an exited container may count as done (exit code 0)
ONE_SHOT_POLICIES = frozenset({"", "no", "on-failure"})


def container_name(inspect: Mapping[str, Any]) -> str:
    return str(inspect.get("Name") or "").lstrip("/")


def api_version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    """``"1.41"`` >= (1, 44)? Unparsable versions count as old (the safe, legacy path)."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


# --------------------------------------------------------------------------------------------
# filtering against the old image (§6 step 4, extended, see keep_user_overrides)


def filter_labels(
    labels: Mapping[str, str] | None, old_image_labels: Mapping[str, str] | None
) -> dict[str, str]:
    """Drop labels whose key and value both equal the old image's: the new image's apply."""
    image = old_image_labels or {}
    return {k: v for k, v in (labels or {}).items() if k not in image or image[k] != v}


def filter_env(env: Sequence[str] | None, old_image_env: Sequence[str] | None) -> list[str]:
    """Drop ``KEY=VALUE`` entries identical to the old image's ENV; keep changed/added ones."""
    image = set(old_image_env or ())
    return [e for e in env or () if e not in image]


def keep_user_overrides(config: dict[str, Any], old_image_config: Mapping[str, Any]) -> None:
    """Beyond §6: also let the new image's CMD, ENTRYPOINT, HEALTHCHECK, WORKDIR, USER,
    STOPSIGNAL, EXPOSE and VOLUME apply where the container merely inherited the old image's.

    Docker stores the *effective* values in a container's Config, so a plain copy would run
    the old image's command (and health check) inside the new image. Values the user set
    (different from the old image's) are kept, exactly like labels and env.
    """
    image = old_image_config
    entrypoint_inherited = config.get("Entrypoint") == image.get("Entrypoint")
    if entrypoint_inherited:
        config["Entrypoint"] = None
        # with the entrypoint inherited, an inherited CMD is the image's default too
        if config.get("Cmd") == image.get("Cmd"):
            config["Cmd"] = None
    for key in ("Healthcheck", "WorkingDir", "User", "StopSignal"):
        if key in config and config.get(key) == image.get(key):
            config[key] = None if key in ("Healthcheck", "StopSignal") else ""
    for key in ("ExposedPorts", "Volumes"):
        mine = config.get(key) or {}
        theirs = image.get(key) or {}
        kept = {k: v for k, v in mine.items() if k not in theirs}
        config[key] = kept or None


def anonymous_volume_binds(inspect: Mapping[str, Any]) -> list[str]:
    """Binds that re-attach the old container's anonymous volumes (``VOLUME`` in the image, no
    ``-v``) at the same paths; otherwise the new container would get empty fresh ones."""
    host = inspect.get("HostConfig") or {}
    explicit: set[str] = set()
    for bind in host.get("Binds") or ():
        parts = str(bind).split(":")
        if len(parts) >= 2:
            explicit.add(parts[1])
    for mount in host.get("Mounts") or ():
        explicit.add(str(mount.get("Target", "")))
    binds = []
    for mount in inspect.get("Mounts") or ():
        if mount.get("Type") != "volume" or not mount.get("Name"):
            continue
        dest = str(mount.get("Destination", ""))
        if not dest or dest in explicit:
            continue
        mode = "" if mount.get("RW", True) else ":ro"
        binds.append(f"{mount['Name']}:{dest}{mode}")
    return binds


def apply_podman_fixes(host_config: dict[str, Any]) -> None:
    """§6: Podman rejects NanoCpus and MemorySwappiness as Docker reports them."""
    nano = host_config.get("NanoCpus") or 0
    if nano > 0 and not host_config.get("CpuPeriod"):
        period = 100_000
        host_config["CpuPeriod"] = period
        host_config["CpuQuota"] = int(nano / 1e9 * period)
        host_config["NanoCpus"] = 0
    host_config.pop("MemorySwappiness", None)


# --------------------------------------------------------------------------------------------
# networks


@record
class NetworkPlan:
    """Where the new container goes: ``primary`` (+ its endpoint settings if it has any worth
    passing) and further custom networks connected after creation."""

    primary: str | None = None
    primary_endpoint: dict[str, Any] | None = None
    extra: tuple[tuple[str, dict[str, Any]], ...] = ()


def endpoint_settings(endpoint: Mapping[str, Any], own_id: str) -> dict[str, Any]:
    """The user-configured part of an endpoint: static IPs, aliases, links.

    The automatic alias Docker adds (the container's 12-char id) is dropped; unlike the Go
    agent, a user alias that happens to be 12 characters long is kept.
    """
    result: dict[str, Any] = {}
    ipam = endpoint.get("IPAMConfig") or {}
    static = {k: ipam[k] for k in ("IPv4Address", "IPv6Address") if ipam.get(k)}
    if static:
        result["IPAMConfig"] = static
    auto = {short_id(own_id)} if own_id else set()
    aliases = [a for a in endpoint.get("Aliases") or () if a not in auto]
    if aliases:
        result["Aliases"] = aliases
    if endpoint.get("Links"):
        result["Links"] = list(endpoint["Links"])
    return result


def plan_networks(inspect: Mapping[str, Any]) -> NetworkPlan:
    """§6 step 4 "Networks": only custom networks; the primary is the one NetworkMode names."""
    host = inspect.get("HostConfig") or {}
    mode = str(host.get("NetworkMode") or "")
    if mode.startswith("container:") or mode in ("host", "none"):
        return NetworkPlan()
    networks = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    custom = {n: ep or {} for n, ep in networks.items() if n not in BUILTIN_NETWORKS}
    if not custom:
        return NetworkPlan()
    primary = mode if mode in custom else sorted(custom)[0]
    own_id = str(inspect.get("Id") or "")
    endpoint = endpoint_settings(custom[primary], own_id)
    extra = tuple(
        (name, endpoint_settings(ep, own_id))
        for name, ep in sorted(custom.items())
        if name != primary
    )
    return NetworkPlan(primary=primary, primary_endpoint=endpoint or None, extra=extra)


# --------------------------------------------------------------------------------------------
# the new container


@record
class ContainerPlan:
    """Body of ``POST /containers/create`` (Config fields + ``HostConfig``), name, networks."""

    name: str
    body: dict[str, Any]
    networks: NetworkPlan = field(default_factory=NetworkPlan)

    def create_body(self, with_primary_endpoint: bool) -> dict[str, Any]:
        body = copy.deepcopy(self.body)
        if with_primary_endpoint and self.networks.primary and self.networks.primary_endpoint:
            body["NetworkingConfig"] = {
                "EndpointsConfig": {self.networks.primary: self.networks.primary_endpoint}
            }
        return body


def build_plan(
    old: Mapping[str, Any],
    old_image: Mapping[str, Any],
    new_image: str,
    *,
    network_mode_name: str | None = None,
    podman: bool = False,
) -> ContainerPlan:
    """A full copy of the old container's ``Config`` and ``HostConfig`` with §6's adjustments.

    ``network_mode_name`` is the name of the container that ``NetworkMode: container:<id>``
    points at (looked up by the caller), used to rewrite it to ``container:<name>``.
    """
    config: dict[str, Any] = copy.deepcopy(dict(old.get("Config") or {}))
    host: dict[str, Any] = copy.deepcopy(dict(old.get("HostConfig") or {}))
    image_config = old_image.get("Config") or {}
    config["Image"] = new_image
    config["Labels"] = filter_labels(config.get("Labels"), image_config.get("Labels"))
    config["Env"] = filter_env(config.get("Env"), image_config.get("Env"))
    keep_user_overrides(config, image_config)
    extra_binds = anonymous_volume_binds(old)
    if extra_binds:
        host["Binds"] = [*(host.get("Binds") or ()), *extra_binds]
    if podman:
        apply_podman_fixes(host)
    mode = str(host.get("NetworkMode") or "")
    if mode.startswith("container:"):
        for key in ("Hostname", "Domainname", "MacAddress"):
            config[key] = ""
        config["ExposedPorts"] = None
        host["PortBindings"] = None
        if network_mode_name:
            host["NetworkMode"] = f"container:{network_mode_name}"
    config["HostConfig"] = host
    return ContainerPlan(name=container_name(old), body=config, networks=plan_networks(old))


def dependent_plan(
    dep: Mapping[str, Any], new_parent_id: str, *, podman: bool = False
) -> ContainerPlan:
    """§6 step 10: a copy of a dependent that keeps its image, labels and env, joined to the
    new parent's network namespace."""
    config: dict[str, Any] = copy.deepcopy(dict(dep.get("Config") or {}))
    host: dict[str, Any] = copy.deepcopy(dict(dep.get("HostConfig") or {}))
    if podman:
        apply_podman_fixes(host)
    for key in ("Hostname", "Domainname", "MacAddress"):
        config[key] = ""
    config["ExposedPorts"] = None
    host["PortBindings"] = None
    host["NetworkMode"] = f"container:{new_parent_id}"
    extra_binds = anonymous_volume_binds(dep)
    if extra_binds:
        host["Binds"] = [*(host.get("Binds") or ()), *extra_binds]
    config["HostConfig"] = host
    return ContainerPlan(name=container_name(dep), body=config)


def depends_on(inspect: Mapping[str, Any], parent_name: str, parent_id: str) -> bool:
    """NetworkMode is ``container:<name>``, ``container:<short id>`` or ``container:<full id>``."""
    mode = str((inspect.get("HostConfig") or {}).get("NetworkMode") or "")
    if not mode.startswith("container:"):
        return False
    target = mode.removeprefix("container:")
    return target in (parent_name, short_id(parent_id), parent_id)


# --------------------------------------------------------------------------------------------
# health gate (§6 step 8)


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # poll again later
    STABILITY = "stability"  # no HEALTHCHECK: wait the stability period, then check running


@record
class HealthDecision:
    verdict: Verdict
    reason: str = ""


def exit_acceptable(restart_policy: str, exit_code: int) -> bool:
    """A stopped container passes only under a one-shot restart policy with exit code 0."""
    return restart_policy in ONE_SHOT_POLICIES and exit_code == 0


def grace_period(health_timeout: float) -> float:
    """``unhealthy`` is tolerated during min(30 s, 50 % of the timeout)."""
    return min(30.0, health_timeout * 0.5)


def judge_health(
    inspect: Mapping[str, Any], elapsed: float, health_timeout: float, *, stable: bool = False
) -> HealthDecision:
    """One poll of the gate. ``stable``: the no-HEALTHCHECK stability wait is over."""
    state = inspect.get("State") or {}
    policy = str(((inspect.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "")
    exit_code = int(state.get("ExitCode") or 0)
    if state.get("Restarting"):
        # Docker reports Running=true while a crashed container waits to be restarted
        return HealthDecision(
            Verdict.FAIL, f"container is restarting after exiting (exit code: {exit_code})"
        )
    restarts = int(inspect.get("RestartCount") or 0)
    if restarts and state.get("Running"):
        # caught between two crashes of a restart loop (Docker resets ExitCode on restart)
        return HealthDecision(
            Verdict.FAIL, f"container exited and was restarted {restarts} time(s)"
        )
    if not state.get("Running"):
        if exit_acceptable(policy, exit_code):
            return HealthDecision(
                Verdict.PASS, f"container exited with code 0 (restart: {policy or 'no'})"
            )
        return HealthDecision(
            Verdict.FAIL, f"container stopped unexpectedly (exit code: {exit_code})"
        )
    health = state.get("Health")
    if not health:
        if stable:
            return HealthDecision(Verdict.PASS, "container still running after the stability wait")
        return HealthDecision(Verdict.STABILITY)
    status = health.get("Status")
    if status == "healthy":
        return HealthDecision(Verdict.PASS, "container is healthy")
    if elapsed >= health_timeout:
        return HealthDecision(Verdict.FAIL, f"health check timeout after {health_timeout:g}s")
    if status == "unhealthy" and elapsed >= grace_period(health_timeout):
        return HealthDecision(Verdict.FAIL, "container is unhealthy")
    return HealthDecision(Verdict.WAIT)
