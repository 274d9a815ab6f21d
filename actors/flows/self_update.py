"""The ``self_update`` flow (PROTOCOL §7) and the new agent's side of the hand-over.

Container mode only (§7.3); the Go agent's native binary swap (§7.4) does not apply to a Python
agent. The backend always asks for the Go agent's image (§7.2): that request is ignored and the
agent updates itself to ``SELF_UPDATE_IMAGE`` instead (refused when it is not set).

The hand-over is safer than the Go agent's, which removes the old container as soon as the new
one has run for 5 s. Here the old container goes only after the new agent has *registered*::

    old agent (run)                                   new agent (on_connected)
    pull SELF_UPDATE_IMAGE, verify a pinned digest
    inspect its own container
    create <name>-update (§7.3 subset, same mounts)
    write cleanup.json (0600, atomic); emit start
    hand the connection over: flush, close, idle
    start <name>-update ───────────────────────────▶ registers with the same token (same /data)
    wait ≤ SELF_UPDATE_TIMEOUT for the outcome        after auth_success: claim "registered",
      (the new container exits or is unhealthy:        emit health, stop and remove the old
       give up at once)                                container, take the original name, clear
                                                       the files, emit complete
    no "registered" by the deadline: claim "aborted", remove the new container, clear the files,
    reconnect, report the error in selfupdate_progress

Both sides decide through ``$DATA_PATH/self_update.outcome``, created exclusively (``link(2)``), so
exactly one of "registered" and "aborted" wins: the two agents can never remove each other. While
handed over the old agent's Connection stays closed, so the two never flap (§2.5, §14 items 11-12).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import requests

from actors.flows.context import CLEANUP_FILE, FlowContext, UpdaterSettings
from actors.rules.image_refs import parse_image_ref
from actors.runtime.fsio import create_exclusive, fsync_dir, write_json_atomic, write_temp
from messages.connection import HandOver, ResumeAfterHandOver
from messages.roles import Role
from messages.updates import SelfUpdate

log = logging.getLogger(__name__)

OUTCOME_FILE = "self_update.outcome"
EVENT = "selfupdate_progress"
POLL_INTERVAL = 0.5
OLD_STOP_TIMEOUT = 10  # §13: old-agent stop timeout during cleanup

NATIVE_MODE_ERROR = (
    "self_update is not available: this is the Python dockmon-agent and it is not running in a "
    "Docker container; it updates itself only in container mode, with SELF_UPDATE_IMAGE set. "
    "The Go agent's native binary swap does not apply: upgrade the installed dockmon-agent "
    "package instead. Nothing was changed"
)
NOT_CONFIGURED_ERROR = (
    "self_update is disabled: this is the Python dockmon-agent; in container mode it updates "
    "itself only to the image SELF_UPDATE_IMAGE names, and that is not set: set "
    "SELF_UPDATE_IMAGE on the agent's container to this agent's image (a tag such as "
    "registry.example.com/dockmon-agent:latest or a pinned ...@sha256:<digest>); the image "
    "DockMon asks for is the Go agent's and is never used. Nothing was changed"
)

#: set while ``run`` executes in this process (its hand-over files are not stale then)
_RUNNING = threading.Event()


class SelfUpdateError(Exception):
    """A step failed; the message is what selfupdate_progress reports."""


# --- the new container's configuration (§7.3 step 3) ----------------------------------------

_CONFIG_COPIED = (
    "Domainname",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "StopTimeout",
)
#: kept only when they differ from the old image's value, so that the new image's defaults apply
_CONFIG_IF_CHANGED = ("User", "WorkingDir", "StopSignal")
_HOST_CONFIG_COPIED = (
    # mounts
    "Binds", "Mounts", "Tmpfs", "VolumeDriver", "VolumesFrom",
    # networking (additional networks are not carried over, like the Go agent)
    "NetworkMode", "PortBindings", "PublishAllPorts", "Dns", "DnsOptions", "DnsSearch",
    "ExtraHosts", "Links",
    # lifecycle, namespaces and security
    "RestartPolicy", "CapAdd", "CapDrop", "GroupAdd", "IpcMode", "PidMode", "UTSMode",
    "UsernsMode", "CgroupnsMode", "Cgroup", "CgroupParent", "Privileged", "ReadonlyRootfs",
    "SecurityOpt", "ShmSize", "Sysctls", "Runtime", "MaskedPaths", "ReadonlyPaths", "Init",
    "LogConfig", "StorageOpt", "OomScoreAdj", "Isolation",
    # resources
    "CpuShares", "Memory", "NanoCpus", "CpuPeriod", "CpuQuota", "CpuRealtimePeriod",
    "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "Devices", "DeviceCgroupRules",
    "DeviceRequests", "MemoryReservation", "MemorySwap", "MemorySwappiness", "OomKillDisable",
    "PidsLimit", "Ulimits", "BlkioWeight", "BlkioWeightDevice", "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps", "CpuCount",
    "CpuPercent", "IOMaximumIOps", "IOMaximumBandwidth",
)  # fmt: skip


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def build_create_config(
    container: dict[str, Any], old_image: dict[str, Any], new_image: str
) -> dict[str, Any]:
    """The ``POST /containers/create`` body for ``<name>-update`` (PROTOCOL §7.3 step 3).

    Config is the Go agent's subset (hostname cleared so Docker assigns one; env and labels
    identical to the old image's dropped so the new image's apply). Unlike the Go agent, the
    entrypoint, command, user, working dir and stop signal are kept only where the user changed
    them, so a new image's own defaults take effect; and anonymous volumes (e.g. ``/data`` from
    the image's ``VOLUME`` when nothing was mounted there) are carried over by name, so the
    identity in ``/data`` survives. HostConfig is copied field by field.
    """
    cfg: dict[str, Any] = container.get("Config") or {}
    img_cfg: dict[str, Any] = old_image.get("Config") or {}
    body: dict[str, Any] = {"Image": new_image}
    for key in _CONFIG_COPIED:
        if cfg.get(key) is not None:
            body[key] = cfg[key]
    for key in _CONFIG_IF_CHANGED:
        if cfg.get(key) and cfg.get(key) != img_cfg.get(key):
            body[key] = cfg[key]
    image_env = set(img_cfg.get("Env") or ())
    body["Env"] = [e for e in cfg.get("Env") or () if e not in image_env]
    image_labels: dict[str, str] = img_cfg.get("Labels") or {}
    body["Labels"] = {
        k: v for k, v in (cfg.get("Labels") or {}).items() if image_labels.get(k) != v
    }
    if cfg.get("Entrypoint") != img_cfg.get("Entrypoint"):
        body["Entrypoint"] = cfg.get("Entrypoint")
        body["Cmd"] = cfg.get("Cmd")
    elif cfg.get("Cmd") != img_cfg.get("Cmd"):
        body["Cmd"] = cfg.get("Cmd")

    old_host: dict[str, Any] = container.get("HostConfig") or {}
    host = {k: old_host[k] for k in _HOST_CONFIG_COPIED if old_host.get(k) is not None}
    covered = {_bind_target(b) for b in host.get("Binds") or ()}
    covered |= {m.get("Target") for m in host.get("Mounts") or ()}
    for mount in container.get("Mounts") or ():
        if (
            mount.get("Type") == "volume"
            and mount.get("Name")
            and mount.get("Destination") not in covered
        ):
            mode = "" if mount.get("RW", True) else ":ro"
            host.setdefault("Binds", [])
            host["Binds"] = [*host["Binds"], f"{mount['Name']}:{mount['Destination']}{mode}"]
    body["HostConfig"] = host
    return body


# --- hand-over files in $DATA_PATH ------------------------------------------------------------


def _write_private_json(path: Path, content: dict[str, Any]) -> None:
    write_json_atomic(path, content, mode=0o600)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path.name, exc)
        return None
    return data if isinstance(data, dict) else None


def read_outcome(data_path: Path) -> str | None:
    """``"registered"``, ``"aborted"`` or None (not decided yet)."""
    record = _read_json(data_path / OUTCOME_FILE)
    outcome = record.get("outcome") if record else None
    return outcome if isinstance(outcome, str) else None


def claim_outcome(data_path: Path, outcome: str, detail: str) -> str:
    """Record ``outcome`` unless one is recorded already; return the outcome that holds.

    The file is written completely under a temporary name, then hard-linked into place:
    ``link(2)`` fails if the name exists, so of two agents racing, exactly one wins.
    """
    path = data_path / OUTCOME_FILE
    record = json.dumps({"outcome": outcome, "detail": detail, "at": time.time()}).encode()
    tmp = write_temp(data_path, OUTCOME_FILE, record, mode=0o600)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem: exclusive create instead
            if create_exclusive(path, record, mode=0o600):
                return outcome
        else:
            fsync_dir(data_path)
            return outcome
        for _ in range(20):  # the other side may still be writing it (exclusive-create path)
            held = read_outcome(data_path)
            if held is not None:
                return held
            time.sleep(0.05)
        return "unknown"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def clear_handover(data_path: Path) -> None:
    for name in (CLEANUP_FILE, OUTCOME_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_path / name).unlink()


# --- entry points (called by the Updater) -----------------------------------------------------


def precheck(settings: UpdaterSettings, request: SelfUpdate) -> str:
    """An error to answer at once instead of acknowledging, or "" to go ahead."""
    if not settings.own_container_id:
        return NATIVE_MODE_ERROR
    if not settings.self_update_image:
        return NOT_CONFIGURED_ERROR
    if _RUNNING.is_set():
        return "a self-update is already in progress"
    return ""


def run(fc: FlowContext, request: SelfUpdate) -> None:
    """Pull SELF_UPDATE_IMAGE, start the new agent, hand over; report selfupdate_progress."""
    if _RUNNING.is_set():
        return
    _RUNNING.set()
    try:
        _OldAgent(fc, request).run()
    finally:
        _RUNNING.clear()


def on_connected(fc: FlowContext) -> None:
    """Called each time the agent registers: finish a pending hand-over (new agent side)."""
    data = Path(fc.settings.data_path)
    handover = _read_json(data / CLEANUP_FILE)
    own = fc.settings.own_container_id
    if handover is None or not own:
        return
    new_id = str(handover.get("new_container_id") or "")
    old_id = str(handover.get("old_container_id") or "")
    if new_id and new_id.startswith(own[:12]):
        _NewAgent(fc, handover).finish()
    elif old_id and old_id[:12] == own[:12]:
        if not _RUNNING.is_set():
            _stale_handover_as_old_agent(fc, handover)
    else:
        log.warning(
            "%s names neither this container nor its predecessor; ignoring it", CLEANUP_FILE
        )


# --- helpers ------------------------------------------------------------------------------------


def _progress(fc: FlowContext, stage: str, message: str) -> None:
    log.info("self-update %s: %s", stage, message)
    fc.emit(EVENT, {"stage": stage, "message": message})


def _failed(fc: FlowContext, stage: str, error: str) -> None:
    log.error("self-update failed at %s: %s", stage, error)
    fc.emit(EVENT, {"stage": stage, "message": "Error occurred", "error": error})


def _tell_connection(fc: FlowContext, message: HandOver | ResumeAfterHandOver) -> None:
    fc.tell(Role.CONNECTION, message)


def _docker_text(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc) or type(exc).__name__


def _remove_quietly(api: docker.APIClient, container_id: str) -> str | None:
    """Force-remove (keeping volumes: anonymous ones are shared); the error text or None."""
    try:
        api.remove_container(container_id, force=True, v=False)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return _docker_text(exc)
    return None


def _stale_handover_as_old_agent(fc: FlowContext, handover: dict[str, Any]) -> None:
    """This (old) agent restarted in the middle of a hand-over it no longer runs."""
    data = Path(fc.settings.data_path)
    outcome = claim_outcome(data, "aborted", "the old agent restarted during the hand-over")
    if outcome == "registered":
        log.warning("the new agent has registered already; handing the connection over to it again")
        _tell_connection(fc, HandOver())
        return
    new_id = str(handover.get("new_container_id") or "")
    error = _remove_quietly(fc.client(), new_id) if new_id else None
    clear_handover(data)
    _failed(
        fc,
        "health",
        "the agent restarted during a self-update; the new container was removed"
        + (f" (removal failed: {error})" if error else ""),
    )


def _container_problem(api: docker.APIClient, container_id: str) -> str | None:
    """Why the new container can no longer become the agent (§7.3 health rules), or None."""
    try:
        state = api.inspect_container(container_id).get("State") or {}
    except docker.errors.NotFound:
        return "the new agent container disappeared"
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.warning("could not inspect the new agent container: %s", _docker_text(exc))
        return None  # a dockerd hiccup; the deadline still applies
    if state.get("Restarting") or not state.get("Running"):
        return (
            f"the new agent container is {state.get('Status', 'not running')} "
            f"(exit code {state.get('ExitCode')})"
        )
    health = (state.get("Health") or {}).get("Status")
    if health == "unhealthy":
        return "the new agent container is unhealthy"
    return None


class _OldAgent:
    """The running agent's side: everything up to the hand-over, and the abort path."""

    def __init__(self, fc: FlowContext, request: SelfUpdate) -> None:
        self.fc = fc
        self.request = request
        self.data = Path(fc.settings.data_path)
        assert fc.settings.self_update_image and fc.settings.own_container_id
        self.image = parse_image_ref(fc.settings.self_update_image)
        self.own_id = fc.settings.own_container_id

    def run(self) -> None:
        log.info(
            "self_update: ignoring the requested image %s (version %s): it is the Go agent; "
            "updating to SELF_UPDATE_IMAGE %s instead",
            self.request.image or "(none)",
            self.request.version or "?",
            self.image,
        )
        api = self.fc.client()
        self._clear_stale(api)
        stage = "pull"
        try:
            _progress(self.fc, "pull", f"Pulling {self.image}")
            self._pull(api)
            stage = "inspect"
            _progress(self.fc, "inspect", "Inspecting the agent's own container")
            container = api.inspect_container(self.own_id)
            name = str(container["Name"]).lstrip("/")
            old_image = api.inspect_image(container["Image"])
            stage = "create"
            temp_name = f"{name}-update"
            _progress(self.fc, "create", f"Creating {temp_name} from {self.image}")
            body = build_create_config(container, old_image, str(self.image))
            new_id = str(api.create_container_from_config(body, name=temp_name)["Id"])
        except (SelfUpdateError, docker.errors.DockerException, requests.RequestException) as exc:
            _failed(self.fc, stage, _docker_text(exc))
            return
        try:
            _write_private_json(
                self.data / CLEANUP_FILE,
                {
                    "old_container_id": self.own_id[:12],
                    "old_container_name": name,
                    "new_container_id": new_id,
                    "temp_name": temp_name,
                    "original_name": name,
                    "image": str(self.image),
                },
            )
        except OSError as exc:
            _remove_quietly(api, new_id)
            _failed(self.fc, "create", f"cannot write {CLEANUP_FILE} in DATA_PATH: {exc}")
            return
        _progress(
            self.fc,
            "start",
            f"Starting {temp_name} ({new_id[:12]}) and handing the DockMon connection over to it",
        )
        # Queued after the progress event: the Connection sends it, then closes and idles, so
        # the new agent can register without the two superseding each other (§2.5).
        _tell_connection(self.fc, HandOver())
        try:
            api.start(new_id)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            self._abort(api, new_id, "start", f"cannot start {temp_name}: {_docker_text(exc)}")
            return
        try:
            self._await_outcome(api, new_id)
        except Exception as exc:  # never stay handed over because of a bug or a disk error
            log.exception("self-update: the hand-over wait failed")
            with contextlib.suppress(OSError):
                if read_outcome(self.data) == "registered":
                    return
            self._abort(api, new_id, "health", f"the hand-over failed: {exc}")

    def _clear_stale(self, api: docker.APIClient) -> None:
        """Files of an earlier attempt that never finished (this process is connected)."""
        stale = _read_json(self.data / CLEANUP_FILE)
        if stale is None and read_outcome(self.data) is None:
            return
        new_id = str((stale or {}).get("new_container_id") or "")
        if new_id and not new_id.startswith(self.own_id[:12]):
            log.warning("removing %s left by an unfinished self-update", new_id[:12])
            _remove_quietly(api, new_id)
        clear_handover(self.data)

    def _pull(self, api: docker.APIClient) -> None:
        for chunk in api.pull(self.image.name, tag=self.image.pull_tag, stream=True, decode=True):
            if isinstance(chunk, dict) and (chunk.get("error") or chunk.get("errorDetail")):
                detail = chunk.get("error") or chunk.get("errorDetail")
                raise SelfUpdateError(f"pull of {self.image} failed: {detail}")
        info = api.inspect_image(str(self.image) if self.image.digest else self.image_by_tag())
        if self.image.digest:
            digests = {str(d).rpartition("@")[2] for d in info.get("RepoDigests") or ()}
            if self.image.digest not in digests:
                raise SelfUpdateError(
                    f"pulled image {info.get('Id')} does not have the pinned digest "
                    f"{self.image.digest} (it has {sorted(digests) or 'none'})"
                )
        log.info("self-update image %s is %s", self.image, info.get("Id"))

    def image_by_tag(self) -> str:
        return f"{self.image.name}:{self.image.tag or 'latest'}"

    def _await_outcome(self, api: docker.APIClient, new_id: str) -> None:
        timeout = self.fc.settings.handover_timeout
        deadline = self.fc.clock.monotonic() + timeout
        while True:
            if read_outcome(self.data) == "registered":
                break
            problem = _container_problem(api, new_id)
            if problem is None and self.fc.clock.monotonic() >= deadline:
                problem = f"the new agent did not register with DockMon within {timeout:g}s"
            if problem is not None:
                if claim_outcome(self.data, "aborted", problem) == "registered":
                    break
                self._abort(api, new_id, "health", problem)
                return
            self.fc.cancelled.wait(POLL_INTERVAL)
        log.info(
            "hand-over complete: the new agent %s registered with DockMon; it removes this "
            "container now",
            new_id[:12],
        )

    def _abort(self, api: docker.APIClient, new_id: str, stage: str, error: str) -> None:
        removal = _remove_quietly(api, new_id)
        clear_handover(self.data)
        if removal:
            error += f"; removing the new container failed too: {removal}"
        _failed(self.fc, stage, error + "; this agent keeps running and reconnects")
        _tell_connection(self.fc, ResumeAfterHandOver())


