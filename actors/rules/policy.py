"""What the DockMon server may do on this host: the YAML ``policy`` section, enforced here.

Operations are named as the protocol names them: generic commands (``list_images``,
``update_container``), container actions (``start``, ``remove``), and other request types
(``shell_session``, ``health_check_config``). ``read_only`` allows only operations that change
nothing; ``allow``/``deny`` lists refine that (deny wins); ``protected`` containers (by name
pattern or label) may be looked at but never changed, exec'd into or updated.

Which commands can change a container is declared once, in :data:`CHANGES` (with how to find
the containers each one reaches) and :data:`CHANGES_NOTHING`; every inbound command type is in
exactly one of them (``tests/test_protection.py`` enforces that). :class:`Guard` is the one check
the actors run before acting: it resolves each reference once to the container's immutable id,
refuses if any container reached is protected (or is the agent's own), and hands back those ids,
which the actor then acts on, so a rename between the check and the act cannot redirect it.

Also the append-only audit log: one JSON line per request (who, what, target, result).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the policy's settings and its operation rules, re-exported: every actor imports them here
from actors.rules.permissions import CONTAINER_CHANGES as CONTAINER_CHANGES
from actors.rules.permissions import DENIED as DENIED
from actors.rules.permissions import READ_OPERATIONS as READ_OPERATIONS
from actors.rules.permissions import Policy as Policy
from actors.rules.permissions import parse_policy as parse_policy
from messages.compose import ReadComposeFile, ScanComposeDirs
from messages.deploy import DeployCompose
from messages.docker import (
    GetContainerLogs,
    InspectContainer,
    KillContainer,
    ListContainers,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.health import RemoveHealthCheck, SetHealthCheck, SyncHealthChecks
from messages.images import ListImages, PruneImages, RemoveImage
from messages.networks import CreateNetwork, DeleteNetwork, ListNetworks, PruneNetworks
from messages.records import record
from messages.shell import CloseShell, ResizeShell, ShellInput, StartShell
from messages.updates import SelfUpdate, UpdateContainer
from messages.volumes import DeleteVolume, ListVolumes, PruneVolumes

log = logging.getLogger(__name__)

# --- which commands change which containers (the one place) -------------------------------------


@record
class Target:
    """A container an operation changes, resolved to its immutable full id."""

    id: str
    name: str  # without the leading "/"
    labels: tuple[tuple[str, str], ...] = ()
    #: how the operation reaches this container ("" when it is the one the request names)
    how: str = ""

    @classmethod
    def of(cls, info: Mapping[str, Any], how: str = "") -> Target:
        """From a container inspect object or a container list summary."""
        names = info.get("Names") or [info.get("Name") or ""]
        labels = (info.get("Config") or {}).get("Labels") if "Config" in info else None
        if labels is None:
            labels = info.get("Labels")
        return cls(
            id=str(info["Id"]),
            name=str(names[0] or "").lstrip("/"),
            labels=tuple((str(k), str(v)) for k, v in (labels or {}).items()),
            how=how,
        )


@record
class Resolved:
    """The containers a command reaches (the one it names first), and what resolving read."""

    targets: tuple[Target, ...]
    detail: Any = None  # e.g. the network inspect delete_network acts on

    @property
    def container_id(self) -> str:
        """The full id of the container the command names."""
        return self.targets[0].id


class Refused(Exception):
    """The guard refuses the command; the message is the in-band error text."""


#: (Docker client, command, the agent's own container id or None) -> what the command reaches.
#: The client needs only ``inspect_container``, ``containers``, ``inspect_network`` and
#: ``inspect_image``.
Resolver = Callable[[Any, Any, str | None], Resolved]


@record
class Changes:
    operation: str  # the policy's name for it (PROTOCOL's name)
    resolve: Resolver
    #: why the agent refuses this on its own container ({id12}: its short id); None: allowed
    own: str | None
    what: str = "inspect container"  # what failed when resolving fails (``failed to <what>``)


def _named(api: Any, command: Any, _own: str | None) -> Resolved:
    return Resolved((Target.of(api.inspect_container(command.container_id)),))


def _with_dependents(api: Any, command: Any, _own: str | None) -> Resolved:
    """The container and every container sharing its network namespace (§6 step 10 recreates
    them; NetworkMode ``container:<name>``, ``container:<short id>`` or ``container:<id>``)."""
    info = api.inspect_container(command.container_id)
    target = Target.of(info)
    refs = {f"container:{r}" for r in (target.name, target.id[:12], target.id)}
    how = f"it shares the network namespace of {target.name}, so update_container recreates it"
    dependents = tuple(
        Target.of(summary, how=how)
        for summary in api.containers(all=True)
        if summary.get("Id") != target.id
        and str((summary.get("HostConfig") or {}).get("NetworkMode") or "") in refs
    )
    return Resolved((target, *dependents), detail=info)


def _attached(api: Any, command: Any, _own: str | None) -> Resolved:
    """delete_network with force disconnects every attached container first (§4.3.3)."""
    import docker.errors  # here: the configuration (agent_config) loads this module, not Docker

    net = api.inspect_network(command.network_id)
    if not command.force:
        return Resolved((), detail=net)  # attached containers make the handler refuse
    name = str(net.get("Name") or command.network_id)
    targets = []
    for container_id in net.get("Containers") or {}:
        try:
            info = api.inspect_container(container_id)
        except docker.errors.NotFound:
            continue  # not a local container (or gone): nothing of ours to protect
        targets.append(Target.of(info, how=f"delete_network with force disconnects it from {name}"))
    return Resolved(tuple(targets), detail=net)


def _image_users(api: Any, command: Any, _own: str | None) -> Resolved:
    """remove_image with force deletes an image only stopped containers use (Docker keeps it
    for running ones and, without force, for any user): those containers lose their image."""
    if not command.force:
        return Resolved(())
    image_id = str(api.inspect_image(command.image_id)["Id"])
    how = f"remove_image with force deletes the image it was created from ({image_id[7:19]})"
    users = tuple(
        Target.of(summary, how=how)
        for summary in api.containers(all=True)
        if summary.get("ImageID") == image_id
    )
    return Resolved(users, detail=image_id)


#: the label compose puts on every container of a project (what a deployment recreates/removes)
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"


def _project_containers(api: Any, command: Any, _own: str | None) -> Resolved:
    """deploy_compose recreates or removes the containers of its project, found by compose's own
    project label (a stack never touches a container outside it). The containers it would create
    are checked by the Deployer against the parsed stack (actors/deploy/model.py)."""
    how = f"it belongs to stack {command.project_name}, which deploy_compose recreates or removes"
    label = f"{COMPOSE_PROJECT_LABEL}={command.project_name}"
    return Resolved(
        tuple(
            Target.of(summary, how=how)
            for summary in api.containers(all=True, filters={"label": label})
        )
    )


def _own_container(api: Any, _command: Any, own: str | None) -> Resolved:
    if not own:
        return Resolved(())
    return Resolved((Target.of(api.inspect_container(own)),))


_OWN_DESTRUCTIVE = (
    "refusing to {operation} the agent's own container ({id12}); use self_update to replace the "
    "agent"
)

#: every inbound command type that can change a container, and how to find what it reaches
CHANGES: dict[type, Changes] = {
    StartContainer: Changes("start", _named, None),  # starting the running agent is a no-op
    StopContainer: Changes("stop", _named, _OWN_DESTRUCTIVE),
    RestartContainer: Changes("restart", _named, _OWN_DESTRUCTIVE),
    RemoveContainer: Changes("remove", _named, _OWN_DESTRUCTIVE),
    KillContainer: Changes("kill", _named, _OWN_DESTRUCTIVE),
    RenameContainer: Changes("rename", _named, _OWN_DESTRUCTIVE),
    UpdateContainer: Changes(
        "update_container",
        _with_dependents,
        "refusing to update the agent's own container ({id12}) with update_container; use "
        "self_update",
    ),
    StartShell: Changes("shell_session", _named, None),
    DeleteNetwork: Changes(
        "delete_network",
        _attached,
        "refusing to delete_network: with force it would disconnect the agent's own container "
        "({id12})",
        what="inspect network",
    ),
    RemoveImage: Changes(
        "remove_image",
        _image_users,
        "refusing to remove_image: with force it would delete the image of the agent's own "
        "container ({id12})",
        what="remove image",
    ),
    # the sanctioned way to replace the agent's own container; a protected one is kept
    SelfUpdate: Changes("self_update", _own_container, None),
    DeployCompose: Changes(
        "deploy_compose",
        _project_containers,
        "refusing to deploy_compose: the stack contains the agent's own container ({id12}); "
        "the agent is updated with self_update",
        what="list the stack's containers",
    ),
}

#: every inbound command type that changes no container, and why
CHANGES_NOTHING: dict[type, str] = {
    ListContainers: "reads",
    InspectContainer: "reads",
    GetContainerLogs: "reads",
    ListImages: "reads",
    PruneImages: "removes only images no container uses",
    ListNetworks: "reads",
    CreateNetwork: "creates a network; no container is attached",
    PruneNetworks: "removes only networks no container is attached to",
    ListVolumes: "reads",
    # Docker refuses to remove a volume a container mounts, force or not (proven on the real
    # daemon by tests/test_protection_e2e.py)
    DeleteVolume: "Docker refuses to remove a volume in use, even with force",
    PruneVolumes: "removes only volumes no container mounts",
    ScanComposeDirs: "reads files",
    ReadComposeFile: "reads a file",
    ShellInput: "goes to a session the guard allowed at its start",
    ResizeShell: "goes to a session the guard allowed at its start",
    CloseShell: "ends a session",
    SyncHealthChecks: "configures agent-side HTTP checks",
    SetHealthCheck: "configures an agent-side HTTP check",
    RemoveHealthCheck: "configures agent-side HTTP checks",
}

# CONTAINER_CHANGES (actors/rules/permissions.py) is the operations CHANGES declares; it is
# spelled out there so the configuration loads no message type (tests/test_protection.py checks)


class Guard:
    """The one check before any container-changing command acts (gateway, updater, shell)."""

    def __init__(self, policy: Policy | None = None, own_container_id: str | None = None):
        self.policy = policy or Policy()
        self.own_id = own_container_id[:12] if own_container_id else None

    def check(self, api: Any, command: Any) -> Resolved | None:
        """Resolve what ``command`` changes, once, and refuse (:class:`Refused`) if any of it is
        protected or the agent's own container. None: the command changes no container.

        Act on the ids in the result, never on the command's references again. Docker errors
        while resolving (no such container, ...) propagate; callers word them with
        ``CHANGES[type(command)].what``.
        """
        spec = CHANGES.get(type(command))
        if spec is None:
            return None
        resolved = spec.resolve(api, command, self.own_id)
        for target in resolved.targets:
            refusal = self.refusal(spec, target)
            if refusal is not None:
                raise Refused(refusal)
        return resolved

    def refusal(self, spec: Changes, target: Target) -> str | None:
        if spec.own and self.own_id and target.id.startswith(self.own_id):
            text = spec.own.format(operation=spec.operation, id12=target.id[:12])
            return f"{text} ({target.how})" if target.how else text
        denial = self.policy.check_container(spec.operation, target.name, dict(target.labels))
        if denial and target.how:
            return f"{denial} ({target.how})"
        return denial


#: a write that keeps failing is logged again at most this often
AUDIT_FAILURE_LOG_INTERVAL = 3600.0


@dataclass
class AuditLog:
    """Append-only JSON lines in ``$DATA_PATH/audit.log``; never payloads, never secrets.

    A full or read-only DATA_PATH never breaks a request: :meth:`record` never raises. A line
    that cannot be written whole is cut off again (never half a line in the log) and counted;
    the failure is logged once, then at most once an hour while it lasts, and the recovery is
    logged with the number of lines lost.
    """

    path: Path
    who: str
    _fd: int | None = field(default=None, repr=False)
    failures: int = 0  # lines lost since the process started
    _failing_since: int = 0  # lines lost in the current failure
    _logged_at: float = field(default=-AUDIT_FAILURE_LOG_INTERVAL, repr=False)

    def record(self, at: str, operation: str, target: str | None, result: str) -> str | None:
        """Append one line; returns None, or why the line could not be written."""
        line = {"time": at, "who": self.who, "operation": operation, "result": result}
        if target:
            line["target"] = target
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            self._append(self._fd, data)
        except OSError as exc:
            self.close()
            return self._failed(exc)
        if self._failing_since:
            log.info(
                "the audit log %s is written again (%d line(s) were lost)",
                self.path,
                self._failing_since,
            )
            self._failing_since = 0
        return None

    @staticmethod
    def _append(fd: int, data: bytes) -> None:
        end = os.lseek(fd, 0, os.SEEK_END)
        written = os.write(fd, data)
        if written != len(data):  # the disk filled up inside the line: take the part back
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _failed(self, exc: OSError) -> str:
        self.failures += 1
        self._failing_since += 1
        error = f"{self.path}: {exc.strerror or exc}"
        now = time.monotonic()
        if self._failing_since == 1 or now - self._logged_at >= AUDIT_FAILURE_LOG_INTERVAL:
            self._logged_at = now
            log.error(
                "cannot write the audit log %s; requests are still served (%d line(s) lost so far)",
                error,
                self._failing_since,
            )
        return error

    def close(self) -> None:
        """Never raises (there is no buffer to flush: each line is one write)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