class _NewAgent:
    """The new agent's side, after it registered with DockMon."""

    def __init__(self, fc: FlowContext, handover: dict[str, Any]) -> None:
        self.fc = fc
        self.handover = handover
        self.data = Path(fc.settings.data_path)
        assert fc.settings.own_container_id
        self.own_id = fc.settings.own_container_id

    def finish(self) -> None:
        outcome = claim_outcome(self.data, "registered", self.own_id)
        if outcome != "registered":
            log.warning(
                "the old agent gave up on this hand-over (%s); going idle until it removes "
                "this container",
                outcome,
            )
            _tell_connection(self.fc, HandOver())
            return
        old_id = str(self.handover.get("old_container_id") or "")
        original = str(self.handover.get("original_name") or "")
        _progress(self.fc, "health", f"New agent {self.own_id[:12]} registered with DockMon")
        api = self.fc.client()
        try:
            if old_id:
                with contextlib.suppress(docker.errors.NotFound):
                    api.stop(old_id, timeout=OLD_STOP_TIMEOUT)
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(old_id, force=True, v=False)
            name = str(api.inspect_container(self.own_id)["Name"]).lstrip("/")
            if original and name != original:
                api.rename(self.own_id, original)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            # the files stay: the next registration retries; the old agent stays idle
            _failed(self.fc, "complete", f"cannot replace the old agent: {_docker_text(exc)}")
            return
        clear_handover(self.data)
        _progress(
            self.fc,
            "complete",
            f"Agent updated to {self.handover.get('image') or 'the new image'}; running as "
            f"{original or name} ({self.own_id[:12]})",
        )
